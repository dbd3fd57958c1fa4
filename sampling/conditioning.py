"""Conditioning images of image-conditioned pipelines (img2img, ControlNet), kept in the reference dir.

`qsens reference build --cond-images DIR|source [--cond-preprocess NAME]` stores one
conditioning image per reference image (image i of the reference <-> conditioning image i, both
in sorted file-name order) as `cond.safetensors` (`images`: uint8 (N, R, R, 3), prepared exactly
as the reference images: RGB, shorter side to R, centre crop), and names it in reference.json
(`cond_file`, `cond_images`, `cond_preprocess`). The pipeline adapter passes image i of a
generation `cond[i % N]` (`denoisers.pipeline.read_cond_images`); the FID stays against the
reference images themselves.

- `--cond-images source`: the reference images themselves (img2img: the source image that noise
  is added to);
- `--cond-images DIR`: other files (e.g. depth maps, poses), the first N in sorted order;
- `--cond-preprocess`: a control-image preprocessor applied after loading: `none`, `canny`
  (Sobel gradient magnitude of the grey image, thresholded at its 80th percentile: white edges
  on black, the layout of ControlNet's canny models) or `grey`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import QsensError

COND_FILE = "cond.safetensors"  # denoisers.pipeline.COND_FILE reads the same name
PREPROCESSORS = ("none", "canny", "grey")


def _grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preprocess(img: np.ndarray, how: str) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (H, W, 3) by the named preprocessor."""
    if how == "none":
        return img
    g = _grey(img)
    if how == "grey":
        out = g
    elif how == "canny":
        p = np.pad(g, 1, mode="edge")
        gx = (p[1:-1, 2:] - p[1:-1, :-2]) * 2 + (p[:-2, 2:] - p[:-2, :-2]) + (p[2:, 2:] - p[2:, :-2])
        gy = (p[2:, 1:-1] - p[:-2, 1:-1]) * 2 + (p[2:, :-2] - p[:-2, :-2]) + (p[2:, 2:] - p[:-2, 2:])
        mag = np.hypot(gx, gy)
        thr = np.percentile(mag, 80) if mag.max() > 0 else 1.0
        out = np.where(mag > thr, 255.0, 0.0)
    else:
        raise QsensError(f"--cond-preprocess {how!r}: expected one of {', '.join(PREPROCESSORS)}")
    return np.repeat(np.clip(np.rint(out), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def conditioning_images(cond: str | Path, source_files: Sequence[Path], resolution: int,
                        how: str = "none") -> np.ndarray:
    """uint8 (N, R, R, 3): one conditioning image per reference image (`source_files`, N of
    them). `cond` is "source" or a folder with at least N images. One QsensError line otherwise."""
    from sampling.reference import list_images, load_image

    if how not in PREPROCESSORS:
        raise QsensError(f"--cond-preprocess {how!r}: expected one of {', '.join(PREPROCESSORS)}")
    n = len(source_files)
    if str(cond) == "source":
        files = list(source_files)
    else:
        files = list_images(cond)
        if len(files) < n:
            raise QsensError(f"--cond-images {cond} holds {len(files)} images, fewer than the {n} "
                             "reference images (one conditioning image per reference image)")
        files = files[:n]
    return np.stack([preprocess(load_image(f, resolution), how) for f in files])


def encode(images: np.ndarray) -> bytes:
    """uint8 images `(N, R, R, 3)` -> safetensors bytes (key `images`): cond.safetensors' content."""
    from safetensors.numpy import save

    return save({"images": np.ascontiguousarray(images, dtype=np.uint8)})
