"""Batched 1-D k-means over the rows of a matrix, exact Lloyd iterations on sorted data.

Why it is fast: in one dimension a cluster is a contiguous run of the sorted values, so after
sorting each row once every Lloyd step is only
  1. boundaries  = searchsorted(sorted_row, midpoints between neighbouring centroids)  O(k log n)
  2. cluster sum = prefix_sum[end] - prefix_sum[start]                                O(k)
  3. centroid    = cluster sum / cluster count
and the within-cluster squared error comes from prefix sums of squares in O(k) too. A step
costs O(R·k·log n) instead of O(R·n·k), so we can afford several initialisations and run Lloyd
to convergence; the sort (done once) dominates.

Initialisations (deterministic; with several, the best is kept per row). Default: greedy only,
which on Laplace rows matches or beats sklearn's k-means++ (bench/kmeans.py); the others are
kept for experiments:
  - "greedy": global-k-means-style growth: start from the mean; add the centroid (among up to
    `GREEDY_CANDIDATES` quantile positions) whose insertion lowers the SSE most, computed exactly
    from prefix sums; a few Lloyd steps; repeat until k. This is what escapes the local optima
    that quantile seeding falls into on heavy-tailed weights (few centroids in the tails);
  - "quantile": centroids at the centres of k equal-mass bins;
  - "cuberoot": centroids at equal-mass bins of p(x)^(1/3), the high-resolution optimum for
    MSE quantizers (Panter–Dite), estimated from a histogram; it puts more centroids in the tails
    of heavy-tailed weights, where quantile init converges slowly;
  - "uniform": equally spaced between min and max.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

INITS: tuple[str, ...] = ("greedy",)
LARGE_K_INITS: tuple[str, ...] = ("cuberoot",)  # k > GREEDY_MAX_K: k greedy steps cost too much
GREEDY_MAX_K = 32
GREEDY_CANDIDATES = 64
GREEDY_LLOYD_STEPS = 2


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (R, k), ascending per row, float32
    sse: torch.Tensor  # (R,) within-cluster sum of squares, float64
    iterations: int


def _segment_stats(
    csum: torch.Tensor, csq: torch.Tensor, bounds: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cluster count, sum and sum of squares from prefix sums.

    csum, csq: (R, n+1) prefix sums (leading zero); bounds: (R, k-1) split positions in [0, n].
    Returns count, sum, sumsq, each (R, k).
    """
    R = csum.shape[0]
    zeros = torch.zeros(R, 1, dtype=bounds.dtype, device=bounds.device)
    ends = torch.full((R, 1), n, dtype=bounds.dtype, device=bounds.device)
    edges = torch.cat([zeros, bounds, ends], dim=1)  # (R, k+1)
    s = csum.gather(1, edges)
    q = csq.gather(1, edges)
    count = (edges[:, 1:] - edges[:, :-1]).to(csum.dtype)
    return count, s[:, 1:] - s[:, :-1], q[:, 1:] - q[:, :-1]


def _bounds(sorted_x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Split positions of each cluster in the sorted rows: values < midpoint go left."""
    mid = (centroids[:, 1:] + centroids[:, :-1]) * 0.5  # (R, k-1)
    return torch.searchsorted(sorted_x, mid.to(sorted_x.dtype).contiguous())


def _init_centroids(sorted_x: torch.Tensor, k: int, how: str) -> torch.Tensor:
    """(R, n) sorted rows -> (R, k) ascending initial centroids (float64)."""
    R, n = sorted_x.shape
    x = sorted_x.to(torch.float64)
    if how == "quantile":
        pos = ((torch.arange(k, device=x.device, dtype=torch.float64) + 0.5) / k * (n - 1)).round().long()
        return x[:, pos]
    lo, hi = x[:, :1], x[:, -1:]
    if how == "uniform":
        t = (torch.arange(k, device=x.device, dtype=torch.float64) + 0.5) / k
        return lo + (hi - lo) * t
    if how == "cuberoot":
        bins = 256
        width = (hi - lo).clamp_min(1e-30)
        edges = lo + width * torch.linspace(0, 1, bins + 1, device=x.device, dtype=torch.float64)
        counts = torch.diff(torch.searchsorted(sorted_x.to(torch.float64), edges.contiguous()), dim=1)
        density = counts.to(torch.float64).pow(1.0 / 3.0)  # (R, bins)
        cdf = torch.cumsum(density, dim=1)
        cdf = cdf / cdf[:, -1:].clamp_min(1e-30)
        targets = ((torch.arange(k, device=x.device, dtype=torch.float64) + 0.5) / k).expand(R, k)
        idx = torch.searchsorted(cdf, targets.contiguous()).clamp_max(bins - 1)
        prev = torch.where(idx > 0, cdf.gather(1, (idx - 1).clamp_min(0)), torch.zeros_like(targets))
        cur = cdf.gather(1, idx)
        frac = ((targets - prev) / (cur - prev).clamp_min(1e-30)).clamp(0, 1)
        return lo + width * (idx.to(torch.float64) + frac) / bins
    raise ValueError(f"unknown k-means init {how!r}; expected greedy, quantile, cuberoot or uniform")


def _range_stats(sorted_x: torch.Tensor, csum: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Count and sum of the values of each row in [lo, hi) (lo, hi: (R, m) float64)."""
    a = torch.searchsorted(sorted_x, lo.to(sorted_x.dtype).contiguous())
    b = torch.searchsorted(sorted_x, hi.to(sorted_x.dtype).contiguous())
    b = torch.maximum(a, b)
    return (b - a).to(csum.dtype), csum.gather(1, b) - csum.gather(1, a)


def _greedy_init(sorted_x: torch.Tensor, csum: torch.Tensor, csq: torch.Tensor, k: int) -> torch.Tensor:
    """Grow from 1 to k centroids, each time inserting the candidate with the largest SSE drop.

    Inserting v between neighbours c_l <= v <= c_r takes over [(c_l+v)/2, (v+c_r)/2); a point x
    there moving from c to v lowers its cost by (v-c)(2x-c-v), so the drop of a segment is
    (v-c)(2·Σx - (c+v)·N): two segments (from c_l, from c_r), O(1) each with prefix sums.
    """
    R, n = sorted_x.shape
    big = 1e30  # stands in for the missing neighbour of an end centroid
    # float64: in float32 the last position of a row past 2^24 values rounds up to n (out of range)
    pos = torch.linspace(0, n - 1, min(n, GREEDY_CANDIDATES), dtype=torch.float64,
                         device=sorted_x.device).round().long().clamp_max(n - 1)
    cand = sorted_x[:, pos].to(torch.float64)  # (R, B)
    centroids = (csum[:, -1:] / n)  # (R, 1)
    for _ in range(k - 1):
        m = centroids.shape[1]
        idx = torch.searchsorted(centroids.contiguous(), cand.contiguous())  # (R, B) in [0, m]
        c_l = torch.where(idx > 0, centroids.gather(1, (idx - 1).clamp_min(0)), torch.full_like(cand, -big))
        c_r = torch.where(idx < m, centroids.gather(1, idx.clamp_max(m - 1)), torch.full_like(cand, big))
        split = (c_l + c_r) * 0.5
        n_l, s_l = _range_stats(sorted_x, csum, (c_l + cand) * 0.5, split)
        n_r, s_r = _range_stats(sorted_x, csum, split, (cand + c_r) * 0.5)
        # A missing neighbour owns no points (N = S = 0), so its huge c cancels to zero.
        gain = torch.where(n_l > 0, (cand - c_l) * (2 * s_l - (c_l + cand) * n_l), torch.zeros_like(cand))
        gain = gain + torch.where(n_r > 0, (cand - c_r) * (2 * s_r - (c_r + cand) * n_r), torch.zeros_like(cand))
        best = gain.argmax(dim=1, keepdim=True)
        centroids, _ = torch.sort(torch.cat([centroids, cand.gather(1, best)], dim=1), dim=1)
        centroids, _, _ = _lloyd(sorted_x, csum, csq, centroids, GREEDY_LLOYD_STEPS)
    return centroids


def _lloyd(
    sorted_x: torch.Tensor, csum: torch.Tensor, csq: torch.Tensor, centroids: torch.Tensor, max_iter: int,
    tol: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd until no boundary moves, or (tol > 0) until every row's summed squared centroid
    shift is at most tol × its variance (sklearn's rule). Empty clusters keep their centroid."""
    R, n = sorted_x.shape
    limit = tol * (csq[:, -1] / n - (csum[:, -1] / n) ** 2)  # (R,) tol × variance
    first = torch.zeros(R, 1, dtype=torch.long, device=sorted_x.device)
    last = torch.full((R, 1), n, dtype=torch.long, device=sorted_x.device)
    bounds = _bounds(sorted_x, centroids)
    it = 0
    for it in range(1, max_iter + 1):
        # Inlined `_segment_stats` without the squares: this loop is the hot path.
        edges = torch.cat([first, bounds, last], dim=1)  # (R, k+1)
        s = csum.gather(1, edges)
        count = (edges[:, 1:] - edges[:, :-1]).to(csum.dtype)
        new = torch.where(count > 0, (s[:, 1:] - s[:, :-1]) / count.clamp_min(1), centroids)
        # Keep rows sorted: a centroid that kept its old place (empty cluster) may now sit out of order.
        new = torch.sort(new, dim=1).values
        shift = ((new - centroids) ** 2).sum(dim=1)
        centroids = new
        new_bounds = _bounds(sorted_x, centroids)
        done = torch.equal(new_bounds, bounds) or (tol > 0 and bool((shift <= limit).all()))
        bounds = new_bounds
        if done:
            break
    count, total, sq = _segment_stats(csum, csq, bounds, n)
    sse = (sq - total * total / count.clamp_min(1)).clamp_min(0).sum(dim=1)
    return centroids, sse, it


def kmeans_1d_sorted(
    sorted_x: torch.Tensor, k: int, max_iter: int = 300, inits: tuple[str, ...] | None = None,
    tol: float = 1e-4,
) -> KMeansResult:
    """k-means of each row of `sorted_x` (R, n), rows sorted ascending. Deterministic.

    Rows with fewer distinct values than k get duplicate centroids (harmless: codes are valid).
    """
    if sorted_x.dim() != 2:
        raise ValueError(f"expected a 2-D (rows, values) tensor, got shape {tuple(sorted_x.shape)}")
    if inits is None:
        # At many clusters the Panter-Dite density is accurate, and greedy growth would take k steps.
        inits = INITS if k <= GREEDY_MAX_K else LARGE_K_INITS
    R, n = sorted_x.shape
    x64 = sorted_x.to(torch.float64)
    zero = torch.zeros(R, 1, dtype=torch.float64, device=x64.device)
    csum = torch.cat([zero, torch.cumsum(x64, dim=1)], dim=1)  # (R, n+1)
    csq = torch.cat([zero, torch.cumsum(x64 * x64, dim=1)], dim=1)
    best_c: torch.Tensor | None = None
    best_sse: torch.Tensor | None = None
    iters = 0
    for how in inits:
        start = _greedy_init(sorted_x, csum, csq, k) if how == "greedy" else _init_centroids(sorted_x, k, how)
        c, sse, it = _lloyd(sorted_x, csum, csq, start, max_iter, tol)
        iters = max(iters, it)
        if best_c is None:
            best_c, best_sse = c, sse
        else:
            better = sse < best_sse
            best_c = torch.where(better[:, None], c, best_c)
            best_sse = torch.where(better, sse, best_sse)
    assert best_c is not None and best_sse is not None
    return KMeansResult(best_c.to(torch.float32), best_sse, iters)


def kmeans_1d(x: torch.Tensor, k: int, max_iter: int = 300, inits: tuple[str, ...] | None = None,
              tol: float = 1e-4) -> KMeansResult:
    """k-means of each row of `x` (R, n) (unsorted). tol=0: iterate until no boundary moves."""
    sorted_x, _ = torch.sort(x.to(torch.float32), dim=1)
    return kmeans_1d_sorted(sorted_x, k, max_iter, inits, tol)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid codes for rows `x` (R, n) given ascending `centroids` (R, k) -> (R, n) long."""
    mid = ((centroids[:, 1:] + centroids[:, :-1]) * 0.5).contiguous()
    # right=True: a value equal to a midpoint goes right, as in `_bounds`.
    return torch.searchsorted(mid, x.to(centroids.dtype).contiguous(), right=True)
