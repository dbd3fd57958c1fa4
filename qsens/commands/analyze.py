"""`qsens analyze`: measured sensitivity, one layer quantized at a time (layerwise, mixdq)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from qsens.context import add_model_args, context

NAME = "analyze"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="measure per-layer sensitivity (layerwise FID/content; MixDQ SQNR/SSIM)",
        description="Quantize one layer at a time with every option and measure: `layerwise` — FID and "
        "content score of generated images (seed 000's min-max 0.6·ΔFID + 0.4·Δcontent, ranked JSON "
        "report with buckets); `mixdq` — SQNR of the denoiser output on calibration inputs from the FP "
        "trajectory (quality group) and SSIM of images vs FP (content group). Resumable.")
    p.add_argument("what", choices=["layerwise", "mixdq", "all"], nargs="?", default="all")
    add_model_args(p)
    p.add_argument("--bank", type=Path, default=None, help="bank dir (default: DATA/bank/NAME)")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: DATA/analysis/NAME)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from analysis.layerwise import measure_layerwise
    from analysis.mixdq import measure_mixdq
    from analysis.params import AnalysisParams
    from denoisers.base import configure_torch
    from sampling.noise import load_bank_for

    configure_torch(args.threads)
    params = AnalysisParams.from_yaml(args.params)
    ctx = context(args)
    den = ctx.load_denoiser()
    bank = load_bank_for(den, args.bank or ctx.layout.bank, ctx.spec.name, build_missing=False)
    out = args.out or ctx.layout.analysis
    if args.what in ("layerwise", "all"):
        from sampling.scoring import make_scorer

        t0 = time.perf_counter()
        df = measure_layerwise(den, bank, make_scorer(den, device=ctx.spec.device), params, out,
                               progress=not args.quiet)
        top = df.groupby("layer")["score"].max().sort_values(ascending=False).head(5)
        print(f"layerwise: {len(df)} pairs in {time.perf_counter() - t0:.1f} s → {out}/layerwise.json; "
              f"most sensitive: " + ", ".join(f"{l} {s:.2f}" for l, s in top.items()))
    if args.what in ("mixdq", "all"):
        t0 = time.perf_counter()
        df = measure_mixdq(den, bank, params, out, progress=not args.quiet)
        n_content = df.loc[df["group"] == "content", "layer"].nunique()
        print(f"mixdq: {len(df)} pairs ({n_content} content-group layers) in "
              f"{time.perf_counter() - t0:.1f} s → {out}/mixdq.parquet")
    return 0
