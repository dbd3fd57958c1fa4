"""The `search:` and `evaluate:` sections of params.yaml, read into dataclasses (unknown keys fail)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import QsensError
from core.params import load_section



def strategy_names() -> tuple[str, ...]:
    """The registry's names (`search.strategies.REGISTRY`), imported late: the registry imports this module."""
    from search.strategies import NAMES

    return NAMES


@dataclass(frozen=True)
class SearchParams:
    """The `search:` section of params.yaml: budgets (avg bits, overhead included), IP tolerance and
    time limit, strategies, and the predictor search's trust-region knobs.
    """

    budgets: tuple[float, ...] = (3.05, 3.25, 3.5, 3.75)  # avg bits, overhead included
    tolerance: float = 0.05  # the IP keeps avg bits in [budget - tolerance, budget]
    strategies: tuple[str, ...] = ("predictor", "fisher", "layerwise", "mixdq", "error", "uniform", "random-best")
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
    fisher_samples: int = 64  # fisher: calibration inputs from the FP trajectory (seed 003)
    fisher_trajectories: int = 32
    fisher_calib_seed: int = 3  # image seed set of the calibration trajectories
    fisher_timesteps: str = "uniform"  # uniform | normal (PTQ4DM)

    def __post_init__(self) -> None:
        known = strategy_names()
        bad = [s for s in self.strategies if s not in known]
        if bad:
            raise QsensError(f"unknown search strategies {bad}; known: {', '.join(known)}")
        if self.tolerance < 0:
            raise QsensError(f"search.tolerance must be >= 0, got {self.tolerance}")
        if self.fisher_timesteps not in ("uniform", "normal"):
            raise QsensError(f"search.fisher_timesteps must be uniform or normal, got {self.fisher_timesteps!r}")
        if any(b2 <= b1 for b1, b2 in zip(self.budgets, self.budgets[1:])):
            raise QsensError(f"search.budgets {list(self.budgets)} must increase (a family starts each "
                             "budget from the one below)")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "SearchParams":
        """The `search:` section of a params file (QsensError when malformed)."""
        return read_section(SearchParams, path, "search")


@dataclass(frozen=True)
class EvaluateParams:
    """The `evaluate:` section of params.yaml: images per config, fresh seed sets, steps, grid,
    pairing."""

    images: int = 500  # images per evaluated config
    image_seeds: tuple[int, ...] = (23, 24, 25)  # fresh seed sets (>= 3), each scored: disjoint from the
    # cache, selection, probe, calibration and analysis seed sets (checked)
    steps: int | None = None  # sampler steps (None: the model's default)
    grid_columns: int = 10
    paired: bool = True  # also record the paired scores vs the FP images of the same seeds

    def __post_init__(self) -> None:
        if len(self.image_seeds) < 1 or len(set(self.image_seeds)) != len(self.image_seeds):
            raise QsensError(f"evaluate.image_seeds {list(self.image_seeds)}: give distinct seed sets "
                             "(at least 2 for a standard error; the pipeline uses 5)")

    @property
    def image_seed(self) -> int:
        """The first seed set (sample grids are drawn from it)."""
        return int(self.image_seeds[0])

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "EvaluateParams":
        """The `evaluate:` section of a params file (QsensError when malformed)."""
        return read_section(EvaluateParams, path, "evaluate")


def read_section(cls, path: str | Path, section: str):
    """`cls(**params[section])` with tuples for list values; unknown keys are one QsensError."""
    return load_section(cls, path, section, lists_as_tuples=True)
