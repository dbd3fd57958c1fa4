"""K-Means-C / K-Means-A: our batched 1-D k-means against scikit-learn KMeans, same rows, same
threads, same run.

For each distinct SD v1.5 layer shape, `--rows` output channels of Laplace weights with the
fan-in scale (trained weights are heavy-tailed; a seeded generator per shape, so every run sees
the same rows) are clustered with k = 2^bits by
  - ours:    quant.kmeans.kmeans_1d + assign + dequantize, on all rows at once (KMC) / on the rows
             flattened (KMA)
  - sklearn: KMeans(n_clusters=k, random_state=0), defaults otherwise (k-means++, n_init='auto'),
             one fit per row (KMC) / one fit (KMA)
interleaved shape by shape, so both sides see the same machine load. Both run under
threadpoolctl's limit of `--threads` (every BLAS and OpenMP pool) and torch.set_num_threads,
with OMP_WAIT_POLICY=PASSIVE unless set (see below); the pools, their kernels and thread counts
are printed and stored. Printed: the speed ratio
(sklearn seconds / ours) and the MSE ratio (ours / sklearn, summed over rows). On up to
`--optimum-rows` rows of each distinct row length up to 2880, both are also compared with the
global optimum (quant.kmeans.kmeans_1d_exact). The reference system's per-layer procedure
(sklearn n_init=10 per channel, then a per-element Python write-back) is timed on `--ref-rows`
rows against ours on the same rows.

    python bench/kmeans.py                      # about 2 minutes on 2 cores
    python bench/kmeans.py --shapes 8 --rows 32 # a quick look

Writes bench/results/kmeans.json (+ .log) with the machine conditions. Last line:
`kmeans speedup=<x> mse_ratio=<y> vs_reference=<z>` (speedup over KMC+KMA; mse_ratio the worse
of KMC and KMA).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Before torch/sklearn load libgomp: OpenMP threads that spin at barriers (libgomp's default)
# stall for whole scheduler slices when other processes share the cores, and both sides then
# time the machine's load, not their work (10-30x here). Passive waiting keeps the comparison
# fair on a shared machine; set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reference import (Tee, describe_threads, laplace, machine_conditions,  # noqa: E402
                             reference_kmeans_layer, write_json)
from sd15_shapes import SD15_SHAPES  # noqa: E402

from quant.kmeans import assign, kmeans_1d, kmeans_1d_exact  # noqa: E402

OPTIMUM_MAX_N = 2880


def ours_kmc(x: torch.Tensor, k: int) -> tuple[float, np.ndarray]:
    """Seconds and per-row SSE of quantizing each row with its own codebook."""
    t0 = time.perf_counter()
    c = kmeans_1d(x, k).centroids
    deq = c.gather(1, assign(x, c))
    seconds = time.perf_counter() - t0
    return seconds, ((deq.double() - x.double()) ** 2).sum(dim=1).numpy()


def ours_kma(x: torch.Tensor, k: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    c = kmeans_1d(x.reshape(1, -1), k).centroids
    deq = c[0][assign(x, c)]
    seconds = time.perf_counter() - t0
    return seconds, float(((deq.double() - x.double()) ** 2).sum())


def sklearn_fit(x: np.ndarray, k: int) -> float:
    return float(KMeans(n_clusters=k, random_state=0).fit(x.reshape(-1, 1)).inertia_)


def sklearn_kmc(xn: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    sse = np.array([sklearn_fit(row, k) for row in xn])
    return time.perf_counter() - t0, sse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=128, help="output channels per shape (same rows for both)")
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--shapes", type=int, default=len(SD15_SHAPES), help="use the first N distinct shapes")
    ap.add_argument("--threads", type=int, default=2, help="for both sides")
    ap.add_argument("--optimum-rows", type=int, default=4, help="rows per distinct length compared with the optimum")
    ap.add_argument("--ref-rows", type=int, default=8, help="rows for the reference procedure")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "kmeans.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads), Tee(args.out.with_suffix(".log")):
        run(args)


def run(args: argparse.Namespace) -> None:
    cond = machine_conditions(args.threads)
    print("command: python bench/kmeans.py " + " ".join(sys.argv[1:]))
    print("threads: " + describe_threads(cond))
    shapes = SD15_SHAPES[: args.shapes]
    kmeans_1d(laplace((4, 512), 0.05, seed=99), 16)  # warm-up, untimed
    keys = ("ours_c", "sk_c", "sse_ours_c", "sse_sk_c", "ours_a", "sk_a", "sse_ours_a", "sse_sk_a")
    totals = dict.fromkeys(keys, 0.0)
    per_shape, optimum, seen_n = [], [], set()
    print(f"{'shape':>22} {'bits':>4} {'kmc x':>7} {'kmc mse':>8} {'kma x':>7} {'kma mse':>8}")
    for i, shape in enumerate(shapes):
        n = int(np.prod(shape[1:]))
        rows = min(args.rows, shape[0])
        x = laplace((rows, n), 1.0 / np.sqrt(n), seed=i)
        xn = x.numpy().astype(np.float64)
        for bits in args.bits:
            k = 1 << bits
            t_oc, sse_oc = ours_kmc(x, k)
            t_sc, sse_sc = sklearn_kmc(xn, k)
            t_oa, sse_oa = ours_kma(x, k)
            t0 = time.perf_counter()
            sse_sa = sklearn_fit(xn.reshape(-1), k)
            t_sa = time.perf_counter() - t0
            for key, v in (("ours_c", t_oc), ("sk_c", t_sc), ("sse_ours_c", sse_oc.sum()), ("sse_sk_c", sse_sc.sum()),
                           ("ours_a", t_oa), ("sk_a", t_sa), ("sse_ours_a", sse_oa), ("sse_sk_a", sse_sa)):
                totals[key] += float(v)
            per_shape.append({"shape": list(shape), "rows": rows, "bits": bits, "kmc_s_ours": round(t_oc, 5),
                              "kmc_s_sklearn": round(t_sc, 4),
                              "kmc_mse_ratio": round(float(sse_oc.sum() / sse_sc.sum()), 5),
                              "kma_s_ours": round(t_oa, 5), "kma_s_sklearn": round(t_sa, 4),
                              "kma_mse_ratio": round(sse_oa / sse_sa, 5)})
            print(f"{str(shape):>22} {bits:>4} {t_sc / t_oc:7.1f} {sse_oc.sum() / sse_sc.sum():8.4f} "
                  f"{t_sa / t_oa:7.1f} {sse_oa / sse_sa:8.4f}", flush=True)
            if n <= OPTIMUM_MAX_N and n not in seen_n and args.optimum_rows:
                r = min(rows, args.optimum_rows)
                best = kmeans_1d_exact(x[:r], k).sse.numpy()
                optimum.append({"n": n, "bits": bits, "rows": r,
                                "ours_over_optimum": float(np.mean(sse_oc[:r] / best)),
                                "sklearn_over_optimum": float(np.mean(sse_sc[:r] / best))})
        seen_n.add(n)

    # The reference procedure and ours on the same rows of the first SD v1.5 layer at least 2880 wide.
    n_ref = next(int(np.prod(s[1:])) for s in SD15_SHAPES if int(np.prod(s[1:])) >= 2880)
    rows_ref = laplace((args.ref_rows, n_ref), 1.0 / np.sqrt(n_ref), seed=1000)
    k_ref = 1 << max(args.bits)
    t0 = time.perf_counter()
    reference_kmeans_layer(rows_ref.numpy().astype(np.float64), k_ref)
    ref_s = time.perf_counter() - t0
    ours_ref_s, _ = ours_kmc(rows_ref, k_ref)

    speed_c, speed_a = totals["sk_c"] / totals["ours_c"], totals["sk_a"] / totals["ours_a"]
    mse_c, mse_a = totals["sse_ours_c"] / totals["sse_sk_c"], totals["sse_ours_a"] / totals["sse_sk_a"]
    speedup = (totals["sk_c"] + totals["sk_a"]) / (totals["ours_c"] + totals["ours_a"])
    print(f"K-Means-C: sklearn {totals['sk_c']:.2f}s  ours {totals['ours_c']:.3f}s  speedup {speed_c:.1f}x  "
          f"mse_ratio {mse_c:.4f}")
    print(f"K-Means-A: sklearn {totals['sk_a']:.2f}s  ours {totals['ours_a']:.3f}s  speedup {speed_a:.1f}x  "
          f"mse_ratio {mse_a:.4f}")
    for bits in args.bits:
        sel = [o for o in optimum if o["bits"] == bits]
        if sel:
            print(f"gap to the global optimum, {bits} bits, {len(sel)} row lengths <= {OPTIMUM_MAX_N}: "
                  f"ours {np.mean([o['ours_over_optimum'] for o in sel]):.4f}x  "
                  f"sklearn {np.mean([o['sklearn_over_optimum'] for o in sel]):.4f}x")
    print(f"reference per-layer procedure (n_init=10 fit per channel + per-element write-back), "
          f"{args.ref_rows} rows of {n_ref}, k={k_ref}: {ref_s:.2f}s vs ours {ours_ref_s:.4f}s")
    cond_after = machine_conditions(args.threads)
    print(f"load average before {cond['load_avg_1_5_15']} after {cond_after['load_avg_1_5_15']} "
          f"(other processes share these cores: timings are noisy, both sides interleaved)")
    last = f"kmeans speedup={speedup:.1f} mse_ratio={max(mse_c, mse_a):.4f} vs_reference={ref_s / ours_ref_s:.0f}"
    write_json(args.out, {
        "command": "python bench/kmeans.py " + " ".join(sys.argv[1:]),
        "machine": cond, "load_avg_after": cond_after["load_avg_1_5_15"],
        "rows_per_shape": args.rows, "bits": args.bits, "shapes": len(shapes),
        "kmc": {"sklearn_s": totals["sk_c"], "ours_s": totals["ours_c"], "speedup": speed_c, "mse_ratio": mse_c},
        "kma": {"sklearn_s": totals["sk_a"], "ours_s": totals["ours_a"], "speedup": speed_a, "mse_ratio": mse_a},
        "optimum": optimum,
        "reference": {"rows": args.ref_rows, "n": n_ref, "k": k_ref, "seconds": ref_s, "ours_seconds": ours_ref_s},
        "per_shape": per_shape,
        "speedup": speedup, "mse_ratio": max(mse_c, mse_a), "vs_reference": ref_s / ours_ref_s,
        "last_line": last,
    })
    print(last)


if __name__ == "__main__":
    main()
