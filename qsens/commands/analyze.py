"""`qsens analyze`: measured sensitivity, one layer quantized at a time (layerwise, mixdq)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "analyze"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="measure per-layer sensitivity (layerwise FID/content; MixDQ SQNR/SSIM)",
        description="Quantize one layer at a time with every option and measure: `layerwise` — FID and "
        "content score of generated images (seed 000's min-max 0.6·ΔFID + 0.4·Δcontent, ranked JSON "
        "report with buckets); `mixdq` — SQNR of the denoiser output on calibration inputs from the FP "
        "trajectory (quality group) and SSIM of images vs FP (content group). Resumable.")
    p.add_argument("what", choices=["layerwise", "mixdq", "all"], nargs="?", default="all")
    p.add_argument("--model", default=None, help="digits | digits-dit | a diffusers dir (default: params model)")
    p.add_argument("--bank", type=Path, default=None, help="bank dir (default: DATA/bank/MODEL)")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: DATA/analysis/MODEL)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from analysis.layerwise import measure_layerwise
    from analysis.mixdq import measure_mixdq
    from analysis.params import AnalysisParams
    from denoisers.base import configure_torch
    from denoisers.registry import load_denoiser
    from qsens.commands.search import model_name
    from quant.bank import Bank

    configure_torch(args.threads)
    params = AnalysisParams.from_yaml(args.params)
    model = model_name(args)
    short = Path(model).name
    bank = Bank.load(args.bank or args.data_dir / "bank" / short)
    den = load_denoiser(model, data_dir=args.data_dir)
    out = args.out or args.data_dir / "analysis" / short
    if args.what in ("layerwise", "all"):
        from sampling.scoring import make_scorer

        t0 = time.perf_counter()
        df = measure_layerwise(den, bank, make_scorer(den), params, out, progress=not args.quiet)
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
