"""analysis/: SSIM, calibration along the FP trajectory, layerwise and MixDQ measurements."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.params import AnalysisParams


# ----------------------------------------------------------------------------------------- SSIM
def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range=255.0) -> float:
    """skimage's gaussian SSIM written out with scipy (σ 1.5, truncate 3.5 → 11 taps, crop 5)."""
    from scipy.ndimage import gaussian_filter

    a, b = a.astype(np.float64), b.astype(np.float64)
    f = lambda x: gaussian_filter(x, sigma=1.5, truncate=3.5)  # noqa: E731
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ma, mb = f(a), f(b)
    saa, sbb, sab = f(a * a) - ma * ma, f(b * b) - mb * mb, f(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma ** 2 + mb ** 2 + c1) * (saa + sbb + c2))
    return float(s[5:-5, 5:-5].mean())


def test_ssim_matches_the_reference_formula_and_behaves() -> None:
    from sampling.ssim import ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(32, 32)).astype(np.uint8)
    a = (np.cumsum(np.cumsum(a, 0), 1) % 256).astype(np.uint8)  # some structure
    noise = rng.normal(0, 20, size=a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    got = float(ssim(a[None, ..., None], b[None, ..., None])[0])
    assert got == pytest.approx(_ssim_reference(a, b), abs=1e-10)
    assert float(ssim(a[None], a[None])[0]) == pytest.approx(1.0, abs=1e-12)
    worse = np.clip(a + 3 * noise, 0, 255).astype(np.uint8)
    assert float(ssim(a[None], worse[None])[0]) < got
    # tiny images (8×8 digits): smaller window, reflect padding, still 1 on identical
    d = rng.integers(0, 256, size=(4, 8, 8, 1)).astype(np.uint8)
    assert torch.allclose(ssim(d, d), torch.ones(4, dtype=torch.float64))
    assert float(ssim(d, d[::-1].copy(), reduction="mean")) < 1


def _ssim_small_reference(a: np.ndarray, b: np.ndarray, data_range=255.0) -> float:
    """The 8×8 rule written out with scipy: 7 taps (σ 1.5, truncate 2 → radius 3), mirror
    boundary (scipy's "mirror" is torch's "reflect": d c b | a b c d | c b a), mean of the
    whole map."""
    from scipy.ndimage import gaussian_filter

    a, b = a.astype(np.float64), b.astype(np.float64)
    f = lambda x: gaussian_filter(x, sigma=1.5, truncate=2.0, mode="mirror")  # noqa: E731
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ma, mb = f(a), f(b)
    saa, sbb, sab = f(a * a) - ma * ma, f(b * b) - mb * mb, f(a * b) - ma * mb
    return float((((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma ** 2 + mb ** 2 + c1) * (saa + sbb + c2))).mean())


def test_ssim_on_8x8_matches_the_reflect_padded_formula() -> None:
    from sampling.ssim import ssim

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(3, 8, 8)).astype(np.uint8)
    a[:, 2:6, 2:6] = 255  # a bright block: border pixels matter
    b = np.clip(a + rng.normal(0, 30, size=a.shape), 0, 255).astype(np.uint8)
    got = ssim(a[..., None], b[..., None])
    want = [_ssim_small_reference(x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    # colour: the mean over channels of the per-channel values
    rgb_a = np.stack([a[0], a[1], a[2]], -1)[None]
    rgb_b = np.stack([b[0], b[1], b[2]], -1)[None]
    assert float(ssim(rgb_a, rgb_b)[0]) == pytest.approx(np.mean(want), abs=1e-10)


# ---------------------------------------------------------------------------------- calibration
def test_time_step_draws_uniform_and_normal() -> None:
    from sampling.calibration import draw_steps

    rng = np.random.default_rng(0)
    u = draw_steps(10, 1000, "uniform", rng)
    assert np.bincount(u, minlength=10).tolist() == [100] * 10
    n = draw_steps(10, 2000, "normal", rng, mean=0.5, std=0.15)
    counts = np.bincount(n, minlength=10)
    assert counts[4] + counts[5] > counts[0] + counts[9] + 300 and n.min() >= 0 and n.max() <= 9
    with pytest.raises(ValueError):
        draw_steps(10, 5, "bogus", rng)


def test_calibration_samples_are_the_recorded_rows(tiny_digits_denoiser) -> None:
    """Sample i is row `row[i]` of denoiser call `step_index[i]`, inputs and conditioning alike."""
    from sampling.calibration import collect_calibration

    den = tiny_digits_denoiser
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def spy(_module, args, kwargs):
        seen.append((args[0].clone(), args[1].clone(), kwargs["class_labels"].clone()))

    handle = den.model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        calib = collect_calibration(den, 16, trajectories=8, seed=3, how="uniform")
    finally:
        handle.remove()
    assert len(seen) == calib.num_steps == 2
    assert len(set(calib.row.tolist())) > 3  # rows are drawn, not all the same one
    (x, t), kw = calib.args, calib.kwargs
    for i, (s, r) in enumerate(zip(calib.step_index, calib.row)):
        xs, ts, ys = seen[s]
        assert torch.equal(x[i], xs[r]) and torch.equal(t[i], ts[r]) and torch.equal(kw["class_labels"][i], ys[r])
    # 8 trajectories cycle the classes 0..7: the label of a sample is its row
    assert kw["class_labels"].tolist() == calib.row.tolist()


def test_calibration_collects_trajectory_inputs(tiny_digits_denoiser) -> None:
    from sampling.calibration import collect_calibration, model_output, run_model, sqnr_db

    den = tiny_digits_denoiser  # 2 sampler steps
    calib = collect_calibration(den, 12, trajectories=6, seed=1, how="uniform")
    assert len(calib) == 12 and calib.num_steps == 2
    (x, t), kw = calib.args, calib.kwargs
    assert x.shape == (12, 1, 8, 8) and t.shape == (12,) and kw["class_labels"].shape == (12,)
    assert sorted(np.bincount(calib.step_index).tolist()) == [6, 6]
    # two different time steps appear, and the recorded inputs reproduce the model's output
    assert len(set(t.tolist())) == 2
    y = run_model(den.model, calib)
    with torch.inference_mode():
        y0 = model_output(den.model(x[:1], t[:1], class_labels=kw["class_labels"][:1], return_dict=False))
    assert torch.allclose(y[:1].float(), y0.float(), atol=1e-6)
    assert sqnr_db(y, y) == float("inf")
    assert sqnr_db(y, y * 1.1) == pytest.approx(20.0, abs=1e-9)  # 10·log10(1 / 0.01)


# ---------------------------------------------------------------------------------- measuring
@pytest.fixture
def small_bank(tiny_digits_denoiser):
    from quant.bank import build_bank

    return build_bank(tiny_digits_denoiser.model, ["uaq3", "uaq4"], model_name="digits", progress=False)


LAYERS = ["conv_in", "down_blocks.0.resnets.0.time_emb_proj", "conv_out"]


def test_layerwise_score_table_by_hand() -> None:
    """score = 0.6·minmax(FID − FID_fp) + 0.4·minmax(content_fp − content); failed pairs score 1."""
    from analysis.layerwise import ranked_report, score_table

    rows = [{"layer": "l1", "option": "uaq3", "fid": 12.0, "content": 0.9, "status": "ok"},
            {"layer": "l1", "option": "uaq4", "fid": 10.0, "content": 0.5, "status": "ok"},
            {"layer": "l2", "option": "uaq3", "fid": 14.0, "content": 0.7, "status": "ok"},
            {"layer": "l2", "option": "uaq4", "fid": None, "content": None, "status": "failed"}]
    df = score_table(rows, fp_fid=10.0, fp_content=0.9)
    # ΔFID 2, 0, 4 → 0.5, 0, 1 ; Δcontent 0, 0.4, 0.2 → 0, 1, 0.5 (lost accuracy is damage)
    np.testing.assert_allclose(df["delta_fid"][:3], [2.0, 0.0, 4.0])
    np.testing.assert_allclose(df["delta_content"][:3], [0.0, 0.4, 0.2])
    np.testing.assert_allclose(df["score"], [0.3, 0.4, 0.8, 1.0], atol=1e-12)
    np.testing.assert_allclose(score_table(rows, 10.0, 0.9, fid_weight=1.0)["score"], [0.5, 0.0, 1.0, 1.0])
    report = ranked_report(df, {})
    assert [(r["layer"], r["rank"], r["bucket"], r["worst_option"]) for r in report["layers"]] == [
        ("l2", 1, "critical", "uaq4"), ("l1", 2, "medium", "uaq4")]
    assert report["layers"][1]["sensitivity"] == pytest.approx(0.4)
    assert [b["layers"] for b in report["buckets"]] == [0, 1, 0, 1]


def test_layerwise_scores_report_and_resume(tiny_digits_denoiser, tiny_digits_scorer, small_bank,
                                            tmp_path: Path, monkeypatch) -> None:
    from analysis.layerwise import bucket, measure_layerwise

    p = AnalysisParams(images=10)
    df = measure_layerwise(tiny_digits_denoiser, small_bank, tiny_digits_scorer, p, tmp_path,
                           layers=LAYERS, progress=False)
    assert len(df) == 6 and (df["status"] == "ok").all()
    assert df["score"].between(0, 1).all() and df["score"].max() > 0
    report = json.loads((tmp_path / "layerwise.json").read_text())
    assert [r["rank"] for r in report["layers"]] == [1, 2, 3]
    sens = [r["sensitivity"] for r in report["layers"]]
    assert sens == sorted(sens, reverse=True)
    assert [b["name"] for b in report["buckets"]] == ["low", "medium", "high", "critical"]
    assert bucket(0.1) == "low" and bucket(0.3) == "medium" and bucket(0.6) == "high" and bucket(0.95) == "critical"
    assert report["weights"] == {"fid": 0.6, "content": 0.4}
    # the scores are the documented formula of the measured columns (FP from the report)
    def minmax(v):
        return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)
    d_fid = df["fid"].to_numpy() - report["fp"]["fid"]
    d_content = report["fp"]["content"] - df["content"].to_numpy()
    np.testing.assert_allclose(df["delta_fid"], d_fid)
    np.testing.assert_allclose(df["delta_content"], d_content)
    np.testing.assert_allclose(df["score"], 0.6 * minmax(d_fid) + 0.4 * minmax(d_content), atol=1e-12)
    worst = df.groupby("layer")["score"].max()
    assert {r["layer"]: r["sensitivity"] for r in report["layers"]} == pytest.approx(worst.to_dict())
    # resume: nothing is generated again, same table
    calls = []
    orig = tiny_digits_denoiser.generate
    monkeypatch.setattr(tiny_digits_denoiser, "generate", lambda *a, **k: calls.append(1) or orig(*a, **k))
    again = measure_layerwise(tiny_digits_denoiser, small_bank, tiny_digits_scorer, p, tmp_path,
                              layers=LAYERS, progress=False)
    assert not calls
    assert np.allclose(again["score"], df["score"])


def test_mixdq_groups_sqnr_and_ssim(tiny_digits_denoiser, small_bank, tmp_path: Path) -> None:
    from analysis.mixdq import measure_mixdq, split_groups

    p = AnalysisParams(calib_samples=8, calib_trajectories=4, ssim_images=10)
    groups = split_groups(["a.attn2.to_q", "b.ff.net.0.proj", "c.attn1.to_q", "r.time_emb_proj",
                           "t.norm1.linear", "conv_in", "diff.x"], p.content_patterns)
    assert [k for k, g in groups.items() if g == "content"] == ["a.attn2.to_q", "b.ff.net.0.proj",
                                                                "r.time_emb_proj", "t.norm1.linear"]
    df = measure_mixdq(tiny_digits_denoiser, small_bank, p, tmp_path, layers=LAYERS, progress=False)
    assert len(df) == 6
    content = df[df["group"] == "content"]
    assert set(content["layer"]) == {"down_blocks.0.resnets.0.time_emb_proj"}
    assert content["ssim"].between(-1, 1).all() and (content["score"] == content["ssim"]).all()
    quality = df[df["group"] == "quality"]
    assert quality["ssim"].isna().all() and (quality["score"] == quality["sqnr_db"]).all()
    # 4-bit is closer to FP than 3-bit for the same layer (SQNR higher)
    q = quality.set_index(["layer", "option"])["sqnr_db"]
    assert q[("conv_in", "uaq4")] > q[("conv_in", "uaq3")]
    # the values by hand: SQNR of the output on the same calibration draw, SSIM of the images of
    # that one layer quantized against the FP images of the same seeds
    from sampling.calibration import collect_calibration, run_model, sqnr_db
    from sampling.ssim import ssim
    from quant.apply import quantized
    from quant.config import QuantConfig

    den = tiny_digits_denoiser
    calib = collect_calibration(den, p.calib_samples, trajectories=p.calib_trajectories, seed=p.calib_seed,
                                how=p.calib_timesteps, mean=p.calib_normal_mean, std=p.calib_normal_std,
                                steps=p.steps)
    y_fp = run_model(den.model, calib)
    fp_images = den.generate(p.ssim_images, p.ssim_seed).images
    with quantized(den.model, QuantConfig("digits", {"conv_in": "uaq3"}), small_bank):
        assert q[("conv_in", "uaq3")] == pytest.approx(sqnr_db(y_fp, run_model(den.model, calib)), rel=1e-9)
    # (time_emb_proj at 3 bits leaves this untrained model's images unchanged: SSIM 1; conv_out,
    # made a content layer here, changes them)
    p2 = AnalysisParams(calib_samples=8, calib_trajectories=4, ssim_images=10,
                        content_patterns=(*p.content_patterns, "^conv_out$"))
    df2 = measure_mixdq(den, small_bank, p2, tmp_path / "conv_out", layers=["conv_out"], options=["uaq3"],
                        progress=False)
    with quantized(den.model, QuantConfig("digits", {"conv_out": "uaq3"}), small_bank):
        want = float(ssim(den.generate(p.ssim_images, p.ssim_seed).images, fp_images, reduction="mean"))
    assert df2["group"].tolist() == ["content"] and want < 0.99
    assert df2["ssim"][0] == pytest.approx(want, abs=1e-12) and df2["score"][0] == df2["ssim"][0]
    info = json.loads((tmp_path / "mixdq.json").read_text())
    assert info["calibration"]["timesteps"] == "uniform" and sum(info["calibration"]["step_histogram"]) == 8
