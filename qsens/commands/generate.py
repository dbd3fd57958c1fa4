"""`qsens generate`: images from the FP or a quantized denoiser, as PNG files.

The equivalent of the reference system's `*_infer.py` scripts: a config found by `qsens search`
is applied from the bank (fake quantization: the dequantized weights are written into the
model, and restored afterwards), or a packed checkpoint from `qsens export` is loaded
(`--quantized DIR`: real low-bit weights dequantized in each forward, no bank needed; the same
images as the fake-quant config), optionally with dynamic activation quantization.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from qsens.argtypes import non_negative_int, positive_int
from qsens.context import add_model_args, context, refuse_foreign_out
from core.errors import QsensError
from core.jsonio import write_json

NAME = "generate"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="generate PNGs with the FP model or a quantized config",
        description="Generate N images from fixed per-image seeds (image i uses seed "
        "SEED*1e6+i) with the model as it is (no --config: FP) or with a QuantConfig applied from "
        "the model's bank, and write them as PNGs plus a generate.json listing seeds, prompts "
        "or classes and the settings.")
    add_model_args(p)
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--config", default=None, metavar="CONFIG.json",
                         help="QuantConfig to apply from the bank (default: none, the FP model)")
    weights.add_argument("--quantized", type=Path, default=None, metavar="DIR",
                         help="packed checkpoint from `qsens export` (no bank needed)")
    p.add_argument("--bank", type=Path, default=None, help="bank dir (default: DATA/bank/NAME)")
    p.add_argument("--act-bits", type=int, choices=[8, 6], default=None,
                   help="also quantize activations dynamically (per token / per sample-channel); "
                        "replaces the config's or checkpoint's own activation bits (one set of hooks)")
    p.add_argument("--keep-dequantized", action="store_true",
                   help="with --quantized: decode each packed layer's weight once and keep it for "
                        "this run (speed over memory: float weights resident as in an FP model)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                      help="text prompt (repeatable; images cycle through them)")
    what.add_argument("--class-id", type=non_negative_int, action="append", default=None, metavar="N",
                      help="class label of a class-conditional model (repeatable)")
    p.add_argument("--n-images", type=positive_int, default=4, help="images to generate (default: 4)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed set (default: 0)")
    p.add_argument("--out", type=Path, required=True, help="directory for the PNGs")
    p.add_argument("--threads", type=non_negative_int, default=None, help="torch CPU threads (default: cores)")
    p.set_defaults(func=run)


META = "generate.json"
_PNG = re.compile(r"\d{4,}_seed\d+\.png")  # f"{i:04d}_seed{seed}.png"


def _own(name: str) -> bool:
    """Files `qsens generate` writes into --out (and the temporary files of its atomic writes)."""
    return bool(_PNG.fullmatch(name)) or name == META or name.startswith(f".{META}")


def run(args: argparse.Namespace) -> int:
    import contextlib

    import numpy as np
    from PIL import Image

    from denoisers.base import configure_torch
    from quant.activations import activation_quant

    if args.n_images < 1:
        raise QsensError(f"--n-images must be at least 1, got {args.n_images}")
    if args.seed < 0:
        raise QsensError(f"--seed must be >= 0, got {args.seed}")
    if args.out.exists() and not args.out.is_dir():
        raise QsensError(f"--out {args.out} exists and is not a directory")
    refuse_foreign_out(args.out, _own, "a `qsens generate` output")
    configure_torch(args.threads)
    ctx = context(args)
    den = ctx.load_denoiser()
    labels = None
    if args.prompt:
        if den.num_classes is not None or not hasattr(den, "prompts"):
            raise QsensError(f"{ctx.spec.name} is class-conditional: use --class-id, not --prompt")
        den.prompts = list(args.prompt)
    elif args.class_id:
        n_classes = den.num_classes
        if n_classes is None:
            raise QsensError(f"{ctx.spec.name} is a text-to-image model: use --prompt")
        bad = [c for c in args.class_id if not 0 <= c < n_classes]
        if bad:
            raise QsensError(f"--class-id {bad}: {ctx.spec.name} has classes 0..{n_classes - 1}")
        labels = np.array([args.class_id[i % len(args.class_id)] for i in range(args.n_images)])

    from sampling.evaluator import Evaluator

    with contextlib.ExitStack() as stack:
        applied = "fp"
        # one set of activation hooks: --act-bits overrides the config's (or checkpoint's) own
        # activation bits for every layer instead of stacking a second set on top of them
        if args.config:
            import dataclasses

            from quant.config import QuantConfig
            from sampling.noise import load_bank_for

            config = QuantConfig.load(args.config)
            if args.act_bits:
                config = dataclasses.replace(config, act_bits=args.act_bits, act_options={})
            bank = load_bank_for(den, args.bank or ctx.layout.bank, ctx.spec.name, build_missing=False)
            stack.enter_context(Evaluator(den, bank).applied(config))  # checks the bank against the model
            applied = f"{args.config} ({bank.summarize(config).avg_bits:.3f} avg bits)"
        elif args.quantized:
            from quant.pack import load_quantized, read_manifest

            manifest = read_manifest(args.quantized)
            # refuses another model's checkpoint; its activation bits unless --act-bits replaces them
            load_quantized(args.quantized, den.model, activations=not args.act_bits)
            bits = (manifest.get("accounted") or {}).get("avg_bits")
            applied = f"{args.quantized} (packed" + (f", {bits:.3f} avg bits)" if bits else ")")
            if args.act_bits:
                stack.enter_context(activation_quant(den.model, args.act_bits))
        elif args.act_bits:
            stack.enter_context(activation_quant(den.model, args.act_bits))
        if args.act_bits:
            applied += f", A{args.act_bits}"
        if args.keep_dequantized:
            from quant.pack import hold_dequantized

            stack.enter_context(hold_dequantized(den.model))
        gen = Evaluator(den).generate(None, args.n_images, args.seed,
                                      **({} if labels is None else {"labels": labels}))
    args.out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, img in enumerate(gen.images):
        path = args.out / f"{i:04d}_seed{int(gen.seeds[i])}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
        files.append(path.name)
    meta = {"model": ctx.spec.name, "source": ctx.spec.source, "config": args.config,
            "quantized": None if args.quantized is None else str(args.quantized),
            "act_bits": args.act_bits, "seeds": [int(s) for s in gen.seeds], "files": files,
            "prompts": gen.prompts, "labels": None if gen.labels is None else gen.labels.tolist(),
            "nonfinite": int(gen.n_nonfinite), **gen.params}
    # a previous run into this --out that made more images left PNGs this run did not rewrite:
    # removed, so the directory holds exactly what generate.json lists
    for stale in sorted(set(p.name for p in args.out.iterdir() if _PNG.fullmatch(p.name)) - set(files)):
        (args.out / stale).unlink()
    write_json(args.out / META, meta)
    print(f"{len(files)} images ({applied}) in {gen.seconds:.1f} s -> {args.out}")
    if gen.n_nonfinite:
        print(f"warning: {gen.n_nonfinite} images had NaN/inf values (written black)")
    return 0

