"""FrechetReference: the exact FID against clean-fid's `frechet_distance` and an independent SVD route."""
from __future__ import annotations

import contextlib
import functools
import io
import warnings

import numpy as np
import pytest
from scipy import linalg
from threadpoolctl import threadpool_limits

import sampling.fid as fid_mod
from core.errors import QsensError
from sampling.fid import FidInputError, FrechetReference


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Small matrices: one BLAS thread is as fast, and far faster on a shared, busy CPU."""
    with threadpool_limits(1):
        yield


def cleanfid(mu1, sigma1, mu2, sigma2) -> float:
    from cleanfid.fid import frechet_distance

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy ≥ 1.16: sqrtm's deprecated disp=
        return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def stats(x):
    return x.mean(axis=0), np.cov(x, rowvar=False)


@functools.lru_cache(maxsize=None)
def cleanfid_of_case(d: int, n: int, seed: int = 0) -> float:
    ref, gen = features(d, 4 * d, n, seed)
    return cleanfid(*stats(gen), *stats(ref))


@functools.lru_cache(maxsize=None)
def features(d: int, n_ref: int, n_gen: int, seed: int = 0):
    """Reference / generated features: Cov eigenvalues 3/k (far from 1, so sigma ≠ sqrt(sigma)),
    the generated factor mixed and rescaled, its mean shifted: well-conditioned, FID ≈ 10-40 %
    of the traces."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = np.sqrt(3.0 / np.arange(1, d + 1))[:, None] * q
    mu = rng.random(d)
    ref = rng.standard_normal((n_ref, d)) @ a + mu
    a_g = (np.sqrt(1.0 + 0.3 * rng.uniform(-1, 1, d))[:, None] * a) @ (
        np.eye(d) + 0.2 * rng.standard_normal((d, d)) / np.sqrt(d))
    gen = rng.standard_normal((n_gen, d)) @ a_g + mu + 0.1 * rng.standard_normal(d)
    ref.setflags(write=False)  # cached: shared between tests (and inputs must not be written)
    gen.setflags(write=False)
    return ref, gen


def exact_by_svd(ref: np.ndarray, gen: np.ndarray) -> float:
    """Independent route: Tr sqrt(sigma_g sigma_r) = nuclear norm of (X_g - mu_g) sigma_r^{1/2}/sqrt(n-1),
    sigma_r^{1/2} by scipy's sqrtm (sigma_r full rank here), singular values by SVD."""
    mu_r, sigma_r = stats(ref)
    mu_g, sigma_g = stats(gen)
    s = np.real(linalg.sqrtm(sigma_r))
    y = (gen - mu_g) @ s / np.sqrt(len(gen) - 1)
    diff = mu_g - mu_r
    return float(diff @ diff + np.trace(sigma_g) + np.trace(sigma_r) - 2 * linalg.svdvals(y).sum())


CASES = [(64, 500), (64, 40), (256, 100)]  # (d, n): n > d (d×d route), n < d (n×n route) twice


@pytest.mark.parametrize("d,n", CASES)
def test_equals_cleanfid(d, n):
    ref, gen = features(d, 4 * d, n)
    fr = FrechetReference(*stats(ref))
    expected = cleanfid_of_case(d, n)
    assert expected > 0.05 * (np.trace(stats(gen)[1]) + fr.trace_sigma)  # a far-from-zero FID
    ours = fr.distance_from_features(gen)
    assert abs(ours - expected) <= 1e-6 * expected
    assert abs(fr.distance(*stats(gen)) - expected) <= 1e-6 * expected


@pytest.mark.parametrize("d,n", CASES)
def test_exact_against_svd_route(d, n):
    """Ours matches an independent exact route to ~1e-12; where n < d, clean-fid's Schur sqrtm of
    the singular product is the less exact one (the ~1e-7 gaps above are clean-fid's)."""
    ref, gen = features(d, 4 * d, n)
    exact = exact_by_svd(ref, gen)
    fr = FrechetReference(*stats(ref))
    assert abs(fr.distance_from_features(gen) - exact) <= 1e-10 * exact
    assert abs(fr.distance(*stats(gen)) - exact) <= 1e-10 * exact


@pytest.mark.parametrize("d,n", CASES)
def test_features_route_equals_stats_route(d, n):
    ref, gen = features(d, 4 * d, n, seed=3)
    fr = FrechetReference.from_features(ref)
    a, b = fr.distance_from_features(gen), fr.distance(*stats(gen))
    assert abs(a - b) <= 1e-10 * abs(b)


def test_n_equal_to_d_and_float32_features():
    ref, gen = features(32, 200, 32, seed=5)
    fr = FrechetReference(*stats(ref))
    g32 = gen.astype(np.float32)
    expected = fr.distance(*stats(g32.astype(np.float64)))
    assert abs(fr.distance_from_features(g32) - expected) <= 1e-10 * expected


@pytest.mark.parametrize("n", [500, 40])
def test_identical_sets_give_zero(n):
    ref, _ = features(64, n, 2)
    fr = FrechetReference.from_features(ref)
    scale = fr.trace_sigma
    assert abs(fr.distance_from_features(ref)) <= 1e-9 * scale
    assert abs(fr.distance(*stats(ref))) <= 1e-9 * scale


def test_rank_deficient_reference():
    """A reference from fewer rows than dimensions: sigma_r singular, its rounding-negative
    eigenvalues clipped in S; both routes still agree with each other and with the SVD route
    built on our S (sqrtm of a singular matrix is itself inexact)."""
    ref, gen = features(64, 30, 50, seed=7)
    fr = FrechetReference(*stats(ref))
    assert fr.clipped_eigenvalues > 0
    np.testing.assert_allclose(fr.sqrt_sigma @ fr.sqrt_sigma, stats(ref)[1], atol=1e-12 * fr.trace_sigma)
    a, b = fr.distance_from_features(gen), fr.distance(*stats(gen))
    y = (gen - gen.mean(0)) @ fr.sqrt_sigma / np.sqrt(len(gen) - 1)
    diff = gen.mean(0) - fr.mu
    exact = diff @ diff + np.trace(stats(gen)[1]) + fr.trace_sigma - 2 * linalg.svdvals(y).sum()
    assert abs(a - exact) <= 1e-10 * exact and abs(b - exact) <= 1e-10 * exact
    assert abs(a - cleanfid(*stats(gen), *stats(ref))) <= 1e-6 * exact


# --- the tests above catch the bugs they are meant to catch --------------------------------------
@pytest.mark.parametrize("d,n", CASES)
@pytest.mark.parametrize("bug", ["no_trace_sqrt_term", "sigma_not_its_sqrt", "no_reference_trace"])
def test_a_buggy_formula_is_far_from_cleanfid(d, n, bug, monkeypatch):
    ref, gen = features(d, 4 * d, n)
    fr = FrechetReference(*stats(ref))
    if bug == "no_trace_sqrt_term":
        monkeypatch.setattr(fid_mod, "trace_sqrt_from_eigenvalues", lambda ev: 0.0)
    elif bug == "sigma_not_its_sqrt":
        fr.sqrt_sigma = stats(ref)[1]
    else:
        fr.trace_sigma = 0.0
    expected = cleanfid_of_case(d, n)
    assert abs(fr.distance_from_features(gen) - expected) > 1e-3 * expected
    assert abs(fr.distance(*stats(gen)) - expected) > 1e-3 * expected


# --- errors ------------------------------------------------------------------------------------------
def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, QsensError) and "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def ref64():
    ref, _ = features(64, 256, 2)
    return FrechetReference(*stats(ref))


def test_feature_column_mismatch(ref64):
    with pytest.raises(FidInputError) as e:
        ref64.distance_from_features(np.zeros((10, 2048)))
    assert one_line(e) == "features have 2048 columns but the reference has 64"


@pytest.mark.parametrize("bad,words", [
    (np.zeros(64), "2-D (n, d) array, got shape (64,)"),
    (np.zeros((2, 3, 64)), "got shape (2, 3, 64)"),
    (np.zeros((1, 64)), "at least 2 rows"),
])
def test_feature_shape_errors(ref64, bad, words):
    with pytest.raises(QsensError) as e:
        ref64.distance_from_features(bad)
    assert words in one_line(e)


def test_nonfinite_features(ref64):
    x = np.ones((10, 64))
    x[3, 5] = np.nan
    x[4, 6] = np.inf
    with pytest.raises(QsensError) as e:
        ref64.distance_from_features(x)
    assert one_line(e) == "features: 2 non-finite values (NaN/inf)"
    with pytest.raises(ValueError):  # scorers record ValueError as a failed score
        ref64.distance_from_features(x)


def test_stats_errors(ref64):
    mu, sigma = np.zeros(64), np.eye(64)
    with pytest.raises(QsensError) as e:
        ref64.distance(np.zeros(63), sigma)
    assert one_line(e) == "mean has 63 entries but the reference has 64"
    with pytest.raises(QsensError) as e:
        ref64.distance(mu, np.eye(32))
    assert "covariance has shape (32, 32) but the reference has dimension 64" in one_line(e)
    with pytest.raises(QsensError) as e:
        ref64.distance(mu, np.triu(np.ones((64, 64))))
    assert "covariance is not symmetric" in one_line(e)
    s = np.eye(64)
    s[0, 0] = np.nan
    with pytest.raises(QsensError) as e:
        ref64.distance(mu, s)
    assert one_line(e) == "covariance: 1 non-finite value (NaN/inf)"


def test_reference_errors():
    with pytest.raises(QsensError) as e:
        FrechetReference(np.zeros(4), np.eye(5))
    assert "reference covariance has shape (5, 5) but the reference mean has dimension 4" in one_line(e)
    with pytest.raises(QsensError) as e:
        FrechetReference(np.zeros((4, 4)), np.eye(4))
    assert "reference mean must be a non-empty 1-D vector, got shape (4, 4)" in one_line(e)
    with pytest.raises(QsensError) as e:
        FrechetReference(np.zeros(0), np.zeros((0, 0)))
    assert "got shape (0,)" in one_line(e)
    with pytest.raises(QsensError) as e:
        FrechetReference.from_features(np.zeros((1, 4)))
    assert "reference features: need at least 2 rows" in one_line(e)


@pytest.mark.parametrize("d,n1,n2", [(256, 40, 40), (256, 30, 50), (64, 100, 100)])
def test_two_feature_sets_exact_against_svd_route(d, n1, n2):
    """The paired "FID to FP" route (n×n nuclear norm; d×d when n ≥ d) equals the independent
    sqrtm + SVD route to rounding, and clean-fid's Schur sqrtm to its own ~1e-6."""
    from sampling.fid import frechet_distance_between_features

    ref, _ = features(d, 4 * d, 1)
    _, gen = features(d, 1, max(n1, n2), seed=1)
    x1, x2 = gen[:n1], ref[:n2]
    # the SVD route needs a full-rank sigma_2: take it from a set with more rows than d
    wide = ref[: 2 * d]
    assert frechet_distance_between_features(x1, wide) == pytest.approx(exact_by_svd(wide, x1), rel=1e-10)
    got = frechet_distance_between_features(x1, x2)
    assert got == pytest.approx(cleanfid(*stats(x1), *stats(x2)), rel=1e-5)
    assert got == pytest.approx(frechet_distance_between_features(x2, x1), rel=1e-10)  # symmetric
    assert frechet_distance_between_features(x1, x1) == pytest.approx(0.0, abs=1e-9 * np.trace(stats(x1)[1]))
