"""Plots a user reads (issue #27 item 5): plain numbers on the Pareto plot's log axis, graph
drawings whose labels never overlap (tiny LCM and Sana), sample grids that name the content
metric ("CLIP score" for prompts, "accuracy" only for the digits classifier)."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from graphs.draw import block_subgraph, draw_graph, graph_figure, label_overlaps  # noqa: E402


# --- Pareto plot ---------------------------------------------------------------------------------
def _visible_tick_labels(fig) -> list[str]:
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    out = []
    for minor in (False, True):
        locs = ax.yaxis.get_minorticklocs() if minor else ax.yaxis.get_majorticklocs()
        for label, loc in zip(ax.get_yticklabels(minor=minor), locs):
            if label.get_text() and lo <= loc <= hi:
                out.append(label.get_text())
    return out


@pytest.mark.parametrize("lo,hi", [(76.9, 77.1), (70.0, 85.0), (8.0, 12.0), (3.0, 300.0)])
def test_pareto_axis_prints_plain_numbers(lo, hi):
    from search.evaluate import FP_STRATEGY, pareto_figure

    rows = [{"strategy": "predictor", "budget": 3.0, "avg_bits": 3.0, "fid": hi, "fid_se": 0.01, "fids": [hi]},
            {"strategy": "predictor", "budget": 4.0, "avg_bits": 4.0, "fid": lo, "fid_se": 0.01, "fids": [lo]},
            {"strategy": FP_STRATEGY, "budget": 16.0, "avg_bits": 16.0, "fid": lo * 0.999, "fid_se": 0.0}]
    fig = pareto_figure(rows)
    fig.canvas.draw()
    labels = _visible_tick_labels(fig)
    plt.close(fig)
    assert len(labels) >= 2, labels
    for text in labels:  # "76.95", not "7.695×10¹" (mathtext "$\mathdefault{7.695\times10^{1}}$")
        assert "times" not in text and "^" not in text and "$" not in text, labels
        value = float(text)
        assert lo / 10 <= value <= hi * 10
    if hi / lo < 1.01:  # a narrow range gets several distinct plain labels, no offset text
        assert len(set(labels)) >= 3 and fig.axes[0].yaxis.get_offset_text().get_text() == ""


def test_plot_pareto_writes_a_png(tmp_path):
    from search.evaluate import plot_pareto

    rows = [{"strategy": "predictor", "budget": 3.0, "avg_bits": 3.0, "fid": 77.1, "fid_se": 0.0}]
    assert plot_pareto(rows, tmp_path / "p.png").stat().st_size > 1000


# --- graph drawings --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def family_graphs(tmp_path_factory):
    from graphs.dag import build_dag_for
    from tests.tiny_pipelines import build_tiny_pipeline

    root = tmp_path_factory.mktemp("draw")
    return {kind: build_dag_for(str(build_tiny_pipeline(kind, root / kind))).graph
            for kind in ("lcm", "sana")}


def _node_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "qsens-label"]


@pytest.mark.parametrize("kind,prefix", [("lcm", None), ("lcm", "down_blocks.0"), ("lcm", "mid_block"),
                                         ("sana", None)])
def test_graph_labels_do_not_overlap(family_graphs, kind, prefix):
    graph = family_graphs[kind]
    if prefix:
        graph = block_subgraph(graph, prefix)
    fig = graph_figure(graph, title=f"{kind} {prefix or ''}", prefix=prefix or "")
    try:
        labels = _node_labels(fig)
        assert labels  # node labels (small graphs) or section names (large ones)
        assert label_overlaps(fig) == []  # every label, the legend and the title
        w, h = fig.get_size_inches()
        assert w <= 120 and h <= 60
    finally:
        plt.close(fig)


def test_a_graph_too_large_for_its_labels_is_drawn_with_markers(family_graphs):
    graph = family_graphs["lcm"]  # 180 nodes: every label would not fit in 120 x 60 in
    fig = graph_figure(graph, labels=True)
    try:
        names = set(_node_labels(fig))
        assert names and names <= {d["section"] + (f".{d['stage']}" if d.get("stage", -1) >= 0
                                                   and d["section"].endswith("blocks") else "")
                                   for _, d in graph.nodes(data=True) if d.get("section")}
        assert label_overlaps(fig) == []
    finally:
        plt.close(fig)


def test_crowded_section_names_are_staggered():
    """Markers drawing: 25 sections of 4 nodes each, names far wider than their spans: each
    name goes on the first line where it keeps clear of the one before."""
    g = nx.DiGraph()
    names = []
    for i in range(100):
        n = f"layer{i}"
        g.add_node(n, kind="weight", op="Linear", module=n, section=f"a_rather_long_section_name_{i // 4}",
                   stage=-1, out_shape=[1, 8])
        if names:
            g.add_edge(names[-1], n)
        names.append(n)
    fig = graph_figure(g, title="crowded", layout="layered-lr")
    try:
        sections = [t for t in fig.axes[0].texts if t.get_gid() == "qsens-label"]
        assert len(sections) == 25
        lines = {t.xyann[1] for t in sections}
        assert len(lines) >= 2  # staggered
        assert label_overlaps(fig) == []
        renderer = fig.canvas.get_renderer()
        ax_box = fig.axes[0].get_window_extent(renderer)
        for t in sections:  # every line stays inside the drawing
            assert t.get_window_extent(renderer).y0 >= ax_box.y0 - 1
    finally:
        plt.close(fig)


def test_draw_graph_writes_the_file(family_graphs, tmp_path):
    out = draw_graph(family_graphs["sana"], tmp_path / "sana.png", title="sana")
    assert out.stat().st_size > 10_000


# --- sample grids --------------------------------------------------------------------------------
def test_grid_titles_name_the_content_metric():
    from sampling.noise import _row_title, content_label

    assert content_label("clip") == "CLIP score"
    assert content_label("accuracy") == "accuracy"
    assert content_label("clip_zeroshot_accuracy") == "CLIP zero-shot accuracy"
    assert content_label("none") is None
    uniform = {"uaq4": {"fid": 80.0, "accuracy": 29.5}}
    clip = _row_title("uaq4", uniform, 70.0, 30.25, "clip")
    assert clip == "uniform uaq4: FID 80.0, CLIP score 29.50" and "acc" not in clip
    assert _row_title("fp", uniform, 70.0, 30.25, "clip") == "FP: FID 70.0, CLIP score 30.25"
    assert _row_title("fp", uniform, 70.0, 0.9, "accuracy") == "FP: FID 70.0, accuracy 0.90"
    assert _row_title("fp", uniform, 70.0, math.nan, "none") == "FP: FID 70.0"


def test_grid_titles_fit_in_the_figure():
    from sampling.noise import grid_figure

    rows = {k: np.zeros((3, 8, 8, 3), np.uint8) for k in ("fp", "uaq4")}
    titles = {"fp": "FP: FID 70.0, CLIP zero-shot accuracy 0.85",
              "uaq4": "uniform uaq4: FID 123.4, CLIP zero-shot accuracy 0.85"}
    fig = grid_figure(rows, columns=3, titles=titles)
    try:
        renderer = fig.canvas.get_renderer()
        texts = [t for ax in fig.axes for t in ax.texts]
        assert [t.get_text() for t in texts] == list(titles.values())
        for t in texts:
            assert t.get_window_extent(renderer).x0 >= 0  # not cut at the left edge
    finally:
        plt.close(fig)


@pytest.fixture(scope="module")
def tiny_bank(tiny_bank_of):
    return tiny_bank_of(["uaq4"])[0]


def test_noise_grid_of_a_clip_scorer_says_clip_score(tiny_digits_denoiser, tiny_digits_scorer, tiny_bank,
                                                     tmp_path, monkeypatch):
    """measure_noise labels its grid by the scorer's metric (`Score.content_metric`): a scorer
    whose content metric is the CLIP score gets "CLIP score", not "acc"."""
    import sampling.noise as noise

    seen = {}
    monkeypatch.setattr(noise, "sample_grid", lambda rows, path, columns=10, titles=None: seen.update(titles))
    params = noise.NoiseParams(fp_seed_sets=2, random_configs=1, seed_a=0, seed_b=1)
    monkeypatch.setattr(tiny_digits_scorer, "content_metric", "clip")
    noise.measure_noise(tiny_digits_denoiser, tiny_digits_scorer, tiny_bank, params,
                        noise.ScoreParams(images=8), progress=False, grid_path=tmp_path / "g.png")
    assert seen and all(", CLIP score " in t and "acc" not in t for t in seen.values() if "failed" not in t)
