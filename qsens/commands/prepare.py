"""`qsens prepare`: train the `digits` default (denoiser + classifier) and its FID reference."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NAME = "prepare"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="train the built-in digits denoiser, its classifier and FID reference stats",
        description="Train the class-conditional digits denoiser (`digits`: UNet2DModel, "
        "`digits-dit`: DiTTransformer2DModel) on scikit-learn's bundled digits, the digits "
        "classifier (held-out accuracy reported), and the classifier-feature reference statistics "
        "for FID. Writes DATA/models/MODEL/ and DATA/reference/digits/. CPU, a few minutes.")
    p.add_argument("--model", default="digits", choices=["digits", "digits-dit"],
                   help="which digits architecture to train (default: digits)")
    p.add_argument("--data-dir", default="data", help="output root (default: data)")
    p.add_argument("--params", default="params.yaml",
                   help="params file; its `digits:` section is read (default: params.yaml)")
    p.add_argument("--metrics", default=None,
                   help="also write the training figures to this JSON file")
    p.add_argument("--retrain-classifier", action="store_true",
                   help="retrain the classifier even if one with the same params exists")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from denoisers.base import configure_torch
    from denoisers.digits import load_params, prepare_digits
    from sampling.scoring import compute_digits_reference

    configure_torch(args.threads)
    params = load_params(args.params)
    t0 = time.perf_counter()
    res = prepare_digits(args.model, args.data_dir, params, progress=not args.quiet,
                         retrain_classifier=args.retrain_classifier)
    t1 = time.perf_counter()
    compute_digits_reference(res.classifier, reference_dir=res.reference_dir)
    total = time.perf_counter() - t0
    train = res.denoiser.info.get("train", {})
    figures = {
        "model": args.model,
        "parameters": train.get("parameters"),
        "quantizable_layers": len(res.denoiser.layer_names()),
        "classifier_test_accuracy": round(res.classifier_info["test_accuracy"], 4),
        "denoiser_final_loss": train.get("final_loss"),
        "seconds_classifier": res.seconds.get("classifier"),
        "seconds_denoiser": res.seconds.get("denoiser"),
        "seconds_reference": round(time.perf_counter() - t1, 2),
        "seconds_total": round(total, 1),
    }
    for k, v in figures.items():
        print(f"{k:28s} {v}")
    print(f"wrote {res.model_dir} and {res.reference_dir}")
    if args.metrics:
        path = Path(args.metrics)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
    return 0
