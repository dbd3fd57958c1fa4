"""The diffusers-pipeline adapter: any `DiffusionPipeline` with a `unet` or `transformer`.

SD 1.x/2.x, SDXL, PixArt-α/Σ, DiT, ... whatever `DiffusionPipeline.from_pretrained` loads from a
local directory or a hub id. The denoiser (`pipe.unet` or `pipe.transformer`) is what gets
quantized; text encoders and the VAE stay in full precision.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoisers.base import (Denoiser, Generation, ReferenceData, image_seeds, read_reference_info,
                            to_uint8)
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
                 num_classes: int | None = None, class_names: list[str] | None = None,
                 steps: int = 20, guidance: float | None = None, batch_size: int = 4,
                 negative_prompt: str = "", resolution: int | None = None,
                 reference: ReferenceData | None = None, call_kwargs: dict[str, Any] | None = None):
        self.pipe = pipe
        self.name = name
        model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if model is None:
            raise QsensError(f"{name}: pipeline {type(pipe).__name__} has no unet or transformer")
        self.model = model.eval().requires_grad_(False)
        self.prompts = list(prompts) if prompts else None
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        self.steps, self.batch_size = int(steps), int(batch_size)
        # None = what users get when they call the pipeline: its own __call__ default.
        self.guidance = float(pipeline_default(pipe, "guidance_scale", 1.0) if guidance is None
                              else guidance)
        self.negative_prompt = negative_prompt or ""
        self.resolution = int(resolution) if resolution else native_resolution(pipe)
        self._reference = reference
        self.call_kwargs = dict(call_kwargs or {})
        self.device = getattr(pipe, "device", torch.device("cpu"))
        self._embed_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    @staticmethod
    def from_spec(spec: Any) -> "DiffusersPipelineDenoiser":
        """Load `spec.source` (a pipeline dir or hub id) with the spec's dtype, device, scheduler,
        generation settings and reference dir (FID statistics + prompts)."""
        pipe = load_pipeline(spec.source, spec.torch_dtype(), spec.scheduler)
        pipe = pipe.to(spec.device)
        pipe.set_progress_bar_config(disable=True)
        reference, prompts = None, None
        if spec.reference:
            reference, prompts = read_reference(spec.reference)
        num_classes = class_names = None
        model = getattr(pipe, "transformer", None)
        if model is not None and type(model).__name__ == "DiTTransformer2DModel":
            num_classes = int(model.config.num_embeds_ada_norm)
            class_names = _dit_class_names(pipe, num_classes)
        den = DiffusersPipelineDenoiser(
            pipe, spec.name, prompts=prompts, num_classes=num_classes, class_names=class_names,
            steps=spec.steps, guidance=spec.guidance, batch_size=spec.batch_size,
            negative_prompt=spec.negative_prompt, resolution=spec.resolution, reference=reference)
        if reference is not None:
            made = reference.info.get("resolution")
            if made is not None and int(made) != den.resolution:
                raise QsensError(f"reference {spec.reference} was built at {made} px but "
                                 f"{spec.name} generates {den.resolution} px: rebuild it with "
                                 f"`qsens reference build --resolution {den.resolution}` or set "
                                 "model.resolution")
        return den

    # --- interface ----------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> "DiffusersPipelineDenoiser":
        """Moves the whole pipeline (text encoders, VAE, denoiser), not only the denoiser."""
        self.pipe.to(device)
        self.device = torch.device(device)
        self._embed_cache.clear()
        return self

    def configure_generation(self, steps: int | None = None, guidance: float | None = None,
                             batch_size: int | None = None) -> None:
        self.steps = int(steps or self.steps)
        self.guidance = float(self.guidance if guidance is None else guidance)
        self.batch_size = int(batch_size or self.batch_size)

    def reference(self) -> ReferenceData:
        if self._reference is None:
            raise QsensError(f"{self.name}: no reference dir to score against: build one with "
                             "`qsens reference build ... --out DIR`, then set model.reference "
                             "(or pass --reference DIR)")
        return self._reference

    def example_inputs(self, batch_size: int = 1) -> tuple[tuple, dict]:
        from denoisers.inputs import example_inputs

        return example_inputs(self.model, batch_size=batch_size, device=self.device)

    @torch.inference_mode()
    def generate(self, n: int, seed: int = 0, *, steps: int | None = None,
                 guidance: float | None = None, batch_size: int | None = None,
                 progress: bool = False, labels: np.ndarray | None = None) -> Generation:
        """`labels` (class-conditional models): int (n,) classes; default: 0, 1, ... cycling."""
        from quant.progress import progress_bar

        steps = int(steps or self.steps)
        guidance = float(self.guidance if guidance is None else guidance)
        batch_size = int(batch_size or self.batch_size)
        t0 = time.perf_counter()
        seeds = image_seeds(n, seed)
        prompts = None
        if self.num_classes is not None:
            labels = (np.arange(n, dtype=np.int64) % self.num_classes if labels is None
                      else np.asarray(labels, dtype=np.int64))
            if len(labels) != n:
                raise QsensError(f"{n} images but {len(labels)} labels")
        elif self.prompts:
            prompts = [self.prompts[i % len(self.prompts)] for i in range(n)]
        else:
            raise QsensError(f"{self.name}: a text-to-image model needs prompts: a reference dir "
                             "with prompts.txt (model.reference / --reference) or --prompt")
        gen_device = "cpu" if self.device.type == "mps" else self.device
        images, bad = [], []
        for b0 in progress_bar(range(0, n, batch_size), desc=f"generate {self.name}", disable=not progress):
            b1 = min(n, b0 + batch_size)
            gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[b0:b1]]
            kw: dict[str, Any] = dict(num_inference_steps=steps, generator=gens, output_type="pt",
                                      **self._size_kwargs(), **self.call_kwargs)
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
            negative = [self.negative_prompt] * len(prompts) if guidance > 1.0 else None
            out = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                          num_images_per_prompt=1,
                                          do_classifier_free_guidance=guidance > 1.0,
                                          negative_prompt=negative)
            self._embed_cache[cache_key] = {k: v for k, v in zip(keys, out) if v is not None}
        kw = dict(self._embed_cache[cache_key])
        if "negative_prompt" in call_parameters(self.pipe):  # PixArt defaults it to "": clashes with the embeds
            kw["negative_prompt"] = None
        return kw

    def _size_kwargs(self) -> dict[str, Any]:
        """height/width for pipelines that take them (DiT's size is fixed by the model). PixArt's
        aspect-ratio binning is off: images are square at exactly `resolution` (binning maps a
        native square size to itself, and refuses the sizes of small test models)."""
        params = call_parameters(self.pipe)
        kw: dict[str, Any] = {}
        if "use_resolution_binning" in params:
            kw["use_resolution_binning"] = False
        if "height" in params and self.resolution != native_resolution(self.pipe):
            kw.update(height=self.resolution, width=self.resolution)
        return kw


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def load_pipeline(source: str, torch_dtype: torch.dtype | None = None, scheduler: str | None = None):
    """`DiffusionPipeline.from_pretrained(source)` with one-line errors: a directory that is no
    pipeline, a component whose library is missing, a hub id not in the local cache, an unknown
    scheduler class."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" would flood stderr/logs
    sched_cls = scheduler_class(scheduler) if scheduler else None
    local = Path(str(source)).expanduser().is_dir()
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # hub connection notices are not errors of ours
    warn = warnings.catch_warnings()
    warn.__enter__()
    # `torch_dtype` is renamed `dtype` in new diffusers (a FutureWarning); the old name works in both
    warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
    try:
        try:  # a hub id: the local hub cache first, so an offline machine never waits on the network
            pipe = DiffusionPipeline.from_pretrained(str(source), torch_dtype=torch_dtype,
                                                     local_files_only=not local)
        except OSError:
            if local:
                raise
            pipe = DiffusionPipeline.from_pretrained(str(source), torch_dtype=torch_dtype)
    except ImportError as exc:
        raise QsensError(f"cannot load pipeline {source}: a component needs a missing library "
                         f"({_first_line(exc)})") from None
    except (OSError, ValueError, TypeError, AttributeError, KeyError, RuntimeError) as exc:
        where = "" if local else " (hub id: not in the local hub cache, and the hub is unreachable or has no such repo)"
        raise QsensError(f"cannot load diffusers pipeline {source}{where}: "
                         f"{_first_line(exc).removesuffix('.')[:300]}") from None
    finally:
        diffusers_logging.set_verbosity(level)
        warn.__exit__(None, None, None)
    if sched_cls is not None:
        pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
    return pipe


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class called `name` (e.g. DPMSolverMultistepScheduler)."""
    import diffusers

    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        import difflib

        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler")
                       and isinstance(getattr(diffusers, n, None), type))
        near = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(known)}"
        raise QsensError(f"unknown scheduler {name!r}: not a diffusers scheduler class; {hint}")
    return cls


def read_reference(directory: str | Path) -> tuple[ReferenceData, list[str] | None]:
    """A reference dir written by `qsens reference build`: (ReferenceData, prompts or None)."""
    info, prompts, _ = read_reference_info(directory)
    return ReferenceData(info["kind"], Path(directory), info), prompts


def call_parameters(pipe: Any) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)


def pipeline_default(pipe: Any, parameter: str, fallback: Any) -> Any:
    """The default of `parameter` in the pipeline's `__call__` (e.g. guidance_scale: SD 7.5,
    PixArt 4.5, DiT 4.0): what a user gets without setting it."""
    import inspect

    p = inspect.signature(type(pipe).__call__).parameters.get(parameter)
    return fallback if p is None or p.default is inspect.Parameter.empty else p.default


def native_resolution(pipe: Any) -> int:
    """Output side in px: the denoiser's sample_size × the VAE's downsampling factor."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = model.config.sample_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    factor = getattr(pipe, "vae_scale_factor", None)
    if factor is None:
        vae = getattr(pipe, "vae", None)
        factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return int(size) * int(factor)


def _dit_class_names(pipe: Any, num_classes: int) -> list[str] | None:
    """DiT's id2label names (first name of each class), when the pipeline has them."""
    labels = getattr(pipe, "labels", None)  # DiTPipeline: {name: id}
    if not labels:
        return None
    names = [""] * num_classes
    for name, idx in labels.items():
        if 0 <= int(idx) < num_classes and not names[int(idx)]:
            names[int(idx)] = str(name)
    return names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


