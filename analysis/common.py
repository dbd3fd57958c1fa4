"""Shared bits of the measured-sensitivity analyses: resumable progress files, one-layer configs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from quant.config import QuantConfig
from core import jsonio
from core.provenance import job_key
from sampling.shards import ShardWriter


def settings_key(settings: dict[str, Any]) -> str:
    """A short key of the settings a measurement depends on (rows with another key are redone):
    `core.provenance.job_key`, 12 of its digits."""
    return job_key(**{str(k): v for k, v in settings.items()})[:12]


class Progress:
    """Append-only JSON lines, one per finished measurement, flushed and fsynced; re-reading
    keeps only lines with the current settings key, so a killed run resumes and a changed one
    starts over. A truncated last line (killed mid-write) is ignored.

    A line of this key that is not a valid row (`core.jsonio.row_problem`: not an object, no
    layer/option, a `nonneg` field such as an FID negative or non-finite, a score not a finite
    number, a wrong-typed field), or any other line that is not JSON, is dropped with one
    `warning:` line on stderr, and that measurement is made again: never reported as it is."""

    FINITE = ("fid", "content", "sqnr_db", "ssim")  # null (not measured) or a finite number

    def __init__(self, path: str | Path, key: str, nonneg: tuple[str, ...] = ("seconds",),
                 required: tuple[str, ...] = (), check: Callable[[dict], str | None] | None = None):
        """nonneg: fields that must be null or finite and >= 0 (an FID, seconds); required: keys
        every row of this writer holds; check(row): a further reason to drop a row, or None."""
        self.path = Path(path)
        self.key = key
        self.rows: dict[tuple, dict] = {}
        dropped: list[str] = []
        if self.path.exists():
            text = self.path.read_text()
            lines = text.splitlines()
            for i, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if not (i == len(lines) and not text.endswith("\n")):  # not a killed write
                        dropped.append(f"line {i}: not JSON")
                    continue
                if isinstance(row, dict) and row.get("key") != key:
                    continue  # another settings key: stale, not damaged
                why = jsonio.row_problem(row, required=("layer", "option", *required), nonneg=nonneg,
                                         finite=tuple(f for f in self.FINITE if f not in nonneg),
                                         text=("layer", "option", "status"))
                if why is None and row.get("status") == "ok" and "fid" in row and row["fid"] is None:
                    why = "status ok without a fid"
                if why is None and check is not None:
                    why = check(row)
                if why is not None:
                    dropped.append(f"line {i}: {why}")
                    continue
                self.rows[self._id(row)] = row
        if dropped:
            import sys

            print(f"warning: {self.path}: {len(dropped)} damaged row(s) dropped and measured again "
                  f"({dropped[0]}{' ...' if len(dropped) > 1 else ''})", file=sys.stderr)
        # rewrite without stale / broken lines, so the file only ever holds this key's rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows.values()))
        tmp.replace(self.path)
        self._writer = ShardWriter(self.path)

    @staticmethod
    def _id(row: dict) -> tuple:
        return (row["layer"], row["option"])

    def done(self, layer: str, option: str) -> bool:
        """True when (layer, option) was already measured with the current settings key."""
        return (layer, option) in self.rows

    def add(self, row: dict) -> None:
        """Record one finished measurement (tagged with the settings key): one fsynced JSON line."""
        row = {**row, "key": self.key}
        self._writer.append(row)
        self.rows[self._id(row)] = row

    def close(self) -> None:
        """Close the progress file."""
        self._writer.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def one_layer(model: str, layer: str, option: str) -> QuantConfig:
    """The config with only `layer` quantized (everything else FP)."""
    return QuantConfig(model, {layer: option})


def pairs(layers: Iterable[str], options: Iterable[str]) -> list[tuple[str, str]]:
    """Every (layer, option) pair, layer-major."""
    options = list(options)
    return [(l, o) for l in layers for o in options]


def write_json(path: str | Path, data: Any) -> Path:
    """Write analysis output JSON (numpy scalars and arrays converted); returns the path."""
    return jsonio.write_json(path, data, default=_default)


def _default(o: Any) -> Any:
    import math

    import numpy as np

    if isinstance(o, (np.floating,)):
        v = float(o)
        return None if not math.isfinite(v) else v
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
