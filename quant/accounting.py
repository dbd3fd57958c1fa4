"""Size, average bits, BOPs and error of a config, accounted exactly as Qua2SeDiMo does.

Per layer with n weights and C_out output channels, at b bits:
    payload  = n·b
    overhead = UAQ 2·16·C_out (scale + zero) | K-Means-C 2^b·16·C_out | K-Means-A 2^b·16
    fp16     = 16·n, no overhead
avg_bits = Σ (payload + overhead) / Σ n over all quantizable weights (unlisted layers count as fp16).

Tied layers (`tied`: groups of layers sharing one weight tensor, see quant.layers.tied_groups) are
one stored tensor: its bits, weights and error count once (under the group's first layer). BOPs
count every module, since each one computes with the shared weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from quant.layers import LayerInfo
from quant.methods import get_method
from quant.options import FP16, Option, parse_option

FLOAT_BITS = 16  # every stored float (scale, zero point, centroid) counts as 16 bits


def overhead_bits(option: Option, info: LayerInfo) -> int:
    """Stored bits beyond the payload, 16 per stored float of the method (`quant.methods`): UAQ
    2·16·C_out, K-Means-C 2^b·16·C_out, K-Means-A 2^b·16, fp16 0."""
    if option.is_fp:
        return 0
    rows, cols = get_method(option.method).params_shape(info.c_out, option.bits)  # every stored float
    return rows * cols * FLOAT_BITS


def layer_bits(option: Option | str, info: LayerInfo) -> int:
    """Total stored bits of one layer at one option, overhead included."""
    option = parse_option(option) if isinstance(option, str) else option
    if option.is_fp:
        return FLOAT_BITS * info.n_weights
    return option.bits * info.n_weights + overhead_bits(option, info)


def stored_layers(infos: Mapping[str, LayerInfo], tied: Sequence[Sequence[str]] = ()) -> dict[str, LayerInfo]:
    """`infos` without the layers that only alias another layer's weight (each tied group keeps
    its first layer): the tensors that are actually stored."""
    followers = {name for group in tied for name in group[1:]}
    return {n: i for n, i in infos.items() if n not in followers}


def avg_bits(options: Mapping[str, str], infos: Mapping[str, LayerInfo], tied: Sequence[Sequence[str]] = ()) -> float:
    """Average stored bits per weight of a config, overhead included (module docstring; unlisted =
    fp16)."""
    infos = stored_layers(infos, tied)
    total = sum(layer_bits(options.get(name, FP16), info) for name, info in infos.items())
    return total / sum(info.n_weights for info in infos.values())


def bops(options: Mapping[str, str], infos: Mapping[str, LayerInfo],
         act_bits: int | Mapping[str, int] | None = None) -> int:
    """Bit operations: Σ MACs · weight bits · activation bits (16 when activations are not
    quantized). `act_bits`: one width for every layer, or {layer: bits} (layers not listed: 16)."""
    if isinstance(act_bits, Mapping):
        return sum(info.macs * parse_option(options.get(name, FP16)).bits * act_bits.get(name, FLOAT_BITS)
                   for name, info in infos.items())
    a = act_bits or FLOAT_BITS
    return sum(info.macs * parse_option(options.get(name, FP16)).bits * a for name, info in infos.items())


@dataclass
class ConfigStats:
    """Size, average bits, total squared error and BOPs of one config (`config_stats`)."""

    avg_bits: float
    quantized_bytes: float  # Σ stored bits / 8, overhead included
    fp_bytes: int  # the same layers all at fp16
    quantized_error: float  # Σ over layers of n · (mean squared error per weight): total squared error
    bops: int

    def to_dict(self) -> dict:
        """The stats as a JSON-able dict."""
        return asdict(self)


def summarize(options: Mapping[str, str], infos: Mapping[str, LayerInfo],
              errors: Mapping[tuple[str, str], float], act_bits: int | Mapping[str, int] | None = None,
              tied: Sequence[Sequence[str]] = ()) -> ConfigStats:
    """Stats of a config; `errors[(layer, option)]` is the bank's mean squared error per weight.
    A tied group's shared tensor counts once (its first layer's option; the config must give the
    group one option, see quant.config.check_tied); BOPs count every module."""
    stored = stored_layers(infos, tied)
    bits = sum(layer_bits(options.get(n, FP16), i) for n, i in stored.items())
    n_total = sum(i.n_weights for i in stored.values())
    err = sum(i.n_weights * errors[(n, options[n])] for n, i in stored.items()
              if options.get(n, FP16) != FP16)
    return ConfigStats(bits / n_total, bits / 8, FLOAT_BITS * n_total // 8, float(err),
                       bops(options, infos, act_bits))
