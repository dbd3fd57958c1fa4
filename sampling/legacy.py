"""Import the reference system's (Qua2SeDiMo's) pickles without trusting them, with every layer
name translated to a module path of the model and checked against its quantizable layers.

Two inputs:
- `quant_cache.pkl` (`import_legacy`): a list of records
  `{"config": {key: [method-bits, fp_bytes, q_bytes, err]}, "quantized_size", "quantized_error",
  "FID-GT-1k", "avg_bits", "bops"}` → quant_cache rows;
- `quant_configs/*.pkl` (`read_legacy_config`): one config, `{key: "method-bits"}` (what the
  reference's `QuantModelMultiQ.load_quant_config` reads) → a QuantConfig.

Names: the reference names a layer's weight quantizer `model.<module path>.weight_quantizer`;
a layer fed by a U-Net skip concatenation is split along its input channels into two halves,
the second one named `...weight_quantizer_0`. Keys map to `<module path>` (bare module paths are
accepted as they are). Every name must be a quantizable layer of `--model` (a shipped
architecture name such as sd15, or a model directory); otherwise nothing is written and one
error lists the unmatched names.

Rules where the reference's config is finer than ours (each counted in the import summary):
- split halves with different options → **the option with fewer bits**; equal bits → the first
  half's (`weight_quantizer`). Same option on both halves → that option;
- DiT's per-block timestep embedders are one set of weights in the reference (its loader copies
  block 0's option to blocks 1..27): every `transformer_blocks.<i>.norm1.emb.timestep_embedder.*`
  layer takes block 0's option.

Method names map mse→uaq, kmeans→kmc, kmeans_all→kma. `avg_bits` and `quantized_bytes` are
recomputed with our accounting (quant.accounting) for the translated config, so they agree with
every other row; `quantized_error` and `bops` are kept as the reference recorded them.

The unpickler admits only builtin containers and numbers (and numpy scalars, which the
reference's records hold); any other global is refused with a one-line error, so a pickle
cannot run code on load.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from quant.accounting import summarize
from quant.config import QuantConfig
from quant.layers import LayerInfo
from quant.options import FP16, parse_option
from sampling.cache import CACHE_SCHEMA, CacheError, write_cache

LEGACY_METHODS = {"mse": "uaq", "kmeans": "kmc", "kmeans_all": "kma", "fp": "fp16", "fp16": "fp16"}
_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"),
    ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bool"), ("collections", "OrderedDict"),
    # numpy scalars (np.float64 etc.) pickle through these two
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
}
_KEY_RE = re.compile(r"^(?:model\.)?(?P<path>.+?)(?:\.weight_quantizer(?P<half>_0)?)?$")
_DIT_TEMB_RE = re.compile(r"^transformer_blocks\.(\d+)\.(norm1\.emb\.timestep_embedder\.linear_[12])$")
SPLIT_RULE = "fewer bits; equal bits: the first half's"
_SHOWN = 5  # unmatched names listed in the error


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise CacheError(f"refused to unpickle {module}.{name}: legacy caches may only hold "
                             "builtin containers and numbers")
        return super().find_class(module, name)


def restricted_load(data: bytes):
    """Unpickle a legacy cache allowing builtin containers and numbers only (CacheError otherwise)."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _read_pickle(pkl: Path):
    pkl = Path(pkl)
    if not pkl.is_file():
        raise CacheError(f"{pkl}: no such file")
    try:
        return restricted_load(pkl.read_bytes())
    except CacheError as exc:
        raise CacheError(f"{pkl}: {exc}") from None
    except Exception as exc:
        raise CacheError(f"{pkl}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _legacy_option(value, where: str) -> str:
    text = value[0] if isinstance(value, (list, tuple)) and value else value
    if not isinstance(text, str) or "-" not in text:
        raise CacheError(f"{where}: expected 'method-bits' such as 'kmeans-4', got {text!r}")
    method, _, bits = text.rpartition("-")
    if method not in LEGACY_METHODS:
        raise CacheError(f"{where}: unknown legacy method {method!r} (known: {', '.join(LEGACY_METHODS)})")
    ours = LEGACY_METHODS[method]
    if ours == FP16:
        return FP16
    option = f"{ours}{bits}"
    try:
        parse_option(option)
    except Exception:
        raise CacheError(f"{where}: {text!r} has no qsens option (bits must be 2-8)") from None
    return option


# ------------------------------------------------------------------------------------------ model
@dataclass
class ModelLayers:
    """The quantizable layers of the model legacy names are checked against."""
    name: str  # recorded as the configs' / rows' model
    infos: dict[str, LayerInfo]


def model_layers(spec: str | Path) -> ModelLayers:
    """Layers of `spec`: a shipped architecture name (sd15, sdxl, pixart-alpha, pixart-sigma,
    hunyuan-dit, dit-xl-2), a registered name or a model directory; built on `meta` (no weights)."""
    from denoisers.architectures import resolve_model_source
    from quant.layers import layer_infos

    source = resolve_model_source(spec)
    model = source.build("meta")
    infos = {i.name: i for i in layer_infos(model)}
    if not infos:
        raise CacheError(f"model {spec!r} has no quantizable layer")
    return ModelLayers(source.name, infos)


# ------------------------------------------------------------------------------------ translation
@dataclass
class Translated:
    """One legacy config translated to this model's layer names, with what the translation resolved."""

    options: dict[str, str]
    unmatched: list[str]  # legacy keys naming no layer of the model
    split_resolved: list[str]  # layers whose two halves had different options
    dit_copied: int  # timestep-embedder layers given block 0's option


def resolve_halves(first: str, second: str) -> str:
    """One option for a layer the reference quantized as two halves: the same option → it;
    otherwise the one with fewer bits; equal bits → the first half's."""
    if first == second:
        return first
    return second if parse_option(second).bits < parse_option(first).bits else first


def translate(config: object, layers: dict[str, LayerInfo], where: str) -> Translated:
    """A reference config `{key: value}` → our {layer: option}, with the rules of the module doc."""
    if not isinstance(config, dict):
        raise CacheError(f"{where}: expected a dict of layer keys, got {type(config).__name__}")
    halves: dict[str, dict[int, str]] = {}
    unmatched = []
    for key, value in config.items():
        match = _KEY_RE.match(str(key))
        path, half = match.group("path"), int(match.group("half") is not None)
        if path not in layers:
            unmatched.append(str(key))
            continue
        halves.setdefault(path, {})[half] = _legacy_option(value, f"{where} layer {key}")
    options, split_resolved = {}, []
    for path, got in halves.items():
        if len(got) == 2 and got[0] != got[1]:
            split_resolved.append(path)
        options[path] = resolve_halves(got[0], got[1]) if len(got) == 2 else next(iter(got.values()))
    copied = 0
    for path in list(options):
        m = _DIT_TEMB_RE.match(path)
        if m and m.group(1) != "0":
            lead = options.get(f"transformer_blocks.0.{m.group(2)}")
            if lead is not None and options[path] != lead:
                options[path] = lead
                copied += 1
    return Translated(options, unmatched, split_resolved, copied)


def _unmatched_error(source: Path, spec: str, names: list[str], n_layers: int) -> CacheError:
    unique = list(dict.fromkeys(names))
    shown = ", ".join(unique[:_SHOWN]) + (f", ... (+{len(unique) - _SHOWN} more)" if len(unique) > _SHOWN else "")
    hint = ""
    if any(re.search(r"(^|\.)(input_blocks|output_blocks|middle_block)\.", n) for n in unique):
        hint = " (these are LDM module names; qsens names layers as diffusers does)"
    return CacheError(f"{source}: {len(unique)} layer name(s) match no quantizable layer of {spec} "
                      f"({n_layers} layers): {shown}{hint}; nothing written")


# ------------------------------------------------------------------------------ quant_cache.pkl
@dataclass
class LegacyImport:
    """What `import_legacy` wrote, for the one-line summary."""
    out: Path
    model: str
    rows: int
    ok: int
    records: int
    duplicates: int  # records mapping to a config already imported (the first ok one is kept)
    split_layers: int  # layer halves resolved by SPLIT_RULE, summed over configs
    split_configs: int  # configs with at least one such layer
    dit_copied: int  # timestep-embedder layers given block 0's option, summed over configs
    unlisted: list[str] = field(default_factory=list)  # model layers no record names (stay fp16)

    def summary(self) -> str:
        """The one-line (multi-part) summary `qsens cache import` prints."""
        parts = [f"{self.out}: imported {self.rows} legacy configs for {self.model} "
                 f"({self.ok} ok, {self.rows - self.ok} failed) from {self.records} records"]
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate record(s) (first ok kept)")
        parts.append(f"split layers with different halves: {self.split_layers} in {self.split_configs} "
                     f"config(s) ({SPLIT_RULE})")
        if self.dit_copied:
            parts.append(f"{self.dit_copied} timestep-embedder layer(s) set to block 0's option")
        if self.unlisted:
            parts.append(f"{len(self.unlisted)} model layer(s) named by no record stay fp16 "
                         f"(first: {self.unlisted[0]})")
        return "; ".join(parts)


def import_legacy(pkl: Path, out: Path, model: str | Path) -> LegacyImport:
    """Read a reference `quant_cache.pkl`, translate and check every name against `model`'s layers,
    write the rows to `out` (parquet, CACHE_SCHEMA). Nothing is written on any error."""
    pkl = Path(pkl)
    records = _read_pickle(pkl)
    if isinstance(records, dict):
        records = list(records.values())
    if not isinstance(records, list):
        raise CacheError(f"{pkl}: expected a list of records, got {type(records).__name__}")
    target = model_layers(model)
    version = "legacy:" + hashlib.sha256(pkl.read_bytes()).hexdigest()[:12]
    rows: dict[str, dict] = {}
    unmatched: list[str] = []
    named: set[str] = set()
    split_layers = split_configs = dit_copied = duplicates = 0
    for i, rec in enumerate(records):
        where = f"{pkl} record {i}"
        if not isinstance(rec, dict) or "config" not in rec:
            raise CacheError(f"{where}: expected a dict with a 'config' key")
        tr = translate(rec["config"], target.infos, where)
        unmatched += tr.unmatched
        if tr.unmatched:
            continue
        named |= set(tr.options)
        split_layers += len(tr.split_resolved)
        split_configs += bool(tr.split_resolved)
        dit_copied += tr.dit_copied
        config = QuantConfig(target.name, tr.options)
        stats = summarize(config.options, target.infos, _zero_errors(config))
        fid = _num(rec.get("FID-GT-1k", rec.get("fid")), f"{where} FID")
        ok = fid is not None and math.isfinite(fid)
        row = {
            "config_id": config.config_id, "model": target.name, "index": i,
            "options": json.dumps(config.canonical_options(), separators=(",", ":")), "act_bits": None,
            "avg_bits": stats.avg_bits, "quantized_bytes": float(stats.quantized_bytes),
            "quantized_error": _num(rec.get("quantized_error"), f"{where} quantized_error"),
            "bops": _num(rec.get("bops"), f"{where} bops"),
            "fid": fid, "content": None, "n_images": 1000, "image_seed": None, "sample_seed": None,
            "status": "ok" if ok else "failed", "reason": "" if ok else "legacy record without a finite FID",
            "attempts": 1, "seconds": None, "worker": "legacy", "code_version": version,
        }
        old = rows.get(config.config_id)
        if old is not None:
            duplicates += 1
            if old["status"] == "ok" or not ok:
                continue
        rows[config.config_id] = row
    if unmatched:
        raise _unmatched_error(pkl, str(model), unmatched, len(target.infos))
    table = pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=CACHE_SCHEMA)
    write_cache(table, Path(out))
    n_ok = sum(1 for r in rows.values() if r["status"] == "ok")
    return LegacyImport(Path(out), target.name, len(rows), n_ok, len(records), duplicates, split_layers,
                        split_configs, dit_copied, [n for n in target.infos if n not in named])


def _zero_errors(config: QuantConfig) -> dict[tuple[str, str], float]:
    # the accounting's error term needs per-weight MSEs we do not have: sizes only here
    return {(l, o): 0.0 for l, o in config.options.items()}


def _num(value, where: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CacheError(f"{where}: expected a number, got {value!r}") from None


# ------------------------------------------------------------------------- quant_configs/*.pkl
@dataclass
class LegacyConfig:
    """A legacy config file imported as a `QuantConfig`, with what the import resolved."""

    config: QuantConfig
    split_resolved: list[str]
    dit_copied: int
    unlisted: list[str]  # model layers the file does not name (stay fp16)

    def summary(self, out: Path) -> str:
        """The summary `qsens config import` prints for the config written to `out`."""
        parts = [f"{out}: {len(self.config.canonical_options())} layers of {self.config.model}, "
                 f"{self.config.avg_bits:.4f} avg bits",
                 f"split layers with different halves: {len(self.split_resolved)} ({SPLIT_RULE})"]
        if self.dit_copied:
            parts.append(f"{self.dit_copied} timestep-embedder layer(s) set to block 0's option")
        if self.unlisted:
            parts.append(f"{len(self.unlisted)} model layer(s) not in the file stay fp16 (first: {self.unlisted[0]})")
        return "; ".join(parts)


def read_legacy_config(pkl: Path, model: str | Path) -> LegacyConfig:
    """One reference `quant_configs/*.pkl` (`{key: "method-bits"}`; a quant_cache record's
    `{"config": {...}}` also works) → a QuantConfig for `model`, every name checked."""
    pkl = Path(pkl)
    data = _read_pickle(pkl)
    if isinstance(data, list):
        raise CacheError(f"{pkl}: a list of {len(data)} records is a quant_cache, not one config; "
                         "use `qsens cache import-legacy`")
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    target = model_layers(model)
    tr = translate(data, target.infos, str(pkl))
    if tr.unmatched:
        raise _unmatched_error(pkl, str(model), tr.unmatched, len(target.infos))
    if not tr.options:
        raise CacheError(f"{pkl}: the config names no layer")
    config = QuantConfig(target.name, tr.options)
    config.avg_bits = summarize(config.options, target.infos, _zero_errors(config)).avg_bits
    return LegacyConfig(config, tr.split_resolved, tr.dit_copied,
                        [n for n in target.infos if n not in tr.options])
