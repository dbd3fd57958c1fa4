"""FID: our exact FrechetReference against clean-fid's `frechet_distance`, same features, same run.

Synthetic, seeded features with an Inception-like spectrum (d = 2048, covariance eigenvalues
decaying as 1/k, positive means): a reference set of `--ref-samples` rows and a generated set
of `--n` rows drawn from a perturbed Gaussian (rotated, rescaled, shifted), so the FID is a
realistic fraction of the traces. Timed, both on one thread (threadpoolctl) and on the same
OpenBLAS builds (printed):
  - clean-fid: `cleanfid.fid.frechet_distance(mu_g, sigma_g, mu_r, sigma_r)` from the
    generated features' mean / unbiased covariance (computing those is timed apart and NOT
    counted), best of `--cleanfid-runs`;
  - ours: `FrechetReference.distance_from_features(features)`, everything per score (mean,
    centring, traces, the n×d×d product, the n×n eigvalsh), best of `--runs`. The one-time
    reference precompute (eigh of sigma_r) is reported apart; so is `distance(mu, sigma)`,
    the d×d route for when only statistics are at hand.
rel_err = |ours - clean-fid| / clean-fid; both are also compared with an independent SVD
route (nuclear norm of (X - mu_g) S / sqrt(n-1)), which shows the gap is clean-fid's rounding
(its Schur sqrtm of the singular n < d product), ours matching to ~1e-13. Writes
bench/results/fid.json (timings, values, machine conditions with the load average). CPU-time
ratios are printed too: steadier than wall time when other processes share the machine.
Leaves OPENBLAS_* and the other environment variables as they are.

Last line: `fid speedup=<clean-fid s / ours s> rel_err=<y>` (goals: ≥ 20×, ≤ 1e-6).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time
import warnings
from pathlib import Path

# The repo root first: bench/ holds scripts whose names shadow packages (e.g. bench/sampling.py).
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402  (loads scipy's OpenBLAS before threadpoolctl looks)
from cleanfid.fid import frechet_distance  # noqa: E402  (imports torch: not inside the timing)
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from sampling.fid import FrechetReference  # noqa: E402

from machine import loadavg, write_result  # noqa: E402  (bench/machine.py)

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS")
BLAS_KEYS = ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer",
             "architecture", "coretype")


def synthetic_features(d: int, n_ref: int, n_gen: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, generated) features: Z @ A + mu with Cov eigenvalues 12/k, k = 1..d."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = 12.0 / np.arange(1, d + 1)  # Tr ≈ 12·ln(2048) ≈ 98, top eigenvalue 12
    a = np.sqrt(lam)[:, None] * q  # Cov(Z @ a) = a^T a = q^T diag(lam) q
    mu = 0.5 * rng.random(d)
    ref = rng.standard_normal((n_ref, d)) @ a + mu
    g = np.random.default_rng(seed + 1)
    # generated: a 10 % random mixing of the factor, a ±20 % rescale of its rows, a mean shift
    a_g = (np.sqrt(1.0 + 0.2 * g.uniform(-1, 1, d))[:, None] * a) @ (
        np.eye(d) + 0.1 * g.standard_normal((d, d)) / np.sqrt(d))
    gen = g.standard_normal((n_gen, d)) @ a_g + mu + 0.05 * g.standard_normal(d)
    return ref, gen


def cleanfid_distance(mu1, sigma1, mu2, sigma2) -> tuple[float, str]:
    """clean-fid's value and whatever it printed (its singular-product notice, if any)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy ≥ 1.16: deprecated disp=
        value = float(frechet_distance(mu1, sigma1, mu2, sigma2))
    return value, out.getvalue().strip()


def best_of(fn, runs: int) -> tuple[float, object, list[float], float]:
    """(best wall s, result, wall s of each run, best CPU s of this process). On one thread the
    CPU time leaves out the time the OS gave other processes: steadier on a shared machine."""
    times, cpu, result = [], [], None
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), result, times, min(cpu)


def blas_info() -> list[dict]:
    return [{k: i[k] for k in BLAS_KEYS if k in i} | {"file": Path(i.get("filepath", "")).name}
            for i in threadpool_info()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=2048, help="feature dimension (Inception pool3: 2048)")
    ap.add_argument("--n", type=int, default=1000, help="generated images per score")
    ap.add_argument("--ref-samples", type=int, default=2500, help="reference feature rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=5, help="ours: best of (≥ 1)")
    ap.add_argument("--cleanfid-runs", type=int, default=2, help="clean-fid: best of")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads, both sides")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fid.json"))
    args = ap.parse_args()
    if min(args.runs, args.cleanfid_runs, args.threads) < 1 or args.n < 2:
        ap.error("--runs, --cleanfid-runs and --threads must be ≥ 1, --n ≥ 2")

    load_start = loadavg()
    with threadpool_limits(args.threads):
        blas = blas_info()
        env = {k: os.environ.get(k) for k in ENV_VARS}
        print(f"cpus {os.cpu_count()}, threads {args.threads}, python {platform.python_version()}, "
              f"numpy {np.__version__}, scipy {scipy.__version__}")
        print("env: " + (" ".join(f"{k}={v}" for k, v in env.items() if v is not None) or "(none of "
                         + ", ".join(ENV_VARS) + " set)"))
        for b in blas:
            print("blas: " + " ".join(f"{k}={b[k]}" for k in ("internal_api", "version", "num_threads",
                                                            "architecture", "coretype", "file") if k in b))

        t0 = time.perf_counter()
        ref, gen = synthetic_features(args.d, args.ref_samples, args.n, args.seed)
        mu_r, sigma_r = ref.mean(axis=0), np.cov(ref, rowvar=False)
        t_data = time.perf_counter() - t0
        print(f"data: d={args.d} reference {args.ref_samples} rows, generated {args.n} rows "
              f"({t_data:.1f}s to make)")

        t0 = time.perf_counter()
        fr = FrechetReference(mu_r, sigma_r)
        t_pre = time.perf_counter() - t0
        print(f"ours, one-time reference precompute (eigh of sigma_r, S = sqrt): {t_pre:.2f}s")

        t_ours, ours, ours_times, cpu_ours = best_of(lambda: fr.distance_from_features(gen), args.runs)
        print(f"ours, distance_from_features (n×n route): best {t_ours:.3f}s of "
              f"{', '.join(f'{t:.3f}' for t in ours_times)}  FID {ours:.10g}")

        t0 = time.perf_counter()
        mu_g, sigma_g = gen.mean(axis=0), np.cov(gen, rowvar=False)
        t_stats = time.perf_counter() - t0
        t_stat_route, ours_stats, _, _ = best_of(lambda: fr.distance(mu_g, sigma_g), min(args.runs, 2))
        print(f"ours, distance(mu, sigma) (d×d route): best {t_stat_route:.3f}s  FID {ours_stats:.10g}")

        t_cf, (cf, notice), cf_times, cpu_cf = best_of(
            lambda: cleanfid_distance(mu_g, sigma_g, mu_r, sigma_r), args.cleanfid_runs)
        print(f"clean-fid frechet_distance: best {t_cf:.2f}s of {', '.join(f'{t:.2f}' for t in cf_times)}"
              f"  FID {cf:.10g}  (+ {t_stats:.3f}s for mu/cov, not counted)"
              + (f"  printed: {notice!r}" if notice else ""))

    # Which of the two is exact: an independent route to Tr sqrt(S sigma_g S), the nuclear norm
    # of Y = (X - mu_g) S / sqrt(n-1) by SVD (singular values carry no sqrt-of-rounding noise).
    y = (gen - mu_g) @ fr.sqrt_sigma / np.sqrt(args.n - 1)
    diff = mu_g - mu_r
    exact = float(diff @ diff + np.trace(sigma_g) + fr.trace_sigma - 2.0 * scipy.linalg.svdvals(y).sum())
    print(f"vs the SVD route: ours {(ours - exact) / exact:+.2e}, "
          f"clean-fid {(cf - exact) / exact:+.2e} relative")

    rel_err = abs(ours - cf) / abs(cf)
    rel_routes = abs(ours - ours_stats) / abs(ours)
    speedup = t_cf / t_ours
    load_end = loadavg()
    print(f"CPU seconds (this process): clean-fid {cpu_cf:.2f}s, ours {cpu_ours:.3f}s, ratio "
          f"{cpu_cf / cpu_ours:.1f}; load average {load_start} at start, {load_end} at end "
          f"(on {os.cpu_count()} cpus)")
    print(f"ours - clean-fid = {ours - cf:.3g} (FID {cf:.4g}; Tr(sigma_g)+Tr(sigma_r) = "
          f"{np.trace(sigma_g) + fr.trace_sigma:.4g}); our two routes differ by {rel_routes:.2e} relative")

    result = {
        "bench": "fid", "d": args.d, "n": args.n, "ref_samples": args.ref_samples, "seed": args.seed,
        "fid": {"ours_features": ours, "ours_stats": ours_stats, "cleanfid": cf, "rel_err": rel_err,
                "rel_diff_our_routes": rel_routes,
                "svd_route": exact, "ours_rel_err_vs_svd": (ours - exact) / exact,
                "cleanfid_rel_err_vs_svd": (cf - exact) / exact, "cleanfid_printed": notice or None,
                "trace_sigma_g": float(np.trace(sigma_g)), "trace_sigma_r": fr.trace_sigma},
        "seconds": {"ours_per_score": t_ours, "ours_per_score_runs": ours_times,
                    "ours_reference_precompute": t_pre, "ours_distance_stats_route": t_stat_route,
                    "cleanfid_frechet_distance": t_cf, "cleanfid_runs": cf_times,
                    "mu_cov_of_features_not_counted": t_stats,
                    "cpu_ours_per_score": cpu_ours, "cpu_cleanfid_frechet_distance": cpu_cf},
        "speedup": speedup, "speedup_cpu_time": cpu_cf / cpu_ours,
        "run": {"threads": args.threads, "loadavg_start": load_start, "loadavg_end": load_end,
                "blas": blas, "env": env},
    }
    write_result("fid", result, out=args.out)  # + "command" and "machine" (bench/machine.py)
    print(f"fid speedup={speedup:.1f} rel_err={rel_err:.2e}")


if __name__ == "__main__":
    main()
