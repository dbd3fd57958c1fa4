"""Scoring configs for real: apply from the bank → generate from a fixed seed set → score.

Used twice, on disjoint seed sets: while *selecting* (strategies that score their top candidates,
`search.select_seed`) and while *evaluating* the found configs (`evaluate.image_seed`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from quant.config import QuantConfig


@dataclass
class RealScorer:
    denoiser: Any
    bank: Any
    scorer: Any
    steps: int | None = None
    _checked: bool = False

    @staticmethod
    def load(cli: Any, bank, steps: int | None = None) -> "RealScorer":
        """From a `qsens.context.Context` (anything with `load_denoiser()` and `spec.device`)."""
        from sampling.scoring import make_scorer

        den = cli.load_denoiser()
        return RealScorer(den, bank, make_scorer(den, device=cli.spec.device), steps)

    def _gen_kw(self) -> dict:
        return {} if self.steps is None else {"steps": self.steps}

    def generate(self, config: QuantConfig | None, n: int, seed: int):
        """Images of `config` (None: the FP model); the model's weights are restored after."""
        from quant.apply import quantized

        if config is None:
            return self.denoiser.generate(n, seed, **self._gen_kw())
        if not self._checked:
            self.bank.check_model(self.denoiser.model)
            self._checked = True
        with quantized(self.denoiser.model, config, self.bank, verify=False):
            return self.denoiser.generate(n, seed, **self._gen_kw())

    def score(self, config: QuantConfig | None, n: int, seed: int) -> dict:
        """{fid, content, status, reason, seconds, n_images}; failures are rows, not exceptions."""
        t0 = time.perf_counter()
        gen = self.generate(config, n, seed)
        sc = self.scorer.score(gen)
        return {"fid": float(sc.fid) if sc.ok else math.nan,
                "content": float(sc.content) if sc.ok else math.nan,
                "status": sc.status, "reason": sc.reason or "", "n_images": int(sc.n_images),
                "seconds": time.perf_counter() - t0, "images": gen.images}

    def image_mse(self, config: QuantConfig, fp_images: np.ndarray, seed: int) -> float:
        """Mean squared error (in float, no uint8 wrap-around) between `config`'s images and the FP
        images of the same seeds — MixDQ's final pick, over several classes instead of one prompt."""
        gen = self.generate(config, len(fp_images), seed)
        if gen.n_nonfinite:
            return math.inf
        return float(np.mean((gen.images.astype(np.float64) - fp_images.astype(np.float64)) ** 2))
