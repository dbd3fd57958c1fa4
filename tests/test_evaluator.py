"""The one apply → generate → score path (`sampling.evaluator`) and the paired scores.

What a user relies on: the FP images are made once and reused exactly while nothing that changes
them changes; every paired metric is the formula it claims (checked against by-hand numpy); a
config that changes nothing scores 0 on every paired metric; and no other module applies a config
to a model or generates images on its own (so a new metric is added in one place).
"""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "quant", "denoisers", "sampling", "graphs", "predictor", "search", "analysis", "qsens")


@pytest.fixture
def tiny_bank(tiny_bank_of):
    return tiny_bank_of(["uaq3", "kma3"])[0]


def _evaluator(den, bank, scorer, tmp_path, **kw):
    from sampling.evaluator import CostMeter, Evaluator

    return Evaluator(den, bank, scorer, fp_cache=tmp_path / "fp", meter=CostMeter(), **kw)


def test_fp_images_cached_and_invalidated_exactly_when_inputs_change(tiny_digits_denoiser, tiny_bank,
                                                                      tiny_digits_scorer, tmp_path, one_torch_thread):
    from sampling.evaluator import CostMeter, Evaluator

    ev = _evaluator(tiny_digits_denoiser, tiny_bank, tiny_digits_scorer, tmp_path)
    a = ev.fp_images(12, seed=3)
    assert ev.meter.images == 12
    assert len(list((tmp_path / "fp").glob("*.safetensors"))) == 1
    # a new evaluator (another process) reads the cached entry: no image generated
    ev2 = _evaluator(tiny_digits_denoiser, tiny_bank, tiny_digits_scorer, tmp_path)
    b = ev2.fp_images(12, seed=3)
    assert ev2.meter.images == 0 and b.key == a.key
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.content == b.content

    keys = {a.key}
    # another seed set, another n, other steps: new entries
    for n, seed, kw in ((12, 4, {}), (10, 3, {}), (12, 3, {"steps": 1})):
        e = _evaluator(tiny_digits_denoiser, tiny_bank, tiny_digits_scorer, tmp_path, generate_kw=kw)
        fp = e.fp_images(n, seed)
        assert e.meter.images == n and fp.key not in keys
        keys.add(fp.key)
    # changed weights (a fine-tune): new entry; restored weights: the old one again
    w = next(tiny_digits_denoiser.model.parameters())
    saved = w.detach().clone()
    with torch.no_grad():
        w.add_(0.01)
    e = _evaluator(tiny_digits_denoiser, tiny_bank, tiny_digits_scorer, tmp_path)
    assert e.fp_key(12, 3) not in keys
    with torch.no_grad():
        w.copy_(saved)
    # another reference (statistics): new key
    from sampling.scoring import DigitsScorer

    other = DigitsScorer(tiny_digits_scorer.classifier, tiny_digits_scorer.ref_mu + 1.0,
                         tiny_digits_scorer.ref_sigma)
    e = _evaluator(tiny_digits_denoiser, tiny_bank, other, tmp_path)
    assert e.fp_key(12, 3) not in keys
    e = Evaluator(tiny_digits_denoiser, tiny_bank, tiny_digits_scorer, fp_cache=tmp_path / "fp", meter=CostMeter())
    assert e.fp_key(12, 3) == a.key
    # a damaged entry is regenerated, never trusted
    (tmp_path / "fp" / f"{a.key}.safetensors").write_bytes(b"garbage")
    fp = e.fp_images(12, 3)
    assert e.meter.images == 12
    np.testing.assert_array_equal(fp.images, a.images)


def _sqrtm_fd(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import linalg

    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _ssim_one_window(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two 11×11 grey images: one 11-tap Gaussian window (σ 1.5) covers the image."""
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    w = np.outer(g, g)
    mx, my = (w * a).sum(), (w * b).sum()
    sxx, syy = (w * a * a).sum() - mx ** 2, (w * b * b).sum() - my ** 2
    sxy = (w * a * b).sum() - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))


def test_each_paired_metric_matches_its_formula_by_hand():
    from sampling.paired import paired_scores

    rng = np.random.default_rng(0)
    fp_img = rng.integers(0, 256, (6, 11, 11, 1), dtype=np.uint8)
    q_img = np.clip(fp_img.astype(int) + rng.integers(-20, 21, fp_img.shape), 0, 255).astype(np.uint8)
    fp_f = rng.normal(size=(6, 3))
    q_f = fp_f + rng.normal(scale=0.3, size=(6, 3))
    got = paired_scores(q_img, q_f, 0.7, fp_img, fp_f, 0.9)

    mse = np.mean((q_img.astype(float) - fp_img.astype(float)) ** 2)
    assert got["image_mse"] == pytest.approx(mse, rel=1e-12)
    assert got["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / mse), rel=1e-12)
    assert got["feat_dist"] == pytest.approx(np.mean(np.linalg.norm(q_f - fp_f, axis=1)), rel=1e-12)
    assert got["fd_fp"] == pytest.approx(_sqrtm_fd(q_f, fp_f), rel=1e-6)
    ssim = np.mean([_ssim_one_window(q_img[i, ..., 0].astype(float), fp_img[i, ..., 0].astype(float))
                    for i in range(6)])
    assert got["dssim"] == pytest.approx(1 - ssim, rel=1e-9)
    assert got["content_drop"] == pytest.approx(0.2)
    assert "lpips" not in got  # only with a local LPIPS network

    lp = paired_scores(q_img, q_f, 0.7, fp_img, fp_f, 0.9,
                       lpips=lambda a, b: np.abs(a.astype(float) - b.astype(float)).mean(axis=(1, 2, 3)))
    assert lp["lpips"] == pytest.approx(np.abs(q_img.astype(float) - fp_img.astype(float)).mean())


def test_a_config_identical_to_fp_scores_zero_on_every_paired_metric(tiny_digits_denoiser, tiny_bank,
                                                                     tiny_digits_scorer, tmp_path, one_torch_thread):
    from quant.config import QuantConfig
    from sampling.paired import PAIRED_METRICS

    ev = _evaluator(tiny_digits_denoiser, tiny_bank, tiny_digits_scorer, tmp_path,
                    lpips=lambda a, b: np.abs(a.astype(float) - b.astype(float)).mean(axis=(1, 2, 3)))
    same = QuantConfig("digits", {name: "fp16" for name in tiny_bank.layer_names})
    row = ev.score(same, 16, 5, paired=True)
    assert row["status"] == "ok"
    for m in PAIRED_METRICS:
        assert row[m] == 0.0, m
    assert row["psnr"] is None  # infinite PSNR is not a number
    quantized = QuantConfig.uniform("digits", tiny_bank.layer_names, "uaq3")
    row = ev.score(quantized, 16, 5, paired=True)
    assert row["status"] == "ok" and row["fd_fp"] > 0 and row["image_mse"] > 0
    # the FP images were generated once for both configs: 16 FP + 2 × 16 quantized
    assert ev.meter.images == 48


def test_cost_meter_counts_images_and_denoiser_forwards(tiny_digits_denoiser, tiny_digits_scorer, tmp_path,
                                                        one_torch_thread):
    ev = _evaluator(tiny_digits_denoiser, None, tiny_digits_scorer, tmp_path)
    ev.generate(None, 20, 0)
    steps, batch = tiny_digits_denoiser.params.steps, tiny_digits_denoiser.params.gen_batch_size
    cfg = 2 if tiny_digits_denoiser.params.guidance != 1.0 else 1
    assert ev.meter.images == 20
    assert ev.meter.forwards == steps * math.ceil(20 / batch)
    assert ev.meter.forward_samples == steps * 20 * cfg


def _calls(tree: ast.AST, name: str) -> list[int]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if called == name:
                out.append(node.lineno)
    return out


def test_only_the_evaluator_applies_configs_and_generates():
    """`quant.apply.quantized`/`apply_config` and `<denoiser>.generate(...)` are called only in
    sampling/evaluator.py (the quant package defines them; denoisers implement generate)."""
    offenders = []
    for pkg in PACKAGES:
        if pkg in ("quant", "denoisers"):
            continue
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "sampling/evaluator.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for name in ("quantized", "apply_config"):  # (torchao's quantize_ in search/export.py is export)
                offenders += [f"{rel}:{ln} {name}()" for ln in _calls(tree, name)]
            for node in ast.walk(tree):  # den.generate(...) / denoiser.generate(...) / self.denoiser.generate
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "generate"):
                    if isinstance(node.func.value, ast.Call):  # Evaluator(...).generate(...)
                        continue
                    target = ast.unparse(node.func.value)
                    if "den" in target or "pipe" in target:
                        offenders.append(f"{rel}:{node.lineno} {target}.generate()")
    assert not offenders, "apply/generate outside sampling/evaluator.py:\n" + "\n".join(offenders)


def test_multi_fidelity_score_and_target(tiny_digits_denoiser, tiny_bank, tiny_digits_scorer, tmp_path,
                                         one_torch_thread):
    """FID on the expensive image count, paired scores on the cheap prefix of the same generation;
    the predictor's target: the expensive label where measured, the cheap one calibrated elsewhere."""
    import pandas as pd

    from predictor.dataset import multi_fidelity_target
    from quant.config import QuantConfig

    ev = _evaluator(tiny_digits_denoiser, tiny_bank, tiny_digits_scorer, tmp_path)
    cfg = QuantConfig.uniform("digits", tiny_bank.layer_names, "kma3")
    row = ev.score(cfg, 8, 2, paired=True, fid_images=20)
    assert row["n_images"] == 20 and row["paired_images"] == 8
    gen = ev.generate(cfg, 20, 2)
    fp = ev.fp_images(20, 2)
    assert row["fid"] == pytest.approx(tiny_digits_scorer.score(gen).fid, rel=1e-12)
    assert row["image_mse"] == pytest.approx(np.mean((gen.images[:8].astype(float) - fp.images[:8]) ** 2), rel=1e-12)

    df = pd.DataFrame({"fd_fp": [1.0, 2.0, 4.0, 8.0, 3.0], "fid": [3.0, 6.0, 12.0, np.nan, 5.0],
                       "n_images": [500, 500, 500, 32, 32]})
    target, info = multi_fidelity_target(df, "fd_fp", "fid", 500)
    # the hifi rows fit fid = 3 · fd_fp exactly (log-log line a = log 3, b = 1)
    assert info["b"] == pytest.approx(1.0) and info["a"] == pytest.approx(math.log(3.0))
    np.testing.assert_allclose(target, [3.0, 6.0, 12.0, 24.0, 9.0])  # row 5: its own fid is cheap (32 images)
    from core.errors import QsensError

    with pytest.raises(QsensError, match="need 3"):
        multi_fidelity_target(df.assign(n_images=[500, 500, 32, 32, 32]), "fd_fp", "fid", 500)
