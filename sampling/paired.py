"""Paired scores: each quantized image against the full-precision image of the same seed.

FID against real images at 500–1,000 images is dominated by seed noise (the images themselves
differ from seed set to seed set); comparing a quantized model's image with the FP model's image
from the *same* seed and conditioning cancels that noise, so far fewer images rank configs
(measured, not assumed: `qsens analyze metrics`, `metrics/NAME/metric_validity.json`).

Every paired metric is a distance: 0 for a config that leaves every image unchanged, larger is
worse, so any of them can be the predictor's label (`score.metric`).

| name | what (per seed set of n images) |
| --- | --- |
| `fd_fp` | Fréchet distance between the quantized and the FP feature sets ("FID to FP") |
| `feat_dist` | mean over images of the L2 distance between the two feature vectors |
| `image_mse` | mean squared pixel error on the uint8 scale (PSNR = 10·log10(255² / image_mse)) |
| `dssim` | 1 − mean SSIM (Wang et al. 2004; `sampling.ssim`) |
| `content_drop` | FP content score − quantized content score (may be < 0) |
| `lpips` | mean LPIPS (Zhang et al. 2018) when a local LPIPS network file is given |

Features are the scorer's FID features (Inception pool-3 for real models, the digits
classifier's 64-d penultimate layer for `digits`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

PAIRED_METRICS = ("fd_fp", "feat_dist", "image_mse", "dssim", "content_drop", "lpips")
# Metrics a label may be, besides these: FID against the real reference and the content score.
LABEL_METRICS = ("fid",) + PAIRED_METRICS


def frechet_to_fp(q_feats: np.ndarray, fp_feats: np.ndarray) -> float:
    """Fréchet distance between two feature sets (N, D): clean-fid's formula, evaluated exactly
    through the N×N route of `sampling.fid.frechet_distance_between_features` (milliseconds
    where scipy's d×d sqrtm takes ~20 s at D = 2048).

    0 when the sets are equal. Raises ValueError for fewer than 2 rows or different shapes."""
    from sampling.fid import frechet_distance_between_features

    q, f = np.asarray(q_feats, np.float64), np.asarray(fp_feats, np.float64)
    if q.shape != f.shape or q.ndim != 2 or len(q) < 2:
        raise ValueError(f"paired feature sets must be (N >= 2, D) of one shape, got {q.shape} and {f.shape}")
    if np.array_equal(q, f):
        return 0.0
    return max(0.0, frechet_distance_between_features(q, f))


def feature_distance(q_feats: np.ndarray, fp_feats: np.ndarray) -> float:
    """Mean over images of ||q_i − fp_i||₂ (feature units)."""
    d = np.asarray(q_feats, np.float64) - np.asarray(fp_feats, np.float64)
    return float(np.sqrt((d * d).sum(axis=1)).mean())


def image_mse(q_images: np.ndarray, fp_images: np.ndarray) -> float:
    """Mean squared error of uint8 images computed in float64 (no wrap-around), 0..65025."""
    a, b = np.asarray(q_images, np.float64), np.asarray(fp_images, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image batches differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean((a - b) ** 2))


def psnr(mse: float) -> float | None:
    """PSNR in dB of uint8 images from their MSE; None for identical images (infinite PSNR)."""
    return None if mse <= 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def dssim(q_images: np.ndarray, fp_images: np.ndarray) -> float:
    """1 − mean SSIM over the batch (0 for identical images)."""
    from sampling.ssim import ssim

    return float(1.0 - ssim(q_images, fp_images, reduction="mean").item())


def paired_scores(q_images: np.ndarray, q_feats: np.ndarray, q_content: float,
                  fp_images: np.ndarray, fp_feats: np.ndarray, fp_content: float,
                  lpips: Any = None) -> dict[str, float | None]:
    """Every paired metric of one seed set (module table); `lpips`: a callable
    (uint8 NHWC, uint8 NHWC) → per-image distances, or None (metric left out).

    Shapes: images (N, H, W, C) uint8, features (N, D). Raises ValueError when the two sides are
    not the same seeds' images (shapes differ) or N < 2."""
    mse = image_mse(q_images, fp_images)
    out: dict[str, float | None] = {
        "fd_fp": frechet_to_fp(q_feats, fp_feats),
        "feat_dist": feature_distance(q_feats, fp_feats),
        "image_mse": mse,
        "psnr": psnr(mse),
        "dssim": dssim(q_images, fp_images),
        "content_drop": float(fp_content - q_content),
    }
    if lpips is not None:
        out["lpips"] = float(np.mean(lpips(q_images, fp_images)))
    return out
