"""What every search strategy works on: the `SearchContext` (bank, params, where its inputs live,
lazily loaded services), the `SearchResult` it returns, and the readers of its input files.

A strategy is a function `(ctx, budget, incumbent) -> SearchResult` (`search/strategies.py` lists
them). `incumbent` is the config the same strategy chose at the next lower budget of a family, or
None: every config inside a lower budget also fits a higher one, so a strategy may start from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from quant.config import QuantConfig
from core.errors import QsensError
from search.ip import IPResult, solve_named

if TYPE_CHECKING:  # the params module imports the strategy registry, which imports this one
    from search.params import SearchParams


@dataclass
class SearchContext:
    """The bank plus the inputs and services strategies may need; services load on first use.

    selector_factory: -> `sampling.evaluator.Evaluator` (scores candidates on `params.select_seed`);
    None = no images are generated while searching. denoiser_factory: -> the FP `Denoiser` for
    strategies that measure the model themselves (fisher); defaults to the selector's denoiser.
    """
    bank: Any  # quant.Bank
    params: SearchParams  # the `search:` section (`search.params.SearchParams`)
    cache_path: Path | None = None  # quant_cache parquet (uniform, random-best, predictor starts)
    predictor_dir: Path | None = None  # data/predictor/<model>
    analysis_dir: Path | None = None  # data/analysis/<model>
    selector_factory: Callable[[], Any] | None = None
    ensemble_factory: Callable[[], Any] | None = None  # → object with predict() / sensitivity()
    denoiser_factory: Callable[[], Any] | None = None
    log: Callable[[str], None] = lambda msg: None
    bank_dir: Path | None = None
    _selector: Any = None
    _ensemble: Any = None
    _denoiser: Any = None
    _memo: dict = field(default_factory=dict)  # per-context results reused across budgets

    @property
    def model(self) -> str:
        """The model name (the bank's)."""
        return self.bank.model

    def selector(self):
        """The evaluator that scores candidates on the selection seeds, built on first use (None:
        none)."""
        if self._selector is None and self.selector_factory is not None:
            self._selector = self.selector_factory()
        return self._selector

    def denoiser(self):
        """The FP denoiser (QsensError when this context has no way to load one)."""
        if self._denoiser is None:
            if self.denoiser_factory is not None:
                self._denoiser = self.denoiser_factory()
            elif self.selector() is not None:
                self._denoiser = self.selector().denoiser
            else:
                raise QsensError("this strategy measures the model itself: it needs the model "
                                 "(run without --no-select, or give the context a denoiser)")
        return self._denoiser

    def ensemble(self):
        """The trained predictor, loaded on first use from the factory or `predictor_dir` (None:
        none)."""
        if self._ensemble is None:
            if self.ensemble_factory is not None:
                self._ensemble = self.ensemble_factory()
            elif self.predictor_dir is not None:
                try:
                    from predictor.api import Ensemble
                except ImportError:
                    return None
                if not Path(self.predictor_dir).exists():
                    return None
                ensemble = Ensemble.load(self.predictor_dir)
                ensemble.check_bank(self.bank)  # before keeping it: a refused one is never reused
                self._ensemble = ensemble
        return self._ensemble

    def solve(self, scores: dict[tuple[str, str], float], budget: float, **kw) -> tuple[dict[str, str], IPResult]:
        """Solve the budgeted IP for `{(layer, option): score}` (higher = better) at `budget` avg bits,
        within the params' tolerance and time limit; returns (`{layer: option}`, `IPResult`).
        """
        return solve_named(scores, self.bank, budget, self.params.tolerance,
                           time_limit_s=self.params.time_limit_s, **kw)

    def config(self, options: dict[str, str]) -> QuantConfig:
        """The `QuantConfig` of `{layer: option}`, with its avg bits from the bank."""
        cfg = QuantConfig(self.model, dict(options))
        cfg.avg_bits = float(self.bank.summarize(cfg).avg_bits)
        return cfg

    def selection_score(self, config: QuantConfig) -> float:
        """FID of `config` on the selection seed set (`select_images` images), memoised per config
        id, so a family re-scoring its incumbent spends nothing; non-finite → inf."""
        memo = self._memo.setdefault("selection", {})
        if config.config_id not in memo:
            p = self.params
            fid = self.selector().score(config, p.select_images, p.select_seed)["fid"]
            memo[config.config_id] = fid if math.isfinite(fid) else math.inf
        return memo[config.config_id]

    def selection_spent(self) -> int:
        """Configs scored for real on the selection seed set so far by this context."""
        return len(self._memo.get("selection", {}))

    def cache(self, provenance: str | None = None) -> pd.DataFrame | None:
        """The quant_cache's ok rows of this model (None without a cache); `provenance` keeps only
        rows of that origin ("random": the sampler's random configs)."""
        if self.cache_path is None or not Path(self.cache_path).exists():
            return None
        from sampling.cache import read_cache

        df = read_cache(Path(self.cache_path), ok_only=True)
        df = df[df["model"] == self.model]
        if provenance is not None and "provenance" in df.columns:
            df = df[df["provenance"].fillna("random") == provenance]
        return df.reset_index(drop=True)

    def analysis_table(self, name: str, needed: list[str], how: str) -> pd.DataFrame:
        """`<analysis_dir>/<name>.parquet` with the columns `needed`; `how` says how to make it."""
        if self.analysis_dir is None:
            raise QsensError(f"the {name} strategy needs the analysis directory ({how})")
        path = Path(self.analysis_dir) / f"{name}.parquet"
        if not path.exists():
            raise QsensError(f"{path} missing: {how}")
        df = pd.read_parquet(path)
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise QsensError(f"{path}: missing column(s) {', '.join(missing)}")
        return df


@dataclass
class SearchResult:
    """A strategy's answer at one budget. `candidates`: configs it evaluated, best first (not
    serialised; active learning scores some of them); `real_scores`: configs it scored for real
    while searching, by kind (selection, cache rows read, ...)."""
    strategy: str
    budget: float
    config: QuantConfig
    report: dict[str, Any]
    seconds: float = 0.0
    candidates: list[QuantConfig] = field(default_factory=list)

    def to_report(self) -> dict[str, Any]:
        """The result as one flat JSON-able report row (strategy, budget, avg bits, id, seconds,
        stats)."""
        stats = self.report.get("stats") or {}
        return {"strategy": self.strategy, "budget": self.budget, "avg_bits": self.config.avg_bits,
                "config_id": self.config.config_id, "seconds": round(self.seconds, 3),
                **{k: v for k, v in self.report.items() if k != "stats"}, **stats}

    def save(self, path: str | Path, cache: str | Path | None, predictor_dir: str | Path) -> dict[str, Any]:
        """Write the config to `path` -> its family entry: `to_report()` + config path and SHA-256
        (what `qsens evaluate --given` checks: a replaced file is refused), the cache it was
        searched with (only one that exists: evaluate refuses a family naming a missing one) and
        the predictor dir."""
        from core.provenance import file_sha256

        self.config.save(path)
        return self.to_report() | {"config": str(path), "config_sha256": file_sha256(path),
                                   "cache": str(cache) if cache and Path(cache).is_file() else None,
                                   "predictor_dir": str(predictor_dir)}


def ip_report(res: IPResult) -> dict[str, Any]:
    """The IP result's status, seconds, objective, bound and resolution as `ip_*` report fields."""
    return {"ip_status": res.status, "ip_seconds": round(res.seconds, 3), "ip_objective": res.objective,
            "ip_bound": res.bound, "ip_resolution": res.resolution}


def keep_incumbent(ctx: SearchContext, cfg: QuantConfig, incumbent: QuantConfig | None,
                   scores: dict[tuple[str, str], float]) -> tuple[QuantConfig, str]:
    """The IP's config, or the lower budget's `incumbent` when the strategy's own objective rates
    the incumbent higher (a window IP [b − tol, b] can exclude it): a family never trades a config
    for one its objective calls worse."""
    if incumbent is None or incumbent.config_id == cfg.config_id:
        return cfg, "ip"

    def total(c: QuantConfig) -> float:
        return sum(scores.get((l, o), 0.0) for l, o in c.options.items())

    if total(incumbent) > total(cfg) + 1e-12:
        return ctx.config(incumbent.options), "incumbent (lower budget's config scores higher)"
    return cfg, "ip"
