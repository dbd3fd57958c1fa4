"""Search strategies: each turns a bit budget into a QuantConfig (and a short report).

| strategy      | scores per (layer, option)                                  | then                     |
| ------------- | ----------------------------------------------------------- | ------------------------ |
| `predictor`   | −ΔFID predicted by the trained ensemble, re-linearised       | IP → re-rank → real pick |
| `layerwise`   | −(0.6·ΔFID + 0.4·Δcontent), measured one layer at a time     | IP                       |
| `mixdq`       | SQNR (quality group) / SSIM (content group), measured       | IP per group × K sweep → MSE-to-FP pick |
| `error`       | −n·MSE of the weights (HAWQ-like, size-weighted error)       | IP                       |
| `uniform`     | —                                                           | best single option that fits |
| `random-best` | —                                                           | best measured random config in the cache |

Measured tables come as files written by `analysis` (`layerwise.parquet`, `mixdq.parquet`);
predictions from `predictor.api.Ensemble` (or its `sensitivity.parquet`). Strategies that score
candidates for real use `SearchContext.selector` on the *selection* seed set, never the
evaluation one.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from quant.config import QuantConfig
from quant.errors import QsensError
from search.ip import BudgetError, IPResult, solve_named
from search.params import SearchParams

# -------------------------------------------------------------------------------------------------


@dataclass
class SearchContext:
    bank: Any  # quant.Bank
    params: SearchParams = field(default_factory=SearchParams)
    cache_path: Path | None = None  # quant_cache parquet (uniform, random-best)
    predictor_dir: Path | None = None  # data/predictor/<model>
    analysis_dir: Path | None = None  # data/analysis/<model>
    selector_factory: Callable[[], Any] | None = None  # → search.realscore.RealScorer (lazy)
    ensemble_factory: Callable[[], Any] | None = None  # → object with predict() / sensitivity()
    log: Callable[[str], None] = lambda msg: None
    bank_dir: Path | None = None
    _selector: Any = None
    _ensemble: Any = None
    _fp_images: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.bank.model

    def selector(self):
        if self._selector is None and self.selector_factory is not None:
            self._selector = self.selector_factory()
        return self._selector

    def ensemble(self):
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
        return solve_named(scores, self.bank, budget, self.params.tolerance,
                           time_limit_s=self.params.time_limit_s, **kw)

    def config(self, options: dict[str, str]) -> QuantConfig:
        cfg = QuantConfig(self.model, dict(options))
        cfg.avg_bits = float(self.bank.summarize(cfg).avg_bits)
        return cfg


@dataclass
class SearchResult:
    strategy: str
    budget: float
    config: QuantConfig
    report: dict[str, Any]
    seconds: float = 0.0

    def to_report(self) -> dict[str, Any]:
        stats = self.report.get("stats") or {}
        return {"strategy": self.strategy, "budget": self.budget, "avg_bits": self.config.avg_bits,
                "config_id": self.config.config_id, "seconds": round(self.seconds, 3),
                **{k: v for k, v in self.report.items() if k != "stats"}, **stats}


def _ip_report(res: IPResult) -> dict[str, Any]:
    return {"ip_status": res.status, "ip_seconds": round(res.seconds, 3), "ip_objective": res.objective,
            "ip_bound": res.bound, "ip_resolution": res.resolution}


# -------------------------------------------------------------------------------------------------
# error (HAWQ-like)
# -------------------------------------------------------------------------------------------------
def error_scores(bank) -> dict[tuple[str, str], float]:
    """−(size-weighted squared error) per (layer, option): minimising Σ n·MSE of the weights."""
    return {(l, o): -bank.layers[l].n_weights * bank.error(l, o) for l in bank.layer_names for o in bank.options}


def search_error(ctx: SearchContext, budget: float) -> SearchResult:
    options, res = ctx.solve(error_scores(ctx.bank), budget, what="error")
    return SearchResult("error", budget, ctx.config(options), _ip_report(res))


# -------------------------------------------------------------------------------------------------
# uniform
# -------------------------------------------------------------------------------------------------
def _cache(ctx: SearchContext) -> pd.DataFrame | None:
    if ctx.cache_path is None or not Path(ctx.cache_path).exists():
        return None
    from sampling.cache import read_cache

    df = read_cache(Path(ctx.cache_path), ok_only=True)
    return df[df["model"] == ctx.model].reset_index(drop=True)


def search_uniform(ctx: SearchContext, budget: float) -> SearchResult:
    """The best single option whose uniform config fits the budget: by measured FID from the
    cache when measured there, else scored for real on the selection seeds, else least error."""
    bank = ctx.bank
    fits, sizes = [], {}
    for o in bank.options:
        cfg = ctx.config({l: o for l in bank.layer_names})
        sizes[o] = cfg.avg_bits
        if cfg.avg_bits <= budget + 1e-9:
            fits.append(cfg)
    if not fits:
        lo = min(sizes.values())
        raise BudgetError(f"budget {budget:g} fits no uniform config: the smallest, {min(sizes, key=sizes.get)}, "
                          f"needs {lo:.4f} avg bits (uniform range {lo:.4f}..{max(sizes.values()):.4f})")
    by = "error"
    measured: dict[str, float] = {}
    cache = _cache(ctx)
    if cache is not None:
        fid_by_id = dict(zip(cache["config_id"], cache["fid"]))
        measured = {c.config_id: float(fid_by_id[c.config_id]) for c in fits if c.config_id in fid_by_id}
    if len(measured) == len(fits):
        by, key = "cache fid", (lambda c: measured[c.config_id])
    elif ctx.selector() is not None:
        sel, p = ctx.selector(), ctx.params
        real = {c.config_id: sel.score(c, p.select_images, p.select_seed)["fid"] for c in fits}
        by, key = "selection fid", (lambda c: real[c.config_id] if math.isfinite(real[c.config_id]) else math.inf)
        measured = real
    else:
        err = {c.config_id: bank.summarize(c).quantized_error for c in fits}
        key = lambda c: err[c.config_id]  # noqa: E731
    best = min(fits, key=key)
    option = next(iter(best.options.values()))
    return SearchResult("uniform", budget, best, {
        "option": option, "chosen_by": by,
        "candidates": [{"option": next(iter(c.options.values())), "avg_bits": c.avg_bits,
                        "fid": measured.get(c.config_id)} for c in fits]})


# -------------------------------------------------------------------------------------------------
# random-best
# -------------------------------------------------------------------------------------------------
def search_random_best(ctx: SearchContext, budget: float) -> SearchResult:
    cache = _cache(ctx)
    if cache is None:
        raise QsensError(f"random-best needs the quant_cache ({ctx.cache_path or 'no path given'}): "
                         "run `qsens sample` and `qsens cache merge`")
    inside = cache[(cache["avg_bits"] <= budget + 1e-9) & (cache["act_bits"].isna())]
    if inside.empty:
        lo = float(cache["avg_bits"].min()) if len(cache) else math.nan
        raise BudgetError(f"no measured random config within budget {budget:g} in {ctx.cache_path} "
                          f"(cached configs span {lo:.4f}..{float(cache['avg_bits'].max()):.4f} avg bits)")
    row = inside.loc[inside["fid"].idxmin()]
    options = json.loads(row["options"])
    cfg = ctx.config(options)
    return SearchResult("random-best", budget, cfg, {
        "cache_fid": float(row["fid"]), "cache_content": float(row["content"]),
        "cache_image_seed": int(row["image_seed"]), "pool": int(len(inside))})


# -------------------------------------------------------------------------------------------------
# layerwise (seed 000)
# -------------------------------------------------------------------------------------------------
def _read_table(ctx: SearchContext, name: str, needed: list[str], how: str) -> pd.DataFrame:
    if ctx.analysis_dir is None:
        raise QsensError(f"the {name} strategy needs the analysis directory ({how})")
    path = Path(ctx.analysis_dir) / f"{name}.parquet"
    if not path.exists():
        raise QsensError(f"{path} missing: {how}")
    df = pd.read_parquet(path)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise QsensError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def search_layerwise(ctx: SearchContext, budget: float) -> SearchResult:
    df = _read_table(ctx, "layerwise", ["layer", "option", "score"], "run `qsens analyze layerwise`")
    scores = {(l, o): -float(s) for l, o, s in zip(df["layer"], df["option"], df["score"])}
    options, res = ctx.solve(scores, budget, what="layerwise")
    return SearchResult("layerwise", budget, ctx.config(options), _ip_report(res))


# -------------------------------------------------------------------------------------------------
# mixdq (seed 001)
# -------------------------------------------------------------------------------------------------
def search_mixdq(ctx: SearchContext, budget: float) -> SearchResult:
    """Per-group IPs (quality: max ΣSQNR, content: max ΣSSIM), group budgets set by K = ratio of
    their mean bits swept over `search.mixdq_k`; distinct candidates; pick = lowest MSE to the FP
    images over `mixdq_pick_images` images (classes cycle), or K closest to 1 without a selector."""
    df = _read_table(ctx, "mixdq", ["layer", "option", "group", "score"], "run `qsens analyze mixdq`")
    bank, p = ctx.bank, ctx.params
    groups = {g: list(dict.fromkeys(df.loc[df["group"] == g, "layer"])) for g in ("quality", "content")}
    groups = {g: [l for l in ls if l in bank.layers] for g, ls in groups.items()}
    covered = set(groups["quality"]) | set(groups["content"])
    if covered != set(bank.layer_names):
        miss = sorted(set(bank.layer_names) - covered)
        raise QsensError(f"mixdq table does not cover the bank: {len(miss)} layer(s) missing (first: {miss[0]})")
    scores = {(l, o): float(s) for l, o, s in zip(df["layer"], df["option"], df["score"])}
    n = {g: sum(bank.layers[l].n_weights for l in ls) for g, ls in groups.items()}
    total = n["quality"] + n["content"]
    candidates, skipped = [], []
    ks = p.mixdq_k if (groups["quality"] and groups["content"]) else (1.0,)
    for k in ks:
        b_c = budget * total / (n["quality"] * k + n["content"])
        b_q = k * b_c
        merged: dict[str, str] = {}
        try:
            for g, b in (("quality", b_q), ("content", b_c)):
                if groups[g]:
                    opts, _ = ctx.solve(scores, b, layers=groups[g], what=f"mixdq {g} group at K={k:g}")
                    merged.update(opts)
        except BudgetError as exc:
            skipped.append({"K": k, "reason": str(exc)})
            continue
        cfg = ctx.config(merged)
        if all(c["config"].config_id != cfg.config_id for c in candidates):
            candidates.append({"K": k, "config": cfg, "quality_bits": b_q, "content_bits": b_c})
    if not candidates:
        raise BudgetError(f"mixdq: no K in {list(ks)} gives feasible group budgets for {budget:g}: "
                          + (skipped[0]["reason"] if skipped else ""))
    sel = ctx.selector()
    if sel is not None and len(candidates) > 1:
        n_img = p.mixdq_pick_images
        if "fp" not in ctx._fp_images:
            ctx._fp_images["fp"] = sel.generate(None, n_img, p.select_seed).images
        for c in candidates:
            c["mse_to_fp"] = sel.image_mse(c["config"], ctx._fp_images["fp"], p.select_seed)
        best = min(candidates, key=lambda c: (c["mse_to_fp"], abs(c["K"] - 1)))
        by = "lowest MSE to FP images"
    else:
        best = min(candidates, key=lambda c: abs(c["K"] - 1))
        by = "K closest to 1 (no selector)"
    return SearchResult("mixdq", budget, best["config"], {
        "K": best["K"], "chosen_by": by, "skipped_K": skipped,
        "candidates": [{k: (v.config_id if k == "config" else v) for k, v in c.items()}
                       | {"avg_bits": c["config"].avg_bits} for c in candidates]})


# -------------------------------------------------------------------------------------------------
# predictor
# -------------------------------------------------------------------------------------------------
def reference_config(bank) -> QuantConfig:
    """All layers at the highest bit-width (the option with the least error among those)."""
    top = max(int(o[3:]) for o in bank.options)
    highest = [o for o in bank.options if int(o[3:]) == top]
    return QuantConfig(bank.model, {l: min(highest, key=lambda o: bank.error(l, o)) for l in bank.layer_names})


def _sensitivity_scores(table: pd.DataFrame, config: QuantConfig | None) -> dict[tuple[str, str], float]:
    for col in ("layer", "option", "delta_fid"):
        if col not in table.columns:
            raise QsensError(f"predictor sensitivity table lacks column {col!r}")
    scores = {(l, o): -float(d) for l, o, d in zip(table["layer"], table["option"], table["delta_fid"])
              if d is not None and math.isfinite(float(d))}
    if config is not None:  # each layer's current option changes nothing
        for l, o in config.options.items():
            scores.setdefault((l, o), 0.0)
    return scores


def _cached_starts(ctx: SearchContext, budget: float, ens: Any, count: int) -> list[QuantConfig]:
    """Up to `count` cached configs inside the IP's window [budget − tolerance, budget], the ones
    the ensemble predicts best (the predictor's own training data; no new measurement)."""
    cache = _cache(ctx) if count > 0 else None
    if cache is None:
        return []
    lo = budget - ctx.params.tolerance
    inside = cache[(cache["avg_bits"] <= budget + 1e-9) & (cache["avg_bits"] >= lo - 1e-9)
                   & (cache["act_bits"].isna())]
    if inside.empty:
        return []
    configs = [ctx.config(json.loads(o)) for o in inside["options"]]
    pred = np.asarray(ens.predict(configs), dtype=np.float64)
    return [configs[i] for i in np.argsort(pred, kind="stable")[:count]]


def search_predictor(ctx: SearchContext, budget: float) -> SearchResult:
    """Sensitivity scores from the ensemble → IP → trust-region re-linearisation (see README).

    The ensemble's FID is not additive over layers (the probe readout is a squared norm of
    summed shifts), so one IP on scores around the highest-bits reference can land far from the
    optimum. Each round re-linearises around the incumbent, solves the IP with at most `k`
    layers changed, and keeps the solution only if the full ensemble predicts a lower FID;
    otherwise `k` halves. Start: the best predicted of the first IP, the `error` config and the
    best-predicted cached configs inside the window. Selection: `candidates_scored` configs evenly
    spaced along the accepted path (start to end) are scored for real; the best is kept."""
    p = ctx.params
    ens = ctx.ensemble()
    table_path = Path(ctx.predictor_dir) / "sensitivity.parquet" if ctx.predictor_dir else None
    ref = reference_config(ctx.bank)
    if ens is not None and hasattr(ens, "reference"):  # the predictor's own highest-bits reference
        ref = QuantConfig(ctx.model, dict(ens.reference()))
    if ens is None:
        if table_path is None or not table_path.exists():
            raise QsensError(f"no trained predictor at {ctx.predictor_dir}: run `qsens predictor train`")
        table = pd.read_parquet(table_path)
    elif table_path is not None and table_path.exists():
        table = pd.read_parquet(table_path)  # the stage's table: sensitivity around `ref`
    else:
        table = ens.sensitivity(ref)
    options, res = ctx.solve(_sensitivity_scores(table, ref), budget, what="predictor round 0")
    first = ctx.config(options)
    rounds = [{"round": 0, "kind": "ip around the highest-bits reference", "config_id": first.config_id,
               "avg_bits": first.avg_bits, **_ip_report(res)}]
    if ens is None:
        return SearchResult("predictor", budget, first, {
            "rounds": rounds, "note": "predictor.api unavailable: one IP on sensitivity.parquet, no re-ranking"})

    starts = {first.config_id: first}
    err_opts, _ = ctx.solve(error_scores(ctx.bank), budget, what="predictor start (error)")
    err_cfg = ctx.config(err_opts)
    starts.setdefault(err_cfg.config_id, err_cfg)
    for c in _cached_starts(ctx, budget, ens, p.cached_starts):
        starts.setdefault(c.config_id, c)
    start_list = list(starts.values())
    start_pred = np.asarray(ens.predict(start_list), dtype=np.float64)
    seen = {c.config_id: float(f) for c, f in zip(start_list, start_pred)}
    best_i = int(np.argmin(start_pred))
    anchor, anchor_pred = start_list[best_i], float(start_pred[best_i])
    candidates = [anchor]
    k = max(1, int(round(p.trust_region * len(ctx.bank.layer_names))))
    for r in range(1, p.relinearise_rounds + 1):
        table = ens.sensitivity(anchor)
        options, res = ctx.solve(_sensitivity_scores(table, anchor), budget, what=f"predictor round {r}",
                                 anchor=anchor.options, max_changes=k)
        cfg = ctx.config(options)
        pred = seen.get(cfg.config_id)
        if pred is None:
            pred = seen[cfg.config_id] = float(ens.predict([cfg])[0])
        accepted = pred < anchor_pred - 1e-9
        rounds.append({"round": r, "kind": "trust-region ip", "max_changes": k, "config_id": cfg.config_id,
                       "avg_bits": cfg.avg_bits, "predicted_fid": pred, "accepted": accepted, **_ip_report(res)})
        if accepted:
            anchor, anchor_pred = cfg, pred
            candidates.append(cfg)
        else:
            k //= 2
            if k == 0:
                break
    stable = k == 0
    pool = {c.config_id: c for c in candidates + start_list}
    ids = sorted(pool, key=lambda i: (seen[i], i))
    ranked = [{"config_id": i, "avg_bits": pool[i].avg_bits, "predicted_fid": seen[i]} for i in ids]
    best = candidates[-1]
    chosen_by = "predicted fid"
    sel = ctx.selector()
    if sel is not None and p.candidates_scored > 0 and len(candidates) > 1:
        # The further the optimizer goes, the more it exploits the predictor's errors: predicted
        # FID keeps falling after the real one has flattened (README, "search"). So the real
        # measurement decides how far to trust it: configs evenly spaced along the accepted path.
        picks = sorted(set(np.linspace(0, len(candidates) - 1, min(p.candidates_scored, len(candidates)))
                           .round().astype(int).tolist()))
        top = [candidates[i] for i in picks]
        real = {c.config_id: sel.score(c, p.select_images, p.select_seed)["fid"] for c in top}
        for row in ranked:
            row["selection_fid"] = real.get(row["config_id"])
        best = min(top, key=lambda c: real[c.config_id] if math.isfinite(real[c.config_id]) else math.inf)
        chosen_by = "selection fid along the accepted path"
    report: dict[str, Any] = {"rounds": rounds, "stable": stable, "starts": len(start_list),
                              "path": [c.config_id for c in candidates], "candidates": ranked,
                              "chosen_by": chosen_by}
    return SearchResult("predictor", budget, best, report)


STRATEGY_FUNCS: dict[str, Callable[[SearchContext, float], SearchResult]] = {
    "predictor": search_predictor, "layerwise": search_layerwise, "mixdq": search_mixdq,
    "error": search_error, "uniform": search_uniform, "random-best": search_random_best,
}


def run_strategy(ctx: SearchContext, strategy: str, budget: float) -> SearchResult:
    """One strategy at one budget; the budget is checked against the bank first (one clear line)."""
    from search.ip import bits_matrix, check_budget

    if strategy not in STRATEGY_FUNCS:
        raise QsensError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGY_FUNCS)}")
    bits, n = bits_matrix(ctx.bank, ctx.bank.layer_names, ctx.bank.options)
    check_budget(budget, bits, n)
    t0 = time.perf_counter()
    result = STRATEGY_FUNCS[strategy](ctx, budget)
    result.seconds = time.perf_counter() - t0
    result.report["stats"] = {k: v for k, v in ctx.bank.summarize(result.config).to_dict().items()
                              if k in ("quantized_bytes", "quantized_error")}
    if result.config.avg_bits is not None and result.config.avg_bits > budget + 1e-6:
        raise AssertionError(f"{strategy} returned {result.config.avg_bits} bits for budget {budget}")
    return result
