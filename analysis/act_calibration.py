"""Seed 003's claim measured: static activation calibration, uniform vs normal time-step sampling.

PTQ4DM calibrates on time steps drawn from a normal distribution over the sampling trajectory;
Q-Diffusion and DI2N found uniform sampling better (DI2N, CIFAR-10 W8A8: FID 10.71 uniform vs
12.85 normal). Here, with FP weights:

1. collect calibration inputs from the FP trajectory with each sampling (`sampling.calibration.
   collect_calibration`, the same recorded trajectories for both: seed `calib_seed`), and take each
   layer's static (min, max) input range over them (`activation_ranges`);
2. quantize every quantizable layer's input activations on those fixed ranges at each of `bits`
   (per-tensor asymmetric, values outside clipped) and score FID + content on `image_seeds` —
   fresh seed sets, each scored for every setting (paired);
3. score the FP model on the same seed sets: its seed-to-seed σ is the noise a difference must
   beat (and `metrics/NAME/noise.json`'s σ, measured on other seed sets, is quoted beside it).

Output (`write_json`, `metrics/NAME/act_calibration.json`): per sampling and bit-width the FIDs and
contents per seed set with mean and standard error; the paired difference uniform − normal per
bit-width (mean, standard error, verdict: a difference counts when |mean| > 2·SE); the
calibration's time-step histograms and how the ranges differ.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import QsensError
from core.params import load_section, defaults_from

SAMPLINGS = ("uniform", "normal")


@dataclass(frozen=True)
@defaults_from("act_calibration", calibration={
    "calib_samples": "samples", "calib_trajectories": "trajectories", "calib_seed": "seed",
    "normal_mean": "normal_mean", "normal_std": "normal_std", "chunk": "chunk"
})
class ActCalibrationParams:
    """The `act_calibration:` section of params.yaml."""
    images: int  # images per scored setting
    image_seeds: tuple[int, ...]  # fresh seed sets (>= 3), disjoint from every other stage's
    bits: tuple[int, ...]  # activation bits of every layer (A4: where the sampling shows on digits)
    calib_samples: int  # calibration inputs drawn from the FP trajectory
    calib_trajectories: int  # FP images whose trajectories are recorded
    calib_seed: int  # image seed set of the calibration trajectories; also the draw's RNG seed
    normal_mean: float  # normal: mean, as a fraction of the trajectory (0 = noisiest)
    normal_std: float  # normal: std, same units
    steps: int | None  # sampler steps (None: the model's default)
    chunk: int  # calibration samples per forward

    def __post_init__(self) -> None:
        if len(set(self.image_seeds)) < 3:
            raise QsensError(f"act_calibration.image_seeds {list(self.image_seeds)}: give at least 3 distinct seed sets")
        if self.calib_seed in self.image_seeds:
            raise QsensError(f"act_calibration.calib_seed {self.calib_seed} is one of image_seeds: the "
                             "calibration trajectories must not share the scored images' seeds")
        if not self.bits or any(not 2 <= b <= 8 for b in self.bits):
            raise QsensError(f"act_calibration.bits {list(self.bits)}: each must be in 2-8")
        if self.images < 2 or self.calib_samples < 1 or self.calib_trajectories < 1 or self.chunk < 1:
            raise QsensError("act_calibration: images must be >= 2; calib_samples, calib_trajectories, chunk >= 1")
        if any(s < 0 for s in self.image_seeds):
            raise QsensError("act_calibration.image_seeds must be >= 0")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "ActCalibrationParams":
        """The `act_calibration:` section of a params file (QsensError when malformed)."""
        return load_section(ActCalibrationParams, path, "act_calibration")


def mean_sem(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, standard error = sample std / √n) of the finite values; None when there are none
    (SE None for a single value)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None)


def verdict(diff_mean: float | None, diff_sem: float | None) -> str:
    """How a paired difference uniform − normal (FID; lower is better) reads: a side wins only
    when |mean| > 2·SE."""
    if diff_mean is None or diff_sem is None:
        return "undetermined"
    if abs(diff_mean) <= 2 * diff_sem:
        return "no significant difference"
    return "uniform better" if diff_mean < 0 else "normal better"


def measure_act_calibration(denoiser, scorer, params: ActCalibrationParams, out_path: str | Path, *,
                            noise_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the measurement (module doc) and write `out_path` (JSON); returns what it wrote.

    denoiser: a `Denoiser` with FP weights; scorer: `sampling.scorers.make_scorer(denoiser)`.
    noise_path: `metrics/NAME/noise.json` (optional): its FP seed σ is quoted beside this run's.
    """
    from sampling.calibration import activation_ranges, collect_calibration, observed_layers
    from analysis.common import write_json
    from quant.activations import activation_quant
    from quant.layers import quantizable_layers
    from core.progress import progress_bar

    t_start = time.perf_counter()
    p = params
    gen_kw: dict[str, Any] = {} if p.steps is None else {"steps": p.steps}
    layers = list(quantizable_layers(denoiser.model))
    seeds = [int(s) for s in dict.fromkeys(p.image_seeds)]

    calibration, ranges = {}, {}
    for how in SAMPLINGS:
        calib = collect_calibration(denoiser, p.calib_samples, trajectories=p.calib_trajectories,
                                    seed=p.calib_seed, how=how, mean=p.normal_mean, std=p.normal_std,
                                    steps=p.steps)
        ranges[how] = activation_ranges(denoiser.model, calib, p.chunk, layers)
        calibration[how] = {"step_histogram": np.bincount(calib.step_index, minlength=calib.num_steps).tolist(),
                            "trajectory_steps": calib.num_steps, "samples": len(calib)}
    layers, excluded = observed_layers(layers, *ranges.values(), what="activation calibration")
    width = {how: np.array([ranges[how][l][1] - ranges[how][l][0] for l in layers]) for how in SAMPLINGS}
    ratio = width["normal"] / np.where(width["uniform"] > 0, width["uniform"], np.nan)

    from sampling.evaluator import Evaluator

    ev = Evaluator(denoiser, None, scorer)

    def score(bits: int | None, how: str | None, seed: int) -> dict:
        t0 = time.perf_counter()
        hooks = None if bits is None else activation_quant(denoiser.model, {l: int(bits) for l in layers},
                                                           ranges=ranges[how])
        gen = ev.generate(None, p.images, seed, hooks=hooks, **gen_kw)
        sc = scorer.score(gen)
        return {"fid": float(sc.fid) if sc.ok else None, "content": float(sc.content) if sc.ok else None,
                "status": sc.status, "seconds": round(time.perf_counter() - t0, 3)}

    jobs = [(None, None, s) for s in seeds] + [(b, how, s) for b in p.bits for how in SAMPLINGS for s in seeds]
    scored = {}
    for bits, how, seed in progress_bar(jobs, desc="act-calibration", unit="score", disable=not progress):
        scored[(bits, how, seed)] = score(bits, how, seed)

    def block(bits: int | None, how: str | None) -> dict:
        rows = [scored[(bits, how, s)] for s in seeds]
        fid_m, fid_se = mean_sem([r["fid"] for r in rows])
        c_m, c_se = mean_sem([r["content"] for r in rows])
        return {"fid": [r["fid"] for r in rows], "content": [r["content"] for r in rows],
                "fid_mean": fid_m, "fid_sem": fid_se, "content_mean": c_m, "content_sem": c_se,
                "failed": sum(r["status"] != "ok" for r in rows), "seconds": sum(r["seconds"] for r in rows)}

    fp = block(None, None)
    fp_fids = [f for f in fp["fid"] if f is not None]
    fp["fid_seed_std"] = float(np.std(fp_fids, ddof=1)) if len(fp_fids) > 1 else None
    results = {how: {f"A{b}": block(b, how) for b in p.bits} for how in SAMPLINGS}
    comparison = {}
    for b in p.bits:
        u, n = results["uniform"][f"A{b}"], results["normal"][f"A{b}"]
        diffs = [None if a is None or c is None else a - c for a, c in zip(u["fid"], n["fid"])]
        cdiffs = [None if a is None or c is None else a - c for a, c in zip(u["content"], n["content"])]
        d_m, d_se = mean_sem(diffs)
        c_m, c_se = mean_sem(cdiffs)
        comparison[f"A{b}"] = {"fid_diff_uniform_minus_normal": diffs, "fid_diff_mean": d_m, "fid_diff_sem": d_se,
                               "content_diff_uniform_minus_normal": cdiffs, "content_diff_mean": c_m,
                               "content_diff_sem": c_se, "verdict": verdict(d_m, d_se),
                               "uniform_mean_lower": None if d_m is None else bool(d_m < 0)}
    noise = None
    if noise_path is not None and Path(noise_path).is_file():
        from core.jsonio import read_json

        nj = read_json(Path(noise_path), "metrics/NAME/noise.json")
        if isinstance(nj, dict):
            noise = {"path": str(noise_path), "fp_fid_seed_std": nj.get("fp_fid_seed_std"),
                     "fp_fid_mean": nj.get("fp_fid_mean"), "images_per_score": nj.get("images_per_score")}
    out = {
        "model": getattr(denoiser, "name", None) or type(denoiser).__name__,
        "method": "static per-tensor min-max activation ranges calibrated on the FP trajectory, time steps "
                  "drawn uniform vs normal (PTQ4DM); every quantizable layer's input quantized; FP weights "
                  "(seed 003)",
        "settings": {**asdict(params), "image_seeds": seeds, "bits": list(p.bits), "layers": len(layers)},
        **({"excluded_layers": excluded} if excluded else {}),
        "fp": fp, "fp_noise_json": noise, "results": results, "comparison": comparison,
        "uniform_beats_normal": {k: v["verdict"] for k, v in comparison.items()},
        "calibration": {**calibration, "range_width_normal_over_uniform": {
            "median": float(np.nanmedian(ratio)), "min": float(np.nanmin(ratio)), "max": float(np.nanmax(ratio)),
            "layers_narrower": int(np.sum(ratio < 1 - 1e-12))}},
        "seconds": round(time.perf_counter() - t_start, 2)}
    write_json(out_path, out)
    return out
