"""`qsens analyze`: measured sensitivity, one layer quantized at a time (layerwise, mixdq), the
AIMET-style QuantAnalyzer report (quant-analyzer), and seed 003's static activation calibration
with uniform vs normal time steps (act-calibration)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from qsens.argtypes import images_count, non_negative_int
from qsens.context import add_cost_arg, add_model_args, context, write_cost
from core.errors import QsensError

NAME = "analyze"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="measure per-layer sensitivity (layerwise FID/content; MixDQ SQNR/SSIM)",
        description="Quantize one layer at a time with every option and measure: `layerwise` — FID and "
        "content score of generated images (the per-layer sensitivity study's min-max 0.6·ΔFID + 0.4·Δcontent, ranked JSON "
        "report with buckets); `mixdq` — SQNR of the denoiser output on calibration inputs from the FP "
        "trajectory (quality group) and SSIM of images vs FP (content group); `quant-analyzer` — AIMET's "
        "QuantAnalyzer: FP vs weight-only vs activation-only vs both, per-layer enable-one / disable-one "
        "sweeps for weight and activation quantizers, min/max ranges, histograms, per-layer MSE and "
        "activation SQNR, as JSON + offline HTML (params `quant_analyzer:`); `act-calibration` — time-step calibration (PTQ4DM-style): "
        "static activation ranges calibrated on FP-trajectory time steps drawn uniform vs normal, FID + "
        "content at each activation bit-width on several fresh seed sets with the FP seed noise beside "
        "(params `act_calibration:`, JSON to --out, default metrics/NAME/act_calibration.json). `all` is "
        "layerwise + mixdq. `metrics` — which cheap label ranks configs like FID on the evaluation protocol: "
        "FID and every paired score (vs the FP images of the same seeds) at several image counts, and the "
        "image-free output error, against the evaluate stage's 5 × 500-image FID (params `metric_validity:`, "
        "JSON to --out, default metrics/NAME/metric_validity.json, plot --plot). "
        "Resumable (layerwise, mixdq, quant-analyzer, metrics).")
    p.add_argument("what", choices=["layerwise", "mixdq", "all", "quant-analyzer", "act-calibration", "metrics"],
                   nargs="?", default="all")
    add_model_args(p)
    p.add_argument("--bank", type=Path, default=None, help="bank dir (default: DATA/bank/NAME)")
    p.add_argument("--out", type=Path, default=None,
                   help="output dir (default: DATA/analysis/NAME; quant-analyzer: DATA/analysis/NAME/quant_analyzer); "
                   "act-calibration: the JSON file (default: metrics/NAME/act_calibration.json)")
    p.add_argument("--noise", type=Path, default=None,
                   help="act-calibration: the noise stage's JSON, whose FP seed σ is quoted beside this run's "
                   "(default: metrics/NAME/noise.json; skipped when absent)")
    q = p.add_argument_group("quant-analyzer (override params quant_analyzer.*)")
    q.add_argument("--weight-option", default=None, help="weight quantizer option, e.g. uaq4")
    q.add_argument("--act-bits", type=int, choices=range(2, 9), metavar="{2..8}", default=None, help="activation bits, 2-8")
    q.add_argument("--act-mode", default=None, choices=["static", "dynamic"])
    q.add_argument("--images", type=images_count, default=None,
                   help="images per scored setting (also act-calibration: act_calibration.images)")
    q.add_argument("--max-layers", type=non_negative_int, default=None, help="layers swept (evenly spaced); 0 = all")
    q.add_argument("--layers", default=None, metavar="REGEX", help="sweep only layers matching REGEX")
    q.add_argument("--sqnr-max-layers", type=non_negative_int, default=None,
                   help="layers in the activation-SQNR table (evenly spaced); 0 = all (the costly part)")
    q.add_argument("--sqnr-bits", default=None, metavar="B,B",
                   help="activation bit-widths of the SQNR table, e.g. 8,6")
    m = p.add_argument_group("metrics")
    m.add_argument("--evaluated", type=Path, default=None,
                   help="the evaluate stage's rows: their configs and 5-seed FIDs join the table (default: "
                   "metrics/NAME/search.json)")
    m.add_argument("--configs", type=Path, default=None,
                   help="the evaluated configs' directory (default: DATA/search/NAME/configs)")
    m.add_argument("--cache", type=Path, default=None, help="quant_cache (default: DATA/quant_cache/NAME.parquet)")
    m.add_argument("--plot", type=Path, default=None, help="metrics: the plot (default: next to --out, .png)")
    p.add_argument("--threads", type=non_negative_int, default=None)
    p.add_argument("--quiet", action="store_true")
    add_cost_arg(p)
    p.set_defaults(func=run_and_cost)


def run_and_cost(args: argparse.Namespace) -> int:
    """`run`, then the images and forward passes it spent to --cost."""
    rc = run(args)
    write_cost(args.cost, f"analyze {args.what}")
    return rc


def run(args: argparse.Namespace) -> int:
    from analysis.layerwise import measure_layerwise
    from analysis.mixdq import measure_mixdq
    from analysis.params import AnalysisParams
    from denoisers.base import configure_torch
    from sampling.noise import load_bank_for

    configure_torch(args.threads)
    commands = {"quant-analyzer": run_quant_analyzer_command, "act-calibration": run_act_calibration_command,
                "metrics": run_metrics_command}
    if args.what in commands:
        return commands[args.what](args)
    params = AnalysisParams.from_yaml(args.params)
    ctx = context(args)
    den = ctx.load_denoiser()
    bank = load_bank_for(den, args.bank or ctx.layout.bank, ctx.spec.name, build_missing=False)
    out = args.out or ctx.layout.analysis
    if args.what in ("layerwise", "all"):
        from sampling.scorers import make_scorer

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


def run_quant_analyzer_command(args: argparse.Namespace) -> int:
    """`qsens analyze quant-analyzer`: the QuantAnalyzer report; exit code."""
    from dataclasses import replace

    from analysis.quant_analyzer import QuantAnalyzerParams, run_quant_analyzer
    from quant.bank import META_FILE
    from sampling.noise import load_bank_for
    from sampling.scorers import make_scorer

    params = QuantAnalyzerParams.from_yaml(args.params)
    overrides = {"weight_option": args.weight_option, "act_bits": args.act_bits, "act_mode": args.act_mode,
                 "images": args.images, "max_layers": args.max_layers, "layers": args.layers,
                 "sqnr_max_layers": args.sqnr_max_layers}
    if args.sqnr_bits is not None:
        try:
            bits = [int(b) for b in args.sqnr_bits.split(",") if b.strip()]
        except ValueError:
            raise QsensError(f"--sqnr-bits {args.sqnr_bits!r}: expected integers 2-8, e.g. 8,6") from None
        if not bits or any(not 2 <= b <= 8 for b in bits):
            raise QsensError(f"--sqnr-bits {args.sqnr_bits!r}: expected integers 2-8, e.g. 8,6")
        overrides["sqnr_bits"] = tuple(bits)
    params = replace(params, **{k: v for k, v in overrides.items() if v is not None})
    ctx = context(args)
    den = ctx.load_denoiser()
    bank_dir = args.bank or ctx.layout.bank
    # no bank: the weight option is quantized in memory (the analyzer needs only that one option)
    bank = load_bank_for(den, bank_dir, ctx.spec.name, build_missing=False) if (bank_dir / META_FILE).exists() else None
    out = args.out or ctx.layout.analysis / "quant_analyzer"
    t0 = time.perf_counter()
    res = run_quant_analyzer(den, bank, make_scorer(den, device=ctx.spec.device), params, out,
                             progress=not args.quiet)
    fid = {k: res[k]["fid"] for k in ("FP", "weights_only", "activations_only", "weights_and_activations")}
    print(f"quant-analyzer: {len(res['swept'])} layers swept in {time.perf_counter() - t0:.1f} s → {out}/index.html; "
          "FID " + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} failed" for k, v in fid.items()))
    return 0


def run_act_calibration_command(args: argparse.Namespace) -> int:
    """`qsens analyze act-calibration`: activation ranges and calibration; exit code."""
    from dataclasses import replace

    from analysis.act_calibration import ActCalibrationParams, measure_act_calibration
    from core.jsonio import check_output_path
    from sampling.scorers import make_scorer

    params = ActCalibrationParams.from_yaml(args.params)
    if args.images is not None:
        params = replace(params, images=args.images)
    ctx = context(args)
    out = check_output_path(args.out or ctx.layout.metrics / "act_calibration.json")
    args.noise = args.noise or ctx.layout.metrics / "noise.json"
    den = ctx.load_denoiser()
    t0 = time.perf_counter()
    res = measure_act_calibration(den, make_scorer(den, device=ctx.spec.device), params, out,
                                  noise_path=args.noise, progress=not args.quiet)

    def fmt(m, se):
        return "failed" if m is None else f"{m:.3f}" + ("" if se is None else f" ± {se:.3f}")

    fp = res["fp"]
    print(f"act-calibration: {len(res['settings']['image_seeds'])} seed sets × {params.images} images in "
          f"{time.perf_counter() - t0:.1f} s → {out}; FP FID {fmt(fp['fid_mean'], fp['fid_sem'])} "
          f"(seed σ {fp['fid_seed_std'] if fp['fid_seed_std'] is None else round(fp['fid_seed_std'], 3)})")
    for a, c in res["comparison"].items():
        u, n = res["results"]["uniform"][a], res["results"]["normal"][a]
        print(f"  {a}: uniform {fmt(u['fid_mean'], u['fid_sem'])}, normal {fmt(n['fid_mean'], n['fid_sem'])}, "
              f"paired uniform − normal {fmt(c['fid_diff_mean'], c['fid_diff_sem'])}: {c['verdict']}")
    return 0


def run_metrics_command(args: argparse.Namespace) -> int:
    """`qsens analyze metrics`: which cheap label ranks configs like FID (label validity); exit code."""
    import json

    from analysis.metric_validity import MetricValidityParams, run_metric_validity
    from quant.config import QuantConfig
    from core.jsonio import check_output_path
    from sampling.cache import read_cache
    from sampling.noise import ScoreParams
    from search.activation import evaluate_params
    from search.params import SearchParams

    params = MetricValidityParams.from_yaml(args.params)
    ep = evaluate_params(args.params)[0]  # the act_* keys belong to the W/A rows
    budgets = [float(b) for b in SearchParams.from_yaml(args.params).budgets]
    label_seed = ScoreParams.from_yaml(args.params).seed
    ctx = context(args)
    out = check_output_path(args.out or ctx.layout.metrics / "metric_validity.json")
    args.evaluated = args.evaluated or ctx.layout.metrics / "search.json"
    cache = read_cache(args.cache or ctx.layout.cache, ok_only=True)
    cache = cache[cache["act_bits"].isna()]
    configs_dir = args.configs or ctx.layout.search / "configs"
    family: dict[str, QuantConfig] = {}
    truth: dict[str, list[float]] = {}
    if args.evaluated.is_file():
        by_id = {}
        for f in sorted(configs_dir.glob("*.json")) if configs_dir.is_dir() else []:
            if f.name.endswith(".report.json") or f.name == "act_sensitivity.json":
                continue
            try:
                cfg = QuantConfig.load(f)
            except Exception:  # noqa: BLE001 -- not a config file (reports, activation tables)
                continue
            if cfg.act_bits is None and not cfg.act_options:
                by_id[cfg.config_id] = cfg
        rows = [r for r in json.loads(args.evaluated.read_text()) if r.get("act") is None and r.get("config_id")]
        left = []  # "strategy@budget: why", for the rows whose config does not join
        for r in rows:
            cid = r.get("config_id")
            if r.get("status") != "ok":
                left.append(f"{r.get('strategy')}@{r.get('budget')}: {r.get('status')}")
            elif cid not in by_id:
                left.append(f"{r.get('strategy')}@{r.get('budget')}: no config file in {configs_dir}")
            elif ([int(s) for s in r.get("image_seeds") or []] != [int(s) for s in ep.image_seeds]
                  or int(r.get("images") or 0) != ep.images):
                left.append(f"{r.get('strategy')}@{r.get('budget')}: scored with other images/seeds than evaluate.*")
            else:
                family[cid] = by_id[cid]
                truth[cid] = [float(f) for f in r["fids"]]
        if left:  # several rows may share a config (a family that keeps its config at a higher budget)
            more = f"; and {len(left) - 6} more" if len(left) > 6 else ""
            print(f"warning: {len(family)} of {len({r['config_id'] for r in rows})} distinct evaluated configs in "
                  f"{args.evaluated} join the table; left out: {'; '.join(left[:6])}{more}")
    else:
        print(f"warning: no {args.evaluated}: the table has only cache configs")
    ev = ctx.evaluator(args.bank or ctx.layout.bank, steps=ep.steps)
    res = run_metric_validity(ev, cache, family, truth, params, budgets, label_seed, ep.images, ep.image_seeds,
                              out, args.plot or out.with_suffix(".png"), ctx.layout.metric_validity,
                              progress=not args.quiet)
    gt = res["ground_truth"]
    print(f"metric validity: {gt['configs']} configs ({gt['origins']}), truth = FID at {gt['images']} images × "
          f"{len(gt['image_seeds'])} seed sets, retest (all) "
          f"{next(r['spearman'] for r in gt['retest'] if r['scope'] == 'all'):.3f} → {out}")
    c = res["cheapest"]
    if c:
        print(f"  cheapest with Spearman >= {res['goal_spearman_all']}: {c['metric']} at {c['n_images']} images "
              f"({c['spearman']:.3f} [{c['spearman_lo']:.3f}, {c['spearman_hi']:.3f}]); in the budget windows: "
              + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in c["windows"].items()))
    else:
        print(f"  no metric reaches Spearman {res['goal_spearman_all']} over all configs")
    return 0
