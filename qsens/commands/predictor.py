"""`qsens predictor train|inspect`: the GNN sensitivity predictor (see predictor/)."""
from __future__ import annotations

import argparse
import sys

from qsens.argtypes import images_count, non_negative_int, positive_int
from qsens.context import add_cost_arg, add_model_args, context, with_cost


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predictor", help="train / inspect the GNN that predicts a config's FID",
        description="Train a k-fold ensemble of graph neural networks that predict the FID of a "
        "quantization config from the model's DAG, with baselines on the same splits, and write "
        "per-layer / per-block sensitivity tables; or inspect a trained one.")
    sub = p.add_subparsers(dest="predictor_command", metavar="SUBCOMMAND")

    t = sub.add_parser("train", help="train the ensemble, score it and the baselines on held-out configs",
                       description="Reads the `train:` section of params.yaml. Paths default to "
                       "data/{quant_cache,graphs,bank,predictor}/<model>.")
    _common(t)
    t.add_argument("--cache", help="quant_cache parquet (default data/quant_cache/<model>.parquet)")
    t.add_argument("--graph", help="graph JSON (default data/graphs/<model>.json)")
    t.add_argument("--bank", help="bank directory (default data/bank/<model>)")
    t.add_argument("--probe", help="probe file (default data/probe/<model>.safetensors; read when "
                   "train.probe is true or a probe baseline is listed)")
    t.add_argument("--metrics", default=None, help="metrics JSON to write (default: metrics/<model>/predictor.json; "
                   "the DVC-plot CSVs go beside it)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train param, e.g. --set epochs=50 or --set train.label=fd_fp (repeatable)")
    t.add_argument("--no-inspect", action="store_true", help="skip the inspection report")
    t.add_argument("--threads", type=non_negative_int, default=None,
                   help="torch CPU threads (default: torch's own; results are deterministic per thread count)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)

    pr = sub.add_parser(
        "probe", help="measure each (layer, option)'s shift of the generated images' mean feature",
        description="Quantize one layer at a time with every option, generate the `probe.images` images "
        "of seed set `probe.seed`, and record how far the mean feature (the FID feature space) moves "
        "from the FP model's. The sum of a config's shifts linearises FID's mean term; the predictor "
        "uses it as its propagation readout (train.probe) and as a baseline.")
    _common(pr, generation=True)
    pr.add_argument("--bank", help="bank directory (default data/bank/<model>)")
    pr.add_argument("--images", type=images_count, help="images per pair (default: probe.images in params)")
    pr.add_argument("--seed", type=non_negative_int, help="image seed set (default: probe.seed in params)")
    pr.add_argument("--threads", type=non_negative_int, default=None, help="torch threads")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cost_arg(pr)
    pr.set_defaults(func=lambda args: with_cost(run_probe, args, "probe"))

    i = sub.add_parser("inspect", help="sensitivity report of a trained predictor (PNGs, markdown, JSON)")
    _common(i)
    i.add_argument("--graph", help="graph JSON for the coloured DAG (default data/graphs/<model>.json)")
    i.add_argument("--reference", metavar="CONFIG.json",
                   help="re-linearise the sensitivity around this config (default: highest bits)")
    i.add_argument("--top", type=positive_int, default=10, help="top-k layers/blocks per option")
    i.add_argument("--plots-dir", default=None, help="where the DVC-plot CSVs go (default: metrics/<model>)")
    i.set_defaults(func=run_inspect)

    d = sub.add_parser("diff", help="how the sensitivity changed between two checkpoints (JSON + plot)",
                       description="Per layer and per block, the change of the predicted one-layer ΔFID "
                       "between predictor A (e.g. the base model's) and predictor B (e.g. the fine-tune's, "
                       "from `qsens transfer`), with the members' spread as the error (z ≥ 2: more "
                       "sensitive); with --measured, the measured layerwise tables' change too.")
    d.add_argument("a", help="predictor dir A (sensitivity.parquet)")
    d.add_argument("b", help="predictor dir B")
    d.add_argument("--measured", nargs=2, metavar=("LAYERWISE_A", "LAYERWISE_B"), default=None,
                   help="measured one-layer tables (layerwise.parquet of `qsens analyze`) of A and B")
    d.add_argument("--out", default="metrics/sensitivity_diff.json", help="JSON report (default: %(default)s)")
    d.add_argument("--plot", default=None, help="PNG (default: the JSON path with .png)")
    d.set_defaults(func=run_diff)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _common(p: argparse.ArgumentParser, generation: bool = False) -> None:
    add_model_args(p, generation=generation)
    p.add_argument("--out", help="output (default: DATA/predictor/NAME; probe: DATA/probe/NAME.safetensors)")


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def run_train(args: argparse.Namespace) -> int:
    """`qsens predictor train`: train the ensemble and its baselines, save it, print the metrics;
    exit code."""
    from dataclasses import asdict
    from pathlib import Path

    from predictor.metrics import format_table
    from predictor.train import TrainParams, load_train_params, load_training_data, save_result, \
        train_ensemble, write_metrics
    from denoisers.base import configure_torch
    from core.errors import QsensError

    if args.threads:  # else torch's own default, as before
        configure_torch(args.threads)
    lay = context(args, loads_model=False).layout
    model = lay.name
    args.metrics = args.metrics or str(lay.metrics / "predictor.json")
    cache = Path(args.cache or lay.cache)
    graph = Path(args.graph or lay.graph)
    bank = Path(args.bank or lay.bank)
    out = Path(args.out or lay.predictor)
    params = load_train_params(args.params)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise QsensError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        overrides[k[len("train."):] if k.startswith("train.") else k] = _parse_value(v)
    if overrides:
        params = TrainParams.from_dict({**asdict(params), **overrides})
    for path, what in ((cache, "quant_cache"), (graph, "graph"), (bank, "bank")):
        if not path.exists():
            raise QsensError(f"{path}: no {what} for model {model!r}")
    probe = Path(args.probe or lay.probe)
    template, configs = load_training_data(cache, graph, bank, model, probe if params.needs_probe else None,
                                           label=params.label, label_hifi=params.label_hifi,
                                           hifi_min_images=params.hifi_min_images)
    print(f"{model}: {len(configs)} configs, {template.num_layers} layers, {template.num_nodes} nodes, "
          f"options {', '.join(template.options[1:])}")
    li = configs.label_info or {"label": params.label}
    print(f"label: {li['label']}" + (f", {li['label_hifi']} where measured at >= {li['hifi_min_images']} images "
                                      f"({li['rows_hifi']} rows; the others calibrated: log {li['label_hifi']} = "
                                      f"{li['a']:.3f} + {li['b']:.3f}·log {li['label']}, r {li['r']:.3f})"
                                      if "label_hifi" in li else ""))
    result = train_ensemble(template, configs, params, progress=not args.quiet)
    result.metrics["info"]["label"] = li
    save_result(result, out)
    write_metrics(result.metrics, args.metrics)
    from predictor.api import Ensemble
    from predictor.sensitivity import write_tables

    ens = Ensemble.load(out)
    write_tables(ens, out)
    info = result.metrics["info"]
    print(f"trained {params.folds} members in {result.seconds:.1f} s; test split {info['n_test']} configs, "
          f"~{info['n_train_per_fold']} train configs per member")
    print(format_table({"gnn ensemble": result.metrics["ensemble"], **result.metrics["baselines"]}))
    print(f"-> {out} (ensemble.json, member-*.safetensors, sensitivity.parquet, blocks.parquet); "
          f"metrics -> {args.metrics}")
    if not args.no_inspect:
        from predictor.inspect import run_inspect

        run_inspect(out, graph, plots_csv_dir=Path(args.metrics).parent)
        print(f"inspection -> {out / 'plots'}")
    sys.stdout.flush()
    return 0


def run_probe(args: argparse.Namespace) -> int:
    """`qsens predictor probe`: measure every (layer, option)'s feature shift and save the probe;
    exit code."""
    import time
    from pathlib import Path

    from denoisers.base import configure_torch
    from predictor.probe import ProbeParams, measure_probe
    from core.params import load_section
    from sampling.noise import load_bank_for
    from sampling.scorers import make_scorer

    configure_torch(args.threads)
    ctx = context(args)
    params = load_section(ProbeParams, args.params, "probe")
    images = params.images if args.images is None else args.images
    seed = params.seed if args.seed is None else args.seed
    den = ctx.load_denoiser()
    bank = load_bank_for(den, args.bank or ctx.layout.bank, ctx.spec.name, build_missing=False)
    t0 = time.perf_counter()
    probe = measure_probe(den, bank, make_scorer(den, device=ctx.spec.device), images, seed,
                          progress=not args.quiet)
    out = Path(args.out or ctx.layout.probe)
    probe.save(out)
    norms = (probe.shift ** 2).sum(2) ** 0.5  # (L, O)
    top = sorted(((float(norms[i].max()), l) for i, l in enumerate(probe.layers)), reverse=True)[:5]
    print(f"probe: {len(probe.layers)} layers × {len(probe.options)} options, {images} images each, in "
          f"{time.perf_counter() - t0:.1f} s -> {out}; largest shifts: "
          + ", ".join(f"{l} {n:.3f}" for n, l in top)
          + (f"; non-finite images in {len(probe.nonfinite)} pair(s)" if probe.nonfinite else ""))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """`qsens predictor inspect`: sensitivity tables, plots and report of a trained predictor; exit
    code."""
    from pathlib import Path

    from predictor.inspect import run_inspect as inspect
    from quant.config import QuantConfig

    lay = context(args, loads_model=False).layout
    model = lay.name
    out = Path(args.out or lay.predictor)
    graph = Path(args.graph or lay.graph)
    reference = QuantConfig.load(args.reference) if args.reference else None
    report = inspect(out, graph if graph.is_file() else None, top_k=args.top,
                     plots_csv_dir=args.plots_dir or lay.metrics,
                     reference=reference)
    f = report["findings"]
    print(f"{model}: report -> {out / 'plots' / 'report.md'}")
    for key in ("time_embedding_ranks", "output_layer_ranks", "resnets_more_sensitive_than_attention",
                "prefers_uaq_overall"):
        if key in f:
            print(f"  {key}: {f[key]}")
    low_opt = min(report["top_layers"], key=lambda o: int(o[-1]))
    print(f"  top layers at {low_opt}: " + ", ".join(r["layer"] for r in report["top_layers"][low_opt][:5]))
    return 0


def run_diff(args: argparse.Namespace) -> int:
    """`qsens predictor diff A B`: which layers became more or less sensitive between two
    predictors; exit code."""
    from pathlib import Path

    from predictor.diff import plot_diff, sensitivity_diff
    from core.jsonio import write_json

    report = sensitivity_diff(args.a, args.b, tuple(map(Path, args.measured)) if args.measured else None)
    out = Path(args.out)
    write_json(out, report)
    png = plot_diff(report, Path(args.plot) if args.plot else out.with_suffix(".png"))
    s = report["summary"]
    rho = s["spearman_layers"]
    print(f"{s['layer_options']} layer-options: max |change| {s['max_abs_change']:.4g} FID, "
          f"{s['more_sensitive']} more sensitive in B (z >= 2), Spearman A vs B "
          + ("n/a" if rho is None else f"{rho:.3f}") + f" -> {out}, {png}")
    return 0
