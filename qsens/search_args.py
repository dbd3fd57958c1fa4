"""What the commands that search share (`qsens search`, `qsens evaluate`, `qsens transfer`): their
common arguments and the SearchContext built from them. CLI-side: commands import this module,
never each other."""
from __future__ import annotations

import argparse
from pathlib import Path

from qsens.argtypes import non_negative_float, non_negative_int, positive_float
from qsens.context import add_model_args, context


def add_common(p: argparse.ArgumentParser) -> None:
    """Add the arguments every search-like command shares: model, bank, cache, predictor, analysis
    dirs, ..."""
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


def quiet_known_warnings() -> None:
    """torch_geometric's import calls the deprecated `torch.jit.script` (a FutureWarning on every
    predictor load): not the user's to act on, and it would break the one-line error promise."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)


def make_context(args, sp=None):
    """(SearchContext, qsens Context) from the command-line arguments."""
    from dataclasses import replace

    quiet_known_warnings()
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

        configure_torch(args.threads)
        return cli.evaluator(bank, steps=sp.steps)

    def denoiser():
        from denoisers.base import configure_torch

        configure_torch(args.threads)
        den = cli.load_denoiser()
        bank.check_model(den.model)
        return den

    ctx = SearchContext(
        bank=bank, params=sp, cache_path=args.cache or lay.cache,
        predictor_dir=args.predictor or lay.predictor, analysis_dir=args.analysis or lay.analysis,
        selector_factory=None if args.no_select else selector, denoiser_factory=denoiser,
        log=(lambda m: None) if args.quiet else print, bank_dir=bank_dir)
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


def with_active_predictor(args, ctx, cli):
    """The context on the pipeline's active-learning predictor and union cache when they were made
    from this cache and bank and no --predictor / --cache was given; else unchanged."""
    from dataclasses import replace

    from search.active import current_run

    if getattr(args, "predictor", None) is not None or getattr(args, "cache", None) is not None:
        return ctx
    out = cli.layout.active
    state = current_run(out, Path(ctx.cache_path), Path(ctx.bank_dir))
    if state is None:
        return ctx
    if not args.quiet:
        print(f"predictor: {out / 'predictor'} (after {len(state.get('rounds', [])) - 1} active-learning "
              f"round(s)) on {out / 'quant_cache.parquet'}; --predictor/--cache to choose another")
    return replace(ctx, predictor_dir=out / "predictor", cache_path=out / "quant_cache.parquet",
                   _ensemble=None, _memo={})
