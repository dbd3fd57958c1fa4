"""Shared fixtures and helpers: TINY random models of the real classes, built in well under a
second, their banks, a prepared data dir, and the in-process CLI runner. Every test file takes
them from here (none builds its own copy).

Nothing here needs `data/`: the digits fixtures are untrained models of the real diffusers
classes (UNet2DModel / DiTTransformer2DModel) and an untrained digits classifier whose FID
reference statistics are computed on the spot from the real (bundled) digits. Fixtures that set
torch's thread count restore it.
"""
from __future__ import annotations

import contextlib
import io
import subprocess

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


def run_qsens(*args: str) -> subprocess.CompletedProcess:
    """The real CLI in this process (a subprocess would re-import torch every time): exit code,
    stdout and stderr; argparse's own errors (SystemExit) are exit codes like the others."""
    from qsens.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny_bank_of():
    """`make(options=None) -> (bank, denoiser)`: the bank of the untrained tiny `digits` UNet
    (seed 0) for `options` (None: the bank's default six), built once per session and option
    list, with a fresh denoiser of the same weights on every call (tests may change its weights)."""
    from denoisers.digits import tiny_digits_denoiser as make_denoiser
    from quant.bank import build_bank

    banks: dict = {}

    def make(options=None):
        key = None if options is None else tuple(options)
        with one_thread():
            den = make_denoiser("unet", seed=0)
            if key not in banks:
                kw = {} if key is None else {"options": list(key)}
                banks[key] = build_bank(den.model, **kw, model_name="digits", progress=False)
        return banks[key], den

    return make


@pytest.fixture(scope="session")
def prepared_with_bank(tiny_prepared_data):
    """`tiny_prepared_data` with the digits bank built by `qsens bank build` (DATA/bank/digits)."""
    bank = tiny_prepared_data / "bank" / "digits"
    if not (bank / "bank.json").exists():
        with one_thread():
            done = run_qsens("bank", "build", "digits", "--data-dir", tiny_prepared_data, "--out", bank, "--quiet")
        assert done.returncode == 0, done.stderr
    return tiny_prepared_data
