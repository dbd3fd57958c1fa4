"""The diffusers-pipeline adapter: any `DiffusionPipeline` with a `unet` or `transformer`.

SD 1.x/2.x, SDXL, PixArt-α/Σ, DiT, FLUX, Sana, SD3, Hunyuan-DiT, LCM, unconditional DDPM/DDIM,
img2img and ControlNet: whatever `DiffusionPipeline.from_pretrained` loads from a local directory
or a hub id. The denoiser (`pipe.unet` or `pipe.transformer`) is what gets quantized; text
encoders, the VAE and a ControlNet stay in full precision. What a pipeline needs (prompts,
class labels, nothing, a source or control image), its native size, default guidance/steps and
prediction type are asked of the pipeline itself (`denoisers.traits.pipeline_traits`).

Loading (`load_pipeline`) also handles two kinds of checkpoint users bring: a T5 tokenizer
shipped as `spiece.model` only (read here without protobuf, `denoisers.tokenizers`), and a
denoiser saved already quantized (torchao tensor subclasses / `quantization_config`):
dequantized to the spec's dtype with a line saying so, or refused in one line.
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
from denoisers.traits import (call_parameters, check_drivable, eps_scale, native_resolution,  # noqa: F401
                              pipeline_default, pipeline_traits)
from core.errors import QsensError

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
    "StableDiffusionImg2ImgPipeline": ("prompt_embeds", "negative_prompt_embeds"),
    "StableDiffusionControlNetPipeline": ("prompt_embeds", "negative_prompt_embeds"),
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
                 steps: int | None = 20, guidance: float | None = None, batch_size: int = 4,
                 negative_prompt: str = "", resolution: int | None = None,
                 reference: ReferenceData | None = None, call_kwargs: dict[str, Any] | None = None,
                 cond_images: np.ndarray | None = None):
        self.pipe = pipe
        self.name = name
        model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if model is None:
            raise QsensError(f"{name}: pipeline {type(pipe).__name__} has no unet or transformer")
        self.traits = pipeline_traits(pipe, class_conditional=True if num_classes is not None else None)
        check_drivable(pipe, self.traits)
        self.model = model.eval().requires_grad_(False)
        self.prediction_type = self.traits.prediction
        self.prompts = list(prompts) if prompts else None
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        # None = the pipeline's own __call__ default (LCM 4, FLUX 28, SD 50), else 20
        self.steps = int(steps if steps is not None else (self.traits.steps or 20))
        self.batch_size = int(batch_size)
        # None = what users get when they call the pipeline: its own __call__ default.
        self.guidance = float(pipeline_default(pipe, "guidance_scale", 1.0) if guidance is None
                              else guidance)
        self.negative_prompt = negative_prompt or ""
        self._negative_noted: set[str] = set()  # reasons already said (one line per reason)
        self.resolution = int(resolution) if resolution else native_resolution(pipe)
        self._reference = reference
        self.call_kwargs = dict(call_kwargs or {})
        self.cond_images = cond_images  # uint8 (N, H, W, 3): image i uses cond_images[i % N]
        self.load_notes: list[str] = []  # e.g. a pre-quantized denoiser that was dequantized
        self.device = getattr(pipe, "device", torch.device("cpu"))
        self._embed_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    @staticmethod
    def from_spec(spec: Any) -> "DiffusersPipelineDenoiser":
        """Load `spec.source` (a pipeline dir or hub id) with the spec's dtype, device, scheduler,
        generation settings and reference dir (FID statistics + prompts)."""
        pipe = load_pipeline(spec.source, spec.torch_dtype(), spec.scheduler)
        notes = dequantize_prequantized(pipe, spec.torch_dtype(), spec.source)
        pipe = pipe.to(spec.device)
        pipe.set_progress_bar_config(disable=True)
        traits = pipeline_traits(pipe)
        check_drivable(pipe, traits)
        reference, prompts, cond = None, None, None
        if spec.reference:
            reference, prompts = read_reference(spec.reference)
            cond = read_cond_images(reference)
        if traits.conditioning == "none":
            prompts = None  # an unconditional model: the reference's captions are not its input
        num_classes = class_names = None
        if traits.conditioning == "class":
            num_classes, class_names = _class_info(pipe)
        den = DiffusersPipelineDenoiser(
            pipe, spec.name, prompts=prompts, num_classes=num_classes, class_names=class_names,
            steps=spec.steps, guidance=spec.guidance, batch_size=spec.batch_size,
            negative_prompt=spec.negative_prompt, resolution=spec.resolution, reference=reference,
            cond_images=cond)
        den.load_notes = notes
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
        """Change the `generate` defaults (None keeps the current value), as `Denoiser`'s."""
        self.steps = int(steps or self.steps)
        self.guidance = float(self.guidance if guidance is None else guidance)
        self.batch_size = int(batch_size or self.batch_size)

    def reference(self) -> ReferenceData:
        """The FID reference set for this pipeline; QsensError when none is configured (`model.reference`)."""
        if self._reference is None:
            raise QsensError(f"{self.name}: no reference dir to score against: build one with "
                             "`qsens reference build ... --out DIR`, then set model.reference "
                             "(or pass --reference DIR)")
        return self._reference

    def example_inputs(self, batch_size: int = 1) -> tuple[tuple, dict]:
        """One denoising step's inputs for the denoiser (`denoisers.inputs.example_inputs`)."""
        from denoisers.inputs import example_inputs

        return example_inputs(self.model, batch_size=batch_size, device=self.device)

    @torch.inference_mode()
    def generate(self, n: int, seed: int = 0, *, steps: int | None = None,
                 guidance: float | None = None, batch_size: int | None = None,
                 progress: bool = False, labels: np.ndarray | None = None) -> Generation:
        """`labels` (class-conditional models): int (n,) classes; default: 0, 1, ... cycling."""
        from core.progress import progress_bar

        steps = int(steps or self.steps)
        guidance = float(self.guidance if guidance is None else guidance)
        batch_size = int(batch_size or self.batch_size)
        t0 = time.perf_counter()
        seeds = image_seeds(n, seed)
        prompts = None
        traits = self.traits
        if self.num_classes is not None:
            labels = (np.arange(n, dtype=np.int64) % self.num_classes if labels is None
                      else np.asarray(labels, dtype=np.int64))
            if len(labels) != n:
                raise QsensError(f"{n} images but {len(labels)} labels")
        elif traits.conditioning == "none":
            if self.prompts:
                raise QsensError(f"{self.name} ({traits.pipeline}) is unconditional: it takes no "
                                 "prompt; drop --prompt")
        elif self.prompts:
            prompts = [self.prompts[i % len(self.prompts)] for i in range(n)]
        else:
            raise QsensError(f"{self.name}: a text-to-image model needs prompts: a reference dir "
                             "with prompts.txt (model.reference / --reference) or --prompt")
        if traits.image_input is not None and self.cond_images is None:
            what = "a source image" if traits.image_input == "init" else "a control image"
            raise QsensError(f"{self.name} ({traits.pipeline}) needs {what} per image and none was "
                             "given: build its reference with `qsens reference build ... "
                             "--cond-images DIR` (img2img: --cond-images source) and set "
                             "model.reference")
        self._note_unused_negative(guidance)
        gen_device = "cpu" if self.device.type == "mps" else self.device
        images, bad = [], []
        for b0 in progress_bar(range(0, n, batch_size), desc=f"generate {self.name}", disable=not progress):
            b1 = min(n, b0 + batch_size)
            gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[b0:b1]]
            kw: dict[str, Any] = dict(num_inference_steps=steps, generator=gens, output_type="pt",
                                      **self._size_kwargs(), **self.call_kwargs)
            if traits.guidance_kind != "none":
                kw["guidance_scale"] = guidance
            if labels is not None:
                kw.update(class_labels=labels[b0:b1].tolist())
            elif prompts is not None:
                kw.update(**self._prompt_kwargs(prompts[b0:b1], guidance))
            else:  # unconditional (DDPM/DDIM): the batch size is the only input
                kw.update(batch_size=b1 - b0)
            if traits.image_input is not None:
                kw[traits.image_arg] = self._cond_batch(b0, b1)
            out = _as_nchw(self.pipe(**kw).images)  # float (B, C, H, W) in [0, 1]
            u8, nonfinite = to_uint8(out.float() * 2 - 1)
            images.append(u8)
            bad.append(nonfinite)
        return Generation(images=np.concatenate(images), seeds=seeds, labels=labels,
                          prompts=prompts, nonfinite=np.concatenate(bad),
                          seconds=time.perf_counter() - t0,
                          params={"steps": steps, "guidance": guidance, "batch_size": batch_size})

    def negative_prompt_unused(self, guidance: float | None = None) -> str | None:
        """Why `negative_prompt` cannot change this pipeline's images at `guidance` (default: the
        configured one), in words; None when it is passed (or there is none). A negative prompt
        acts only through classifier-free guidance: the pipeline's `__call__` must take
        `negative_prompt` (SD, SDXL, PixArt, SD3, Hunyuan-DiT, Sana, ...) and guidance must be on
        (> 1; FLUX: `true_cfg_scale` > 1, its `guidance_scale` is an embedding)."""
        if not self.negative_prompt:
            return None
        traits = self.traits
        guidance = float(self.guidance if guidance is None else guidance)
        if traits.conditioning != "text":
            return f"{traits.pipeline} takes no prompt"
        if "negative_prompt" not in traits.params:
            return f"{traits.pipeline} takes no negative prompt"
        if traits.guidance_kind == "embedded":
            if "true_cfg_scale" in traits.params and float(self.call_kwargs.get("true_cfg_scale", 1.0)) > 1.0:
                return None
            return (f"{traits.pipeline}'s guidance is an input of the model, not classifier-free "
                    "guidance")
        if traits.guidance_kind != "cfg":
            return f"{traits.pipeline} has no classifier-free guidance"
        if guidance <= 1.0:
            return f"guidance {guidance:g} turns classifier-free guidance off (> 1 turns it on)"
        return None

    def _note_unused_negative(self, guidance: float) -> None:
        """One line on stderr, once per reason, when the negative prompt cannot be used.

        A warning, not an error: `model.negative_prompt` is one params value shared by every
        stage and by every model a project compares (an SD model's negative prompt must not stop
        an LCM run of the same params), and the images are exactly what the pipeline draws
        without one, so nothing measured is wrong; what a user must not get is silence."""
        reason = self.negative_prompt_unused(guidance)
        if reason is None or reason in self._negative_noted:
            return
        import sys

        self._negative_noted.add(reason)
        print(f"warning: {self.name}: the negative prompt (model.negative_prompt / --negative-prompt) "
              f"is not used: {reason}; images are drawn without it", file=sys.stderr)

    def _prompt_kwargs(self, prompts: list[str], guidance: float) -> dict[str, Any]:
        keys = _EMBED_KEYS.get(type(self.pipe).__name__)
        if keys is None or not hasattr(self.pipe, "encode_prompt"):
            kw: dict[str, Any] = {"prompt": prompts}
            if self.negative_prompt and self.negative_prompt_unused(guidance) is None:
                kw["negative_prompt"] = [self.negative_prompt] * len(prompts)
            return kw
        cache_key = (tuple(prompts), guidance > 1.0, self.negative_prompt)
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
        """height/width for pipelines that take them (DiT's size is fixed by the model), whenever
        the resolution is not the native one or the pipeline's own default is a fixed number
        rather than the model's (Sana: 1024 whatever the checkpoint). Aspect-ratio binning
        (PixArt, Sana, Hunyuan) is off: images are square at exactly `resolution` (binning maps a
        native square size to itself, and refuses the sizes of small test models)."""
        params = self.traits.params
        kw: dict[str, Any] = {}
        if "use_resolution_binning" in params:
            kw["use_resolution_binning"] = False
        if self.traits.takes_size and (self.resolution != self.traits.resolution
                                       or pipeline_default(self.pipe, "height", None) is not None):
            kw.update(height=self.resolution, width=self.resolution)
        return kw

    def _cond_batch(self, b0: int, b1: int) -> list:
        """The conditioning images of images b0..b1 (PIL, at `resolution`)."""
        from PIL import Image

        cond = self.cond_images
        out = []
        for i in range(b0, b1):
            img = Image.fromarray(np.ascontiguousarray(cond[i % len(cond)]))
            if img.size != (self.resolution, self.resolution):
                img = img.resize((self.resolution, self.resolution), Image.BICUBIC)
            out.append(img)
        return out

    def eps_scale(self, timesteps: torch.Tensor | None) -> torch.Tensor | None:
        """d(epsilon-hat)/d(output) per calibration sample (None: an epsilon model, factor 1);
        see `denoisers.traits.eps_scale`."""
        return eps_scale(self.prediction_type, getattr(self.pipe, "scheduler", None), timesteps)


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
    try:  # transformers 5 draws a "Loading weights" bar per text encoder
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    sched_cls = scheduler_class(scheduler) if scheduler else None
    local = Path(str(source)).expanduser().is_dir()
    files = Path(str(source)).expanduser() if local else _hub_snapshot(str(source))
    overrides: dict[str, Any] = {}
    if files is not None:
        check_quantization_config(files, str(source))
        from denoisers.tokenizers import spiece_tokenizers

        overrides = spiece_tokenizers(files)  # spiece.model-only T5 tokenizers, without protobuf
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # hub connection notices are not errors of ours
    warn = warnings.catch_warnings()
    warn.__enter__()
    # `torch_dtype` is renamed `dtype` in new diffusers (a FutureWarning); the old name works in both
    warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
    try:
        try:  # a hub id: the local hub cache first, so an offline machine never waits on the network
            pipe = DiffusionPipeline.from_pretrained(str(source), torch_dtype=torch_dtype,
                                                     local_files_only=not local, **overrides)
        except OSError:
            if local:
                raise
            pipe = DiffusionPipeline.from_pretrained(str(source), torch_dtype=torch_dtype, **overrides)
    except ImportError as exc:
        raise QsensError(f"cannot load pipeline {source}: a component needs a missing library "
                         f"({_first_line(exc)})") from None
    except (OSError, ValueError, TypeError, AttributeError, KeyError, RuntimeError) as exc:
        if "tiktoken" in str(exc):  # transformers' last fallback after a failed tokenizer conversion
            raise QsensError(f"cannot load the tokenizer of {source}: {_tokenizer_files(files)} could "
                             "not be converted by transformers (its sentencepiece/protobuf "
                             "conversion failed); give the tokenizer a tokenizer.json") from None
        where = "" if local else " (hub id: not in the local hub cache, and the hub is unreachable or has no such repo)"
        raise QsensError(f"cannot load diffusers pipeline {source}{where}: "
                         f"{_first_line(exc).removesuffix('.')[:300]}") from None
    finally:
        diffusers_logging.set_verbosity(level)
        warn.__exit__(None, None, None)
    if sched_cls is not None:
        pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
    return pipe


def _hub_snapshot(source: str) -> Path | None:
    """The local hub-cache snapshot dir of a hub id, or None (nothing is downloaded)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached / not a repo id: from_pretrained says why
        return None


def _tokenizer_files(files: Path | None) -> str:
    if files is None:
        return "a tokenizer file"
    found = sorted(str(p.relative_to(files)) for p in files.glob("tokenizer*/*")
                   if p.name in ("spiece.model", "tokenizer.model", "vocab.json", "tokenizer.json"))
    return ", ".join(found) or "a tokenizer file"


def check_quantization_config(files: Path, source: str) -> None:
    """Refuse, before loading, a denoiser saved quantized with a method qsens cannot
    dequantize (only torchao is dequantized, see `dequantize_prequantized`)."""
    import json

    for sub in ("unet", "transformer"):
        cfg = files / sub / "config.json"
        if not cfg.is_file():
            continue
        try:
            qc = json.loads(cfg.read_text(encoding="utf-8")).get("quantization_config")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if qc is None:
            continue
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        if method != "torchao":
            raise QsensError(f"{source}: {sub}/config.json has a quantization_config ({method or 'unknown method'}): "
                             "the denoiser was saved quantized and qsens dequantizes only torchao "
                             "checkpoints: give it a full-precision checkpoint")


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


def _as_nchw(out: Any) -> torch.Tensor:
    """A pipeline's `output_type="pt"` images as float (B, C, H, W); pipelines that return
    numpy (B, H, W, C) (older DDPM/DDIM) are converted."""
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out).permute(0, 3, 1, 2)
    if isinstance(out, (list, tuple)):
        return torch.stack([_as_nchw(o[None])[0] for o in out])
    return out


def _class_info(pipe: Any) -> tuple[int, list[str] | None]:
    """(class count, names) of a class-conditional pipeline, from its denoiser's config."""
    _, model = (("unet", pipe.unet) if getattr(pipe, "unet", None) is not None
                else ("transformer", pipe.transformer))
    config = model.config
    n = config.get("num_embeds_ada_norm") or config.get("num_class_embeds")
    if not n:
        raise QsensError(f"{type(pipe).__name__} takes class_labels but its {type(model).__name__} "
                         "config gives no class count (num_embeds_ada_norm / num_class_embeds)")
    return int(n), _dit_class_names(pipe, int(n))


COND_FILE = "cond.safetensors"


def read_cond_images(reference: ReferenceData) -> np.ndarray | None:
    """The conditioning images a reference dir carries (`qsens reference build --cond-images`):
    uint8 (N, H, W, 3), or None."""
    name = reference.info.get("cond_file")
    if not name:
        return None
    path = Path(reference.path) / name
    if not path.is_file():
        raise QsensError(f"reference {reference.path}: {name} is missing (reference.json names it)")
    from safetensors.numpy import load_file

    images = load_file(str(path)).get("images")
    if images is None or images.ndim != 4 or images.dtype != np.uint8:
        raise QsensError(f"reference {reference.path}: {name} holds no uint8 (N, H, W, 3) `images`")
    return images


def dequantize_prequantized(pipe: Any, dtype: torch.dtype | None, source: str = "") -> list[str]:
    """A denoiser saved already quantized (torchao tensor subclasses, `quantization_config` in
    its config.json): every quantized weight is dequantized to `dtype` in place, and one line
    on stderr says so (returned, too). Refused in one line when a weight cannot be dequantized
    (e.g. bitsandbytes 4-bit). Nothing happens to a full-precision denoiser."""
    import sys

    from torch import nn

    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if model is None:
        return []
    qconfig = getattr(model, "config", {}).get("quantization_config") if hasattr(model, "config") else None
    subclassed = [(mname, pname, p) for mname, m in model.named_modules()
                  for pname, p in m.named_parameters(recurse=False)
                  if type(p.data) is not torch.Tensor]
    if qconfig is None and not subclassed:
        return []
    method = _quant_method(qconfig)
    target = dtype or torch.float32
    for mname, pname, p in subclassed:
        where = f"{mname}.{pname}" if mname else pname
        try:
            plain = p.data.dequantize()
        except Exception as exc:  # noqa: BLE001 - any library's failure is a refusal
            raise QsensError(f"{source}: the {type(model).__name__} was saved quantized ({method}); "
                             f"its weight {where} ({type(p.data).__name__}) cannot be dequantized "
                             f"({type(exc).__name__}): give qsens a full-precision checkpoint") from None
        if type(plain) is not torch.Tensor or not plain.is_floating_point():
            raise QsensError(f"{source}: the {type(model).__name__} was saved quantized ({method}); "
                             f"its weight {where} does not dequantize to a plain float tensor: give "
                             "qsens a full-precision checkpoint")
        module = model.get_submodule(mname) if mname else model
        module._parameters[pname] = nn.Parameter(plain.to(target), requires_grad=False)
    # a plain model from here on: diffusers refuses .to(dtype) on a model it thinks quantized
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False) and not isinstance(getattr(type(model), "is_quantized", None), property):
        model.is_quantized = False
    if any(p.dtype != target for p in model.parameters() if p.is_floating_point()):
        model.to(target)
    dt = str(target).removeprefix("torch.")
    note = (f"note: {source}: the {type(model).__name__} was saved quantized ({method}, "
            f"{len(subclassed)} quantized weights); dequantized to {dt}: qsens quantizes from "
            "these dequantized weights, not from the original full-precision ones")
    print(note, file=sys.stderr)
    return [note]


def _quant_method(qconfig: Any) -> str:
    if qconfig is None:
        return "tensor-subclass weights"
    get = qconfig.get if isinstance(qconfig, dict) else (lambda k, d=None: getattr(qconfig, k, d))
    method = get("quant_method", None) or "unknown method"
    method = getattr(method, "value", method)  # diffusers' QuantizationMethod enum
    qtype = get("quant_type", None)
    if isinstance(qtype, dict):
        inner = qtype.get("default", qtype)
        qtype = inner.get("_type") if isinstance(inner, dict) else None
    elif qtype is not None and not isinstance(qtype, str):
        qtype = type(qtype).__name__  # a torchao config object
    return f"{method} {qtype}" if isinstance(qtype, str) else str(method)


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


