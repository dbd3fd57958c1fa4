"""Example inputs for any diffusers denoiser, derived from its forward signature + config.

The one builder behind graph tracing (`graphs/`), MAC counts and calibration inputs
(`Denoiser.example_inputs`). Nothing here names a model family: each forward parameter is filled
by a rule keyed on the parameter's name (diffusers' naming conventions: `sample`, `timestep`,
`encoder_hidden_states`, `added_cond_kwargs`, ...) and sized from the config fields the forward
pass branches on (`addition_embed_type`, `encoder_hid_dim_type`, `class_embed_type`,
`time_cond_proj_dim`, `attention_type`, ...; see diffusers' `UNet2DConditionModel.forward`,
`get_aug_embed`, `process_encoder_hidden_states`). The layout is checked with one forward pass
(free on `meta`; on a real model at a small latent side): if the main input does not fit as an
image (B, C, H, W) it is retried as packed tokens (B, L, C).

Signal inputs (latents, text/image embeddings) are seeded standard normals, so calibration sees
non-degenerate activations; labels, masks and positions are fixed values. The graph does not
depend on the spatial size, but MACs do: `InputSpec` records what was used.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.errors import QsensError

MAX_LATENT = 32  # latent side graphs trace at when the config's sample_size is larger
DEFAULT_LATENT = 64  # latent side when the config gives no sample_size
DEFAULT_TEXT_TOKENS = 77  # CLIP's context length; configs with `text_len` override it
TIMESTEP_VALUE = 500.0
PROBE_SIDE = 8  # latent side (in patches) of the layout check on a model with real weights
GLIGEN_OBJECTS = 30  # boxes per image in diffusers' GLIGEN pipelines (max_objs)
HINT_CHANNELS = 4  # diffusers' ImageHintTimeEmbedding turns the hint image into 4 latent channels
HINT_FACTOR = 8  # ... at 1/8 of its resolution (three stride-2 convs)

# Inputs that carry positions or masks rather than signal: the graph treats them as constants,
# so e.g. rotary embeddings do not turn every q/k into a combine node.
STATIC_INPUTS = frozenset({
    "image_rotary_emb", "img_ids", "txt_ids", "attention_mask", "encoder_attention_mask",
    "text_embedding_mask", "text_embedding_mask_t5",
})

# Parameters never filled: control flow, and residuals that come from another network
# (ControlNet, T2I-Adapter) rather than from the denoiser's own config.
_SKIP = frozenset({
    "return_dict", "joint_attention_kwargs", "attention_kwargs",
    "down_block_additional_residuals", "mid_block_additional_residual",
    "down_intrablock_additional_residuals", "controlnet_block_samples",
    "controlnet_single_block_samples", "block_controlnet_hidden_states", "skip_layers",
    "controlnet_blocks_repeat",
})


@dataclass
class InputSpec:
    """What the model was run with (recorded in the graph so MACs can be interpreted)."""

    resolution: tuple[int, int]  # latent H, W (or token grid for id inputs)
    text_tokens: int | None
    layout: str  # "image" (B, C, H, W) | "tokens" (B, L, C) | "ids" (B, H, W)
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch: int = 1

    def describe(self) -> dict:
        """The input spec as a JSON-able dict (resolution, text tokens, layout, batch)."""
        return {"resolution": list(self.resolution), "text_tokens": self.text_tokens,
                "layout": self.layout, "batch": self.batch}


def _cfg(model: nn.Module, *keys: str, default: Any = None) -> Any:
    """First non-None config value among `keys` (model attributes win: some are resolved in
    __init__, e.g. PixArt's use_additional_conditions)."""
    config = getattr(model, "config", {})
    for key in keys:
        value = vars(model).get(key) if key.startswith("use_") else None
        if value is None:
            value = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
        if value is not None:
            return value
    return default


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def latent_side(model: nn.Module, max_side: int | None = None) -> int:
    """The config's latent side (`sample_size`), capped at `max_side` when given."""
    size = int(_first(_cfg(model, "sample_size", default=max_side or DEFAULT_LATENT)))
    return min(size, int(max_side)) if max_side else size


def _text_dim(model: nn.Module) -> int:
    """Width of the raw `encoder_hidden_states` (before any `encoder_hid_proj`)."""
    dim = _cfg(model, "caption_channels", "joint_attention_dim", "encoder_hid_dim",
               "encoder_hidden_size", "cross_attention_dim")
    if dim is None:
        raise QsensError(f"{type(model).__name__}: takes encoder_hidden_states but its config "
                         f"gives no text width (cross_attention_dim, joint_attention_dim...)")
    return int(_first(dim))


def _head_dim(model: nn.Module) -> int:
    head = _cfg(model, "attention_head_dim")
    if head is not None:
        return int(_first(head))
    return int(_cfg(model, "hidden_size")) // int(_cfg(model, "num_attention_heads"))


def _patch(model: nn.Module) -> int:
    return int(_cfg(model, "patch_size", default=1))


def _time_embed_dim(model: nn.Module) -> int:
    """Width of the UNet time embedding (diffusers' `_set_time_proj`)."""
    dim = _cfg(model, "time_embedding_dim")
    if dim is not None:
        return int(dim)
    per = 2 if _cfg(model, "time_embedding_type") == "fourier" else 4
    return per * int(_first(_cfg(model, "block_out_channels")))


def _need(model: nn.Module, key: str, why: str) -> int:
    value = _cfg(model, key)
    if value is None:
        raise QsensError(f"{type(model).__name__}: config sets {why} but not `{key}`")
    return int(_first(value))


class _Make:
    """Tensors on the model's device: seeded normals for signal, fixed values otherwise (meta:
    no data at all)."""

    def __init__(self, batch: int, device: torch.device, dtype: torch.dtype, seed: int):
        self.batch, self.device, self.dtype = batch, device, dtype
        self.gen = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> torch.Tensor:
        if self.device.type == "meta":
            return torch.empty(shape, device=self.device, dtype=self.dtype)
        return torch.randn(shape, generator=self.gen).to(self.device, self.dtype)

    def full(self, shape: tuple, value: float, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.full(shape, value, device=self.device, dtype=dtype or self.dtype)

    def labels(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.long, device=self.device)


def _class_labels(model: nn.Module, m: _Make) -> torch.Tensor | None:
    """Class/extra conditioning labels, when the config says they are consumed
    (diffusers' `_set_class_embedding`: `class_embed_type` wins over `num_class_embeds`)."""
    B = m.batch
    kind = _cfg(model, "class_embed_type")
    if kind == "timestep":
        return m.full((B,), TIMESTEP_VALUE, torch.float32)  # (B,) embedded like a timestep
    if kind in ("projection", "simple_projection"):
        return m.randn(B, _need(model, "projection_class_embeddings_input_dim",
                                f"class_embed_type={kind!r}"))  # (B, D)
    if kind == "identity":
        return m.randn(B, _time_embed_dim(model))  # (B, time_embed_dim), added to the embedding
    if _cfg(model, "num_class_embeds") is not None:
        return m.labels(B)  # (B,) class ids
    # AdaLN-Zero transformers (DiT) embed a class label with the timestep.
    if _cfg(model, "norm_type") == "ada_norm_zero" and _cfg(model, "num_embeds_ada_norm") is not None:
        return m.labels(B)
    return None


def _added_cond_kwargs(model: nn.Module, side: int, m: _Make) -> dict | None:
    """`added_cond_kwargs` from `addition_embed_type` and `encoder_hid_dim_type` (UNets) or
    `use_additional_conditions` (PixArt-style AdaLN-single)."""
    B = m.batch
    out: dict[str, Any] = {}
    add = _cfg(model, "addition_embed_type")
    hid = _cfg(model, "encoder_hid_dim_type")
    if add == "text_time":  # SDXL: pooled text + 6 micro-conditions, projected together
        time_dim = _need(model, "addition_time_embed_dim", "addition_embed_type='text_time'")
        total = _need(model, "projection_class_embeddings_input_dim", "addition_embed_type='text_time'")
        out["text_embeds"] = m.randn(B, total - 6 * time_dim)  # (B, pooled text width)
        out["time_ids"] = m.full((B, 6), float(8 * side))  # (orig hw, crop, target hw) in pixels
    elif add == "text_image":  # Kandinsky 2.1: both projections are cross_attention_dim wide
        dim = _need(model, "cross_attention_dim", "addition_embed_type='text_image'")
        out["text_embeds"] = m.randn(B, dim)
        out["image_embeds"] = m.randn(B, dim)
    elif add in ("image", "image_hint"):  # Kandinsky 2.2 (+ ControlNet hint image)
        out["image_embeds"] = m.randn(B, _need(model, "encoder_hid_dim", f"addition_embed_type={add!r}"))
        if add == "image_hint":
            out["hint"] = m.randn(B, 3, HINT_FACTOR * side, HINT_FACTOR * side)  # (B, 3, H, W) pixels
    if hid == "text_image_proj":
        out["image_embeds"] = m.randn(B, _need(model, "cross_attention_dim", "encoder_hid_dim_type"))
    elif hid == "image_proj":
        out["image_embeds"] = m.randn(B, _need(model, "encoder_hid_dim", "encoder_hid_dim_type='image_proj'"))
    extra = getattr(model, "use_additional_conditions", None)
    if extra is not None:  # resolution / aspect-ratio micro-conditions (PixArt-style AdaLN-single)
        out["resolution"] = m.full((B, 2), float(8 * side)) if extra else None
        out["aspect_ratio"] = m.full((B, 1), 1.0) if extra else None
    return out or None


def _cross_attention_kwargs(model: nn.Module, m: _Make) -> dict | None:
    """GLIGEN grounding boxes when `attention_type` is gated: without them the position net and
    every gated fuser are never called."""
    kind = _cfg(model, "attention_type")
    if kind not in ("gated", "gated-text-image"):
        return None
    B, N = m.batch, GLIGEN_OBJECTS
    dim = int(_first(_cfg(model, "cross_attention_dim")))  # diffusers: positive_len
    boxes = m.full((B, N, 4), 0.5)  # (B, N, xyxy) in [0, 1]
    ones = m.full((B, N), 1.0)
    if kind == "gated":
        g = {"boxes": boxes, "masks": ones, "positive_embeddings": m.randn(B, N, dim)}
    else:
        g = {"boxes": boxes, "masks": ones, "phrases_masks": ones, "image_masks": ones,
             "phrases_embeddings": m.randn(B, N, dim), "image_embeddings": m.randn(B, N, dim)}
    return {"gligen": g}


def _encoder_hidden_states(model: nn.Module, tokens: int, m: _Make) -> torch.Tensor | None:
    # Kandinsky 2.2: the image embedding replaces the text; the pipeline passes None.
    if _cfg(model, "encoder_hid_dim_type") == "image_proj":
        return None
    return m.randn(m.batch, tokens, _text_dim(model))  # (B, T, D)


def text_length(model: nn.Module, text_tokens: int | None = None) -> int:
    """Text tokens of `encoder_hidden_states`: `text_tokens`, else the config's `text_len`, else 77."""
    return int(text_tokens or _cfg(model, "text_len", default=DEFAULT_TEXT_TOKENS))


def _build_kwargs(model: nn.Module, side: int, layout: str, text_tokens: int | None,
                  m: _Make) -> tuple[tuple, dict]:
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params:
        raise QsensError(f"{type(model).__name__}.forward takes no inputs")
    B = m.batch
    in_channels = int(_cfg(model, "in_channels", default=4))
    if _cfg(model, "addition_embed_type") == "image_hint":
        in_channels -= HINT_CHANNELS  # the hint's channels are concatenated inside forward
    n_tokens = (side // _patch(model)) ** 2 if layout == "image" else side * side
    tokens = text_length(model, text_tokens)
    tokens_t5 = int(_cfg(model, "text_len_t5", default=tokens))
    main, *rest = params

    if layout == "ids" or main.name == "input_ids":
        layout = "ids"
        x = m.labels(B, side, side)  # (B, H, W) token ids
    elif layout == "tokens":
        x = m.randn(B, side * side, in_channels)  # (B, L, C) packed latents
    else:
        x = m.randn(B, in_channels, side, side)  # (B, C, H, W)

    kwargs: dict[str, Any] = {}
    for p in rest:
        name = p.name
        value: Any = None
        if name in _SKIP:
            continue
        if name in ("timestep", "timesteps", "t"):
            value = m.full((B,), TIMESTEP_VALUE, torch.float32)  # (B,)
        elif name == "encoder_hidden_states":
            value = _encoder_hidden_states(model, tokens, m)
        elif name == "encoder_hidden_states_t5":
            value = m.randn(B, tokens_t5, int(_cfg(model, "cross_attention_dim_t5")))
        elif name == "text_embedding_mask":
            value = m.full((B, tokens), 1, torch.long)
        elif name == "text_embedding_mask_t5":
            value = m.full((B, tokens_t5), 1, torch.long)
        elif name in ("pooled_projections", "pooled_text_emb"):
            value = m.randn(B, int(_cfg(model, "pooled_projection_dim", "cond_embed_dim")))  # (B, D)
        elif name == "class_labels":
            value = _class_labels(model, m)
        elif name == "timestep_cond":  # LCM-style guidance embedding
            if _cfg(model, "time_cond_proj_dim") is not None:
                value = m.randn(B, int(_cfg(model, "time_cond_proj_dim")))  # (B, D)
        elif name == "added_cond_kwargs":
            value = _added_cond_kwargs(model, side, m)
        elif name == "cross_attention_kwargs":
            value = _cross_attention_kwargs(model, m)
        elif name == "image_meta_size":
            if _cfg(model, "use_style_cond_and_image_meta_size"):
                value = m.full((B, 6), float(8 * side))
        elif name == "style":
            if _cfg(model, "use_style_cond_and_image_meta_size"):
                value = m.labels(B)
        elif name == "image_rotary_emb":
            head = _head_dim(model)
            value = (m.full((n_tokens, head), 1.0),  # cos (N, Dh)
                     m.full((n_tokens, head), 0.0))  # sin (N, Dh)
        elif name == "img_ids":
            value = m.full((n_tokens, 3), 0.0)  # (N, 3) positions
        elif name == "txt_ids":
            value = m.full((tokens, 3), 0.0)  # (T, 3)
        elif name == "guidance":
            if _cfg(model, "guidance_embeds"):
                value = m.full((B,), 3.5, torch.float32)
        elif name == "micro_conds":
            n = int(_cfg(model, "micro_cond_embed_dim")) // int(_cfg(model, "micro_cond_encode_dim"))
            value = m.full((B, n), 1.0)  # (B, n) sizes/crops/score
        elif p.default is inspect.Parameter.empty:
            raise QsensError(f"{type(model).__name__}.forward needs `{name}`, which qsens does "
                             f"not know how to build an example for")
        if value is not None or p.default is inspect.Parameter.empty:
            kwargs[name] = value  # a required input may be None (Kandinsky 2.2's text)
    if "return_dict" in {p.name for p in params}:
        kwargs["return_dict"] = False
    return (x,), kwargs


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in model.parameters():
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _uses_text(kwargs: dict) -> bool:
    return any(k.startswith("encoder_hidden_states") and v is not None for k, v in kwargs.items())


def example_input_spec(model: nn.Module, max_side: int | None = None,
                       text_tokens: int | None = None, check: bool = True, *,
                       batch_size: int = 1, device: str | torch.device | None = None,
                       seed: int = 0) -> InputSpec:
    """Example inputs plus what they mean.

    `max_side`: cap on the latent side (None: the config's real `sample_size`). `text_tokens`:
    text length (None: the config's `text_len`, else 77). `check` runs one forward to pick the
    layout (on `meta`: free, at the full size; with real weights: at a latent side of 8 patches,
    in `torch.no_grad`). Raises QsensError when no layout runs or a required input is unknown.
    """
    model_device, dtype = _device_dtype(model)
    device = torch.device(device) if device is not None else model_device
    side = latent_side(model, max_side)
    probe = side if device.type == "meta" else min(side, PROBE_SIDE * _patch(model))
    errors: list[str] = []
    for layout in ("image", "tokens"):
        if check:
            args, kwargs = _build_kwargs(model, probe, layout, text_tokens, _Make(1, device, dtype, seed))
            try:
                with torch.no_grad():
                    model(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure means: try the next layout
                first = str(exc).splitlines()[0] if str(exc) else ""
                errors.append(f"{layout}: {type(exc).__name__}: {first}")
                if args[0].dtype == torch.long:
                    break  # token ids have no other layout
                continue
        args, kwargs = _build_kwargs(model, side, layout, text_tokens,
                                     _Make(batch_size, device, dtype, seed))
        layout = "ids" if args[0].dtype == torch.long else layout
        return InputSpec((side, side), text_length(model, text_tokens) if _uses_text(kwargs) else None,
                         layout, args, kwargs, batch_size)
    raise QsensError(f"cannot run {type(model).__name__} on example inputs ({'; '.join(errors)})")


def example_inputs(model: nn.Module, batch_size: int = 1, device: str | torch.device | None = None,
                   max_side: int | None = None, text_tokens: int | None = None,
                   seed: int = 0) -> tuple[tuple, dict]:
    """`(args, kwargs)` such that `model(*args, **kwargs)` runs one denoising step.

    Defaults give the model's real latent size (`sample_size`, what MAC counts and calibration
    want); pass `max_side` to cap it (graph tracing). Latents and embeddings are seeded normals
    (`seed`) in the model's float dtype on `device` (default: the model's). Raises QsensError.
    """
    spec = example_input_spec(model, max_side, text_tokens, batch_size=batch_size,
                              device=device, seed=seed)
    return spec.args, spec.kwargs
