"""`qsens search`: a per-layer config for a bit budget (or a Pareto family over a budget range)."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.jsonio import write_json

from qsens.argtypes import non_negative_int
from qsens.context import add_cost_arg, with_cost
from qsens.search_args import add_common, make_context, parse_budget_list, with_active_predictor

NAME = "search"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="find a mixed-precision config for a bit budget",
        description="Solve for a per-layer config whose average bits (overhead included) are within "
        "[BUDGET - tolerance, BUDGET], maximising the strategy's scores with an integer program. "
        "Strategies: predictor (trained GNN ensemble), fisher (gradient sensitivity, ModelOpt "
        "AutoQuantize-style), layerwise (measured one layer at a time), mixdq (measured SQNR/SSIM, MixDQ), error "
        "(size-weighted weight error), uniform, random-best. A family (--budgets) is solved in increasing "
        "order, each budget starting from the one below. --active-rounds R (predictor) first runs R rounds "
        "of active learning: score the configs the predictor ranks best near each budget (and where its "
        "members disagree most), add them to a copy of the quant_cache, retrain.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--budget", help="average bits per weight, e.g. 3.5")
    g.add_argument("--budgets", help="a Pareto family: A:B:STEP (e.g. 3.0:4.0:0.25), 3.25,3.5, or "
                   "`params` (search.budgets)")
    p.add_argument("--strategy", default="predictor",
                   help="predictor | fisher | layerwise | mixdq | error | uniform | random-best (default: predictor)")
    p.add_argument("--active-rounds", type=non_negative_int, default=0,
                   help="predictor: R > 0 runs active learning before the search (the pipeline's search stage "
                   "passes active.rounds): rounds 0..R each score the current predictor's picks near every "
                   "budget on the cache's seed set, rounds 1..R first retrain on what was measured; resumes "
                   "a finished run; writes DATA/active/NAME (union cache, predictor, learning curve). "
                   "Default 0: no new measurement; the predictor is DATA/active/NAME's when it was made "
                   "from the current cache and bank (said in one line), else DATA/predictor/NAME")
    p.add_argument("--active-metrics", type=Path, default=None,
                   help="also write the learning curve (one row per round) to this JSON (the pipeline: metrics/NAME/active.json)")
    p.add_argument("--out", type=Path, default=None,
                   help="config JSON (--budget) or directory (--budgets); default DATA/search/MODEL/...")
    add_common(p)
    add_cost_arg(p)
    p.set_defaults(func=lambda args: with_cost(run, args, "search"))


def run(args: argparse.Namespace) -> int:
    from search.pareto import budget_tag
    from search.strategies import family, strategy

    strategy(args.strategy)  # an unknown name is one line before any loading
    ctx, cli = make_context(args)
    many = args.budgets is not None
    if many and args.budgets.strip() == "params":
        args.budgets = ",".join(str(b) for b in ctx.params.budgets)
    budgets = parse_budget_list(args.budgets if many else args.budget, ctx, many)
    rounds = active_rounds(args)
    if rounds:
        ctx = run_active_stage(args, ctx, cli, budgets, rounds)
    elif args.strategy == "predictor":
        ctx = with_active_predictor(args, ctx, cli)
    out_dir = Path(args.out or cli.layout.search / "family" / args.strategy) if many else None
    results = []

    def save(res) -> None:
        if many:
            path = out_dir / f"{args.strategy}-{budget_tag(res.budget)}.json"
        else:
            path = args.out or cli.layout.search / f"{args.strategy}-{budget_tag(res.budget)}.json"
        report = res.save(path, ctx.cache_path, ctx.predictor_dir)
        write_json(Path(path).with_suffix(".report.json"), report, default=str)
        results.append(report)
        if not args.quiet:
            ip = f"IP {report['ip_status']}, " if report.get("ip_status") else ""
            print(f"{args.strategy} @ {res.budget:g}: {res.config.avg_bits:.4f} avg bits, "
                  f"{ip}{res.seconds:.2f} s → {path}")
            extra = {k: report[k] for k in ("chosen_by", "K", "option", "cache_fid", "stable") if k in report}
            chosen = next((c for c in report.get("candidates") or [] if c.get("config_id") == res.config.config_id), {})
            for k in ("predicted_fid", "selection_fid"):
                if isinstance(chosen.get(k), float):
                    extra[k] = round(chosen[k], 3)
            if extra:
                print("  " + ", ".join(f"{k}={v}" for k, v in extra.items()))

    family(ctx, args.strategy, budgets, on_result=save)
    if many:
        results.sort(key=lambda r: r["budget"])
        write_json(out_dir / "family.json", results, default=str)
        if not args.quiet:
            print(f"{len(results)} configs in {out_dir} (family.json lists them)")
    return 0


def active_rounds(args) -> int:
    """--active-rounds (predictor only)."""
    from core.errors import QsensError

    if args.active_rounds and args.strategy != "predictor":
        raise QsensError(f"--active-rounds is for the predictor strategy, not {args.strategy!r}")
    return args.active_rounds


def run_active_stage(args, ctx, cli, budgets, rounds):
    """Active learning (search/active.py) → a context on the union cache and retrained predictor."""
    from dataclasses import replace

    from predictor.train import load_train_params
    from core.errors import QsensError
    from sampling.noise import ScoreParams
    from search.active import ActiveParams, run_active
    from search.params import read_section

    if args.no_select:
        raise QsensError("--active-rounds scores configs for real: it cannot run with --no-select")
    lay = cli.layout
    ap = replace(read_section(ActiveParams, args.params, "active"), rounds=rounds)
    score = ScoreParams.from_yaml(args.params)
    out = lay.active  # union quant_cache, retrained predictor, learning curve
    curve = run_active(ctx, ctx.selector(), budgets, ap, random_cache=Path(ctx.cache_path), graph=lay.graph,
               bank_dir=Path(ctx.bank_dir), probe=lay.probe if lay.probe.exists() else None,
               train_params=load_train_params(args.params), image_seed=score.seed, images=score.images,
               out_dir=out, log=ctx.log, initial=ctx.predictor_dir)
    if args.active_metrics:
        write_json(args.active_metrics, curve, default=str)
    return replace(ctx, predictor_dir=out / "predictor", cache_path=out / "quant_cache.parquet",
                   _ensemble=None, _memo={})
