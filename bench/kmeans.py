"""K-Means-C / K-Means-A: our batched 1-D k-means against scikit-learn KMeans, same rows, same run.

For each distinct SD v1.5 layer shape, `--rows` output channels of Laplace-distributed weights
(trained weights are heavy-tailed) are clustered with k = 2^bits by
  - ours:    quant.kmeans.kmeans_1d on all rows at once (KMC) / on the rows flattened (KMA)
  - sklearn: KMeans(n_clusters=k) with default n_init, one fit per row (KMC) / one fit (KMA)
and we print the speed ratio (sklearn seconds / ours) and the MSE ratio (ours / sklearn).
We also time the reference system's per-layer procedure (sklearn fit per channel, then a
per-element Python loop writing the quantized values back) on a few rows.

Last line: `kmeans speedup=<x> mse_ratio=<y> vs_reference=<z>`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reference import reference_kmeans_layer  # noqa: E402
from sd15_shapes import SD15_SHAPES  # noqa: E402

from quant.kmeans import assign, kmeans_1d  # noqa: E402


def sklearn_row(x: np.ndarray, k: int, seed: int) -> float:
    km = KMeans(n_clusters=k, random_state=seed).fit(x.reshape(-1, 1).astype(np.float64))
    return float(km.inertia_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=128, help="output channels per shape (same rows for both)")
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--shapes", type=int, default=len(SD15_SHAPES), help="use the first N distinct shapes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)

    t_ours = t_sk = 0.0
    sse_ours = sse_sk = 0.0
    t_ours_a = t_sk_a = 0.0
    sse_ours_a = sse_sk_a = 0.0
    ref_rows = ref_time = 0.0
    ours_rows_for_ref = None
    shapes = SD15_SHAPES[: args.shapes]
    print(f"{'shape':>22} {'bits':>4} {'kmc x':>7} {'kmc mse':>8} {'kma x':>7} {'kma mse':>8}")
    for shape in shapes:
        n = int(np.prod(shape[1:]))
        rows = min(args.rows, shape[0])
        scale = 1.0 / np.sqrt(n)
        x = torch.distributions.Laplace(0.0, scale).sample((rows, n))
        x = x + 0.0 * torch.rand((), generator=gen)  # same rows for both methods
        xn = x.numpy().astype(np.float64)
        for bits in args.bits:
            k = 1 << bits
            # --- K-Means-C: every row its own codebook
            t0 = time.perf_counter()
            res = kmeans_1d(x, k)
            c = res.centroids
            codes = assign(x, c)
            deq = c.gather(1, codes)
            d_ours = time.perf_counter() - t0
            s_ours = float(((deq.double() - x.double()) ** 2).sum())
            t0 = time.perf_counter()
            s_sk = sum(sklearn_row(xn[r], k, seed=0) for r in range(rows))
            d_sk = time.perf_counter() - t0
            # --- K-Means-A: one codebook for the rows flattened
            flat = x.reshape(1, -1)
            t0 = time.perf_counter()
            ca = kmeans_1d(flat, k).centroids
            deqa = ca[0][assign(flat, ca)]
            d_ours_a = time.perf_counter() - t0
            s_ours_a = float(((deqa.double() - flat.double()) ** 2).sum())
            t0 = time.perf_counter()
            s_sk_a = sklearn_row(xn.reshape(-1), k, seed=0)
            d_sk_a = time.perf_counter() - t0
            t_ours += d_ours; t_sk += d_sk; sse_ours += s_ours; sse_sk += s_sk
            t_ours_a += d_ours_a; t_sk_a += d_sk_a; sse_ours_a += s_ours_a; sse_sk_a += s_sk_a
            print(f"{str(shape):>22} {bits:>4} {d_sk / d_ours:7.1f} {s_ours / s_sk:8.4f} "
                  f"{d_sk_a / d_ours_a:7.1f} {s_ours_a / s_sk_a:8.4f}")
        if ours_rows_for_ref is None and n >= 2880:
            ours_rows_for_ref = (x[:2].numpy().astype(np.float64), 1 << max(args.bits))

    # Reference procedure on 2 rows of a mid-size layer, against ours on the same rows.
    rows_np, k = ours_rows_for_ref
    t0 = time.perf_counter()
    reference_kmeans_layer(rows_np, k)
    ref_time = time.perf_counter() - t0
    xt = torch.from_numpy(rows_np).float()
    t0 = time.perf_counter()
    c = kmeans_1d(xt, k).centroids
    _ = c.gather(1, assign(xt, c))
    ours_ref = time.perf_counter() - t0

    speed_c, speed_a = t_sk / t_ours, t_sk_a / t_ours_a
    mse_c, mse_a = sse_ours / sse_sk, sse_ours_a / sse_sk_a
    print(f"K-Means-C: sklearn {t_sk:.2f}s  ours {t_ours:.3f}s  speedup {speed_c:.1f}x  mse_ratio {mse_c:.4f}")
    print(f"K-Means-A: sklearn {t_sk_a:.2f}s  ours {t_ours_a:.3f}s  speedup {speed_a:.1f}x  mse_ratio {mse_a:.4f}")
    print(f"reference per-layer procedure (fit per channel + per-element write-back), {rows_np.shape[0]} rows "
          f"of {rows_np.shape[1]}: {ref_time:.2f}s vs ours {ours_ref:.4f}s")
    speedup = (t_sk + t_sk_a) / (t_ours + t_ours_a)
    mse_ratio = max(mse_c, mse_a)
    print(f"kmeans speedup={speedup:.1f} mse_ratio={mse_ratio:.4f} vs_reference={ref_time / ours_ref:.0f}")


if __name__ == "__main__":
    main()
