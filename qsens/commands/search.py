"""`qsens search`: a per-layer config for a bit budget (or a Pareto family over a budget range)."""
from __future__ import annotations
from quant.jsonio import write_json

import argparse
from pathlib import Path

from qsens.argtypes import non_negative_float, non_negative_int, positive_float
from qsens.context import add_model_args, context

NAME = "search"


def add_common(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--bank", type=Path, default=None, help="bank dir (default: DATA/bank/NAME)")
    p.add_argument("--cache", type=Path, default=None, help="quant_cache parquet (default: DATA/quant_cache/NAME.parquet)")
    p.add_argument("--predictor", type=Path, default=None, help="predictor dir (default: DATA/predictor/NAME)")
    p.add_argument("--analysis", type=Path, default=None, help="measured sensitivity dir (default: DATA/analysis/NAME)")
    p.add_argument("--tolerance", type=non_negative_float, default=None, help="IP window below the budget (default: search.tolerance)")
    p.add_argument("--time-limit", type=positive_float, default=None, help="seconds per IP solve (default: search.time_limit_s)")
    p.add_argument("--no-select", action="store_true",
                   help="never generate images while searching (predictor keeps its best prediction, "
                   "mixdq the K closest to 1, uniform the least error)")
    p.add_argument("--threads", type=non_negative_int, default=None, help="torch CPU threads (default: cores, at most 8)")
    p.add_argument("--quiet", action="store_true")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="find a mixed-precision config for a bit budget",
        description="Solve for a per-layer config whose average bits (overhead included) are within "
        "[BUDGET - tolerance, BUDGET], maximising the strategy's scores with an integer program. "
        "Strategies: predictor (trained GNN ensemble), layerwise (measured, seed 000), mixdq "
        "(measured SQNR/SSIM, seed 001), error (size-weighted weight error), uniform, random-best.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--budget", help="average bits per weight, e.g. 3.5")
    g.add_argument("--budgets", help="a Pareto family: A:B:STEP (e.g. 3.0:4.0:0.25), 3.25,3.5, or "
                   "`params` (search.budgets)")
    p.add_argument("--strategy", default="predictor",
                   help="predictor | layerwise | mixdq | error | uniform | random-best (default: predictor)")
    p.add_argument("--out", type=Path, default=None,
                   help="config JSON (--budget) or directory (--budgets); default DATA/search/MODEL/...")
    add_common(p)
    p.set_defaults(func=run)


def make_context(args, sp=None):
    """(SearchContext, qsens Context) from the command-line arguments."""
    from dataclasses import replace

    from quant.bank import Bank
    from search.params import SearchParams
    from search.strategies import SearchContext

    cli = context(args)
    lay = cli.layout
    sp = sp or SearchParams.from_yaml(args.params)
    if args.tolerance is not None:
        sp = replace(sp, tolerance=args.tolerance)
    if args.time_limit is not None:
        sp = replace(sp, time_limit_s=args.time_limit)
    bank_dir = args.bank or lay.bank
    bank = Bank.load(bank_dir)

    def selector():
        from denoisers.base import configure_torch
        from search.realscore import RealScorer

        configure_torch(args.threads)
        return RealScorer.load(cli, bank, steps=sp.steps)

    ctx = SearchContext(
        bank=bank, params=sp, cache_path=args.cache or lay.cache,
        predictor_dir=args.predictor or lay.predictor, analysis_dir=args.analysis or lay.analysis,
        selector_factory=None if args.no_select else selector, log=(lambda m: None) if args.quiet else print, bank_dir=bank_dir)
    return ctx, cli


def parse_budget_list(text: str, ctx, many: bool) -> list[float]:
    """Budgets from the command line; a malformed one names the bank's feasible range."""
    from search.ip import BudgetError, bits_matrix, check_budget, feasible_range, format_range, parse_budget
    from search.pareto import parse_budgets

    bits, n = bits_matrix(ctx.bank, ctx.bank.layer_names, ctx.bank.options)
    lo, hi = feasible_range(bits, n)
    try:
        budgets = parse_budgets(text) if many else [parse_budget(text)]
    except BudgetError as exc:
        # rounded inward: both printed ends are accepted as budgets
        raise BudgetError(f"{exc}; feasible range for this bank: {format_range(lo, hi)} avg bits") from None
    for b in budgets:
        check_budget(b, bits, n)
    return budgets


def run(args: argparse.Namespace) -> int:
    from search.pareto import budget_tag
    from search.strategies import STRATEGY_FUNCS, run_strategy
    from quant.errors import QsensError

    if args.strategy not in STRATEGY_FUNCS:
        raise QsensError(f"unknown strategy {args.strategy!r}; known: {', '.join(STRATEGY_FUNCS)}")
    ctx, cli = make_context(args)
    many = args.budgets is not None
    if many and args.budgets.strip() == "params":
        args.budgets = ",".join(str(b) for b in ctx.params.budgets)
    budgets = parse_budget_list(args.budgets if many else args.budget, ctx, many)
    results = []
    for budget in budgets:
        res = run_strategy(ctx, args.strategy, budget)
        if many:
            out_dir = args.out or cli.layout.search / "family" / args.strategy
            path = Path(out_dir) / f"{args.strategy}-{budget_tag(budget)}.json"
        else:
            path = args.out or cli.layout.search / f"{args.strategy}-{budget_tag(budget)}.json"
        res.config.save(path)
        report = res.to_report() | {"config": str(path)}
        report_path = Path(path).with_suffix(".report.json")
        write_json(report_path, report, default=str)
        results.append(report)
        if not args.quiet:
            status = report.get("ip_status", "-")
            print(f"{args.strategy} @ {budget:g}: {res.config.avg_bits:.4f} avg bits, "
                  f"IP {status}, {res.seconds:.2f} s → {path}")
            extra = {k: report[k] for k in ("chosen_by", "K", "option", "cache_fid", "stable") if k in report}
            if extra:
                print("  " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    if many:
        out_dir = Path(args.out or cli.layout.search / "family" / args.strategy)
        write_json(out_dir / "family.json", results, default=str)
        if not args.quiet:
            print(f"{len(results)} configs in {out_dir} (family.json lists them)")
    return 0
