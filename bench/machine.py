"""Machine conditions and the one writer of bench/results/<name>.json.

Every figure README quotes from a benchmark comes from a file written here, so a reader can see
what produced it, on what, and when:

    from machine import write_result            # bench scripts run as `python bench/x.py`
    write_result("graph", {"rows": rows})        # -> bench/results/graph.json

The file holds the result keys, `"command"` (the exact command line) and `"machine"`
(`machine_info()`).
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (/proc/loadavg), None where unavailable."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # not installed: say so in the record rather than fail the bench
        return None


def machine_info() -> dict[str, Any]:
    """The conditions a timing was measured under, as a JSON-ready dict.

    Keys: `cpu_model`, `logical_cores` (os.cpu_count), `affinity_cores` (len of
    os.sched_getaffinity: the cores this process may use), `loadavg` (1/5/15 min, None where
    /proc is absent), `platform`, `python`, `numpy`, `torch`, `scikit_learn`, `scipy`,
    `torch_threads` (torch.get_num_threads, None without torch), `threadpools` (threadpoolctl's
    BLAS/OpenMP libraries: api, library, version, num_threads, architecture), `cuda_device`
    (name of CUDA device 0, or None), `env` (the thread-count environment variables that are set),
    `utc` (ISO-8601 timestamp). Never raises for a missing optional package: its value is None.
    """
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": loadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "scikit_learn": _version("scikit-learn"),
        "scipy": _version("scipy"),
        "torch_threads": None,
        "threadpools": [],
        "cuda_device": None,
        "env": {k: v for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "OPENBLAS_CORETYPE", "CUDA_VISIBLE_DEVICES")
                if (v := os.environ.get(k)) is not None},
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if "torch" in sys.modules or info["torch"]:
        try:
            import torch
            info["torch"] = torch.__version__  # with the build tag (+cpu, +cu130)
            info["torch_threads"] = torch.get_num_threads()
            if torch.cuda.is_available():
                info["cuda_device"] = torch.cuda.get_device_name(0)
        except Exception:  # a broken torch install must not lose the bench's result
            pass
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [
            {"api": p.get("user_api"), "library": p.get("internal_api"), "version": p.get("version"),
             "num_threads": p.get("num_threads"), "architecture": p.get("architecture"),
             "file": Path(p.get("filepath", "")).name}
            for p in threadpool_info()]
    except Exception:
        pass
    return info


def command_line(argv: list[str] | None = None) -> str:
    """The command that produced a result: `python bench/x.py ARGS`, shell-quoted, repo-relative."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *argv[1:]])


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and Paths as JSON values (json.dumps' `default`)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_result(name: str, result: dict[str, Any], out: str | Path | None = None,
                 argv: list[str] | None = None) -> Path:
    """Write `result` + `"command"` + `"machine"` to `out` (default bench/results/<name>.json).

    Atomic (temp file + rename). Returns the path. Raises QsensError naming the path if it
    cannot be written.
    """
    sys.path.insert(0, str(ROOT))
    from core.jsonio import write_json

    path = Path(out) if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"bench": name, "command": command_line(argv), **result, "machine": machine_info()}
    write_json(path, record, indent=1, default=_plain)
    print(f"wrote {path}")
    return path
