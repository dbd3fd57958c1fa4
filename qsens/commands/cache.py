"""`qsens cache merge|show|import-legacy`: the quant_cache parquet file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="merge shards into the quant_cache, show it, import legacy caches",
                              description="The quant_cache (data/quant_cache/MODEL.parquet) has one row per "
                              "config id; `merge` is its only writer.")
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    m = sub.add_parser("merge", help="shards → one parquet row per config id (sorted, deterministic)")
    m.add_argument("--shards", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True, help="parquet file to write")
    m.set_defaults(func=run_merge)
    s = sub.add_parser("show", help="summary: count, avg_bits and FID ranges, failures")
    s.add_argument("cache", type=Path)
    s.set_defaults(func=run_show)
    i = sub.add_parser("import-legacy", help="read a Qua2SeDiMo quant_cache.pkl safely into our schema")
    i.add_argument("pkl", type=Path)
    i.add_argument("--out", type=Path, required=True)
    i.add_argument("--model", required=True, help="model name to record (e.g. sd15, pixart-alpha)")
    i.set_defaults(func=run_import)
    p.set_defaults(func=lambda args: p.print_help() or 1)


def run_merge(args: argparse.Namespace) -> int:
    from sampling.cache import merge_shards

    report = merge_shards(args.shards, args.out)
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"{report.out}: {report.rows} configs ({report.ok} ok, {report.failed} failed)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from sampling.cache import summary

    print(summary(args.cache))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from sampling.legacy import import_legacy

    n = import_legacy(args.pkl, args.out, args.model)
    print(f"{args.out}: imported {n} legacy configs")
    return 0
