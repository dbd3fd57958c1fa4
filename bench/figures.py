"""README figures that the pipeline computes but does not store, recomputed from its outputs.

Reads only what `dvc repro` leaves (data/, metrics/) and writes bench/results/figures.json, which
README quotes. No training and no image generation: a few seconds.

    python bench/figures.py [--model digits] [--data-dir data] [--metrics-dir metrics]   (reads metrics/<model>/)

Sections:
- `cache`: the quant_cache's configs, failures, FID and avg-bits ranges, per-config seconds and
  each worker's summed scoring seconds (the `sample` stage's work);
- `model`: the trained denoiser's parameters, quantizable layers and the classifier's held-out set;
- `probe`: the probe's zero-training estimate ‖offset + Σ_l shift[l, o_l]‖² (predictor.probe)
  ranked against the cache's FID, Spearman over every config and over the test split of
  params.yaml `train:` (the latter equals metrics/digits/predictor.json's `probe` baseline);
- `stage_seconds`: every pipeline stage's seconds as far as the stage stores them (DVC records no
  durations); null where a stage stores none, with the reason;
- `inspection`: the reference findings of `qsens predictor inspect` (plots/inspect.json) and its
  10 most sensitive layers (metrics/digits/predictor_layers.csv: rank, mean ΔFID at the lowest bits);
- `layerwise_noise`: the layerwise table's noise floor and how many pairs rise above it;
- `search`: per budget, the `predictor` strategy's search report: seconds, rounds, the first IP's
  predicted FID, the lowest predicted FID on the path, and the selection-seed FIDs of the start,
  the chosen config and the other scored points.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scipy.stats import spearmanr  # noqa: E402

from machine import write_result  # noqa: E402  (bench/machine.py)


def _json(path: Path) -> Any:
    from core.jsonio import read_json

    return read_json(path)


def cache_figures(cache_path: Path) -> dict[str, Any]:
    """Counts, ranges and timings of the quant_cache (sampling.cache.read_cache validates it)."""
    from sampling.cache import read_cache

    df = read_cache(cache_path)
    ok = df[df["status"] == "ok"]
    per_worker = ok.groupby("worker")["seconds"].sum()
    return {"configs": int(len(df)), "ok": int(len(ok)), "failed": int(len(df) - len(ok)),
            "workers": int(df["worker"].nunique()), "images_per_config": sorted(set(ok["n_images"].tolist())),
            "fid_min": float(ok["fid"].min()), "fid_max": float(ok["fid"].max()),
            "avg_bits_min": float(ok["avg_bits"].min()), "avg_bits_max": float(ok["avg_bits"].max()),
            "seconds_per_config_median": float(ok["seconds"].median()),
            "seconds_per_config_min": float(ok["seconds"].min()),
            "seconds_per_config_max": float(ok["seconds"].max()),
            "worker_scoring_seconds": {str(k): float(v) for k, v in per_worker.items()},
            "worker_scoring_minutes_max": float(per_worker.max() / 60.0)}


def probe_figures(probe_path: Path, cache_path: Path, params_path: Path) -> dict[str, Any]:
    """Spearman of the probe's linearised mean term against measured FID (no training)."""
    from predictor.dataset import split_ids
    from predictor.probe import Probe
    from predictor.train import load_train_params
    from sampling.cache import read_cache

    probe = Probe.load(probe_path)
    df = read_cache(cache_path, ok_only=True)
    configs = [json.loads(o) for o in df["options"]]
    term = probe.linearised_mean_term(configs)
    fid = df["fid"].to_numpy()
    tp = load_train_params(str(params_path))
    test, _ = split_ids(df["config_id"].tolist(), tp.test_fraction, tp.folds, tp.seed)
    return {"layers": len(probe.layers), "options": len(probe.options), "images": probe.images,
            "seed": probe.seed, "configs": int(len(df)), "test_configs": int(len(test)),
            "spearman_all_configs": float(spearmanr(term, fid)[0]),
            "spearman_test_split": float(spearmanr(term[test], fid[test])[0])}


def model_figures(data: Path, model: str) -> dict[str, Any]:
    """Parameters of the trained denoiser, its quantizable layers (the bank) and the classifier split."""
    meta = _json(data / "models" / model / "qsens_digits.json")
    train = meta.get("info", {}).get("train", {})
    bank = _json(data / "bank" / model / "bank.json")
    out = {"parameters": train.get("parameters"), "parameters_millions": None,
           "quantizable_layers": len(bank["layers"]), "bank_options": len(bank["options"])}
    if out["parameters"]:
        out["parameters_millions"] = out["parameters"] / 1e6
    if "n_train" in train:
        from sklearn.datasets import load_digits

        out["classifier_train_digits"] = train["n_train"]
        out["classifier_test_digits"] = len(load_digits().target) - train["n_train"]
        out["digits_total"] = len(load_digits().target)
    return out


def stage_seconds(data: Path, metrics: Path, model: str, cache: dict[str, Any] | None) -> dict[str, Any]:
    """Seconds per stage from the fields the stages store; null (with `why`) where none is stored."""
    out: dict[str, Any] = {}
    missing = "the stage stores no duration (DVC records none either)"
    for stage in ("prepare", "bank", "graph", "probe"):
        out[stage] = {"seconds": None, "why": missing}
    if cache is not None:
        out["sample"] = {"seconds": max(cache["worker_scoring_seconds"].values()),
                         "how": "largest per-worker sum of the cache's per-config `seconds` (scoring only; "
                                "model loading and start-up not included)"}
    noise = metrics / "noise.json"
    if noise.is_file():
        n = _json(noise)
        out["noise"] = {"seconds": n.get("seconds"), "seconds_per_config_median": n.get("seconds_per_config_median"),
                        "how": "metrics/digits/noise.json" + ("" if n.get("seconds") is not None
                                                       else ": per-config median only, no stage total")}
    ana = data / "analysis" / model
    if ana.is_dir():
        parts = {p.stem: _json(p).get("wall_seconds_this_run") for p in sorted(ana.glob("*.json"))}
        out["analyze"] = {"seconds": sum(v for v in parts.values() if v is not None), "parts": parts,
                          "how": "wall_seconds_this_run of each analysis (the last run only: a resumed "
                                 "analysis counts only what that run measured)"}
    pred = metrics / "predictor.json"
    if pred.is_file():
        out["train"] = {"seconds": _json(pred)["info"].get("train_seconds"), "how": "metrics/digits/predictor.json info"}
    reports = sorted((data / "search" / model / "family" / "predictor").glob("predictor-*.report.json"))
    active = metrics / "active.json"
    rounds = json.loads(active.read_text()) if active.is_file() else []
    active_s = sum(sum((r.get("seconds") or {}).values()) for r in rounds)
    if reports or rounds:
        out["search"] = {"seconds": sum(_json(r)["seconds"] for r in reports) + active_s,
                         "active_seconds": active_s, "active_rounds": len(rounds),
                         "how": "metrics/digits/active.json rounds' train + search + score seconds, plus the final "
                                "family's report seconds (selection scoring included)"}
    search = metrics / "search.json"
    if search.is_file():
        rows = json.loads(search.read_text())  # a list of rows, one per strategy × budget
        out["evaluate"] = {"seconds": sum(r.get("score_seconds") or 0.0 for r in rows), "rows": len(rows),
                           "how": "sum of metrics/digits/search.json score_seconds (strategy time is stored apart "
                                  "as `seconds`; scores reused from an earlier run count 0)",
                           "strategy_seconds": sum(r.get("seconds") or 0.0 for r in rows)}
    return out


def layerwise_noise(data: Path, model: str) -> dict[str, Any] | None:
    """How much of the layerwise (seed 000) table rises above its own noise floor: the robust
    spread (1.4826 · MAD) of the one-layer ΔFIDs over all (layer, option) pairs, the pairs and
    layers above median + 3σ, and the median per-layer Spearman between measured ΔFID and the
    size-weighted weight error of the options."""
    import numpy as np
    import pandas as pd

    from quant.bank import Bank

    path = data / "analysis" / model / "layerwise.parquet"
    if not path.is_file():
        return None
    df = pd.read_parquet(path)
    bank = Bank.load(data / "bank" / model)
    d = df["delta_fid"].to_numpy(dtype=float)
    med = float(np.median(d))
    sigma = float(1.4826 * np.median(np.abs(d - med)))
    above = (d - med) > 3 * sigma
    err = np.array([bank.error(l, o) * bank.layers[l].n_weights for l, o in zip(df["layer"], df["option"])])
    rho = [spearmanr(g["delta_fid"], err[g.index]).statistic for _, g in df.groupby("layer")]
    return {"pairs": int(len(df)), "layers": int(df["layer"].nunique()), "delta_fid_median": med,
            "noise_sigma": sigma, "pairs_above_3sigma": int(above.sum()),
            "layers_above_3sigma": int(df.loc[above, "layer"].nunique()),
            "layers_below_noise": int(df["layer"].nunique() - df.loc[above, "layer"].nunique()),
            "median_layer_spearman_with_error": float(np.nanmedian(rho))}


def search_figures(data: Path, model: str) -> dict[str, Any]:
    """The `predictor` strategy's path per budget, from its search reports."""
    out = {}
    for path in sorted((data / "search" / model / "family" / "predictor").glob("predictor-*.report.json")):
        r = _json(path)
        cands = {c["config_id"]: c for c in r.get("candidates", [])}
        scored = {cid: c["selection_fid"] for cid, c in cands.items() if c.get("selection_fid") is not None}
        start = r["path"][0] if r.get("path") else None
        others = [v for cid, v in scored.items() if cid != r["config_id"]]
        first = r["rounds"][0]["config_id"] if r.get("rounds") else None
        out[str(r["budget"])] = {
            "seconds": r["seconds"], "rounds": len(r.get("rounds", [])), "starts": r.get("starts"),
            "first_ip_predicted_fid": cands.get(first, {}).get("predicted_fid"),
            "path_predicted_fid_min": min((cands[c]["predicted_fid"] for c in r.get("path", []) if c in cands),
                                          default=None),
            "start_selection_fid": scored.get(start),
            "chosen_selection_fid": scored.get(r["config_id"]),
            "chosen_is_start": r["config_id"] == start,
            "other_selection_fid_min": min(others, default=None),
            "other_selection_fid_max": max(others, default=None)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--metrics-dir", default=str(ROOT / "metrics"))
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=None, help="default bench/results/figures.json")
    args = ap.parse_args(argv)
    data, model = Path(args.data_dir), args.model
    metrics = Path(args.metrics_dir) / model  # the pipeline's metrics/<model>/
    cache_path = data / "quant_cache" / f"{model}.parquet"

    result: dict[str, Any] = {"model": model}
    result["cache"] = cache_figures(cache_path)
    result["model_info"] = model_figures(data, model)
    result["probe"] = probe_figures(data / "probe" / f"{model}.safetensors", cache_path, Path(args.params))
    result["stage_seconds"] = stage_seconds(data, metrics, model, result["cache"])
    result["layerwise_noise"] = layerwise_noise(data, model)
    inspect = data / "predictor" / model / "plots" / "inspect.json"
    result["inspection"] = _json(inspect)["findings"] if inspect.is_file() else None
    if result["inspection"] is not None:  # block type × bits cells that voted for a method
        result["inspection"]["preference_cells"] = sum(result["inspection"].get("preferred_method_votes", {}).values())
    layers_csv = metrics / "predictor_layers.csv"
    if result["inspection"] is not None and layers_csv.is_file():
        import pandas as pd

        top = pd.read_csv(layers_csv).sort_values("rank").head(10)
        result["inspection"]["top10"] = {r.layer: {"rank": int(r.rank), "delta_fid_low_bits": float(r.sens_low)}
                                         for r in top.itertuples()}
    result["search"] = search_figures(data, model)
    print(json.dumps({k: result[k] for k in ("cache", "probe")}, indent=1, default=float))
    write_result("figures", result, out=args.out, argv=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
