"""Draw a module-level DAG to PNG/SVG.

graphviz (`dot`) is used when both the binary and pygraphviz are installed; otherwise matplotlib
with one of two layouts:
- `layered`: one rank per longest-path depth from the inputs (left->right or top->bottom), nodes
  in a rank ordered by the barycentre of their predecessors (a few sweeps remove most crossings).
- `unet`: x = depth, y = resolution level (log2 of how much smaller a node's feature map is than
  the largest one), conditioning vectors in a band on top; a U-Net then draws as a U, with its
  skip concats as long dashed edges. Chosen automatically when the graph has skip concats.
Weight nodes can be coloured by a per-layer score (e.g. predicted sensitivity).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Mapping

import networkx as nx

from graphs.dag import skip_concats

COLORS = {
    "input": "#4c72b0", "output": "#c44e52",
    "Linear": "#8fbc8f", "Conv2d": "#3f8f5a", "Conv1d": "#3f8f5a",
    "add": "#dd8452", "mul": "#e6a96b", "concat": "#7b5b3a", "attention": "#8172b3",
    "matmul": "#a597d1", "norm": "#ccb974", "adanorm": "#e0c341", "activation": "#da8bc3",
    "other": "#bbbbbb",
}


def node_color(d: Mapping) -> str:
    key = d["kind"] if d["kind"] in ("input", "output") else d["op"]
    return COLORS.get(key, "#bbbbbb")


def short_label(name: str, d: Mapping, prefix: str = "") -> str:
    """Readable label: the last two path parts for layers, `kind` + site for combines."""
    if d["kind"] == "input":
        return name.split("/", 1)[-1]
    if d["kind"] == "output":
        return "output"
    path = name.split("/")[0]
    if prefix and (path == prefix or path.startswith(prefix + ".")):
        path = path[len(prefix):].lstrip(".")
    parts = [p for p in path.split(".") if p]
    keep = 3 if any(p.isdigit() for p in parts[-2:]) else 2  # `net.0.proj`, not `0.proj`
    tail = ".".join(parts[-keep:]) if parts else ""
    if d["kind"] == "weight":
        return tail
    return f"{d['op']} ({tail})" if tail else d["op"]


def block_subgraph(graph: nx.DiGraph, prefix: str) -> nx.DiGraph:
    """Nodes whose module path starts with `prefix`, plus their direct neighbours outside it
    (marked `boundary=True`), for drawing one block."""
    inside = {n for n, d in graph.nodes(data=True)
              if d["module"] == prefix or d["module"].startswith(prefix + ".")}
    border = set()
    for n in inside:
        border |= set(graph.predecessors(n)) | set(graph.successors(n))
    sub = graph.subgraph(inside | border).copy()
    for n in sub.nodes:
        sub.nodes[n]["boundary"] = n not in inside
    sub.remove_edges_from([(u, v) for u, v in list(sub.edges)
                           if sub.nodes[u]["boundary"] and sub.nodes[v]["boundary"]])
    return sub


def _depths(graph: nx.DiGraph) -> dict[str, int]:
    depth: dict[str, int] = {}
    for n in nx.topological_sort(graph):
        preds = list(graph.predecessors(n))
        depth[n] = 0 if not preds else 1 + max(depth[p] for p in preds)
    return depth


def _order_ranks(graph: nx.DiGraph, ranks: dict[object, list[str]], sweeps: int) -> dict[str, float]:
    y = {n: float(i) for col in ranks.values() for i, n in enumerate(col)}
    for _ in range(sweeps):
        for key in sorted(ranks, key=str):
            col = ranks[key]
            bary = {n: (sum(y[p] for p in graph.predecessors(n)) / graph.in_degree(n)
                        if graph.in_degree(n) else y[n]) for n in col}
            col.sort(key=lambda n: (bary[n], y[n]))
            for i, n in enumerate(col):
                y[n] = float(i)
    return y


def layered_positions(graph: nx.DiGraph, orientation: str = "LR",
                      sweeps: int = 4) -> dict[str, tuple[float, float]]:
    depth = _depths(graph)
    ranks: dict[object, list[str]] = {}
    for n in graph.nodes:  # graph order = execution order: a good initial ordering
        ranks.setdefault(depth[n], []).append(n)
    y = _order_ranks(graph, ranks, sweeps)
    pos = {}
    for n in graph.nodes:
        offset = y[n] - (len(ranks[depth[n]]) - 1) / 2  # centre each rank
        pos[n] = (float(depth[n]), -offset) if orientation == "LR" else (offset, -float(depth[n]))
    return pos


def _levels(graph: nx.DiGraph) -> dict[str, float | None]:
    """Resolution level per node: log2(largest side / side) for square (B, C, H, W) outputs;
    other outputs (tokens, attention heads, vectors) inherit the deepest level of their inputs;
    None = conditioning (no spatial input upstream)."""
    def side(d: Mapping) -> int | None:
        shape = d.get("out_shape") or []
        if d["op"] in ("attention", "matmul"):  # (B, heads, L, d) only looks like a feature map
            return None
        return shape[-1] if len(shape) == 4 and shape[-1] == shape[-2] else None

    sides = [s for _, d in graph.nodes(data=True) if (s := side(d))]
    top = max(sides) if sides else 1
    level: dict[str, float | None] = {}
    for n in nx.topological_sort(graph):
        s = side(graph.nodes[n])
        if s:
            level[n] = math.log2(max(top / s, 1.0))
        else:
            known = [level[p] for p in graph.predecessors(n) if level[p] is not None]
            level[n] = max(known) if known else None
    return level


def unet_positions(graph: nx.DiGraph, band: float = 2.2) -> dict[str, tuple[float, float]]:
    depth = _depths(graph)
    level = _levels(graph)
    # conditioning nodes are placed as late as possible: right above the block they feed
    x = {n: float(depth[n]) for n in graph.nodes}
    for n in reversed(list(nx.topological_sort(graph))):
        d = graph.nodes[n]
        if level[n] is None and d["kind"] != "input" and graph.out_degree(n):
            x[n] = min(x[s] for s in graph.successors(n)) - 1.0
    ranks: dict[object, list[str]] = {}
    for n in graph.nodes:
        ranks.setdefault((x[n], level[n]), []).append(n)
    y = _order_ranks(graph, ranks, 2)
    pos = {}
    for n in graph.nodes:
        lv = level[n]
        base = band * 1.2 if lv is None else -band * lv
        offset = y[n] - (len(ranks[(x[n], lv)]) - 1) / 2
        pos[n] = (x[n], base - 0.55 * offset)
    return pos


def _has_graphviz() -> bool:
    if shutil.which("dot") is None:
        return False
    try:
        import pygraphviz  # noqa: F401
    except ImportError:
        return False
    return True


def draw_graph(graph: nx.DiGraph, path: str | Path, scores: Mapping[str, float] | None = None,
               title: str | None = None, prefix: str = "", layout: str = "auto",
               labels: bool | None = None) -> Path:
    """Draw `graph` to `path` (.png or .svg).

    layout: auto | graphviz | unet | layered-lr | layered-tb. `scores`: {layer: value} colours
    weight nodes. `prefix` is stripped from labels (e.g. the block being drawn)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "graphviz" or (layout == "auto" and _has_graphviz() and scores is None
                                and graph.number_of_nodes() <= 400):
        return _draw_graphviz(graph, path, title, prefix)
    if layout == "auto":
        if skip_concats(graph):
            layout = "unet"
        else:
            layout = "layered-tb" if graph.number_of_nodes() <= 60 else "layered-lr"
    if layout == "unet":
        pos = unet_positions(graph)
    else:
        pos = layered_positions(graph, "TB" if layout == "layered-tb" else "LR")
    if labels is None:
        labels = graph.number_of_nodes() <= 60
    return _draw_matplotlib(graph, pos, path, scores, title, prefix, labels,
                            rank_axis=1 if layout == "layered-tb" else 0)


def _draw_graphviz(graph: nx.DiGraph, path: Path, title: str | None, prefix: str) -> Path:
    agraph = nx.nx_agraph.to_agraph(nx.DiGraph(graph.edges))
    agraph.graph_attr.update(rankdir="TB", label=title or "", fontsize="20")
    for n in agraph.nodes():
        d = graph.nodes[str(n)]
        n.attr.update(label=short_label(str(n), d, prefix), style="filled", fillcolor=node_color(d),
                      shape="box" if d["kind"] == "weight" else "ellipse", fontsize="10")
    agraph.draw(str(path), prog="dot")
    return path


def _draw_matplotlib(graph: nx.DiGraph, pos: dict[str, tuple[float, float]], path: Path,
                     scores: Mapping[str, float] | None, title: str | None, prefix: str,
                     labels: bool, rank_axis: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    from matplotlib.patches import FancyArrowPatch

    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    span_x, span_y = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
    if labels:
        sx, sy = 1.6, 0.62  # inches per unit
    else:  # marker-only drawings stay printable: cap the width, stretch the levels instead
        sx, sy = min(0.2, 18.0 / span_x), 0.3
    width = min(max(5.0, span_x * sx + 1.0), 120.0)
    height = min(max(3.0, span_y * sy + 1.4), 60.0)
    fig, ax = plt.subplots(figsize=(width, height))

    # edges: straight between neighbouring ranks, arcs when they jump ranks (residuals,
    # modulation, skips) so they never hide behind the nodes they pass
    straight, arcs = [], []
    for u, v in graph.edges:
        jump = abs(pos[v][rank_axis] - pos[u][rank_axis]) > 1.01
        (arcs if jump else straight).append((pos[u], pos[v]))
    ax.add_collection(LineCollection(straight, colors="#777777", linewidths=0.7, zorder=1))
    mid_x = (max(xs) + min(xs)) / 2
    for i, (p0, p1) in enumerate(arcs):
        if labels:  # bend away from the centre line; alternate for edges on it
            side = p0[0] - mid_x or p1[0] - mid_x or (1 if i % 2 else -1)
            rad = 0.3 * (1 if side > 0 else -1) * (1 if p1[1] < p0[1] else -1)
        else:
            rad = -0.25
        ax.add_patch(FancyArrowPatch(p0, p1, connectionstyle=f"arc3,rad={rad}",
                                     arrowstyle="-|>" if labels else "-", mutation_scale=9,
                                     color="#999999", lw=0.7 if labels else 0.5,
                                     linestyle="-" if labels else (0, (4, 3)),
                                     shrinkA=9 if labels else 0, shrinkB=9 if labels else 0,
                                     zorder=0))
    if labels:
        for (p0, p1) in straight:
            ax.annotate("", xy=p1, xytext=p0, zorder=2,
                        arrowprops=dict(arrowstyle="-|>", color="#555555", lw=0.7,
                                        shrinkA=9, shrinkB=9, mutation_scale=9))

    cmap = plt.get_cmap("viridis")
    lo = min(scores.values()) if scores else 0.0
    hi = max(scores.values()) if scores else 1.0
    for n, d in graph.nodes(data=True):
        x, y = pos[n]
        color = node_color(d)
        if scores is not None and d["kind"] == "weight":
            color = cmap((scores[n] - lo) / (hi - lo or 1.0)) if n in scores else "#dddddd"
        faded = bool(d.get("boundary"))
        if labels:
            ax.text(x, y, short_label(n, d, prefix), ha="center", va="center", fontsize=8,
                    zorder=3, color="#555555" if faded else "black",
                    bbox=dict(boxstyle="square,pad=0.3" if d["kind"] == "weight" else "round,pad=0.3",
                              fc=color, ec="#aaaaaa" if faded else "#333333", lw=0.7,
                              alpha=0.35 if faded else 1.0))
        else:
            ax.scatter([x], [y], s=36 if d["kind"] == "weight" else 22, c=[color],
                       marker="s" if d["kind"] == "weight" else "o", zorder=3,
                       edgecolors="#222222", linewidths=0.3)
    if not labels:  # name the sections under the drawing instead
        spans: dict[str, list[float]] = {}
        for n, d in graph.nodes(data=True):
            if d["kind"] in ("weight", "combine") and d.get("section"):
                sec = d["section"] + (f".{d['stage']}" if d.get("stage", -1) >= 0
                                      and d["section"].endswith("blocks") else "")
                spans.setdefault(sec, []).append(pos[n][0])
        for sec, sx_ in spans.items():
            if len(sx_) >= 4:
                ax.text(sum(sx_) / len(sx_), min(ys) - 1.0, sec, ha="center", va="top", fontsize=8,
                        color="#333333")
    pad = 0.9 if labels else 0.6
    ax.set_xlim(min(xs) - pad, max(xs) + pad)
    ax.set_ylim(min(ys) - (0.8 if labels else 2.2), max(ys) + 0.8)
    ax.axis("off")
    present = {d["kind"] if d["kind"] in ("input", "output") else d["op"]
               for _, d in graph.nodes(data=True)}
    handles = [Line2D([], [], marker="s", ls="", color=COLORS[k], label=k, markersize=8)
               for k in COLORS if k in present
               and not (scores and k in ("Linear", "Conv2d", "Conv1d"))]
    ncol = max(1, min(len(handles), int(width / 1.25)))
    ax.legend(handles=handles, loc="lower left", fontsize=8, ncol=ncol, frameon=False,
              bbox_to_anchor=(0.0, 1.0))
    if scores:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
        fig.colorbar(sm, ax=ax, fraction=0.02, pad=0.01, label="layer score")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120 if path.suffix.lower() == ".png" else None)
    plt.close(fig)
    return path
