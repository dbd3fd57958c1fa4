"""`qsens evaluate`: every strategy × every budget, searched and scored for real on fresh seeds."""
from __future__ import annotations

import argparse
from pathlib import Path
from qsens.argtypes import images_count

NAME = "evaluate"


def register(subparsers) -> None:
    from qsens.commands.search import add_common

    p = subparsers.add_parser(
        NAME, help="score every strategy's config at every budget on fresh seeds (resumable)",
        description="For each strategy and budget (params search.strategies / search.budgets), search a "
        "config and score it for real on the evaluation seed set (evaluate.image_seed, refused if the "
        "cache or the selection used it). Writes metrics/search.json row by row (a re-run skips "
        "finished rows), metrics/search_pareto.csv, a Pareto plot and sample grids. W/A rows (params "
        "evaluate.act_*): the configs of act_strategies scored again at A8 and A6 (dynamic activation "
        "quantization, every layer), and act_mixed_strategies' with per-layer activation bits from an "
        "integer program at an average of act_mixed_bits (MAC-weighted), in rows with `act` set.")
    p.add_argument("--strategies", default=None, help="comma list (default: search.strategies)")
    p.add_argument("--budgets", default=None, help="A:B:STEP or comma list (default: search.budgets)")
    p.add_argument("--images", type=images_count, default=None, help="images per config (default: evaluate.images)")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: DATA/search/NAME)")
    p.add_argument("--metrics", type=Path, default=Path("metrics/search.json"))
    p.add_argument("--pareto-csv", type=Path, default=Path("metrics/search_pareto.csv"))
    p.add_argument("--no-act", action="store_true", help="weight-only rows (skip the W/A rows of evaluate.act_*)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from analysis.params import AnalysisParams
    from denoisers.base import configure_torch
    from qsens.commands.search import make_context, parse_budget_list
    from quant.errors import QsensError
    from search.activation import evaluate_params
    from search.evaluate import digest_paths, run_evaluation, strategy_inputs
    from search.params import STRATEGIES
    from search.realscore import RealScorer

    configure_torch(args.threads)
    ep, act = evaluate_params(args.params)
    if args.images is not None:
        ep = replace(ep, images=args.images)
    if ep.images < 2:
        raise QsensError(f"evaluate.images must be >= 2, got {ep.images}")
    ctx, cli = make_context(args)
    strategies = [s.strip() for s in args.strategies.split(",")] if args.strategies else list(ctx.params.strategies)
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise QsensError(f"unknown strategies {bad}; known: {', '.join(STRATEGIES)}")
    budgets = (parse_budget_list(args.budgets, ctx, True) if args.budgets
               else [float(b) for b in ctx.params.budgets])
    used: dict[str, list[int]] = {}
    if ctx.cache_path and Path(ctx.cache_path).exists():
        from sampling.cache import read_cache

        used[f"the quant_cache ({ctx.cache_path})"] = sorted(set(read_cache(ctx.cache_path)["image_seed"].dropna().astype(int)))
    elif not args.quiet:
        print(f"warning: no quant_cache at {ctx.cache_path}: cannot check the evaluation seeds against it")
    ap = AnalysisParams.from_yaml(args.params)
    used["the measured-sensitivity analysis"] = [ap.image_seed, ap.calib_seed, ap.ssim_seed]
    real = RealScorer.load(cli, ctx.bank, steps=ep.steps)
    ctx._selector = None if args.no_select else RealScorer(real.denoiser, ctx.bank, real.scorer, ctx.params.steps)

    def digest(strategy: str) -> str:
        if strategy == "fp16":
            return digest_paths([Path(real.denoiser.model_dir) / "qsens_digits.json"]
                                if getattr(real.denoiser, "model_dir", None) else [])
        return digest_paths(strategy_inputs(strategy, ctx.bank_dir, ctx.cache_path, ctx.predictor_dir,
                                            ctx.analysis_dir))

    rows = run_evaluation(ctx, real, strategies=strategies, budgets=budgets, ep=ep,
                          out_dir=args.out or cli.layout.search, metrics_path=args.metrics,
                          pareto_csv=args.pareto_csv, used_seeds=used, input_digest=digest,
                          log=(lambda m: None) if args.quiet else print, act=None if args.no_act else act)
    failed = [r for r in rows if r["status"] != "ok"]
    if not args.quiet:
        print(f"{len(rows) - len(failed)}/{len(rows)} rows scored → {args.metrics}")
    return 0
