"""`qsens`: the one console command. Thin: parse arguments, call the packages, print results.

Each subcommand lives in `qsens/commands/<name>.py` and exposes `register(subparsers)`, which adds
its parser and sets `func` (a callable taking the parsed `argparse.Namespace`, returning an exit
code or None). Bad input raises `quant.errors.QsensError`; it is printed as one line, exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from quant.errors import QsensError

# Order = order in `qsens --help`. A module missing here is simply not offered.
COMMAND_MODULES = ("reference", "prepare", "bank", "graph", "score", "noise", "sample", "cache",
                   "config", "predictor", "analyze", "search", "evaluate", "generate", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsens",
        description="Learn where a diffusion denoiser is sensitive to weight quantization and "
        "emit per-layer mixed-precision configs under a bit budget.",
        epilog="Run `qsens COMMAND --help` for the options of one command. "
        "The whole pipeline: `dvc repro` (or `make repro` on a fresh machine).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"qsens.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"qsens.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        code = args.func(args)
    except QsensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
