"""Module-level DAG -> torch-geometric `Data`, with cheap per-config feature swaps.

`data.x` is (N, F): the static columns `STATIC_COLUMNS` first, then `CONFIG_COLUMNS`
(see `graphs.features`). Nodes keep the DAG's order; `data.node_names[i]` is node i's id and
`data.weight_index` lists the rows of weight nodes, aligned with `data.layer_names`, so a config
is applied by writing the (L, 7) block `x[weight_index, config_slice]` and nothing else.

Static columns (all roughly in [0, 1]):
- kind one-hot: input, output, weight, combine
- op one-hot: Linear, Conv1d, Conv2d, then every combine kind of `graphs.dag.COMBINE_KINDS`
- section one-hot (from the module path): io, down, mid, up, blocks
- log2(1 + in_channels)/16, log2(1 + out_channels)/16, log2(1 + kernel area)/4, grouped conv flag
- log10(1 + params)/10, log10(1 + MACs)/12, min(uses - 1, 3)/3
- stage, block, sub_block (path indices) as (i + 1)/(max_i + 1) over the graph, 0 when absent
- depth / max depth
"""
from __future__ import annotations

import math
from typing import Any

import networkx as nx
import torch
from torch_geometric.data import Data

from graphs.dag import COMBINE_KINDS, NODE_KINDS, SECTION_KINDS, WEIGHT_OPS
from graphs.features import CONFIG_COLUMNS, BankLike, ConfigFeaturizer

OP_CODES: tuple[str, ...] = WEIGHT_OPS + COMBINE_KINDS
STATIC_COLUMNS: tuple[str, ...] = (
    tuple(f"kind_{k}" for k in NODE_KINDS)
    + tuple(f"op_{o}" for o in OP_CODES)
    + tuple(f"section_{s}" for s in SECTION_KINDS)
    + ("log_in_channels", "log_out_channels", "log_kernel_area", "grouped",
       "log_params", "log_macs", "reuse", "stage", "block", "sub_block", "depth_norm")
)
FEATURE_NAMES: tuple[str, ...] = STATIC_COLUMNS + CONFIG_COLUMNS
CONFIG_SLICE = slice(len(STATIC_COLUMNS), len(FEATURE_NAMES))


def _onehot(value: str, codes: tuple[str, ...]) -> list[float]:
    return [1.0 if value == c else 0.0 for c in codes]


def static_features(graph: nx.DiGraph) -> torch.Tensor:
    """(N, len(STATIC_COLUMNS)) in graph node order."""
    nodes = list(graph.nodes(data=True))
    max_pos = {k: max([d[k] for _, d in nodes] + [0]) for k in ("stage", "block", "sub_block")}
    rows = []
    for _, d in nodes:
        kernel_area = math.prod(d["kernel"]) if d["kernel"] else (1 if d["kind"] == "weight" else 0)
        row = (_onehot(d["kind"], NODE_KINDS) + _onehot(d["op"], OP_CODES)
               + _onehot(d["section_kind"], SECTION_KINDS)
               + [math.log2(1 + d["in_channels"]) / 16, math.log2(1 + d["out_channels"]) / 16,
                  math.log2(1 + kernel_area) / 4, 1.0 if d["groups"] > 1 else 0.0,
                  math.log10(1 + d["params"]) / 10, math.log10(1 + d["macs"]) / 12,
                  min(max(d["uses"] - 1, 0), 3) / 3]
               + [(d[k] + 1) / (max_pos[k] + 1) if d[k] >= 0 else 0.0
                  for k in ("stage", "block", "sub_block")]
               + [float(d["depth_norm"])])
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def to_pyg(graph: nx.DiGraph, config: Any = None, bank: BankLike | None = None) -> Data:
    """Convert the DAG (config columns = fp16 unless `config` is given)."""
    names = list(graph.nodes)
    pos = {n: i for i, n in enumerate(names)}
    edges = [(pos[u], pos[v]) for u, v in graph.edges]
    edge_index = torch.tensor(edges, dtype=torch.long).t().contiguous() if edges \
        else torch.zeros(2, 0, dtype=torch.long)  # (2, E)
    static = static_features(graph)  # (N, S)
    x = torch.zeros(len(names), len(FEATURE_NAMES), dtype=torch.float32)  # (N, F)
    x[:, : len(STATIC_COLUMNS)] = static
    weight_index = [i for i, n in enumerate(names) if graph.nodes[n]["kind"] == "weight"]
    data = Data(x=x, edge_index=edge_index, num_nodes=len(names))
    data.node_names = names
    data.layer_names = [names[i] for i in weight_index]
    data.weight_index = torch.tensor(weight_index, dtype=torch.long)  # (L,)
    data.feature_names = list(FEATURE_NAMES)
    set_config(data, config, bank)
    return data


def set_config(data: Data, config: Any, bank: BankLike | None,
               featurizer: ConfigFeaturizer | None = None) -> Data:
    """Overwrite only the config columns of the weight rows (in place; returns `data`).

    Pass a `ConfigFeaturizer(data.layer_names, bank)` when featurising many configs: it caches
    each (layer, option) row."""
    featurizer = featurizer or ConfigFeaturizer(data.layer_names, bank)
    rows = featurizer(config if config is not None else {})  # (L, C)
    data.x[data.weight_index, CONFIG_SLICE] = rows
    return data


def node_layer(data: Data, index: int) -> str | None:
    """Layer name of node `index`, or None for input/output/combine nodes."""
    name = data.node_names[index]
    return name if data.x[index, STATIC_COLUMNS.index("kind_weight")] > 0 else None


def layer_scores(data: Data, node_scores: torch.Tensor) -> dict[str, float]:
    """Per-node scores (N,) -> {layer name: score} for the weight nodes."""
    return {name: float(node_scores[i]) for name, i in zip(data.layer_names, data.weight_index.tolist())}
