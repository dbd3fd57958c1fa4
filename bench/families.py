"""CPU seconds per stage for every pipeline family qsens drives (docs/models.md's table).

Runs `tests/test_pipeline_families.py::*every_command*` (tiny random pipelines of the real
classes through reference build → prepare → bank → graph → generate → sample → merge → score →
search, one torch thread) with `QSENS_FAMILY_TIMINGS` set, and stores what the test recorded:
per family the CPU seconds of the test process per stage (`time.process_time`), wall seconds,
the pipeline's traits and its quantizable layer count.

    python bench/families.py        # -> bench/results/families_cpu.json

No ratio: these are absolute figures of tiny models, for the table only (they say which stage of
a family is slow relative to the others, not how fast a real model runs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    from machine import write_result

    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.json"
        env = {**os.environ, "QSENS_FAMILY_TIMINGS": str(timings), "OMP_NUM_THREADS": "1"}
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_pipeline_families.py", "-m", "slow or not slow", "-k", "every_command"],
                            cwd=ROOT, env=env).returncode
        if rc != 0 or not timings.is_file():
            raise SystemExit(f"error: the family tests failed (rc {rc}); no timings")
        families = json.loads(timings.read_text())
    for r in families.values():
        r["total_cpu_seconds"] = round(sum(r["cpu_seconds"].values()), 2)
    write_result("families_cpu", {"note": "one torch thread; tiny random pipelines of the real classes",
                                  "families": families})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
