"""`qsens score`: generate images with one quantization config applied and print its scores."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qsens.argtypes import images_count, non_negative_int
from qsens.context import add_model_args, context

NAME = "score"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="score one config (FID + content score) of a denoiser",
        description="Apply a QuantConfig (JSON) to the denoiser, generate images from fixed "
        "per-image seeds, and print FID and the content score (digits: classifier accuracy "
        "against the conditioning class; real models: CLIP score). `--config fp16` scores the "
        "unquantized model. The model's weights are restored afterwards.")
    add_model_args(p)
    p.add_argument("--config", required=True, help="QuantConfig JSON file, or fp16")
    p.add_argument("--bank", default=None,
                   help="bank dir (default: DATA/bank/NAME; built in memory if missing)")
    p.add_argument("--images", type=images_count, default=None,
                   help="images to generate (default: params score.images)")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="seed set: image i uses seed SEED*1e6+i (default: params score.seed)")
    p.add_argument("--paired", action="store_true",
                   help="also score against the FP images of the same seeds (FID to FP, per-image "
                   "feature distance, MSE/PSNR, 1-SSIM, content drop); the FP images are cached "
                   "under DATA/fp_cache/NAME")
    p.add_argument("--save-images", default=None, help="also write a PNG grid of the images here")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--threads", type=non_negative_int, default=None, help="torch CPU threads (default: cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from denoisers.base import configure_torch
    from core.errors import QsensError
    from sampling.evaluator import Evaluator
    from sampling.noise import ScoreParams, load_bank_for, sample_grid

    configure_torch(args.threads)
    sp = ScoreParams.from_yaml(args.params)
    n = args.images if args.images is not None else sp.images
    seed = args.seed if args.seed is not None else sp.seed
    if n < 2:
        raise QsensError(f"--images must be >= 2, got {n}")
    ctx = context(args)
    den = ctx.load_denoiser()
    result: dict = {"model": ctx.spec.name, "reference": str(den.reference().path), "seed": seed}
    t0 = time.perf_counter()
    config, bank = None, None
    if args.config == "fp16":
        result["config"] = "fp16"
    else:
        from quant.config import QuantConfig

        path = Path(args.config)
        if not path.exists():
            raise QsensError(f"config file {path} not found")
        config = QuantConfig.load(path)
        bank = load_bank_for(den, args.bank or ctx.layout.bank, ctx.spec.name,
                             build_missing=args.bank is None)
        result["config"] = str(path)
        stats = bank.summarize(config).to_dict()
        result.update({k: stats[k] for k in ("avg_bits", "quantized_bytes", "quantized_error",
                                             "bops") if k in stats})
    ev = Evaluator.for_denoiser(den, bank, fp_cache=ctx.layout.fp_cache, device=ctx.spec.device)
    row = ev.score(config, n, seed, paired=args.paired, keep_images=True)
    images = row.pop("images")
    result.update({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()})
    result["total_seconds"] = round(time.perf_counter() - t0, 3)
    if args.save_images:
        sample_grid({result["config"]: images}, args.save_images)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k in ("model", "reference", "seed", "config", "avg_bits", "status", "reason", "fid", "content",
                  *PAIRED_SHOWN, "n_images", "seconds", "total_seconds"):
            if k in result and result[k] is not None and result[k] != "":
                v = result[k]
                print(f"{k:18s} {v:.4f}" if isinstance(v, float) else f"{k:18s} {v}")
    return 0 if row["status"] == "ok" else 1


PAIRED_SHOWN = ("fd_fp", "feat_dist", "image_mse", "psnr", "dssim", "content_drop", "lpips")
