"""Per-config node features: what a QuantConfig does to each weight node, from the bank.

For a layer quantized with option `o` (a `"{method}{bits}"` string, `fp16` when absent):
- `method`: fp16 | uaq | kmc | kma
- `bits`: payload bits per weight (16 for fp16)
- `ratio`: compression ratio vs fp16, overhead included: 16·n / bank.quantized_bits(layer, o)
- `qerror`: the bank's mean squared error per weight (0 for fp16)

The numeric encoding used by the GNN (`CONFIG_COLUMNS`) is the same for every method, so errors
compare across methods: one-hot method, bits/16, 1/ratio (= effective bits/16), and
`log_qerror` = clip((log10(mse) - LOG_ERR_FLOOR) / -LOG_ERR_FLOOR, 0, 1), 0 for fp16.

The bank is used only through `bank.layers`, `bank.error(layer, option)` and
`bank.quantized_bits(layer, option)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import networkx as nx
import torch

from quant.options import FP16, METHODS, parse_option

METHOD_CODES: tuple[str, ...] = (FP16,) + METHODS
CONFIG_COLUMNS: tuple[str, ...] = tuple(f"method_{m}" for m in METHOD_CODES) + (
    "bits_norm", "inv_ratio", "log_qerror")
LOG_ERR_FLOOR = -12.0  # log10 MSE per weight mapped to 0 (1e-12); MSE 1 maps to 1


class BankLike(Protocol):
    """What the featuriser needs of a bank (`quant.bank.Bank` has it): layers, error, quantized bits."""

    layers: Mapping[str, Any]  # name -> LayerInfo (needs .n_weights)

    def error(self, layer: str, option: str) -> float:
        """The layer's mean squared weight error per weight under `option`."""
        ...

    def quantized_bits(self, layer: str, option: str) -> int:
        """The layer's stored bits under `option`, payload plus overhead (codebooks, scales)."""
        ...


@dataclass(frozen=True)
class LayerOption:
    """What one option does to one layer: method, payload bits, compression ratio, MSE per weight."""

    method: str
    bits: int
    ratio: float
    qerror: float

    def columns(self) -> list[float]:
        """The `CONFIG_COLUMNS` encoding: one-hot method, bits/16, 1/ratio, clipped `log_qerror`."""
        onehot = [1.0 if self.method == m else 0.0 for m in METHOD_CODES]
        if self.method == FP16 or self.qerror <= 0:
            log_err = 0.0
        else:
            log_err = (math.log10(self.qerror) - LOG_ERR_FLOOR) / -LOG_ERR_FLOOR
            log_err = min(max(log_err, 0.0), 1.0)
        return onehot + [self.bits / 16.0, 1.0 / self.ratio if self.ratio > 0 else 1.0, log_err]


FP16_OPTION = LayerOption(FP16, 16, 1.0, 0.0)


def config_options(config: Any) -> Mapping[str, str]:
    """`QuantConfig.options` or a plain {layer: option} mapping."""
    options = getattr(config, "options", config)
    return options if options is not None else {}


def layer_option(layer: str, option: str, bank: BankLike) -> LayerOption:
    """The `LayerOption` of `layer` under `option`, read from the bank (fp16: no quantization)."""
    parsed = parse_option(option)
    if parsed.is_fp:
        return FP16_OPTION
    n = int(bank.layers[layer].n_weights)
    qbits = float(bank.quantized_bits(layer, option))
    return LayerOption(parsed.method, parsed.bits, 16.0 * n / qbits if qbits > 0 else 1.0,
                       float(bank.error(layer, option)))


class ConfigFeaturizer:
    """Config -> (L, len(CONFIG_COLUMNS)) rows for a fixed list of layers; caches each
    (layer, option) row, so featurising thousands of configs costs dictionary look-ups."""

    def __init__(self, layer_names: list[str], bank: BankLike | None):
        self.layer_names = list(layer_names)
        self.bank = bank
        self._rows: dict[tuple[str, str], list[float]] = {}

    def row(self, layer: str, option: str) -> list[float]:
        """The `CONFIG_COLUMNS` row of (layer, option), cached.

        Raises ValueError for a quantized option when the featuriser has no bank.
        """
        key = (layer, option)
        if key not in self._rows:
            if option == FP16:
                self._rows[key] = FP16_OPTION.columns()
            else:
                if self.bank is None:
                    raise ValueError("a bank is needed for quantized options")
                self._rows[key] = layer_option(layer, option, self.bank).columns()
        return self._rows[key]

    def __call__(self, config: Any) -> torch.Tensor:
        options = config_options(config)
        rows = [self.row(name, options.get(name, FP16)) for name in self.layer_names]
        return torch.tensor(rows, dtype=torch.float32)  # (L, C)


def apply_config(graph: nx.DiGraph, config: Any, bank: BankLike | None) -> nx.DiGraph:
    """Write method/bits/ratio/qerror on every weight node of `graph` (in place; returns it)."""
    options = config_options(config)
    for name, d in graph.nodes(data=True):
        if d["kind"] != "weight":
            continue
        opt = options.get(name, FP16)
        lo = FP16_OPTION if opt == FP16 else layer_option(name, opt, bank)  # type: ignore[arg-type]
        d.update(method=lo.method, bits=lo.bits, ratio=lo.ratio, qerror=lo.qerror)
    graph.graph["config_model"] = getattr(config, "model", None)
    return graph
