"""Import the reference system's `quant_cache.pkl` (a pickled list of dicts) without trusting it.

The unpickler admits only builtin containers and numbers (and numpy scalars/arrays, which
Qua2SeDiMo's records may hold); any other global is refused with a one-line error, so a pickle
cannot run code on load. Records map to our schema: method names mse→uaq, kmeans→kmc,
kmeans_all→kma; `FID-GT-1k`→fid.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
from pathlib import Path

import pyarrow as pa

from quant.config import QuantConfig
from sampling.cache import CACHE_SCHEMA, CacheError, write_cache

LEGACY_METHODS = {"mse": "uaq", "kmeans": "kmc", "kmeans_all": "kma", "fp": "fp16", "fp16": "fp16"}
_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"),
    ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bool"), ("collections", "OrderedDict"),
    # numpy scalars (np.float64 etc.) pickle through these two
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise CacheError(f"refused to unpickle {module}.{name}: legacy caches may only hold "
                             "builtin containers and numbers")
        return super().find_class(module, name)


def restricted_load(data: bytes):
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _legacy_option(value, where: str) -> str:
    text = value[0] if isinstance(value, (list, tuple)) else value
    if not isinstance(text, str) or "-" not in text:
        raise CacheError(f"{where}: expected 'method-bits' such as 'kmeans-4', got {text!r}")
    method, _, bits = text.rpartition("-")
    if method not in LEGACY_METHODS:
        raise CacheError(f"{where}: unknown legacy method {method!r} (known: {', '.join(LEGACY_METHODS)})")
    ours = LEGACY_METHODS[method]
    return "fp16" if ours == "fp16" else f"{ours}{int(bits)}"


def import_legacy(pkl: Path, out: Path, model: str) -> int:
    pkl = Path(pkl)
    if not pkl.is_file():
        raise CacheError(f"{pkl}: no such file")
    try:
        records = restricted_load(pkl.read_bytes())
    except CacheError as exc:
        raise CacheError(f"{pkl}: {exc}") from None
    except Exception as exc:
        raise CacheError(f"{pkl}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(records, dict):
        records = list(records.values())
    if not isinstance(records, list):
        raise CacheError(f"{pkl}: expected a list of records, got {type(records).__name__}")
    version = "legacy:" + hashlib.sha256(pkl.read_bytes()).hexdigest()[:12]
    rows = {}
    for i, rec in enumerate(records):
        where = f"{pkl} record {i}"
        if not isinstance(rec, dict) or "config" not in rec:
            raise CacheError(f"{where}: expected a dict with a 'config' key")
        options = {layer: _legacy_option(v, f"{where} layer {layer}") for layer, v in rec["config"].items()}
        config = QuantConfig(model, options)
        fid = rec.get("FID-GT-1k", rec.get("fid"))
        ok = fid is not None and math.isfinite(float(fid))
        rows[config.config_id] = {
            "config_id": config.config_id, "model": model, "index": i,
            "options": json.dumps(config.canonical_options(), separators=(",", ":")), "act_bits": None,
            "avg_bits": _num(rec.get("avg_bits")), "quantized_bytes": _num(rec.get("quantized_size")),
            "quantized_error": _num(rec.get("quantized_error")), "bops": _num(rec.get("bops")),
            "fid": _num(fid), "content": None, "n_images": 1000, "image_seed": None, "sample_seed": None,
            "status": "ok" if ok else "failed", "reason": "" if ok else "legacy record without a finite FID",
            "attempts": 1, "seconds": None, "worker": "legacy", "code_version": version,
        }
    table = pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=CACHE_SCHEMA)
    write_cache(table, Path(out))
    return len(rows)


def _num(value) -> float | None:
    return None if value is None else float(value)
