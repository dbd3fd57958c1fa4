"""What a bank of a big denoiser costs, estimated on the `meta` device (no weights, no GPU).

    python -m denoisers.estimate flux-dev [--dtype bf16] [--options uaq3,uaq4,kmc3,kmc4,kma3,kma4]
    python -m denoisers.estimate path/to/transformer/config.json

The model is built from its config under `torch.device("meta")` (parameters have shapes, no
storage), so a 12B transformer costs nothing to inspect. Printed:

- parameters, quantizable layers and their weights (exact, from the meta model);
- `resident`: the denoiser's weights on the device in `--dtype` (what `qsens bank build
  --device cuda` keeps there the whole time);
- `per-layer peak`: the largest layer's working set while its options are quantized, from what
  `quant.bank.build_bank` allocates: the float32 copy of the weight (4 B/weight), the codes of
  this option and of the previous one (uint8, 1 + 1 B), the float32 dequantized weight and its
  difference (4 + 4 B), the float64 difference and its square for the MSE (8 + 8 B) = 30 B per
  weight, plus the row-chunk temporaries of the quantizers (`quant.quantizers._CHUNK_ELEMENTS`
  float32 elements × 18 copies at most);
- `bank build peak` = resident + per-layer peak: the GPU memory one bank build needs;
- the bank's size on disk (payload + overhead of every option, `quant.accounting.layer_bits`).

An estimate, not a measurement: allocator caching and fragmentation come on top (allow ~10%).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# FLUX.1-dev's transformer (black-forest-labs/FLUX.1-dev, transformer/config.json)
FLUX_DEV = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64,
            "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
KNOWN = {"flux-dev": FLUX_DEV}
BYTES_PER_WEIGHT_IN_FLIGHT = 4 + 1 + 1 + 4 + 4 + 8 + 8  # see the module docstring
CHUNK_COPIES = 18
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def meta_model(config: dict):
    """The diffusers model of a config dict (`_class_name` + kwargs), built on the `meta` device."""
    import diffusers

    cls = getattr(diffusers, config["_class_name"])
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return cls(**kwargs)


def estimate(config: dict, dtype: str = "bf16", options: str = "uaq3,uaq4,kmc3,kmc4,kma3,kma4") -> dict:
    """Estimate a bank's cost for a model config: parameters, layers, resident and per-layer peak
    memory in `dtype` and the bank's size for `options` (module docstring); a JSON-able dict.
    """
    from quant.accounting import layer_bits
    from quant.layers import layer_infos, quantizable_layers
    from quant.options import parse_options
    from quant.quantizers import _CHUNK_ELEMENTS

    model = meta_model(config)
    params = sum(p.numel() for p in model.parameters())
    layers = quantizable_layers(model)
    infos = layer_infos(model, None)
    largest = max(infos, key=lambda i: i.n_weights)
    q_weights = sum(i.n_weights for i in infos)
    resident = params * DTYPE_BYTES[dtype]
    per_layer = largest.n_weights * BYTES_PER_WEIGHT_IN_FLIGHT + _CHUNK_ELEMENTS * 4 * CHUNK_COPIES
    opts = parse_options(options.split(",") if isinstance(options, str) else options)
    bank_bits = sum(layer_bits(o, i) for o in opts for i in infos)
    gib = 1024 ** 3
    return {"model": config["_class_name"], "parameters": params, "quantizable_layers": len(layers),
            "quantizable_weights": q_weights, "largest_layer": largest.name,
            "largest_layer_weights": largest.n_weights, "dtype": dtype,
            "resident_gib": resident / gib, "per_layer_peak_gib": per_layer / gib,
            "bank_build_peak_gib": (resident + per_layer) / gib,
            "options": [str(o) for o in opts], "bank_on_disk_gib": bank_bits / 8 / gib}


def main(argv: list[str] | None = None) -> int:
    """`python -m denoisers.estimate`: print the estimate (or `--json`); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m denoisers.estimate", description=__doc__.splitlines()[0])
    p.add_argument("model", help=f"{', '.join(KNOWN)} or a diffusers model config.json")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES))
    p.add_argument("--options", default="uaq3,uaq4,kmc3,kmc4,kma3,kma4")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.model in KNOWN:
        config = KNOWN[args.model]
    else:
        path = Path(args.model)
        if not path.is_file():
            print(f"error: {args.model}: not one of {', '.join(KNOWN)} and not a file", file=sys.stderr)
            return 2
        config = json.loads(path.read_text())
    r = estimate(config, args.dtype, args.options)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['model']}: {r['parameters'] / 1e9:.2f}B parameters, {r['quantizable_layers']} quantizable "
          f"layers ({r['quantizable_weights'] / 1e9:.2f}B weights); largest {r['largest_layer']} "
          f"({r['largest_layer_weights'] / 1e6:.1f}M)")
    print(f"resident weights ({r['dtype']}): {r['resident_gib']:.1f} GiB; per-layer peak: "
          f"{r['per_layer_peak_gib']:.2f} GiB; bank build peak: {r['bank_build_peak_gib']:.1f} GiB")
    print(f"bank on disk ({','.join(r['options'])}): {r['bank_on_disk_gib']:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
