"""Export a found config to other tools: a torchao per-module config, and skip lists.

torchao (`torchao_plan` -> `write_torchao_config` -> `apply_torchao_config`):
    UAQ b-bit  -> `IntxWeightOnlyConfig(weight_dtype=torch.int{b}, granularity=PerAxis(0),
                  mapping_type=ASYMMETRIC)`: integer weight-only, one scale/zero per output
                  channel of a Linear; on a Conv2d torchao's blocks are (1, C_in, 1, 1), i.e. one
                  scale/zero per output channel and kernel position (Conv1d: 3-D weights, and
                  Conv2d with one input channel per group, are not supported by it)
    K-Means-C/A b-bit -> torchao's codebook config (`torchao.prototype.quantization.codebook.
                  CodebookWeightOnlyConfig(dtype=torch.uint{b}, block_size=(1, 1))`) on Linear
                  weights: ONE codebook of 2^b scalars per tensor with a per-row max scale — so
                  K-Means-A maps in kind, K-Means-C (a codebook per output channel) only
                  approximately; conv weights are not supported by it
    fp16       -> not listed (torchao leaves the module as it is)
    anything else -> `unsupported`, by layer name, with the reason.
torchao computes its own scales / codebooks from the FP weights when `quantize_` runs (min-max
affine ranges; its own k-means), not ours (Lp-searched clipping ranges; our k-means), so the
images differ from our fake-quant ones even where the formats agree (bench/export.py measures it).

File (`torchao.json`): {"format": "qsens-torchao", "format_version", "torchao_version", "model",
"fingerprint", "fqn_to_config": {fqn: torchao.core.config.config_to_dict(config)}, "options",
"unsupported", "notes"}. Every entry reads back with torchao's `config_from_dict` except the
codebook config (torchao 0.18 does not export it from a module `config_from_dict` searches);
`read_torchao_config` builds that one itself and returns a `torchao.quantization.FqnToConfig`.

Skip lists (`skip_list`): the K layers the predictor ranks most sensitive (its per-layer score at
the lowest bit-width, `predictor.inspect.layer_scores`), as the keep-in-high-precision lists of
diffusers+bitsandbytes (`llm_int8_skip_modules`), diffusers+torchao and diffusers+quanto
(`modules_to_not_convert`), transformers (`llm_int8_skip_modules`) and optimum-quanto (`exclude`),
each written for that tool's own name rule so that it keeps exactly those layers (`keeps`), or
refused for a tool whose rule cannot name one of them alone.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from torch import nn

from quant.config import QuantConfig
from core.errors import QsensError
from core.jsonio import read_json, write_json
from quant.layers import LayerInfo
from quant.methods import get_method
from quant.options import FP16, parse_option

TORCHAO_FORMAT = "qsens-torchao"
TORCHAO_FORMAT_VERSION = 1
TORCHAO_FILE = "torchao.json"
SKIP_FILE = "skip_list.json"
_CODEBOOK = "CodebookWeightOnlyConfig"


@dataclass
class TorchaoPlan:
    """What torchao can take of a config: `configs` {fqn: torchao config}, `unsupported`
    {fqn: reason}, `options` {fqn: our option} for every quantized layer."""

    model: str
    configs: dict[str, Any] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)


def _torchao():
    try:
        import torchao  # noqa: F401
        from torchao.quantization import IntxWeightOnlyConfig, MappingType, PerAxis
    except ImportError as exc:
        raise QsensError(f"torchao is not installed ({exc}); pip install torchao") from None
    return IntxWeightOnlyConfig, MappingType, PerAxis


def _codebook_class():
    """torchao's codebook config class, or None where the installed version has none."""
    try:
        from torchao.prototype.quantization.codebook.codebook_quantized_tensor import CodebookWeightOnlyConfig
    except ImportError:
        return None
    return CodebookWeightOnlyConfig


def torchao_plan(config: QuantConfig, infos: Mapping[str, LayerInfo]) -> TorchaoPlan:
    """Map each quantized layer of `config` to a torchao config (module doc). `infos`: the
    layers' shapes and kinds (`bank.layers`). Raises QsensError for a layer not in `infos`."""
    import torch

    IntxWeightOnlyConfig, MappingType, PerAxis = _torchao()
    codebook = _codebook_class()
    plan = TorchaoPlan(config.model)
    for name, option in config.options.items():
        if option == FP16:
            continue
        if name not in infos:
            raise QsensError(f"config layer {name} is not a layer of {config.model!r}")
        opt, kind = parse_option(option), infos[name].kind
        plan.options[name] = option
        torchao_kind = get_method(opt.method).torchao
        if torchao_kind is None:
            plan.unsupported[name] = f"{option}: method {opt.method!r} has no torchao equivalent"
        elif torchao_kind == "affine":
            if kind not in ("Linear", "Conv2d"):
                plan.unsupported[name] = f"{option} on a {kind}: torchao's IntxWeightOnlyConfig takes 2-D/4-D weights only"
                continue
            if kind == "Conv2d" and infos[name].shape[1] == 1:
                plan.unsupported[name] = (f"{option} on a Conv2d with 1 input channel per group: torchao "
                                          "0.18's IntxWeightOnlyConfig fails on its one-weight blocks")
                continue
            plan.configs[name] = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{opt.bits}"),
                                                      granularity=PerAxis(0), mapping_type=MappingType.ASYMMETRIC)
        elif codebook is None:
            plan.unsupported[name] = f"{option}: this torchao has no codebook config"
        elif kind != "Linear":
            plan.unsupported[name] = f"{option} on a {kind}: torchao's codebook config takes Linear weights only"
        else:
            plan.configs[name] = codebook(dtype=getattr(torch, f"uint{opt.bits}"), block_size=(1, 1))
    return plan


def _to_dict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    from torchao.core.config import config_to_dict

    if type(cfg).__name__ == _CODEBOOK:  # tuples are refused by torchao's encoder: a list here
        cfg = dataclasses.replace(cfg, block_size=list(cfg.block_size))
    return config_to_dict(cfg)


def write_torchao_config(plan: TorchaoPlan, path: str | Path, fingerprint: str | None = None) -> Path:
    """Write `plan` as JSON (module doc) atomically; return the path."""
    import torchao

    path = Path(path)
    data = {
        "format": TORCHAO_FORMAT, "format_version": TORCHAO_FORMAT_VERSION,
        "torchao_version": torchao.__version__, "model": plan.model, "fingerprint": fingerprint,
        "fqn_to_config": {fqn: _to_dict(c) for fqn, c in plan.configs.items()},
        "options": plan.options, "unsupported": plan.unsupported,
        "notes": ("torchao computes its own scales (min-max affine per output channel; per output channel "
                  "and kernel position on convs) and codebooks "
                  "(one per tensor, per-row max scales) from the FP weights: not qsens' Lp-searched "
                  "ranges or per-channel k-means codebooks. Load: search.export.apply_torchao_config."),
    }
    return write_json(path, data, indent=1)


def read_torchao_config(path: str | Path):
    """(torchao FqnToConfig, the file's dict). QsensError (one line) for a missing file, another
    format, or an entry torchao cannot build."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / TORCHAO_FILE
    if not path.is_file():
        raise QsensError(f"{path}: no torchao config (write one with `qsens export --format torchao`)")
    data = read_json(path, "a qsens torchao config")
    if data.get("format") != TORCHAO_FORMAT or data.get("format_version") != TORCHAO_FORMAT_VERSION:
        raise QsensError(f"{path}: not a {TORCHAO_FORMAT}/{TORCHAO_FORMAT_VERSION} file")
    _torchao()
    from torchao.core.config import config_from_dict
    from torchao.quantization import FqnToConfig

    configs = {}
    for fqn, entry in data.get("fqn_to_config", {}).items():
        try:
            if isinstance(entry, dict) and entry.get("_type") == _CODEBOOK:
                cls = _codebook_class()
                if cls is None:
                    raise ValueError("this torchao has no codebook config")
                d = entry["_data"]
                configs[fqn] = cls(dtype=getattr(torch, d["dtype"]["_data"]), block_size=tuple(d["block_size"]),
                                   scale_block_size=d.get("scale_block_size"))
            else:
                configs[fqn] = config_from_dict(entry)
        except Exception as exc:  # torchao raises ValueError/TypeError/KeyError for foreign entries
            raise QsensError(f"{path}: entry for {fqn} is not a config this torchao builds ({exc})") from None
    return FqnToConfig(configs), data


def apply_torchao_config(model: nn.Module, path: str | Path) -> nn.Module:
    """`torchao.quantize_(model, FqnToConfig)` with the config at `path` (or a dir holding
    torchao.json); returns `model` (changed in place). QsensError when a listed layer is not in
    `model`."""
    from torchao.quantization import quantize_

    cfg, _ = read_torchao_config(path)
    names = {n for n, _ in model.named_modules()}
    absent = [fqn for fqn in cfg.fqn_to_config if fqn not in names]
    if absent:
        raise QsensError(f"{path}: {len(absent)} layer(s) not in this model (first: {absent[0]})")
    quantize_(model, cfg, filter_fn=None)
    return model


# ------------------------------------------------------------------------------------ skip lists
def sensitivity_ranking(predictor_dir: str | Path) -> pd.DataFrame:
    """Layers ranked by the predictor, most sensitive first: `predictor.inspect.layer_scores`
    of its `sensitivity.parquet` (written by `qsens predictor train`), or of the ensemble's
    sensitivity when that table is absent. Columns: sens_low, sens_high, block, rank, ..."""
    from predictor.inspect import layer_scores

    pdir = Path(predictor_dir)
    table_path = pdir / "sensitivity.parquet"
    if table_path.is_file():
        try:
            table = pd.read_parquet(table_path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise QsensError(f"{table_path}: unreadable ({exc}); retrain with `qsens predictor train`") from None
    else:
        from predictor.api import Ensemble

        table = Ensemble.load(pdir).sensitivity()
    need = {"layer", "option", "delta_fid", "delta_fid_std"}
    if not need <= set(table.columns):
        raise QsensError(f"{pdir}: sensitivity table lacks {sorted(need - set(table.columns))}")
    return layer_scores(table)


# Each consumer's own rule for "this module is kept in high precision by the list `keys`", as its
# installed code states it (read from .venv site-packages; tests/test_faults.py checks the rules
# against the installed libraries where they run on CPU). `layer` is a module's full name.
def _diffusers_bnb_keeps(layer: str, keys: Sequence[str]) -> bool:
    # diffusers 0.42 quantizers/bitsandbytes/utils.py _replace_with_bnb_linear: a Linear is left
    # as is when its local name is in the list, or a key + "." occurs anywhere in its full name,
    # or a key equals its full name
    return layer.rsplit(".", 1)[-1] in keys or any(k + "." in layer or k == layer for k in keys)


def _diffusers_torchao_keeps(layer: str, keys: Sequence[str]) -> bool:
    # diffusers 0.42 quantizers/torchao/torchao_quantizer.py check_if_quantized_param: a parameter
    # is not quantized when a key + "." occurs anywhere in its name or a key equals it; the
    # quantized parameter is "{module}.weight" of a Linear. "transformer_blocks.0.attn.to_q"
    # therefore also keeps "single_transformer_blocks.0.attn.to_q".
    param = layer + ".weight"
    return any(k + "." in param or k == param for k in keys)


def _diffusers_quanto_keeps(layer: str, keys: Sequence[str]) -> bool:
    # diffusers 0.42 quantizers/quanto/utils.py _replace_with_quanto_layers: only a module's local
    # name (named_children) is compared with the list; a full dotted name never matches
    return layer.rsplit(".", 1)[-1] in keys


def _transformers_keeps(layer: str, keys: Sequence[str]) -> bool:
    # transformers 5.x quantizers/quantizers_utils.py should_convert_module: each key is a regex
    # matched from the start up to a module boundary, or a plain suffix of the full name
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return any(re.match(rf"(?:{k}){boundary}", layer) or layer.endswith(k) for k in keys)


def _quanto_keeps(layer: str, keys: Sequence[str]) -> bool:
    # optimum-quanto quantize(model, exclude=[...]): fnmatch of each pattern against the full
    # module name (optimum-quanto is not installed here: its rule as documented and released)
    return any(fnmatch.fnmatchcase(layer, k) for k in keys)


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# tool -> (the keyword the list is passed as, the consumer's rule, candidate keys for one layer in
# order of preference: its plain name first, then names anchored to it under that rule)
SKIP_TOOLS: dict[str, tuple[str, Any, Any, str]] = {
    "bitsandbytes": ("llm_int8_skip_modules", _diffusers_bnb_keeps, lambda n: [n],
                     "diffusers BitsAndBytesConfig: local name, or key + '.' inside / equal to the full name"),
    "diffusers": ("modules_to_not_convert", _diffusers_torchao_keeps, lambda n: [n, n + ".weight"],
                  "diffusers TorchAoConfig: key + '.' anywhere inside, or equal to, '{module}.weight'"),
    "diffusers_quanto": ("modules_to_not_convert", _diffusers_quanto_keeps, lambda n: [n.rsplit(".", 1)[-1]],
                         "diffusers QuantoConfig: the module's local name only"),
    "transformers": ("llm_int8_skip_modules", _transformers_keeps,
                     lambda n: [n, re.escape(n) + "$"],
                     "transformers should_convert_module: regex from the start to a module boundary, or a suffix"),
    "quanto": ("exclude", _quanto_keeps, lambda n: [_glob_escape(n)],
               "optimum-quanto quantize(exclude=): fnmatch on the full module name"),
}


def consumer_keeps(tool: str, keys: Sequence[str], layers: Sequence[str]) -> list[str]:
    """The layers (of `layers`, in their order) that `tool` keeps in high precision given `keys`."""
    rule = SKIP_TOOLS[tool][1]
    return [n for n in layers if rule(n, list(keys))]


def _tool_entry(tool: str, keep: Sequence[str], layers: Sequence[str]) -> dict[str, Any]:
    """The keep-list for `tool` that makes it keep exactly `keep`: each layer's plain name when
    the tool's rule matches nothing else with it, else a name anchored to it under that rule; the
    entry is refused (`refused`: why, the list None) when some layer cannot be named alone."""
    key, rule, candidates, how = SKIP_TOOLS[tool]
    wanted = set(keep)
    keys: list[str] = []
    for name in keep:
        if any(rule(name, [k]) for k in keys):
            continue  # an earlier key (e.g. a shared local name) already keeps it, and only wanted layers
        for cand in candidates(name):
            hits = {n for n in layers if rule(n, [cand])}
            if name in hits and hits <= wanted:
                keys.append(cand)
                break
        else:
            extra = sorted({n for c in candidates(name) for n in layers if rule(n, [c])} - wanted)
            return {key: None, "keeps": None, "also_kept": extra, "rule": how,
                    "refused": (f"{tool} cannot keep {name} without also keeping {', '.join(extra[:3])}"
                                f"{' ...' if len(extra) > 3 else ''} (its rule: {how})")}
    kept = consumer_keeps(tool, keys, layers)
    assert set(kept) == wanted, (tool, kept, keep)  # by construction; a rule change must not go unseen
    return {key: keys, "keeps": kept, "also_kept": [], "rule": how}


def skip_list(ranking: pd.DataFrame, keep_top: int, layers: Sequence[str],
              tied: Sequence[Sequence[str]] = ()) -> dict[str, Any]:
    """The `keep_top` most sensitive layers as each tool's keep-in-high-precision list.

    ranking: `sensitivity_ranking` (index = layer names). layers: every quantizable layer of the
    model (a ranked layer outside it is refused). A kept layer's tied partners are kept too
    (one tensor). Per tool (SKIP_TOOLS), the list is written so that the tool's own name rule
    keeps exactly these layers (`keeps`; `also_kept` is then empty): a name the rule would
    stretch to other layers is anchored (diffusers+torchao: "{layer}.weight"; transformers: an
    escaped regex ending in "$"), and a tool whose rule cannot name a layer alone (bitsandbytes
    and diffusers+quanto match local names) gets `refused` with the reason and the layers it would
    also keep, instead of a list. Raises QsensError for keep_top < 1 or a ranking of another model.
    """
    if keep_top < 1:
        raise QsensError(f"--keep-top must be at least 1, got {keep_top}")
    layer_set = set(layers)
    unknown = [n for n in ranking.index if n not in layer_set]
    if unknown:
        raise QsensError(f"the predictor ranks layer(s) this model lacks (first: {unknown[0]}): "
                         "it was trained for another model")
    ordered = list(ranking.index)
    keep = ordered[:keep_top]
    for group in tied:
        if any(n in keep for n in group):
            keep += [n for n in group if n not in keep]
    out: dict[str, Any] = {"keep_top": keep_top, "keep": keep}
    for tool in SKIP_TOOLS:
        out[tool] = _tool_entry(tool, keep, list(layers))
    out["ranking"] = [{"layer": n, "rank": int(r.get("rank", i + 1)), "sens_low": float(r["sens_low"]),
                       "sens_high": float(r["sens_high"])} for i, (n, r) in enumerate(ranking.iterrows())]
    return out


def write_skip_list(data: dict[str, Any], path: str | Path) -> Path:
    """Write the skip-list JSON atomically (`core.jsonio.write_json`); returns `path`."""
    return write_json(path, data, indent=1)
