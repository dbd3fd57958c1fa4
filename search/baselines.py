"""The baseline strategies, each a small function `(ctx, budget, incumbent) -> SearchResult`.

| strategy      | scores per (layer, option)                                   | then                          |
| ------------- | ------------------------------------------------------------ | ----------------------------- |
| `error`       | −n·MSE of the weights (HAWQ-like, size-weighted error)        | IP                            |
| `layerwise`   | −(0.6·ΔFID + 0.4·Δcontent), measured one layer at a time (seed 000) | IP                      |
| `mixdq`       | SQNR (quality group) / SSIM (content group), measured (seed 001) | IP per group × K sweep → MSE-to-FP pick |
| `uniform`     | —                                                            | best single option that fits  |
| `random-best` | —                                                            | best measured random config in the cache |

Measured tables are files written by `analysis` (`layerwise.parquet`, `mixdq.parquet`). For the
additive strategies (error, layerwise) a family keeps the lower budget's config when their own
objective rates it higher (`search.context.keep_incumbent`).
"""
from __future__ import annotations

import json
import math

from quant.config import QuantConfig
from core.errors import QsensError
from search.context import SearchContext, SearchResult, ip_report, keep_incumbent
from search.ip import BudgetError


# ---------------------------------------------------------------------------------------- error
def error_scores(bank) -> dict[tuple[str, str], float]:
    """−(size-weighted squared error) per (layer, option): minimising Σ n·MSE of the weights."""
    return {(l, o): -bank.layers[l].n_weights * bank.error(l, o) for l in bank.layer_names for o in bank.options}


def search_error(ctx: SearchContext, budget: float, incumbent: QuantConfig | None = None) -> SearchResult:
    """The `error` baseline: the IP on −(size-weighted weight MSE), no images generated."""
    scores = error_scores(ctx.bank)
    options, res = ctx.solve(scores, budget, what="error")
    cfg, by = keep_incumbent(ctx, ctx.config(options), incumbent, scores)
    return SearchResult("error", budget, cfg, {**ip_report(res), "chosen_by": by})


# ------------------------------------------------------------------------------------ layerwise
def layerwise_scores(ctx: SearchContext) -> dict[tuple[str, str], float]:
    """Scores of the `layerwise` baseline: −(the layer's layerwise sensitivity score at that option,
    `analysis.layerwise`), from `qsens analyze layerwise`'s table (QsensError when it is missing).
    """
    df = ctx.analysis_table("layerwise", ["layer", "option", "score"], "run `qsens analyze layerwise`")
    return {(l, o): -float(s) for l, o, s in zip(df["layer"], df["option"], df["score"])}


def search_layerwise(ctx: SearchContext, budget: float, incumbent: QuantConfig | None = None) -> SearchResult:
    """The `layerwise` baseline: the IP on the layerwise analysis' per-layer scores (additive model)."""
    scores = layerwise_scores(ctx)
    options, res = ctx.solve(scores, budget, what="layerwise")
    cfg, by = keep_incumbent(ctx, ctx.config(options), incumbent, scores)
    return SearchResult("layerwise", budget, cfg, {**ip_report(res), "chosen_by": by})


# ---------------------------------------------------------------------------------------- mixdq
def search_mixdq(ctx: SearchContext, budget: float, incumbent: QuantConfig | None = None) -> SearchResult:
    """Per-group IPs (quality: max ΣSQNR, content: max ΣSSIM), group budgets set by K = ratio of
    their mean bits swept over `search.mixdq_k`; distinct candidates (plus the lower budget's
    config in a family); pick = lowest MSE to the FP images over `mixdq_pick_images` images
    (classes cycle), or K closest to 1 without a selector."""
    df = ctx.analysis_table("mixdq", ["layer", "option", "group", "score"], "run `qsens analyze mixdq`")
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
    if incumbent is not None and all(c["config"].config_id != incumbent.config_id for c in candidates):
        candidates.append({"K": None, "config": ctx.config(incumbent.options), "incumbent": True})
    sel = ctx.selector()
    if sel is not None and len(candidates) > 1:
        n_img = p.mixdq_pick_images
        if "fp_images" not in ctx._memo:
            ctx._memo["fp_images"] = sel.generate(None, n_img, p.select_seed).images
        pick_memo = ctx._memo.setdefault("mixdq_mse", {})
        for c in candidates:
            cid = c["config"].config_id
            if cid not in pick_memo:
                pick_memo[cid] = sel.image_mse(c["config"], ctx._memo["fp_images"], p.select_seed)
            c["mse_to_fp"] = pick_memo[cid]
        best = min(candidates, key=lambda c: (c["mse_to_fp"], abs((c["K"] or 1.0) - 1)))
        by = "lowest MSE to FP images"
    else:
        best = min((c for c in candidates if c["K"] is not None), key=lambda c: abs(c["K"] - 1))
        by = "K closest to 1 (no selector)"
    return SearchResult("mixdq", budget, best["config"], {
        "K": best["K"], "chosen_by": by, "skipped_K": skipped,
        "candidates": [{k: (v.config_id if k == "config" else v) for k, v in c.items()}
                       | {"avg_bits": c["config"].avg_bits} for c in candidates]})


# -------------------------------------------------------------------------------------- uniform
def search_uniform(ctx: SearchContext, budget: float, incumbent: QuantConfig | None = None) -> SearchResult:
    """The best single option whose uniform config fits the budget: by measured FID from the
    cache when measured there, else scored for real on the selection seeds, else least error.
    (Uniform configs are monotone by construction: a higher budget only adds fitting options.)"""
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
    cache = ctx.cache()
    if cache is not None:
        fid_by_id = dict(zip(cache["config_id"], cache["fid"]))
        measured = {c.config_id: float(fid_by_id[c.config_id]) for c in fits if c.config_id in fid_by_id}
    if len(measured) == len(fits):
        by, key = "cache fid", (lambda c: measured[c.config_id])
    elif ctx.selector() is not None:
        measured = {c.config_id: ctx.selection_score(c) for c in fits}
        by, key = "selection fid", (lambda c: measured[c.config_id])
    else:
        err = {c.config_id: bank.summarize(c).quantized_error for c in fits}
        key = lambda c: err[c.config_id]  # noqa: E731
    best = min(fits, key=key)
    option = next(iter(best.options.values()))
    return SearchResult("uniform", budget, best, {
        "option": option, "chosen_by": by,
        "candidates": [{"option": next(iter(c.options.values())), "avg_bits": c.avg_bits,
                        "fid": measured.get(c.config_id)} for c in fits]})


# ---------------------------------------------------------------------------------- random-best
def search_random_best(ctx: SearchContext, budget: float, incumbent: QuantConfig | None = None) -> SearchResult:
    """The lowest cached FID among the sampler's random configs inside the budget (rows that
    active learning added are not random configs and are never picked here). Monotone by
    construction: a higher budget's pool contains the lower one's."""
    cache = ctx.cache(provenance="random")
    if cache is None:
        raise QsensError(f"random-best needs the quant_cache ({ctx.cache_path or 'no path given'}): "
                         "run `qsens sample` and `qsens cache merge`")
    inside = cache[(cache["avg_bits"] <= budget + 1e-9) & (cache["act_bits"].isna())]
    if inside.empty:
        lo = float(cache["avg_bits"].min()) if len(cache) else math.nan
        raise BudgetError(f"no measured random config within budget {budget:g} in {ctx.cache_path} "
                          f"(cached configs span {lo:.4f}..{float(cache['avg_bits'].max()):.4f} avg bits)")
    row = inside.loc[inside["fid"].idxmin()]
    cfg = ctx.config(json.loads(row["options"]))
    return SearchResult("random-best", budget, cfg, {
        "cache_fid": float(row["fid"]), "cache_content": float(row["content"]),
        "cache_image_seed": int(row["image_seed"]), "pool": int(len(inside))})


# --------------------------------------------------------------------------------------- fisher
def search_fisher(ctx: SearchContext, budget: float, incumbent: QuantConfig | None = None) -> SearchResult:
    """ModelOpt AutoQuantize-style: per (layer, option) Σ (∂L/∂Y)²·(ΔY)² over the seed-003
    calibration inputs (`search.fisher`), measured once per context, then the IP."""
    from search.fisher import fisher_sensitivity, fisher_table_scores

    p = ctx.params
    if "fisher" not in ctx._memo:
        ctx._memo["fisher"] = fisher_sensitivity(
            ctx.denoiser(), ctx.bank, samples=p.fisher_samples, trajectories=p.fisher_trajectories,
            seed=p.fisher_calib_seed, timesteps=p.fisher_timesteps, steps=p.steps)
        ctx.log(f"fisher: {len(ctx._memo['fisher'])} (layer, option) scores in "
                f"{ctx._memo['fisher'].attrs.get('seconds', float('nan')):.1f} s")
    table = ctx._memo["fisher"]
    scores = fisher_table_scores(table, ctx.bank)
    options, res = ctx.solve(scores, budget, what="fisher")
    cfg, by = keep_incumbent(ctx, ctx.config(options), incumbent, scores)
    return SearchResult("fisher", budget, cfg, {**ip_report(res), "chosen_by": by,
                                                "fisher_seconds": table.attrs.get("seconds")})
