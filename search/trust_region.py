"""The `predictor` strategy: the trained ensemble's sensitivities → IP → trust-region walk →
a real pick among the configs it walked through.

The ensemble's FID is not additive over layers (the probe readout is a squared norm of summed
shifts), so one IP on scores around the highest-bits reference can land far from the optimum.
Each round re-linearises around the incumbent, solves the IP with at most `k` layers changed, and
keeps the solution only if the full ensemble predicts a lower FID; otherwise `k` halves.

Starts: the first IP's config, the `error` config, the best-predicted cached configs inside the
window and, in a family, the lower budget's chosen config *upgraded* (an IP around it that may
only add bits to a layer, so it dominates it). Selection: `candidates_scored` configs evenly
spaced along the accepted path plus, in a family, the lower budget's config itself are scored on
the selection seed set; the best is kept, so a family's selection FID never rises with budget.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from quant.config import QuantConfig
from core.errors import QsensError
from search.baselines import error_scores
from search.context import SearchContext, SearchResult, ip_report
from search.ip import BudgetError


def reference_config(bank) -> QuantConfig:
    """All layers at the highest bit-width (the option with the least error among those)."""
    top = max(int(o[3:]) for o in bank.options)
    highest = [o for o in bank.options if int(o[3:]) == top]
    return QuantConfig(bank.model, {l: min(highest, key=lambda o: bank.error(l, o)) for l in bank.layer_names})


def sensitivity_scores(table: pd.DataFrame, config: QuantConfig | None) -> dict[tuple[str, str], float]:
    """IP scores (to maximise) from a sensitivity table: −Δfid per (layer, option); each layer's
    own option in `config` scores 0."""
    for col in ("layer", "option", "delta_fid"):
        if col not in table.columns:
            raise QsensError(f"predictor sensitivity table lacks column {col!r}")
    scores = {(l, o): -float(d) for l, o, d in zip(table["layer"], table["option"], table["delta_fid"])
              if d is not None and math.isfinite(float(d))}
    if config is not None:  # each layer's current option changes nothing
        for l, o in config.options.items():
            scores.setdefault((l, o), 0.0)
    return scores


def cached_starts(ctx: SearchContext, budget: float, ens: Any, count: int) -> list[QuantConfig]:
    """Up to `count` cached configs inside the IP's window [budget − tolerance, budget], the ones
    the ensemble predicts best (the predictor's own training data; no new measurement)."""
    cache = ctx.cache() if count > 0 else None
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


def upgraded(ctx: SearchContext, ens: Any, incumbent: QuantConfig, budget: float) -> QuantConfig | None:
    """The incumbent with bits only added (each layer keeps its option or takes one with at least
    as many bits), chosen by the IP on the ensemble's sensitivity around the incumbent; None when
    no such config reaches the budget's window."""
    bank = ctx.bank
    table = ens.sensitivity(incumbent)
    scores = sensitivity_scores(table, incumbent)
    inc = incumbent.options
    allowed = {(l, o): s for (l, o), s in scores.items()
               if l in inc and bank.quantized_bits(l, o) >= bank.quantized_bits(l, inc[l])}
    try:
        options, _ = ctx.solve(allowed, budget, what="predictor start (incumbent upgraded)")
    except BudgetError:
        return None
    return ctx.config(options)


def search_predictor(ctx: SearchContext, budget: float, incumbent: QuantConfig | None = None) -> SearchResult:
    """See the module doc. Without an ensemble (predictor.api unavailable) one IP on the stage's
    `sensitivity.parquet`."""
    p = ctx.params
    ens = ctx.ensemble()
    table_path = ctx.predictor_dir / "sensitivity.parquet" if ctx.predictor_dir else None
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
    options, res = ctx.solve(sensitivity_scores(table, ref), budget, what="predictor round 0")
    first = ctx.config(options)
    rounds = [{"round": 0, "kind": "ip around the highest-bits reference", "config_id": first.config_id,
               "avg_bits": first.avg_bits, **ip_report(res)}]
    if ens is None:
        return SearchResult("predictor", budget, first, {
            "rounds": rounds, "note": "predictor.api unavailable: one IP on sensitivity.parquet, no re-ranking"},
            candidates=[first])

    starts = {first.config_id: first}
    err_opts, _ = ctx.solve(error_scores(ctx.bank), budget, what="predictor start (error)")
    err_cfg = ctx.config(err_opts)
    starts.setdefault(err_cfg.config_id, err_cfg)
    for c in cached_starts(ctx, budget, ens, p.cached_starts):
        starts.setdefault(c.config_id, c)
    lifted = upgraded(ctx, ens, incumbent, budget) if incumbent is not None else None
    if lifted is not None:
        starts.setdefault(lifted.config_id, lifted)
    start_list = list(starts.values())
    start_pred = np.asarray(ens.predict(start_list), dtype=np.float64)
    seen = {c.config_id: float(f) for c, f in zip(start_list, start_pred)}
    best_i = int(np.argmin(start_pred))
    anchor, anchor_pred = start_list[best_i], float(start_pred[best_i])
    path = [anchor]
    k = max(1, int(round(p.trust_region * len(ctx.bank.layer_names))))
    for r in range(1, p.relinearise_rounds + 1):
        table = ens.sensitivity(anchor)
        options, res = ctx.solve(sensitivity_scores(table, anchor), budget, what=f"predictor round {r}",
                                 anchor=anchor.options, max_changes=k)
        cfg = ctx.config(options)
        pred = seen.get(cfg.config_id)
        if pred is None:
            pred = seen[cfg.config_id] = float(ens.predict([cfg])[0])
        accepted = pred < anchor_pred - 1e-9
        rounds.append({"round": r, "kind": "trust-region ip", "max_changes": k, "config_id": cfg.config_id,
                       "avg_bits": cfg.avg_bits, "predicted_fid": pred, "accepted": accepted, **ip_report(res)})
        if accepted:
            anchor, anchor_pred = cfg, pred
            path.append(cfg)
        else:
            k //= 2
            if k == 0:
                break
    stable = k == 0
    pool = {c.config_id: c for c in path + start_list}
    ids = sorted(pool, key=lambda i: (seen[i], i))
    ranked = [{"config_id": i, "avg_bits": pool[i].avg_bits, "predicted_fid": seen[i]} for i in ids]
    best = path[-1]
    chosen_by = "predicted fid"
    sel = ctx.selector()
    if sel is not None and p.candidates_scored > 0 and (len(path) > 1 or incumbent is not None):
        # The further the walk goes, the more it exploits the predictor's errors: predicted FID
        # keeps falling after the real one has flattened (README, "search"). So the real
        # measurement decides how far to trust it: configs evenly spaced along the accepted path,
        # and the lower budget's pick (memoised: already scored there).
        picks = sorted(set(np.linspace(0, len(path) - 1, min(p.candidates_scored, len(path)))
                           .round().astype(int).tolist()))
        top = [path[i] for i in picks]
        if incumbent is not None and all(c.config_id != incumbent.config_id for c in top):
            top.append(ctx.config(incumbent.options))
        real = {c.config_id: ctx.selection_score(c) for c in top}
        for row in ranked:
            row["selection_fid"] = real.get(row["config_id"])
        if incumbent is not None and incumbent.config_id not in pool:
            ranked.append({"config_id": incumbent.config_id, "avg_bits": incumbent.avg_bits,
                           "predicted_fid": None, "selection_fid": real[incumbent.config_id], "incumbent": True})
        best = min(top, key=lambda c: (real[c.config_id], c.config_id))
        chosen_by = ("the lower budget's config (best selection fid)"
                     if incumbent is not None and best.config_id == incumbent.config_id
                     else "selection fid along the accepted path")
    report: dict[str, Any] = {"rounds": rounds, "stable": stable, "starts": len(start_list),
                              "incumbent": None if incumbent is None else incumbent.config_id,
                              "incumbent_upgraded": None if lifted is None else lifted.config_id,
                              "path": [c.config_id for c in path], "candidates": ranked,
                              "chosen_by": chosen_by}
    return SearchResult("predictor", budget, best, report,
                        candidates=[pool[i] for i in ids])
