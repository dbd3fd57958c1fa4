"""Quantization options: `"{method}{bits}"` strings such as `uaq4`, `kmc3`, `kma4`, or `fp16`.

- `uaq`: uniform affine, per output channel, clipping searched (Lp, p=2.4)
- `kmc`: 1-D k-means codebook per output channel
- `kma`: one 1-D k-means codebook for the whole tensor
- `fp16`: unquantized (counted at 16 bits per weight)

and any method registered in `quant.methods` (`{name}{bits}` parses once it is registered).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ConfigError
from quant.methods import method_names

METHODS: tuple[str, ...] = ("uaq", "kmc", "kma")  # the built-ins (quant/quantizers.py); all: method_names()
FP16 = "fp16"
MIN_BITS, MAX_BITS = 2, 8
DEFAULT_OPTIONS: tuple[str, ...] = ("uaq3", "uaq4", "kmc3", "kmc4", "kma3", "kma4")

_OPTION_RE = re.compile(r"^([a-z][a-z_]*[a-z])([2-8])$")


@dataclass(frozen=True, order=True)
class Option:
    """A quantization option: method (uaq | kmc | kma | fp16) and bits (2-8, 16 for fp16); `str` is
    e.g. `uaq4`.
    """

    method: str  # "uaq" | "kmc" | "kma" | "fp16" | a registered method
    bits: int  # 2..8, or 16 for fp16

    def __str__(self) -> str:
        return FP16 if self.method == FP16 else f"{self.method}{self.bits}"

    @property
    def is_fp(self) -> bool:
        """True for fp16 (not quantized)."""
        return self.method == FP16


def parse_option(text: str) -> Option:
    """`"kmc3"` -> Option("kmc", 3); raises ConfigError naming the bad string."""
    if text == FP16:
        return Option(FP16, 16)
    match = _OPTION_RE.match(str(text))
    if match is None or match.group(1) not in method_names():
        raise ConfigError(
            f"unknown option {text!r}: expected fp16 or one of {'/'.join(method_names())} "
            f"followed by bits {MIN_BITS}-{MAX_BITS} (e.g. uaq4, kmc3)"
        )
    return Option(match.group(1), int(match.group(2)))


def parse_options(texts: list[str] | tuple[str, ...]) -> list[Option]:
    """Parse and de-duplicate an option list, keeping order; fp16 is implicit and dropped."""
    seen: dict[str, Option] = {}
    for text in texts:
        option = parse_option(text.strip())
        if not option.is_fp:
            seen.setdefault(str(option), option)
    if not seen:
        raise ConfigError("the option set is empty: give at least one of e.g. uaq4, kmc3")
    return list(seen.values())


def bit_levels(options: list[str] | tuple[str, ...]) -> list[int]:
    """Sorted distinct bit-widths of an option set (fp16 excluded)."""
    return sorted({o.bits for o in parse_options(list(options))})
