"""Is the score meaningful for this model? Seed noise of the FP model vs spread over configs.

`measure_noise` answers it with the figures the `noise` stage writes to `metrics/NAME/noise.json`:

- `classifier_test_accuracy` — the digits classifier on held-out real digits;
- `fp_generated_accuracy` — the classifier on the FP model's samples vs their conditioning class;
- `fp_fid_seed_std` (σ) — std of the FP model's FID over `fp_seed_sets` disjoint seed sets;
- `random_fid_std` (S) — std of FID over `random_configs` random configs (Qua2SeDiMo's sampler:
  p3 ~ U(0,1) per config, each layer 3-bit with probability p3, else 4-bit, method uniform);
- `fid_signal_to_noise` = S / σ (want ≥ 10);
- `fid_retest_spearman` — Spearman ρ of the same configs' FIDs under two disjoint seed sets
  (want ≥ 0.9: a predictor can only learn a ranking the score itself reproduces);
- uniform configs (every layer the same option) → FID and accuracy per option;
- `seconds_per_config_median` — apply + generate + score, at the default params.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import QsensError
from core.params import load_section, defaults_from
from core.jsonio import write_json


@dataclass(frozen=True)
@defaults_from("score")
class ScoreParams:
    """The `score:` section of params.yaml: how one config is scored."""

    images: int  # images per score (labels cycle 0..9)
    seed: int  # seed set: image i uses seed `seed * 1e6 + i`

    def __post_init__(self) -> None:
        if self.images < 2:
            raise QsensError(f"score.images must be >= 2 (FID needs two images), got {self.images}")
        if self.seed < 0:
            raise QsensError(f"score.seed must be >= 0, got {self.seed}")

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml", section: str = "score") -> "ScoreParams":
        """The `score:` section of a params file (QsensError when malformed)."""
        return _section(ScoreParams, path, section)


@dataclass(frozen=True)
@defaults_from("noise")
class NoiseParams:
    """The `noise:` section of params.yaml."""

    fp_seed_sets: int  # FP model scored on seed sets 0..fp_seed_sets-1 → σ
    random_configs: int  # random configs → S, and test–retest
    config_seed: int  # random-config stream (distinct from the `sample` stage's)
    seed_a: int  # image seed set of the "test" scores
    seed_b: int  # image seed set of the "retest" scores (disjoint from seed_a)
    grid_columns: int  # images per row of the sample grid (one per class)

    @staticmethod
    def from_yaml(path: str | Path = "params.yaml", section: str = "noise") -> "NoiseParams":
        """The `noise:` section of a params file.

        Raises QsensError when malformed, when `seed_a == seed_b` or with fewer than 2 FP seed sets or
        3 random configs.
        """
        p = _section(NoiseParams, path, section)
        if p.seed_a == p.seed_b:
            raise QsensError("noise.seed_a and noise.seed_b must differ (disjoint seed sets)")
        if p.fp_seed_sets < 2 or p.random_configs < 3:
            raise QsensError("noise needs fp_seed_sets >= 2 and random_configs >= 3")
        return p


def _section(cls, path: str | Path, section: str):
    return load_section(cls, path, section)


# ----------------------------------------------------------------------------------------------
def load_bank_for(denoiser, path: str | Path, model_name: str, *, progress: bool = True,
                  build_missing: bool = True):
    """The bank at `path`, checked against the model's weights; built in memory (not saved)
    when none exists there and `build_missing`, else one QsensError naming the path."""
    from quant.bank import META_FILE, Bank, build_bank

    path = Path(path)
    if (path / META_FILE).exists() or not build_missing:
        bank = Bank.load(path)
        bank.check_model(denoiser.model, where=str(path))
        return bank
    print(f"no bank at {path}: building one in memory (`qsens bank build` saves it)")
    return build_bank(denoiser.model, model_name=model_name, progress=progress)


def _random_options(layer_names, options, seed: int, index: int) -> dict[str, str]:
    from sampling.sampler import random_config

    return random_config(layer_names, options, seed, index)


def measure_noise(denoiser, scorer, bank, params: NoiseParams | None = None,
                  score_params: ScoreParams | None = None, progress: bool = True,
                  grid_path: str | Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All noise figures (see module doc) and one record per random config."""
    from scipy.stats import spearmanr
    from core.progress import progress_bar

    from quant.config import QuantConfig
    from quant.options import parse_option
    from sampling.evaluator import Evaluator, evaluate

    params = params or NoiseParams()
    sp = score_params or ScoreParams()
    n = sp.images
    model_name = bank.model
    layers = list(bank.layer_names)
    ev = Evaluator(denoiser, bank, scorer)  # checks the bank against the model once
    total = params.fp_seed_sets + 2 * params.random_configs + len(bank.options)
    bar = progress_bar(total=total, desc="noise", unit="score", disable=not progress)

    # 1. FP model over disjoint seed sets → σ
    fp_scores = []
    fp_images = None
    for s in range(params.fp_seed_sets):
        score, gen = evaluate(denoiser, scorer, n, seed=s)
        fp_scores.append(score)
        if s == 0:
            fp_images = gen.images
        bar.update()
    fp_fids = np.array([x.fid for x in fp_scores])
    fp_accs = np.array([x.content for x in fp_scores])

    # 2. random configs under two disjoint seed sets → S, test–retest
    records: list[dict[str, Any]] = []
    seconds: list[float] = []
    for i in range(params.random_configs):
        options = _random_options(layers, bank.options, params.config_seed, i)
        config = QuantConfig(model_name, options)
        stats = bank.summarize(config)
        t0 = time.perf_counter()
        with ev.applied(config):
            sa, _ = evaluate(denoiser, scorer, n, seed=params.seed_a)
            seconds.append(time.perf_counter() - t0)
            bar.update()
            sb, _ = evaluate(denoiser, scorer, n, seed=params.seed_b)
            bar.update()
        bits = np.array([parse_option(o).bits for o in options.values()])
        records.append({
            "index": i, "config_id": config.config_id, "avg_bits": stats.avg_bits,
            "frac_3bit": float(np.mean(bits == min(bits.min(), 3))) if len(bits) else 0.0,
            "fid_a": sa.fid, "fid_b": sb.fid, "accuracy_a": sa.content,
            "accuracy_b": sb.content, "status": "ok" if sa.ok and sb.ok else "failed",
            "reason": sa.reason or sb.reason})
    ok = [r for r in records if r["status"] == "ok"]
    fid_a = np.array([r["fid_a"] for r in ok])
    fid_b = np.array([r["fid_b"] for r in ok])

    # 3. uniform configs (every layer one option)
    uniform: dict[str, dict[str, Any]] = {}
    grid_rows: dict[str, np.ndarray] = {"fp": fp_images}
    for opt in sorted(bank.options, key=lambda o: (-parse_option(o).bits, o)):
        config = QuantConfig.uniform(model_name, layers, opt)
        with ev.applied(config):
            s, gen = evaluate(denoiser, scorer, n, seed=params.seed_a)
        bar.update()
        uniform[opt] = {"fid": _num(s.fid), "accuracy": _num(s.content),
                        "avg_bits": bank.summarize(config).avg_bits, "status": s.status}
        grid_rows[opt] = gen.images
    bar.close()

    sigma = float(np.std(fp_fids, ddof=1))
    big_s = float(np.std(fid_a, ddof=1)) if len(fid_a) > 1 else math.nan
    rho = float(spearmanr(fid_a, fid_b).statistic) if len(fid_a) > 2 else math.nan
    by_bits: dict[int, list[float]] = {}
    for opt, u in uniform.items():
        if u["fid"] is not None:
            by_bits.setdefault(parse_option(opt).bits, []).append(u["fid"])
    result = {
        "model": model_name,
        "images_per_score": n,
        "classifier_test_accuracy": _num(_classifier_acc(scorer)),
        "fp_generated_accuracy": _num(float(fp_accs.mean())),
        "fp_fid_mean": float(fp_fids.mean()),
        "fp_fid_seed_std": sigma,
        "fp_fids": [float(f) for f in fp_fids],
        "random_configs": len(records),
        "random_configs_failed": len(records) - len(ok),
        "random_fid_mean": _num(float(fid_a.mean()) if len(fid_a) else math.nan),
        "random_fid_min": _num(float(fid_a.min()) if len(fid_a) else math.nan),
        "random_fid_max": _num(float(fid_a.max()) if len(fid_a) else math.nan),
        "random_fid_std": _num(big_s),
        "fid_signal_to_noise": _num(big_s / sigma if sigma > 0 else math.inf),
        "fid_retest_spearman": _num(rho),
        "uniform": uniform,
        "uniform_fid_by_bits": {str(b): float(np.mean(v)) for b, v in sorted(by_bits.items())},
        "seconds_per_config_median": float(np.median(seconds)) if seconds else None,
        "seeds": {"fp": list(range(params.fp_seed_sets)), "a": params.seed_a, "b": params.seed_b,
                  "config_seed": params.config_seed},
    }
    if grid_path:
        sample_grid(grid_rows, grid_path, columns=params.grid_columns,
                    titles={k: _row_title(k, uniform, fp_fids[0], fp_accs[0],
                                          fp_scores[0].content_metric) for k in grid_rows})
    return result, records


def _classifier_acc(scorer) -> float:
    info = getattr(scorer, "info", {}) or {}
    return float(info.get("classifier", {}).get("test_accuracy", math.nan))


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# how a sample grid names each content metric (`Score.content_metric`); "none": not shown
CONTENT_LABELS = {"clip": "CLIP score", "accuracy": "accuracy",
                  "clip_zeroshot_accuracy": "CLIP zero-shot accuracy"}


def content_label(metric: str | None) -> str | None:
    """The words a plot uses for a scorer's content metric: "CLIP score" (prompts), "accuracy"
    (the digits classifier), "CLIP zero-shot accuracy" (class labels); None for "none"."""
    return CONTENT_LABELS.get(str(metric)) if metric else None


def _row_title(key: str, uniform: dict, fp_fid: float, fp_acc: float | None,
               metric: str | None = "accuracy") -> str:
    label = content_label(metric)

    def content(x: float | None) -> str:  # real models without a CLIP model have no content score
        return "" if label is None or x is None or not math.isfinite(x) else f", {label} {x:.2f}"

    if key == "fp":
        return f"FP: FID {fp_fid:.1f}{content(fp_acc)}"
    u = uniform[key]
    if u["fid"] is None:
        return f"uniform {key}: failed"
    return f"uniform {key}: FID {u['fid']:.1f}{content(u['accuracy'])}"


def sample_grid(rows: dict[str, np.ndarray], path: str | Path, columns: int = 10,
                titles: dict[str, str] | None = None) -> Path:
    """A PNG with one row per entry (first `columns` images each), labelled on the left."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = grid_figure(rows, columns, titles)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grid_figure(rows: dict[str, np.ndarray], columns: int = 10, titles: dict[str, str] | None = None):
    """The Figure `sample_grid` saves (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rows)
    width = columns * 0.55 + 3.2
    fig, axes = plt.subplots(len(keys), 1, figsize=(width, len(keys) * 0.7 + 0.2), squeeze=False)
    texts = []
    for ax, key in zip(axes[:, 0], keys):
        imgs = rows[key][:columns]
        if imgs.ndim == 4 and imgs.shape[-1] == 1:
            imgs = imgs[..., 0]
        pad = np.full((imgs.shape[1], 1) + imgs.shape[3:], 255, dtype=np.uint8)
        strip = np.concatenate([x for img in imgs for x in (img, pad)][:-1], axis=1)
        ax.imshow(strip, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        texts.append(ax.text(-0.02, 0.5, (titles or {}).get(key, key), transform=ax.transAxes,
                             ha="right", va="center", fontsize=8))
    # the left margin holds the longest row title (e.g. "..., CLIP zero-shot accuracy 0.85")
    renderer = fig.canvas.get_renderer()
    title_in = max(t.get_window_extent(renderer).width for t in texts) / fig.dpi
    left_in = max(0.36 * width, title_in + 0.25)
    total = left_in + 0.64 * width
    fig.set_size_inches(total, fig.get_size_inches()[1])
    fig.subplots_adjust(left=left_in / total, right=1.0 - 0.01 * width / total, top=0.98,
                        bottom=0.02, hspace=0.15)
    return fig


def write_noise_outputs(result: dict[str, Any], records: list[dict[str, Any]],
                        out: str | Path, configs_csv: str | Path | None = None) -> None:
    """Write the noise check's result JSON to `out` and, when given, one CSV row per config to
    `configs_csv`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    if configs_csv:
        import csv

        configs_csv = Path(configs_csv)
        configs_csv.parent.mkdir(parents=True, exist_ok=True)
        cols = ["index", "config_id", "avg_bits", "frac_3bit", "fid_a", "fid_b", "accuracy_a",
                "accuracy_b", "status", "reason"]
        with configs_csv.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in records:
                w.writerow({k: r.get(k) for k in cols})


__all__ = ["ScoreParams", "NoiseParams", "measure_noise", "sample_grid", "load_bank_for",
           "write_noise_outputs"]
