"""Reading and writing files with one-line errors that name the file (shared by every package).

Writes are atomic (a temporary file in the same directory, then a rename), so a failed write
(disk full, `ulimit -f`, a kill) leaves the previous file intact, never a truncated one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from core.errors import QsensError


def read_json(path: str | Path, what: str = "a JSON object", error: type[QsensError] = QsensError) -> Any:
    """Parse `path`; raise `error` naming the file (missing, unreadable, invalid JSON).

    `what` is only used when the top level is not a JSON object: "{path}: expected {what}".
    """
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a JSON file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected {what}")
    return data


def check_output_path(path: str | Path, kind: str = "file") -> Path:
    """Fail before any work when `path` cannot be written: a file path that is an existing
    directory (or a directory path that is a file), or a parent that is not writable."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise QsensError(f"{path}: is a directory; give a file path")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise QsensError(f"{path}: exists and is not a directory")
    parent = path if kind == "dir" and path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise QsensError(f"{path}: cannot write there ({parent} is not a directory)")
    try:  # os.access says yes to root everywhere (even /proc): try a real file instead
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".qsens-write-check-"):
            pass
    except OSError as exc:
        raise QsensError(f"{path}: cannot write there ({parent}: {exc.strerror or exc})") from None
    return path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename; QsensError naming the path
    when it cannot be written (the previous file, if any, is unchanged)."""
    path = Path(path)
    if path.is_dir():
        raise QsensError(f"{path}: is a directory; give a file path")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise QsensError(f"{path}: cannot write ({exc.strerror or exc}); the previous file is unchanged") from None
    return path


def write_json(path: str | Path, data: Any, indent: int = 2, **dumps_kwargs: Any) -> Path:
    """`atomic_write` of `json.dumps(data, indent=indent, **dumps_kwargs)` plus a newline."""
    return atomic_write(path, json.dumps(data, indent=indent, **dumps_kwargs) + "\n")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def row_problem(row: Any, *, nonneg: tuple[str, ...] = (), finite: tuple[str, ...] = (),
                text: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> str | None:
    """Why a row read back from a resumable progress / results file cannot be reused, or None.

    The row must be a JSON object holding every `required` key; each `nonneg` field present must
    be null or a finite number >= 0 (an FID, seconds), each `finite` one null or a finite number
    (a content score, an SQNR), each `text` one a string. A row failing this was edited or
    damaged: its caller drops it and measures it again rather than reporting it as it is."""
    import math

    if not isinstance(row, dict):
        return f"{type(row).__name__} is not a JSON object"
    for key in required:
        if key not in row:
            return f"no {key!r}"
    for key in nonneg:
        v = row.get(key)
        if v is not None and not (_number(v) and math.isfinite(v) and v >= 0):
            return f"{key} {v!r} is not a finite number >= 0"
    for key in finite:
        v = row.get(key)
        if v is not None and not (_number(v) and math.isfinite(v)):
            return f"{key} {v!r} is not a finite number"
    for key in text:
        if key in row and not isinstance(row[key], str):
            return f"{key} {row[key]!r} is not a string"
    return None
