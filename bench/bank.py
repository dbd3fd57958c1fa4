"""Build the full 6-option bank of a real UNet architecture (random weights): seconds, weights/s,
and the reference system's procedure timed on a sample in the same run and extrapolated (it
needed days per model: a sklearn fit per channel and a per-element Python write-back).

The weights are Laplace with the fan-in scale (trained weights are heavy-tailed), drawn from a
generator seeded per parameter, so every run quantizes the same tensors. Everything runs under
threadpoolctl's limit of `--threads` (BLAS and OpenMP pools) and torch.set_num_threads, with
OMP_WAIT_POLICY=PASSIVE unless set (see below); the pools and their kernels are printed and
stored with the machine's load, and the process's CPU seconds beside the wall seconds.

    python bench/bank.py                           # SD v1.5 UNet on CPU, all 6 options
    python bench/bank.py --layers 40               # only the first 40 quantizable layers
    python bench/bank.py --model sdxl --device cuda

Writes bench/results/bank_<model>_<device>.json (+ .log). Last line:
`bank seconds=<s> weights_per_s=<w> vs_reference=<r>`.
"""
from __future__ import annotations

import argparse
import os
import math
import sys
import time
from pathlib import Path

# Before torch/sklearn load libgomp: OpenMP threads that spin at barriers (libgomp's default)
# stall for whole scheduler slices when other processes share the cores, and both sides then
# time the machine's load, not their work (10-30x here). Passive waiting keeps the comparison
# fair on a shared machine; set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reference import (Tee, describe_threads, laplace, machine_conditions,  # noqa: E402
                             reference_seconds_per_weight, write_json)

from quant.bank import build_bank  # noqa: E402
from quant.layers import quantizable_layers  # noqa: E402
from quant.options import DEFAULT_OPTIONS  # noqa: E402


def random_unet(name: str, device: str) -> torch.nn.Module:
    """The architecture from its shipped config, every matrix/conv weight Laplace(0, 1/sqrt(fan_in))."""
    from denoisers.architectures import build_from_config

    model = build_from_config(name, device=device)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            if p.dim() > 1:
                p.copy_(laplace(tuple(p.shape), 1.0 / math.sqrt(max(1, p[0].numel())), seed=i, device=device))
    return model


class Subset(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, n: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(list(quantizable_layers(model).values())[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15", help="shipped architecture config: sd15, sdxl, ...")
    ap.add_argument("--layers", type=int, default=0, help="only the first N quantizable layers (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default bench/results/bank_<model>_<device>.json)")
    args = ap.parse_args()
    out = args.out or Path(__file__).resolve().parent / "results" / f"bank_{args.model}_{args.device}.json"
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads), Tee(out.with_suffix(".log")):
        run(args, out)


def run(args: argparse.Namespace, out: Path) -> None:
    cond = machine_conditions(args.threads)
    print("command: python bench/bank.py " + " ".join(sys.argv[1:]))
    print("threads: " + describe_threads(cond))
    t0 = time.perf_counter()
    model = random_unet(args.model, args.device)
    if args.layers:
        model = Subset(model, args.layers)
    print(f"model {args.model} built with Laplace weights in {time.perf_counter() - t0:.1f}s", flush=True)
    layers = quantizable_layers(model)
    var = {name: float(m.weight.detach().double().var()) for name, m in layers.items()}

    if args.device == "cuda":
        torch.cuda.synchronize()
    t0, cpu0 = time.perf_counter(), time.process_time()
    bank = build_bank(model, DEFAULT_OPTIONS, model_name=args.model, progress=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    n = sum(i.n_weights for i in bank.layers.values())
    per_option: dict[str, dict[str, float]] = {}
    for name, entries in bank.entries.items():
        w = bank.layers[name].n_weights
        for option, entry in entries.items():
            acc = per_option.setdefault(option, {"seconds": 0.0, "sq_err": 0.0, "sq_w": 0.0})
            acc["seconds"] += entry.seconds
            acc["sq_err"] += entry.mse * w
            acc["sq_w"] += var[name] * w
    options = {o: {"seconds": round(a["seconds"], 2), "relative_mse": a["sq_err"] / a["sq_w"]}
               for o, a in per_option.items()}
    print("seconds per option: " + ", ".join(f"{o} {v['seconds']:.1f}" for o, v in options.items()))
    print("MSE / weight variance: " + ", ".join(f"{o} {v['relative_mse']:.5f}" for o, v in options.items()))

    # Reference per-layer procedure on a sample: sklearn fit per channel + per-element write-back.
    ref = reference_seconds_per_weight()
    ref_total = ref * n * 4  # 4 k-means options; their UAQ is cheap by comparison, left out
    cond_after = machine_conditions(args.threads)
    print(f"layers {len(bank.layers)}  weights {n:,}  options {len(DEFAULT_OPTIONS)}  "
          f"seconds {seconds:.1f} ({seconds / 60:.1f} min, cpu {cpu_seconds:.0f}s)  "
          f"weights/s {n * len(DEFAULT_OPTIONS) / seconds:,.0f}")
    print(f"reference procedure (extrapolated from a sample, k-means options only): {ref_total / 3600:.1f} h "
          f"-> ratio {ref_total / seconds:.0f}x")
    print(f"load average before {cond['load_avg_1_5_15']} after {cond_after['load_avg_1_5_15']} "
          f"(other processes on these cores slow every step)")
    last = (f"bank seconds={seconds:.1f} weights_per_s={n * len(DEFAULT_OPTIONS) / seconds:.0f} "
            f"vs_reference={ref_total / seconds:.0f}")
    write_json(out, {
        "command": "python bench/bank.py " + " ".join(sys.argv[1:]),
        "machine": cond, "load_avg_after": cond_after["load_avg_1_5_15"],
        "model": args.model, "device": args.device, "layers": len(bank.layers), "weights": n,
        "options": options, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "reference_seconds_per_weight": ref, "reference_hours_extrapolated": ref_total / 3600,
        "vs_reference": ref_total / seconds, "last_line": last,
    })
    print(last)


if __name__ == "__main__":
    main()
