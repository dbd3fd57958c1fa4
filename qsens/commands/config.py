"""`qsens config import-legacy|show`: QuantConfig JSON files."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("config", help="import a Qua2SeDiMo config, show a config",
                              description="QuantConfig JSON files: {model, options {layer: option}, "
                              "avg_bits, act_bits}; unlisted layers stay fp16.")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION")
    i = sub.add_parser(
        "import-legacy", help="a Qua2SeDiMo quant_configs/*.pkl → a QuantConfig JSON",
        description="Reads one reference config ({`model.<module path>.weight_quantizer`: "
        "'method-bits'}) with a restricted unpickler, maps every key to `<module path>` and checks "
        "it against --model's quantizable layers (unmatched names: one error, nothing written). A "
        "split skip-concat layer (second half `..._0`) takes its halves' option when they agree, "
        "else the one with fewer bits (equal bits: the first half's); DiT timestep embedders take "
        "block 0's option, as the reference loads them. avg_bits: qsens' accounting.")
    i.add_argument("pkl", type=Path)
    i.add_argument("--model", required=True,
                   help="sd15, sdxl, pixart-alpha, pixart-sigma, hunyuan-dit, dit-xl-2, or a diffusers "
                   "model/pipeline dir")
    i.add_argument("--out", type=Path, required=True, help="QuantConfig JSON to write")
    i.set_defaults(func=run_import)
    s = sub.add_parser("show", help="layers, options histogram, avg bits (with --bank)")
    s.add_argument("config", type=Path)
    s.add_argument("--bank", type=Path, default=None,
                   help="bank dir: validate the config against it and account its size")
    s.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: p.print_help() or 1)


def run_import(args: argparse.Namespace) -> int:
    """`qsens config import`: a legacy config file -> a QuantConfig JSON; exit code."""
    from sampling.legacy import read_legacy_config

    result = read_legacy_config(args.pkl, args.model)
    result.config.save(args.out)
    print(result.summary(args.out))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """`qsens config show`: print a config, its options and accounting; exit code."""
    from quant.config import QuantConfig

    config = QuantConfig.load(args.config)
    print(show(config, args.config, args.bank))
    return 0


def show(config, path: Path, bank_dir: Path | None = None) -> str:
    """The text of `qsens config show`: one header line, one line per option, the accounting."""
    from quant.options import FP16

    quantized = config.canonical_options()
    lines = [f"{path}: model {config.model}, {len(config.options)} layers listed "
             f"({len(quantized)} quantized), act_bits {config.act_bits or 'none'}"]
    if bank_dir is None:
        for option, count in sorted(Counter(config.options.values()).items()):
            lines.append(f"  {option:6s} {count:5d} layers")
        if config.avg_bits is not None:
            lines.append(f"  avg bits {config.avg_bits:.4f} (as stored; give --bank to account it)")
        return "\n".join(lines)

    from quant.accounting import stored_layers
    from quant.bank import Bank

    bank = Bank.load(bank_dir)
    stats = bank.summarize(config)  # validates model, layers, options and tied layers
    weights: Counter = Counter()
    layers: Counter = Counter()
    for name, info in stored_layers(bank.layers, bank.tied).items():  # a shared tensor once
        option = config.option(name)
        layers[option] += 1
        weights[option] += info.n_weights
    total = sum(weights.values())
    for option in sorted(layers):
        lines.append(f"  {option:6s} {layers[option]:5d} layers  {100 * weights[option] / total:5.1f}% of weights"
                     + ("  (unlisted layers included)" if option == FP16 and len(config.options) < len(bank.layers)
                        else ""))
    if bank.tied:
        lines.append(f"  {len(bank.tied)} group(s) of layers share one weight tensor: counted once")
    lines.append(f"  avg bits {stats.avg_bits:.4f} (overhead included), {stats.quantized_bytes / 2**20:.2f} MiB "
                 f"vs {stats.fp_bytes / 2**20:.2f} MiB fp16, weight error {stats.quantized_error:.4g}")
    if config.avg_bits is not None and abs(config.avg_bits - stats.avg_bits) > 1e-9:
        lines.append(f"  note: the file says avg_bits {config.avg_bits:.4f}; this bank accounts {stats.avg_bits:.4f}")
    return "\n".join(lines)
