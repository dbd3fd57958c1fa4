"""Activation fake-quantization on the inputs of quantizable layers: dynamic or static.

Asymmetric min-max quantization, `q = clamp(round(x / s) + z, 0, 2^b − 1)`, `x̂ = (q − z)·s` with
`s = (hi − lo) / (2^b − 1)`, `z = round(−lo / s)`. Where (lo, hi) comes from:

- **dynamic** (default): computed on the fly for every input —
  Linear inputs (..., C_in) per token (min/max over the last dimension),
  Conv inputs (N, C, *spatial) per (sample, channel) (min/max over the spatial dims);
- **static**: one (lo, hi) per layer, fixed before sampling: the min/max of the layer's input
  over a calibration set (`calibrate_ranges`; the denoiser's own inputs along the FP sampling
  trajectory, time steps drawn uniformly or normally — `sampling.calibration`, seed 003).
  Values outside the range are clipped, as on an integer runtime.

Bits are global (`bits=8`: the A8/A6 settings the reference system pairs with its weight
configs) or per layer (`bits={layer: b}`, b in 2–8, what a search allocates; a QuantConfig's
`act_options`, see `config_activation_bits`). Works with FP or quantized weights; the handle's
`remove()` switches it off.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from quant.config import MIN_ACT_BITS, MAX_ACT_BITS
from core.errors import ConfigError
from quant.layers import quantizable_layers
from quant.packing import native_fake_quant, native_fake_quant_dynamic, native_grid

ACT_BITS = (8, 6)  # the global setting (QuantConfig.act_bits, `--act-bits`)
ACT_MODES = ("dynamic", "static")


def fake_quantize_activation(x: torch.Tensor, bits: int, reduce_dims: tuple[int, ...]) -> torch.Tensor:
    """Dynamic asymmetric min-max fake-quantization of `x`, one range per slice left after
    reducing `reduce_dims` (same shape and dtype as `x`; the arithmetic in float32, see
    `_fake_quantize`)."""
    xf = x.to(_compute_dtype(x.dtype))
    fast = native_fake_quant_dynamic(xf, reduce_dims, (1 << bits) - 1)  # CPU: one C call, same values
    if fast is not None:
        out, lo, hi, some_degenerate = fast
        if some_degenerate:
            out = torch.where(hi <= lo, torch.minimum(torch.maximum(xf, lo), hi), out)
        return _cast_back(out, x.dtype)
    lo = x.amin(dim=reduce_dims, keepdim=True)
    hi = x.amax(dim=reduce_dims, keepdim=True)
    return _fake_quantize(x, bits, lo, hi)


def _cast_back(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 results in the activation's dtype; a grid point a rounding step past the dtype's
    max must not cast to inf."""
    if out.dtype == dtype:
        return out
    info = torch.finfo(dtype)
    return out.clamp(info.min, info.max).to(dtype)


def fake_quantize_static(x: torch.Tensor, bits: int, lo: float, hi: float) -> torch.Tensor:
    """Static (per-tensor) fake-quantization of `x` on the fixed range [lo, hi]; values outside
    are clipped to it."""
    dt = _compute_dtype(x.dtype)
    lo_t = torch.tensor(lo, dtype=dt, device=x.device)
    hi_t = torch.tensor(hi, dtype=dt, device=x.device)
    return _fake_quantize(x, bits, lo_t, hi_t)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for fp16/bf16 (and fp32) activations, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _fake_quantize(x: torch.Tensor, bits: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The grid arithmetic — range, scale, zero point, x / scale, the dequantized value — runs in
    float32 whatever the activation's dtype (in fp16 a range over 65504 would make the scale inf
    and the output NaN); the result is cast back to `x`'s dtype. For float32 inputs this is the
    same computation as before, bit for bit."""
    dt = _compute_dtype(x.dtype)
    xf, lo, hi = x.to(dt), lo.to(dt), hi.to(dt)
    qmax = (1 << bits) - 1
    fast = native_fake_quant(xf, lo, hi, qmax)  # CPU float32: one C call, the same ops
    if fast is not None:
        out, some_degenerate = fast
        if some_degenerate:
            degenerate = hi <= lo
            out = torch.where(degenerate, torch.minimum(torch.maximum(xf, lo), hi), out)
        return _cast_back(out, x.dtype)
    degenerate = hi <= lo
    span = hi - lo  # inf only for ranges wider than float32 (bf16 near its limits): split it then
    span_scale = torch.where(torch.isfinite(span), span / qmax, hi / qmax - lo / qmax)
    scale = torch.where(degenerate, torch.ones_like(hi), span_scale)
    zero = torch.round(-lo / scale)
    # round(x / s) + z, clamped, minus z, times s: the same ops as ever — one pass of the C loop
    # on CPU (quant/_decode.c, same IEEE ops), else in place in one buffer
    grid = native_grid(xf, scale, zero, qmax)
    if grid is None:
        grid = torch.div(xf, scale).round_().add_(zero).clamp_(0, qmax).sub_(zero).mul_(scale)
    # a zero-width range holds one value: keep it exactly (the grid above would round it to an integer);
    # on CPU the check is free, so the three full-size ops are skipped when no range is degenerate
    if x.device.type == "cpu" and not bool(degenerate.any()):
        out = grid
    else:
        out = torch.where(degenerate, torch.minimum(torch.maximum(xf, lo), hi), grid)
    return _cast_back(out, x.dtype)


def _reduce_dims(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (-1,)
    return tuple(range(2, x.dim()))  # conv: (N, C, L) or (N, C, H, W) -> over spatial dims


@dataclass
class ActivationQuantHandle:
    """Hooks installed by `enable_activation_quant`: `bits` per layer, `mode`, `remove()`."""
    bits: dict[str, int]
    mode: str = "dynamic"
    hooks: list = field(default_factory=list)

    def remove(self) -> None:
        """Remove every hook installed by `enable_activation_quant` (activations are full precision
        again)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def check_layer_bits(bits: Mapping[str, Any], known: Iterable[str] | None = None,
                     where: str = "activation quantization") -> dict[str, int]:
    """`bits` as {layer: int}; one ConfigError naming every unknown layer (when `known` is given)
    and every value that is not an integer in 2–8 (8.0 counts as 8)."""
    out: dict[str, int] = {}
    bad = []
    for name, b in bits.items():
        if isinstance(b, float) and b.is_integer():
            b = int(b)
        if isinstance(b, bool) or not isinstance(b, int) or not MIN_ACT_BITS <= b <= MAX_ACT_BITS:
            bad.append(f"{name}={b!r}")
        else:
            out[name] = b
    problems = []
    if known is not None:
        known = set(known)
        unknown = [n for n in bits if n not in known]
        if unknown:
            problems.append(f"{len(unknown)} unknown layer(s): {_clip(unknown)}")
    if bad:
        problems.append(f"{len(bad)} activation bit-width(s) outside {MIN_ACT_BITS}-{MAX_ACT_BITS}: {_clip(bad)}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return out


def enable_activation_quant(model: nn.Module, bits: int | Mapping[str, int], layers: Iterable[str] | None = None,
                            *, ranges: Mapping[str, tuple[float, float]] | None = None) -> ActivationQuantHandle:
    """Fake-quantize the inputs of quantizable layers of `model` until `.remove()`.

    bits: one global bit-width (8 or 6) for `layers` (default: every quantizable layer), or a
        {layer: bits} mapping (2–8 each; then `layers` must be None).
    ranges: static mode — {layer: (lo, hi)} from `calibrate_ranges`, one for every quantized
        layer; None = dynamic.
    Raises ConfigError (nothing installed) for bits outside the allowed set, unknown layers or
    layers without a static range.
    """
    modules = quantizable_layers(model)
    if isinstance(bits, Mapping):
        if layers is not None:
            raise ConfigError("activation quantization: give per-layer bits or `layers`, not both")
        per_layer = check_layer_bits(bits, modules)
    else:
        if isinstance(bits, bool) or bits not in ACT_BITS:
            raise ConfigError(f"activation bits {bits!r} not supported (choose 8 or 6; per-layer bits: 2-8)")
        names = list(modules) if layers is None else list(layers)
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ConfigError(f"activation quantization: unknown layer(s) {_clip(unknown, 5)}")
        per_layer = {n: int(bits) for n in names}
    if ranges is not None:
        missing = [n for n in per_layer if n not in ranges]
        if missing:
            raise ConfigError(f"static activation quantization: no calibrated range for {len(missing)} "
                              f"layer(s): {_clip(missing, 5)}")
    handle = ActivationQuantHandle(per_layer, "dynamic" if ranges is None else "static")

    def make_hook(b: int, rng: tuple[float, float] | None):
        def pre_hook(module: nn.Module, args: tuple):
            x = args[0]
            if rng is None:
                xq = fake_quantize_activation(x, b, _reduce_dims(module, x))
            else:
                xq = fake_quantize_static(x, b, rng[0], rng[1])
            return (xq,) + tuple(args[1:])
        return pre_hook

    for name, b in per_layer.items():
        rng = None if ranges is None else (float(ranges[name][0]), float(ranges[name][1]))
        handle.hooks.append(modules[name].register_forward_pre_hook(make_hook(b, rng)))
    return handle


@contextmanager
def activation_quant(model: nn.Module, bits: int | Mapping[str, int], layers: Iterable[str] | None = None,
                     *, ranges: Mapping[str, tuple[float, float]] | None = None) -> Iterator[nn.Module]:
    """Context manager form of `enable_activation_quant`."""
    handle = enable_activation_quant(model, bits, layers, ranges=ranges)
    try:
        yield model
    finally:
        handle.remove()


def config_activation_bits(config, layers: Iterable[str]) -> dict[str, int]:
    """{layer: activation bits} a QuantConfig asks for over `layers`: its `act_options` entry,
    else its global `act_bits`; layers with neither are left out (FP activations)."""
    per_layer = dict(getattr(config, "act_options", None) or {})
    out = {}
    for name in layers:
        b = per_layer.get(name, config.act_bits)
        if b is not None:
            out[name] = int(b)
    return out


def enable_config_activations(model: nn.Module, config, *,
                              ranges: Mapping[str, tuple[float, float]] | None = None) -> ActivationQuantHandle | None:
    """Install the activation quantization a QuantConfig asks for (`config_activation_bits`);
    None when it asks for none. `ranges`: static mode, as in `enable_activation_quant`."""
    modules = quantizable_layers(model)
    unknown = [n for n in (getattr(config, "act_options", None) or {}) if n not in modules]
    if unknown:
        raise ConfigError(f"act_options: {len(unknown)} unknown layer(s): {_clip(unknown)}")
    bits = config_activation_bits(config, modules)
    return enable_activation_quant(model, bits, ranges=ranges) if bits else None


@torch.no_grad()
def calibrate_ranges(model: nn.Module, batches: Iterable[tuple[tuple, dict]],
                     layers: Iterable[str] | None = None) -> dict[str, tuple[float, float]]:
    """Static activation ranges: {layer: (min, max)} of each layer's input over every forward of
    `model` on `batches` ((args, kwargs) pairs, e.g. `CalibrationSet.chunks(n)`), in float64.
    A layer no batch reaches is left out. Any activation hooks already on the model apply (run it
    in FP to calibrate FP ranges)."""
    modules = quantizable_layers(model)
    names = list(modules) if layers is None else list(layers)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ConfigError(f"activation calibration: unknown layer(s) {_clip(unknown, 5)}")
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def make_hook(name: str):
        def hook(_module, args):
            x = args[0].detach()
            a, b = float(x.amin()), float(x.amax())
            lo[name] = min(lo.get(name, a), a)
            hi[name] = max(hi.get(name, b), b)
        return hook

    hooks = [modules[n].register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        for args, kwargs in batches:
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return {n: (lo[n], hi[n]) for n in names if n in lo}


def _clip(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
