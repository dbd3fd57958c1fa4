"""Shared bits of the measured-sensitivity analyses: resumable progress files, one-layer configs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from quant.config import QuantConfig
from quant import jsonio
from sampling.shards import ShardWriter


def settings_key(settings: dict[str, Any]) -> str:
    """A short hash of the settings a measurement depends on (rows with another key are redone)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Progress:
    """Append-only JSON lines, one per finished measurement, flushed and fsynced; re-reading
    keeps only lines with the current settings key, so a killed run resumes and a changed one
    starts over. A truncated last line (killed mid-write) is ignored."""

    def __init__(self, path: str | Path, key: str):
        self.path = Path(path)
        self.key = key
        self.rows: dict[tuple, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("key") == key:
                    self.rows[self._id(row)] = row
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
        return (layer, option) in self.rows

    def add(self, row: dict) -> None:
        row = {**row, "key": self.key}
        self._writer.append(row)
        self.rows[self._id(row)] = row

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def one_layer(model: str, layer: str, option: str) -> QuantConfig:
    """The config with only `layer` quantized (everything else FP)."""
    return QuantConfig(model, {layer: option})


def pairs(layers: Iterable[str], options: Iterable[str]) -> list[tuple[str, str]]:
    options = list(options)
    return [(l, o) for l in layers for o in options]


def write_json(path: str | Path, data: Any) -> Path:
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
