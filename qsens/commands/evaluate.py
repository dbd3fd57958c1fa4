"""`qsens evaluate`: every strategy × every budget, searched and scored for real on fresh seeds."""
from __future__ import annotations

from qsens.context import add_cost_arg, with_cost

import argparse
import json
import sys
from pathlib import Path
from qsens.argtypes import images_count

NAME = "evaluate"


def register(subparsers) -> None:
    from qsens.search_args import add_common

    p = subparsers.add_parser(
        NAME, help="score every strategy's config at every budget on fresh seeds (resumable)",
        description="For each strategy and budget (params search.strategies / search.budgets), search a "
        "config (budgets in increasing order, each from the one below) and score it for real on every "
        "evaluation seed set (evaluate.image_seeds, refused if the cache, selection, probe, calibration or "
        "analysis used one). Writes metrics/NAME/search.json row by row (mean FID, standard error, the paired "
        "difference of the predictor to the best other strategy; a re-run reuses finished scores), "
        "metrics/NAME/search_pareto.csv, a Pareto plot with error bars and sample grids. W/A rows (params "
        "evaluate.act_*): the configs of act_strategies scored again at A8 and A6 (dynamic activation "
        "quantization, every layer), and act_mixed_strategies' with per-layer activation bits from an "
        "integer program at an average of act_mixed_bits (MAC-weighted), in rows with `act` set.")
    p.add_argument("--strategies", default=None,
                   help="comma list of predictor, fisher, layerwise, mixdq, error, uniform, random-best "
                   "(default: search.strategies)")
    p.add_argument("--budgets", default=None, help="A:B:STEP or comma list (default: search.budgets)")
    p.add_argument("--images", type=images_count, default=None, help="images per config (default: evaluate.images)")
    p.add_argument("--out", type=Path, default=None,
                   help="configs, images, grids and pareto.png (default: DATA/search/NAME, the pipeline's evaluate "
                   "stage output: give another dir for a run of your own)")
    p.add_argument("--metrics", type=Path, default=None,
                   help="rows JSON, rewritten row by row (default: metrics/NAME/search.json, the pipeline's)")
    p.add_argument("--pareto-csv", type=Path, default=None,
                   help="strategy, budget, avg_bits, fid, fid_se for DVC plots (default: metrics/NAME/search_pareto.csv)")
    p.add_argument("--no-act", action="store_true", help="weight-only rows (skip the W/A rows of evaluate.act_*)")
    p.add_argument("--given", action="append", default=[], metavar="STRATEGY=DIR",
                   help="score the family a `qsens search --budgets` wrote to DIR (family.json) for STRATEGY "
                   "instead of searching it again (the pipeline: predictor=DATA/search/NAME/family/predictor)")
    add_common(p)
    add_cost_arg(p)
    p.set_defaults(func=lambda args: with_cost(run, args, "evaluate"))


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from analysis.params import AnalysisParams
    from denoisers.base import configure_torch
    from qsens.search_args import make_context, parse_budget_list
    from core.errors import QsensError
    from search.activation import evaluate_params
    from predictor.probe import ProbeParams
    from core.params import load_section
    from core.provenance import content_digest
    from search.evaluate import run_evaluation
    from search.strategies import NAMES as STRATEGIES, REGISTRY

    configure_torch(args.threads)
    ep, act = evaluate_params(args.params)
    if args.images is not None:
        ep = replace(ep, images=args.images)
    if ep.images < 2:
        raise QsensError(f"evaluate.images must be >= 2, got {ep.images}")
    ctx, cli = make_context(args)
    args.metrics = args.metrics or cli.layout.metrics / "search.json"
    args.pareto_csv = args.pareto_csv or cli.layout.metrics / "search_pareto.csv"
    strategies = [s.strip() for s in args.strategies.split(",")] if args.strategies else list(ctx.params.strategies)
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise QsensError(f"unknown strategies {bad}; known: {', '.join(STRATEGIES)}")
    budgets = (parse_budget_list(args.budgets, ctx, True) if args.budgets
               else [float(b) for b in ctx.params.budgets])
    given = {k: load_family(v, ctx, k, data_root=cli.layout.root) for k, v in (_pair(g) for g in args.given)}
    if "predictor" in strategies and "predictor" not in given:
        from qsens.search_args import with_active_predictor

        ctx = with_active_predictor(args, ctx, cli)
    for k in given:
        if k not in strategies:
            raise QsensError(f"--given {k}=...: {k} is not among the evaluated strategies ({', '.join(strategies)})")
    named = given_cache(given)
    if named and not Path(named).is_file():  # a family that names a cache must have it
        raise QsensError(f"the given family names the quant_cache {named}, which does not exist: "
                         "cannot check the evaluation seeds against the labels' seeds")
    cache_for_seeds = Path(named or ctx.cache_path) if (named or ctx.cache_path) else None
    used: dict[str, list[int]] = {}
    if cache_for_seeds and cache_for_seeds.exists():
        from sampling.cache import read_cache

        used[f"the quant_cache ({cache_for_seeds})"] = sorted(set(read_cache(cache_for_seeds)["image_seed"].dropna().astype(int)))
    else:  # a warning, not progress: printed under --quiet too
        print(f"warning: no quant_cache at {ctx.cache_path}: cannot check the evaluation seeds against it",
              file=sys.stderr)
    ap = AnalysisParams.from_yaml(args.params)
    used["the measured-sensitivity analysis"] = [ap.image_seed, ap.calib_seed, ap.ssim_seed]
    used["the predictor's probe (probe.seed)"] = [load_section(ProbeParams, args.params, "probe").seed]

    real = cli.evaluator(ctx.bank, steps=ep.steps)
    ctx._selector = None if args.no_select else real.with_steps(ctx.params.steps)
    ctx._denoiser = real.denoiser

    def digest(strategy: str) -> str:
        if strategy == "fp16":
            return content_digest([Path(real.denoiser.model_dir) / "qsens_digits.json"]
                                if getattr(real.denoiser, "model_dir", None) else [])
        if strategy in given:
            fam_dir = Path(dict(_pair(g) for g in args.given)[strategy])
            return content_digest([fam_dir / "family.json"]
                                + [Path(r.report["config"]) for _, r in sorted(given[strategy].items())])
        return content_digest(REGISTRY.get(strategy).inputs(ctx))

    rows = run_evaluation(ctx, real, strategies=strategies, budgets=budgets, ep=ep,
                          out_dir=args.out or cli.layout.search, metrics_path=args.metrics,
                          pareto_csv=args.pareto_csv, used_seeds=used, input_digest=digest,
                          log=(lambda m: None) if args.quiet else print, act=None if args.no_act else act,
                          given=given)
    failed = [r for r in rows if r["status"] != "ok"]
    if not args.quiet:
        print(f"{len(rows) - len(failed)}/{len(rows)} rows scored → {args.metrics}")
    return 0


def _pair(text: str) -> tuple[str, str]:
    from core.errors import QsensError

    if "=" not in text:
        raise QsensError(f"--given expects STRATEGY=DIR, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def load_family(directory: str, ctx, strategy: str, data_root: str | Path | None = None) -> dict:
    """{budget: SearchResult} from a family dir (`family.json` + each config), validated against
    the bank; one error line names the file when something is missing or belongs elsewhere.

    Each config must lie inside the family dir or `data_root` (a family.json cannot point the
    evaluation at files elsewhere on disk) and hash to the `config_sha256` search recorded (a
    replaced config is refused, never scored under the family's id or reused on resume)."""
    from core.provenance import file_sha256

    from quant.config import QuantConfig
    from core.errors import QsensError
    from search.context import SearchResult

    path = Path(directory) / "family.json"
    if not path.is_file():
        raise QsensError(f"{path}: no family (run `qsens search --budgets params --strategy {strategy}`)")
    try:
        rows = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise QsensError(f"{path}: not a valid search family ({type(exc).__name__})") from None
    if not isinstance(rows, list):
        raise QsensError(f"{path}: expected a list of reports")
    out = {}
    for r in rows:
        if not isinstance(r, dict) or r.get("strategy") != strategy or "config" not in r or "budget" not in r:
            got = r.get("strategy") if isinstance(r, dict) else None
            raise QsensError(f"{path}: expected {strategy} reports with budget and config"
                             + (f", found a {got} family" if got and got != strategy else ""))
        cfg_path = Path(r["config"])
        if not cfg_path.is_file():
            raise QsensError(f"{path}: config {cfg_path} is missing")
        homes = [Path(directory).resolve()] + ([Path(data_root).resolve()] if data_root else [])
        if not any(cfg_path.resolve().is_relative_to(h) for h in homes):
            raise QsensError(f"{path}: config {cfg_path} lies outside the family dir and the data dir "
                             f"({', '.join(map(str, homes))}); copy it into the family dir")
        want = r.get("config_sha256")
        if not isinstance(want, str):
            raise QsensError(f"{path}: no config_sha256 for {cfg_path} (written by an older qsens); "
                             f"run `qsens search --budgets params --strategy {strategy}` again")
        if file_sha256(cfg_path) != want:
            raise QsensError(f"{path}: config {cfg_path} changed since the search wrote it (SHA-256 differs); "
                             f"run the search again or restore the file")
        cfg = ctx.bank.validate(QuantConfig.load(cfg_path), where=str(cfg_path))
        cfg.avg_bits = float(ctx.bank.summarize(cfg).avg_bits)
        out[float(r["budget"])] = SearchResult(strategy, float(r["budget"]), cfg, dict(r),
                                               seconds=float(r.get("seconds") or 0.0))
    return out


def given_cache(given: dict) -> str | None:
    """The union cache active learning wrote, when a given family's reports name one."""
    for fam in given.values():
        for res in fam.values():
            if res.report.get("cache"):
                return res.report["cache"]
    return None
