"""Sensitivity scores from a trained ensemble, around a reference config.

Layer table (`sensitivity.parquet`, the search's input; columns exactly):
    layer          str    module path
    option         str    quantized option
    delta_fid      float  mean over members of  pred(ref with layer := option) − pred(ref);
                          0 for the reference's own option
    delta_fid_std  float  std over members of the same difference
    block          str    `block_of(layer)`: section + its index when the index follows it
                          (down_blocks.1, up_blocks.0, transformer_blocks.13), else the
                          section (mid_block, time_embedding, conv_in, conv_out)

Subgraph table (`blocks.parquet`):
    level          block | unit   (unit = one ResNet / attention / sampler inside a block:
                                   down_blocks.1.attentions.0, mid_block.resnets.1, ...)
    name, option   every layer of the subgraph takes the option, the rest stays at the reference
    delta_fid, delta_fid_std      as above, predicted jointly (interactions included)
    delta_fid_sum  Σ of the member-mean layer deltas (the additive guess; compare to delta_fid)
    n_layers, n_weights, unit_type (resnets / attentions / time_embedding / ...)

Default reference: every layer at the highest bit-width with its lowest-error method there.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from graphs.dag import position_of

if TYPE_CHECKING:
    from predictor.api import Ensemble

_INDEX = re.compile(r"^\d+$")


def block_of(layer: str) -> str:
    """A layer's block: section + index when an index follows (`down_blocks.1`), else its section."""
    parts = layer.split(".")
    if len(parts) > 1 and _INDEX.match(parts[1]):
        return ".".join(parts[:2])
    return position_of(layer)["section"] or parts[0]


def unit_of(layer: str) -> str:
    """Block + the next `name.index` pair inside it (one ResNet / attention / sampler)."""
    block = block_of(layer)
    rest = layer[len(block):].lstrip(".").split(".")
    if len(rest) >= 2 and _INDEX.match(rest[1]):
        return f"{block}.{rest[0]}.{rest[1]}"
    return block


def unit_type(unit: str) -> str:
    """`down_blocks.1.attentions.0` -> attentions; `time_embedding` -> time_embedding."""
    parts = [p for p in unit.split(".") if not _INDEX.match(p)]
    return parts[-1] if parts else unit


def layer_sensitivity(ens: "Ensemble", reference: dict[str, str]) -> pd.DataFrame:
    """The layer table (module docstring): each (layer, option) swapped into the reference alone,
    Δ predicted FID vs the reference, mean and std over the members.
    """
    t = ens.template
    ref_idx = t.encode([reference])[0]  # (L,)
    opts = [i for i, o in enumerate(t.options) if o != "fp16"]
    rows = [ref_idx.clone()]
    keys = []
    for l, name in enumerate(t.layer_names):
        for i in opts:
            r = ref_idx.clone()
            r[l] = i
            rows.append(r)
            keys.append((name, t.options[i]))
    pred = ens.predict_idx_members(torch.stack(rows))  # (M, 1 + L·O)
    delta = pred[:, 1:] - pred[:, :1]
    same = np.array([reference.get(n, "fp16") == o for n, o in keys])
    delta[:, same] = 0.0
    return pd.DataFrame({"layer": [k[0] for k in keys], "option": [k[1] for k in keys],
                         "delta_fid": delta.mean(0), "delta_fid_std": delta.std(0),
                         "block": [block_of(k[0]) for k in keys]})


def block_sensitivity(ens: "Ensemble", reference: dict[str, str], layer_table: pd.DataFrame | None = None
                      ) -> pd.DataFrame:
    """The subgraph table (module docstring): every layer of a block / unit at one option, predicted
    jointly, next to the sum of the layer deltas (`layer_table`, computed when None).
    """
    t = ens.template
    if layer_table is None:
        layer_table = layer_sensitivity(ens, reference)
    per_layer = layer_table.set_index(["layer", "option"])["delta_fid"]
    ref_idx = t.encode([reference])[0]
    groups: dict[tuple[str, str], list[int]] = {}
    for l, name in enumerate(t.layer_names):
        groups.setdefault(("block", block_of(name)), []).append(l)
        u = unit_of(name)
        if u != block_of(name):
            groups.setdefault(("unit", u), []).append(l)
    opts = [i for i, o in enumerate(t.options) if o != "fp16"]
    rows, keys = [ref_idx.clone()], []
    for (level, name), members in groups.items():
        for i in opts:
            r = ref_idx.clone()
            r[members] = i
            rows.append(r)
            keys.append((level, name, t.options[i], members))
    pred = ens.predict_idx_members(torch.stack(rows))
    delta = pred[:, 1:] - pred[:, :1]
    out = []
    for j, (level, name, opt, members) in enumerate(keys):
        layers = [t.layer_names[l] for l in members]
        out.append({"level": level, "name": name, "option": opt, "delta_fid": float(delta[:, j].mean()),
                    "delta_fid_std": float(delta[:, j].std()),
                    "delta_fid_sum": float(sum(per_layer[(n, opt)] for n in layers)),
                    "n_layers": len(layers), "n_weights": int(t.n_weights[members].sum()),
                    "unit_type": unit_type(name)})
    return pd.DataFrame(out)


def write_tables(ens: "Ensemble", out_dir, reference: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write sensitivity.parquet and blocks.parquet into `out_dir`; returns (layers, blocks)."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = ens.reference(reference)
    layers = layer_sensitivity(ens, ref)
    blocks = block_sensitivity(ens, ref, layers)
    layers.to_parquet(out / "sensitivity.parquet", index=False)
    blocks.to_parquet(out / "blocks.parquet", index=False)
    return layers, blocks
