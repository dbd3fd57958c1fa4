"""`qsens bank build|show`: quantize every layer with every option once, and inspect the result."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from core.params import defaults_from
from qsens.argtypes import non_negative_int
from qsens.context import add_model_args, context
from quant.bank import Bank, build_bank
from core.errors import QsensError
from core.jsonio import check_output_path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bank", help="build or inspect the quantization bank of a model",
        description="The bank holds every option (method × bits) of every quantizable layer, "
        "quantized once. Configs are then applied from it in milliseconds.")
    sub = p.add_subparsers(dest="bank_command", metavar="ACTION")

    b = sub.add_parser("build", help="quantize every layer with every option and save the bank")
    b.add_argument("source", nargs="?", default=None, metavar="SOURCE",
                   help="same as --model (default: params model.source)")
    add_model_args(b)
    b.add_argument("--out", type=Path, default=None, help="bank directory to write (default: DATA/bank/NAME)")
    b.add_argument("--options", default=None,
                   help="comma-separated options, e.g. uaq3,uaq4,kmc3 (default: params bank.options)")
    b.add_argument("--threads", type=non_negative_int, default=None,
                   help="torch CPU threads (default: torch's own)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run_build)

    s = sub.add_parser("show", help="print per-layer sizes and errors of a bank")
    s.add_argument("bank", type=Path, help="bank directory")
    s.add_argument("--top", type=non_negative_int, default=0, help="only the N layers with the largest 3-bit error")
    s.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: p.print_help() or 1)


@dataclass(frozen=True)
@defaults_from("bank")
class BankParams:
    """The `bank:` section of params.yaml."""

    # "uaq3,uaq4,kmc3" (one comma-separated string) or a list of option names
    options: tuple[str, ...] | None


def run_build(args: argparse.Namespace) -> int:
    """`qsens bank build`: quantize every layer × option once into the bank; exit code."""
    from core.params import load_section

    from denoisers.base import configure_torch

    if args.source is not None:
        args.model = args.source
    if args.threads:  # else torch's own default, as before
        configure_torch(args.threads)
    ctx = context(args)
    out = args.out or ctx.layout.bank
    check_output_path(out, kind="dir")
    # checked like every section (one line naming a wrong-typed value), not read as a raw dict
    options = args.options or load_section(BankParams, ctx.params, "bank").options
    if not options:
        raise QsensError(f"no options: pass --options or set bank.options in {ctx.params}")
    if isinstance(options, str):
        options = options.split(",")
    options = [o.strip() for text in options for o in text.split(",") if o.strip()]
    denoiser = ctx.load_denoiser()
    infos = {i.name: i.macs for i in denoiser.layer_infos(with_macs=True)}
    t0 = time.perf_counter()
    bank = build_bank(denoiser.model, options, model_name=ctx.spec.name, macs=infos,
                      device=ctx.spec.device, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    bank.save(out)
    args.out = out
    n = sum(i.n_weights for i in bank.layers.values())
    print(f"bank {args.out}: {len(bank.layers)} layers × {len(bank.options)} options, "
          f"{n:,} weights, {seconds:.1f}s ({n * len(bank.options) / seconds:,.0f} weight-options/s)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """`qsens bank show`: print the bank's layers (the `--top` worst by MSE); exit code."""
    bank = Bank.load(args.bank)
    rows = list(bank.layers.values())
    if args.top:
        worst = {name: max(e.mse for e in bank.entries[name].values()) for name in bank.layers}
        rows = sorted(rows, key=lambda i: -worst[i.name])[: args.top]
    opts = bank.options
    name_w = max(len(i.name) for i in rows) if rows else 10
    print(f"bank {args.bank}: model {bank.model!r}, {len(bank.layers)} layers, options {', '.join(opts)}")
    print(f"{'layer':<{name_w}} {'shape':>18} {'fp KiB':>8} " + " ".join(f"{o + ' KiB':>9}" for o in opts)
          + "  " + " ".join(f"{o + ' mse':>10}" for o in opts))
    for info in rows:
        e = bank.entries[info.name]
        print(f"{info.name:<{name_w}} {str(info.shape):>18} {info.n_weights * 2 / 1024:8.1f} "
              + " ".join(f"{e[o].stored_bits / 8 / 1024:9.1f}" for o in opts) + "  "
              + " ".join(f"{e[o].mse:10.3e}" for o in opts))
    total_fp = sum(i.n_weights for i in bank.layers.values()) * 2
    print(f"total fp16 {total_fp / 2**20:.2f} MiB; uniform options: " + ", ".join(
        f"{o} {sum(bank.entries[n][o].stored_bits for n in bank.layers) / 8 / 2**20:.2f} MiB" for o in opts))
    return 0
