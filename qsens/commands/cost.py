"""`qsens cost`: what a run generated per stage, and the GPU-hours that implies for real models."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.layout import Layout
from core.params import read_section as read_params_section

NAME = "cost"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="sum the images and denoiser forward passes of every stage (metrics/<model>/cost.json)",
        description="Reads the per-stage spend files the stages write with --cost (images generated, "
        "denoiser forward calls and the samples they carried) and sums them per stage and in total, "
        "with the GPU-hours the same counts cost at SD v1.5 scale (measured images/s of bench/gpu.py on "
        "a lent GPU, params cost.gpu_result) and at SDXL scale (the SD v1.5 rate divided by the ratio of "
        "their U-Nets' MACs per image at native resolution, params cost.sdxl_macs_ratio: an estimate).")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="the model (an entry of params `models:`): --costs data/cost/NAME, --bank data/bank/NAME, "
                   "--out metrics/NAME/cost.json unless given")
    p.add_argument("--costs", type=Path, default=None, metavar="DIR",
                   help="directory of <stage>.json spend files (default: data/cost/<--model>)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON to write (default: metrics/<model>/cost.json, <model> the --costs dir's name)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--bank", type=Path, default=None,
                   help="the run's bank dir: its layer count rescales the per-layer stages to SD v1.5 / SDXL")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sampling.cost import CostParams, summarize_costs
    from core.jsonio import check_output_path, write_json

    from core.errors import QsensError

    if not args.params.is_file():
        raise QsensError(f"params file {args.params} not found")
    params = CostParams.from_dict(read_params_section(args.params, "cost"))
    if args.costs is None:
        if args.model is None:
            raise QsensError("give --model NAME (its data/cost/NAME) or --costs DIR")
        lay = Layout(Path("data"), args.model)
        args.costs = lay.cost
        if args.bank is None and (lay.bank / "bank.json").is_file():
            args.bank = lay.bank
    out = check_output_path(args.out or Path("metrics") / args.costs.name / "cost.json")
    layers = None
    if args.bank is not None:
        from quant.bank import Bank

        layers = len(Bank.load(args.bank).layer_names)
    result = summarize_costs(args.costs, params, layers)
    write_json(out, result, sort_keys=False)
    print(f"{'stage':18s} {'images':>10s} {'fwd samples':>12s} {'SD1.5 GPU-h':>11s} {'SDXL GPU-h':>10s}")
    for name, row in result["stages"].items():
        print(f"{name:18s} {row['images']:10d} {row['forward_samples']:12d} {row['gpu_hours']['sd15']:11.2f} "
              f"{row['gpu_hours']['sdxl']:10.2f}")
    t = result["total"]
    print(f"{'total':18s} {t['images']:10d} {t['forward_samples']:12d} {t['gpu_hours']['sd15']:11.2f} "
          f"{t['gpu_hours']['sdxl']:10.2f}  → {out}")
    return 0
