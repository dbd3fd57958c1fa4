"""`qsens graph`: a denoiser's module-level DAG as node-link JSON (and optionally a drawing)."""
from __future__ import annotations

import argparse
import json
import sys

from qsens.argtypes import positive_int
from qsens.context import add_model_args, context
from core.errors import QsensError
from core.jsonio import check_output_path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "graph", help="trace a denoiser into its module-level DAG (node-link JSON)",
        description="Trace a diffusers denoiser with torch.export on the meta device (no weights "
        "needed) and collapse it into a DAG: one node per quantizable layer, combine nodes "
        "(add, attention, norm, concat, ...) between them, static node features. MODEL is a "
        "diffusers model or pipeline directory, a config.json, or a known name "
        "(sd15, sdxl, pixart-alpha, pixart-sigma, hunyuan-dit, dit-xl-2, ...).")
    p.add_argument("source", nargs="?", default=None, metavar="MODEL",
                   help="model or pipeline directory, config JSON, known name or hub id "
                   "(default: the params model, or --model)")
    add_model_args(p, generation=False)
    p.add_argument("--out", default=None, metavar="GRAPH.json",
                   help="node-link JSON to write (default: DATA/graphs/NAME.json)")
    p.add_argument("--draw", metavar="FILE.png", help="also draw the DAG (.png or .svg)")
    p.add_argument("--max-side", type=positive_int, default=None,
                   help="latent side used for tracing, capped at the config's sample_size (default: "
                   "params graph.max_side); "
                   "changes MACs, not the graph")
    p.add_argument("--text-tokens", type=positive_int, default=None,
                   help="text tokens for cross-attention inputs (default 77, or the config's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.params import load_section
    from graphs.dag import GraphParams, build_dag_for, skip_concat_consumers, summary
    from graphs.draw import draw_graph
    from graphs.io import write_graph

    name, selection = None, {}
    if args.source is None:  # the params model (or --model): graph it under its own name
        ctx = context(args)
        name = ctx.spec.name
        selection = {"layers": ctx.spec.layers, "max_layers": ctx.spec.max_layers}  # model.layers
        args.source = str(ctx.layout.models) if ctx.spec.is_builtin else ctx.spec.source
        args.out = args.out or ctx.layout.graph
    if args.out is None:
        raise QsensError("--out GRAPH.json is needed when MODEL is given")
    check_output_path(args.out)
    if args.max_side is None:
        args.max_side = load_section(GraphParams, args.params, "graph").max_side
    if args.draw:
        check_output_path(args.draw)
    # refuses (QsensError) a graph that misses a layer or is not a DAG: nothing is written
    result = build_dag_for(args.source, max_side=args.max_side, text_tokens=args.text_tokens,
                           name=name, **selection)
    graph = result.graph
    write_graph(graph, args.out)
    s = summary(graph)
    print(f"{graph.graph['name']} ({graph.graph['model_class']}): {s['weight']} weight + "
          f"{s['combine']} combine nodes, {s['edges']} edges, "
          f"{len(skip_concat_consumers(graph))} layers after skip concats; "
          f"export {result.export_s:.1f} s, collapse {result.collapse_s:.2f} s -> {args.out}")
    print("  combine kinds: " + json.dumps({k: v for k, v in s["by_kind"].items()
                                            if k not in ("weight", "input", "output")}))
    if args.draw:
        draw_graph(graph, args.draw, title=f"{graph.graph['name']} ({graph.graph['model_class']})")
        print(f"  drawing -> {args.draw}")
    sys.stdout.flush()
    return 0
