"""Ranking metrics on held-out configs. Convention: LOWER cost (FID) = BETTER; "top" = best.

- `spearman`, `kendall` (τ-b): rank correlations between predicted and true cost.
- `ndcg@k`: configs sorted by PREDICTED cost ascending; gain of a config =
  (max_true − true) / (max_true − min_true) over the evaluated set, so the best config has gain 1
  and the worst 0; DCG@k = Σ_{r=1..k} gain_(r) / log2(r + 1); NDCG@k = DCG@k / ideal DCG@k.
- `precision@k`: |predicted top-k ∩ true top-k| / k (top = the k lowest costs).
- `mae`: mean |pred − true| in the cost's units (FID).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

METRIC_KEYS = ("spearman", "kendall", "ndcg@10", "precision@10", "mae")


def ndcg_at_k(true: np.ndarray, pred: np.ndarray, k: int = 10) -> float:
    """NDCG@k (Järvelin & Kekäläinen, 2002) of the predicted order, lowest cost = highest gain.

    Gain = (max − true) / span (all 1 when the true values are equal); in [0, 1].
    """
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    k = min(k, len(true))
    span = true.max() - true.min()
    gain = (true.max() - true) / span if span > 0 else np.ones_like(true)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((gain[np.argsort(pred, kind="stable")[:k]] * disc).sum())
    ideal = float((np.sort(gain)[::-1][:k] * disc).sum())
    return dcg / ideal if ideal > 0 else 0.0


def precision_at_k(true: np.ndarray, pred: np.ndarray, k: int = 10) -> float:
    """Fraction of the k truly best (lowest) configs among the k predicted best."""
    k = min(k, len(true))
    top_true = set(np.argsort(np.asarray(true, float), kind="stable")[:k].tolist())
    top_pred = set(np.argsort(np.asarray(pred, float), kind="stable")[:k].tolist())
    return len(top_true & top_pred) / k


def all_metrics(true: np.ndarray, pred: np.ndarray, k: int = 10) -> dict[str, float]:
    """Spearman, Kendall, NDCG@k, precision@k and MAE of predictions against true costs."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    sp = stats.spearmanr(true, pred).statistic if len(true) > 1 else float("nan")
    kt = stats.kendalltau(true, pred).statistic if len(true) > 1 else float("nan")
    return {"spearman": float(sp), "kendall": float(kt), f"ndcg@{k}": ndcg_at_k(true, pred, k),
            f"precision@{k}": precision_at_k(true, pred, k), "mae": float(np.abs(true - pred).mean())}


def format_table(rows: dict[str, dict[str, float]], keys: tuple[str, ...] = METRIC_KEYS) -> str:
    """Markdown table: one row per predictor."""
    head = "| predictor | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys) + "\n"
    return head + "".join(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |\n"
                          for name, m in rows.items())
