"""`qsens noise`: is FID meaningful for this model? Seed noise vs spread over random configs."""
from __future__ import annotations

import argparse
import json

from qsens.argtypes import images_count, non_negative_int, positive_int
from qsens.context import add_cost_arg, add_model_args, context, with_cost

NAME = "noise"

KEYS = ("classifier_test_accuracy", "fp_generated_accuracy", "fp_fid_mean", "fp_fid_seed_std",
        "random_fid_std", "fid_signal_to_noise", "fid_retest_spearman", "random_fid_min",
        "random_fid_max", "uniform_fid_by_bits", "seconds_per_config_median")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="measure seed noise vs config spread of the score (sanity check)",
        description="Score the FP model on several disjoint seed sets (its FID std σ), random "
        "configs on two disjoint seed sets (FID std S, test–retest Spearman), and every uniform "
        "config; write metrics/NAME/noise.json (S/σ should be ≥ 10, retest Spearman ≥ 0.9) and a "
        "sample grid PNG (FP vs uniform 4-bit vs uniform 3-bit).")
    add_model_args(p)
    p.add_argument("--bank", default=None,
                   help="bank dir (default: DATA/bank/NAME; built in memory if missing)")
    p.add_argument("--out", default=None, help="metrics JSON to write (default: metrics/NAME/noise.json)")
    p.add_argument("--configs-csv", default=None,
                   help="per-random-config FIDs (test and retest) for plots (default: metrics/NAME/noise_configs.csv; "
                   "'' for none)")
    p.add_argument("--grid", default=None,
                   help="sample grid PNG to write (default: docs/img/NAME_samples.png; '' for none)")
    p.add_argument("--random-configs", type=positive_int, default=None, help="override noise.random_configs")
    p.add_argument("--images", type=images_count, default=None, help="override score.images")
    p.add_argument("--threads", type=non_negative_int, default=None, help="torch CPU threads (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cost_arg(p)
    p.set_defaults(func=lambda args: with_cost(run, args, "noise"))


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from denoisers.base import configure_torch
    from sampling.noise import (NoiseParams, ScoreParams, load_bank_for, measure_noise,
                                write_noise_outputs)
    from sampling.scorers import make_scorer

    configure_torch(args.threads)
    params = NoiseParams.from_yaml(args.params)
    sp = ScoreParams.from_yaml(args.params)
    if args.random_configs is not None:
        params = dataclasses.replace(params, random_configs=args.random_configs)
    if args.images is not None:
        sp = dataclasses.replace(sp, images=args.images)
    ctx = context(args)
    args.out = args.out or str(ctx.layout.metrics / "noise.json")
    if args.configs_csv is None:
        args.configs_csv = str(ctx.layout.metrics / "noise_configs.csv")
    den = ctx.load_denoiser()
    scorer = make_scorer(den, device=ctx.spec.device)
    bank = load_bank_for(den, args.bank or ctx.layout.bank, ctx.spec.name, progress=not args.quiet,
                         build_missing=args.bank is None)
    if args.grid is None:
        args.grid = f"docs/img/{ctx.spec.name}_samples.png"
    result, records = measure_noise(den, scorer, bank, params, sp, progress=not args.quiet,
                                    grid_path=args.grid or None)
    write_noise_outputs(result, records, args.out, args.configs_csv or None)
    for k in KEYS:
        v = result.get(k)
        if isinstance(v, float):
            v = f"{v:.4f}"
        elif isinstance(v, dict):
            v = json.dumps({kk: round(vv, 2) for kk, vv in v.items()})
        print(f"{k:28s} {v}")
    for opt, u in result["uniform"].items():
        fid = "failed" if u["fid"] is None else f"{u['fid']:.2f}"
        print(f"  uniform {opt:6s} FID {fid:>8s}  accuracy {u['accuracy'] or float('nan'):.3f}  "
              f"avg_bits {u['avg_bits']:.3f}")
    print(f"wrote {args.out}" + (f" and {args.grid}" if args.grid else ""))
    return 0
