"""`qsens graph`: a denoiser's module-level DAG as node-link JSON (and optionally a drawing)."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "graph", help="trace a denoiser into its module-level DAG (node-link JSON)",
        description="Trace a diffusers denoiser with torch.export on the meta device (no weights "
        "needed) and collapse it into a DAG: one node per quantizable layer, combine nodes "
        "(add, attention, norm, concat, ...) between them, static node features. MODEL is a "
        "diffusers model or pipeline directory, a config.json, or a known name "
        "(sd15, sdxl, pixart-alpha, pixart-sigma, hunyuan-dit, dit-xl-2, ...).")
    p.add_argument("model", metavar="MODEL", help="model directory, config JSON, or known name")
    p.add_argument("--out", required=True, metavar="GRAPH.json", help="node-link JSON to write")
    p.add_argument("--draw", metavar="FILE.png", help="also draw the DAG (.png or .svg)")
    p.add_argument("--max-side", type=int, default=None,
                   help="latent side used for tracing (default: min(sample_size, 32)); "
                   "changes MACs, not the graph")
    p.add_argument("--text-tokens", type=int, default=None,
                   help="text tokens for cross-attention inputs (default 77, or the config's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from graphs.dag import build_dag_for, skip_concat_consumers, summary
    from graphs.draw import draw_graph
    from graphs.io import write_graph

    # refuses (QsensError) a graph that misses a layer or is not a DAG: nothing is written
    result = build_dag_for(args.model, max_side=args.max_side, text_tokens=args.text_tokens)
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
