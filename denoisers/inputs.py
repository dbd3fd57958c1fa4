"""Example inputs for tracing any diffusers denoiser, derived from its forward signature + config.

Nothing here names a model family: each forward parameter is filled by a rule keyed on the
parameter's name (diffusers' naming conventions: `sample`, `timestep`, `encoder_hidden_states`,
`added_cond_kwargs`, ...) and sized from the model's config. The result is checked with one
forward pass on the model's own device (free on `meta`); if the main input does not fit as an
image (B, C, H, W) it is retried as packed tokens (B, L, C).

The graph does not depend on the spatial size, but MACs do: `InputSpec` records what was used.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quant.errors import QsensError

BATCH = 1
MAX_LATENT = 32  # latent side used for tracing when the config's sample_size is larger
DEFAULT_TEXT_TOKENS = 77
TIMESTEP_VALUE = 500.0

# Inputs that carry positions or masks rather than signal: the graph treats them as constants,
# so e.g. rotary embeddings do not turn every q/k into a combine node.
STATIC_INPUTS = frozenset({
    "image_rotary_emb", "img_ids", "txt_ids", "attention_mask", "encoder_attention_mask",
    "text_embedding_mask", "text_embedding_mask_t5",
})

# Parameters never filled (control flow, adapters, controlnet residuals...).
_SKIP = frozenset({
    "return_dict", "cross_attention_kwargs", "joint_attention_kwargs", "attention_kwargs",
    "timestep_cond", "down_block_additional_residuals", "mid_block_additional_residual",
    "down_intrablock_additional_residuals", "controlnet_block_samples",
    "controlnet_single_block_samples", "block_controlnet_hidden_states", "skip_layers",
    "controlnet_blocks_repeat",
})


@dataclass
class InputSpec:
    """What the model was traced with (recorded in the graph so MACs can be interpreted)."""

    resolution: tuple[int, int]  # latent H, W (or token grid for id inputs)
    text_tokens: int | None
    layout: str  # "image" (B, C, H, W) | "tokens" (B, L, C) | "ids" (B, H, W)
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict:
        return {"resolution": list(self.resolution), "text_tokens": self.text_tokens,
                "layout": self.layout, "batch": BATCH}


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


def latent_side(model: nn.Module, max_side: int = MAX_LATENT) -> int:
    size = _first(_cfg(model, "sample_size", default=max_side))
    return int(min(int(size), max_side))


def _text_dim(model: nn.Module) -> int:
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


def _class_labels(model: nn.Module, device: torch.device) -> torch.Tensor | None:
    """Class/extra conditioning labels, when the config says they are consumed."""
    if _cfg(model, "num_class_embeds") is not None:
        return torch.zeros(BATCH, dtype=torch.long, device=device)  # (B,)
    kind = _cfg(model, "class_embed_type")
    if kind == "timestep":
        return torch.full((BATCH,), TIMESTEP_VALUE, device=device)  # (B,)
    if kind in ("projection", "simple_projection"):
        dim = int(_cfg(model, "projection_class_embeddings_input_dim"))
        return torch.zeros(BATCH, dim, device=device)  # (B, D)
    if kind == "identity":
        dim = int(_cfg(model, "time_embedding_dim", default=4 * _first(_cfg(model, "block_out_channels"))))
        return torch.zeros(BATCH, dim, device=device)
    # AdaLN-Zero transformers (DiT) embed a class label with the timestep.
    if _cfg(model, "norm_type") == "ada_norm_zero" and _cfg(model, "num_embeds_ada_norm") is not None:
        return torch.zeros(BATCH, dtype=torch.long, device=device)
    return None


def _added_cond_kwargs(model: nn.Module, device: torch.device) -> dict | None:
    out: dict[str, Any] = {}
    if _cfg(model, "addition_embed_type") == "text_time":
        time_dim = int(_cfg(model, "addition_time_embed_dim"))
        total = int(_cfg(model, "projection_class_embeddings_input_dim"))
        out["text_embeds"] = torch.zeros(BATCH, total - 6 * time_dim, device=device)  # pooled text
        out["time_ids"] = torch.zeros(BATCH, 6, device=device)  # (orig hw, crop, target hw)
    extra = getattr(model, "use_additional_conditions", None)
    if extra is not None:  # resolution / aspect-ratio micro-conditions (PixArt-style AdaLN-single)
        out["resolution"] = torch.ones(BATCH, 2, device=device) if extra else None
        out["aspect_ratio"] = torch.ones(BATCH, 1, device=device) if extra else None
    return out or None


def _build_kwargs(model: nn.Module, side: int, layout: str, text_tokens: int,
                  device: torch.device) -> tuple[tuple, dict]:
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params:
        raise QsensError(f"{type(model).__name__}.forward takes no inputs")
    in_channels = int(_cfg(model, "in_channels", default=4))
    n_tokens = (side // _patch(model)) ** 2 if layout == "image" else side * side
    main, *rest = params

    if layout == "ids" or main.name == "input_ids":
        layout = "ids"
        x = torch.zeros(BATCH, side, side, dtype=torch.long, device=device)  # (B, H, W) token ids
    elif layout == "tokens":
        x = torch.zeros(BATCH, side * side, in_channels, device=device)  # (B, L, C) packed latents
    else:
        x = torch.zeros(BATCH, in_channels, side, side, device=device)  # (B, C, H, W)

    kwargs: dict[str, Any] = {}
    for p in rest:
        name = p.name
        value: Any = None
        if name in _SKIP:
            continue
        if name in ("timestep", "timesteps", "t"):
            value = torch.full((BATCH,), TIMESTEP_VALUE, device=device)  # (B,)
        elif name == "encoder_hidden_states":
            tokens = int(_cfg(model, "text_len", default=text_tokens))
            value = torch.zeros(BATCH, tokens, _text_dim(model), device=device)  # (B, T, D)
        elif name == "encoder_hidden_states_t5":
            value = torch.zeros(BATCH, int(_cfg(model, "text_len_t5", default=text_tokens)),
                                int(_cfg(model, "cross_attention_dim_t5")), device=device)
        elif name == "text_embedding_mask":
            value = torch.ones(BATCH, int(_cfg(model, "text_len", default=text_tokens)),
                               dtype=torch.long, device=device)
        elif name == "text_embedding_mask_t5":
            value = torch.ones(BATCH, int(_cfg(model, "text_len_t5", default=text_tokens)),
                               dtype=torch.long, device=device)
        elif name in ("pooled_projections", "pooled_text_emb"):
            dim = int(_cfg(model, "pooled_projection_dim", "cond_embed_dim"))
            value = torch.zeros(BATCH, dim, device=device)  # (B, D)
        elif name == "class_labels":
            value = _class_labels(model, device)
        elif name == "added_cond_kwargs":
            value = _added_cond_kwargs(model, device)
        elif name == "image_meta_size":
            if _cfg(model, "use_style_cond_and_image_meta_size"):
                value = torch.full((BATCH, 6), 1024.0, device=device)
        elif name == "style":
            if _cfg(model, "use_style_cond_and_image_meta_size"):
                value = torch.zeros(BATCH, dtype=torch.long, device=device)
        elif name == "image_rotary_emb":
            head = _head_dim(model)
            value = (torch.ones(n_tokens, head, device=device),  # cos (N, Dh)
                     torch.zeros(n_tokens, head, device=device))  # sin (N, Dh)
        elif name == "img_ids":
            value = torch.zeros(n_tokens, 3, device=device)  # (N, 3) positions
        elif name == "txt_ids":
            value = torch.zeros(text_tokens, 3, device=device)  # (T, 3)
        elif name == "guidance":
            if _cfg(model, "guidance_embeds"):
                value = torch.full((BATCH,), 3.5, device=device)
        elif name == "micro_conds":
            n = int(_cfg(model, "micro_cond_embed_dim")) // int(_cfg(model, "micro_cond_encode_dim"))
            value = torch.ones(BATCH, n, device=device)  # (B, n) sizes/crops/score
        elif p.default is inspect.Parameter.empty:
            raise QsensError(f"{type(model).__name__}.forward needs `{name}`, which qsens does "
                             f"not know how to build an example for")
        if value is not None:
            kwargs[name] = value
    if "return_dict" in {p.name for p in params}:
        kwargs["return_dict"] = False
    return (x,), kwargs


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def example_input_spec(model: nn.Module, max_side: int = MAX_LATENT,
                       text_tokens: int = DEFAULT_TEXT_TOKENS, check: bool = True) -> InputSpec:
    """Example inputs plus what they mean; `check` runs one forward (free on meta)."""
    device = _device(model)
    side = latent_side(model, max_side)
    errors: list[str] = []
    for layout in ("image", "tokens"):
        args, kwargs = _build_kwargs(model, side, layout, text_tokens, device)
        layout = "ids" if args[0].dtype == torch.long else layout
        spec = InputSpec((side, side), text_tokens if _uses_text(kwargs) else None, layout,
                         args, kwargs)
        if not check:
            return spec
        try:
            with torch.no_grad():
                model(*args, **kwargs)
            return spec
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next layout
            errors.append(f"{layout}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            if layout == "ids":
                break
    raise QsensError(f"cannot run {type(model).__name__} on example inputs ({'; '.join(errors)})")


def _uses_text(kwargs: dict) -> bool:
    return any(k.startswith("encoder_hidden_states") for k in kwargs)


def example_inputs(model: nn.Module) -> tuple[tuple, dict]:
    """(args, kwargs) that run `model.forward` (on the model's device; `meta` works)."""
    spec = example_input_spec(model)
    return spec.args, spec.kwargs
