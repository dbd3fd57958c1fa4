"""Put a config's dequantized weights into a model, and take them out again bit-exactly.

    with quantized(model, config, bank):      # torchao-style one call, scoped
        images = generate(model)
    handle = apply_config(model, config, bank) # or unscoped
    ...
    handle.restore()
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from quant.activations import ActivationQuantHandle, enable_activation_quant
from quant.bank import Bank
from quant.config import QuantConfig
from quant.layers import quantizable_layers
from quant.options import FP16


@dataclass
class AppliedConfig:
    """What `apply_config` changed: the FP weights it replaced, and activation hooks."""
    model: nn.Module
    saved: dict[str, torch.Tensor] = field(default_factory=dict)
    act_handle: ActivationQuantHandle | None = None

    @torch.no_grad()
    def restore(self) -> None:
        modules = quantizable_layers(self.model)
        for name, weight in self.saved.items():
            modules[name].weight.data.copy_(weight)
        self.saved.clear()
        if self.act_handle is not None:
            self.act_handle.remove()
            self.act_handle = None


@torch.no_grad()
def apply_config(model: nn.Module, config: QuantConfig, bank: Bank, verify: bool = True) -> AppliedConfig:
    """Quantize `model` in place as `config` says; return the handle that restores it.

    verify: check the model's weights against the bank's fingerprint first (skip it in loops
    that already checked once — it hashes every weight).
    """
    bank.validate(config)
    if verify:
        bank.check_model(model)
    modules = quantizable_layers(model)
    applied = AppliedConfig(model)
    try:
        for name, option in config.options.items():
            if option == FP16:
                continue
            weight = modules[name].weight
            applied.saved[name] = weight.data.clone()
            weight.data.copy_(bank.dequantize(name, option, dtype=weight.dtype, device=weight.device))
        if config.act_bits is not None:
            applied.act_handle = enable_activation_quant(model, config.act_bits)
    except BaseException:
        applied.restore()
        raise
    return applied


@contextmanager
def quantized(model: nn.Module, config: QuantConfig, bank: Bank, verify: bool = True) -> Iterator[nn.Module]:
    """Context manager: the model runs with `config` inside, with its FP weights after."""
    handle = apply_config(model, config, bank, verify=verify)
    try:
        yield model
    finally:
        handle.restore()


quantize_ = apply_config  # torchao-style alias: quantize_(model, config, bank)
