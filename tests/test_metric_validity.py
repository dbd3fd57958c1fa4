"""`qsens analyze metrics`: the validity table of cheap labels against the 5-seed FID.

What a user relies on: the agreement statistics are the textbook ones (scipy's Spearman/Kendall,
a percentile bootstrap), the scopes select exactly the configs they name, and the table measured
on a tiny model has every candidate at every image count with the truth's own retest beside it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest


def test_rank_agreement_and_scopes_by_hand():
    from scipy.stats import kendalltau, spearmanr

    from analysis.metric_validity import rank_agreement, scopes

    rng = np.random.default_rng(1)
    truth = rng.normal(size=40)
    x = truth + rng.normal(scale=0.5, size=40)
    got = rank_agreement(x, truth, bootstrap=200, seed=0)
    assert got["spearman"] == pytest.approx(spearmanr(x, truth).statistic)
    assert got["kendall"] == pytest.approx(kendalltau(x, truth).statistic)
    assert got["spearman_lo"] < got["spearman"] < got["spearman_hi"] and got["configs"] == 40
    assert rank_agreement(x, truth, 200, 0) == got  # seeded: the same interval every time
    assert rank_agreement(x[:3], truth[:3])["spearman"] is None  # too few configs to rank

    bits = np.array([3.0, 3.04, 3.16, 3.5, 3.61, 4.0])
    t = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    m = scopes(bits, t, [3.05, 3.5], 0.1)
    assert m["window-3.05"].tolist() == [True, True, False, False, False, False]
    assert m["window-3.5"].tolist() == [False, False, False, True, False, False]
    assert m["top-quarter"].tolist() == [False, False, False, False, True, True]
    assert m["all"].all()


def test_metric_validity_on_a_tiny_model(tiny_digits_denoiser, tiny_digits_scorer, tmp_path, one_torch_thread):
    import pandas as pd

    from analysis.metric_validity import MetricValidityParams, run_metric_validity
    from quant.bank import build_bank
    from quant.config import QuantConfig
    from sampling.evaluator import CostMeter, Evaluator
    from sampling.sampler import random_configs

    bank = build_bank(tiny_digits_denoiser.model, ["uaq3", "uaq4", "kma3"], model_name="digits")
    rows = []
    for i, cfg in random_configs("digits", bank.layer_names, bank.options, 0, 10):
        rows.append({"config_id": cfg.config_id, "model": "digits", "options": json.dumps(cfg.canonical_options()),
                     "avg_bits": bank.summarize(cfg).avg_bits})
    cache = pd.DataFrame(rows)
    ev = Evaluator(tiny_digits_denoiser, bank, tiny_digits_scorer, fp_cache=tmp_path / "fp", meter=CostMeter())
    family = {c.config_id: c for c in [QuantConfig.uniform("digits", bank.layer_names, "uaq4")]}
    params = MetricValidityParams(n_images=(4, 8), random_configs=5, window_configs=1, bootstrap=20,
                                  calib_samples=4, calib_trajectories=2)
    out = tmp_path / "mv.json"
    res = run_metric_validity(ev, cache, family, {}, params, [3.5], 0, 8, [23, 24], out, tmp_path / "mv.png",
                              tmp_path / "work", progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert (tmp_path / "mv.png").stat().st_size > 0
    gt = res["ground_truth"]
    assert gt["configs"] >= 5 and gt["origins"]["family"] == 1
    names = {(m["metric"], m["n_images"]) for m in res["metrics"]}
    for metric in ("fid", "fd_fp", "feat_dist", "image_mse", "dssim", "content_drop"):
        assert {(metric, 4), (metric, 8)} <= names
    assert ("output_mse", 0) in names
    om = [m for m in res["metrics"] if m["metric"] == "output_mse"][0]
    assert om["images_per_label"] == 0 and om["forwards_per_label"] == 4
    assert {r["scope"] for r in gt["retest"]} == {"all", "window-3.5", "top-quarter"}
    # resumable: a second run measures nothing again and writes the same table
    spent = ev.meter.images
    res2 = run_metric_validity(ev, cache, family, {}, params, [3.5], 0, 8, [23, 24], out, None,
                               tmp_path / "work", progress=False)
    assert ev.meter.images == spent
    assert res2["metrics"] == res["metrics"]


def test_analyze_metrics_reads_the_shipped_params(tiny_prepared_data, tmp_path, capsys):
    """The shipped params.yaml (evaluate's act_* keys included) is accepted: the first error is the
    missing cache, not the params."""
    from pathlib import Path

    from qsens.cli import main

    root = Path(__file__).resolve().parents[1]
    rc = main(["analyze", "metrics", "--model", "digits", "--data-dir", str(tiny_prepared_data),
               "--params", str(root / "params.yaml"), "--cache", str(tmp_path / "absent.parquet"),
               "--out", str(tmp_path / "mv.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "absent.parquet" in err and "unknown" not in err, err
