"""Shared fixtures: TINY random models of the real classes, built in well under a second.

Nothing here needs `data/`: the digits fixtures are untrained models of the real diffusers
classes (UNet2DModel / DiTTransformer2DModel) and an untrained digits classifier whose FID
reference statistics are computed on the spot from the real (bundled) digits.
"""
from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is as fast, and far faster on a shared, oversubscribed CPU."""
    with one_thread():
        yield


@pytest.fixture
def tiny_digits_denoiser():
    """Untrained tiny `digits` (UNet2DModel, 8×8, 2 DPM-Solver++ steps, batch 8)."""
    from denoisers.digits import tiny_digits_denoiser as make

    return make("unet", seed=0)


@pytest.fixture
def tiny_digits_dit():
    """Untrained tiny `digits-dit` (DiTTransformer2DModel, 1 block)."""
    from denoisers.digits import tiny_digits_denoiser as make

    return make("dit", seed=0)


@pytest.fixture(scope="session")
def digit_images():
    """All 1,797 real digits as uint8 (N, 8, 8, 1) and their labels."""
    from denoisers.digits import load_digit_images

    images, labels = load_digit_images()
    return images[..., None], labels


@pytest.fixture(scope="session")
def tiny_digits_scorer(digit_images):
    """A `DigitsScorer` with an untrained (seeded) classifier and real-digit reference stats."""
    from denoisers.digits import DigitsClassifier
    from sampling.scoring import DigitsScorer, compute_digits_reference

    torch.manual_seed(0)
    clf = DigitsClassifier().eval()
    with one_thread():
        mu, sigma, _ = compute_digits_reference(clf, digit_images[0][..., 0])
    return DigitsScorer(clf, mu, sigma, batch_size=256)


@pytest.fixture(scope="session")
def tiny_prepared_data(tmp_path_factory):
    """A `data/` dir produced by the real prepare code with tiny params (seconds): the `digits`
    model dir, classifier and reference stats, so CLI/registry paths can be exercised."""
    from denoisers.digits import DigitsParams, prepare_digits
    from sampling.scoring import compute_digits_reference

    root = tmp_path_factory.mktemp("qsens_data")
    params = DigitsParams(unet_channels=(8, 16), unet_head_dim=8, train_steps=3, train_batch=16,
                          classifier_epochs=1, steps=2, gen_batch_size=16)
    with one_thread():
        res = prepare_digits("digits", root, params, progress=False)
        compute_digits_reference(res.classifier, reference_dir=res.reference_dir)
    return root
