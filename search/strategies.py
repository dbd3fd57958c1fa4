"""The one registry of search strategies: name → function, the files its result depends on, and
the real measurements it spends. `run_strategy` runs one at one budget; `family` runs one over
increasing budgets, each starting from the lower budget's config (monotone families).

| strategy      | module                  | scores per (layer, option)                     | then |
| ------------- | ----------------------- | ---------------------------------------------- | ---- |
| `predictor`   | `search/trust_region.py`| −ΔFID predicted by the GNN ensemble, re-linearised | IP → trust-region walk → real pick |
| `fisher`      | `search/baselines.py` + `search/fisher.py` | −Σ(∂L/∂Y)²(ΔY)² on calibration inputs (ModelOpt AutoQuantize) | IP |
| `layerwise`   | `search/baselines.py`   | measured one layer at a time (seed 000)        | IP |
| `mixdq`       | `search/baselines.py`   | measured SQNR / SSIM (seed 001)                | IP per group → MSE pick |
| `error`       | `search/baselines.py`   | −n·MSE of the weights                          | IP |
| `uniform`     | `search/baselines.py`   | —                                              | best single option |
| `random-best` | `search/baselines.py`   | —                                              | best measured random config |
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from quant.config import QuantConfig
from core.errors import QsensError
from core.registry import Registry
from search import baselines
from search.context import SearchContext, SearchResult
from search.trust_region import search_predictor

Run = Callable[[SearchContext, float, "QuantConfig | None"], SearchResult]


@dataclass(frozen=True)
class Strategy:
    """A registered search strategy: its runner, the input files that decide its result, the real
    measurements it spends, a one-line summary.
    """

    name: str
    run: Run
    inputs: Callable[[SearchContext], list[Path | None]]  # files whose contents decide its result
    spend: Callable[[SearchContext], dict[str, int]]  # real measurements behind it (besides selection)
    summary: str


def _bank_json(ctx: SearchContext) -> Path | None:
    return None if ctx.bank_dir is None else Path(ctx.bank_dir) / "bank.json"


def _analysis(name: str) -> Callable[[SearchContext], list[Path | None]]:
    return lambda ctx: [_bank_json(ctx), ctx.analysis_dir and Path(ctx.analysis_dir) / f"{name}.parquet"]


def _cache_rows(ctx: SearchContext, provenance: str | None = None) -> int:
    df = ctx.cache(provenance)
    return 0 if df is None else int(len(df))


def _predictor_spend(ctx: SearchContext) -> dict[str, int]:
    total, random = _cache_rows(ctx), _cache_rows(ctx, "random")
    return {"cache_random": random, "cache_active": total - random}


def _analysis_rows(name: str) -> Callable[[SearchContext], dict[str, int]]:
    def spend(ctx: SearchContext) -> dict[str, int]:
        try:
            return {f"analysis_{name}": int(len(ctx.analysis_table(name, [], "")))}
        except QsensError:
            return {}
    return spend


REGISTRY: Registry[Strategy] = Registry("strategy")
for _s in (
    Strategy("predictor", search_predictor,
             lambda ctx: [_bank_json(ctx), ctx.predictor_dir, ctx.cache_path], _predictor_spend,
             "trained GNN ensemble, trust-region IP, real pick on the selection seeds"),
    Strategy("fisher", baselines.search_fisher, lambda ctx: [_bank_json(ctx)], lambda ctx: {},
             "gradient sensitivity Σ(∂L/∂Y)²(ΔY)² on seed-003 calibration inputs (ModelOpt AutoQuantize)"),
    Strategy("layerwise", baselines.search_layerwise, _analysis("layerwise"), _analysis_rows("layerwise"),
             "measured one layer at a time (seed 000)"),
    Strategy("mixdq", baselines.search_mixdq, _analysis("mixdq"), _analysis_rows("mixdq"),
             "measured SQNR / SSIM per group (seed 001)"),
    Strategy("error", baselines.search_error, lambda ctx: [_bank_json(ctx)], lambda ctx: {},
             "size-weighted weight error (HAWQ-like)"),
    Strategy("uniform", baselines.search_uniform, lambda ctx: [_bank_json(ctx), ctx.cache_path],
             lambda ctx: {}, "best single option that fits"),
    Strategy("random-best", baselines.search_random_best, lambda ctx: [_bank_json(ctx), ctx.cache_path],
             lambda ctx: {"cache_random": _cache_rows(ctx, "random")}, "best measured random config"),
):
    REGISTRY.register(_s.name, _s)
NAMES = REGISTRY.names()


def strategy(name: str) -> Strategy:
    """The registered strategy `name`; QsensError naming the known ones otherwise."""
    return REGISTRY.get(name)


def run_strategy(ctx: SearchContext, name: str, budget: float,
                 incumbent: QuantConfig | None = None) -> SearchResult:
    """One strategy at one budget; the budget is checked against the bank first (one clear line).
    `incumbent`: the same strategy's config at a lower budget (a family), or None.
    The report gains `stats` (bytes, error) and `real_scores` (real measurements behind it:
    selection scores made now, plus the strategy's data: cache rows, analysis rows)."""
    from search.ip import bits_matrix, check_budget

    s = strategy(name)
    bits, n = bits_matrix(ctx.bank, ctx.bank.layer_names, ctx.bank.options)
    check_budget(budget, bits, n)
    if incumbent is not None and (incumbent.avg_bits or 0.0) > budget + 1e-9:
        raise QsensError(f"{name}: the incumbent ({incumbent.avg_bits:.4f} avg bits) does not fit budget "
                         f"{budget:g}: a family's budgets must increase")
    spent_before = ctx.selection_spent()
    t0 = time.perf_counter()
    result = s.run(ctx, budget, incumbent)
    result.seconds = time.perf_counter() - t0
    result.report["stats"] = {k: v for k, v in ctx.bank.summarize(result.config).to_dict().items()
                              if k in ("quantized_bytes", "quantized_error")}
    result.report["real_scores"] = {"selection": ctx.selection_spent() - spent_before, **s.spend(ctx)}
    result.report.setdefault("incumbent", None if incumbent is None else incumbent.config_id)
    if not result.candidates:
        result.candidates = [result.config]
    if result.config.avg_bits is not None and result.config.avg_bits > budget + 1e-6:
        raise AssertionError(f"{name} returned {result.config.avg_bits} bits for budget {budget}")
    return result


def family(ctx: SearchContext, name: str, budgets: Sequence[float],
           on_result: Callable[[SearchResult], None] | None = None) -> list[SearchResult]:
    """One result per budget, solved in increasing order, each started from the previous
    budget's config (every config inside a lower budget fits a higher one). Returned in the
    order of `budgets`. `on_result` is called after each budget (to save as it goes)."""
    order = sorted(set(float(b) for b in budgets))
    out: dict[float, SearchResult] = {}
    incumbent = None
    for b in order:
        res = run_strategy(ctx, name, b, incumbent)
        out[b] = res
        incumbent = res.config
        if on_result is not None:
            on_result(res)
    return [out[float(b)] for b in budgets]
