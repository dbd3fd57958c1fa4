"""SSIM (Wang et al. 2004) in torch: Gaussian window (σ = 1.5, 11 taps), K1 = 0.01, K2 = 0.03.

Matches `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)` on images at least 11 pixels wide: the local
statistics use the normalised 11-tap Gaussian, and the SSIM map is averaged over the "valid"
region (no padding). Smaller images (the 8×8 digits) use the largest odd window that fits the
image (7 taps for 8×8, same σ) and reflect padding, so every pixel contributes to the mean.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

K1, K2 = 0.01, 0.03
SIGMA = 1.5
WIN = 11


def gaussian_window(size: int = WIN, sigma: float = SIGMA, dtype=torch.float64) -> torch.Tensor:
    """The normalised 1-D Gaussian window of SSIM (Wang et al., IEEE TIP 2004): `(size,)`, sums to 1."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _as_nchw(images) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    t = t.to(torch.float64)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:  # (N, H, W)
        t = t[:, None]
    elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):  # NHWC
        t = t.permute(0, 3, 1, 2)
    elif t.ndim != 4:
        raise ValueError(f"images must be (H, W), (N, H, W), (N, H, W, C) or (N, C, H, W); got {tuple(t.shape)}")
    return t


def ssim(a, b, data_range: float = 255.0, win_size: int = WIN, sigma: float = SIGMA,
         reduction: str = "none") -> torch.Tensor:
    """SSIM per image (mean over channels and pixels) of two image batches of equal shape.

    uint8 images: NHWC as the denoisers return them (or NCHW / NHW). `reduction="mean"` averages
    the batch. Identical images give exactly 1.
    """
    x, y = _as_nchw(a), _as_nchw(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    n, c, h, w = x.shape
    pad = 0
    if min(h, w) < win_size:
        win_size = min(h, w) if min(h, w) % 2 == 1 else min(h, w) - 1
        pad = win_size // 2
    if win_size < 1:
        raise ValueError(f"images of {h}×{w} are too small for SSIM")
    g = gaussian_window(win_size, sigma)
    kernel_h = g.view(1, 1, win_size, 1).repeat(c, 1, 1, 1)
    kernel_w = g.view(1, 1, 1, win_size).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        if pad:
            t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
        t = F.conv2d(t, kernel_h, groups=c)
        return F.conv2d(t, kernel_w, groups=c)

    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    per_image = (num / den).flatten(1).mean(dim=1)
    return per_image.mean() if reduction == "mean" else per_image
