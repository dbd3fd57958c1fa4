"""`make repro` from a fresh clone: wall time, CPU time, and whether it reproduced this repository's
evaluation FIDs.

    python bench/repro.py                          # clone HEAD into a temp dir, time `make repro` there
    python bench/repro.py --clone DIR --log FILE   # summarise a run already made: `git clone . DIR`,
                                                   # then `/usr/bin/time -v make repro > FILE 2>&1` in DIR

The clone installs its own .venv (pip's cache may be warm: say so), then runs every stage. The
figures: wall and CPU seconds of `make repro` (GNU time -v), the seconds the install took (the
stamp file's mtime after the start), the stages DVC ran, and for each model the rows of the
clone's `metrics/<model>/search.json` whose per-seed FIDs equal this repository's (same strategy,
budget, activation bits). The machine's load is sampled at the end: other work on the cores
lengthens the wall time, so say what else ran.

Writes bench/results/repro.json (or --name); last line `repro wall_min=<x> fids_identical=<k>/<n>`.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import loadavg, write_result  # noqa: E402  (bench/machine.py)


def gnu_time(log: str) -> dict[str, float]:
    """Wall, user and system seconds from `/usr/bin/time -v` output."""
    out = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", log)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        out["wall_s"] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    for key, name in (("user_s", "User time"), ("system_s", "System time")):
        m = re.search(rf"{name} \(seconds\): ([\d.]+)", log)
        if m:
            out[key] = float(m.group(1))
    return out


def row_key(r: dict) -> tuple:
    return r.get("strategy"), r.get("budget"), r.get("act")


def compare_fids(clone: Path) -> dict[str, dict]:
    """Per model: rows of the clone's search.json whose `fids` equal this repository's."""
    out = {}
    for mine in sorted((ROOT / "metrics").glob("*/search.json")):
        theirs = clone / "metrics" / mine.parent.name / "search.json"
        if not theirs.is_file():
            theirs = clone / "metrics" / "search.json"  # a clone from before per-model metrics
        if not theirs.is_file():
            continue
        a = {row_key(r): r for r in json.loads(mine.read_text())}
        b = {row_key(r): r for r in json.loads(theirs.read_text())}
        same = sorted(str(k) for k in a if k in b and a[k].get("fids") == b[k].get("fids"))
        out[mine.parent.name] = {"rows": len(a), "rows_clone": len(b), "fids_identical": len(same),
                                 "differ": sorted(str(k) for k in a if k not in b or a[k].get("fids") != b[k].get("fids"))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clone", type=Path, default=None, help="a clone where `make repro` ran (with --log)")
    ap.add_argument("--log", type=Path, default=None, help="its `/usr/bin/time -v make repro` output")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    ap.add_argument("--name", default="repro", help="bench/results/<name>.json (default: repro)")
    args = ap.parse_args(argv)
    if (args.clone is None) != (args.log is None):
        ap.error("--clone and --log go together")
    if args.clone is None:
        args.clone = Path(tempfile.mkdtemp(prefix="qsens-repro-")) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(args.clone)], check=True)
        args.log = args.clone.parent / "repro.log"
        t0 = time.time()
        with open(args.log, "w") as fh:
            rc = subprocess.run(["/usr/bin/time", "-v", "make", "repro"], cwd=args.clone, stdout=fh,
                                stderr=subprocess.STDOUT).returncode
        if rc != 0:
            print(f"error: make repro failed (exit {rc}); see {args.log}", file=sys.stderr)
            return 1
        print(f"make repro took {time.time() - t0:.0f} s")
    log = args.log.read_text()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.clone, capture_output=True, text=True).stdout.strip()
    stamp = args.clone / ".venv" / ".qsens-installed"
    stages = re.findall(r"Running stage '([^']+)'", log)
    fids = compare_fids(args.clone)
    result = {"clone": str(args.clone), "commit": commit, **gnu_time(log), "stages_run": stages,
              "install_stamp_mtime": stamp.stat().st_mtime if stamp.is_file() else None,
              "search_fids": fids, "note": args.note, "loadavg_end": loadavg()}
    write_result(args.name, result, argv=argv)
    k = sum(v["fids_identical"] for v in fids.values())
    n = sum(v["rows"] for v in fids.values())
    print(f"repro wall_min={result.get('wall_s', float('nan')) / 60:.1f} fids_identical={k}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
