"""Building a reference dir (`qsens reference build`): FID statistics of real images, their
prompts, their identity; the format and the reading side are `sampling.reference`'s.

Apart from the reader so that the reader (used by the scorers in `sampling.inception`) does not
import the feature networks that building needs: no file-level import cycle between them.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from denoisers.base import REFERENCE_FORMAT, REFERENCE_JSON
from core.errors import QsensError
from sampling.reference import (IMAGES_FILE, PREPROCESS, PROMPTS_FILE, Reference, _check_out_dir, _write_atomic,
                                list_images, load_image, read_captions)
from sampling.scoring import STATS_FILE, feature_stats


def build_reference(images_dir: str | Path, out_dir: str | Path, *, resolution: int,
                    num_images: int, inception_path: str | Path, captions: str | Path | None = None,
                    clip_model: str | Path | None = None, batch_size: int = 32,
                    device: str = "cpu", progress: bool = False, workers: int = 4,
                    cond_images: str | Path | None = None, cond_preprocess: str = "none") -> Reference:
    """Compute and write a reference dir (`sampling.reference`'s docstring: format and preprocessing).

    Args:
        images_dir: folder of real images; the first `num_images` in sorted name order are used.
        out_dir: reference dir to write (created or replaced atomically).
        resolution: the model's output size in pixels (square).
        inception_path: local clean-fid `inception-2015-12-05.pt`; never downloaded.
        captions: COCO captions JSON or a text file (see `read_captions`); None: no prompts.
        clip_model: local CLIP dir recorded for the scorer; with captions, also scores the real
            images against their captions (`clip_score_real`).
        batch_size: images per network call; workers: image-decoding threads.
        cond_images: conditioning images of image-conditioned pipelines, "source" (the images
            themselves) or a folder; cond_preprocess: none | canny | grey (`sampling.conditioning`).

    Returns the written `Reference`. Raises QsensError (one line) on bad input: missing folder or
    files, fewer images than asked, captions that do not match the images, a missing Inception file.
    """
    from core.progress import progress_bar

    from sampling.inception import (FEATURE_DIM, ClipEmbedder, clip_scores, inception_features,
                                    load_inception)

    if int(resolution) < 1:
        raise QsensError(f"--resolution must be a positive number of pixels, got {resolution}")
    if int(num_images) < 2:
        raise QsensError(f"--num-images must be at least 2 (a covariance), got {num_images}")
    resolution, num_images, batch_size = int(resolution), int(num_images), max(1, int(batch_size))
    out = Path(out_dir)
    files = list_images(images_dir)
    if len(files) < num_images:
        raise QsensError(f"image folder {images_dir} holds {len(files)} .jpg/.jpeg/.png images, "
                         f"fewer than the {num_images} asked (--num-images)")
    files = files[:num_images]
    names = [f.name for f in files]
    prompts = read_captions(captions, names) if captions is not None else None
    _check_out_dir(out)
    net = load_inception(inception_path, device)
    clip = ClipEmbedder(clip_model, device, batch_size) if clip_model else None

    feats, clip_real = [], []
    load = partial(load_image, resolution=resolution)
    with ThreadPoolExecutor(max(1, int(workers))) as pool, \
            progress_bar(total=num_images, unit="img", desc="reference", disable=not progress) as bar:
        for b0 in range(0, num_images, batch_size):
            images = np.stack(list(pool.map(load, files[b0:b0 + batch_size])))
            feats.append(inception_features(net, images, batch_size=batch_size, device=device))
            if clip is not None and prompts is not None:
                clip_real.append(clip_scores(clip, images, prompts[b0:b0 + batch_size]))
            bar.update(len(images))
    mu, sigma = feature_stats(np.concatenate(feats))

    info = {
        "format": REFERENCE_FORMAT, "kind": "inception", "resolution": resolution,
        "n_images": num_images,
        "feature_network": {"name": net.name, "file": str(inception_path),
                            "file_abs": os.path.abspath(str(inception_path)),
                            "sha256": net.sha256, "dim": FEATURE_DIM},
        "mode": "clean",
        "clip_model": str(clip_model) if clip_model else None,
        "images": str(images_dir),
        "captions": str(captions) if captions is not None else None,
        "prompts_file": PROMPTS_FILE if prompts is not None else None,
        "images_file": IMAGES_FILE,
        "preprocess": PREPROCESS.format(r=resolution),
        "clip_score_real": float(np.concatenate(clip_real).mean()) if clip_real else None,
    }
    files_out: dict[str, Any] = {
        STATS_FILE: (mu, sigma),
        IMAGES_FILE: ("\n".join(names) + "\n").encode(),
        REFERENCE_JSON: (json.dumps(info, indent=2) + "\n").encode(),
    }
    if prompts is not None:
        files_out[PROMPTS_FILE] = ("\n".join(prompts) + "\n").encode("utf-8")
    if cond_images is not None:  # image-conditioned pipelines (sampling.conditioning)
        from sampling import conditioning

        cond = conditioning.conditioning_images(cond_images, files, resolution, cond_preprocess)
        files_out[conditioning.COND_FILE] = conditioning.encode(cond)
        info.update(cond_file=conditioning.COND_FILE, cond_images=str(cond_images),
                    cond_preprocess=cond_preprocess)
        files_out[REFERENCE_JSON] = (json.dumps(info, indent=2) + "\n").encode()
    _write_atomic(out, files_out)
    return Reference(out, mu, sigma, info, prompts, names)

