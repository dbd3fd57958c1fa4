"""Which cheap label ranks configs like the expensive one — measured (`qsens analyze metrics`).

Ground truth: FID against the real reference on the evaluation protocol (`evaluate.images`
images on each of `evaluate.image_seeds`), averaged. Configs: every weight-only config the
evaluate stage scored (the strategies' families: exactly the configs search must rank near each
budget, their truth read from `metrics/NAME/search.json`), plus `random_configs` configs of the
quant_cache spread over its avg-bits range, plus up to `window_configs` cache configs nearest each
budget (scored on the evaluation seeds here).

Candidates, each scored on the cache's seed set (`score.seed`, disjoint from the evaluation
seeds) at n ∈ `n_images` (the first n images of one generation of max(n) images; image i has the
same per-image seed at every n):

- `fid`: FID vs real at n images (today's label at n = `score.images`);
- every paired score of `sampling.paired` against the FP images of the same seeds;
- `output_mse`: image-free: the denoiser output's mean squared error vs FP over the calibration
  inputs of seed 003 (`sampling.calibration`, `calib_samples` inputs), relative to the FP output's
  mean square. Costs forward passes, no images.

Agreement with the truth: Spearman and Kendall, with a 90 % bootstrap interval over configs
(`bootstrap` resamples, seeded), three scopes: `all`; `window-<b>` (configs within ±`window` avg
bits of each default budget: what search needs); `top-quarter` (the quarter with the lowest
truth). Ceiling: the truth's split-half retest (mean FID over seed sets 1, 3, 5 vs 2, 4), same
statistics, per scope. Output (`metrics/NAME/metric_validity.json`):

    {"ground_truth": {"images", "image_seeds", "configs", "retest": [{scope, spearman, ...}]},
     "metrics": [{"metric", "n_images", "spearman", "spearman_lo", "spearman_hi", "kendall",
                  "images_per_label", "forwards_per_label", "scope", "configs"}, ...],
     "cheapest": {...}}
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.params import defaults_from, load_section
from analysis.common import Progress, settings_key, write_json
from core.errors import QsensError

CANDIDATES = ("fid", "fd_fp", "feat_dist", "image_mse", "dssim", "content_drop")


@dataclass
@defaults_from("metric_validity", calibration={
    "calib_samples": "samples", "calib_trajectories": "trajectories", "calib_seed": "seed",
    "chunk": "chunk"
})
class MetricValidityParams:
    """The `metric_validity:` section of params.yaml."""

    n_images: tuple[int, ...]
    random_configs: int  # cache configs spread over its avg-bits range
    window_configs: int  # + cache configs nearest each budget
    window: float  # ± avg bits around a budget
    bootstrap: int
    seed: int
    spearman_goal: float  # "good enough over all configs"
    calib_samples: int  # output_mse: calibration inputs (seed 003)
    calib_trajectories: int
    calib_seed: int
    chunk: int

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml") -> "MetricValidityParams":
        """The `metric_validity:` section of a params file (QsensError when malformed)."""
        return load_section(MetricValidityParams, path, "metric_validity")

    def __post_init__(self) -> None:
        if not self.n_images or any(int(n) < 2 for n in self.n_images):
            raise QsensError(f"metric_validity.n_images {list(self.n_images)}: give image counts >= 2")
        if self.random_configs < 0 or self.window_configs < 0 or self.window <= 0 or self.bootstrap < 10:
            raise QsensError("metric_validity: random_configs/window_configs >= 0, window > 0, bootstrap >= 10")


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
def rank_agreement(x: Sequence[float], truth: Sequence[float], bootstrap: int = 1000,
                   seed: int = 0) -> dict[str, float | None]:
    """Spearman ρ and Kendall τ of `x` against `truth` (configs as rows) with a 90 % percentile
    bootstrap interval of ρ over configs; None where fewer than 4 finite pairs."""
    from scipy.stats import kendalltau, spearmanr

    x, t = np.asarray(x, float), np.asarray(truth, float)
    ok = np.isfinite(x) & np.isfinite(t)
    x, t = x[ok], t[ok]
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(t) == 0:
        return {"spearman": None, "spearman_lo": None, "spearman_hi": None, "kendall": None, "configs": int(len(x))}
    import warnings

    from scipy.stats import ConstantInputWarning

    with warnings.catch_warnings():  # a constant label or resample has no rank correlation: null, not a warning
        warnings.simplefilter("ignore", ConstantInputWarning)
        rho = float(spearmanr(x, t).statistic)
        tau = float(kendalltau(x, t).statistic)
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(x), len(x))
            if len(set(idx.tolist())) < 3:
                continue
            r = spearmanr(x[idx], t[idx]).statistic
            if np.isfinite(r):
                boots.append(r)
    lo, hi = (np.percentile(boots, [5, 95]) if boots else (math.nan, math.nan))

    def num(v: float) -> float | None:  # a constant label or truth has no rank correlation
        return float(v) if math.isfinite(v) else None

    return {"spearman": num(rho), "spearman_lo": num(float(lo)), "spearman_hi": num(float(hi)),
            "kendall": num(tau), "configs": int(len(x))}


def scopes(avg_bits: np.ndarray, truth: np.ndarray, budgets: Sequence[float],
           window: float) -> dict[str, np.ndarray]:
    """{scope name: boolean mask over configs}: all, window-<b> per budget, top-quarter."""
    out = {"all": np.ones(len(truth), bool)}
    for b in budgets:
        out[f"window-{b:g}"] = np.abs(avg_bits - b) <= window + 1e-12
    q = np.nanpercentile(truth, 25)
    out["top-quarter"] = truth <= q
    return out


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------
def pick_configs(cache, family: dict[str, Any], params: MetricValidityParams,
                 budgets: Sequence[float]) -> list[tuple[str, Any]]:
    """[(origin, QuantConfig)]: the families' configs, then cache configs spread over the
    avg-bits range, then those nearest each budget; distinct ids, deterministic."""
    from quant.config import QuantConfig

    picked: dict[str, tuple[str, Any]] = {}
    for cid, cfg in family.items():
        picked.setdefault(cid, ("family", cfg))
    df = cache.sort_values(["avg_bits", "config_id"]).reset_index(drop=True)
    if params.random_configs and len(df):
        for i in np.unique(np.linspace(0, len(df) - 1, params.random_configs).round().astype(int)):
            r = df.iloc[int(i)]
            picked.setdefault(r["config_id"], ("random", QuantConfig(r["model"], json.loads(r["options"]))))
    for b in budgets:
        near = df.assign(d=(df["avg_bits"] - b).abs()).sort_values(["d", "config_id"])
        near = near[near["d"] <= params.window]
        for _, r in near.head(params.window_configs).iterrows():
            picked.setdefault(r["config_id"], ("random", QuantConfig(r["model"], json.loads(r["options"]))))
    return list(picked.values())


def output_mse(ev, config, calib, reference, chunk: int) -> float:
    """Mean squared error of the denoiser output vs FP over the calibration inputs, relative to
    the FP output's mean square (0 = unchanged)."""
    from sampling.calibration import run_model

    with ev.applied(config):
        y = run_model(ev.denoiser.model, calib, chunk)
    den = float((reference ** 2).sum())
    return float(((y - reference) ** 2).sum()) / den if den > 0 else math.nan


def _row_problem(row: dict) -> str | None:
    """Why a metric-validity progress row cannot be reused (beyond Progress's checks), or None:
    the truth is a list of FIDs (null or finite >= 0), the labels {name: null or finite}."""
    from core.jsonio import row_problem

    truth, labels = row["truth"], row["labels"]
    if not isinstance(truth, list) or not isinstance(labels, dict):
        return "truth is not a list or labels not an object"
    for f in truth:
        if row_problem({"truth": f}, nonneg=("truth",)):
            return f"truth FID {f!r} is not a finite number >= 0"
    for name, v in labels.items():
        if row_problem({name: v}, finite=(name,)):
            return f"label {name} {v!r} is not a finite number"
    return None


def measure(ev, configs: list[tuple[str, Any]], truth_known: dict[str, list[float]], params: MetricValidityParams,
            label_seed: int, eval_images: int, eval_seeds: Sequence[int], progress_path: Path, key: str,
            progress: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """One row per config: avg_bits, truth per seed, every candidate at every n. Resumable."""
    from sampling.calibration import collect_calibration, run_model
    from core.progress import progress_bar
    from sampling.evaluator import CostMeter, prefix_generation

    n_max = max(int(n) for n in params.n_images)
    fp = ev.fp_images(n_max, label_seed)
    calib = collect_calibration(ev.denoiser, params.calib_samples, trajectories=params.calib_trajectories,
                                seed=params.calib_seed)
    y_fp = run_model(ev.denoiser.model, calib, params.chunk)
    rows = []
    with Progress(progress_path, key, nonneg=("avg_bits",), required=("avg_bits", "truth", "labels"),
                  check=_row_problem) as prog:
        for origin, cfg in progress_bar(configs, desc="metric validity", unit="config", disable=not progress):
            cid = cfg.config_id
            if prog.done(cid, "all"):
                rows.append(prog.rows[(cid, "all")])
                continue
            meter = CostMeter()
            ev_meter, ev.meter = ev.meter, meter
            try:
                truth = truth_known.get(cid)
                if truth is None:
                    truth = [ev.score(cfg, eval_images, s)["fid"] for s in eval_seeds]
                gen = ev.generate(cfg, n_max, label_seed)
            finally:
                ev.meter = ev_meter
                ev_meter.add(meter)
            labels: dict[str, float | None] = {}
            for n in sorted(int(x) for x in params.n_images):
                if gen.n_nonfinite:
                    break
                sc = ev.score_generation(prefix_generation(gen, n), ev.fp_prefix(fp, gen, n))
                if sc["status"] != "ok":
                    continue
                labels[f"fid@{n}"] = sc["fid"]
                for m in CANDIDATES[1:]:
                    labels[f"{m}@{n}"] = sc[m]
            labels["output_mse@0"] = output_mse(ev, cfg, calib, y_fp, params.chunk)
            row = {"layer": cid, "option": "all", "config_id": cid, "origin": origin,
                   "avg_bits": float(ev.bank.summarize(cfg).avg_bits),
                   "truth": [None if f is None or not math.isfinite(f) else float(f) for f in truth],
                   "labels": labels, "cost": meter.as_dict()}
            prog.add(row)
            rows.append(row)
    return rows


def summarize(rows: list[dict], params: MetricValidityParams, budgets: Sequence[float],
              eval_images: int, eval_seeds: Sequence[int], forwards_per_image: float) -> dict[str, Any]:
    """The validity table (module doc) from measured rows."""
    ok = [r for r in rows if r["truth"] and all(t is not None for t in r["truth"])]
    if len(ok) < 4:
        raise QsensError(f"metric validity: only {len(ok)} configs with a complete ground truth")
    truth = np.array([np.mean(r["truth"]) for r in ok])
    bits = np.array([r["avg_bits"] for r in ok])
    masks = scopes(bits, truth, budgets, params.window)
    empty = [s for s, m in masks.items() if s.startswith("window-") and m.sum() < 4]
    if empty:
        print(f"note: fewer than 4 configs in {', '.join(empty)} (±{params.window} avg bits): no correlation there")
    half_a = np.array([np.mean(r["truth"][0::2]) for r in ok])
    half_b = np.array([np.mean(r["truth"][1::2]) for r in ok])
    retest = [{"scope": s, **rank_agreement(half_a[m], half_b[m], params.bootstrap, params.seed)}
              for s, m in masks.items()]
    names = sorted({k for r in ok for k in r["labels"]}, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    metrics = []
    for name in names:
        metric, n = name.split("@")
        x = np.array([r["labels"].get(name, math.nan) if r["labels"].get(name) is not None else math.nan
                      for r in ok], float)
        for s, m in masks.items():
            metrics.append({"metric": metric, "n_images": int(n), "scope": s,
                            "images_per_label": int(n),
                            "forwards_per_label": (params.calib_samples if metric == "output_mse"
                                                   else round(int(n) * forwards_per_image, 2)),
                            **rank_agreement(x[m], truth[m], params.bootstrap, params.seed)})
    good = [m for m in metrics if m["scope"] == "all" and m["spearman"] is not None
            and m["spearman"] >= params.spearman_goal]
    cheapest = min(good, key=lambda m: (m["images_per_label"], -m["spearman"])) if good else None
    if cheapest is not None:
        windows = [m for m in metrics if m["metric"] == cheapest["metric"] and m["n_images"] == cheapest["n_images"]
                   and m["scope"].startswith("window-")]
        cheapest = {**cheapest, "windows": {m["scope"]: m["spearman"] for m in windows},
                    "retest_windows": {r["scope"]: r["spearman"] for r in retest if r["scope"].startswith("window-")}}
    return {"ground_truth": {"metric": "fid", "images": int(eval_images), "image_seeds": [int(s) for s in eval_seeds],
                             "configs": len(ok), "origins": {o: sum(r["origin"] == o for r in ok)
                                                            for o in sorted({r["origin"] for r in ok})},
                             "avg_bits_range": [float(bits.min()), float(bits.max())],
                             "retest_split": f"mean FID over seed sets {list(eval_seeds)[0::2]} vs {list(eval_seeds)[1::2]}",
                             "retest": retest},
            "metrics": metrics, "cheapest": cheapest, "goal_spearman_all": params.spearman_goal}


def plot(result: dict[str, Any], path: Path) -> Path:
    """Spearman vs images per label, one line per metric, one panel per scope group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("all", lambda s: s == "all"), ("budget windows (mean)", lambda s: s.startswith("window-")),
              ("top quarter", lambda s: s == "top-quarter")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    metrics = sorted({m["metric"] for m in result["metrics"] if m["metric"] != "output_mse"})
    for ax, (title, sel) in zip(axes, groups):
        for metric in metrics:
            pts: dict[int, list[float]] = {}
            for m in result["metrics"]:
                if m["metric"] == metric and sel(m["scope"]) and m["spearman"] is not None:
                    pts.setdefault(m["n_images"], []).append(m["spearman"])
            if pts:
                ns = sorted(pts)
                ax.plot(ns, [np.mean(pts[n]) for n in ns], marker="o", label=metric)
        om = [m["spearman"] for m in result["metrics"] if m["metric"] == "output_mse" and sel(m["scope"])
              and m["spearman"] is not None]
        if om:
            ax.axhline(np.mean(om), color="grey", ls=":", label="output_mse (no images)")
        rt = [r["spearman"] for r in result["ground_truth"]["retest"] if sel(r["scope"]) and r["spearman"] is not None]
        if rt:
            ax.axhline(np.mean(rt), color="black", ls="--", label="truth split-half retest")
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("images per label")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Spearman vs FID (5 × 500 images)")
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_metric_validity(ev, cache, family: dict[str, Any], truth_known: dict[str, list[float]],
                        params: MetricValidityParams, budgets: Sequence[float], label_seed: int,
                        eval_images: int, eval_seeds: Sequence[int], out: Path, plot_path: Path | None,
                        work_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Pick configs, measure (resumable under `work_dir`), summarize, write `out` (+ plot)."""
    from core.provenance import bank_digest, code_digest

    t0 = time.perf_counter()
    configs = pick_configs(cache, family, params, budgets)
    if len(configs) < 4:
        raise QsensError(f"metric validity: only {len(configs)} configs to compare")
    key = settings_key({"evaluator": ev.identity(), "bank": bank_digest(ev.bank), "n": list(params.n_images),
                        "label_seed": label_seed, "eval": [eval_images, list(eval_seeds)],
                        "calib": [params.calib_samples, params.calib_trajectories, params.calib_seed],
                        "code": code_digest([__name__])})
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = measure(ev, configs, truth_known, params, label_seed, eval_images, eval_seeds,
                   work_dir / "metric_validity.progress.jsonl", key, progress)
    # denoiser passes per image (steps × 2 under classifier-free guidance)
    forwards = [r["cost"]["forward_samples"] / max(1, r["cost"]["images"]) for r in rows if r["cost"]["images"]]
    result = summarize(rows, params, budgets, eval_images, eval_seeds,
                       float(np.median(forwards)) if forwards else math.nan)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out, result)
    if plot_path is not None:
        plot(result, plot_path)
    return result
