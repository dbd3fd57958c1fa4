"""A synthetic quant_cache with a KNOWN sensitivity structure, for tests, development and benches.

A real model (a diffusers `UNet2DModel`, untrained) gives a real bank and a real DAG; only the
FID is made up, as a known nonlinear function of the per-layer options:

    damage_l = s_l · m_l(method) · err_l(option) / err_l(worst option)     (in [0, s_l])
    D        = Σ_l damage_l  +  interaction (both time-embedding layers at the lowest bits)
    fid      = base + a · (exp(D / scale) − 1) + noise

with s_l large for the time embedding (×6), the output conv (×4), the input conv (×2), ResNet
convs (×1), attention (×0.3) and a UAQ preference (m = 0.7) in ResNet blocks, so the predictor's
findings can be checked against the truth (`true_sensitivity`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch



def layer_weight(name: str) -> float:
    """The synthetic sensitivity s_l of a layer (by its module path)."""
    if name.startswith("time_embedding"):
        return 6.0
    if name == "conv_out":
        return 4.0
    if name == "conv_in":
        return 2.0
    if ".attentions." in name:
        return 0.3
    if "time_emb_proj" in name:
        return 0.6
    return 1.0


def method_factor(name: str, option: str) -> float:
    """The method multiplier m_l: 0.7 for UAQ options in ResNet blocks (a UAQ preference), else 1."""
    return 0.7 if ".resnets." in name and option.startswith("uaq") else 1.0


@dataclass
class SyntheticTruth:
    """The known cost function of the synthetic cache (module docstring): base, a, scale, noise, ..."""

    base: float = 5.0
    a: float = 6.0
    scale: float = 0.0  # set from the layer count
    noise: float = 0.3
    interaction: float = 3.0

    def cost(self, config: dict[str, str], bank) -> float:
        """Noise-free synthetic FID of a config."""
        d = 0.0
        for name in bank.layers:
            opt = config.get(name, "fp16")
            if opt == "fp16":
                continue
            worst = max(bank.error(name, o) for o in bank.options)
            d += layer_weight(name) * method_factor(name, opt) * bank.error(name, opt) / worst
        low = min(int(o[-1]) for o in bank.options)
        te = [n for n in bank.layers if n.startswith("time_embedding")]
        if te and all(config.get(n, "fp16").endswith(str(low)) for n in te):
            d += self.interaction
        return self.base + self.a * (math.exp(d / self.scale) - 1.0)


def tiny_unet(channels: tuple[int, ...] = (16, 32), sample_size: int = 8, seed: int = 0):
    """A small class-conditional UNet2DModel like `digits` (attention at the low level)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    n = len(channels)
    return UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=1,
                       block_out_channels=tuple(channels), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
                       norm_num_groups=8, attention_head_dim=8, num_class_embeds=11).eval()


def make_synthetic(out_dir: str | Path, n_configs: int = 300, channels: tuple[int, ...] = (16, 32),
                   model_name: str = "synthetic", seed: int = 0, noise: float = 0.3,
                   options: tuple[str, ...] = ("uaq3", "uaq4", "kmc3", "kmc4", "kma3", "kma4"),
                   progress: bool = False) -> dict[str, Path]:
    """Write `bank/`, `graph.json` and `cache.parquet` under `out_dir`; returns their paths."""
    from graphs.dag import build_dag
    from graphs.io import write_graph
    from quant.bank import build_bank
    from sampling.cache import CACHE_SCHEMA, write_cache
    from sampling.sampler import random_configs

    out = Path(out_dir)
    model = tiny_unet(channels, seed=seed)
    bank = build_bank(model, options, model_name=model_name, progress=progress)
    bank.save(out / "bank")
    graph = build_dag(model, name=model_name).graph
    write_graph(graph, out / "graph.json")
    truth = SyntheticTruth(noise=noise, scale=0.5 * len(bank.layers))
    rng = np.random.default_rng(seed)
    rows = []
    for index, config in random_configs(model_name, list(bank.layers), options, seed, n_configs):
        stats = bank.summarize(config)
        fid = truth.cost(config.options, bank) + rng.normal(0.0, noise)
        canon = config.canonical_options()
        rows.append({"config_id": config.config_id, "model": model_name, "index": index,
                     "options": json.dumps(canon, separators=(",", ":")), "act_bits": None,
                     "avg_bits": stats.avg_bits, "quantized_bytes": float(stats.quantized_bytes),
                     "quantized_error": float(stats.quantized_error), "bops": float(stats.bops),
                     "fid": float(fid), "content": 0.9, "n_images": 100, "image_seed": 0,
                     "sample_seed": seed, "status": "ok", "reason": "", "attempts": 1, "seconds": 0.1,
                     "worker": "synthetic", "code_version": "synthetic"})
    rows.sort(key=lambda r: r["config_id"])
    write_cache(pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), out / "cache.parquet")
    return {"bank": out / "bank", "graph": out / "graph.json", "cache": out / "cache.parquet"}


def true_sensitivity(bank, reference: dict[str, str], truth: SyntheticTruth | None = None) -> dict[tuple[str, str], float]:
    """Noise-free Δfid of every (layer, option) against `reference` under the synthetic truth."""
    truth = truth or SyntheticTruth(scale=0.5 * len(bank.layers))
    base = truth.cost(reference, bank)
    out = {}
    for name in bank.layers:
        for o in bank.options:
            cfg = dict(reference)
            cfg[name] = o
            out[(name, o)] = truth.cost(cfg, bank) - base
    return out

