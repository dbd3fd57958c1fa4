"""Benchmark: trace + collapse every shipped real architecture on CPU (meta device, no weights).

Prints one row per architecture: weight nodes beside Qua2SeDiMo's reference count, layers fed
by a skip concat (which the reference splits in two), node/edge counts, and timings with their
ratio (collapse time / export time; the export is the reference cost measured in the same run).

    python bench/graph.py [--only sd15,sdxl] [--max-side 32]

Writes the rows, the command and the machine conditions to bench/results/graph.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from denoisers.architectures import KNOWN_ARCHITECTURES, build_from_config  # noqa: E402
from graphs.dag import build_dag, check_dag, skip_concat_consumers, skip_concats  # noqa: E402
from graphs.export import export_denoiser  # noqa: E402
from denoisers.inputs import example_input_spec  # noqa: E402
from quant.layers import quantizable_layers  # noqa: E402

from machine import write_result  # noqa: E402  (bench/machine.py)

# Qua2SeDiMo (REFERENCE.md): quantizable weights and total graph nodes of their hand-built DAGs.
REFERENCE = {"dit-xl-2": (201, 369), "sd15": (294, 432), "pixart-alpha": (287, 568),
             "pixart-sigma": (287, 568), "hunyuan-dit": (474, 844), "sdxl": (803, 1316)}
SDXL_GOAL_S = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names (default: all)")
    parser.add_argument("--max-side", type=int, default=32)
    parser.add_argument("--figures", metavar="DIR", default=None,
                        help="also (re)draw the README figures into DIR (e.g. docs/img) and stop")
    args = parser.parse_args(argv)
    if args.figures:
        return draw_figures(args.figures)
    names = [n for n in args.only.split(",") if n] or list(KNOWN_ARCHITECTURES)

    header = (f"{'architecture':13s} {'class':26s} {'weights':>7s} {'ref':>4s} {'cats':>4s} "
              f"{'cat-fed':>7s} "
              f"{'nodes':>5s} {'ref':>5s} {'edges':>5s} {'build s':>7s} {'export s':>8s} "
              f"{'collapse s':>10s} {'coll/exp':>8s} {'GMACs':>7s}  ok")
    print(header)
    print("-" * len(header))
    ok_all = True
    rows = []
    for name in names:
        t0 = time.perf_counter()
        model = build_from_config(name, device="meta")
        inputs = example_input_spec(model, max_side=args.max_side)
        build_s = time.perf_counter() - t0
        traced = export_denoiser(model, inputs)
        result = build_dag(model, traced, name=name)
        g = result.graph
        problems = check_dag(g, quantizable_layers(model))
        ok_all &= not problems
        ref_w, ref_n = REFERENCE.get(name, (0, 0))
        cats, fed = len(skip_concats(g)), len(skip_concat_consumers(g))
        macs = sum(d["macs"] for _, d in g.nodes(data=True) if d["kind"] == "weight") / 1e9
        print(f"{name:13s} {type(model).__name__:26s} {g.graph['n_weight']:7d} {ref_w:4d} "
              f"{cats:4d} {fed:7d} {g.number_of_nodes():5d} {ref_n:5d} {g.number_of_edges():5d} "
              f"{build_s:7.2f} {result.export_s:8.2f} {result.collapse_s:10.3f} "
              f"{result.collapse_s / result.export_s:8.3f} {macs:7.1f}  "
              f"{'yes' if not problems else '; '.join(problems)}")
        rows.append({"architecture": name, "class": type(model).__name__, "weight_nodes": g.graph["n_weight"],
                     "reference_weights": ref_w, "skip_concats": cats, "concat_fed": fed,
                     "nodes": g.number_of_nodes(), "reference_nodes": ref_n, "edges": g.number_of_edges(),
                     "build_s": build_s, "export_s": result.export_s, "collapse_s": result.collapse_s,
                     "total_s": build_s + result.export_s + result.collapse_s, "gmacs": macs,
                     "problems": problems})
        if name == "sdxl":
            total = build_s + result.export_s + result.collapse_s
            print(f"{'':13s} sdxl total {total:.1f} s vs goal {SDXL_GOAL_S:.0f} s "
                  f"({total / SDXL_GOAL_S:.2f}x of the budget)")
    print(f"\nresolution traced: latent {args.max_side}x{args.max_side} (or sample_size if smaller), "
          f"batch 1, 77 text tokens unless the config fixes them; GMACs = quantizable layers only. "
          f"cats = skip concats; cat-fed = layers whose input is one (through norm/activation "
          f"only). The reference splits one layer per U-Net skip concat: weights + cats = ref.")
    write_result("graph", {"max_side": args.max_side, "sdxl_goal_s": SDXL_GOAL_S, "all_ok": ok_all, "rows": rows})
    return 0 if ok_all else 1


def draw_figures(out_dir: str) -> int:
    """README figures: the `digits` U-Net DAG and one block of the `digits-dit` DAG."""
    from pathlib import Path

    import torch

    from denoisers.digits import DigitsParams, build_model
    from graphs.draw import block_subgraph, draw_graph

    out = Path(out_dir)
    params = DigitsParams()
    torch.manual_seed(0)
    unet = build_model("unet", params).eval()
    g = build_dag(unet, name="digits").graph
    draw_graph(g, out / "graph_unet.png",
               title=f"digits U-Net (UNet2DModel, {params.resolution}x{params.resolution}, "
               f"channels {tuple(params.unet_channels)}): {g.graph['n_weight']} layers, "
               f"{g.graph['n_combine']} combine nodes")
    dit = build_model("dit", params).eval()
    g = build_dag(dit, name="digits-dit").graph
    draw_graph(block_subgraph(g, "transformer_blocks.1"), out / "graph_dit_block.png",
               prefix="transformer_blocks.1",
               title="digits-dit (DiTTransformer2DModel): block transformer_blocks.1")
    print(f"wrote {out / 'graph_unet.png'} and {out / 'graph_dit_block.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
