"""Quantization core: quantizers, the bank, configs, applying them, and size accounting.

    bank = build_bank(model, ["uaq4", "kmc3"], model_name="digits"); bank.save("data/bank/digits")
    config = QuantConfig.load("config.json")
    with quantized(model, config, bank):
        ...
"""
from quant.accounting import ConfigStats, avg_bits, bops, layer_bits, summarize
from quant.activations import activation_quant, enable_activation_quant
from quant.apply import AppliedConfig, apply_config, quantize_, quantized
from quant.bank import Bank, build_bank
from quant.config import QuantConfig
from core.errors import BankFormatError, BankMismatchError, ConfigError, QsensError
from quant.layers import LayerInfo, count_macs, layer_infos, quantizable_layers
from quant.pack import load_quantized, pack, save_quantized
from quant.methods import QuantMethod, get_method, method_names, register_method
from quant.options import DEFAULT_OPTIONS, FP16, METHODS, Option, parse_option
from quant.quantizers import QuantizedTensor, fake_quantize, quantize

__all__ = [
    "ConfigStats", "avg_bits", "bops", "layer_bits", "summarize", "activation_quant",
    "enable_activation_quant", "AppliedConfig", "apply_config", "quantize_", "quantized", "Bank",
    "build_bank", "QuantConfig", "BankFormatError", "BankMismatchError", "ConfigError", "QsensError",
    "LayerInfo", "count_macs", "layer_infos", "quantizable_layers", "DEFAULT_OPTIONS", "FP16", "METHODS",
    "Option", "parse_option", "QuantMethod", "get_method", "method_names", "register_method", "QuantizedTensor", "fake_quantize", "quantize",
]
