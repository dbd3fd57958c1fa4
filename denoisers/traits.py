"""What a diffusers pipeline needs and how it samples, asked of the pipeline itself, in one place.

`pipeline_traits(pipe)` reads the pipeline's `__call__` signature, its components and their
configs (never a list of class names) and returns a `PipelineTraits`:

- `conditioning`: "text" (a `prompt` parameter), "class" (`class_labels`), "none" (neither:
  DDPMPipeline / DDIMPipeline / ScoreSde...);
- `image_input`: None, "init" (img2img: an `image` with a `strength`: the source image that
  noise is added to) or "control" (a ControlNet / T2I-Adapter control image), with the name of
  the `__call__` parameter that takes it (`image_arg`);
- `resolution`: the native output side in px (see `native_resolution`);
- `guidance` / `steps`: the `__call__` defaults (what a user gets without setting them);
  `guidance_kind`: "cfg" (classifier-free: a doubled batch), "embedded" (FLUX.1-dev: the scale
  is an input of the transformer, no CFG) or "none" (no guidance_scale parameter);
- `prediction`: what the denoiser outputs, from the scheduler's config: "epsilon",
  "v_prediction", "sample" (x0) or "flow" (rectified-flow velocity: FlowMatch schedulers and
  `prediction_type="flow_prediction"`, e.g. SD3, FLUX, Sana).

Anything it cannot drive is refused by `check_drivable` with one line naming the missing piece
(a mask image, image embeddings from a prior, an unknown required argument...).

`eps_scale(prediction, scheduler, timesteps)` is the factor d(epsilon-hat)/d(model output) per
sample, so losses and output errors can be stated in one space (the noise prediction epsilon)
for every prediction type: 1 for epsilon models, sqrt(alpha_bar_t) for v-prediction
(eps = alpha_t v + sigma_t x_t), 1 - sigma for flow matching (x_t = (1-sigma) x0 + sigma eps,
u = eps - x0, so eps = x_t + (1-sigma) u) and alpha_t / sigma_t for x0-prediction.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from core.errors import QsensError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")

# __call__ parameters that, when present, mean the pipeline needs something qsens does not supply
_UNSUPPORTED = {
    "mask_image": "a mask image (inpainting)",
    "image_embeds": "image embeddings from a prior pipeline",
    "control_image_embeds": "control image embeddings",
    "video": "a video input",
    "audio": "an audio input",
    "prompt_image": "a prompt image",
}


@dataclass(frozen=True)
class PipelineTraits:
    """See the module docstring."""

    pipeline: str
    denoiser_attr: str  # "unet" | "transformer"
    conditioning: str  # "text" | "class" | "none"
    image_input: str | None  # None | "init" | "control"
    image_arg: str | None  # the __call__ parameter that takes the image
    resolution: int
    guidance: float | None  # the __call__ default of guidance_scale (None: no such parameter)
    guidance_kind: str  # "cfg" | "embedded" | "none"
    steps: int | None  # the __call__ default of num_inference_steps
    prediction: str  # one of PREDICTION_TYPES
    takes_size: bool  # __call__ takes height/width
    params: frozenset = field(default_factory=frozenset)

    def describe(self) -> dict[str, Any]:
        """The traits as a JSON-able dict (what `qsens prepare` prints and fingerprints)."""
        return {"pipeline": self.pipeline, "denoiser": self.denoiser_attr,
                "conditioning": self.conditioning, "image_input": self.image_input,
                "resolution": self.resolution, "guidance": self.guidance,
                "guidance_kind": self.guidance_kind, "steps": self.steps,
                "prediction": self.prediction}

    def needs(self) -> str:
        """What the pipeline needs per image, in words (docs/models.md's 'input' column)."""
        what = {"text": "a prompt", "class": "a class id", "none": "nothing (unconditional)"}[self.conditioning]
        if self.image_input == "init":
            what += " + a source image (img2img)"
        elif self.image_input == "control":
            what += " + a control image"
        return what


def call_parameters(pipe: Any) -> set[str]:
    """The names of the pipeline class's `__call__` parameters."""
    return set(inspect.signature(type(pipe).__call__).parameters)


def pipeline_default(pipe: Any, parameter: str, fallback: Any) -> Any:
    """The default of `parameter` in the pipeline's `__call__` (e.g. guidance_scale: SD 7.5,
    PixArt 4.5, DiT 4.0): what a user gets without setting it."""
    p = inspect.signature(type(pipe).__call__).parameters.get(parameter)
    return fallback if p is None or p.default is inspect.Parameter.empty else p.default


def denoiser_of(pipe: Any) -> tuple[str, Any]:
    """The pipeline's denoiser as (`unet` or `transformer`, module); QsensError when it has neither."""
    for attr in ("unet", "transformer"):
        model = getattr(pipe, attr, None)
        if model is not None:
            return attr, model
    raise QsensError(f"pipeline {type(pipe).__name__} has no unet or transformer: nothing to quantize")


def _config_get(config: Any, key: str) -> Any:
    if config is None:
        return None
    return config.get(key) if hasattr(config, "get") else getattr(config, key, None)


def vae_scale_factor(pipe: Any) -> int:
    """Pixels per latent pixel: the pipeline's own `vae_scale_factor`, else the VAE's blocks
    (AutoencoderKL `block_out_channels`, DC-AE `encoder_block_out_channels`), else 1 (pixel-space
    pipelines such as DDPM)."""
    factor = getattr(pipe, "vae_scale_factor", None)
    if factor is not None:
        return int(factor)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return 1
    for key in ("block_out_channels", "encoder_block_out_channels"):
        blocks = _config_get(vae.config, key)
        if blocks:
            return 2 ** (len(blocks) - 1)
    return 1


def native_resolution(pipe: Any) -> int:
    """Output side in px, what the pipeline draws when no height/width is given, derived from
    the model: the denoiser's `sample_size` (else the pipeline's `default_sample_size`, FLUX:
    128) × the VAE's downsampling factor; else the `height` default of `__call__`. Raises
    QsensError when none says it."""
    _, model = denoiser_of(pipe)
    size = _config_get(getattr(model, "config", None), "sample_size")
    if size is None:
        size = getattr(pipe, "default_sample_size", None)
    if size is not None:
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * vae_scale_factor(pipe)
    height = pipeline_default(pipe, "height", None)
    if isinstance(height, int):
        return height
    raise QsensError(f"{type(pipe).__name__}: cannot tell its native resolution (no sample_size in "
                     f"the {type(model).__name__} config, no default_sample_size, no height "
                     "default): set model.resolution")


def prediction_type(scheduler: Any) -> str:
    """What the denoiser predicts, from the scheduler: "flow" (FlowMatch* schedulers,
    prediction_type flow_prediction, use_flow_sigmas), else the config's prediction_type
    (epsilon | v_prediction | sample), epsilon when it says nothing."""
    if scheduler is None:
        return "epsilon"
    config = getattr(scheduler, "config", None)
    kind = _config_get(config, "prediction_type")
    if "FlowMatch" in type(scheduler).__name__ or kind == "flow_prediction" or _config_get(config, "use_flow_sigmas"):
        return "flow"
    if kind in ("epsilon", "v_prediction", "sample"):
        return str(kind)
    if kind is None:
        return "epsilon"
    raise QsensError(f"scheduler {type(scheduler).__name__}: prediction_type {kind!r} is not one of "
                     "epsilon, v_prediction, sample, flow_prediction")


def pipeline_traits(pipe: Any, *, class_conditional: bool | None = None) -> PipelineTraits:
    """The traits of `pipe` (see the module docstring). `class_conditional` overrides the
    signature's answer (a caller that knows the class count)."""
    attr, model = denoiser_of(pipe)
    sig = inspect.signature(type(pipe).__call__).parameters
    params = frozenset(sig)
    if class_conditional or (class_conditional is None and "class_labels" in params):
        conditioning = "class"
    elif "prompt" in params:
        conditioning = "text"
    else:
        conditioning = "none"
    image_input = image_arg = None
    has_control = any(getattr(pipe, a, None) is not None for a in ("controlnet", "adapter"))
    if "control_image" in params:
        image_input, image_arg = "control", "control_image"
    elif "image" in params:
        if has_control:
            image_input, image_arg = "control", "image"
        elif "strength" in params:
            image_input, image_arg = "init", "image"
        else:
            image_input, image_arg = "unknown", "image"
    guidance = pipeline_default(pipe, "guidance_scale", None)
    if "guidance_scale" not in params:
        kind = "none"
    elif (_config_get(getattr(model, "config", None), "guidance_embeds")
          or _config_get(getattr(model, "config", None), "time_cond_proj_dim") is not None):
        kind = "embedded"  # FLUX.1-dev's guidance embedding, LCM's w embedding: no CFG batch
    else:
        kind = "cfg"
    steps = pipeline_default(pipe, "num_inference_steps", None)
    return PipelineTraits(
        pipeline=type(pipe).__name__, denoiser_attr=attr, conditioning=conditioning,
        image_input=image_input, image_arg=image_arg, resolution=native_resolution(pipe),
        guidance=None if guidance is None else float(guidance), guidance_kind=kind,
        steps=None if steps is None else int(steps),
        prediction=prediction_type(getattr(pipe, "scheduler", None)),
        takes_size="height" in params and "width" in params, params=params)


def check_drivable(pipe: Any, traits: PipelineTraits) -> None:
    """One line naming what qsens cannot supply, for a pipeline it cannot drive."""
    sig = inspect.signature(type(pipe).__call__).parameters
    name = traits.pipeline
    for param, what in _UNSUPPORTED.items():
        if param in sig:
            raise QsensError(f"{name} needs {what} (`{param}`), which qsens does not supply: "
                             "use a text-to-image, class-conditional, unconditional, img2img or "
                             "ControlNet pipeline")
    if traits.image_input == "unknown":
        raise QsensError(f"{name} takes an `image` that is neither an img2img source (no `strength`) "
                         "nor a control image (no controlnet/adapter component): qsens cannot tell "
                         "what to pass")
    handled = {"self", "prompt", "class_labels", "image", "control_image", "kwargs"}
    for p in sig.values():
        if p.name in handled or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is inspect.Parameter.empty:
            raise QsensError(f"{name}.__call__ requires `{p.name}`, which qsens does not know how "
                             "to supply")


# ----------------------------------------------------------------------------------------------
# prediction types
# ----------------------------------------------------------------------------------------------
def _flow_sigmas(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """sigma of each model call's timestep: matched against the scheduler's current
    `timesteps` (as passed, or divided by num_train_timesteps as FLUX passes them), else
    t / num_train_timesteps."""
    t = timesteps.detach().to("cpu", torch.float64).reshape(-1)
    n_train = float(_config_get(scheduler.config, "num_train_timesteps") or 1000)
    sched_t = getattr(scheduler, "timesteps", None)
    sigmas = getattr(scheduler, "sigmas", None)
    if sched_t is not None and sigmas is not None and len(sched_t):
        st = torch.as_tensor(sched_t).to(torch.float64).reshape(-1)
        sg = torch.as_tensor(sigmas).to(torch.float64).reshape(-1)[: len(st)]
        for scale in (1.0, 1.0 / n_train):
            d = (t[:, None] - st[None, :] * scale).abs()
            best, idx = d.min(dim=1)
            if bool((best <= 1e-3 * max(scale, 1e-6) + 1e-6).all()):
                return sg[idx]
    return (t / n_train if float(t.max(initial=0.0)) > 1.0 else t).clamp(0.0, 1.0)


def eps_scale(prediction: str, scheduler: Any, timesteps: torch.Tensor | None) -> torch.Tensor | None:
    """d(epsilon-hat)/d(model output) per sample (float64, (n,)); None for epsilon models
    (the factor is 1: callers keep their exact epsilon arithmetic)."""
    if prediction == "epsilon":
        return None
    if prediction not in PREDICTION_TYPES:
        raise QsensError(f"unknown prediction type {prediction!r} (known: {', '.join(PREDICTION_TYPES)})")
    if timesteps is None:
        raise QsensError(f"a {prediction} model's calibration inputs carry no timestep: cannot "
                         "weight its output")
    if prediction == "flow":
        return (1.0 - _flow_sigmas(scheduler, timesteps)).to(torch.float64)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise QsensError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod: cannot weight "
                         f"a {prediction} model's output")
    alphas = torch.as_tensor(alphas).to(torch.float64)
    idx = timesteps.detach().to("cpu", torch.float64).reshape(-1).round().long().clamp(0, len(alphas) - 1)
    a = alphas[idx]
    if prediction == "v_prediction":
        return a.sqrt()
    return (a / (1.0 - a)).sqrt()  # sample (x0): |d eps / d x0| = alpha_t / sigma_t
