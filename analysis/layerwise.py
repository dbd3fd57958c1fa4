"""Measured per-layer sensitivity, one layer quantized at a time (seed 000, `quantdiff`-style).

For every (layer, option): quantize only that layer, generate `images` images from a fixed seed
set, score FID and the content score (digits: classifier accuracy; real models: CLIP score), and
compare with the FP model on the same seeds (paired, so seed noise largely cancels):

    ΔFID = FID(layer@option) − FID(FP)        Δcontent = content(FP) − content(layer@option)

(`analysis.metric` other than fid: ΔFID is that paired score of `sampling.paired` itself — e.g. the
Fréchet distance to the FP features of the same seeds — which is 0 for the FP model and cancels
the seed noise that FID against real images keeps; the `fid` column then holds it.)
    score = 0.6·minmax(ΔFID) + 0.4·minmax(Δcontent)          (min-max over all measured pairs)

A generation with NaN/inf images scores 1 (worst). A layer's sensitivity is its worst option's
score; the ranked report buckets it as the seed does (0–0.2 low, 0.2–0.5 medium, 0.5–0.8 high,
0.8–1 critical). Outputs (consumed by `search` as files — search does not import analysis):

    <out>/layerwise.parquet   layer, option, fid, content, delta_fid, delta_content, score, status
    <out>/layerwise.json      the ranked report: FP scores, weights, buckets, layers by rank
    <out>/layerwise.progress.jsonl   resumable progress (a re-run skips finished pairs)
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.common import Progress, one_layer, settings_key, write_json
from analysis.params import AnalysisParams
from core.provenance import bank_digest, code_digest

BUCKETS = (  # (upper bound, name, the seed's advice mapped onto an option set)
    (0.2, "low", "safe at the lowest bit-width"),
    (0.5, "medium", "consider a higher bit-width"),
    (0.8, "high", "keep at the highest bit-width"),
    (math.inf, "critical", "keep at the highest bit-width or fp16"),
)
COLUMNS = ["layer", "option", "fid", "content", "delta_fid", "delta_content", "score", "status"]


def bucket(score: float) -> str:
    """A sensitivity score's bucket: low (< 0.2), medium (< 0.5), high (< 0.8), else critical."""
    for upper, name, _ in BUCKETS:
        if score < upper:
            return name
    return BUCKETS[-1][1]


def _minmax(v: np.ndarray) -> np.ndarray:
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.zeros_like(v)
    lo, hi = finite.min(), finite.max()
    return np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)


def score_table(rows: list[dict], fp_fid: float, fp_content: float, fid_weight: float = 0.6) -> pd.DataFrame:
    """Raw per-pair measurements → the normalised sensitivity table (see module doc)."""
    df = pd.DataFrame(rows, columns=["layer", "option", "fid", "content", "status"])
    df["fid"] = df["fid"].astype(float)
    df["content"] = df["content"].astype(float)
    df["delta_fid"] = df["fid"] - fp_fid
    df["delta_content"] = fp_content - df["content"]
    s = fid_weight * _minmax(df["delta_fid"].to_numpy()) + (1 - fid_weight) * _minmax(df["delta_content"].to_numpy())
    df["score"] = np.where(df["status"] == "ok", s, 1.0)
    return df[COLUMNS]


def ranked_report(df: pd.DataFrame, meta: dict[str, Any]) -> dict[str, Any]:
    """The ranked layerwise report: `meta`, the buckets (range, advice, layer count) and per layer
    (most sensitive first) its worst option's score, bucket, rank and per-option scores/deltas.
    """
    per_layer = []
    for layer, g in df.groupby("layer", sort=False):
        worst = g.loc[g["score"].idxmax()]
        per_layer.append({"layer": layer, "sensitivity": float(worst["score"]),
                          "bucket": bucket(float(worst["score"])), "worst_option": worst["option"],
                          "scores": {o: float(s) for o, s in zip(g["option"], g["score"])},
                          "delta_fid": {o: _num(v) for o, v in zip(g["option"], g["delta_fid"])},
                          "delta_content": {o: _num(v) for o, v in zip(g["option"], g["delta_content"])}})
    per_layer.sort(key=lambda r: (-r["sensitivity"], r["layer"]))
    for rank, r in enumerate(per_layer, 1):
        r["rank"] = rank
    counts = {name: sum(r["bucket"] == name for r in per_layer) for _, name, _ in BUCKETS}
    return {**meta,
            "buckets": [{"name": n, "range": [lo, hi if math.isfinite(hi) else 1.0], "advice": a,
                         "layers": counts[n]}
                        for (lo, (hi, n, a)) in zip([0.0, 0.2, 0.5, 0.8], BUCKETS)],
            "layers": per_layer}


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def measure_layerwise(denoiser, bank, scorer, params: AnalysisParams, out_dir: str | Path,
                      layers: Sequence[str] | None = None, options: Sequence[str] | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Measure every (layer, option) (see module doc); resumable; returns the scored table."""
    from core.progress import progress_bar

    from sampling.evaluator import Evaluator

    out_dir = Path(out_dir)
    layers = list(layers or bank.layer_names)
    options = list(options or bank.options)
    t_start = time.perf_counter()
    ev = Evaluator(denoiser, bank, scorer)  # checks the bank against the model once
    gen_kw: dict[str, Any] = {} if params.steps is None else {"steps": params.steps}
    key = settings_key({"model": bank.model, "bank": bank.fingerprint, "images": params.images,
                        "seed": params.image_seed, "steps": params.steps, "scorer": type(scorer).__name__,
                        "metric": params.metric, "evaluator": ev.identity(),
                        "bank_contents": bank_digest(bank), "code": code_digest([__name__])})

    ev.generate_kw.update(gen_kw)
    paired = params.metric != "fid"

    def measure(config=None) -> tuple[float, float, str, float]:
        t0 = time.perf_counter()
        if paired and config is None:  # the FP model against itself: 0 by definition
            fp = ev.fp_images(params.images, params.image_seed)
            return 0.0, fp.content, "ok", time.perf_counter() - t0
        row = ev.score(config, params.images, params.image_seed, paired=paired)
        return (float(row[params.metric if paired else "fid"]) if row["status"] == "ok" else math.nan,
                float(row["content"]), row["status"], time.perf_counter() - t0)

    # the "fid" field holds the paired metric when there is one (content_drop may be negative)
    with Progress(out_dir / "layerwise.progress.jsonl", key, required=("fid", "content", "status", "seconds"),
                  nonneg=("seconds", "fid") if params.metric == "fid" else ("seconds",)) as prog:
        if not prog.done("", "fp16"):
            fid, content, status, secs = measure()
            if status != "ok":
                from core.errors import QsensError

                raise QsensError("the FP model's own images failed to score; nothing to compare against")
            prog.add({"layer": "", "option": "fp16", "fid": fid, "content": content, "status": status,
                      "seconds": secs})
        todo = [(l, o) for l in layers for o in options if not prog.done(l, o)]
        for layer, option in progress_bar(todo, desc="layerwise", unit="pair", disable=not progress):
            fid, content, status, secs = measure(one_layer(bank.model, layer, option))
            prog.add({"layer": layer, "option": option, "fid": fid if status == "ok" else None,
                      "content": content if status == "ok" else None, "status": status, "seconds": secs})
        rows = [r for (l, o), r in prog.rows.items() if l in set(layers) and o in set(options)]
        fp = prog.rows[("", "fp16")]
        measure_seconds = sum(r["seconds"] for r in prog.rows.values())
    df = score_table(rows, fp["fid"], fp["content"], params.fid_weight)
    order = {(l, o): i for i, (l, o) in enumerate((l, o) for l in layers for o in options)}
    df = df.iloc[np.argsort([order[(l, o)] for l, o in zip(df["layer"], df["option"])])].reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out_dir / "layerwise.parquet", index=False)
    meta = {"model": bank.model, "method": "one layer quantized at a time (seed 000)",
            "images": params.images, "image_seed": params.image_seed, "steps": params.steps,
            "metric": params.metric,
            "weights": {"fid": params.fid_weight, "content": round(1 - params.fid_weight, 6)},
            "fp": {"fid": fp["fid"], "content": fp["content"]},
            "pairs": len(df), "failed": int((df["status"] != "ok").sum()),
            "measure_seconds": round(measure_seconds, 2),
            "wall_seconds_this_run": round(time.perf_counter() - t_start, 2)}
    write_json(out_dir / "layerwise.json", ranked_report(df, meta))
    return df
