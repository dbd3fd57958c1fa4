"""Inspection report of a trained predictor: what it learnt about where the model is sensitive.

Writes into `<predictor dir>/plots/` (PNGs + report.md + inspect.json) and DVC-plot CSVs:
- top-k sensitive layers and blocks per option (`delta_fid` vs the reference config);
- per-method preference per block type (mean Δfid of each method at each bit-width);
- prediction vs truth scatter (test: ensemble; val: each fold's member, out-of-fold);
- box plots of the layers' Δfid per block at the lowest bit-width;
- the DAG coloured by each layer's lowest-bit sensitivity (when the graph file is given);
- checks of the reference (Qua2SeDiMo) findings: time embedding most sensitive, output layer
  sensitive, ResNets more sensitive than attention, U-Nets prefer UAQ.

A layer's headline score `sens_low` = mean Δfid over the options at the lowest bit-width (the
methods averaged), i.e. how much quantizing this layer alone to the lowest bits costs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.sensitivity import block_of, unit_of, unit_type
from core.jsonio import atomic_write, write_json
from quant.options import parse_option


def _bits(option: str) -> int:
    return parse_option(option).bits


def _method(option: str) -> str:
    return parse_option(option).method


def layer_scores(layers: pd.DataFrame) -> pd.DataFrame:
    """One row per layer: sens_low (mean Δfid at the lowest bits), sens_high, best option."""
    df = layers.copy()
    df["bits"] = df["option"].map(_bits)
    low, high = df["bits"].min(), df["bits"].max()
    out = pd.DataFrame({
        "sens_low": df[df.bits == low].groupby("layer", sort=False)["delta_fid"].mean(),
        "sens_high": df[df.bits == high].groupby("layer", sort=False)["delta_fid"].mean(),
        "std_low": df[df.bits == low].groupby("layer", sort=False)["delta_fid_std"].mean(),
        "best_low_option": df[df.bits == low].loc[lambda d: d.groupby("layer", sort=False)["delta_fid"].idxmin()]
        .set_index("layer")["option"],
    })
    out["block"] = [block_of(n) for n in out.index]
    out["unit_type"] = [unit_type(unit_of(n)) for n in out.index]
    out["rank"] = out["sens_low"].rank(ascending=False, method="min").astype(int)
    return out.sort_values("sens_low", ascending=False)


def method_preferences(layers: pd.DataFrame) -> pd.DataFrame:
    """Mean Δfid per (unit type, bits, method) and the preferred (lowest) method."""
    df = layers.copy()
    df["bits"] = df["option"].map(_bits)
    df["method"] = df["option"].map(_method)
    df["unit_type"] = [unit_type(unit_of(n)) for n in df["layer"]]
    table = df.pivot_table(index=["unit_type", "bits"], columns="method", values="delta_fid", aggfunc="mean")
    table["preferred"] = table.idxmin(axis=1)
    return table


def reference_findings(scores: pd.DataFrame, prefs: pd.DataFrame, blocks: pd.DataFrame) -> dict[str, Any]:
    """Check the reference (Qua2SeDiMo, AAAI-25) findings on the predicted sensitivities.

    Time embedding most sensitive, output layer sensitive, ResNets more sensitive than attention
    (per unit and per million weights), the method each block type prefers; a JSON-able dict.
    """
    n = len(scores)
    te = scores[scores.index.str.startswith("time_embedding")]
    outs = scores[scores.index.isin(["conv_out", "proj_out", "proj_out_2", "norm_out.linear"])]
    low = blocks["option"].map(_bits).min()
    units = blocks[(blocks.level == "unit") & (blocks.option.map(_bits) == low)]
    per_type = units.groupby("unit_type")["delta_fid"].mean()
    per_type_w = (units.assign(per_mw=units.delta_fid / units.n_weights * 1e6)
                  .groupby("unit_type")["per_mw"].mean())
    method_votes = prefs["preferred"].value_counts().to_dict()
    overall = prefs.drop(columns="preferred").mean()
    f: dict[str, Any] = {"n_layers": n}
    if len(te):
        f["time_embedding_ranks"] = sorted(int(r) for r in te["rank"])
        f["time_embedding_in_top5"] = bool(te["rank"].min() <= 5)
        f["time_embedding_most_sensitive_block"] = bool(
            scores.groupby("block")["sens_low"].sum().idxmax() == "time_embedding")
    if len(outs):
        f["output_layer_ranks"] = {k: int(v) for k, v in outs["rank"].items()}
        f["output_layer_in_top5"] = bool(outs["rank"].min() <= 5)
    if "resnets" in per_type and "attentions" in per_type:
        f["resnet_vs_attention_unit_delta"] = [float(per_type["resnets"]), float(per_type["attentions"])]
        f["resnets_more_sensitive_than_attention"] = bool(per_type["resnets"] > per_type["attentions"])
        f["resnet_vs_attention_per_million_weights"] = [float(per_type_w["resnets"]), float(per_type_w["attentions"])]
    f["preferred_method_votes"] = {str(k): int(v) for k, v in method_votes.items()}
    f["mean_delta_by_method"] = {str(k): float(v) for k, v in overall.items()}
    f["prefers_uaq_overall"] = bool(overall.idxmin() == "uaq") if len(overall) else None
    return f


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scatter(preds: pd.DataFrame, path: Path, title: str) -> None:
    """Predicted vs measured cost scatter (val: out-of-fold member, test: ensemble) -> PNG at `path`."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    val = preds[preds.split == "val"]
    test = preds[preds.split == "test"]
    ax.scatter(val["cost"], val["pred"], s=10, alpha=0.35, c="#999999", label="val (out-of-fold member)")
    ax.scatter(test["cost"], test["pred"], s=16, c="#c44e52", label="test (ensemble)")
    lo, hi = float(preds[["cost", "pred"]].min().min()), float(preds[["cost", "pred"]].max().max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("measured cost (FID)")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_block_boxes(layers: pd.DataFrame, path: Path, title: str) -> None:
    """Box plot of the layers' Δfid per block at the lowest bit-width -> PNG at `path`."""
    plt = _plt()
    df = layers.copy()
    df["bits"] = df["option"].map(_bits)
    df = df[df.bits == df.bits.min()]
    order = list(dict.fromkeys(df["block"]))
    data = [df[df.block == b]["delta_fid"].to_numpy() for b in order]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(order)), 4))
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(order) + 1))
    ax.set_xticklabels(order)
    ax.set_ylabel("Δfid, one layer at the lowest bits")
    ax.set_title(title, fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_top_layers(scores: pd.DataFrame, path: Path, k: int, title: str) -> None:
    """Bar chart of the `k` most sensitive layers (Δfid at the lowest bits, member spread) -> PNG."""
    plt = _plt()
    top = scores.head(k)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(top) + 1.2))
    ax.barh(range(len(top)), top["sens_low"], xerr=top["std_low"], color="#4c72b0")
    ax.set_yticks(range(len(top)))
    ax.set_yticklabels(top.index, fontsize=7)
    ax.set_xlabel("Δfid at the lowest bits (mean over methods; bar = member spread)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_inspect(predictor_dir: str | Path, graph_path: str | Path | None = None, top_k: int = 10,
                plots_csv_dir: str | Path | None = "metrics", reference: Any = None) -> dict[str, Any]:
    """Inspect a trained predictor: sensitivity tables, plots, report.md and inspect.json in
    `<predictor_dir>/plots/`, DVC-plot CSVs in `plots_csv_dir` (None: none).

    With a `reference` config the tables are recomputed around it (never overwriting the search's
    tables); `graph_path` adds the DAG coloured by sensitivity. Returns the inspect.json dict.
    """
    from predictor.api import Ensemble
    from predictor.sensitivity import write_tables

    pdir = Path(predictor_dir)
    ens = Ensemble.load(pdir)
    plots = pdir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    if reference is not None:  # never overwrite the search's tables with a re-linearisation
        from predictor.sensitivity import block_sensitivity, layer_sensitivity

        ref = ens.reference(reference)
        layers = layer_sensitivity(ens, ref)
        blocks = block_sensitivity(ens, ref, layers)
        plots = pdir / "plots-reference"
        plots.mkdir(parents=True, exist_ok=True)
    elif (pdir / "sensitivity.parquet").is_file() and (pdir / "blocks.parquet").is_file():
        layers, blocks = pd.read_parquet(pdir / "sensitivity.parquet"), pd.read_parquet(pdir / "blocks.parquet")
    else:
        layers, blocks = write_tables(ens, pdir)
    scores = layer_scores(layers)
    prefs = method_preferences(layers)
    findings = reference_findings(scores, prefs, blocks)
    model = ens.model
    # top-k per option
    top_layers = {o: layers[layers.option == o].nlargest(top_k, "delta_fid")[["layer", "delta_fid", "delta_fid_std"]]
                  .to_dict("records") for o in ens.options}
    bl = blocks[blocks.level == "block"]
    top_blocks = {o: bl[bl.option == o].nlargest(top_k, "delta_fid")[["name", "delta_fid", "delta_fid_std", "n_layers"]]
                  .to_dict("records") for o in ens.options}
    # plots
    preds_path = pdir / "predictions.parquet"
    if preds_path.is_file():
        preds = pd.read_parquet(preds_path)
        m = ens.meta.get("metrics", {}).get("ensemble", {})
        plot_scatter(preds, plots / "scatter.png",
                     f"{model}: test Spearman {m.get('spearman', float('nan')):.3f}, "
                     f"Kendall {m.get('kendall', float('nan')):.3f}")
        if plots_csv_dir is not None:
            Path(plots_csv_dir).mkdir(parents=True, exist_ok=True)
            out = preds.rename(columns={"cost": "true"})
            out["fold"] = np.where(out.split == "test", "ensemble", "member-" + out.fold.astype(str))
            out[["true", "pred", "fold", "split"]].to_csv(Path(plots_csv_dir) / "predictor_scatter.csv", index=False)
    plot_block_boxes(layers, plots / "blocks_box.png", f"{model}: per-layer sensitivity by block")
    plot_top_layers(scores, plots / "top_layers.png", max(top_k, 15), f"{model}: most sensitive layers")
    if plots_csv_dir is not None:
        s = scores.reset_index().rename(columns={"index": "layer"})
        s[["layer", "sens_low", "sens_high", "block", "unit_type", "rank"]].to_csv(
            Path(plots_csv_dir) / "predictor_layers.csv", index=False)
    if graph_path is not None and Path(graph_path).is_file():
        from graphs.draw import draw_graph
        from graphs.io import read_graph

        draw_graph(read_graph(graph_path), plots / "dag_sensitivity.png",
                   scores=scores["sens_low"].to_dict(),
                   title=f"{model}: Δfid at the lowest bits (predicted)")
    report = {"model": model, "reference": "highest bits" if reference is None else "given",
              "findings": findings, "top_layers": top_layers, "top_blocks": top_blocks,
              "method_preferences": {f"{t}/{b}": r.to_dict() for (t, b), r in prefs.iterrows()}}
    write_json(plots / "inspect.json", report, indent=1, default=float)
    atomic_write(plots / "report.md", render_report(model, scores, prefs, blocks, findings, top_k))
    return report


def render_report(model: str, scores: pd.DataFrame, prefs: pd.DataFrame, blocks: pd.DataFrame,
                  findings: dict[str, Any], k: int) -> str:
    """report.md's Markdown: top-k layers, blocks, method preferences and the reference findings."""
    lines = [f"# Predictor inspection: {model}", "",
             f"## Top {k} sensitive layers (Δfid, one layer at the lowest bits, vs the highest-bits reference)", "",
             "| rank | layer | block | Δfid | ± | best low-bit option |", "|---:|---|---|---:|---:|---|"]
    for name, r in scores.head(k).iterrows():
        lines.append(f"| {r['rank']} | `{name}` | {r['block']} | {r['sens_low']:.3f} | {r['std_low']:.3f} "
                     f"| {r['best_low_option']} |")
    low = blocks["option"].map(_bits).min()
    bl = blocks[(blocks.level == "block") & (blocks.option.map(_bits) == low)]
    bl = bl.groupby("name").agg(delta=("delta_fid", "mean"), additive=("delta_fid_sum", "mean"),
                                n=("n_layers", "first")).sort_values("delta", ascending=False)
    lines += ["", "## Blocks (every layer of the block at the lowest bits, mean over methods)", "",
              "| block | layers | Δfid joint | Σ layer Δfid |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {r['n']} | {r['delta']:.3f} | {r['additive']:.3f} |" for n, r in bl.iterrows()]
    lines += ["", "## Method preference per block type (mean Δfid; lower is better)", "",
              "| block type | bits | " + " | ".join(c for c in prefs.columns if c != "preferred") + " | preferred |",
              "|---|---:|" + "---:|" * (len(prefs.columns) - 1) + "---|"]
    for (t, b), r in prefs.iterrows():
        vals = " | ".join(f"{r[c]:.3f}" for c in prefs.columns if c != "preferred")
        lines.append(f"| {t} | {b} | {vals} | {r['preferred']} |")
    lines += ["", "## Reference findings", "", "```json", json.dumps(findings, indent=1), "```", ""]
    return "\n".join(lines)
