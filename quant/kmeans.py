"""Batched 1-D k-means over the rows of a matrix: near-optimal clusters, O(n) per row, no sort
of long rows, no random numbers.

In one dimension a cluster is a contiguous run of the sorted values, so k-means is a partition
of the sorted row into k runs, and its optimum comes from dynamic programming over the split
positions (Wang & Song, "Ckmeans.1d.dp", R Journal 3(2), 2011). Minimising the within-cluster
sum of squares SSE = Σx² - Σ_c S_c²/N_c is maximising Σ_c S_c²/N_c (S_c, N_c: sum and count of
cluster c); with prefix counts and sums, each S_c²/N_c costs O(1).

Per row:
  1. atoms: the row itself, sorted (rows of at most `SORT_MAX` values), else an equal-width
     histogram (count and exact float64 sum of the values in each bin: one O(n) pass). Every
     later step sees only prefix counts and sums over the atoms.
  2. a dynamic programme over candidate split positions, in two stages:
       a. coarse, shared by all boundaries: `CELL_SPLITS`·k quantiles of the cube-root density
          (the Panter-Dite rule, optimal cells are equal in it) plus the `TAIL` most extreme
          values at each end one by one (a heavy tail's few outliers often own clusters that the
          density rule does not foresee); a cluster spans at most `BAND` candidates;
       b. fine: each split gets `WINDOW` candidates spread by count between the coarse
          candidates either side of it.
     Each stage is an exact maximum over its candidates. With at most `EXACT_ATOMS` atoms every
     position is a candidate: the exact optimum (for a sorted row, the global k-means optimum).
  3. Lloyd iterations on the atoms (O(k log m) each), until no boundary moves or `max_iter`.

Measured (bench/kmeans.py, Laplace rows of every SD v1.5 row length up to 2880): SSE 1.001x (3
bits) and 1.002x (4 bits) the global optimum on average, where scikit-learn's KMeans (k-means++,
one init) gets 1.044x and 1.072x; tests/test_kmeans.py checks <= 1.01x. Above `LARGE_K`
clusters (6-8 bits) the coarse stage is thinner: a few percent above the optimum.

The same input gives the same centroids bit for bit on a CPU. `assign` gives nearest-centroid
codes; a value at a midpoint goes to the right-hand centroid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import QsensError

SORT_MAX = 64  # rows up to this long (or up to k) are sorted; longer ones are histogrammed
ROW_BINS = 1024  # histogram bins per row (K-Means-C rows longer than SORT_MAX)
FLAT_BINS = 1 << 14  # histogram bins of a single row (K-Means-A: the whole tensor in one row)
DENSITY_BINS = 512  # equal-width bins of the density estimate that places coarse candidates
EXACT_ATOMS = SORT_MAX + 1  # rows of fewer atoms get the exact optimum
CELL_SPLITS, TAIL, BAND, WINDOW = 4, 12, 16, 16  # candidates of the two DP stages (many rows)
FLAT_CELL_SPLITS, FLAT_TAIL, FLAT_BAND, FLAT_WINDOW = 16, 16, 64, 64  # one row: afford more
LARGE_K = 32  # above: rows of up to LARGE_K_SORT·k values are sorted (a bin would hold several
LARGE_K_SORT = 16  # clusters' worth), and the coarse stage is thinner (its cost grows as k²)
LARGE_K_CELL_SPLITS, LARGE_K_BAND = 2, 8
MAX_ITER = 5  # Lloyd iterations after the dynamic programme (more change nothing measurable)
_BLOCK = 1 << 20  # elements per block of the O(n) passes: stays in a CPU cache, few thread syncs
_CUDA_BLOCK = 1 << 26
_DP_BLOCK = 1 << 20  # elements per block of the DP's (rows, candidates, candidates) tensors
_LOOP_MIN = 1 << 14  # CPU: below this many elements per step, one reduction beats a loop of maxima
_NEG = float("-inf")


@dataclass
class KMeansResult:
    """Per-row k-means result: ascending centroids `(R, k)`, SSE `(R,)` and the Lloyd iterations run."""

    centroids: torch.Tensor  # (R, k), ascending per row, float32
    sse: torch.Tensor  # (R,) float64: within-cluster sum of squares of the final partition of the atoms
    iterations: int  # Lloyd iterations after the dynamic programme


@dataclass
class _Atoms:
    """Rows of weighted points, ascending, centred on the row mean: all k-means needs of a row.
    Atoms are either the sorted values (pos) or the bins of an equal-width histogram."""

    cnt: torch.Tensor  # (R, m+1) float64 prefix counts, leading zero
    sum: torch.Tensor  # (R, m+1) float64 prefix sums of the centred values, leading zero
    sumsq: torch.Tensor  # (R,) float64: Σ (x - mean)² over the row
    mean: torch.Tensor  # (R, 1) float64 row mean
    density: torch.Tensor  # (R, H) float64 counts in H equal-width bins over [lo, lo + width]
    lo: torch.Tensor  # (R, 1) float64 centred row minimum
    width: torch.Tensor  # (R, 1) float64 max - min (> 0)
    pos: torch.Tensor | None = None  # (R, m) sorted centred values; None for histogram atoms

    @property
    def m(self) -> int:
        return self.cnt.shape[1] - 1

    def split(self, v: torch.Tensor) -> torch.Tensor:
        """Atom index where centred values v (R, q) split each row: atoms (values, or bin
        centres) below v go left, the rest right."""
        if self.pos is not None:
            return torch.searchsorted(self.pos, v.contiguous())
        t = torch.ceil((v - self.lo) * (self.m / self.width) - 0.5)
        return t.clamp_(0, self.m).long()


def _blocks(R: int, n: int, block: int):
    """(rows, cols) slices tiling an (R, n) matrix, each of about `block` elements at most."""
    if n >= block:
        for r in range(R):
            for c in range(0, n, block):
                yield slice(r, r + 1), slice(c, min(n, c + block))
    else:
        step = max(1, block // n)
        for r in range(0, R, step):
            yield slice(r, min(R, r + step)), slice(0, n)


def _block_size(device: torch.device) -> int:
    return _CUDA_BLOCK if device.type == "cuda" else _BLOCK


def _dp_block(device: torch.device) -> int:
    return _DP_BLOCK * 16 if device.type == "cuda" else _DP_BLOCK


def _prefix(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(v[:, :1]), torch.cumsum(v, dim=1)], dim=1)


def _histogram(x: torch.Tensor, bins: int, with_sums: bool):
    """Equal-width bins of each row between its min and max. Returns lo, hi (R, 1) float64,
    counts (R, bins) float64 and, with_sums, the row's float32 mean mu (R, 1), the sums of
    x - mu in each bin (R, bins) and Σ(x - mu)² (R,), float64. Centring first keeps the sums
    accurate to the row's spread, not its offset."""
    R, n = x.shape
    dev = x.device
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise QsensError("k-means input has non-finite values (nan or inf): check the model's weights")
    width = hi.double() - lo.double()
    scale = torch.where(width > 0, bins / width.clamp_min(1e-300), 0.0).to(torch.float32)  # constant row: bin 0
    # float64 accumulation: a float32 mean over ~10^5+ values depends on the thread count's
    # reduction order, and it shifts every centroid (K-Means-A must not depend on threads)
    mu = (x.mean(dim=1, keepdim=True, dtype=torch.float64).to(torch.float32) if with_sums
          else torch.zeros_like(lo))
    start = (lo.double() - mu.double()).to(torch.float32)  # lo in centred units
    cnt = torch.zeros(R, bins, dtype=torch.float64, device=dev)
    sums = torch.zeros(R, bins, dtype=torch.float64, device=dev) if with_sums else None
    sq = torch.zeros(R, dtype=torch.float64, device=dev) if with_sums else None
    for rows, cols in _blocks(R, n, _block_size(dev)):
        d = x[rows, cols] - mu[rows]
        r = d.shape[0]
        idx = torch.sub(d, start[rows]).mul_(scale[rows]).to(torch.int32).clamp_(0, bins - 1)
        if r > 1:
            idx += torch.arange(0, r * bins, bins, dtype=torch.int32, device=dev)[:, None]
        idx = idx.reshape(-1)
        cnt[rows] += torch.bincount(idx, minlength=r * bins).reshape(r, bins)
        if with_sums:
            w = d.reshape(-1).to(torch.float64)  # float32 sums of hundreds of values drift by 1e-5
            sums[rows] += torch.bincount(idx, weights=w, minlength=r * bins).reshape(r, bins)
            sq[rows] += torch.sum(d * d, dim=1, dtype=torch.float64)
    return lo.double(), hi.double(), cnt, (mu.double(), sums, sq) if with_sums else None


def _coarsen(counts: torch.Tensor, bins: int) -> torch.Tensor:
    R, m = counts.shape
    return counts.reshape(R, bins, m // bins).sum(dim=2) if m > bins and m % bins == 0 else counts


def _sorted_atoms(x: torch.Tensor) -> _Atoms:
    R, n = x.shape
    lo, hi, density, _ = _histogram(x, min(DENSITY_BINS, n), with_sums=False)
    xs = torch.sort(x, dim=1).values.to(torch.float64)
    mean = xs.mean(dim=1, keepdim=True)
    pos = xs - mean
    cnt = torch.arange(n + 1, dtype=torch.float64, device=x.device).expand(R, n + 1).contiguous()
    return _Atoms(cnt, _prefix(pos), (pos * pos).sum(dim=1), mean, density, lo - mean,
                  (hi - lo).clamp_min(1e-300), pos)


def _histogram_atoms(x: torch.Tensor, bins: int) -> _Atoms:
    R, n = x.shape
    lo, hi, cnt, (mu, sums, sq) = _histogram(x, bins, with_sums=True)
    shift = sums.sum(dim=1, keepdim=True) / n  # mean of x - mu
    sums -= cnt * shift  # centred on the exact mean: the DP's S²/N then works on small numbers
    sumsq = (sq - n * shift[:, 0] ** 2).clamp_min(0)
    mean = mu + shift
    return _Atoms(_prefix(cnt), _prefix(sums), sumsq, mean, _coarsen(cnt, DENSITY_BINS), lo - mean,
                  (hi - lo).clamp_min(1e-300))


def _coarse_candidates(a: _Atoms, k: int, cell_splits: int, tail: int) -> torch.Tensor:
    """(R, M) ascending split positions in [0, m], first 0 and last m, shared by all boundaries."""
    R, m = a.cnt.shape[0], a.m
    dev = a.cnt.device
    H = a.density.shape[1]
    g = _prefix(a.density.pow(1.0 / 3.0))
    g = g / g[:, -1:].clamp_min(1e-300)  # (R, H+1) cube-root cdf at the bin edges
    B = cell_splits * k
    u = (torch.arange(1, B, dtype=torch.float64, device=dev) / B).expand(R, B - 1).contiguous()
    b = torch.searchsorted(g, u).clamp(1, H)
    g0, g1 = g.gather(1, b - 1), g.gather(1, b)
    t = (b - 1).to(torch.float64) + ((u - g0) / (g1 - g0).clamp_min(1e-300)).clamp(0, 1)
    core = a.split(a.lo + a.width * t / H)
    e = torch.arange(1, tail + 1, dtype=torch.float64, device=dev)
    n = a.cnt[:, -1:]
    tails = torch.searchsorted(a.cnt, torch.cat([e.expand(R, tail), n - e.flip(0)], dim=1).contiguous())
    ends = torch.tensor([0, m], device=dev).expand(R, 2)
    return torch.sort(torch.cat([ends, core, tails], dim=1).clamp(0, m), dim=1).values


def _value(n: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """S²/N of clusters with count n and centred sum s; 0 when empty, -inf when n < 0."""
    v = s * s / n.clamp_min(1e-30)
    return v.masked_fill_(n < 0, _NEG)


def _maxplus(f: torch.Tensor, prev: torch.Tensor, width: int) -> torch.Tensor:
    """out[:, b] = max_i f[:, i, b] + prev[:, b + i] for f (r, I, width), prev (r, I - 1 + width).
    For many rows, a loop of in-place adds and maxima: far faster on a CPU than a reduction over a
    short dim; for few, one reduction (fewer calls)."""
    if f.is_cuda or f.shape[0] * width < _LOOP_MIN:
        return (f + prev.unfold(1, width, 1)).amax(dim=1)
    out = torch.add(f[:, 0], prev[:, :width])
    tmp = torch.empty_like(out)
    for i in range(1, f.shape[1]):
        torch.maximum(out, torch.add(f[:, i], prev[:, i : i + width], out=tmp), out=out)
    return out


def _dp_band(a: _Atoms, cand: torch.Tensor, k: int, band: int, dtype: torch.dtype) -> torch.Tensor:
    """Best partition into k clusters split at candidates cand (R, M) (ascending, 0 first, m last);
    a middle cluster spans at most band-1 candidates. Returns edges (R, k+1) (0, splits, m)."""
    R, M = cand.shape
    band = min(band, M)
    dev = cand.device
    edges = torch.empty(R, k + 1, dtype=torch.long, device=dev)
    edges[:, 0], edges[:, k] = 0, a.m
    nc = a.cnt.gather(1, cand).to(dtype)
    sc = a.sum.gather(1, cand).to(dtype)
    step = max(1, _dp_block(dev) // (M * band))
    for r in range(0, R, step):
        rs = slice(r, r + step)
        n, s = nc[rs], sc[rs]
        rr = n.shape[0]
        pad = torch.full((rr, band - 1), float("inf"), dtype=dtype, device=dev)
        # f[row, i, b]: value of the cluster from split b - band + 1 + i to split b (the padding
        # stands before the first split).
        nw = torch.cat([pad, n], dim=1).unfold(1, band, 1).transpose(1, 2)
        sw = torch.cat([pad.zero_(), s], dim=1).unfold(1, band, 1).transpose(1, 2)
        f = _value(n[:, None, :] - nw, s[:, None, :] - sw).contiguous()  # (rr, band, M)
        neg = torch.full((rr, band - 1), _NEG, dtype=dtype, device=dev)
        values = [_value(n, s)]  # one cluster [0, cand_b)
        for _ in range(k - 2):
            values.append(_maxplus(f, torch.cat([neg, values[-1]], dim=1), M))
        last = _value(n[:, -1:] - n, s[:, -1:] - s)  # one cluster [cand_a, m)
        # Back-track, recomputing the maximiser at the one split kept (cheaper than storing them).
        at = (values[-1] + last).argmax(dim=1, keepdim=True)  # (rr, 1): split k-1
        e = edges[rs]
        e[:, k - 1 : k] = cand[rs].gather(1, at)
        offsets = torch.arange(band, device=dev)
        for j in range(k - 2, 0, -1):
            prev = torch.cat([neg, values[j - 1]], dim=1).gather(1, at + offsets)
            tot = prev + f.gather(2, at[:, None, :].expand(rr, band, 1))[:, :, 0]
            at = at - band + 1 + tot.argmax(dim=1, keepdim=True)
            e[:, j : j + 1] = cand[rs].gather(1, at)
    return edges


def _windows(a: _Atoms, coarse: torch.Tensor, edges: torch.Tensor, window: int) -> torch.Tensor:
    """(R, k-1, W) split positions for each split of edges (R, k+1), spread by count between the
    coarse candidates either side of it."""
    R, M = coarse.shape
    at = torch.searchsorted(coarse.contiguous(), edges[:, 1:-1].contiguous())
    lo = coarse.gather(1, (at - 1).clamp(0, M - 1))
    hi = coarse.gather(1, (at + 1).clamp(0, M - 1))
    lo_c, hi_c = a.cnt.gather(1, lo), a.cnt.gather(1, hi)
    steps = torch.linspace(0, 1, window, dtype=torch.float64, device=coarse.device)
    target = lo_c[..., None] + (hi_c - lo_c)[..., None] * steps
    cand = torch.searchsorted(a.cnt, target.reshape(R, -1).contiguous()).view(R, -1, window)
    return torch.minimum(torch.maximum(cand, lo[..., None]), hi[..., None])


def _dp_windows(a: _Atoms, cand: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Best partition with split j among cand[:, j-1] (R, k-1, W). Returns edges (R, k+1)."""
    R, _, W = cand.shape
    dev = cand.device
    edges = torch.empty(R, k + 1, dtype=torch.long, device=dev)
    edges[:, 0], edges[:, k] = 0, a.m
    flat = cand.reshape(R, -1)
    nc = a.cnt.gather(1, flat).view(R, k - 1, W).to(dtype)
    sc = a.sum.gather(1, flat).view(R, k - 1, W).to(dtype)
    step = max(1, _dp_block(dev) // (W * W))
    for r in range(0, R, step):
        rs = slice(r, r + step)
        n, s = nc[rs], sc[rs]

        values = [_value(n[:, 0], s[:, 0])]
        for j in range(1, k - 1):
            # [row, split j-1, split j]; loop of in-place maxima, not a reduction (see _maxplus)
            f = _value(n[:, j, None, :] - n[:, j - 1, :, None], s[:, j, None, :] - s[:, j - 1, :, None])
            f.add_(values[-1][:, :, None])
            if f.is_cuda or f.shape[0] * W < _LOOP_MIN:
                values.append(f.amax(dim=1))
                continue
            out = f[:, 0].clone()
            for i in range(1, W):
                torch.maximum(out, f[:, i], out=out)
            values.append(out)
        last = _value(a.cnt[rs, -1:].to(dtype) - n[:, -1], a.sum[rs, -1:].to(dtype) - s[:, -1])
        at = (values[-1] + last).argmax(dim=1, keepdim=True)
        e = edges[rs]
        e[:, k - 1 : k] = cand[rs, k - 2].gather(1, at)
        for j in range(k - 2, 0, -1):
            col = _value(n[:, j].gather(1, at) - n[:, j - 1], s[:, j].gather(1, at) - s[:, j - 1])  # (rr, W)
            at = (col + values[j - 1]).argmax(dim=1, keepdim=True)
            e[:, j : j + 1] = cand[rs, j - 1].gather(1, at)
    return edges


def _means(a: _Atoms, edges: torch.Tensor, fallback: torch.Tensor | None) -> torch.Tensor:
    """Mean of each cluster between consecutive edges; an empty one keeps `fallback` or, without
    it, takes the nearest non-empty neighbour's mean (a duplicate centroid: codes stay valid)."""
    n, s = a.cnt.gather(1, edges), a.sum.gather(1, edges)
    count, total = n[:, 1:] - n[:, :-1], s[:, 1:] - s[:, :-1]
    c = total / count.clamp_min(1e-300)
    full = count > 0
    if fallback is not None:
        return torch.where(full, c, fallback)
    k = c.shape[1]
    ids = torch.arange(k, device=c.device).expand_as(c)
    left = torch.cummax(torch.where(full, ids, torch.full_like(ids, -1)), dim=1).values
    right = torch.cummin(torch.where(full, ids, torch.full_like(ids, k)).flip(1), dim=1).values.flip(1)
    return c.gather(1, torch.where(left >= 0, left, right).clamp(0, k - 1))


def _lloyd(a: _Atoms, c: torch.Tensor, max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd on the atoms (an atom whose mean is below a midpoint goes left) until no boundary
    moves or max_iter. Returns centroids, edges (R, k+1), iterations."""
    R, m = c.shape[0], a.m
    first = torch.zeros(R, 1, dtype=torch.long, device=c.device)
    last = torch.full((R, 1), m, dtype=torch.long, device=c.device)

    def edges_of(c: torch.Tensor) -> torch.Tensor:
        mid = (c[:, 1:] + c[:, :-1]) * 0.5
        return torch.cat([first, a.split(mid), last], dim=1)

    edges = edges_of(c)
    it = 0
    for it in range(1, max_iter + 1):
        c = torch.sort(_means(a, edges, c), dim=1).values
        new = edges_of(c)
        if torch.equal(new, edges):
            break
        edges = new
    return c, edges, it


def _sse(a: _Atoms, edges: torch.Tensor) -> torch.Tensor:
    n, s = a.cnt.gather(1, edges), a.sum.gather(1, edges)
    return (a.sumsq - _value(n[:, 1:] - n[:, :-1], s[:, 1:] - s[:, :-1]).sum(dim=1)).clamp_min(0)


def kmeans_1d(x: torch.Tensor, k: int, max_iter: int | None = None) -> KMeansResult:
    """k-means with k clusters of each row of `x` (R, n), any float dtype, CPU or CUDA.

    R == 1 (K-Means-A: a whole tensor) uses finer histograms and more DP candidates than many
    rows (K-Means-C). Rows with fewer distinct values than k get duplicate centroids.
    Raises ValueError for a non-2-D or empty x or k < 1, QsensError for nan/inf values.
    """
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(f"expected a non-empty 2-D (rows, values) tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k-means needs k >= 1 clusters, got {k}")
    R, n = x.shape
    flat = R == 1
    x = x.to(torch.float32)
    large = k > LARGE_K
    if n <= SORT_MAX or n <= k or (large and n <= LARGE_K_SORT * k):
        a = _sorted_atoms(x)
    else:
        a = _histogram_atoms(x, FLAT_BINS if flat else ROW_BINS)
    if k == 1:
        edges = torch.tensor([0, a.m], device=x.device).expand(R, 2).contiguous()
    elif n <= k:  # a cluster per value (the last ones empty: duplicates of the maximum)
        edges = torch.arange(k + 1, device=x.device).clamp_max(n).expand(R, k + 1).contiguous()
        return KMeansResult((_means(a, edges, None) + a.mean).to(torch.float32), _sse(a, edges), 0)
    elif a.m + 1 <= EXACT_ATOMS:
        cand = torch.arange(a.m + 1, device=x.device).expand(R, a.m + 1).contiguous()
        edges = _dp_band(a, cand, k, a.m + 1, torch.float64)
    else:
        if flat:
            cells, tail, band, window = FLAT_CELL_SPLITS, FLAT_TAIL, FLAT_BAND, FLAT_WINDOW
        elif large:
            cells, tail, band, window = LARGE_K_CELL_SPLITS, TAIL, LARGE_K_BAND, WINDOW
        else:
            cells, tail, band, window = CELL_SPLITS, TAIL, BAND, WINDOW
        coarse = _coarse_candidates(a, k, cells, tail)
        edges = _dp_band(a, coarse, k, band, torch.float32)
        if k > 2:
            edges = _dp_windows(a, _windows(a, coarse, edges, window), k, torch.float32)
    c, edges, it = _lloyd(a, _means(a, edges, None), MAX_ITER if max_iter is None else max_iter)
    return KMeansResult((c + a.mean).to(torch.float32), _sse(a, edges), it)


def kmeans_1d_exact(x: torch.Tensor, k: int) -> KMeansResult:
    """The globally optimal k-means of each row of x (R, n): dynamic programming over every split
    of the sorted row. O(k·n²) time and O(n²) memory per row: for tests and benchmarks on rows
    of up to a few thousand values. Raises as kmeans_1d."""
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(f"expected a non-empty 2-D (rows, values) tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k-means needs k >= 1 clusters, got {k}")
    R, n = x.shape
    a = _sorted_atoms(x.to(torch.float32))
    if k == 1:
        edges = torch.tensor([0, n], device=x.device).expand(R, 2).contiguous()
    else:
        cand = torch.arange(n + 1, device=x.device).expand(R, n + 1).contiguous()
        edges = _dp_band(a, cand, k, n + 1, torch.float64)
    return KMeansResult((_means(a, edges, None) + a.mean).to(torch.float32), _sse(a, edges), 0)


def assign(x: torch.Tensor, centroids: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Nearest-centroid codes (R, n) for rows x (R, n) and ascending centroids (R, k) or (1, k).

    A value exactly at a midpoint gets the right-hand code. dtype: of the codes (torch.uint8
    saves a pass when k <= 256). For k <= 32 each code counts the midpoints at or below the
    value, in cache-sized blocks: faster on a CPU than a binary search, and the same result.
    """
    R, n = x.shape
    k = centroids.shape[1]
    mid = (centroids[:, 1:] + centroids[:, :-1]) * 0.5  # (R or 1, k-1)
    x = x.to(centroids.dtype)
    if k > 32:
        mid = mid.expand(R, -1).contiguous()
        return torch.searchsorted(mid, x.contiguous(), right=True).to(dtype)
    small = torch.uint8
    out = torch.empty(R, n, dtype=small, device=x.device)
    shared = mid.shape[0] == 1
    for rows, cols in _blocks(R, n, _block_size(x.device)):
        xb = x[rows, cols]
        mb = mid if shared else mid[rows]
        acc = torch.zeros(xb.shape, dtype=small, device=x.device)
        hit = torch.empty(xb.shape, dtype=torch.bool, device=x.device)
        for j in range(k - 1):
            torch.ge(xb, mb[:, j : j + 1], out=hit)
            acc.add_(hit)
        out[rows, cols] = acc
    return out if dtype == small else out.to(dtype)
