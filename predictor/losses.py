"""Loss = MSE + rank_weight · a differentiable ranking term, on standardised costs (lower = better).

Ranking terms (all over every pair of configs in the batch, all differentiable in `pred`, so
their gradient reaches the parameters through `pred` — there is no `zero_grad()` between the
ranking term and `backward()` here, unlike the reference code):
- `pairwise` (RankNet): for y_i < y_j, softplus(−(p_j − p_i)/τ), weighted by |y_i − y_j| so
  near-ties (within the FID noise) matter little.
- `softrank`: 1 − Pearson(soft ranks of pred, ranks of y) — a soft Spearman; soft rank_i =
  Σ_j sigmoid((p_i − p_j)/τ).
- `lambdarank`: RankNet pairs weighted by |ΔNDCG| of swapping i and j in the predicted order,
  where the BEST config (lowest cost) has the highest gain: the top of the ranking matters most.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

RANK_LOSSES = ("pairwise", "softrank", "lambdarank", "none")


def pairwise_loss(pred: torch.Tensor, y: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """RankNet pairwise loss (Burges et al., ICML 2005) over all pairs of the batch, weighted by |Δy|.

    pred, y `(B,)` standardised costs (lower = better) -> scalar; 0 (with a gradient) without pairs.
    """
    dy = y.unsqueeze(0) - y.unsqueeze(1)  # (B, B): y_j - y_i
    dp = pred.unsqueeze(0) - pred.unsqueeze(1)  # p_j - p_i
    mask = dy > 0  # pairs with i better than j
    if not mask.any():
        return pred.sum() * 0.0
    w = dy[mask].abs()
    return (F.softplus(-dp[mask] / tau) * w).sum() / w.sum()


def soft_rank(x: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """(B,) -> (B,) differentiable ranks (1 + number of smaller elements, smoothed)."""
    return 0.5 + torch.sigmoid((x.unsqueeze(1) - x.unsqueeze(0)) / tau).sum(1)


def softrank_loss(pred: torch.Tensor, y: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Soft Spearman loss: 1 − Pearson(soft ranks of pred, ranks of y); pred, y `(B,)` -> scalar."""
    rp = soft_rank(pred, tau)
    ry = torch.argsort(torch.argsort(y)).to(pred.dtype)
    rp = rp - rp.mean()
    ry = ry - ry.mean()
    corr = (rp * ry).sum() / (rp.norm() * ry.norm() + 1e-8)
    return 1.0 - corr


def lambdarank_loss(pred: torch.Tensor, y: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """LambdaRank loss (Burges et al., NIPS 2006): RankNet pairs weighted by |ΔNDCG| of swapping them.

    The best config (lowest cost) has the highest gain, so the top of the ranking matters most;
    pred, y `(B,)` -> scalar.
    """
    b = y.shape[0]
    with torch.no_grad():
        gain = (y.max() - y) / (y.max() - y.min() + 1e-8)  # best (lowest cost) -> 1
        gain = 2.0 ** (gain * 4) - 1  # emphasise the top
        pos = torch.empty_like(pred)
        pos[torch.argsort(pred)] = torch.arange(b, dtype=pred.dtype)  # predicted rank, 0 = best
        disc = 1.0 / torch.log2(pos + 2.0)
        ideal = (torch.sort(gain, descending=True).values / torch.log2(torch.arange(b, dtype=pred.dtype) + 2)).sum()
        delta = ((gain.unsqueeze(1) - gain.unsqueeze(0)) * (disc.unsqueeze(1) - disc.unsqueeze(0))).abs() / (ideal + 1e-8)
    dy = y.unsqueeze(0) - y.unsqueeze(1)
    dp = pred.unsqueeze(0) - pred.unsqueeze(1)
    mask = dy > 0
    if not mask.any():
        return pred.sum() * 0.0
    w = delta[mask]
    return (F.softplus(-dp[mask] / tau) * w).sum() / (w.sum() + 1e-12)


def rank_loss(kind: str, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The ranking term named `kind` (one of RANK_LOSSES; `none` is 0); ValueError on another name."""
    if kind == "pairwise":
        return pairwise_loss(pred, y)
    if kind == "softrank":
        return softrank_loss(pred, y)
    if kind == "lambdarank":
        return lambdarank_loss(pred, y)
    if kind == "none":
        return pred.sum() * 0.0
    raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {kind!r}")


def total_loss(pred: torch.Tensor, hop_pred: torch.Tensor | None, y: torch.Tensor, rank_kind: str,
               rank_weight: float, hop_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """pred (B,), hop_pred (B, K) or None, y (B,) -> (loss, parts for logging)."""
    mse = F.mse_loss(pred, y)
    rank = rank_loss(rank_kind, pred, y) if rank_weight > 0 else pred.sum() * 0.0
    loss = mse + rank_weight * rank
    parts = {"mse": mse.item(), "rank": rank.item()}
    if hop_pred is not None and hop_weight > 0:
        hop = F.mse_loss(hop_pred, y.unsqueeze(1).expand_as(hop_pred))
        if rank_weight > 0:
            hop = hop + rank_weight * sum(rank_loss(rank_kind, hop_pred[:, k], y)
                                          for k in range(hop_pred.shape[1])) / hop_pred.shape[1]
        loss = loss + hop_weight * hop
        parts["hop"] = hop.item()
    return loss, parts
