"""Reading JSON files with one-line errors that name the file (shared by every package)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quant.errors import QsensError


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
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected {what}")
    return data
