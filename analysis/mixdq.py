"""MixDQ's metric-decoupled sensitivity (seed 001), measured one layer at a time.

Layers are split by name into a *content-related* group (MixDQ: cross-attention `attn2` and FFN
`ff`; here also where a class-conditional model's label enters, see `AnalysisParams.
content_patterns`) and a *quality-related* group (the rest). Each group gets its own metric:

- quality → SQNR of the denoiser output, `10·log10(Σy² / Σ(ŷ−y)²)` dB, on calibration inputs drawn
  from the FP sampling trajectory (`sampling.calibration`, time steps uniform or normal);
- content → SSIM between the images of the model with that layer quantized and the FP images
  (same seeds, classes cycling), `sampling.ssim`.

SQNR is measured for every layer (it is cheap), SSIM for the content group. Outputs:

    <out>/mixdq.parquet   layer, option, group, sqnr_db, ssim, metric, score (= the group's metric)
    <out>/mixdq.json      groups, calibration (time-step histogram), timings
    <out>/mixdq.progress.jsonl   resumable progress
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sampling.calibration import collect_calibration, run_model, sqnr_db
from core.provenance import bank_digest, code_digest
from analysis.common import Progress, one_layer, settings_key, write_json
from analysis.params import AnalysisParams
from sampling.ssim import ssim

COLUMNS = ["layer", "option", "group", "sqnr_db", "ssim", "metric", "score"]


def split_groups(layers: Sequence[str], patterns: Sequence[str]) -> dict[str, str]:
    """{layer: "content" | "quality"} by the name patterns (regex search)."""
    rx = [re.compile(p) for p in patterns]
    return {l: "content" if any(r.search(l) for r in rx) else "quality" for l in layers}


def _row_problem(row: dict) -> str | None:
    """Why a mixdq progress row cannot be reused (beyond Progress's own checks), or None."""
    if row["group"] not in ("content", "quality"):
        return f"group {row['group']!r} is not content or quality"
    if row["sqnr_db"] is None:
        return "no sqnr_db"
    return None


def measure_mixdq(denoiser, bank, params: AnalysisParams, out_dir: str | Path,
                  layers: Sequence[str] | None = None, options: Sequence[str] | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Measure MixDQ's (Zhao et al., ECCV 2024) metric-decoupled sensitivity of every (layer, option):
    SQNR of the denoiser output for every layer, SSIM of the images for the content group.

    Resumable (`<out>/mixdq.progress.jsonl`); writes mixdq.parquet and mixdq.json into `out_dir`
    and returns the table (module docstring).
    """
    from core.progress import progress_bar

    from sampling.evaluator import Evaluator

    out_dir = Path(out_dir)
    layers = list(layers or bank.layer_names)
    options = list(options or bank.options)
    groups = split_groups(layers, params.content_patterns)
    t_start = time.perf_counter()
    ev = Evaluator(denoiser, bank, None)  # checks the bank against the model once
    gen_kw: dict[str, Any] = {} if params.steps is None else {"steps": params.steps}

    t0 = time.perf_counter()
    calib = collect_calibration(denoiser, params.calib_samples, trajectories=params.calib_trajectories,
                                seed=params.calib_seed, how=params.calib_timesteps,
                                mean=params.calib_normal_mean, std=params.calib_normal_std,
                                steps=params.steps)
    y_fp = run_model(denoiser.model, calib)
    fp_images = ev.generate(None, params.ssim_images, params.ssim_seed, **gen_kw).images
    setup_seconds = time.perf_counter() - t0

    key = settings_key({"model": bank.model, "bank": bank.fingerprint, "calib": [
        params.calib_samples, params.calib_trajectories, params.calib_timesteps, params.calib_normal_mean,
        params.calib_normal_std, params.calib_seed], "ssim": [params.ssim_images, params.ssim_seed],
        "steps": params.steps, "patterns": list(params.content_patterns),
        "bank_contents": bank_digest(bank), "code": code_digest([__name__])})
    with Progress(out_dir / "mixdq.progress.jsonl", key, required=("group", "sqnr_db", "ssim", "seconds"),
                  check=_row_problem) as prog:
        todo = [(l, o) for l in layers for o in options if not prog.done(l, o)]
        for layer, option in progress_bar(todo, desc="mixdq", unit="pair", disable=not progress):
            t1 = time.perf_counter()
            with ev.applied(one_layer(bank.model, layer, option)):
                q = sqnr_db(y_fp, run_model(denoiser.model, calib))
            s = math.nan
            if groups[layer] == "content":
                gen = ev.generate(one_layer(bank.model, layer, option), params.ssim_images, params.ssim_seed,
                                  **gen_kw)
                s = 0.0 if gen.n_nonfinite else float(ssim(gen.images, fp_images, reduction="mean"))
            prog.add({"layer": layer, "option": option, "group": groups[layer],
                      "sqnr_db": q if math.isfinite(q) else (1e3 if q > 0 else -1e3),
                      "ssim": None if math.isnan(s) else s, "seconds": time.perf_counter() - t1})
        rows = [prog.rows[(l, o)] for l in layers for o in options]
        measure_seconds = sum(r["seconds"] for r in prog.rows.values())
    df = pd.DataFrame(rows)
    df["ssim"] = df["ssim"].astype(float)
    df["metric"] = np.where(df["group"] == "content", "ssim", "sqnr")
    df["score"] = np.where(df["group"] == "content", df["ssim"], df["sqnr_db"])
    df = df[COLUMNS]
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out_dir / "mixdq.parquet", index=False)
    hist = np.bincount(calib.step_index, minlength=calib.num_steps).tolist()
    write_json(out_dir / "mixdq.json", {
        "model": bank.model, "method": "MixDQ metric-decoupled sensitivity (seed 001)",
        "groups": {g: [l for l in layers if groups[l] == g] for g in ("content", "quality")},
        "content_patterns": list(params.content_patterns),
        "calibration": {"samples": len(calib), "trajectories": params.calib_trajectories,
                        "timesteps": params.calib_timesteps, "trajectory_steps": calib.num_steps,
                        "step_histogram": hist, "seed": params.calib_seed},
        "ssim": {"images": params.ssim_images, "seed": params.ssim_seed},
        "setup_seconds": round(setup_seconds, 2), "measure_seconds": round(measure_seconds, 2),
        "wall_seconds_this_run": round(time.perf_counter() - t_start, 2)})
    return df
