"""Issue 14 part B: the activation-bit IP against brute force, W/A evaluation rows, and the
uniform-vs-normal static calibration measurement (seed 003)."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import QsensError
from search.activation import (ActEvalParams, allocate_activation_bits, evaluate_params, noise_power,
                               predicted_sqnr)
from search.ip import BudgetError


def _random_instance(rng, layers=6, choices=(8, 6, 4)):
    names = [f"l{i}" for i in range(layers)]
    sizes = {l: int(rng.integers(1, 5000)) for l in names}
    # SQNR rises ~6 dB per bit, with a per-layer offset: the usual shape
    sens = {}
    for l in names:
        base = rng.uniform(10, 60)
        sens[l] = {b: float(base + 6.02 * (b - 8) + rng.normal(0, 3)) for b in choices}
    return names, sizes, sens


def _brute(names, sizes, sens, budget, choices, objective):
    best = None
    total = sum(sizes.values())
    for combo in itertools.product(choices, repeat=len(names)):
        if sum(sizes[l] * b for l, b in zip(names, combo)) / total > budget:
            continue
        if objective == "noise":
            v = -sum(noise_power(sens[l][b]) for l, b in zip(names, combo))
        else:
            v = sum(sens[l][b] for l, b in zip(names, combo))
        if best is None or v > best:
            best = v
    return best


@pytest.mark.parametrize("objective", ["noise", "sqnr"])
def test_activation_ip_equals_brute_force(objective) -> None:
    rng = np.random.default_rng(14)
    choices = (8, 6, 4)
    for _ in range(12):
        names, sizes, sens = _random_instance(rng)
        budget = float(rng.uniform(4.3, 7.9))
        alloc = allocate_activation_bits(sens, sizes, budget, choices, objective=objective)
        total = sum(sizes.values())
        avg = sum(sizes[l] * b for l, b in alloc.bits.items()) / total
        assert set(alloc.bits) == set(names) and set(alloc.bits.values()) <= set(choices)
        assert avg <= budget and alloc.avg_bits == pytest.approx(avg, abs=1e-12)
        assert alloc.status == "optimal"
        if objective == "noise":
            got = -sum(noise_power(sens[l][b]) for l, b in alloc.bits.items())
        else:
            got = sum(sens[l][b] for l, b in alloc.bits.items())
        best = _brute(names, sizes, sens, budget, choices, objective)
        assert got == pytest.approx(best, rel=1e-6, abs=1e-9), (budget, alloc.bits)
        assert alloc.predicted_sqnr_db == pytest.approx(
            -10 * math.log10(sum(10 ** (-sens[l][b] / 10) for l, b in alloc.bits.items())))


def test_noise_objective_is_not_summed_db() -> None:
    """Two equal layers, room for one at 8 bits: summed dB prefers upgrading the robust layer
    (A6/B8: 90 dB vs 85), added noise powers the fragile one (1.3e-4 vs 1.0e-3)."""
    sens = {"a": {8: 40.0, 6: 30.0}, "b": {8: 60.0, 6: 45.0}}
    sizes = {"a": 10, "b": 10}
    assert allocate_activation_bits(sens, sizes, 7.0, (8, 6)).bits == {"a": 8, "b": 6}
    assert allocate_activation_bits(sens, sizes, 7.0, (8, 6), objective="sqnr").bits == {"a": 6, "b": 8}
    assert predicted_sqnr(sens, {"a": 8, "b": 6}) == pytest.approx(-10 * math.log10(1e-4 + 10 ** -4.5))


def test_sizes_weight_the_budget_and_edge_cases() -> None:
    # a big layer at 8 bits costs more than all the small ones: at 6.5 average it must go down
    sens = {"big": {8: 50.0, 6: 38.0, 4: 26.0}, **{f"s{i}": {8: 30.0, 6: 18.0, 4: 6.0} for i in range(3)}}
    sizes = {"big": 1000, "s0": 10, "s1": 10, "s2": 10}
    alloc = allocate_activation_bits(sens, sizes, 6.5)
    assert alloc.bits["big"] == 6 and all(alloc.bits[f"s{i}"] == 8 for i in range(3))
    assert alloc.avg_bits == pytest.approx((1000 * 6 + 30 * 8) / 1030)
    # above the largest allocation: everything at its best choice; exactly the smallest: all at 4
    assert set(allocate_activation_bits(sens, sizes, 8.0).bits.values()) == {8}
    assert set(allocate_activation_bits(sens, sizes, 4.0).bits.values()) == {4}
    with pytest.raises(BudgetError, match="below the smallest"):
        allocate_activation_bits(sens, sizes, 3.9)
    # a NaN entry is never chosen; an unchanged output (inf dB) costs nothing
    sens2 = {"a": {8: math.nan, 6: 20.0, 4: 10.0}, "b": {8: math.inf, 6: 30.0, 4: 12.0}}
    alloc2 = allocate_activation_bits(sens2, {"a": 1, "b": 1}, 8.0)
    assert alloc2.bits == {"a": 6, "b": 8} and alloc2.predicted_sqnr_db == pytest.approx(20.0)
    with pytest.raises(QsensError, match="positive integers"):
        allocate_activation_bits(sens2, {"a": 0, "b": 1}, 6.0)
    with pytest.raises(QsensError, match="no sensitivity"):
        allocate_activation_bits(sens2, {"a": 1, "c": 1}, 6.0)
    with pytest.raises(QsensError, match="objective"):
        allocate_activation_bits(sens2, {"a": 1, "b": 1}, 6.0, objective="db")


def test_activation_sensitivity_matches_a_hand_measurement(tiny_digits_denoiser, one_torch_thread) -> None:
    from sampling.calibration import collect_calibration, run_model, sqnr_db
    from quant.activations import activation_quant
    from search.activation import activation_sensitivity

    den = tiny_digits_denoiser
    calib = collect_calibration(den, 8, trajectories=4, seed=3)
    layers = den.layer_names()[:3] + den.layer_names()[-1:]
    sens = activation_sensitivity(den.model, calib, layers, (8, 4))
    y = run_model(den.model, calib)
    with activation_quant(den.model, {layers[1]: 4}):
        assert sens[layers[1]][4] == pytest.approx(sqnr_db(y, run_model(den.model, calib)), abs=1e-9)
    for l in layers:  # fewer bits, more noise
        assert sens[l][8] > sens[l][4] and math.isfinite(sens[l][4])


# ----------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def tiny_bank(tiny_bank_of):
    return tiny_bank_of(["uaq3", "uaq4"])


def test_evaluation_gets_w_a_rows(tiny_bank, tiny_digits_scorer, tmp_path: Path, one_torch_thread) -> None:
    from quant.config import QuantConfig
    from search.evaluate import read_rows, run_evaluation
    from search.params import EvaluateParams, SearchParams
    from sampling.evaluator import Evaluator as RealScorer
    from search.context import SearchContext

    bank, den = tiny_bank
    real = RealScorer(den, bank, tiny_digits_scorer)
    ctx = SearchContext(bank, SearchParams(select_seed=11))
    ep = EvaluateParams(images=10, image_seeds=(23,))
    act = ActEvalParams(act_strategies=("error",), act_mixed_strategies=("error",), act_mixed_bits=7.0,
                        act_calib_samples=8, act_calib_trajectories=4)
    kw = dict(strategies=["error", "uniform"], budgets=[3.9], ep=ep, out_dir=tmp_path / "out",
              metrics_path=tmp_path / "search.json", pareto_csv=tmp_path / "pareto.csv",
              input_digest=lambda s: "x", act=act)
    rows = run_evaluation(ctx, real, log=lambda m: None, **kw)
    assert [(r["strategy"], r["act"]) for r in rows] == [
        ("fp16", None), ("error", None), ("error", "A8"), ("error", "A6"), ("error", "A7-mixed"), ("uniform", None)]
    assert all(r["status"] == "ok" for r in rows)
    w, a8, a6, mixed = rows[1:5]
    configs = tmp_path / "out" / "configs"
    weight_cfg = QuantConfig.load(configs / "error-3.9.json")
    for row, bits in ((a8, 8), (a6, 6)):
        cfg = QuantConfig.load(configs / f"error-3.9-A{bits}.json")
        assert cfg.options == weight_cfg.options and cfg.act_bits == bits and row["act_bits"] == bits
        assert row["avg_bits"] == w["avg_bits"] and row["config_id"] == cfg.config_id != w["config_id"]
        # the row's FID is the config with its activations quantized, scored on the evaluation seeds
        assert row["fid"] == pytest.approx(real.score(cfg, 10, 23)["fid"], abs=1e-12)
    assert a6["fid"] != w["fid"]  # activations were quantized
    m_cfg = QuantConfig.load(configs / "error-3.9-A7-mixed.json")
    assert m_cfg.act_bits is None and set(m_cfg.act_options) == set(bank.layer_names)
    assert all(bank.layers[l].macs == 0 for l in bank.layer_names)  # built without: counted on the model
    macs = {i.name: i.macs for i in den.layer_infos()}
    avg = sum(macs[l] * b for l, b in m_cfg.act_options.items()) / sum(macs.values())
    assert mixed["act_bits"] == pytest.approx(avg) and avg <= 7.0 and mixed["act_ip_status"] == "optimal"
    assert {6, 8} <= set(m_cfg.act_options.values())  # 7 average: a real mix
    assert mixed["fid"] == pytest.approx(real.score(m_cfg, 10, 23)["fid"], abs=1e-12)
    sens = json.loads((configs / "act_sensitivity.json").read_text())
    assert set(sens["sqnr"]) == set(bank.layer_names) and sens["choices"] == [8, 6, 4]
    csv = (tmp_path / "pareto.csv").read_text()
    assert "error A8," in csv and "error A7-mixed," in csv
    # a re-run skips every row, W/A rows included
    logs: list[str] = []
    again = run_evaluation(ctx, real, log=logs.append, **kw)
    assert sum("skipped" in m for m in logs) == 3 and [r["fid"] for r in again] == [r["fid"] for r in rows]
    # weight-only (act=None): no W/A rows; old readers see act null
    kept = read_rows(tmp_path / "search.json")
    assert all("act" in r for r in kept)
    plain = run_evaluation(ctx, real, log=lambda m: None, **{**kw, "act": None, "metrics_path": tmp_path / "p.json"})
    assert [r["act"] for r in plain] == [None, None, None]


def test_evaluate_params_split(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("evaluate:\n  images: 12\n  image_seeds: [23]\n  act_bits: [8]\n  act_mixed_bits: 7\n")
    ep, act = evaluate_params(p)
    assert ep.images == 12 and act.act_bits == (8,) and act.act_mixed_bits == 7.0
    assert act.act_strategies == ("predictor", "mixdq")
    p.write_text("evaluate:\n  act_bogus: 1\n")
    with pytest.raises(QsensError, match="act_bogus"):
        evaluate_params(p)
    p.write_text("evaluate:\n  act_bits: [7]\n")
    with pytest.raises(QsensError, match="8 or 6"):
        evaluate_params(p)
    p.write_text("evaluate:\n  act_mixed_bits: 3\n")
    with pytest.raises(QsensError, match="outside"):
        evaluate_params(p)
    repo = Path(__file__).resolve().parent.parent / "params.yaml"
    evaluate_params(repo)  # the project's own params parse


# ----------------------------------------------------------------------- seed 003 measurement
def test_uniform_and_normal_calibration_sets_differ(tiny_digits_denoiser, one_torch_thread) -> None:
    from sampling.calibration import activation_ranges, collect_calibration

    den = tiny_digits_denoiser
    u = collect_calibration(den, 40, trajectories=4, seed=3, how="uniform", steps=6)
    n = collect_calibration(den, 40, trajectories=4, seed=3, how="normal", steps=6, std=0.15)
    hu = np.bincount(u.step_index, minlength=u.num_steps)
    hn = np.bincount(n.step_index, minlength=n.num_steps)
    assert hu.max() - hu.min() <= 1  # balanced over the trajectory
    assert hn[0] + hn[-1] < hu[0] + hu[-1]  # normal: fewer draws at the ends
    ru, rn = activation_ranges(den.model, u), activation_ranges(den.model, n)
    assert any(ru[l] != rn[l] for l in ru)


def test_act_calibration_writes_its_measurement(tiny_digits_denoiser, tiny_digits_scorer, tmp_path: Path,
                                                one_torch_thread) -> None:
    from analysis.act_calibration import ActCalibrationParams, measure_act_calibration, verdict
    from sampling.calibration import activation_ranges, collect_calibration
    from quant.activations import activation_quant

    den, scorer = tiny_digits_denoiser, tiny_digits_scorer
    params = ActCalibrationParams(images=8, image_seeds=(61, 62, 63), bits=(6,), calib_samples=8,
                                  calib_trajectories=4, calib_seed=3, chunk=8)
    noise = tmp_path / "noise.json"
    noise.write_text(json.dumps({"fp_fid_seed_std": 0.33, "fp_fid_mean": 1.7, "images_per_score": 500}))
    res = measure_act_calibration(den, scorer, params, tmp_path / "act.json", noise_path=noise, progress=False)
    data = json.loads((tmp_path / "act.json").read_text())
    assert data["comparison"]["A6"]["verdict"] == res["comparison"]["A6"]["verdict"]
    assert data["fp_noise_json"]["fp_fid_seed_std"] == 0.33
    fp = [scorer.score(den.generate(8, s)).fid for s in (61, 62, 63)]
    assert data["fp"]["fid"] == pytest.approx(fp, abs=1e-12)
    assert data["fp"]["fid_seed_std"] == pytest.approx(float(np.std(fp, ddof=1)))
    # the normal row by hand: ranges from a normal draw, every layer's input at 6 bits, seed set 62
    calib = collect_calibration(den, 8, trajectories=4, seed=3, how="normal")
    ranges = activation_ranges(den.model, calib, 8)
    with activation_quant(den.model, {l: 6 for l in ranges}, ranges=ranges):
        hand = scorer.score(den.generate(8, 62)).fid
    normal, uniform = data["results"]["normal"]["A6"], data["results"]["uniform"]["A6"]
    assert normal["fid"][1] == pytest.approx(hand, abs=1e-12)
    diffs = [a - b for a, b in zip(uniform["fid"], normal["fid"])]
    c = data["comparison"]["A6"]
    assert c["fid_diff_uniform_minus_normal"] == pytest.approx(diffs)
    assert c["fid_diff_mean"] == pytest.approx(np.mean(diffs))
    assert c["fid_diff_sem"] == pytest.approx(np.std(diffs, ddof=1) / math.sqrt(3))
    assert normal["fid_sem"] == pytest.approx(np.std(normal["fid"], ddof=1) / math.sqrt(3))
    assert data["calibration"]["uniform"]["step_histogram"] != data["calibration"]["normal"]["step_histogram"]
    assert verdict(-1.0, 0.4) == "uniform better" and verdict(1.0, 0.4) == "normal better"
    assert verdict(-0.5, 0.4) == "no significant difference" and verdict(None, None) == "undetermined"
    with pytest.raises(QsensError, match="at least 3"):
        ActCalibrationParams(image_seeds=(61, 62))
    with pytest.raises(QsensError, match="calib_seed"):
        ActCalibrationParams(image_seeds=(3, 61, 62), calib_seed=3)


def test_cli_act_calibration(tiny_prepared_data, tmp_path: Path, capsys, one_torch_thread) -> None:
    from qsens.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("model:\n  source: digits\n  name: digits\n"
                      "act_calibration:\n  images: 4\n  image_seeds: [61, 62, 63]\n  bits: [8]\n"
                      "  calib_samples: 4\n  calib_trajectories: 2\n")
    out = tmp_path / "m" / "act_calibration.json"
    rc = main(["analyze", "act-calibration", "--params", str(params), "--data-dir", str(tiny_prepared_data),
               "--out", str(out), "--noise", str(tmp_path / "absent.json"), "--threads", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "A8: uniform" in text and "paired uniform − normal" in text
    data = json.loads(out.read_text())
    assert data["settings"]["image_seeds"] == [61, 62, 63] and len(data["results"]["normal"]["A8"]["fid"]) == 3
    assert data["fp_noise_json"] is None
    params.write_text("act_calibration:\n  image_seeds: [61, 62]\n")
    rc = main(["analyze", "act-calibration", "--params", str(params), "--data-dir", str(tiny_prepared_data),
               "--out", str(out), "--quiet"])
    assert rc == 2 and "at least 3 distinct seed sets" in capsys.readouterr().err
