"""GPU benchmark: bank build, FP vs quantized images/s, apply/restore overhead and seconds per
scored config, for full-size SD v1.5 (512 px) and PixArt-Σ (1024 px) with random weights, fp16.

Nothing is downloaded. Every component is built from config dicts: the UNet / transformer from
denoisers/configs (sd15, pixart-sigma), SD's AutoencoderKL and CLIP ViT-L/14 text encoder inline
(real sizes). There is no tokenizer (its vocab files cannot be had offline): the pipelines get
fixed random prompt embeddings instead of text, SD (B, 77, 768) and PixArt-Σ T5 (B, 300, 4096)
with attention masks, so no text encoder runs (SD's is built, for its memory; PixArt-Σ gets
none). Text encoding is not timed: the adapter caches it once per prompt set in real runs too. Denoiser weights are
Laplace with the fan-in scale (trained weights are heavy-tailed, as in bench/bank.py).

Per model: build; warm-up (one batch, 2 steps); FP images/s through `DiffusersPipelineDenoiser.
generate` (batch 8, 20 steps, classifier-free guidance, so the denoiser sees 16); the 6-option
bank built on the GPU in 16 interleaved layer groups (if the time allowance runs out, the groups
built are timed and the whole bank extrapolated by weight count, and the output says so); one
random config applied with `quant.apply.quantized(..., verify=False)` as the sampling worker
does, apply / generate / restore timed; seconds per scored config at 1,000 images extrapolated
from the quantized images/s plus apply + restore (scoring itself is not included).

    python bench/gpu.py                  # CUDA: everything, about 3-4 min on an H200
    python bench/gpu.py --budget-s 200   # start no measurement estimated to end past 200 s
    python bench/gpu.py --cpu-smoke      # the same code paths on CPU, fp32, tiny models (seconds)

Needs diffusers and transformers (a machine without diffusers can take its py3-none-any wheel).

Without CUDA (and without --cpu-smoke) it measures nothing and exits 0. The JSON
(bench/results/gpu.json) is rewritten after every step, so a run cut short leaves what it had.
Last line: `gpu sd15_img_s=<x> pixart_img_s=<y> quant_overhead_ratio=<z> bank_s=<w>` (SD v1.5's
apply+restore over one batch's generation time, SD v1.5's whole-bank seconds).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

T_START = time.perf_counter()  # the budget counts imports too

# Repo root first: the GPU machine has the working tree but no installed qsens.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import command_line, machine_info  # noqa: E402  (bench/machine.py)

OPTIONS = ("uaq3", "uaq4", "kmc3", "kmc4", "kma3", "kma4")
BANK_GROUPS = 16
SCORED_IMAGES = 1000
APPLY_WEIGHTS_PER_S = 20e6  # budget guess for apply + restore (CPU unpacking); ~30e6 on one slow core
NOTE = ("random weights; no tokenizer or text-encoder weights: pipelines get fixed random prompt "
        "embeddings (SD v1.5 CLIP (B, 77, 768); PixArt-Sigma T5 (B, 300, 4096) + attention masks), "
        "so text encoding is not timed; scoring (Inception / CLIP features, FID) is not included")

# ---------------------------------------------------------------------------------------------
# component configs (real sizes; the hub's config.json values)
# ---------------------------------------------------------------------------------------------
# runwayml/stable-diffusion-v1-5 vae/config.json; PixArt-Σ uses the SDXL VAE: same architecture,
# another latent scaling factor.
SD_VAE: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
SDXL_VAE = SD_VAE | {"sample_size": 1024, "scaling_factor": 0.13025}
# openai/clip-vit-large-patch14 text model (what SD v1.5's text_encoder is).
CLIP_TEXT: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SD_SCHEDULER: dict[str, Any] = {  # PNDMScheduler, SD v1.5 scheduler_config.json
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
}
PIXART_SCHEDULER: dict[str, Any] = {  # DPMSolverMultistepScheduler, PixArt-Σ scheduler_config.json
    "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "solver_order": 2, "algorithm_type": "dpmsolver++",
    "lower_order_final": True,
}
T5_TOKENS, T5_WIDTH = 300, 4096  # PixArt-Σ's max_sequence_length and T5-XXL's width
CLIP_TOKENS = 77

# --cpu-smoke: the same dicts shrunk (few channels, one layer per block, tiny latent).
TINY_UNET = {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
             "attention_head_dim": 2, "cross_attention_dim": 16, "sample_size": 8}
TINY_VAE = {"block_out_channels": [16, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 8,
            "sample_size": 16}
TINY_CLIP = {"vocab_size": 1000, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "projection_dim": 16}
TINY_PIXART = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8,
               "cross_attention_dim": 16, "caption_channels": 32, "sample_size": 8}


class Clock:
    """Seconds since the script started, against the --budget-s soft limit."""

    def __init__(self, budget_s: float):
        self.budget_s = float(budget_s)

    def elapsed(self) -> float:
        return time.perf_counter() - T_START

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:5.0f} s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# pipelines with precomputed prompt embeddings
# ---------------------------------------------------------------------------------------------
class EmbeddedPrompts:
    """A diffusers pipeline that takes prompt names `"p{i}"` and feeds row i of fixed embeddings.

    `DiffusersPipelineDenoiser` encodes prompts with the pipeline's own tokenizer and text
    encoder (`encode_prompt`), and takes no precomputed embeddings. This stand-in forwards every
    attribute to the real pipeline (so the adapter finds its unet/transformer and device) but is
    not one of the pipeline classes the adapter encodes for, so the adapter calls it with
    `prompt=[...]`, which it swaps for the rows of `embeds` ({pipeline kwarg: (P, ...) tensor}).
    """

    def __init__(self, pipe: Any, embeds: dict[str, torch.Tensor], extra: dict[str, Any] | None = None):
        self.pipe, self.embeds, self.extra = pipe, embeds, dict(extra or {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["pipe"], name)

    def __call__(self, prompt: list[str] | None = None, **kwargs: Any) -> Any:
        rows = torch.tensor([int(p[1:]) for p in prompt])
        kwargs.update({k: v[rows.to(v.device)] for k, v in self.embeds.items()}, **self.extra)
        return self.pipe(**kwargs)


@torch.no_grad()
def laplace_(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight with dim > 1 ~ Laplace(0, 1/sqrt(fan_in)), sampled on the model's device
    by the inverse CDF (x = -b·sign(u)·log(1 - 2|u|), u ~ U(-1/2, 1/2))."""
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    for p in model.parameters():
        if p.dim() > 1:
            u = torch.rand(p.shape, generator=g, device=device, dtype=torch.float32) - 0.5
            u = u.clamp(-0.5 + 1e-7, 0.5 - 1e-7)
            b = 1.0 / max(1, p[0].numel()) ** 0.5
            p.copy_(-b * torch.sign(u) * torch.log1p(-2 * u.abs()))


def build_sd15(device: torch.device, dtype: torch.dtype, smoke: bool, prompts: int) -> tuple[Any, dict]:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from denoisers.architectures import build_from_config, load_architecture_config

    unet_cfg = load_architecture_config("sd15") | (TINY_UNET if smoke else {})
    vae_cfg = SD_VAE | (TINY_VAE if smoke else {})
    clip_cfg = CLIP_TEXT | (TINY_CLIP if smoke else {})
    unet = build_from_config(unet_cfg, device=str(device))
    laplace_(unet)
    with torch.device(device):
        vae = AutoencoderKL.from_config(vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**clip_cfg))
    pipe = StableDiffusionPipeline(
        vae=vae.to(device, dtype), text_encoder=text.to(device, dtype), tokenizer=None,
        unet=unet.to(device, dtype), scheduler=PNDMScheduler.from_config(SD_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator(device).manual_seed(1)
    width = clip_cfg["hidden_size"]
    cond = torch.randn((prompts, CLIP_TOKENS, width), generator=g, device=device).to(dtype)
    neg = torch.randn((1, CLIP_TOKENS, width), generator=g, device=device).to(dtype).expand(prompts, -1, -1)
    embeds = {"prompt_embeds": cond, "negative_prompt_embeds": neg.contiguous()}
    px = unet_cfg["sample_size"] * pipe.vae_scale_factor
    return EmbeddedPrompts(pipe, embeds), {"resolution": px, "latent": unet_cfg["sample_size"],
                                           "guidance": 7.5, "scheduler": "PNDMScheduler"}


def build_pixart(device: torch.device, dtype: torch.dtype, smoke: bool, prompts: int,
                 px: int) -> tuple[Any, dict]:
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline

    from denoisers.architectures import build_from_config, load_architecture_config

    cfg = load_architecture_config("pixart-sigma") | (TINY_PIXART if smoke else {})
    vae_cfg = SDXL_VAE | (TINY_VAE if smoke else {})
    transformer = build_from_config(cfg, device=str(device))
    laplace_(transformer)
    with torch.device(device):
        vae = AutoencoderKL.from_config(vae_cfg)
    pipe = PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=vae.to(device, dtype),
                               transformer=transformer.to(device, dtype),
                               scheduler=DPMSolverMultistepScheduler.from_config(PIXART_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    if smoke:
        px = cfg["sample_size"] * pipe.vae_scale_factor
    g = torch.Generator(device).manual_seed(2)
    width = cfg["caption_channels"]
    cond = torch.randn((prompts, T5_TOKENS, width), generator=g, device=device).to(dtype)
    lengths = torch.randint(8, 121, (prompts,), generator=g, device=device)  # tokens per prompt
    mask = (torch.arange(T5_TOKENS, device=device)[None] < lengths[:, None]).to(torch.long)
    neg = torch.randn((1, T5_TOKENS, width), generator=g, device=device).to(dtype).expand(prompts, -1, -1)
    neg_mask = torch.zeros((prompts, T5_TOKENS), dtype=torch.long, device=device)
    neg_mask[:, 0] = 1  # "" tokenizes to one token (</s>)
    embeds = {"prompt_embeds": cond, "prompt_attention_mask": mask,
              "negative_prompt_embeds": neg.contiguous(), "negative_prompt_attention_mask": neg_mask}
    # negative_prompt defaults to "" and may not come with negative_prompt_embeds; binning would
    # map any size to the 1024 bins of this config, so it is off and the size is set explicitly.
    extra = {"negative_prompt": None, "use_resolution_binning": False}
    return EmbeddedPrompts(pipe, embeds, extra), {"resolution": px, "latent": px // pipe.vae_scale_factor,
                                                  "guidance": 4.5, "scheduler": "DPMSolverMultistepScheduler"}


# ---------------------------------------------------------------------------------------------
# the bank, in interleaved layer groups
# ---------------------------------------------------------------------------------------------
def layer_view(model: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    """A module tree holding only `names` (the model's own modules) under the same qualified
    names, so a bank built from it has the model's layer names and fingerprints."""
    modules = dict(model.named_modules())
    root = torch.nn.Module()
    for name in names:
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, torch.nn.Module())
            parent = parent._modules[part]
        parent.add_module(leaf, modules[name])
    return root


def build_bank_groups(model: torch.nn.Module, options: tuple[str, ...], name: str, device: torch.device,
                      deadline: float, clock: Clock) -> tuple[Any, dict]:
    """`build_bank` over BANK_GROUPS interleaved layer groups (names[j::G]) until `deadline`
    (clock seconds; at least one group). Returns the merged bank of the layers built and timings."""
    from quant.bank import Bank, build_bank
    from quant.layers import quantizable_layers

    layers = quantizable_layers(model)
    names = list(layers)
    total_w = sum(m.weight.numel() for m in layers.values())
    parts, seconds, groups = [], 0.0, 0
    for j in range(BANK_GROUPS):
        group = names[j::BANK_GROUPS]
        if not group:
            continue
        if groups and clock.elapsed() >= deadline:
            break
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            parts.append(build_bank(layer_view(model, group), options, model_name=name,
                                    device=device, progress=False))
        sync(device)
        seconds += time.perf_counter() - t0
        groups += 1
    layers_built = {n: info for p in parts for n, info in p.layers.items()}
    bank = Bank(name, parts[0].options, {n: layers_built[n] for n in names if n in layers_built},
                {n: e for p in parts for n, e in p.entries.items()},
                {n: f for p in parts for n, f in p.layer_fingerprints.items()},
                _tensors={k: v for p in parts for k, v in p._tensors.items()})
    built_w = sum(i.n_weights for i in bank.layers.values())
    per_option = {o: round(sum(e[o].seconds for e in bank.entries.values()), 3) for o in bank.options}
    full_s = seconds * total_w / built_w
    info = {
        "options": list(bank.options), "groups_built": groups, "groups": BANK_GROUPS,
        "layers_built": len(bank.layers), "layers_total": len(names),
        "weights_built": built_w, "weights_total": total_w, "seconds_measured": round(seconds, 3),
        "extrapolated": built_w < total_w, "seconds_full": round(full_s, 3),
        "weight_options_per_s": round(built_w * len(bank.options) / seconds, 1),
        "per_option_seconds_measured": per_option,
        "how": ("all layers" if built_w == total_w else
                f"{groups}/{BANK_GROUPS} interleaved layer groups timed; whole bank extrapolated "
                "by weight count"),
    }
    return bank, info


# ---------------------------------------------------------------------------------------------
# one model
# ---------------------------------------------------------------------------------------------
def bench_model(key: str, make: Callable[[], tuple[Any, dict]], args: argparse.Namespace,
                device: torch.device, clock: Clock, results: dict, save: Callable[[], None],
                reserve_s: float) -> None:
    """Build, warm up, FP images/s, bank, quantized images/s + apply/restore for one model.
    `reserve_s`: seconds of budget to leave for what runs after this model."""
    from denoisers.pipeline import DiffusersPipelineDenoiser
    from quant.apply import quantized
    from quant.config import QuantConfig
    from quant.layers import quantizable_layers, weight_digest
    from sampling.sampler import random_config

    r: dict[str, Any] = {"status": "started"}
    results[key] = r
    skipped = results.setdefault("skipped", [])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    pipe, meta = make()
    sync(device)
    r.update(meta, build_s=round(time.perf_counter() - t0, 3))
    bs, steps = args.batch_size, args.steps
    den = DiffusersPipelineDenoiser(
        pipe, key, prompts=[f"p{i}" for i in range(bs)], steps=steps, guidance=meta["guidance"],
        batch_size=bs, call_kwargs={"height": meta["resolution"], "width": meta["resolution"]})
    model = den.model
    qlayers = quantizable_layers(model)
    r.update(denoiser=type(model).__name__, dtype=str(next(model.parameters()).dtype),
             n_layers=len(qlayers), n_weights=sum(m.weight.numel() for m in qlayers.values()),
             batch_size=bs, cfg_batch=2 * bs, steps=steps)
    log(f"[{key}] built in {r['build_s']:.1f} s: {r['denoiser']} {r['n_layers']} layers "
        f"{r['n_weights']:,} weights, {meta['resolution']} px (latent {meta['latent']}), "
        f"batch {bs} (x2 CFG), {steps} steps, guidance {meta['guidance']}")
    save()

    def generate(n: int, seed: int, steps_: int | None = None) -> tuple[Any, float]:
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            gen = den.generate(n, seed, steps=steps_)
        sync(device)
        return gen, time.perf_counter() - t

    # warm-up: same shapes, 2 steps (kernel selection, allocator)
    warm_steps = min(2, steps)
    _, warm_s = generate(bs, seed=1, steps_=warm_steps)
    # a conservative batch estimate: the warm-up's per-step time includes the VAE decode and first calls
    est_batch = warm_s / warm_steps * steps
    r.update(warmup_s=round(warm_s, 3), est_batch_s=round(est_batch, 3))
    log(f"[{key}] warm-up ({warm_steps} steps) {warm_s:.1f} s; estimated batch {est_batch:.1f} s")
    save()

    n_batches = args.sd_batches if key == "sd15" else args.pixart_batches
    n = n_batches * bs
    if clock.left() - reserve_s < n * est_batch / bs:
        skipped.append(f"{key}: FP generation (budget)")
        r["status"] = "partial"
        save()
        return
    fp_gen, fp_s = generate(n, seed=0)
    r["fp"] = {"images": n, "seconds": round(fp_s, 3), "img_s": round(n / fp_s, 4),
               "batch_s": round(fp_s / n_batches, 4), "nonfinite": fp_gen.n_nonfinite}
    log(f"[{key}] FP: {n} images in {fp_s:.2f} s = {n / fp_s:.3f} img/s ({fp_s / n_batches:.2f} s/batch)")
    save()

    # bank: whatever the budget allows now, keeping time for the quantized run and what follows
    # (applying a config dequantizes the bank on the CPU: assume APPLY_WEIGHTS_PER_S)
    quant_est = fp_s * 1.1 + r["n_weights"] / APPLY_WEIGHTS_PER_S + 5.0
    allowance = min(args.bank_cap_s[key], clock.left() - reserve_s - quant_est)
    if allowance <= 0:
        skipped.append(f"{key}: bank and quantized generation (budget)")
        r["status"] = "partial"
        save()
        return
    bank, binfo = build_bank_groups(model, tuple(args.options), key, device,
                                    deadline=clock.elapsed() + allowance, clock=clock)
    r["bank"] = binfo
    log(f"[{key}] bank: {binfo['layers_built']}/{binfo['layers_total']} layers, "
        f"{binfo['weights_built']:,} weights x {len(binfo['options'])} options in "
        f"{binfo['seconds_measured']:.1f} s = {binfo['weight_options_per_s']:,.0f} weight-options/s; "
        f"whole bank {binfo['seconds_full']:.1f} s" + (" (extrapolated)" if binfo["extrapolated"] else ""))
    save()

    quant_est = fp_s * 1.1 + binfo["weights_built"] / APPLY_WEIGHTS_PER_S + 5.0
    if clock.left() - reserve_s < quant_est:
        skipped.append(f"{key}: quantized generation (budget)")
        r["status"] = "partial"
        save()
        return
    config = QuantConfig(key, random_config(bank.layer_names, bank.options, seed=0, index=0))
    stats = bank.summarize(config)
    names = bank.layer_names
    probe = [names[0], names[len(names) // 2], names[-1]]
    before = {p: weight_digest(qlayers[p].weight) for p in probe}
    sync(device)
    t0 = time.perf_counter()
    with quantized(model, config, bank, verify=False):  # as the sampling worker applies configs
        sync(device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            q_gen = den.generate(n, seed=0)
        sync(device)
        t2 = time.perf_counter()
        changed = sum(weight_digest(qlayers[p].weight) != before[p] for p in probe)
        t2_end = time.perf_counter()  # the probe's hashing is no part of restore
    sync(device)
    t3 = time.perf_counter()
    restored = all(weight_digest(qlayers[p].weight) == before[p] for p in probe)
    apply_s, q_s, restore_s = t1 - t0, t2 - t1, t3 - t2_end
    scale = binfo["weights_total"] / binfo["weights_built"]
    overhead_full = (apply_s + restore_s) * scale
    batch_s = fp_s / n_batches
    diff = float(np.abs(q_gen.images.astype(np.int16) - fp_gen.images.astype(np.int16)).mean())
    q_img_s = n / q_s
    r["quant"] = {
        "config_id": config.config_id, "avg_bits": round(stats.avg_bits, 4),
        "layers_quantized": len(config.canonical_options()), "apply_s": round(apply_s, 4),
        "restore_s": round(restore_s, 4), "apply_restore_s_full": round(overhead_full, 4),
        "apply_restore_extrapolated": scale > 1, "images": n, "seconds": round(q_s, 3),
        "img_s": round(q_img_s, 4), "nonfinite": q_gen.n_nonfinite,
        "mean_abs_pixel_diff_vs_fp": round(diff, 3), "probe_layers_changed": int(changed),
        "weights_restored_bit_exact": bool(restored),
    }
    r["quant_overhead_ratio"] = round(overhead_full / batch_s, 4)
    r["img_s_ratio_quant_over_fp"] = round(q_img_s / r["fp"]["img_s"], 4)
    r["config_s_1000_images"] = {
        "seconds": round(SCORED_IMAGES / q_img_s + overhead_full, 2),
        "generate_s": round(SCORED_IMAGES / q_img_s, 2), "apply_restore_s": round(overhead_full, 3),
        "extrapolated": True,
        "how": f"{SCORED_IMAGES} / measured quantized img/s + apply + restore; scoring not included",
    }
    # the same config as packed layers: codes + params moved to the device, decoded there in every
    # forward (eager and under torch.compile), applied by swapping modules, restored by swapping back
    captured = capture_forward_inputs(model, lambda: generate(bs, seed=0, steps_=1))
    r["packed"] = packed_comparison(model, bank, config, device, captured, batch_s=fp_s / n_batches,
                                    compile_backend="eager" if device.type == "cpu" else "inductor")
    log(f"[{key}] packed: apply {r['packed']['apply_s']:.3f} s + restore {r['packed']['restore_s']:.3f} s "
        f"= {r['packed']['apply_restore_over_batch']:.3f}x one batch; forward FP {r['packed']['forward_fp_s']:.4f} s, "
        f"packed {r['packed']['forward_packed_s']:.4f} s ({r['packed']['packed_vs_fp_forward']:.3f}x), compiled "
        f"{r['packed'].get('forward_packed_compiled_s', math.nan):.4f} s "
        f"({r['packed'].get('packed_compiled_vs_fp_forward', math.nan):.3f}x)")
    save()
    r["status"] = "ok"
    if device.type == "cuda":
        r["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    log(f"[{key}] quantized ({stats.avg_bits:.2f} bits, {len(config.canonical_options())} layers): "
        f"apply {apply_s:.2f} s, restore {restore_s:.2f} s"
        + (f" (whole model {overhead_full:.2f} s, extrapolated)" if scale > 1 else "")
        + f"; {q_img_s:.3f} img/s; overhead/batch {r['quant_overhead_ratio']:.3f}; "
        f"restored {restored}; mean |dpixel| vs FP {diff:.2f}")
    log(f"[{key}] one scored config at {SCORED_IMAGES} images x {steps} steps (extrapolated): "
        f"{r['config_s_1000_images']['seconds']:.1f} s")
    save()
    del bank, den, pipe, model, qlayers, fp_gen, q_gen


def capture_forward_inputs(model: torch.nn.Module, run: Callable[[], Any]) -> tuple[tuple, dict]:
    """(args, kwargs) of the first forward of `model` while `run()` runs (a real sampler step's
    inputs: CFG batch, latents, time step, text states)."""
    seen: list = []

    def hook(_m, args, kwargs):
        if not seen:
            seen.append((args, dict(kwargs)))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def packed_comparison(model: torch.nn.Module, bank, config, device: torch.device, inputs: tuple[tuple, dict],
                      batch_s: float, compile_backend: str = "inductor", repeats: int = 3) -> dict[str, Any]:
    """Packed layers on `device` against the FP model, on one denoiser forward.

    apply: `quant.pack` (the bank's packed codes and fp16 params copied to the device, no
    unpacking on the CPU); restore: the FP modules swapped back. Forward: best of `repeats` for FP,
    packed eager and packed under torch.compile (`compile_backend`; "eager" for a CPU dry run).
    Returns seconds and ratios; apply + restore over `batch_s` (one generation batch)."""
    from quant.layers import quantizable_layers
    from quant.pack import _replace, pack, packed_layers

    args, kwargs = inputs
    originals = quantizable_layers(model)

    def forward(m) -> tuple[Any, float]:
        best, out = math.inf, None
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            with torch.inference_mode():
                out = m(*args, **kwargs)
            sync(device)
            best = min(best, time.perf_counter() - t)
        return out, best

    fp_out, fp_s = forward(model)
    sync(device)
    t0 = time.perf_counter()
    pack(model, config, bank, verify=False)
    sync(device)
    apply_s = time.perf_counter() - t0
    layers = packed_layers(model)
    on_device = all(m.codes.device.type == device.type for m in layers.values() if "codes" in m._buffers)
    out: dict[str, Any] = {"apply_s": apply_s, "codes_on_device": on_device, "layers_packed": len(layers),
                           "forward_fp_s": fp_s, "compile_backend": compile_backend}
    try:
        p_out, p_s = forward(model)
        out["forward_packed_s"] = p_s
        out["packed_vs_fp_forward"] = p_s / fp_s
        first = lambda o: o[0] if isinstance(o, (tuple, list)) else getattr(o, "sample", o)  # noqa: E731
        out["max_abs_diff_vs_fp"] = float((first(p_out).float() - first(fp_out).float()).abs().max())
        try:
            import torch._dynamo as dynamo  # (a plain `import torch._dynamo` would make `torch` local here)

            dynamo.reset()
            compiled = torch.compile(model, backend=compile_backend)
            sync(device)
            t = time.perf_counter()
            with torch.inference_mode():
                c_out = compiled(*args, **kwargs)
            sync(device)
            out["compile_s"] = time.perf_counter() - t
            _, c_s = forward(compiled)
            out["forward_packed_compiled_s"] = c_s
            out["packed_compiled_vs_fp_forward"] = c_s / fp_s
            out["compiled_max_abs_diff_vs_eager"] = float((first(c_out).float() - first(p_out).float()).abs().max())
        except Exception as exc:  # a compile failure is a result to store, not a crash
            out["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    finally:
        sync(device)
        t0 = time.perf_counter()
        current = quantizable_layers(model)
        _replace(model, {id(current[n]): originals[n] for n in current if current[n] is not originals[n]})
        sync(device)
        out["restore_s"] = time.perf_counter() - t0
    out["restored"] = all(a is b for a, b in zip(quantizable_layers(model).values(), originals.values()))
    out["apply_restore_over_batch"] = (out["apply_s"] + out["restore_s"]) / batch_s
    out["batch_s"] = batch_s
    return out


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run every code path on CPU in fp32 with tiny models (2 images, 2 options)")
    ap.add_argument("--budget-s", type=float, default=210.0,
                    help="start no measurement that would end past this many seconds after start "
                         "(estimated; default 210)")
    ap.add_argument("--out", default=None,
                    help="results JSON (default bench/results/gpu.json; --cpu-smoke: gpu_cpu_smoke.json)")
    ap.add_argument("--batch-size", type=int, default=None, help="images per pipeline call (default 8)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 20)")
    ap.add_argument("--sd-batches", type=int, default=None, help="timed batches, SD v1.5 (default 3)")
    ap.add_argument("--pixart-batches", type=int, default=1, help="timed batches, PixArt-Σ (default 1)")
    ap.add_argument("--pixart-px", type=int, default=1024, choices=(1024, 512),
                    help="PixArt-Σ output size (native 1024; 512 if 1024 does not fit the budget)")
    ap.add_argument("--sd-bank-cap-s", type=float, default=60.0, help="bank time allowance, SD v1.5")
    ap.add_argument("--pixart-bank-cap-s", type=float, default=40.0, help="bank time allowance, PixArt-Σ")
    ap.add_argument("--models", nargs="+", default=["sd15", "pixart_sigma"], choices=("sd15", "pixart_sigma"))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: bench/gpu.py measures nothing here")
        return
    smoke = args.cpu_smoke
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.float16
    args.batch_size = args.batch_size or (2 if smoke else 8)
    args.steps = args.steps or (2 if smoke else 20)
    args.sd_batches = args.sd_batches or (1 if smoke else 3)
    args.options = list(OPTIONS[:1] + OPTIONS[2:3]) if smoke else list(OPTIONS)  # smoke: uaq3, kmc3
    args.bank_cap_s = {"sd15": args.sd_bank_cap_s, "pixart_sigma": args.pixart_bank_cap_s}
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or ROOT / "bench" / "results" / ("gpu_cpu_smoke.json" if smoke else "gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.budget_s)

    import diffusers
    import transformers

    # The per-module "should be kept in float32" notes of `.to(dtype)` and the tiny configs'
    # deprecation notes are noise here.
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    if smoke:  # diffusers warns that a sample_size under 64 is unlikely for SD
        warnings.filterwarnings("ignore", category=FutureWarning)

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_smoke": smoke, "dtype": str(dtype), "torch": torch.__version__,
        "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    results: dict[str, Any] = {"note": NOTE, "env": env, "budget_s": args.budget_s, "complete": False,
                               "skipped": [], "options": args.options,
                               "command": command_line(), "machine": machine_info()}  # bench/machine.py

    def save() -> None:
        results["elapsed_s"] = round(clock.elapsed(), 2)
        out.write_text(json.dumps(results, indent=1) + "\n")

    log(f"gpu bench on {env['device']} ({'CPU smoke, tiny models' if smoke else 'full-size models'}), "
        f"dtype {dtype}, torch {env['torch']} (CUDA {env['cuda']}), diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}; budget {args.budget_s:.0f} s")
    log(f"note: {NOTE}")
    save()

    prompts = args.batch_size
    makers = {
        "sd15": lambda: build_sd15(device, dtype, smoke, prompts),
        "pixart_sigma": lambda: build_pixart(device, dtype, smoke, prompts, args.pixart_px),
    }
    # what to leave for the models after this one: PixArt-Σ without its bank needs about a minute
    reserve = {"sd15": 75.0 if "pixart_sigma" in args.models and not smoke else 0.0, "pixart_sigma": 0.0}
    start_min_s = 5.0 if smoke else 45.0  # build + warm-up + one FP batch of PixArt-Σ at 1024 px
    for key in args.models:
        if clock.left() < start_min_s:
            results["skipped"].append(f"{key}: not started (budget)")
            continue
        bench_model(key, makers[key], args, device, clock, results, save, reserve[key])
        free(device)
    results["complete"] = not results["skipped"] and all(
        results.get(k, {}).get("status") == "ok" for k in args.models)
    save()

    def get(key: str, *path: str) -> float:
        d: Any = results.get(key, {})
        for p in path:
            d = d.get(p, {}) if isinstance(d, dict) else {}
        return float(d) if isinstance(d, (int, float)) else math.nan

    log(f"wrote {out} ({clock.elapsed():.0f} s)")
    print(f"gpu sd15_img_s={get('sd15', 'fp', 'img_s'):.3f} "
          f"pixart_img_s={get('pixart_sigma', 'fp', 'img_s'):.3f} "
          f"quant_overhead_ratio={get('sd15', 'quant_overhead_ratio'):.3f} "
          f"bank_s={get('sd15', 'bank', 'seconds_full'):.1f}", flush=True)


if __name__ == "__main__":
    main()
