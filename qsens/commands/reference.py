"""`qsens reference build|show`: FID statistics + prompts of real images, for real models."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from qsens.argtypes import images_count, non_negative_int, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reference", help="build or inspect the reference dir of a real model (FID stats, prompts)",
        description="A reference dir holds the clean-fid Inception statistics of real images "
        "(e.g. COCO val2017) at the model's output resolution, their captions as prompts, and "
        "the identity (sha256) of the feature network. Scores refuse a reference built at "
        "another resolution or with another network. Nothing is downloaded.")
    sub = p.add_subparsers(dest="reference_command", metavar="ACTION")

    b = sub.add_parser("build", help="compute the statistics of a folder of real images",
                       description="Images (JPEG/PNG, any size or mode) in sorted file-name order "
                       "are converted to RGB, resized (shorter side) and centre-cropped to "
                       "--resolution, then passed through clean-fid's 'clean' resize and its "
                       "Inception network.")
    b.add_argument("--images", required=True, type=Path, help="folder of real images (e.g. val2017)")
    b.add_argument("--captions", type=Path, default=None,
                   help="COCO captions JSON (first caption per image) or a text file with one "
                   "caption per line in sorted image order; they become prompts.txt")
    b.add_argument("--resolution", required=True, type=positive_int, help="the model's output size in px")
    b.add_argument("--num-images", type=images_count, default=1000,
                   help="use the first N images in sorted order (default: %(default)s)")
    b.add_argument("--inception", required=True, type=Path,
                   help="local clean-fid Inception file inception-2015-12-05.pt")
    b.add_argument("--clip", default=None,
                   help="local CLIP model dir recorded for the CLIP score (also scores the real "
                   "images against their captions)")
    b.add_argument("--cond-images", default=None, metavar="DIR|source",
                   help="image-conditioned pipelines (img2img, ControlNet): one conditioning image "
                   "per reference image, from DIR (sorted names) or `source` (the images "
                   "themselves: img2img's source images); stored in the reference dir")
    b.add_argument("--cond-preprocess", default="none", choices=("none", "canny", "grey"),
                   help="control-image preprocessor applied to the conditioning images "
                   "(default: %(default)s)")
    b.add_argument("--out", required=True, type=Path, help="reference dir to write")
    b.add_argument("--batch-size", type=positive_int, default=32, help="images per network call")
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run_build)

    s = sub.add_parser("show", help="print what a reference dir holds")
    s.add_argument("dir", type=Path, help="reference dir")
    s.add_argument("--prompts", type=non_negative_int, default=3, help="print the first N prompts")
    s.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: p.print_help() or 1)


def check_device(device: str) -> str:
    """One line (QsensError) for a --device that torch does not know or that is not here."""
    import torch

    from core.errors import QsensError

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise QsensError(f"--device {device!r}: not a device (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise QsensError(f"--device {device}: no CUDA device is visible here "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise QsensError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise QsensError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise QsensError(f"--device {device}: qsens runs on cpu, cuda or mps, not {dev.type}")
    return device


def run_build(args: argparse.Namespace) -> int:
    """`qsens reference build`: build an FID reference of real images; exit code."""
    from sampling.reference_build import build_reference

    check_device(args.device)  # before any image is read
    t0 = time.perf_counter()
    ref = build_reference(args.images, args.out, resolution=args.resolution,
                          num_images=args.num_images, inception_path=args.inception,
                          captions=args.captions, clip_model=args.clip,
                          batch_size=args.batch_size, device=args.device,
                          progress=not args.quiet and sys.stderr.isatty(),
                          **({} if args.cond_images is None else
                             {"cond_images": args.cond_images, "cond_preprocess": args.cond_preprocess}))
    seconds = time.perf_counter() - t0
    net = ref.info["feature_network"]
    prompts = f", {len(ref.prompts)} prompts" if ref.prompts else ", no prompts"
    print(f"reference {ref.path}: {ref.info['n_images']} images at {ref.resolution} px{prompts}, "
          f"{net['dim']}-d features (sha256 {net['sha256'][:16]}), {seconds:.1f}s "
          f"({ref.info['n_images'] / seconds:.1f} images/s)")
    if ref.info.get("clip_score_real") is not None:
        print(f"CLIP score of the real images vs their captions: {ref.info['clip_score_real']:.3f}")
    if ref.info.get("cond_file"):
        print(f"conditioning images: {ref.info['cond_images']} ({ref.info['cond_preprocess']}) in "
              f"{ref.info['cond_file']}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """`qsens reference show`: print a reference's info and statistics; exit code."""
    import numpy as np

    from sampling.reference import load_reference

    ref = load_reference(args.dir)
    info = ref.info
    net = info["feature_network"]
    print(f"reference {ref.path} (format {info['format']}, kind {info['kind']})")
    print(f"  images       {info['n_images']} from {info.get('images')} at {ref.resolution} px")
    print(f"  network      {net.get('name')}: {net.get('file')} (sha256 {net.get('sha256')})")
    print(f"  mode         {info.get('mode')}; {info.get('preprocess', '')}")
    print(f"  stats        mu {ref.mu.shape}, sigma {ref.sigma.shape}, "
          f"trace(sigma) {float(np.trace(ref.sigma)):.4g}")
    print(f"  captions     {info.get('captions')}")
    print(f"  clip model   {info.get('clip_model')}")
    if info.get("cond_file"):
        print(f"  conditioning {info['cond_images']} ({info.get('cond_preprocess')}) in {info['cond_file']}")
    if info.get("clip_score_real") is not None:
        print(f"  clip score   {info['clip_score_real']:.3f} (real images vs their captions)")
    if ref.prompts:
        for i, prompt in enumerate(ref.prompts[: max(0, args.prompts)]):
            name = ref.images[i] if ref.images else f"#{i}"
            print(f"  prompt {i:<5} {name}: {prompt}")
    return 0
