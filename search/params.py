"""The `search:` and `evaluate:` sections of params.yaml, read into dataclasses (unknown keys fail)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import QsensError
from core.params import load_section, defaults_from



def strategy_names() -> tuple[str, ...]:
    """The registry's names (`search.strategies.REGISTRY`), imported late: the registry imports this module."""
    from search.strategies import NAMES

    return NAMES


@dataclass(frozen=True)
@defaults_from("search", calibration={
    "fisher_samples": "samples", "fisher_trajectories": "trajectories",
    "fisher_calib_seed": "seed", "fisher_timesteps": "timesteps"
})
class SearchParams:
    """The `search:` section of params.yaml: budgets (avg bits, overhead included), IP tolerance and
    time limit, strategies, and the predictor search's trust-region knobs.
    """

    budgets: tuple[float, ...]  # avg bits, overhead included
    tolerance: float  # the IP keeps avg bits in [budget - tolerance, budget]
    strategies: tuple[str, ...]
    time_limit_s: float  # per IP solve
    relinearise_rounds: int  # predictor: trust-region re-linearisations at most
    trust_region: float  # predictor: share of layers the first re-linearised IP may change
    cached_starts: int  # predictor: best-predicted cached configs inside the window as starts
    candidates_scored: int  # predictor / mixdq: top candidates scored for real (0: none)
    select_images: int  # images per real score while selecting (not the evaluation)
    select_seed: int  # image seed set for selection (disjoint from evaluate.image_seed)
    mixdq_k: tuple[float, ...]  # ratio quality-bits / content-bits
    mixdq_pick_images: int  # images (2 per class) for MixDQ's final MSE-to-FP pick
    steps: int | None  # sampler steps while selecting (None: the model's default)
    fisher_samples: int  # fisher: calibration inputs from the FP trajectory (seed 003)
    fisher_trajectories: int
    fisher_calib_seed: int  # image seed set of the calibration trajectories
    fisher_timesteps: str  # uniform | normal (PTQ4DM)

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
@defaults_from("evaluate", leave=("act_",))  # act_*: search.activation.ActEvalParams
class EvaluateParams:
    """The `evaluate:` section of params.yaml: images per config, fresh seed sets, steps, grid,
    pairing."""

    images: int  # images per evaluated config
    image_seeds: tuple[int, ...]  # fresh seed sets (>= 3), each scored: disjoint from the
    # cache, selection, probe, calibration and analysis seed sets (checked)
    steps: int | None  # sampler steps (None: the model's default)
    grid_columns: int
    paired: bool  # also record the paired scores vs the FP images of the same seeds

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
