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
    """A node's fill colour: by kind for inputs/outputs, else by op (grey for an unknown op)."""
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
    """The `layered` layout: x = longest-path depth, nodes in a rank ordered by barycentre sweeps.

    `orientation` LR (left -> right) or TB (top -> bottom); returns `{node: (x, y)}`.
    """
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
    """The `unet` layout: x = depth, y = resolution level, conditioning nodes in a band of height `band`
    on top (placed right above the block they feed); returns `{node: (x, y)}`.
    """
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
    weight nodes. `prefix` is stripped from labels (e.g. the block being drawn). No two labels
    overlap (see `graph_figure`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "graphviz" or (layout == "auto" and _has_graphviz() and scores is None
                                and graph.number_of_nodes() <= 400):
        return _draw_graphviz(graph, path, title, prefix)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = graph_figure(graph, scores, title, prefix, layout, labels)
    fig.savefig(path, dpi=DPI if path.suffix.lower() == ".png" else None)
    plt.close(fig)
    return path


def graph_figure(graph: nx.DiGraph, scores: Mapping[str, float] | None = None,
                 title: str | None = None, prefix: str = "", layout: str = "auto",
                 labels: bool | None = None):
    """The matplotlib Figure `draw_graph` saves (the caller closes it).

    Labels never overlap: node labels get room by widening (or heightening) the figure until
    every pair of label boxes is apart, measured on the rendered text; a graph whose labels
    cannot fit in the largest figure (`MAX_WIDTH` x `MAX_HEIGHT` in) is drawn with markers
    instead (`labels=None`: markers from 60 nodes). Section names under a marker drawing are
    staggered onto extra lines where neighbours would touch. The title sits above the legend."""
    if layout == "auto":
        if skip_concats(graph):
            layout = "unet"
        else:
            layout = "layered-tb" if graph.number_of_nodes() <= 60 else "layered-lr"
    if layout == "unet":
        pos = unet_positions(graph)
    elif layout in ("layered-lr", "layered-tb"):
        pos = layered_positions(graph, "TB" if layout == "layered-tb" else "LR")
    else:
        raise ValueError(f"unknown layout {layout!r}: auto, graphviz, unet, layered-lr, layered-tb")
    if labels is None:
        labels = graph.number_of_nodes() <= 60
    rank_axis = 1 if layout == "layered-tb" else 0
    if labels:
        fig = _draw_matplotlib(graph, pos, scores, title, prefix, True, rank_axis)
        if _spread_labels(fig):
            return fig
        import matplotlib.pyplot as plt

        plt.close(fig)  # too many labels for the largest figure: markers and section names
    return _draw_matplotlib(graph, pos, scores, title, prefix, False, rank_axis)


DPI = 120
MAX_WIDTH, MAX_HEIGHT = 120.0, 60.0  # inches
LABEL_GAP_PX = 3.0  # the least space between two labels, in pixels at DPI


def _label_boxes(fig) -> list[tuple[str, object]]:
    """(text, display-space Bbox) of every label `graph_figure` places (node labels with their
    box, section names), plus the legend and the title."""
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        for t in ax.texts:
            if t.get_gid() != "qsens-label" or not t.get_visible():
                continue
            patch = t.get_bbox_patch()
            if patch is not None:
                t.update_bbox_position_size(renderer)
                box = patch.get_window_extent(renderer)
            else:
                box = t.get_window_extent(renderer)
            out.append((t.get_text(), box))
        legend = ax.get_legend()
        if legend is not None:
            out.append(("<legend>", legend.get_window_extent(renderer)))
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        out.append(("<title>", suptitle.get_window_extent(renderer)))
    return out


def label_overlaps(fig, gap_px: float = 0.0) -> list[tuple[str, str]]:
    """Pairs of labels (see `_label_boxes`) whose boxes overlap or are closer than `gap_px`."""
    boxes = _label_boxes(fig)
    out = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            if (ba.x0 < bb.x1 + gap_px and bb.x0 < ba.x1 + gap_px
                    and ba.y0 < bb.y1 + gap_px and bb.y0 < ba.y1 + gap_px):
                out.append((a, b))
    return out


def _spread_labels(fig, rounds: int = 6) -> bool:
    """Enlarge `fig` until no two node labels overlap: for each touching pair, the factor by
    which the figure must grow along x (or y, whichever is the smaller stretch) to set their
    centres apart by their half-sizes plus `LABEL_GAP_PX`; the largest factor per axis is
    applied and the layout redone. False when the labels do not fit in MAX_WIDTH x MAX_HEIGHT."""
    for _ in range(rounds):
        boxes = [b for name, b in _label_boxes(fig) if not name.startswith("<")]
        fx = fy = 1.0
        for i, ba in enumerate(boxes):
            for bb in boxes[i + 1:]:
                need_x = (ba.width + bb.width) / 2 + LABEL_GAP_PX
                need_y = (ba.height + bb.height) / 2 + LABEL_GAP_PX
                dx = abs((ba.x0 + ba.x1) - (bb.x0 + bb.x1)) / 2
                dy = abs((ba.y0 + ba.y1) - (bb.y0 + bb.y1)) / 2
                if dx >= need_x or dy >= need_y:
                    continue
                sx = need_x / dx if dx > 0.5 else math.inf
                sy = need_y / dy if dy > 0.5 else math.inf
                if sx <= sy:
                    fx = max(fx, sx)
                else:
                    fy = max(fy, sy)
        if fx == 1.0 and fy == 1.0:
            return True
        if math.isinf(fx) or math.isinf(fy):
            return False  # two labels at the same place: no stretch separates them
        w, h = fig.get_size_inches()
        new_w, new_h = w * fx * 1.03 if fx > 1 else w, h * fy * 1.03 if fy > 1 else h
        if new_w > MAX_WIDTH or new_h > MAX_HEIGHT:
            return False
        fig.set_size_inches(new_w, new_h)
        _layout(fig)
    return not label_overlaps(fig)


def _layout(fig) -> None:
    """tight_layout below the title: the title's height (plus a little) is kept free at the top,
    so the legend above the axes never runs into it."""
    import warnings

    suptitle = getattr(fig, "_suptitle", None)
    top = 1.0
    if suptitle is not None and suptitle.get_text():
        renderer = fig.canvas.get_renderer()
        height_px = suptitle.get_window_extent(renderer).height + 8
        top = max(0.5, 1.0 - height_px / (fig.get_size_inches()[1] * fig.dpi))
    with warnings.catch_warnings():  # "not compatible with tight_layout" for odd sizes: harmless
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(rect=(0.0, 0.0, 1.0, top))


def _stagger_sections(fig, ax, texts: list, y0: float, y_top: float) -> None:
    """Section names under a marker drawing: each goes on the first line (from the top) where it
    keeps LABEL_GAP_PX from the name before it; the y range grows to hold the extra lines."""
    if not texts:
        return
    renderer = fig.canvas.get_renderer()
    line_pt = 11.0
    ends: list[float] = []  # right edge (px) of the last name on each line
    lines = 0
    for t in sorted(texts, key=lambda t: t.xy[0]):
        box = t.get_window_extent(renderer)
        half = box.width / 2
        cx = ax.transData.transform(t.xy)[0]
        row = next((i for i, end in enumerate(ends) if cx - half > end + LABEL_GAP_PX), len(ends))
        if row == len(ends):
            ends.append(-math.inf)
        ends[row] = cx + half
        t.xyann = (0.0, -line_pt * row)
        lines = max(lines, row + 1)
    if lines > 1:  # room below y0 for the extra lines: bottom such that they fit in the axes
        height_pt = ax.get_window_extent(renderer).height * 72.0 / fig.dpi
        need = (lines * line_pt + 4.0) / height_pt
        if need < 0.9:
            bottom = (y0 - need * y_top) / (1.0 - need)
            ax.set_ylim(min(ax.get_ylim()[0], bottom), y_top)


def _draw_graphviz(graph: nx.DiGraph, path: Path, title: str | None, prefix: str) -> Path:
    agraph = nx.nx_agraph.to_agraph(nx.DiGraph(graph.edges))
    agraph.graph_attr.update(rankdir="TB", label=title or "", fontsize="20")
    for n in agraph.nodes():
        d = graph.nodes[str(n)]
        n.attr.update(label=short_label(str(n), d, prefix), style="filled", fillcolor=node_color(d),
                      shape="box" if d["kind"] == "weight" else "ellipse", fontsize="10")
    agraph.draw(str(path), prog="dot")
    return path


def _draw_matplotlib(graph: nx.DiGraph, pos: dict[str, tuple[float, float]],
                     scores: Mapping[str, float] | None, title: str | None, prefix: str,
                     labels: bool, rank_axis: int = 0):
    """The Figure (not saved); labels are tagged gid "qsens-label" for `label_overlaps`."""
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
    fig, ax = plt.subplots(figsize=(width, height), dpi=DPI)

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
                    zorder=3, gid="qsens-label", color="#555555" if faded else "black",
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
        sections = [ax.annotate(sec, (sum(sx_) / len(sx_), min(ys) - 1.0), xytext=(0.0, 0.0),
                                textcoords="offset points", ha="center", va="top", fontsize=8,
                                color="#333333", gid="qsens-label", annotation_clip=False)
                    for sec, sx_ in spans.items() if len(sx_) >= 4]
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
    _layout(fig)
    if not labels:
        _stagger_sections(fig, ax, sections, min(ys) - 1.0, max(ys) + 0.8)
    return fig
