"""Graph files: networkx node-link JSON (`{"directed": true, "graph": {...}, "nodes": [...],
"edges": [...]}`). Each node has `id` (weight nodes: the layer's module path), `kind`, `op`,
`module` and the static features of `graphs.dag`; `graph` holds the model class, its config,
the example inputs used for tracing (resolution, text tokens) and the timings.
"""
from __future__ import annotations

import json
from pathlib import Path

import networkx as nx

from core.errors import QsensError
from core.jsonio import read_json


def graph_to_json(graph: nx.DiGraph) -> dict:
    """The DAG as networkx node-link JSON (edges under `edges`)."""
    return nx.node_link_data(graph, edges="edges")


def graph_from_json(data: dict) -> nx.DiGraph:
    """Node-link JSON (`edges` or the older `links` key) -> directed DAG."""
    key = "edges" if "edges" in data else "links"
    graph = nx.node_link_graph(data, directed=True, multigraph=False, edges=key)
    return nx.DiGraph(graph)


def write_graph(graph: nx.DiGraph, path: str | Path) -> Path:
    """Write the DAG as node-link JSON, atomically (a DVC stage never sees half a file); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(graph_to_json(graph), f, indent=1)
        f.write("\n")
    tmp.replace(path)  # atomic: a DVC stage never sees half a file
    return path


def read_graph(path: str | Path) -> nx.DiGraph:
    """Read a DAG written by `write_graph`; QsensError when the file is not node-link JSON."""
    path = Path(path)
    data = read_json(path, "a node-link graph file (an object with `nodes`)")
    if "nodes" not in data:
        raise QsensError(f"{path}: not a node-link graph file (no `nodes`)")
    return graph_from_json(data)
