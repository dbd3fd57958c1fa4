"""The evaluation stage: every strategy × every budget, scored for real on several fresh seed sets.

For each strategy the budgets are solved in increasing order, each started from the lower
budget's config (a monotone family, `search.strategies.family`); configs found by the search
stage (`given`: the predictor's family after active learning) are scored instead of searched.
Each config is applied, `evaluate.images` images are generated from each seed set in
`evaluate.image_seeds` and scored; the FP model is scored on the same seeds. Outputs:

    metrics/NAME/search.json       rows {budget, strategy, act, avg_bits, fids: [one per seed set],
                                   fid (their mean), fid_se, content, real_scores, paired, ...}
    metrics/NAME/search_pareto.csv strategy, avg_bits, fid, fid_se (DVC plots)
    data/search/<model>/pareto.png FID vs avg bits with standard-error bars, FP as a reference band
    data/search/<model>/grids/budget-<b>.png   one row of samples per strategy (+ FP)

`paired` (predictor rows): the per-seed difference to the best other strategy at that budget,
its mean and standard error — the same seeds on both sides cancel the noise they share, so a
difference far smaller than one seed set's σ can be resolved. `real_scores`: the real
measurements behind the config (selection scores made while searching, cache rows the
strategy learned from or picked among, analysis rows), so strategies are compared at their cost.

W/A rows (issue 14, `act`: `ActEvalParams`): for the strategies in `act_strategies` each found
weight config is scored again with every layer's input activations quantized at each of
`act_bits` (dynamic min-max per token / per sample-channel, as Qua2SeDiMo pairs its configs with
A6) → rows with `act` = "A8" | "A6"; for `act_mixed_strategies` also with per-layer activation bits
allocated by `search.activation.allocate_activation_bits` at a MAC-weighted average of
`act_mixed_bits` (`act` = "A7-mixed"; sensitivity measured once, FP weights). Weight-only rows
have `act` null. `act_bits` on a row is the (MAC-weighted) average activation bits.

Robust and resumable: each row is written as soon as it is scored (atomic rewrite of the JSON).
Every (config id, activation setting, seed set) score is kept in the rows (`per_seed`) and reused
while the model, bank, evaluation settings and scoring code are unchanged (`score_key`); a
config is searched again unless its row's key (strategy, the family's budgets up to it, search
params, a digest of the strategy's input files, seeds) is unchanged. A strategy that cannot meet a
budget (e.g. `uniform` below its smallest option) gives a row with status "failed" and the
reason, not a crash.

The evaluation seed sets must be disjoint from every seed set used to build the cache, train or
select configs (cache `image_seed` values, `search.select_seed`, probe, calibration and analysis
seeds): it refuses otherwise.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from core.errors import QsensError
from core.provenance import code_digest, job_key
from core.jsonio import write_json
from search.params import EvaluateParams
from search.pareto import budget_tag

FP_STRATEGY = "fp16"
# paired scores kept per seed beside FID (sampling.paired), so a cheap label can be checked
# against the ground truth on exactly the evaluated configs
PAIRED_COLUMNS = ("fd_fp", "feat_dist", "image_mse", "dssim", "content_drop")


def check_seeds(eval_seed: int, used: dict[str, Iterable[int]]) -> None:
    """Refuse an evaluation seed set that was used to build the cache or to select configs."""
    hits = [what for what, seeds in used.items() if int(eval_seed) in {int(s) for s in seeds}]
    if hits:
        raise QsensError(f"evaluate.image_seeds: seed set {eval_seed} overlaps the seed set(s) of {', '.join(hits)}; "
                         "evaluation needs fresh seeds: choose others in evaluate.image_seeds")


def row_key(*parts: Any) -> str:
    """A 16-hex-digit key of the given parts (`core.provenance.job_key`): identifies one evaluation row."""
    return job_key(row=list(parts))


def _atomic_json(path: Path, data: Any) -> None:
    write_json(path, data, default=_clean)


def _clean(o: Any) -> Any:
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.integer):
        return int(o)
    raise TypeError(type(o).__name__)


def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def read_rows(path: Path) -> list[dict]:
    """The reusable rows of a previous `run_evaluation` results file (a list of row objects).

    A file that is not valid JSON or not a list, and every row that could not have been written
    (`_row_problem`: a negative or non-finite FID, a wrong-typed field, a per-seed score that is
    not an object...), are dropped with one `warning:` line on stderr and scored again: a damaged
    row is redone, never reported as it is."""
    import sys

    path = Path(path)
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        print(f"warning: {path}: not valid JSON ({str(exc).splitlines()[0][:80]}); every row is scored again",
              file=sys.stderr)
        return []
    if not isinstance(rows, list):
        print(f"warning: {path}: a {type(rows).__name__}, not a list of rows; every row is scored again",
              file=sys.stderr)
        return []
    good, bad = [], []
    for i, r in enumerate(rows):
        why = _row_problem(r)
        if why is None:
            good.append(r)
        else:
            bad.append(f"row {i}: {why}")
    if bad:
        print(f"warning: {path}: {len(bad)} damaged row(s) dropped and scored again ({bad[0]}"
              f"{' ...' if len(bad) > 1 else ''})", file=sys.stderr)
    return good


def _row_problem(row: Any) -> str | None:
    """Why a results row read back cannot be reused, or None (`core.jsonio.row_problem`, and the
    same for each per-seed score and each of `fids`)."""
    from core.jsonio import row_problem

    why = row_problem(row, nonneg=("fid", "fid_se", "avg_bits", "seconds", "score_seconds"),
                      finite=("content", "budget"), text=("strategy", "status"))
    if why is not None:
        return why
    for key in ("fids", "per_seed"):
        if not isinstance(row.get(key, []), list):
            return f"{key} is not a list"
    for f in row.get("fids") or []:
        if row_problem({"fid": f}, nonneg=("fid",)):
            return f"fids holds {f!r}, not a finite number >= 0"
    for s in row.get("per_seed") or []:
        why = row_problem(s, required=("seed", "fid", "status"), nonneg=("fid", "seconds"),
                          finite=("content", *PAIRED_COLUMNS), text=("status",))
        if why is None and not (isinstance(s["seed"], int) and not isinstance(s["seed"], bool)):
            why = f"seed {s['seed']!r} is not an integer"
        if why is not None:
            return f"per-seed score: {why}"
    return None


def run_evaluation(ctx, real, *, strategies: Sequence[str], budgets: Sequence[float],
                   ep: EvaluateParams, out_dir: str | Path, metrics_path: str | Path,
                   pareto_csv: str | Path | None = None, used_seeds: dict[str, Iterable[int]] | None = None,
                   input_digest: Callable[[str], str] | None = None,
                   log: Callable[[str], None] = print, act: Any = None,
                   given: dict[str, dict[float, Any]] | None = None) -> list[dict]:
    """Search + score every (strategy, budget) and the FP model on every evaluation seed set;
    see the module doc.

    Budgets are solved in increasing order per strategy, each from the lower budget's config
    (`search.strategies.family`). given: {strategy: {budget: SearchResult}} configs found
    elsewhere (the search stage's predictor family) that are scored instead of searched.
    act: `search.activation.ActEvalParams` for the W/A rows, or None (weight-only rows only)."""
    from quant.config import QuantConfig
    from search.strategies import run_strategy

    used = {"the search selection (search.select_seed)": [ctx.params.select_seed], **(used_seeds or {})}
    if "fisher" in strategies:
        used["the fisher calibration (search.fisher_calib_seed)"] = [ctx.params.fisher_calib_seed]
    if act is not None and (act.act_mixed_bits is not None and act.act_mixed_strategies):
        used["the activation calibration (evaluate.act_calib_seed)"] = [act.act_calib_seed]
    for seed in ep.image_seeds:
        check_seeds(seed, used)
    seeds = [int(s) for s in ep.image_seeds]
    budgets = sorted(float(b) for b in budgets)
    out_dir, metrics_path = Path(out_dir), Path(metrics_path)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    # the code that searches and scores is part of every row's key: a changed strategy re-scores
    eval_part = {"images": ep.images, "steps": ep.steps, "model": ctx.model,
                 "code": code_digest(["qsens.commands.evaluate"])}
    from core.provenance import bank_digest

    # a (config id, seed) score is reused only for the same model weights, bank and scoring code
    # (the evaluator's identity: model weights, generation settings, reference statistics, code)
    score_key = row_key(eval_part, bank_digest(ctx.bank), input_digest(FP_STRATEGY) if input_digest else "",
                        real.identity() if hasattr(real, "identity") else "")
    search_part = asdict(ctx.params)
    old_rows = read_rows(metrics_path)
    old = {(r.get("strategy"), r.get("budget"), r.get("act")): r for r in old_rows}
    # every (config, activation setting, seed) scored before under the same evaluation settings
    memo: dict[tuple, dict] = {}
    for r in old_rows:
        if r.get("score_key") == score_key:
            for s in r.get("per_seed") or []:
                memo[(r.get("config_id") or r["strategy"], r.get("act_key"), s["seed"])] = s
    rows: list[dict] = []
    act_sens: dict = {}  # the activation sensitivity, measured once when a mixed row needs it

    def flush() -> None:
        _atomic_json(metrics_path, rows)

    def record_failure(row: dict, exc: Exception, what: str) -> None:
        """A row that could not be scored stays a row (status failed, the reason), never a crash."""
        row["reason"] = str(exc)
        rows.append(row)
        flush()
        log(f"{what} ({exc})")

    def score_all(config, ident: str, act_key: str | None, tag: str) -> dict[str, Any]:
        """Score on every seed set (memoised); the first seed's images are kept for the grid."""
        per_seed, spent = [], 0.0
        for i, seed in enumerate(seeds):
            hit = memo.get((ident, act_key, seed))
            if hit is None or (i == 0 and not image_file(tag).exists()):
                sc = real.score(config, ep.images, seed, keep_images=True,
                                **({"paired": True} if config is not None and ep.paired else {}))
                if i == 0:
                    save_images(image_file(tag), sc["images"][:ep.grid_columns])
                hit = {"seed": seed, "fid": _num(sc["fid"]), "content": _num(sc["content"]),
                       "status": sc["status"], "reason": sc["reason"], "seconds": round(sc["seconds"], 3),
                       **{m: _num(sc[m]) for m in PAIRED_COLUMNS if sc.get(m) is not None}}
                memo[(ident, act_key, seed)] = hit
                spent += sc["seconds"]
            per_seed.append(hit)
        fids = [s["fid"] for s in per_seed]
        ok = all(s["status"] == "ok" and s["fid"] is not None for s in per_seed)
        bad = next((s for s in per_seed if not (s["status"] == "ok" and s["fid"] is not None)), None)
        return {"fids": fids, "fid": _mean(fids) if ok else None, "fid_se": _se(fids) if ok else None,
                "content": _mean([s["content"] for s in per_seed]) if ok else None,
                "status": "ok" if ok else (bad["status"] if bad["status"] != "ok" else "failed"),
                "reason": "" if ok else f"seed set {bad['seed']}: {bad['reason'] or 'non-finite FID'}",
                "per_seed": per_seed, "image_seeds": seeds, "score_seconds": round(spent, 3),
                "score_key": score_key, "act_key": act_key}

    def image_file(tag: str) -> Path:
        return images_path(out_dir, tag)

    def act_rows(strategy: str, budget: float, tag: str, config, weight_key: str) -> None:
        """The W/A rows of one found weight config (see the module doc)."""
        settings = [(f"A{b}", int(b)) for b in act.act_bits] if strategy in act.act_strategies else []
        if act.act_mixed_bits is not None and strategy in act.act_mixed_strategies:
            settings.append((act.mixed_label(), None))
        for label, bits in settings:
            a_tag = f"{tag}-{label}"
            a_path = out_dir / "configs" / f"{a_tag}.json"
            a_key = row_key(weight_key, label, asdict(act) if bits is None else "dynamic", seeds)
            prev = old.get((strategy, budget, label))
            if prev and prev.get("key") == a_key and (
                    (a_path.exists() and image_file(a_tag).exists()) or prev.get("status") != "ok"):
                rows.append(prev)
                flush()
                log(f"{a_tag}: done before, skipped")
                continue
            row: dict[str, Any] = {"budget": budget, "strategy": strategy, "act": label, "act_bits": None,
                                   "act_mode": "dynamic", "avg_bits": config.avg_bits, "fid": None,
                                   "content": None, "seconds": 0.0, "score_seconds": None, "status": "failed",
                                   "reason": "", "config_id": None, "images": ep.images,
                                   "image_seeds": seeds, "key": a_key}
            if bits is not None:
                a_cfg = QuantConfig(config.model, dict(config.options), config.avg_bits, act_bits=bits)
                row["act_bits"] = float(bits)
            else:
                try:
                    alloc = mixed_allocation(config)
                except QsensError as exc:
                    record_failure(row, exc, f"{a_tag}: no activation allocation")
                    continue
                a_cfg = QuantConfig(config.model, dict(config.options), config.avg_bits, act_options=alloc.bits)
                row.update(act_bits=alloc.avg_bits, seconds=round(alloc.seconds, 3), act_ip_status=alloc.status,
                           act_objective=alloc.objective, act_predicted_sqnr_db=_num(alloc.predicted_sqnr_db),
                           act_bits_histogram={str(b): sum(v == b for v in alloc.bits.values())
                                               for b in sorted(set(alloc.bits.values()), reverse=True)})
            a_cfg.save(a_path)
            row.update(score_all(a_cfg, config.config_id, row_key(label, a_cfg.act_options, a_cfg.act_bits), a_tag),
                       config_id=a_cfg.config_id)
            rows.append(row)
            flush()
            log(f"{a_tag}: W {row['avg_bits']:.4f} bits, A {row['act_bits']:.3f} bits  FID {_fmt(row)}")

    def mixed_allocation(config):
        """Activation bits for `config` at `act.act_mixed_bits` (sensitivity measured once)."""
        from search.activation import allocate_activation_bits, mac_sizes, measure_activation_sensitivity

        if not act_sens:
            layers = list(ctx.bank.layer_names)
            act_sens.update(measure_activation_sensitivity(
                real.denoiser, layers, act.act_choices, samples=act.act_calib_samples,
                trajectories=act.act_calib_trajectories, seed=act.act_calib_seed,
                timesteps=act.act_calib_timesteps, steps=ep.steps))
            _atomic_json(out_dir / "configs" / "act_sensitivity.json", {
                **act_sens, "sqnr": {l: {str(b): _num(v) for b, v in d.items()} for l, d in act_sens["sqnr"].items()},
                "choices": list(act.act_choices), "weights": "fp"})
            log(f"activation sensitivity: {len(layers)} layers x {len(act.act_choices)} bit-widths "
                f"in {act_sens['seconds']:.1f} s")
        return allocate_activation_bits(act_sens["sqnr"], mac_sizes(ctx.bank, real.denoiser), act.act_mixed_bits,
                                        act.act_choices, objective=act.act_objective,
                                        time_limit_s=ctx.params.time_limit_s)

    # the FP reference
    fp = {"budget": None, "strategy": FP_STRATEGY, "act": None, "avg_bits": 16.0, "seconds": 0.0,
          "config_id": None, "images": ep.images,
          "key": row_key(FP_STRATEGY, eval_part, seeds, input_digest(FP_STRATEGY) if input_digest else "")}
    fp.update(score_all(None, FP_STRATEGY, None, FP_STRATEGY))
    rows.append(fp)
    log(f"fp16: FID {_fmt(fp)}  content {fp['content'] if fp['content'] is None else round(fp['content'], 3)}")
    flush()

    for strategy in strategies:
        digest = input_digest(strategy) if input_digest else ""
        incumbent = None
        done: list[float] = []
        for budget in budgets:
            tag = f"{strategy}-{budget_tag(budget)}"
            cfg_path = out_dir / "configs" / f"{tag}.json"
            # a family's config at a budget depends on every lower budget's (its starts)
            key = row_key(strategy, budget, done, eval_part, search_part, digest, seeds)
            done.append(budget)
            row: dict[str, Any] = {"budget": budget, "strategy": strategy, "act": None, "avg_bits": None,
                                   "fid": None, "fids": [], "fid_se": None, "content": None, "seconds": None,
                                   "score_seconds": None, "status": "failed", "reason": "", "config_id": None,
                                   "images": ep.images, "image_seeds": seeds, "real_scores": {}, "key": key}
            prev = old.get((strategy, budget, None))
            if prev and prev.get("key") == key and prev.get("status") == "ok" and cfg_path.exists():
                config = QuantConfig.load(cfg_path)
                row.update({k: prev.get(k) for k in ("seconds", "real_scores", "chosen_by")})
                log(f"{tag}: searched before, config reused")
            else:
                try:
                    found = given_result(given[strategy], strategy, budget) if given and strategy in given \
                        else run_strategy(ctx, strategy, budget, incumbent)
                except QsensError as exc:
                    record_failure(row, exc, f"{tag}: no config")
                    continue
                config = found.config
                config.save(cfg_path)
                _atomic_json(out_dir / "configs" / f"{tag}.report.json", found.to_report())
                row.update(seconds=round(found.seconds, 3), real_scores=found.report.get("real_scores", {}),
                           chosen_by=found.report.get("chosen_by"))
            incumbent = config
            row.update(score_all(config, config.config_id, None, tag), avg_bits=config.avg_bits,
                       config_id=config.config_id)
            rows.append(row)
            flush()
            log(f"{tag}: {row['avg_bits']:.4f} bits  FID {_fmt(row)}  (search {row['seconds'] or 0:.1f} s)")
            if act is not None and row["status"] == "ok":
                act_rows(strategy, budget, tag, config, key)

    add_paired_differences(rows)
    flush()
    if pareto_csv is not None:
        write_pareto_csv(rows, pareto_csv)
    plot_pareto(rows, out_dir / "pareto.png")
    write_grids(rows, out_dir, budgets, strategies)
    return rows


def given_result(family: dict[float, Any], strategy: str, budget: float) -> Any:
    """The given family's result at `budget` (QsensError when the family has none)."""
    if budget not in family:
        raise QsensError(f"no {strategy} config for budget {budget:g} in the given family "
                         f"(it has {', '.join(f'{b:g}' for b in sorted(family)) or 'none'})")
    return family[budget]


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _se(values: Sequence[float | None]) -> float | None:
    """Standard error of the mean over seed sets (sample std / √n); None for fewer than 2."""
    v = [x for x in values if x is not None]
    return float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) >= 2 else None


def _fmt(row: dict) -> str:
    if row.get("fid") is None:
        return "failed"
    se = f" ± {row['fid_se']:.3f}" if row.get("fid_se") is not None else ""
    return f"{row['fid']:.3f}{se}"


def add_paired_differences(rows: list[dict], strategy: str = "predictor") -> None:
    """On each weight-only `strategy` row: `paired` = its FID minus the best other strategy's at
    the same budget (lowest mean FID among the other weight-only rows that scored ok), per seed
    set, with mean, standard error (std of the differences / √n) and z = mean / se. The same
    seeds on both sides cancel the seed-to-seed noise both share."""
    for r in rows:
        if r["strategy"] != strategy or r.get("act") or r.get("status") != "ok":
            continue
        others = [o for o in rows if o["strategy"] not in (strategy, FP_STRATEGY) and not o.get("act")
                  and o.get("budget") == r["budget"] and o.get("status") == "ok" and o.get("fid") is not None]
        if not others:
            continue
        best = min(others, key=lambda o: (o["fid"], o["strategy"]))
        diffs = [a - b for a, b in zip(r["fids"], best["fids"])]
        mean, se = float(np.mean(diffs)), _se(diffs)
        r["paired"] = {"vs": best["strategy"], "diffs": diffs, "diff": mean, "se": se,
                       "z": (mean / se) if se else None, "same_config": best.get("config_id") == r.get("config_id")}


def series_label(row: dict) -> str:
    """`strategy` for weight-only rows, `strategy A8` (etc.) for W/A rows: one plot series each."""
    return row["strategy"] if not row.get("act") else f"{row['strategy']} {row['act']}"


def write_pareto_csv(rows: list[dict], path: str | Path) -> Path:
    """Write the evaluated rows as the Pareto CSV (strategy, budget, avg_bits, fid, fid_se); returns
    `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "budget", "avg_bits", "fid", "fid_se"])
        for r in sorted(rows, key=lambda r: (series_label(r), r["avg_bits"] or 0)):
            if r.get("fid") is not None and r.get("avg_bits") is not None and r["strategy"] != FP_STRATEGY:
                se = "" if r.get("fid_se") is None else f"{r['fid_se']:.6f}"
                w.writerow([series_label(r), f"{r['budget']:g}", f"{r['avg_bits']:.6f}", f"{r['fid']:.6f}", se])
    return path


def plot_pareto(rows: list[dict], path: str | Path) -> Path:
    """Plot FID vs avg bits per strategy (`pareto_figure`) to a PNG at `path`; returns `path`."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = pareto_figure(rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plain_log_ticks(axis) -> None:
    """Plain numbers ("76.95", "80") on a log-scale axis instead of matplotlib's "7.695×10¹":
    a ScalarFormatter without offset or scientific notation for the major ticks, and for the
    minor ticks one that labels just those matplotlib's log formatter would label (all of them
    in a narrow range, none across several decades, so they never crowd)."""
    from matplotlib.ticker import ScalarFormatter

    class _Plain(ScalarFormatter):
        def __init__(self, shown=None):
            super().__init__(useOffset=False)
            self.set_scientific(False)
            self._shown = shown

        def set_axis(self, ax_):
            super().set_axis(ax_)
            if self._shown is not None:
                self._shown.set_axis(ax_)

        def set_locs(self, locs):
            super().set_locs(locs)
            if self._shown is not None:
                self._shown.set_locs(locs)

        def __call__(self, x, pos=None):
            if self._shown is not None and not self._shown(x, pos):
                return ""
            return super().__call__(x, pos)

    axis.set_major_formatter(_Plain())
    axis.set_minor_formatter(_Plain(axis.get_minor_formatter()))


def pareto_figure(rows: list[dict]):
    """The Pareto plot's Figure (FID, log scale, over average bits); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    # weight-only series only: W/A rows sit at their weights' bits and would hide them
    series = list(dict.fromkeys(series_label(r) for r in rows if r["strategy"] != FP_STRATEGY and not r.get("act")))
    markers = "osD^vP*X<>"
    n_seeds = max((len(r.get("fids") or []) for r in rows), default=1)
    for i, s in enumerate(series):
        pts = sorted((r["avg_bits"], r["fid"], r.get("fid_se") or 0.0) for r in rows
                     if series_label(r) == s and r.get("fid") is not None and r.get("avg_bits") is not None)
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker=markers[i % len(markers)], label=s, capsize=3, lw=1.4 if s == "predictor" else 1)
    fp = [r for r in rows if r["strategy"] == FP_STRATEGY and r.get("fid") is not None]
    if fp:
        f, se = fp[0]["fid"], fp[0].get("fid_se") or 0.0
        ax.axhline(f, color="k", ls="--", lw=1, label=f"FP ({f:.2f})")
        if se:
            ax.axhspan(f - se, f + se, color="k", alpha=0.08)
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    ax.set_xlabel("average bits per weight (overhead included)")
    ax.set_ylabel("FID (log scale, lower is better)")
    ax.set_title(f"found configs on {n_seeds} fresh seed sets: mean ± standard error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def images_path(out_dir: Path, tag: str) -> Path:
    """Where the images of an evaluated config tagged `tag` are stored: `OUT/images/TAG.safetensors`."""
    return out_dir / "images" / f"{tag}.safetensors"


def save_images(path: Path, images: np.ndarray) -> None:
    """A few sample images (uint8 N,H,W,C) kept for the grids: safetensors, like every array we write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": np.ascontiguousarray(images)}, str(path))


def load_images(path: Path) -> np.ndarray:
    """The uint8 images `(N, H, W, C)` stored at `path`."""
    return load_file(str(path))["images"]


def write_grids(rows: list[dict], out_dir: Path, budgets: Sequence[float], strategies: Sequence[str]) -> list[Path]:
    """One sample-grid PNG per budget (FP plus each strategy's images, titled with bits and FID);
    returns their paths."""
    from sampling.noise import sample_grid

    out = []
    fp_file = images_path(out_dir, FP_STRATEGY)
    fp_row = next((r for r in rows if r["strategy"] == FP_STRATEGY), None)
    for budget in budgets:
        imgs, titles = {}, {}
        if fp_file.exists() and fp_row:
            imgs["fp16"] = load_images(fp_file)
            titles["fp16"] = f"FP  FID {fp_row['fid']:.2f}" if fp_row.get("fid") is not None else "FP"
        for s in strategies:
            for r in [r for r in rows if r["strategy"] == s and r["budget"] == float(budget)]:
                label = series_label(r)
                f = images_path(out_dir, f"{s}-{budget_tag(budget)}" + (f"-{r['act']}" if r.get("act") else ""))
                if f.exists() and r.get("avg_bits") is not None and label not in imgs:
                    imgs[label] = load_images(f)
                    fid = "failed" if r.get("fid") is None else f"{r['fid']:.2f}"
                    a = f" A{r['act_bits']:.2f}" if r.get("act") and r.get("act_bits") is not None else ""
                    titles[label] = f"{label} {r['avg_bits']:.3f}b{a} FID {fid}"
        if len(imgs) > (1 if "fp16" in imgs else 0):
            out.append(sample_grid(imgs, out_dir / "grids" / f"budget-{budget_tag(budget)}.png", titles=titles))
    return out
