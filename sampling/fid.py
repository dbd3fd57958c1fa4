"""Exact, fast Fréchet distance (FID) against fixed reference statistics.

The Fréchet (2-Wasserstein) distance between two Gaussians N(mu1, s1) and N(mu2, s2) is
(Dowson & Landau 1982, "The Fréchet distance between multivariate normal distributions",
J. Multivariate Anal. 12(3):450-455)

    d^2 = ||mu1 - mu2||^2 + Tr(s1) + Tr(s2) - 2 Tr((s1^{1/2} s2 s1^{1/2})^{1/2}),

and since s1 s2 = s1^{1/2} (s1^{1/2} s2 s1^{1/2}) s1^{-1/2} is similar to that symmetric PSD
matrix, the last trace equals Tr(sqrtm(s1 s2)): clean-fid's formula
``||mu1 - mu2||^2 + Tr(s1) + Tr(s2) - 2 Tr(sqrtm(s1 s2))`` (`cleanfid.fid.frechet_distance`).

clean-fid evaluates it with `scipy.linalg.sqrtm` on the non-symmetric d×d product (a Schur
decomposition: ~16-20 s for d = 2048 on one core). Here the reference (mu_r, sigma_r) is fixed
for many scores, so `FrechetReference` precomputes S = sigma_r^{1/2} once (symmetric, by `eigh`,
eigenvalues that are negative or 0 up to rounding set to 0). Then per score

    Tr(sqrtm(sigma_g sigma_r)) = Tr(sqrtm(S sigma_g S)) = sum_i sqrt(lambda_i),  lambda_i > 0,

lambda_i the eigenvalues of the symmetric PSD matrix S sigma_g S (`eigvalsh`). From n generated
features (rows of X, centred Xc, sigma_g = Xc^T Xc / (n-1)) with Y = Xc S:

    S sigma_g S = Y^T Y / (n-1)    (d×d)    and    Y Y^T / (n-1)    (n×n)

have the same nonzero eigenvalues, so for n < d only an n×n `eigvalsh` is needed.

How the value differs from clean-fid's: ours is the exact value up to floating-point rounding.
Symmetric eigensolvers are backward stable, so each eigenvalue of S sigma_g S comes back within
~m·eps·max(lambda) (m×m matrix); the eigenvalues that are 0 in exact arithmetic (at least d-n+1
of them when n < d) come back as ± values of that size, and sqrt would turn each into ~1e-8 of
noise with a positive bias. We set eigenvalues at or below that bound to 0 (the rank tolerance
of `numpy.linalg.matrix_rank`; `trace_sqrt_from_eigenvalues`), the same for sigma_r's when
forming S. clean-fid instead (1) runs a non-symmetric Schur square root of the product, which is
singular for n < d (sigma_g has rank ≤ n-1), so its zero eigenvalues do add sqrt-of-rounding
terms to the trace, (2) when that result is not finite, adds eps·I (eps = 1e-6) to *both*
covariances and recomputes, i.e. returns the distance between slightly different Gaussians,
and (3) takes the real part of a complex result (raising when the diagonal's imaginary part
exceeds 1e-3). Measured (tests/test_fid.py, against an independent SVD route, the nuclear norm
of (X - mu_g) S / sqrt(n-1)): ours within ~1e-14 relative in every case; clean-fid equal for
n > d, but low by 5e-8 (d = 64, n = 40), 2e-7 (d = 256, n = 100), 3e-7 (d = 512, n = 200) and
~1e-6 at d = 2048, n = 1000 (bench/fid.py, bench/results/fid.json). The tests pin
|ours - clean-fid| ≤ 1e-6 relative on well-conditioned data.

Float64 throughout. Bad input (shapes, non-finite values) raises `FidInputError`, a
`core.errors.QsensError` (and a `ValueError`, so scorers that record `ValueError` as a failed
score keep doing so) whose one-line message names what is wrong.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg

from core.errors import QsensError

__all__ = ["FidInputError", "FrechetReference", "frechet_distance_between_features", "rounding_tolerance",
           "trace_sqrt_from_eigenvalues"]

# A covariance must be symmetric to this relative tolerance (max |s - s^T| / max |s|); np.cov's
# output is symmetric to rounding, anything further off is not a covariance matrix.
_SYMMETRY_RTOL = 1e-8


class FidInputError(QsensError, ValueError):
    """Features or statistics of the wrong shape, or with NaN/inf values."""


def trace_sqrt_from_eigenvalues(eigenvalues: np.ndarray) -> float:
    """sum_i sqrt(lambda_i) over the eigenvalues of a symmetric PSD matrix, rounding removed.

    A symmetric eigensolver returns each eigenvalue to within ~ m·eps·max|lambda| (m the
    matrix size), so a true zero comes back as a ± value of that size, and sqrt turns it into
    ~1e-8·sqrt(max|lambda|): summed over the many zeros of a rank-deficient product (n < d) it
    biases the trace upward. Eigenvalues at or below that bound (the rank tolerance of
    `numpy.linalg.matrix_rank`) are therefore taken as 0, the negative ones included.
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    return float(np.sqrt(ev[ev > rounding_tolerance(ev)]).sum())


def rounding_tolerance(eigenvalues: np.ndarray) -> float:
    """m·eps·max|lambda|: eigenvalues of a symmetric m×m PSD matrix at or below it are 0 + rounding."""
    ev = np.asarray(eigenvalues)
    return ev.size * np.finfo(np.float64).eps * float(np.abs(ev).max()) if ev.size else 0.0


def _finite(name: str, a: np.ndarray) -> None:
    bad = a.size - int(np.count_nonzero(np.isfinite(a)))
    if bad:
        raise FidInputError(f"{name}: {bad} non-finite value{'s' if bad != 1 else ''} (NaN/inf)")


def _as_mean(name: str, mu, d: int | None = None, ref: str = "the reference") -> np.ndarray:
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 1 or mu.size == 0:
        raise FidInputError(f"{name} must be a non-empty 1-D vector, got shape {mu.shape}")
    if d is not None and mu.shape[0] != d:
        raise FidInputError(f"{name} has {mu.shape[0]} entries but {ref} has {d}")
    _finite(name, mu)
    return mu


def _as_cov(name: str, sigma, d: int, ref: str) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (d, d):
        raise FidInputError(f"{name} has shape {sigma.shape} but {ref} has dimension {d} "
                            f"(expected ({d}, {d}))")
    _finite(name, sigma)
    scale = float(np.abs(sigma).max()) if sigma.size else 0.0
    asym = float(np.abs(sigma - sigma.T).max()) if sigma.size else 0.0
    if asym > _SYMMETRY_RTOL * max(scale, np.finfo(np.float64).tiny):
        raise FidInputError(f"{name} is not symmetric (max |sigma - sigma^T| = {asym:.3g}, "
                            f"max |sigma| = {scale:.3g}): not a covariance matrix")
    return 0.5 * (sigma + sigma.T)


class FrechetReference:
    """Fixed reference statistics (mu_r, sigma_r), precomputed for many exact FIDs against them.

    Build once (one d×d `eigh`: ~2 s at d = 2048 on one core), then score each generated set with
    `distance_from_features(features)` (one n×d×d product, one min(n, d)-sized `eigvalsh`) or
    `distance(mu, sigma)` (two d×d×d products, one d×d `eigvalsh`). Both return

        ||mu - mu_r||^2 + Tr(sigma) + Tr(sigma_r) - 2 Tr(sqrtm(sigma sigma_r)),

    the value `cleanfid.fid.frechet_distance(mu, sigma, mu_r, sigma_r)` approximates (see the
    module docstring for when and by how much the two differ).

    Attributes: `mu` (d,), `trace_sigma` = Tr(sigma_r), `sqrt_sigma` = S = sigma_r^{1/2}
    (symmetric PSD, d×d), `clipped_eigenvalues` = how many of sigma_r's eigenvalues were set
    to 0 in S because they are negative or within rounding of 0 (≤ d·eps·max eigenvalue: a
    singular sigma_r, e.g. from fewer reference images than dimensions), all float64.
    """

    def __init__(self, mu, sigma) -> None:
        self.mu = _as_mean("reference mean", mu)
        d = self.mu.shape[0]
        sigma = _as_cov("reference covariance", sigma, d, ref="the reference mean")
        self.trace_sigma = float(np.trace(sigma))
        w, v = linalg.eigh(sigma)
        zero = w <= rounding_tolerance(w)  # negative, or positive only by rounding: sqrt would
        self.clipped_eigenvalues = int(np.count_nonzero(zero))  # turn 1e-16 into 1e-8 noise in S
        s = (v * np.sqrt(np.where(zero, 0.0, w))) @ v.T
        self.sqrt_sigma = 0.5 * (s + s.T)

    @classmethod
    def from_features(cls, features) -> "FrechetReference":
        """Reference from (n, d) features: mean and unbiased covariance, as clean-fid takes them."""
        f = _as_features("reference features", features)
        return cls(f.mean(axis=0), np.cov(f, rowvar=False))

    @property
    def dim(self) -> int:
        """D: the feature dimension."""
        return int(self.mu.shape[0])

    # -- per-score work --------------------------------------------------------------------------
    def trace_sqrt_product(self, sigma) -> float:
        """Tr(sqrtm(sigma sigma_r)) = Tr(sqrtm(S sigma S)) by a d×d symmetric `eigvalsh`."""
        sigma = _as_cov("covariance", sigma, self.dim, ref="the reference")
        return self._trace_sqrt_product(sigma)

    def _trace_sqrt_product(self, sigma: np.ndarray) -> float:
        m = self.sqrt_sigma @ sigma @ self.sqrt_sigma
        m = 0.5 * (m + m.T)
        return trace_sqrt_from_eigenvalues(linalg.eigvalsh(m, overwrite_a=True, check_finite=False))

    def distance(self, mu, sigma) -> float:
        """FID of N(mu, sigma) against the reference (the d×d symmetric route)."""
        mu = _as_mean("mean", mu, self.dim)
        sigma = _as_cov("covariance", sigma, self.dim, ref="the reference")
        diff = mu - self.mu
        return float(diff @ diff + np.trace(sigma) + self.trace_sigma
                     - 2.0 * self._trace_sqrt_product(sigma))

    def distance_from_features(self, features) -> float:
        """FID of (n, d) features (their mean and unbiased covariance) against the reference.

        Y = (X - mean) S; the eigenvalues of Y Y^T/(n-1) (n×n, used when n < d) or Y^T Y/(n-1)
        (d×d, when n ≥ d) are the nonzero eigenvalues of S sigma_g S. Equal to
        `distance(features.mean(0), np.cov(features, rowvar=False))` up to rounding.
        """
        x = _as_features("features", features, self.dim)
        n = x.shape[0]
        mu = x.mean(axis=0)
        xc = x - mu
        diff = mu - self.mu
        trace_g = float(np.einsum("ij,ij->", xc, xc)) / (n - 1)
        y = xc @ self.sqrt_sigma
        gram = (y @ y.T) if n < self.dim else (y.T @ y)  # numpy uses syrk for A @ A.T
        gram /= n - 1
        ev = linalg.eigvalsh(gram, overwrite_a=True, check_finite=False)
        return float(diff @ diff + trace_g + self.trace_sigma - 2.0 * trace_sqrt_from_eigenvalues(ev))


def _as_features(name: str, features, d: int | None = None) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise FidInputError(f"{name} must be a 2-D (n, d) array, got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise FidInputError(f"{name} have {x.shape[1]} columns but the reference has {d}")
    if x.shape[0] < 2:
        raise FidInputError(f"{name}: need at least 2 rows to estimate a covariance, got {x.shape[0]}")
    _finite(name, x)
    return x


def frechet_distance_between_features(x1, x2) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (n1, d) and (n2, d)
    (mean and unbiased covariance each, as clean-fid fits them), exact up to rounding.

    With centred A = X1 - mu1, B = X2 - mu2, sigma1 sigma2 = A^T A B^T B / ((n1-1)(n2-1)), whose
    nonzero eigenvalues are those of M M^T with M = A B^T (n1×n2), so
    Tr(sqrtm(sigma1 sigma2)) = ||A B^T||_* / sqrt((n1-1)(n2-1)) (nuclear norm: the sum of M's
    singular values, no square root of rounding noise). That is O(n1·n2·d) and one small SVD
    instead of a d×d Schur square root (~16-20 s at d = 2048): the paired "FID to FP" label at
    32 images costs milliseconds. When a set has ≥ d rows the d×d symmetric route of
    `FrechetReference` is used instead. Raises FidInputError (shapes, < 2 rows, non-finite).
    """
    a = _as_features("features", x1)
    b = _as_features("features", x2, a.shape[1])
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    if max(n1, n2) >= d:
        return FrechetReference.from_features(b).distance_from_features(a)
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    ac, bc = a - mu1, b - mu2
    diff = mu1 - mu2
    trace1 = float(np.einsum("ij,ij->", ac, ac)) / (n1 - 1)
    trace2 = float(np.einsum("ij,ij->", bc, bc)) / (n2 - 1)
    nuclear = float(linalg.svdvals(ac @ bc.T, check_finite=False).sum())
    return float(diff @ diff + trace1 + trace2 - 2.0 * nuclear / np.sqrt((n1 - 1) * (n2 - 1)))
