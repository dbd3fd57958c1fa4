"""Which modules are quantizable, their shapes, and a fingerprint of their weights."""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    """Shape facts of one quantizable layer: kind, weight shape `(C_out, C_in, *kernel)`, weights,
    MACs."""

    name: str
    kind: str  # "Linear" | "Conv1d" | "Conv2d"
    shape: tuple[int, ...]  # weight shape, (C_out, C_in, *kernel)
    n_weights: int
    c_out: int
    macs: int = 0  # multiply-accumulates of one forward at the example input (0 = unknown)

    def to_dict(self) -> dict:
        """The layer info as a JSON-able dict (shape as a list)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @staticmethod
    def from_dict(d: dict) -> "LayerInfo":
        """Rebuild a layer info from `to_dict()`'s output (`macs` 0 when absent)."""
        return LayerInfo(d["name"], d["kind"], tuple(d["shape"]), int(d["n_weights"]),
                         int(d["c_out"]), int(d.get("macs", 0)))


def unwrap(model: nn.Module) -> nn.Module:
    """The model users' tools wrap: torch.compile's OptimizedModule (`_orig_mod`) and similar
    (`module` of DataParallel/DDP-style wrappers), so layer names are those of the model itself."""
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in ("DataParallel", "DistributedDataParallel"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


# Attention fusions that leave the replaced projections in the module tree, unused by forward:
# diffusers' `fuse_qkv_projections()` sets `fused_projections` on each Attention and adds
# `to_qkv` (self-attention: replaces to_q/to_k/to_v) or `to_kv` (cross-attention: to_k/to_v), and
# on joint attention `to_added_qkv` (replaces add_q_proj/add_k_proj/add_v_proj).
_FUSIONS = (("to_qkv", ("to_q", "to_k", "to_v")), ("to_kv", ("to_k", "to_v")),
            ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")))


def dead_layers(model: nn.Module) -> dict[str, str]:
    """{layer: why} for quantizable layers that exist in the module tree but that forward never
    runs because a fusion replaced them (see _FUSIONS). Empty for models without fusions, so
    their layer lists are exactly what they were. `executed_layers` checks the same from a real
    forward pass."""
    model = unwrap(model)
    dead: dict[str, str] = {}
    for name, module in model.named_modules():
        if not getattr(module, "fused_projections", False):
            continue
        children = dict(module.named_children())
        for fused, parts in _FUSIONS:
            if isinstance(children.get(fused), QUANTIZABLE_TYPES):
                for part in parts:
                    if isinstance(children.get(part), QUANTIZABLE_TYPES):
                        full = f"{name}.{part}" if name else part
                        dead.setdefault(full, f"replaced by {name + '.' if name else ''}{fused} "
                                              "(fuse_qkv_projections): forward never runs it")
    return dead


def quantizable_layers(model: nn.Module, include_dead: bool = False) -> dict[str, nn.Module]:
    """Every Conv1d/Conv2d/Linear of `model` that forward runs, by fully qualified name, in
    module order: the one definition the bank, the accounting, apply, pack, export and the
    fingerprint share.

    A module reachable under two names (shared weights) is listed once, under its first name.
    Wrappers are seen through (`unwrap`: torch.compile), and layers a fusion left in the tree but
    forward never runs (`dead_layers`: diffusers' fuse_qkv_projections) are left out unless
    `include_dead`. For a model with neither, the list is every such module in module order.
    """
    model = unwrap(model)
    dead = {} if include_dead else dead_layers(model)
    chosen = getattr(model, SELECTION_ATTR, None)  # `restrict_layers`: model.layers / model.max_layers
    layers: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE_TYPES) and id(module) not in seen:
            seen.add(id(module))
            if name not in dead and (chosen is None or name in chosen):
                layers[name] = module
    return layers


SELECTION_ATTR = "qsens_layer_selection"


def select_layers(layers: Sequence[str], pattern: str | None = None, max_layers: int = 0,
                  what: str = "layers") -> list[str]:
    """Those of `layers` matching `pattern` (regex search; None = all), then at most `max_layers`
    of them (0 = all) evenly spaced over their order, first and last included. QsensError naming
    `what` when the pattern matches no layer or is not a regular expression."""
    from core.errors import QsensError

    try:
        chosen = [l for l in layers if re.search(pattern, l)] if pattern else list(layers)
    except re.error as exc:
        raise QsensError(f"{what} {pattern!r} is not a regular expression ({exc})") from None
    if not chosen:
        example = layers[0] if layers else "none"
        raise QsensError(f"{what} {pattern!r} matches no layer (layers look like {example!r})")
    if max_layers and len(chosen) > max_layers:
        idx = sorted(set(np.linspace(0, len(chosen) - 1, max_layers).round().astype(int).tolist()))
        chosen = [chosen[i] for i in idx]
    return chosen


def restrict_layers(model: nn.Module, pattern: str | None, max_layers: int = 0) -> list[str]:
    """Make `select_layers(pattern, max_layers)` of `model`'s layers its quantizable layers, for
    everything that asks `quantizable_layers` (bank, accounting, apply, pack, export, graph,
    fingerprint): the others keep their full-precision weights and are outside the bit budget.
    The cost knob for very large models (seed 000's `--max_layers`): probe and sweeps scale with
    the layer count. Recorded on the (unwrapped) root module, so copies of the model keep it.
    Returns the chosen names; QsensError as `select_layers` (named `model.layers`)."""
    root = unwrap(model)
    root.__dict__.pop(SELECTION_ATTR, None)
    chosen = select_layers(list(quantizable_layers(root)), pattern, max_layers, what="model.layers")
    if pattern or max_layers:
        object.__setattr__(root, SELECTION_ATTR, frozenset(chosen))
    return chosen


@torch.no_grad()
def executed_layers(model: nn.Module, *args, **kwargs) -> list[str]:
    """The quantizable layers (dead ones included) that one forward pass at the given inputs
    runs, in the order they first run (forward hooks)."""
    ran: list[str] = []
    hooks = []
    for name, module in quantizable_layers(model, include_dead=True).items():
        hooks.append(module.register_forward_hook(lambda _m, _i, _o, name=name: ran.append(name)))
    try:
        model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(ran))


def non_finite_layers(layers: dict[str, nn.Module] | nn.Module) -> dict[str, int]:
    """{layer: number of NaN/inf weight values} for the quantizable layers whose weight is not
    finite (meta tensors have no values and are skipped). Computed in the weight's own dtype, so
    an fp16/bf16 model is checked without a float32 copy."""
    modules = quantizable_layers(layers) if isinstance(layers, nn.Module) else layers
    bad: dict[str, int] = {}
    with torch.no_grad():
        for name, module in modules.items():
            w = module.weight
            if w.device.type == "meta" or not w.is_floating_point():
                continue
            n = int((~torch.isfinite(w)).sum())
            if n:
                bad[name] = n
    return bad


def check_finite_weights(layers: dict[str, nn.Module] | nn.Module, what: str = "the model") -> None:
    """QsensError in one line naming every quantizable layer whose weight holds NaN or inf (a
    checkpoint damaged by an fp16 overflow in training or by a bad merge): quantizing it would
    give NaN codes and NaN errors, and every score after it would be NaN."""
    from core.errors import QsensError

    bad = non_finite_layers(layers)
    if bad:
        names = list(bad)
        shown = ", ".join(f"{n} ({bad[n]} value{'s' if bad[n] > 1 else ''})" for n in names[:5])
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise QsensError(f"{what} has non-finite (NaN/inf) weights in {len(names)} layer(s): {shown}{more}; "
                         "the checkpoint is damaged: repair or re-export it before quantizing")


def alias_key(weight: torch.Tensor) -> tuple:
    """Identity of the memory a weight tensor reads: equal keys ⇔ the same values at the same
    addresses (the same Parameter, or two views of one storage with the same offset, shape,
    stride and dtype). Meta tensors have no storage; there the tensor object is the identity."""
    ptr = 0 if weight.device.type == "meta" else weight.untyped_storage().data_ptr()
    if ptr == 0:
        return ("object", id(weight))
    return ("storage", weight.device.type, weight.device.index, ptr, weight.storage_offset(),
            tuple(weight.shape), tuple(weight.stride()), weight.dtype)


def tied_groups(layers: dict[str, nn.Module] | nn.Module) -> list[list[str]]:
    """Groups (≥ 2 names, module order; the first name leads) of quantizable layers whose weights
    alias one tensor (`alias_key`). A group is one quantization unit: one option, stored and
    counted once. Raises QsensError for layers whose weights overlap in one storage without being
    the same view (e.g. one weight a slice of another): no option can be applied to each alone."""
    from core.errors import QsensError

    modules = quantizable_layers(layers) if isinstance(layers, nn.Module) else layers
    by_key: dict[tuple, list[str]] = {}
    by_storage: dict[tuple, list[tuple[str, tuple, int, int]]] = {}
    for name, module in modules.items():
        w = module.weight
        key = alias_key(w)
        by_key.setdefault(key, []).append(name)
        if key[0] == "storage" and len(by_key[key]) == 1:
            start = w.storage_offset() * w.element_size()
            extent = 1 + sum((s - 1) * st for s, st in zip(w.shape, w.stride()))
            by_storage.setdefault(key[1:4], []).append((name, key, start, start + extent * w.element_size()))
    for views in by_storage.values():
        views.sort(key=lambda v: v[2])
        reach = views[0]  # the view reaching furthest so far
        for view in views[1:]:
            if view[2] < reach[3]:
                raise QsensError(f"layers {reach[0]} and {view[0]} have weights that overlap in one storage "
                                 "without being the same tensor: they cannot be quantized independently; "
                                 "untie them (clone one weight) first")
            if view[3] > reach[3]:
                reach = view
    return [names for names in by_key.values() if len(names) > 1]


def layer_info(name: str, module: nn.Module, macs: int = 0) -> LayerInfo:
    """The `LayerInfo` of a quantizable module at `name` (`macs`: its MACs at the example input, 0 =
    unknown)."""
    shape = tuple(int(s) for s in module.weight.shape)
    n = 1
    for s in shape:
        n *= s
    return LayerInfo(name, type(module).__name__ if type(module) in QUANTIZABLE_TYPES
                     else _base_kind(module), shape, n, shape[0], int(macs))


def _base_kind(module: nn.Module) -> str:
    for t in QUANTIZABLE_TYPES:
        if isinstance(module, t):
            return t.__name__
    raise TypeError(f"{type(module).__name__} is not quantizable")


def layer_infos(model: nn.Module, macs: dict[str, int] | None = None) -> list[LayerInfo]:
    """The `LayerInfo` of every quantizable layer of `model`, in module order."""
    macs = macs or {}
    return [layer_info(n, m, macs.get(n, 0)) for n, m in quantizable_layers(model).items()]


@torch.no_grad()
def count_macs(model: nn.Module, *args, **kwargs) -> dict[str, int]:
    """MACs of each quantizable layer in one forward pass with the given example inputs."""
    macs: dict[str, int] = {}
    hooks = []

    def make_hook(name: str, module: nn.Module):
        def hook(_mod, _inp, out):
            out_t = out[0] if isinstance(out, (tuple, list)) else out
            w = module.weight
            per_output = w[0].numel()  # C_in/groups * prod(kernel) MACs per output element
            macs[name] = macs.get(name, 0) + int(out_t.numel()) * int(per_output)
        return hook

    for name, module in quantizable_layers(model).items():
        hooks.append(module.register_forward_hook(make_hook(name, module)))
    try:
        model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return macs


def weight_digest(weight: torch.Tensor) -> str:
    """Hash of one weight tensor's shape and float32 values (device and dtype independent)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(weight.shape)).encode())
    if weight.device.type == "meta":
        h.update(b"meta")
    else:
        h.update(weight.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def layer_fingerprints(model: nn.Module) -> dict[str, str]:
    """Per-layer weight digests; together they identify the model a bank was built from."""
    return {name: weight_digest(m.weight) for name, m in quantizable_layers(model).items()}


def combine_fingerprints(per_layer: dict[str, str]) -> str:
    """One blake2b-128 hex digest of `{layer: fingerprint}`, independent of the dict's order."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(per_layer):
        h.update(name.encode())
        h.update(per_layer[name].encode())
    return h.hexdigest()
