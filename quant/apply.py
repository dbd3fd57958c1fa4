"""Put a config's dequantized weights into a model, and take them out again bit-exactly.

    with quantized(model, config, bank):      # torchao-style one call, scoped
        images = generate(model)
    handle = apply_config(model, config, bank) # or unscoped
    ...
    handle.restore()

Saving and restoring is keyed by the weight tensor's memory (quant.layers.alias_key), not by the
module name: layers that share one weight tensor (tied weights) are one unit, written once and
restored once, and a config that gives them different options is refused before anything changes.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
from torch import nn

from quant.activations import ActivationQuantHandle, enable_config_activations
from quant.bank import Bank
from quant.config import QuantConfig, check_tied
from quant.layers import quantizable_layers, tied_groups
from quant.options import FP16


@dataclass
class AppliedConfig:
    """What `apply_config` changed: per stored weight tensor (keyed by the first layer using it),
    its FP values and the live tensor they go back into; and activation hooks."""
    model: nn.Module
    saved: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    act_handle: ActivationQuantHandle | None = None

    @torch.no_grad()
    def restore(self) -> None:
        """Write every saved FP tensor back, once each, in reverse order of saving (so even
        weights that overlap in memory end bit-exactly as they were)."""
        for name in reversed(list(self.saved)):
            self.targets[name].copy_(self.saved[name])
        self.saved.clear()
        self.targets.clear()
        if self.act_handle is not None:
            self.act_handle.remove()
            self.act_handle = None


@torch.no_grad()
def apply_config(model: nn.Module, config: QuantConfig, bank: Bank, verify: bool = True,
                 act_ranges: Mapping[str, tuple[float, float]] | None = None) -> AppliedConfig:
    """Quantize `model` in place as `config` says; return the handle that restores it.

    verify: check the model's weights against the bank's fingerprint first (skip it in loops
    that already checked once — it hashes every weight).
    Activations: `config.act_bits` for every layer, `config.act_options` per layer (dynamic
    ranges; `act_ranges` {layer: (min, max)} from `calibrate_ranges` makes them static).
    Raises ConfigError (nothing changed) when layers sharing one weight tensor in `model` get
    different options, and QsensError for weights that partially overlap another layer's.
    """
    bank.validate(config)
    if verify:
        bank.check_model(model)
    modules = quantizable_layers(model)
    # Ties as the model has them now (the bank's may differ if weights were tied after building it)
    tied = tied_groups(modules)
    check_tied(config.options, tied, where="config")
    leader = {name: group[0] for group in tied for name in group[1:]}
    applied = AppliedConfig(model)
    try:
        for name, option in config.options.items():
            if option == FP16 or leader.get(name, name) in applied.saved:
                continue  # fp16, or the group's shared tensor is already written
            unit = leader.get(name, name)
            weight = modules[unit].weight.data
            applied.saved[unit] = weight.clone()
            applied.targets[unit] = weight
            weight.copy_(bank.dequantize(unit, option, dtype=weight.dtype, device=weight.device))
        applied.act_handle = enable_config_activations(model, config, ranges=act_ranges)
    except BaseException:
        applied.restore()
        raise
    return applied


@contextmanager
def quantized(model: nn.Module, config: QuantConfig, bank: Bank, verify: bool = True,
              act_ranges: Mapping[str, tuple[float, float]] | None = None) -> Iterator[nn.Module]:
    """Context manager: the model runs with `config` inside, with its FP weights after."""
    handle = apply_config(model, config, bank, verify=verify, act_ranges=act_ranges)
    try:
        yield model
    finally:
        handle.restore()


quantize_ = apply_config  # torchao-style alias: quantize_(model, config, bank)
