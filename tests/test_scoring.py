"""Scoring: clean-fid FID on classifier features, content accuracy, failure records."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from denoisers.base import Generation, to_uint8
from sampling.scoring import (DigitsScorer, feature_stats, load_reference_stats,
                              save_reference_stats)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(images, labels=None, nonfinite=None):
    n = len(images)
    return Generation(images=images, seeds=np.arange(n), labels=labels, nonfinite=nonfinite)


def test_fid_of_reference_set_against_itself_is_zero(tiny_digits_scorer, digit_images):
    images, _ = digit_images
    assert abs(tiny_digits_scorer.fid(images)) < 1e-4


def test_fid_grows_with_a_shift(tiny_digits_scorer, digit_images):
    images, _ = digit_images
    f0 = tiny_digits_scorer.fid(images[:900])  # a subset: small sampling term only
    f1 = tiny_digits_scorer.fid(np.roll(images, 1, axis=2))  # 1-pixel translation
    f3 = tiny_digits_scorer.fid(np.roll(images, 3, axis=2))
    dark = (images.astype(np.float32) * 0.5).astype(np.uint8)
    f_dark = tiny_digits_scorer.fid(dark)
    assert 0 <= f0 < f1 < f3
    assert f_dark > f0 * 5


def test_fid_matches_clean_fid_folder_pipeline(tiny_digits_scorer, digit_images, tmp_path):
    """The extractor is a genuine clean-fid custom_feat_extractor: folder FID == in-memory FID."""
    from PIL import Image

    images, _ = digit_images
    a, b = images[:120], np.roll(images[120:240], 1, axis=1)
    for d, imgs in (("a", a), ("b", b)):
        (tmp_path / d).mkdir()
        for i, img in enumerate(imgs):
            Image.fromarray(img[..., 0]).save(tmp_path / d / f"{i:04d}.png")
    folder = tiny_digits_scorer.compute_fid_folders(tmp_path / "a", tmp_path / "b")
    fa, fb = tiny_digits_scorer.features(a), tiny_digits_scorer.features(b)
    from sampling.scoring import frechet_distance
    mem = frechet_distance(*feature_stats(fa), *feature_stats(fb))
    assert folder == pytest.approx(mem, rel=1e-4, abs=1e-6)


def test_accuracy_on_known_labels(tiny_digits_scorer, digit_images):
    images, _ = digit_images
    imgs = images[:200]
    pred = tiny_digits_scorer.predict(imgs)
    assert pred.shape == (200,) and pred.dtype.kind == "i"
    assert tiny_digits_scorer.accuracy(imgs, pred) == 1.0
    assert tiny_digits_scorer.accuracy(imgs, (pred + 1) % 10) == 0.0
    half = pred.copy()
    half[::2] = (half[::2] + 1) % 10
    assert tiny_digits_scorer.accuracy(imgs, half) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        tiny_digits_scorer.accuracy(imgs, pred[:10])


def test_score_ok_record(tiny_digits_scorer, digit_images):
    images, labels = digit_images
    s = tiny_digits_scorer.score(_gen(images[:300], labels[:300]))
    assert s.ok and s.reason is None and s.n_images == 300
    assert math.isfinite(s.fid) and 0.0 <= s.content <= 1.0
    json.dumps(s.to_dict())
    # the record's values: FID of these images, accuracy against each image's own label
    assert s.fid == pytest.approx(tiny_digits_scorer.fid(images[:300]), rel=1e-12)
    assert s.content == tiny_digits_scorer.accuracy(images[:300], labels[:300])
    pred = tiny_digits_scorer.predict(images[:300])
    assert tiny_digits_scorer.score(_gen(images[:300], pred)).content == 1.0
    wrong = (pred + np.arange(300) % 9 + 1) % 10  # every label differs from the prediction
    assert tiny_digits_scorer.score(_gen(images[:300], wrong)).content == 0.0


def test_nonfinite_images_give_a_failure_record(tiny_digits_scorer):
    x = torch.zeros((6, 1, 8, 8))
    x[2, 0, 3, 3] = float("nan")
    x[4, 0, 0, 0] = float("inf")
    u8, bad = to_uint8(x)
    assert u8.dtype == np.uint8 and u8.shape == (6, 8, 8, 1)
    assert bad.tolist() == [False, False, True, False, True, False]
    assert (u8[2] == 0).all()  # zeroed, not wrapped around
    s = tiny_digits_scorer.score(_gen(u8, np.arange(6) % 10, bad))
    assert s.status == "failed" and not s.ok
    assert "2 of 6" in s.reason and "NaN" in s.reason
    d = s.to_dict()
    assert d["fid"] is None and d["content"] is None
    json.dumps(d)


def test_too_few_images_is_a_failure_not_a_crash(tiny_digits_scorer, digit_images):
    images, labels = digit_images
    s = tiny_digits_scorer.score(_gen(images[:1], labels[:1]))
    assert s.status == "failed" and "at least 2" in s.reason


def test_constant_images_still_score(tiny_digits_scorer):
    """A collapsed model (all images identical) gets a large finite FID, not an exception."""
    imgs = np.zeros((50, 8, 8, 1), dtype=np.uint8)
    s = tiny_digits_scorer.score(_gen(imgs, np.arange(50) % 10))
    assert s.ok and s.fid > 0


def test_reference_stats_roundtrip_is_safetensors(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    mu, sigma = feature_stats(rng.normal(size=(100, 5)))
    save_reference_stats(tmp_path, mu, sigma, {"n_images": 100})
    mu2, sigma2, info = load_reference_stats(tmp_path)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2) and info["n_images"] == 100
    assert set(load_file(str(tmp_path / "stats.safetensors"))) == {"mu", "sigma"}


def test_scorer_load_from_prepared_dir(tiny_prepared_data, digit_images):
    from denoisers.registry import load_denoiser
    from sampling.evaluator import evaluate
    from sampling.scorers import make_scorer

    den = load_denoiser("digits", data_dir=tiny_prepared_data)
    scorer = make_scorer(den)
    assert isinstance(scorer, DigitsScorer)
    s1, g1 = evaluate(den, scorer, 20, seed=3)
    s2, g2 = evaluate(den, scorer, 20, seed=3)
    assert np.array_equal(g1.images, g2.images)
    assert s1.ok and s1.fid == s2.fid and s1.content == s2.content
    assert s1.extra["seed"] == 3 and s1.extra["steps"] == 2


@pytest.fixture(scope="module")
def tiny_bank(tiny_bank_of):
    return tiny_bank_of()[0]


def test_same_config_and_seeds_give_identical_images_and_scores(tiny_digits_denoiser,
                                                                tiny_digits_scorer, tiny_bank):
    from quant.apply import quantized
    from quant.config import QuantConfig
    from sampling.sampler import random_config
    from sampling.evaluator import evaluate

    den = tiny_digits_denoiser
    before = {k: v.clone() for k, v in den.model.state_dict().items()}
    cfg = QuantConfig("digits", random_config(den.layer_names(), tiny_bank.options, 0, 1))
    runs = []
    for _ in range(2):
        with quantized(den.model, cfg, tiny_bank):
            runs.append(evaluate(den, tiny_digits_scorer, 30, seed=4))
    (s1, g1), (s2, g2) = runs
    assert np.array_equal(g1.images, g2.images)
    assert s1.ok and s1.fid == s2.fid and s1.content == s2.content
    fp_score, fp_gen = evaluate(den, tiny_digits_scorer, 30, seed=4)
    assert not np.array_equal(fp_gen.images, g1.images)  # the config did change the model
    for k, v in den.model.state_dict().items():  # and the FP weights came back bit-exactly
        assert torch.equal(v, before[k])


def test_noise_measurement_on_a_tiny_model(tiny_digits_denoiser, tiny_digits_scorer, tiny_bank,
                                           tmp_path):
    from sampling.noise import NoiseParams, ScoreParams, measure_noise, write_noise_outputs

    params = NoiseParams(fp_seed_sets=2, random_configs=3, seed_a=0, seed_b=1)
    result, records = measure_noise(tiny_digits_denoiser, tiny_digits_scorer, tiny_bank, params,
                                    ScoreParams(images=20), progress=False,
                                    grid_path=tmp_path / "grid.png")
    for key in ("classifier_test_accuracy", "fp_generated_accuracy", "fp_fid_seed_std",
                "random_fid_std", "fid_signal_to_noise", "fid_retest_spearman"):
        assert key in result
    assert result["fid_signal_to_noise"] == pytest.approx(
        result["random_fid_std"] / result["fp_fid_seed_std"])
    # the figures are those of the seed sets they name
    from quant.apply import quantized
    from quant.config import QuantConfig
    from sampling.evaluator import evaluate

    den, scorer = tiny_digits_denoiser, tiny_digits_scorer
    fp = [evaluate(den, scorer, 20, seed=s)[0].fid for s in (0, 1)]
    assert result["fp_fids"] == pytest.approx(fp, rel=1e-9)
    assert result["fp_fid_seed_std"] == pytest.approx(np.std(fp, ddof=1), rel=1e-9)
    fid_a = [r["fid_a"] for r in records]
    assert result["random_fid_std"] == pytest.approx(np.std(fid_a, ddof=1), rel=1e-9)
    from sampling.sampler import random_config

    r0 = records[0]  # random config 0 of the config stream
    config = QuantConfig("digits", random_config(tiny_bank.layer_names, tiny_bank.options, params.config_seed, 0))
    assert config.config_id == r0["config_id"]
    with quantized(den.model, config, tiny_bank):
        a, _ = evaluate(den, scorer, 20, seed=params.seed_a)
        b, _ = evaluate(den, scorer, 20, seed=params.seed_b)
    assert (r0["fid_a"], r0["fid_b"]) == pytest.approx((a.fid, b.fid), rel=1e-9)
    with quantized(den.model, QuantConfig.uniform("digits", tiny_bank.layer_names, "uaq4"), tiny_bank):
        u, _ = evaluate(den, scorer, 20, seed=params.seed_a)
    assert result["uniform"]["uaq4"]["fid"] == pytest.approx(u.fid, rel=1e-9)
    assert len(records) == 3 and set(result["uniform"]) == set(tiny_bank.options)
    assert (tmp_path / "grid.png").stat().st_size > 1000
    write_noise_outputs(result, records, tmp_path / "noise.json", tmp_path / "c.csv")
    back = json.loads((tmp_path / "noise.json").read_text())
    assert back["random_configs"] == 3
    assert len((tmp_path / "c.csv").read_text().splitlines()) == 4
