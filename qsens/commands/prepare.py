"""`qsens prepare`: make the params model ready for the pipeline.

- `digits` / `digits-dit`: train the denoiser, the digits classifier and its FID reference.
- a real pipeline: load it once (every component must load), record its weight fingerprint in
  `DATA/models/NAME/model.json`, and install the reference dir (`model.reference`, built by
  `qsens reference build`) as `DATA/reference/NAME/`, checked against the model's resolution.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from qsens.argtypes import non_negative_int
from qsens.context import add_model_args, context
from core.errors import QsensError
from core.jsonio import write_json

NAME = "prepare"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="train the digits default, or check a real pipeline and install its reference",
        description="digits / digits-dit: train the class-conditional denoiser on scikit-learn's "
        "bundled digits, the digits classifier (held-out accuracy reported) and the classifier-"
        "feature reference statistics for FID (CPU, a few minutes). A diffusers pipeline: load it "
        "(one line names a component that cannot load), write DATA/models/NAME/model.json with its "
        "weight fingerprint, and copy the reference dir (model.reference) to DATA/reference/NAME/.")
    add_model_args(p)
    p.add_argument("--metrics", default=None,
                   help="also write the training figures to this JSON file")
    p.add_argument("--retrain-classifier", action="store_true",
                   help="digits: retrain the classifier even if one with the same params exists")
    p.add_argument("--derive", choices=("finetune", "lora", "fewstep"), default=None,
                   help="digits: instead of training, build a derived checkpoint of the prepared model "
                   "(params `derive:`) as DATA/models/NAME-KIND (a fine-tune on shifted digits, a merged "
                   "low-rank update, or the same weights at fewer sampler steps; see denoisers/derived.py)")
    p.add_argument("--threads", type=non_negative_int, default=None, help="torch CPU threads (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from denoisers.base import configure_torch

    configure_torch(args.threads)
    ctx = context(args, installed_reference=False)
    t0 = time.perf_counter()
    if args.derive:
        figures = prepare_derived(ctx, args)
    else:
        figures = prepare_builtin(ctx, args) if ctx.spec.is_builtin else prepare_pipeline(ctx)
        write_settings(ctx)
    figures["seconds_total"] = round(time.perf_counter() - t0, 1)
    for k, v in figures.items():
        print(f"{k:28s} {v}")
    if args.metrics:
        path = Path(args.metrics)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, figures)
    return 0


SETTINGS = "settings.json"


def write_settings(ctx) -> None:
    """DATA/models/NAME/settings.json: the model's settings every later stage depends on (steps,
    guidance, dtype, layer selection, ...: `ModelSpec` less `source`, `reference` and `name`).
    The DVC stages after `prepare` depend on this file instead of on params `model:` / `models:`,
    so an entry's own settings reach them while a moved model directory (a new `source` path
    with the same content) leaves the file, and so every later stage, unchanged."""
    settings = {k: v for k, v in ctx.spec.to_dict().items() if k not in ("source", "reference", "name")}
    write_json(ctx.layout.models / SETTINGS, settings, sort_keys=True)


def prepare_builtin(ctx, args) -> dict:
    """digits / digits-dit: train the classifier and the denoiser, write the reference statistics
    of the real digits; returns the figures the command prints."""
    from denoisers.digits import load_params, prepare_digits
    from sampling.scoring import compute_digits_reference

    params = load_params(ctx.params)
    res = prepare_digits(ctx.spec.source, ctx.layout.root, params, progress=not args.quiet,
                         retrain_classifier=args.retrain_classifier, name=ctx.spec.name)
    t1 = time.perf_counter()
    compute_digits_reference(res.classifier, reference_dir=res.reference_dir)
    train = res.denoiser.info.get("train", {})
    print(f"wrote {res.model_dir} and {res.reference_dir}")
    return {
        "model": ctx.spec.name,
        "parameters": train.get("parameters"),
        "quantizable_layers": len(res.denoiser.layer_names()),
        "classifier_test_accuracy": round(res.classifier_info["test_accuracy"], 4),
        "denoiser_final_loss": train.get("final_loss"),
        "seconds_classifier": res.seconds.get("classifier"),
        "seconds_denoiser": res.seconds.get("denoiser"),
        "seconds_reference": round(time.perf_counter() - t1, 2),
    }


def prepare_derived(ctx, args) -> dict:
    """DATA/models/NAME-KIND + DATA/reference/NAME-KIND (the base's classifier; FID statistics
    of the data the checkpoint was tuned to, `denoisers.derived.reference_images`)."""
    from denoisers.derived import DeriveParams, derive_checkpoint, reference_images
    from denoisers.digits import DigitsClassifier
    from sampling.scoring import compute_digits_reference, save_reference_stats

    if not ctx.spec.is_builtin:
        raise QsensError(f"--derive builds checkpoints of the digits models; {ctx.spec.name} is a "
                         "diffusers pipeline: give your fine-tune's pipeline dir as its own model instead")
    base_dir = ctx.layout.models
    if not base_dir.is_dir():
        raise QsensError(f"{base_dir}: no prepared {ctx.spec.name} model to derive from (run `qsens prepare` first)")
    name = f"{ctx.spec.name}-{args.derive}"
    derived = ctx.layout.of(name)
    ref = derived.reference
    dp = DeriveParams.from_yaml(ctx.params)
    shifted = reference_images(args.derive, dp)

    def own_statistics(tmp: Path) -> None:
        if shifted is not None:
            classifier, _ = DigitsClassifier.load(tmp)
            mu, sigma, stats = compute_digits_reference(classifier, shifted)
            save_reference_stats(tmp, mu, sigma, {**stats, "source": "sklearn.datasets.load_digits (all images) as "
                                                  f"derive.thicken = {dp.thicken} draws them ({args.derive})"})

    _replace_dir(ctx.layout.reference, ref, then=own_statistics)
    info = derive_checkpoint(base_dir, args.derive, dp, derived.models, ref, name, progress=not args.quiet)
    print(f"wrote {derived.models} and {ref}")
    return {"model": name, **{k: info[k] for k in ("kind", "final_loss", "mean_relative_weight_change",
                                                    "sampler_steps")}}


def prepare_pipeline(ctx) -> dict:
    """model.json (fingerprint) + the installed reference of a real pipeline. model.json says what
    the model is, never where (`identity`: a digest of every file of the pipeline), so the stages
    that depend on it stay valid when the pipeline dir moves and re-run when a file changes."""
    from denoisers.spec import source_identity
    from quant.layers import combine_fingerprints, layer_fingerprints

    spec = ctx.spec
    installed = ctx.layout.reference
    if not spec.reference:
        raise QsensError(f"{spec.name}: model.reference is not set: build FID statistics with "
                         "`qsens reference build ... --out DIR` and set model.reference: DIR")
    if Path(spec.reference).resolve() == installed.resolve():
        raise QsensError(f"model.reference {spec.reference} is where prepare installs it; build "
                         "it elsewhere (e.g. data/reference/coco512) and point model.reference there")
    den = ctx.load_denoiser()  # checks the pipeline and the reference's resolution
    prints = layer_fingerprints(den.model)
    info = {
        "family": "diffusers-pipeline", "name": spec.name, "identity": source_identity(spec.source),
        "pipeline_class": type(den.pipe).__name__, "denoiser_class": type(den.model).__name__,
        "fingerprint": combine_fingerprints(prints), "quantizable_layers": len(prints),
        "parameters": den.num_parameters(), "resolution": den.resolution,
        "steps": den.steps, "guidance": den.guidance, "dtype": spec.dtype,
    }
    _replace_dir(Path(spec.reference), installed)
    ctx.layout.models.mkdir(parents=True, exist_ok=True)
    write_json(ctx.layout.models / "model.json", info, sort_keys=True)
    print(f"wrote {ctx.layout.models / 'model.json'} and {installed}")
    return {k: info[k] for k in ("name", "pipeline_class", "denoiser_class", "quantizable_layers",
                                 "parameters", "resolution", "fingerprint")}


def _replace_dir(src: Path, dst: Path, then=None) -> None:
    """Copy `src` over `dst` atomically (a half-copied reference never stays behind); `then(tmp)`
    edits the copy before it takes `dst`'s place."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if then is not None:
        then(tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
