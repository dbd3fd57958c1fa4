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
    i = sub.add_parser(
        "import-legacy", help="read a Qua2SeDiMo quant_cache.pkl safely into our schema",
        description="Reads the reference system's quant_cache.pkl with a restricted unpickler (builtin "
        "containers and numbers only). Keys `model.<module path>.weight_quantizer` become "
        "`<module path>`, and every name must be a quantizable layer of --model, else nothing is "
        "written. A split skip-concat layer (second half `..._0`) takes the option of its halves "
        "when they agree, else the one with fewer bits (equal bits: the first half's); the summary "
        "counts them. DiT timestep embedders take block 0's option, as the reference loads them. "
        "avg_bits and quantized_bytes are recomputed with qsens' accounting.")
    i.add_argument("pkl", type=Path)
    i.add_argument("--out", type=Path, required=True)
    i.add_argument("--model", required=True,
                   help="the model the configs are for: sd15, sdxl, pixart-alpha, pixart-sigma, "
                   "hunyuan-dit, dit-xl-2, or a diffusers model/pipeline dir")
    i.set_defaults(func=run_import)
    p.set_defaults(func=lambda args: p.print_help() or 1)


def run_merge(args: argparse.Namespace) -> int:
    """`qsens cache merge`: merge the workers' shards into the quant_cache (problems as warnings);
    exit code."""
    from sampling.cache import merge_shards

    report = merge_shards(args.shards, args.out)
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"{report.out}: {report.rows} configs ({report.ok} ok, {report.failed} failed)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """`qsens cache show`: print a quant_cache's summary; exit code."""
    from sampling.cache import summary

    print(summary(args.cache))
    return 0


def run_import(args: argparse.Namespace) -> int:
    """`qsens cache import`: import a legacy quant_cache.pkl; exit code."""
    from sampling.legacy import import_legacy

    print(import_legacy(args.pkl, args.out, args.model).summary())
    return 0
