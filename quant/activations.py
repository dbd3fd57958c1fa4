"""Dynamic activation fake-quantization on the inputs of quantizable layers.

Asymmetric min-max at 8 or 6 bits, computed on the fly for every input:
  - Linear inputs (..., C_in): per token (min/max over the last dimension);
  - Conv inputs (N, C, *spatial): per (sample, channel) (min/max over the spatial dims).
Works with FP or quantized weights; `remove()` switches it off.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from quant.errors import ConfigError
from quant.layers import quantizable_layers

ACT_BITS = (8, 6)


def fake_quantize_activation(x: torch.Tensor, bits: int, reduce_dims: tuple[int, ...]) -> torch.Tensor:
    qmax = (1 << bits) - 1
    lo = x.amin(dim=reduce_dims, keepdim=True)
    hi = x.amax(dim=reduce_dims, keepdim=True)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant slice is exact anyway
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return (q - zero) * scale


def _reduce_dims(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (-1,)
    return tuple(range(2, x.dim()))  # conv: (N, C, L) or (N, C, H, W) -> over spatial dims


@dataclass
class ActivationQuantHandle:
    bits: int
    hooks: list = field(default_factory=list)

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def enable_activation_quant(model: nn.Module, bits: int, layers: Iterable[str] | None = None) -> ActivationQuantHandle:
    if bits not in ACT_BITS:
        raise ConfigError(f"activation bits {bits!r} not supported (choose 8 or 6)")
    modules = quantizable_layers(model)
    names = list(modules) if layers is None else list(layers)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ConfigError(f"activation quantization: unknown layer(s) {', '.join(unknown[:5])}")
    handle = ActivationQuantHandle(bits)

    def pre_hook(module: nn.Module, args: tuple):
        x = args[0]
        return (fake_quantize_activation(x, bits, _reduce_dims(module, x)),) + tuple(args[1:])

    for name in names:
        handle.hooks.append(modules[name].register_forward_pre_hook(pre_hook))
    return handle


@contextmanager
def activation_quant(model: nn.Module, bits: int, layers: Iterable[str] | None = None) -> Iterator[nn.Module]:
    handle = enable_activation_quant(model, bits, layers)
    try:
        yield model
    finally:
        handle.remove()
