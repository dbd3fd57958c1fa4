"""Sensitivity diff of two checkpoints (`qsens predictor diff A B`): which layers became more
sensitive after a fine-tune, and is the base model's config still safe?

Inputs are two predictor dirs (each holds `sensitivity.parquet`: per (layer, option) the
ensemble's predicted ΔFID of quantizing that one layer from the highest-bit reference, mean and
member std; `predictor.sensitivity.write_tables`) and, optionally, two measured one-layer-at-a-time
tables (`layerwise.parquet` of `qsens analyze`). Per (layer, option):

    change = ΔFID_B − ΔFID_A,   z = change / sqrt(std_A² + std_B²)   (members' spread as the error)

per block the sums over its layers, and the Spearman rank correlation of the per-layer
sensitivities (how much of the ranking carried over). A layer is flagged `more_sensitive` when
z ≥ 2 and the change is positive. A checkpoint against itself gives change 0 everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import QsensError

KEY = ["layer", "option"]


def _table(directory: Path) -> pd.DataFrame:
    path = Path(directory) / "sensitivity.parquet"
    if not path.is_file():
        raise QsensError(f"{directory}: no sensitivity.parquet (a predictor dir written by `qsens predictor train`)")
    df = pd.read_parquet(path)
    missing = {"layer", "option", "delta_fid", "delta_fid_std", "block"} - set(df.columns)
    if missing:
        raise QsensError(f"{path}: lacks columns {sorted(missing)}; retrain the predictor")
    return df


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def predicted_diff(dir_a: str | Path, dir_b: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per layer-option table, per block-option table) of the predicted sensitivity change.
    Raises QsensError when the two predictors do not cover the same layers and options."""
    a, b = _table(Path(dir_a)), _table(Path(dir_b))
    ka, kb = set(map(tuple, a[KEY].values)), set(map(tuple, b[KEY].values))
    if ka != kb:
        only = sorted(ka ^ kb)[0]
        raise QsensError(f"{dir_a} and {dir_b} cover different layers/options (first in only one: {only[0]} "
                         f"{only[1]}): a diff needs two checkpoints of one architecture and bank options")
    m = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    m["block"] = m["block_a"]
    m["change"] = m["delta_fid_b"] - m["delta_fid_a"]
    err = np.sqrt(m["delta_fid_std_a"] ** 2 + m["delta_fid_std_b"] ** 2)
    m["z"] = np.where(err > 0, m["change"] / err.where(err > 0, 1.0), 0.0)
    m["more_sensitive"] = (m["z"] >= 2) & (m["change"] > 0)
    layers = m[KEY + ["block", "delta_fid_a", "delta_fid_b", "change", "z", "more_sensitive"]]
    blocks = (layers.groupby(["block", "option"], sort=True)
              .agg(delta_fid_a=("delta_fid_a", "sum"), delta_fid_b=("delta_fid_b", "sum"),
                   change=("change", "sum"), n_layers=("layer", "count")).reset_index())
    return layers.sort_values(["change"], ascending=False, kind="stable").reset_index(drop=True), blocks


def measured_diff(table_a: str | Path, table_b: str | Path) -> pd.DataFrame:
    """Per (layer, option) measured one-layer ΔFID (`layerwise.parquet`'s fid column) of A and B."""
    out = []
    for path in (table_a, table_b):
        path = Path(path)
        if not path.is_file():
            raise QsensError(f"{path}: no measured layerwise table (run `qsens analyze layerwise`)")
        df = pd.read_parquet(path)
        if not {"layer", "option", "fid"} <= set(df.columns):
            raise QsensError(f"{path}: not a layerwise table (needs layer, option, fid)")
        out.append(df[df["layer"] != ""][KEY + ["fid"]])
    m = out[0].merge(out[1], on=KEY, suffixes=("_a", "_b"))
    m["change"] = m["fid_b"] - m["fid_a"]
    return m


def _model_of(predictor_dir: str | Path) -> str:
    """The model a predictor dir was trained for (ensemble.json's template), for labels; the dir
    name when that cannot be read (predictor dirs are all called `predictor`)."""
    import json

    try:
        meta = json.loads((Path(predictor_dir) / "ensemble.json").read_text())
        return str(meta.get("model") or meta.get("template", {}).get("model") or Path(predictor_dir).name)
    except (OSError, ValueError, AttributeError):
        return Path(predictor_dir).name


def sensitivity_diff(dir_a: str | Path, dir_b: str | Path, measured: tuple[Path, Path] | None = None
                     ) -> dict[str, Any]:
    """The JSON report: summary, per-layer and per-block changes (predicted; measured when given)."""
    layers, blocks = predicted_diff(dir_a, dir_b)
    report: dict[str, Any] = {
        "a": str(dir_a), "b": str(dir_b),
        "summary": {
            "layer_options": int(len(layers)),
            "max_abs_change": float(layers["change"].abs().max()) if len(layers) else 0.0,
            "more_sensitive": int(layers["more_sensitive"].sum()),
            "spearman_layers": _spearman(layers["delta_fid_a"].to_numpy(), layers["delta_fid_b"].to_numpy()),
        },
        "layers": layers.to_dict(orient="records"),
        "blocks": blocks.to_dict(orient="records"),
    }
    if measured is not None:
        m = measured_diff(*measured)
        report["measured"] = m.to_dict(orient="records")
        report["summary"]["measured_spearman_layers"] = _spearman(m["fid_a"].to_numpy(), m["fid_b"].to_numpy())
    return report


def plot_diff(report: dict[str, Any], path: str | Path, top: int = 15) -> Path:
    """Left: predicted one-layer ΔFID, A vs B (every layer-option; on the diagonal = unchanged).
    Right: the `top` largest changes (layer @ option), more sensitive in B to the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = pd.DataFrame(report["layers"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    ax1.scatter(layers["delta_fid_a"], layers["delta_fid_b"], s=10, alpha=0.7,
                c=np.where(layers["more_sensitive"], "tab:red", "tab:blue"))
    lo = float(min(layers["delta_fid_a"].min(), layers["delta_fid_b"].min(), 0))
    hi = float(max(layers["delta_fid_a"].max(), layers["delta_fid_b"].max(), 1e-9))
    ax1.plot([lo, hi], [lo, hi], color="grey", lw=1)
    ax1.set_xlabel(f"predicted one-layer ΔFID, A ({_model_of(report['a'])})")
    ax1.set_ylabel(f"predicted one-layer ΔFID, B ({_model_of(report['b'])})")
    s = report["summary"]
    rho = s.get("spearman_layers")
    ax1.set_title(f"Spearman {rho:.3f}" if rho is not None else "sensitivity, A vs B")
    big = layers.reindex(layers["change"].abs().sort_values(ascending=False).index).head(top)[::-1]
    ax2.barh([f"{l} @ {o}" for l, o in zip(big["layer"], big["option"])], big["change"],
             color=np.where(big["change"] > 0, "tab:red", "tab:green"))
    ax2.axvline(0, color="grey", lw=1)
    ax2.set_xlabel("change of predicted ΔFID (B − A)")
    ax2.set_title(f"largest changes ({s['more_sensitive']} layer-options more sensitive, z ≥ 2)")
    ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
