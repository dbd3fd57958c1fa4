"""The evaluation stage: every strategy × every budget, scored for real on fresh seeds.

For each (strategy, budget) the strategy searches a config (`data/search/<model>/configs/
<strategy>-<budget>.json`), then the config is applied, `evaluate.images` images are generated
from seed set `evaluate.image_seed` and scored. The FP model is scored on the same seeds (the
reference line). Outputs:

    metrics/search.json            rows {budget, strategy, act, avg_bits, fid, content, seconds, ...}
    metrics/search_pareto.csv      strategy, avg_bits, fid (DVC plots)
    data/search/<model>/pareto.png FID vs avg bits, one line per strategy, FP as a reference line
    data/search/<model>/grids/budget-<b>.png   one row of samples per strategy (+ FP)

W/A rows (issue 14, `act`: `ActEvalParams`): for the strategies in `act_strategies` each found
weight config is scored again with every layer's input activations quantized at each of
`act_bits` (dynamic min-max per token / per sample-channel, as Qua2SeDiMo pairs its configs with
A6) → rows with `act` = "A8" | "A6"; for `act_mixed_strategies` also with per-layer activation bits
allocated by `search.activation.allocate_activation_bits` at a MAC-weighted average of
`act_mixed_bits` (`act` = "A7-mixed"; sensitivity measured once, FP weights). Weight-only rows
have `act` null. `act_bits` on a row is the (MAC-weighted) average activation bits.

Robust and resumable: each row is written as soon as it is scored (atomic rewrite of the JSON);
a re-run skips rows whose key (strategy, budget, evaluation and search params, and a digest of
the strategy's input files) is unchanged and whose config file is present, so rows become stale
exactly when what produced them changed. A strategy that cannot meet a budget (e.g. `uniform`
below its smallest option) gives a row with status "failed" and the reason, not a crash.

The evaluation seed set must be disjoint from every seed set used to build the cache or to select
configs (cache `image_seed` values, `search.select_seed`, analysis seeds): it refuses otherwise.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from quant.errors import QsensError
from quant.provenance import code_digest
from quant.jsonio import write_json
from search.params import EvaluateParams
from search.pareto import budget_tag

FP_STRATEGY = "fp16"


def digest_paths(paths: Iterable[str | Path | None]) -> str:
    """sha256 over the contents of files (directories: every file below, sorted); absent → marked."""
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.name).encode())
            if f.is_file():
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            else:
                h.update(b"<absent>")
    return h.hexdigest()[:16]


def strategy_inputs(strategy: str, bank_dir: Path | None, cache_path: Path | None,
                    predictor_dir: Path | None, analysis_dir: Path | None) -> list[Path | None]:
    bank_meta = None if bank_dir is None else Path(bank_dir) / "bank.json"
    extra = {"predictor": [predictor_dir], "layerwise": [analysis_dir and Path(analysis_dir) / "layerwise.parquet"],
             "mixdq": [analysis_dir and Path(analysis_dir) / "mixdq.parquet"], "uniform": [cache_path],
             "random-best": [cache_path], "error": []}.get(strategy, [])
    return [bank_meta, *extra]


def check_seeds(eval_seed: int, used: dict[str, Iterable[int]]) -> None:
    """Refuse an evaluation seed set that was used to build the cache or to select configs."""
    hits = [what for what, seeds in used.items() if int(eval_seed) in {int(s) for s in seeds}]
    if hits:
        raise QsensError(f"evaluate.image_seed {eval_seed} overlaps the seed set(s) of {', '.join(hits)}; "
                         "evaluation needs fresh seeds: choose another evaluate.image_seed")


def row_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    if not Path(path).exists():
        return []
    try:
        rows = json.loads(Path(path).read_text())
    except json.JSONDecodeError:
        return []  # a damaged file is simply redone
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def run_evaluation(ctx, real, *, strategies: Sequence[str], budgets: Sequence[float],
                   ep: EvaluateParams, out_dir: str | Path, metrics_path: str | Path,
                   pareto_csv: str | Path | None = None, used_seeds: dict[str, Iterable[int]] | None = None,
                   input_digest: Callable[[str], str] | None = None,
                   log: Callable[[str], None] = print, act: Any = None) -> list[dict]:
    """Search + score every (strategy, budget) and the FP model; see the module doc.

    act: `search.activation.ActEvalParams` for the W/A rows, or None (weight-only rows only)."""
    from search.strategies import run_strategy

    used = {"the search selection (search.select_seed)": [ctx.params.select_seed], **(used_seeds or {})}
    if act is not None and (act.act_mixed_bits is not None and act.act_mixed_strategies):
        used["the activation calibration (evaluate.act_calib_seed)"] = [act.act_calib_seed]
    check_seeds(ep.image_seed, used)
    out_dir, metrics_path = Path(out_dir), Path(metrics_path)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    # the code that searches and scores is part of every row's key: a changed strategy re-scores
    eval_part = {"images": ep.images, "image_seed": ep.image_seed, "steps": ep.steps, "model": ctx.model,
                 "code": code_digest(["qsens.commands.evaluate"])}
    search_part = asdict(ctx.params)
    old = {(r.get("strategy"), r.get("budget"), r.get("act")): r for r in read_rows(metrics_path)}
    rows: list[dict] = []
    act_sens: dict = {}  # the activation sensitivity, measured once when a mixed row needs it

    def flush() -> None:
        _atomic_json(metrics_path, rows)

    def image_file(tag: str) -> Path:
        return images_path(out_dir, tag)

    def act_rows(strategy: str, budget: float, tag: str, config, weight_key: str) -> None:
        """The W/A rows of one found weight config (see the module doc)."""
        from quant.config import QuantConfig

        settings = [(f"A{b}", int(b)) for b in act.act_bits] if strategy in act.act_strategies else []
        if act.act_mixed_bits is not None and strategy in act.act_mixed_strategies:
            settings.append((act.mixed_label(), None))
        for label, bits in settings:
            a_tag = f"{tag}-{label}"
            a_path = out_dir / "configs" / f"{a_tag}.json"
            a_key = row_key(weight_key, label, asdict(act) if bits is None else "dynamic")
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
                                   "image_seed": ep.image_seed, "key": a_key}
            if bits is not None:
                a_cfg = QuantConfig(config.model, dict(config.options), config.avg_bits, act_bits=bits)
                row["act_bits"] = float(bits)
            else:
                try:
                    alloc = mixed_allocation(config)
                except QsensError as exc:
                    row["reason"] = str(exc)
                    rows.append(row)
                    flush()
                    log(f"{a_tag}: no activation allocation ({exc})")
                    continue
                a_cfg = QuantConfig(config.model, dict(config.options), config.avg_bits, act_options=alloc.bits)
                row.update(act_bits=alloc.avg_bits, seconds=round(alloc.seconds, 3), act_ip_status=alloc.status,
                           act_objective=alloc.objective, act_predicted_sqnr_db=_num(alloc.predicted_sqnr_db),
                           act_bits_histogram={str(b): sum(v == b for v in alloc.bits.values())
                                               for b in sorted(set(alloc.bits.values()), reverse=True)})
            a_cfg.save(a_path)
            sc = real.score(a_cfg, ep.images, ep.image_seed)
            save_images(image_file(a_tag), sc["images"][:ep.grid_columns])
            row.update(fid=_num(sc["fid"]), content=_num(sc["content"]), score_seconds=round(sc["seconds"], 3),
                       status=sc["status"], reason=sc["reason"], config_id=a_cfg.config_id)
            rows.append(row)
            flush()
            fid = "failed" if row["fid"] is None else f"{row['fid']:.3f}"
            log(f"{a_tag}: W {row['avg_bits']:.4f} bits, A {row['act_bits']:.3f} bits  FID {fid}")

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
    key = row_key(FP_STRATEGY, eval_part, input_digest(FP_STRATEGY) if input_digest else "")
    prev = old.get((FP_STRATEGY, None, None))
    if prev and prev.get("key") == key and image_file(FP_STRATEGY).exists():
        rows.append(prev)
        log("fp16: done before, skipped")
    else:
        sc = real.score(None, ep.images, ep.image_seed)
        save_images(image_file(FP_STRATEGY), sc["images"][:ep.grid_columns])
        rows.append({"budget": None, "strategy": FP_STRATEGY, "act": None, "avg_bits": 16.0, "fid": _num(sc["fid"]),
                     "content": _num(sc["content"]), "seconds": 0.0, "score_seconds": round(sc["seconds"], 3),
                     "status": sc["status"], "reason": sc["reason"], "config_id": None,
                     "images": ep.images, "image_seed": ep.image_seed, "key": key})
        log(f"fp16: FID {sc['fid']:.3f}  content {sc['content']:.3f}")
    flush()

    for strategy in strategies:
        digest = input_digest(strategy) if input_digest else ""
        for budget in budgets:
            tag = f"{strategy}-{budget_tag(budget)}"
            cfg_path = out_dir / "configs" / f"{tag}.json"
            key = row_key(strategy, float(budget), eval_part, search_part, digest)
            prev = old.get((strategy, float(budget), None))
            if prev and prev.get("key") == key and (
                    (cfg_path.exists() and image_file(tag).exists()) or prev.get("status") != "ok"):
                rows.append(prev)
                flush()
                log(f"{tag}: done before, skipped")
                if act is not None and cfg_path.exists() and prev.get("avg_bits") is not None:
                    from quant.config import QuantConfig

                    act_rows(strategy, float(budget), tag, QuantConfig.load(cfg_path), key)
                continue
            row: dict[str, Any] = {"budget": float(budget), "strategy": strategy, "act": None, "avg_bits": None, "fid": None,
                                   "content": None, "seconds": None, "score_seconds": None, "status": "failed",
                                   "reason": "", "config_id": None, "images": ep.images,
                                   "image_seed": ep.image_seed, "key": key}
            try:
                result = run_strategy(ctx, strategy, float(budget))
            except QsensError as exc:
                row["reason"] = str(exc)
                rows.append(row)
                flush()
                log(f"{tag}: no config ({exc})")
                continue
            result.config.save(cfg_path)
            _atomic_json(out_dir / "configs" / f"{tag}.report.json", result.to_report())
            sc = real.score(result.config, ep.images, ep.image_seed)
            save_images(image_file(tag), sc["images"][:ep.grid_columns])
            row.update(avg_bits=result.config.avg_bits, fid=_num(sc["fid"]), content=_num(sc["content"]),
                       seconds=round(result.seconds, 3), score_seconds=round(sc["seconds"], 3),
                       status=sc["status"], reason=sc["reason"], config_id=result.config.config_id)
            rows.append(row)
            flush()
            fid = "failed" if row["fid"] is None else f"{row['fid']:.3f}"
            log(f"{tag}: {row['avg_bits']:.4f} bits  FID {fid}  (search {row['seconds']:.1f} s)")
            if act is not None:
                act_rows(strategy, float(budget), tag, result.config, key)

    if pareto_csv is not None:
        write_pareto_csv(rows, pareto_csv)
    plot_pareto(rows, out_dir / "pareto.png")
    write_grids(rows, out_dir, budgets, strategies)
    return rows


def series_label(row: dict) -> str:
    """`strategy` for weight-only rows, `strategy A8` (etc.) for W/A rows: one plot series each."""
    return row["strategy"] if not row.get("act") else f"{row['strategy']} {row['act']}"


def write_pareto_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "avg_bits", "fid"])
        for r in sorted(rows, key=lambda r: (series_label(r), r["avg_bits"] or 0)):
            if r.get("fid") is not None and r.get("avg_bits") is not None and r["strategy"] != FP_STRATEGY:
                w.writerow([series_label(r), f"{r['avg_bits']:.6f}", f"{r['fid']:.6f}"])
    return path


def plot_pareto(rows: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = list(dict.fromkeys(series_label(r) for r in rows if r["strategy"] != FP_STRATEGY))
    markers = "osD^vP*X<>"
    for i, s in enumerate(series):
        pts = sorted((r["avg_bits"], r["fid"]) for r in rows
                     if series_label(r) == s and r.get("fid") is not None and r.get("avg_bits") is not None)
        if pts:
            ax.plot(*zip(*pts), marker=markers[i % len(markers)], label=s, ls="--" if " A" in s else "-")
    fp = [r for r in rows if r["strategy"] == FP_STRATEGY and r.get("fid") is not None]
    if fp:
        ax.axhline(fp[0]["fid"], color="k", ls="--", lw=1, label=f"FP ({fp[0]['fid']:.2f})")
    ax.set_xlabel("average bits per weight (overhead included); W/A rows at their weights' bits")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title("found configs, scored on fresh seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def images_path(out_dir: Path, tag: str) -> Path:
    return out_dir / "images" / f"{tag}.safetensors"


def save_images(path: Path, images: np.ndarray) -> None:
    """A few sample images (uint8 N,H,W,C) kept for the grids: safetensors, like every array we write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": np.ascontiguousarray(images)}, str(path))


def load_images(path: Path) -> np.ndarray:
    return load_file(str(path))["images"]


def write_grids(rows: list[dict], out_dir: Path, budgets: Sequence[float], strategies: Sequence[str]) -> list[Path]:
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
