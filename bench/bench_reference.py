"""Shared by the benchmarks: the reference system's K-Means-C procedure, deterministic Laplace
weights, the machine conditions a result was measured under, and a log that tees stdout."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402  (bench/machine.py)


def reference_kmeans_layer(rows: np.ndarray, k: int) -> np.ndarray:
    """Qua2SeDiMo's K-Means-C on a layer: one sklearn fit per output channel, then a Python loop
    writing every quantized element back."""
    out = np.empty_like(rows)
    for r in range(rows.shape[0]):
        km = KMeans(n_clusters=k, n_init=10, max_iter=100, random_state=0).fit(rows[r].reshape(-1, 1))
        centers, labels = km.cluster_centers_.reshape(-1), km.labels_
        for j in range(rows.shape[1]):
            out[r, j] = centers[labels[j]]
    return out


def reference_seconds_per_weight(rows: int = 4, width: int = 2880, k: int = 16, seed: int = 0) -> float:
    x = np.random.default_rng(seed).laplace(0.0, 1.0 / np.sqrt(width), size=(rows, width))
    t0 = time.perf_counter()
    reference_kmeans_layer(x, k)
    return (time.perf_counter() - t0) / (rows * width)


def laplace(shape: tuple[int, ...], scale: float, seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Laplace(0, scale) float32 samples from a generator seeded with `seed`: the same values on
    every run (on one device type). Inverse CDF, u kept off ±1/2 so no sample is infinite."""
    g = torch.Generator(device=device).manual_seed(seed)
    u = torch.rand(shape, generator=g, device=device).mul_(1 - 2e-7).add_(1e-7 - 0.5)
    return u.sign().mul_(-scale).mul_(torch.log1p(u.abs().mul_(-2)))


def machine_conditions(threads: int) -> dict:
    """What a timing depends on: CPU, cores, load, library versions, and the BLAS/OpenMP pools
    (threadpoolctl) with their kernels and thread counts as they stand when called."""
    import sklearn
    import threadpoolctl

    pools = [{k: p.get(k) for k in ("user_api", "internal_api", "prefix", "version", "architecture",
                                    "threading_layer", "num_threads")}
             for p in threadpoolctl.threadpool_info()]
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "threadpoolctl": threadpoolctl.__version__,
        "threads_requested": threads,
        "torch_threads": torch.get_num_threads(),
        "threadpools": pools,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def describe_threads(cond: dict) -> str:
    """One line: ours (torch intra-op threads) and every BLAS/OpenMP pool sklearn may use."""
    pools = ", ".join(" ".join(str(p[k]) for k in ("internal_api", "prefix", "architecture") if p.get(k))
                      + f" x{p['num_threads']}" for p in cond["threadpools"])
    return (f"{cond['cpu']}, {cond['usable_cpus']} usable cpus, load {cond['load_avg_1_5_15']}; "
            f"torch threads {cond['torch_threads']}; pools: {pools}; "
            f"OPENBLAS_CORETYPE={cond['env']['OPENBLAS_CORETYPE']} OMP_WAIT_POLICY={cond['env']['OMP_WAIT_POLICY']}")


class Tee:
    """print() to stdout and to a log file (the .log beside a result's .json)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w")
        self.stdout = sys.stdout

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stdout.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stdout.flush()

    def __enter__(self) -> "Tee":
        sys.stdout = self
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout = self.stdout
        self.file.close()


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
