"""Random configs, as Qua2SeDiMo draws them, generalised to any ordered bit set.

Per config: p ~ U(0,1). Each layer takes the lowest bit-width with probability p, else the next
with probability p, ..., the highest bit-width takes what is left (for bits {3,4} this is
exactly "3-bit with probability p3, else 4-bit"). The method is uniform over the enabled
methods that have that bit-width. Config `index` under `seed` is always the same config.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from quant.config import QuantConfig
from core.errors import QsensError
from quant.options import parse_options

MAX_CONFIGS = 1_000_000
DUPLICATE_RUN = 10_000


def _methods_by_bits(options: Iterable[str]) -> dict[int, list[str]]:
    by_bits: dict[int, list[str]] = {}
    for opt in parse_options(list(options)):
        by_bits.setdefault(opt.bits, []).append(str(opt))
    return {b: sorted(v) for b, v in sorted(by_bits.items())}


def random_config(layer_names: Sequence[str], options: Iterable[str], seed: int, index: int) -> dict[str, str]:
    """Config number `index` of the random stream `seed`: {layer: option}, every layer listed."""
    by_bits = _methods_by_bits(options)
    levels = list(by_bits)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    p_low = rng.uniform()
    n = len(layer_names)
    level = np.full(n, len(levels) - 1)
    undecided = np.ones(n, dtype=bool)
    for i in range(len(levels) - 1):
        take = undecided & (rng.uniform(size=n) < p_low)
        level[take] = i
        undecided &= ~take
    pick = rng.uniform(size=n)
    config = {}
    for j, name in enumerate(layer_names):
        choices = by_bits[levels[level[j]]]
        config[name] = choices[min(int(pick[j] * len(choices)), len(choices) - 1)]
    return config


def random_configs(model: str, layer_names: Sequence[str], options: Iterable[str], seed: int,
                   count: int, start: int = 0) -> Iterator[tuple[int, QuantConfig]]:
    """Yield (index, config) for `count` distinct configs, skipping duplicates by config id.

    Raises QsensError when `count` exceeds MAX_CONFIGS, or when DUPLICATE_RUN draws in a row bring
    nothing new (the model's config space is smaller than `count`), instead of drawing forever."""
    if count > MAX_CONFIGS:
        raise QsensError(f"--num-configs {count} is more than {MAX_CONFIGS:,} configs; each config "
                         "costs a full generate-and-score run")
    options = list(options)
    seen: set[str] = set()
    index = start
    produced = 0
    misses = 0
    while produced < count:
        config = QuantConfig(model, random_config(layer_names, options, seed, index))
        index += 1
        if config.config_id in seen:
            misses += 1
            if misses >= DUPLICATE_RUN:
                raise QsensError(f"only {produced} distinct configs exist for {len(layer_names)} layer(s) × "
                                 f"{len(options)} option(s); asked for {count}")
            continue
        misses = 0
        seen.add(config.config_id)
        produced += 1
        yield index - 1, config
