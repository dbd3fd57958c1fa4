"""`qsens transfer`: configs for a fine-tuned checkpoint from the base model's predictor and a
small, actively chosen set of new labels (search/transfer.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from qsens.search_args import add_common
from qsens.context import add_cost_arg, with_cost

NAME = "transfer"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="reuse a base model's predictor on a fine-tune: a few new labels, then search",
        description="For the model given (a fine-tune, merged LoRA or few-step variant of the base): "
        "check its graph and bank against the base predictor (a missing, added or reshaped layer is "
        "an error naming it), score transfer.random_configs random configs on it, warm-start the base "
        "members on them, run transfer.rounds rounds of active learning (predicted-best and most-"
        "disputed configs near each budget), and search every budget with the result. Writes "
        "OUT/transfer.json (configs, label images, spend) and OUT/family/ (for `qsens evaluate --given "
        "predictor=OUT/family`). --scratch: the same campaign without the base predictor.")
    p.add_argument("--base-predictor", type=Path, default=None,
                   help="the base model's predictor dir (e.g. data/predictor/digits); required unless --scratch")
    p.add_argument("--scratch", action="store_true", help="no base predictor: members trained from scratch")
    p.add_argument("--budgets", default="params", help="A:B:STEP, a list, or `params` (search.budgets)")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: DATA/transfer/NAME)")
    add_common(p)
    add_cost_arg(p)
    p.set_defaults(func=lambda args: with_cost(run, args, NAME))


def run(args: argparse.Namespace) -> int:
    from predictor.train import load_train_params
    from core.errors import QsensError
    from sampling.noise import ScoreParams
    from search.transfer import TransferParams, run_transfer

    from qsens.search_args import make_context, parse_budget_list

    if args.scratch == (args.base_predictor is not None):
        raise QsensError("give exactly one of --base-predictor DIR and --scratch")
    ctx, cli = make_context(args)
    if args.budgets.strip() == "params":
        args.budgets = ",".join(str(b) for b in ctx.params.budgets)
    budgets = parse_budget_list(args.budgets, ctx, True)
    lay = cli.layout
    score = ScoreParams.from_yaml(args.params)
    out = args.out or lay.transfer
    summary = run_transfer(ctx, ctx.selector(), budgets, TransferParams.from_yaml(args.params),
                           base_predictor=args.base_predictor, graph=lay.graph, bank_dir=Path(ctx.bank_dir),
                           train_params=load_train_params(args.params), image_seed=score.seed,
                           images=score.images, out_dir=out, log=ctx.log)
    if not args.quiet:
        print(f"{summary['labelled_configs']} configs labelled ({summary['label_images']} label images, "
              f"{summary['spend']['images']} images generated) -> {out / 'transfer.json'}")
        for b, c in summary["configs"].items():
            print(f"  {b}: {c['avg_bits']:.4f} avg bits, predicted FID {c['predicted_fid']:.3f} -> {c['config']}")
    return 0
