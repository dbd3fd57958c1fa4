"""`qsens export`: a found config as a real low-bit checkpoint, a torchao config, or a skip list.

    qsens export --config C.json --out DIR                        # packed checkpoint (quant.pack)
    qsens export --config C.json --out DIR --format torchao       # DIR/torchao.json (search.export)
    qsens export --out DIR --format skip-list --keep-top 5        # DIR/skip_list.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

from qsens.argtypes import positive_int
from qsens.context import add_model_args, context, refuse_foreign_out
from core.errors import QsensError

NAME = "export"
FORMATS = ("packed", "torchao", "skip-list")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="write a config as a packed low-bit checkpoint, a torchao config or a skip list",
        description="packed (default): the denoiser with bit-packed codes and fp16 codebooks/scales "
        "(safetensors) + manifest.json; `qsens generate --quantized DIR` and "
        "quant.load_quantized(DIR) use it without the bank. torchao: DIR/torchao.json, a per-module "
        "torchao config for the layers torchao can represent (search.export.apply_torchao_config "
        "loads it with torchao.quantize_); the others are listed as unsupported. skip-list: "
        "DIR/skip_list.json, the --keep-top K layers the predictor ranks most sensitive, as the "
        "keep-in-high-precision lists of bitsandbytes, diffusers, transformers and quanto.")
    add_model_args(p, generation=False)
    p.add_argument("--format", default="packed", metavar="FORMAT",
                   help="packed | torchao | skip-list (default: packed)")
    p.add_argument("--config", type=Path, default=None, metavar="CONFIG.json",
                   help="QuantConfig to export (packed, torchao)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--bank", type=Path, default=None, help="bank dir (default: DATA/bank/NAME)")
    p.add_argument("--predictor", type=Path, default=None,
                   help="predictor dir for skip-list (default: DATA/predictor/NAME)")
    p.add_argument("--keep-top", type=positive_int, default=None, metavar="K",
                   help="skip-list: keep the K most sensitive layers in high precision")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise QsensError(f"unknown --format {args.format!r} (choose {', '.join(FORMATS)})")
    if args.out.exists() and not args.out.is_dir():
        raise QsensError(f"--out {args.out} exists and is not a directory")
    if args.format == "packed":
        from quant.pack import MANIFEST, REST_FILE, WEIGHTS_FILE
        from search.export import SKIP_FILE, TORCHAO_FILE

        # the checkpoint is swapped in as a whole directory (core.atomicdir) carrying the other
        # files along: only a directory of qsens export's own files may be replaced that way
        own = (MANIFEST, WEIGHTS_FILE, REST_FILE, TORCHAO_FILE, SKIP_FILE)
        refuse_foreign_out(args.out, lambda name: name in own or name.lstrip(".").startswith(own),
                           "a `qsens export` output")
    if args.format != "skip-list" and args.keep_top is not None:
        raise QsensError(f"--keep-top is for --format skip-list, not {args.format}")
    if args.format != "skip-list" and args.config is None:
        raise QsensError(f"--format {args.format} needs --config CONFIG.json")
    if args.format == "skip-list":
        return _skip_list(args)
    from quant.config import QuantConfig

    config = QuantConfig.load(args.config)
    ctx = context(args)
    if config.model != ctx.spec.name:
        raise QsensError(f"{args.config} is for model {config.model!r}, not {ctx.spec.name!r} (give --model/--name)")
    den = ctx.load_denoiser()
    return _packed(args, ctx, den, config) if args.format == "packed" else _torchao(args, den, config)


def _packed(args, ctx, den, config) -> int:
    from quant.pack import REST_FILE, WEIGHTS_FILE, pack, read_manifest, save_quantized, weight_bytes
    from sampling.noise import load_bank_for

    bank = load_bank_for(den, args.bank or ctx.layout.bank, ctx.spec.name, build_missing=False)
    stats = bank.summarize(config)
    pack(den.model, config, bank, verify=False)  # load_bank_for checked the weights
    out = save_quantized(den.model, args.out, config, fingerprint=bank.fingerprint, accounted=stats.to_dict(),
                         extra={"source": ctx.spec.source})
    manifest = read_manifest(out)
    on_disk = manifest["files"][WEIGHTS_FILE]["bytes"]
    accounted = manifest["packed_accounted_bytes"]
    resident = weight_bytes(den.model)["packed"]
    fp_layers = [n for n in bank.layer_names if config.option(n) == "fp16"]
    print(f"packed {len(config.canonical_options())} layers ({stats.avg_bits:.3f} avg bits): "
          f"{on_disk:,} B on disk ({on_disk / accounted:.3f}x), {resident:,} B in memory "
          f"({resident / accounted:.3f}x) for {accounted:,.0f} B accounted"
          + (f"; {len(fp_layers)} fp16 layers stay in the model's dtype" if fp_layers else "")
          + f"; other tensors {manifest['files'][REST_FILE]['bytes']:,} B -> {out}")
    return 0


def _torchao(args, den, config) -> int:
    from quant.layers import combine_fingerprints, layer_fingerprints, layer_infos
    from search.export import TORCHAO_FILE, torchao_plan, write_torchao_config

    infos = {i.name: i for i in layer_infos(den.model)}
    config.validate(infos, where=str(args.config))
    plan = torchao_plan(config, infos)
    path = write_torchao_config(plan, args.out / TORCHAO_FILE,
                                fingerprint=combine_fingerprints(layer_fingerprints(den.model)))
    kinds: dict[str, int] = {}
    for c in plan.configs.values():
        kinds[type(c).__name__] = kinds.get(type(c).__name__, 0) + 1
    print(f"torchao: {len(plan.configs)} of {len(plan.options)} quantized layers configured ("
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + f") -> {path}")
    if plan.unsupported:
        print(f"unsupported by torchao ({len(plan.unsupported)}, left in FP by it):")
        for name, why in plan.unsupported.items():
            print(f"  {name}: {why}")
    return 0


def _skip_list(args) -> int:
    from quant.bank import META_FILE, Bank
    from search.export import SKIP_FILE, sensitivity_ranking, skip_list, write_skip_list

    if args.keep_top is None:
        raise QsensError("--format skip-list needs --keep-top K")
    ctx = context(args)
    bank_dir = args.bank or ctx.layout.bank
    if (Path(bank_dir) / META_FILE).is_file():  # names and ties from bank.json: no model load
        bank = Bank.load(bank_dir)
        layers, tied = bank.layer_names, bank.tied
    else:
        from quant.layers import tied_groups

        den = ctx.load_denoiser()
        layers, tied = den.layer_names(), tied_groups(den.model)
    if args.keep_top > len(layers):
        raise QsensError(f"--keep-top {args.keep_top}: the model has only {len(layers)} quantizable layers")
    ranking = sensitivity_ranking(args.predictor or ctx.layout.predictor)
    data = skip_list(ranking, args.keep_top, layers, tied)
    data = {"model": ctx.spec.name, "predictor": str(args.predictor or ctx.layout.predictor), **data}
    path = write_skip_list(data, args.out / SKIP_FILE)
    print(f"keep in high precision (top {args.keep_top} of {len(layers)} by predicted sensitivity): "
          + ", ".join(data["keep"]))
    from search.export import SKIP_TOOLS

    for tool in SKIP_TOOLS:  # each list is written for its tool's own name rule (keeps exactly these)
        if data[tool].get("refused"):
            print(f"  note: no {tool} list: {data[tool]['refused']}")
    print(f"-> {path}")
    return 0
