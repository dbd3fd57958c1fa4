"""The reference system's K-Means-C procedure, timed on a sample: shared by the benchmarks."""
from __future__ import annotations

import time

import numpy as np
from sklearn.cluster import KMeans


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
