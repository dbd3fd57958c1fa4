"""The diffusers-pipeline adapter: any `DiffusionPipeline` with a `unet` or `transformer`.

SD 1.x/2.x, SDXL, PixArt-α/Σ, DiT, ... whatever `DiffusionPipeline.from_pretrained` loads from a
local directory or a hub id. The denoiser (`pipe.unet` or `pipe.transformer`) is what gets
quantized; text encoders and the VAE stay in full precision.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from denoisers.base import Denoiser, Generation, ReferenceData, image_seeds, to_uint8
from quant.errors import QsensError

# ----------------------------------------------------------------------------------------------
# Keyword names of the cached prompt embeddings each pipeline's `encode_prompt` returns, in order.
_EMBED_KEYS = {
    "StableDiffusionPipeline": ("prompt_embeds", "negative_prompt_embeds"),
    "StableDiffusionXLPipeline": ("prompt_embeds", "negative_prompt_embeds",
                                  "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
    "PixArtAlphaPipeline": ("prompt_embeds", "prompt_attention_mask",
                            "negative_prompt_embeds", "negative_prompt_attention_mask"),
    "PixArtSigmaPipeline": ("prompt_embeds", "prompt_attention_mask",
                            "negative_prompt_embeds", "negative_prompt_attention_mask"),
}


class DiffusersPipelineDenoiser(Denoiser):
    """Any diffusers pipeline with a `unet` or `transformer`; that module is what gets quantized.

    Conditioning: text pipelines cycle through `prompts` (image i gets prompts[i % len]); their
    embeddings are computed once and cached (the text encoder is never quantized). Class-
    conditional pipelines (DiTPipeline) cycle through class ids. Image i is drawn with its own
    generator seeded `image_seeds(n, seed)[i]`, in batches of a fixed size.
    """

    def __init__(self, pipe: Any, name: str, *, prompts: list[str] | None = None,
                 num_classes: int | None = None, steps: int = 20, guidance: float = 1.0,
                 batch_size: int = 4, reference: ReferenceData | None = None,
                 call_kwargs: dict[str, Any] | None = None):
        self.pipe = pipe
        self.name = name
        model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if model is None:
            raise QsensError(f"{name}: pipeline {type(pipe).__name__} has no unet or transformer")
        self.model = model.eval().requires_grad_(False)
        self.prompts = list(prompts) if prompts else None
        self.num_classes = num_classes
        self.steps, self.guidance, self.batch_size = int(steps), float(guidance), int(batch_size)
        self._reference = reference
        self.call_kwargs = dict(call_kwargs or {})
        self.device = getattr(pipe, "device", torch.device("cpu"))
        self._embed_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    @staticmethod
    def from_pretrained(path_or_id: str | Path, *, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, prompts_file: str | Path | None = None,
                        reference_dir: str | Path | None = None, **kwargs: Any) -> "DiffusersPipelineDenoiser":
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(str(path_or_id), torch_dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise QsensError(f"cannot load diffusers pipeline {path_or_id}: {exc}") from exc
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        prompts = None
        if prompts_file:
            prompts = [ln.strip() for ln in Path(prompts_file).read_text().splitlines() if ln.strip()]
        reference = None
        if reference_dir:
            info_path = Path(reference_dir) / "stats.json"
            info = json.loads(info_path.read_text()) if info_path.exists() else {}
            reference = ReferenceData("inception", Path(reference_dir), info)
            if prompts is None and (Path(reference_dir) / "prompts.txt").exists():
                prompts = [ln.strip() for ln in (Path(reference_dir) / "prompts.txt")
                           .read_text().splitlines() if ln.strip()]
        num_classes = None
        model = getattr(pipe, "transformer", None)
        if model is not None and type(model).__name__ == "DiTTransformer2DModel":
            num_classes = int(model.config.num_embeds_ada_norm)
        return DiffusersPipelineDenoiser(pipe, str(path_or_id), prompts=prompts,
                                         num_classes=num_classes, reference=reference, **kwargs)

    # --- interface ----------------------------------------------------------------------------
    def reference(self) -> ReferenceData:
        if self._reference is None:
            raise QsensError(f"{self.name}: no reference data (pass reference_dir= with "
                             "stats.safetensors of the real images)")
        return self._reference

    def example_inputs(self, batch_size: int = 1) -> tuple[tuple, dict]:
        return example_inputs_for(self.model, batch_size, self.device)

    @torch.inference_mode()
    def generate(self, n: int, seed: int = 0, *, steps: int | None = None,
                 guidance: float | None = None, batch_size: int | None = None,
                 progress: bool = False) -> Generation:
        from tqdm import tqdm

        steps = int(steps or self.steps)
        guidance = float(self.guidance if guidance is None else guidance)
        batch_size = int(batch_size or self.batch_size)
        t0 = time.perf_counter()
        seeds = image_seeds(n, seed)
        labels = prompts = None
        if self.num_classes is not None:
            labels = np.arange(n, dtype=np.int64) % self.num_classes
        elif self.prompts:
            prompts = [self.prompts[i % len(self.prompts)] for i in range(n)]
        else:
            raise QsensError(f"{self.name}: a text-to-image model needs prompts (prompts_file=)")
        gen_device = "cpu" if self.device.type == "mps" else self.device
        images, bad = [], []
        for b0 in tqdm(range(0, n, batch_size), desc=f"generate {self.name}", disable=not progress):
            b1 = min(n, b0 + batch_size)
            gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[b0:b1]]
            kw: dict[str, Any] = dict(num_inference_steps=steps, generator=gens, output_type="pt",
                                      **self.call_kwargs)
            if labels is not None:
                kw.update(class_labels=labels[b0:b1].tolist(), guidance_scale=guidance)
            else:
                kw.update(guidance_scale=guidance, **self._prompt_kwargs(prompts[b0:b1], guidance))
            out = self.pipe(**kw).images  # float (B, C, H, W) in [0, 1]
            u8, nonfinite = to_uint8(out.float() * 2 - 1)
            images.append(u8)
            bad.append(nonfinite)
        return Generation(images=np.concatenate(images), seeds=seeds, labels=labels,
                          prompts=prompts, nonfinite=np.concatenate(bad),
                          seconds=time.perf_counter() - t0,
                          params={"steps": steps, "guidance": guidance, "batch_size": batch_size})

    def _prompt_kwargs(self, prompts: list[str], guidance: float) -> dict[str, Any]:
        keys = _EMBED_KEYS.get(type(self.pipe).__name__)
        if keys is None or not hasattr(self.pipe, "encode_prompt"):
            return {"prompt": prompts}
        cache_key = (tuple(prompts), guidance > 1.0)
        if cache_key not in self._embed_cache:
            out = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                          num_images_per_prompt=1,
                                          do_classifier_free_guidance=guidance > 1.0)
            self._embed_cache[cache_key] = {k: v for k, v in zip(keys, out) if v is not None}
        return dict(self._embed_cache[cache_key])


def example_inputs_for(model: nn.Module, batch_size: int = 1,
                       device: str | torch.device = "cpu") -> tuple[tuple, dict]:
    """One forward's inputs for the denoiser classes qsens knows (shapes from `model.config`)."""
    cfg = model.config
    cls = type(model).__name__
    g = torch.Generator().manual_seed(0)
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    x = torch.randn((batch_size, cfg.in_channels, size, size), generator=g).to(device)
    t = torch.full((batch_size,), 500, dtype=torch.long, device=device)
    if cls == "UNet2DModel":
        kw: dict[str, Any] = {"return_dict": False}
        if cfg.num_class_embeds:
            kw["class_labels"] = torch.zeros(batch_size, dtype=torch.long, device=device)
        return (x, t), kw
    if cls == "UNet2DConditionModel":
        ehs = torch.randn((batch_size, 77, cfg.cross_attention_dim), generator=g).to(device)
        kw = {"encoder_hidden_states": ehs, "return_dict": False}
        if cfg.addition_embed_type == "text_time":  # SDXL
            n_time = 6
            text_dim = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
            kw["added_cond_kwargs"] = {
                "text_embeds": torch.randn((batch_size, text_dim), generator=g).to(device),
                "time_ids": torch.zeros((batch_size, n_time), device=device)}
        return (x, t), kw
    if cls == "DiTTransformer2DModel":
        y = torch.zeros(batch_size, dtype=torch.long, device=device)
        return (x, t), {"class_labels": y, "return_dict": False}
    if cls == "PixArtTransformer2DModel":
        ehs = torch.randn((batch_size, 120, cfg.caption_channels), generator=g).to(device)
        added = {"resolution": None, "aspect_ratio": None}
        if cfg.sample_size == 128:  # PixArt-α 1024 uses resolution/aspect-ratio embeddings
            added = {"resolution": torch.tensor([[1024.0, 1024.0]] * batch_size, device=device),
                     "aspect_ratio": torch.tensor([[1.0]] * batch_size, device=device)}
        return (x,), {"encoder_hidden_states": ehs, "timestep": t, "added_cond_kwargs": added,
                      "return_dict": False}
    raise QsensError(f"no example inputs known for {cls}; add it to denoisers.registry")
