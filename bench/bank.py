"""Build the full 6-option bank of the SD v1.5 UNet architecture (random weights) on CPU.

Prints seconds and weights/second, against the reference system's procedure timed in the same
run on a sample of rows and extrapolated (it needed days per model: a sklearn fit per channel
and a per-element Python write-back).

    python bench/bank.py                 # full SD v1.5 UNet, all 6 options (several minutes on 2 cores)
    python bench/bank.py --layers 40     # only the first 40 layers
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quant.bank import build_bank  # noqa: E402
from quant.options import DEFAULT_OPTIONS  # noqa: E402


def sd15_unet() -> torch.nn.Module:
    from denoisers.architectures import build_from_config

    model = build_from_config("sd15", device="cpu")
    # Trained weights are heavy-tailed: Laplace with the fan-in scale of the default init.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                scale = 1.0 / max(1, p[0].numel()) ** 0.5
                p.copy_(torch.distributions.Laplace(0.0, scale).sample(p.shape))
    return model


class Subset(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, n: int) -> None:
        super().__init__()
        from quant.layers import quantizable_layers

        self.layers = torch.nn.ModuleList(list(quantizable_layers(model).values())[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=0, help="only the first N quantizable layers (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = sd15_unet()
    if args.layers:
        model = Subset(model, args.layers)
    t0 = time.perf_counter()
    bank = build_bank(model, DEFAULT_OPTIONS, model_name="sd15", progress=True)
    seconds = time.perf_counter() - t0
    n = sum(i.n_weights for i in bank.layers.values())
    per_method: dict[str, float] = {}
    for entries in bank.entries.values():
        for option, entry in entries.items():
            per_method[option] = per_method.get(option, 0.0) + entry.seconds
    print("seconds per option: " + ", ".join(f"{o} {s:.1f}" for o, s in per_method.items()))

    # Reference per-layer procedure on a sample: sklearn fit per channel + per-element write-back.
    from bench_reference import reference_seconds_per_weight  # noqa: E402

    ref = reference_seconds_per_weight()
    ref_total = ref * n * 4  # 4 k-means options; their UAQ is cheap by comparison, left out
    print(f"layers {len(bank.layers)}  weights {n:,}  options {len(DEFAULT_OPTIONS)}  "
          f"seconds {seconds:.1f}  weights/s {n * len(DEFAULT_OPTIONS) / seconds:,.0f}")
    print(f"reference procedure (extrapolated from a sample, k-means options only): {ref_total / 3600:.1f} h "
          f"-> ratio {ref_total / seconds:.0f}x")
    print(f"bank seconds={seconds:.1f} weights_per_s={n * len(DEFAULT_OPTIONS) / seconds:.0f} "
          f"vs_reference={ref_total / seconds:.0f}")


if __name__ == "__main__":
    main()
