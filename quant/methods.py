"""The registry of weight quantization methods: name → quantizer, dequantization table, stored
floats (which fix the overhead accounting and the packed format) and torchao export kind.

Every method stores the same two things per layer, which is what lets one bank format, one size
accounting and one packed format serve them all:

- codes `(C_out, n)` uint8 in [0, 2^b): one per weight (n = weights per output channel);
- params `(P, K)` floats, stored as fp16 and counted at 16 bits each (docs/quant.md; as
  Qua2SeDiMo counts them), from which `table(params, bits)` gives a `(P, 2^b)` lookup table: the weight of
  each code, per row (P = C_out) or shared by every row (P = 1).

So a method's overhead is `P·K·16` bits (UAQ `2·16·C_out`, K-Means-C `2^b·16·C_out`, K-Means-A
`2^b·16`, as in Qua2SeDiMo), its dequantized weight is `table[row, code]`, and the packed checkpoint
stores the codes bit-packed plus the fp16 params. Adding a method is one file that calls
`register_method(QuantMethod(...))`; options `"{name}{bits}"` (bits 2–8) then parse, bank, apply,
account, pack and load like the built-ins (`tests/test_quant_methods.py` registers a toy one).
The predictor's method one-hot (`graphs.features.CONFIG_COLUMNS`) covers the built-in methods only
(saved predictors keep their feature width); another method's layers are featurised by bits,
compression ratio and weight error, with the one-hot all zero.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from core.errors import ConfigError
from core.registry import Registry

# Quantizer: (weights (R, n) float32, bits) -> (codes (R, n) uint8, params (P, K) float32 whose
# values are exactly representable in fp16: what is stored is what is used).
Quantizer = Callable[[torch.Tensor, int], "tuple[torch.Tensor, torch.Tensor]"]
_NAME = re.compile(r"^[a-z][a-z_]*[a-z]$")


@dataclass(frozen=True)
class QuantMethod:
    """One weight quantization method (module docstring for the shapes).

    `params_shape(c_out, bits)` → `(P, K)` stored floats; `table(params (P, K) float32, bits)` →
    `(P, 2^b)` float32 weight per code; `torchao`: `"affine"` (per-channel int, torchao's
    IntxWeightOnlyConfig), `"codebook"` (torchao's codebook config) or None (no torchao export)."""

    name: str
    summary: str
    quantize: Quantizer
    params_shape: Callable[[int, int], tuple[int, int]]
    table: Callable[[torch.Tensor, int], torch.Tensor]
    torchao: str | None = None

    def dequantize(self, codes: torch.Tensor, params: torch.Tensor, bits: int) -> torch.Tensor:
        """Weights `(R, n)` float32 of codes `(R, n)` and params `(P, K)`: `table[row, code]`
        (P = 1: one table for every row)."""
        table = self.table(params.to(torch.float32), bits)
        codes = codes.long()
        if table.shape[0] == 1:
            return table[0][codes]
        return table.gather(1, codes)


_REGISTRY: Registry[QuantMethod] = Registry("quantization method", ConfigError)


def register_method(method: QuantMethod, replace: bool = False) -> QuantMethod:
    """Add `method` to the registry (returns it). Raises ConfigError for a name that is not
    lowercase letters/underscores, is `fp`-prefixed (fp16 is the unquantized option), or is taken
    (unless `replace`)."""
    if not _NAME.match(method.name) or method.name.startswith("fp"):
        raise ConfigError(f"quantization method name {method.name!r}: use lowercase letters (and _), not "
                          "starting with 'fp' and not ending in a digit (options are NAME + bits, e.g. uaq4)")
    if method.torchao not in (None, "affine", "codebook"):
        raise ConfigError(f"method {method.name!r}: torchao must be 'affine', 'codebook' or None, "
                          f"not {method.torchao!r}")
    return _REGISTRY.register(method.name, method, replace)


def unregister_method(name: str) -> None:
    """Remove a registered method (tests that register a toy method clean up with it)."""
    _REGISTRY.unregister(name)


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order (the built-ins first: uaq, kmc, kma)."""
    return _REGISTRY.names()


def get_method(name: str) -> QuantMethod:
    """The registered method `name`; ConfigError naming the registered ones otherwise."""
    return _REGISTRY.get(name)
