"""The `search:` and `evaluate:` sections of params.yaml, read into dataclasses (unknown keys fail)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quant.errors import QsensError
from quant.params import load_section

STRATEGIES = ("predictor", "layerwise", "mixdq", "error", "uniform", "random-best")


@dataclass(frozen=True)
class SearchParams:
    budgets: tuple[float, ...] = (3.25, 3.5, 3.75)  # avg bits, overhead included
    tolerance: float = 0.05  # the IP keeps avg bits in [budget - tolerance, budget]
    strategies: tuple[str, ...] = STRATEGIES
    time_limit_s: float = 10.0  # per IP solve
    relinearise_rounds: int = 30  # predictor: trust-region re-linearisations at most
    trust_region: float = 0.25  # predictor: share of layers the first re-linearised IP may change
    cached_starts: int = 5  # predictor: best-predicted cached configs inside the window as starts
    candidates_scored: int = 3  # predictor / mixdq: top candidates scored for real (0: none)
    select_images: int = 100  # images per real score while selecting (not the evaluation)
    select_seed: int = 11  # image seed set for selection (disjoint from evaluate.image_seed)
    mixdq_k: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)  # ratio quality-bits / content-bits
    mixdq_pick_images: int = 20  # images (2 per class) for MixDQ's final MSE-to-FP pick
    steps: int | None = None  # sampler steps while selecting (None: the model's default)

    def __post_init__(self) -> None:
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise QsensError(f"unknown search strategies {bad}; known: {', '.join(STRATEGIES)}")
        if self.tolerance < 0:
            raise QsensError(f"search.tolerance must be >= 0, got {self.tolerance}")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "SearchParams":
        return read_section(SearchParams, path, "search")


@dataclass(frozen=True)
class EvaluateParams:
    images: int = 500  # images per evaluated config
    image_seed: int = 23  # seed set: must differ from every image_seed in the cache and selection
    steps: int | None = None  # sampler steps (None: the model's default)
    grid_columns: int = 10

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "EvaluateParams":
        return read_section(EvaluateParams, path, "evaluate")


def read_section(cls, path: str | Path, section: str):
    """`cls(**params[section])` with tuples for list values; unknown keys are one QsensError."""
    return load_section(cls, path, section, lists_as_tuples=True)
