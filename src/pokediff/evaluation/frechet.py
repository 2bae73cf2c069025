"""The Fréchet distance between two Gaussians: pure numpy/scipy, float64, no feature extraction.

FID (Heusel et al. 2017, eq. 6) fits a Gaussian N(mu, Sigma) to each set of Inception features and
takes the squared 2-Wasserstein (Fréchet) distance between them:

    d^2 = ||mu_1 - mu_2||^2 + tr(Sigma_1) + tr(Sigma_2) - 2 tr((Sigma_1 Sigma_2)^(1/2))

Only the trace of the matrix square root is needed. With fewer samples than dimensions (a few
hundred images, 2048 features) both covariances are singular, and ``scipy.linalg.sqrtm`` of the
non-symmetric product Sigma_1 Sigma_2 is ill-conditioned: it can return complex parts or infinities
(pytorch-fid then retries with eps * I added). We avoid it: Sigma_1 Sigma_2 is similar to the symmetric
PSD matrix M = Sigma_1^(1/2) Sigma_2 Sigma_1^(1/2) (same eigenvalues), so

    tr((Sigma_1 Sigma_2)^(1/2)) = sum_i sqrt(lambda_i(M)),

and ``eigh`` of a symmetric matrix is backward stable. The null space of a singular covariance shows
up as eigenvalues of rounding size (about D * eps * lambda_max, of either sign); their square roots
(~1e-8 each, over ~2000 of them) would add up to a visible error, so eigenvalues below that level are
treated as exact zeros, as ``np.linalg.pinv`` does. For sample covariances this matches the exact
value (nuclear norm of X_1c X_2c^T, see the tests) to ~1e-13; torchmetrics, which takes
``eigvals(Sigma_1 @ Sigma_2).sqrt().real``, is within ~1e-7 relative of it.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

# LAPACK's symmetric eigensolver runs single-threaded here: with OpenBLAS' 2 threads on the shared
# 2-core dev machines, eigh of a 2048 x 2048 matrix took 20 s instead of 1 s (threads spin-waiting on
# each other); matrix products are as fast either way.
_LAPACK_THREADS = 1


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64.

    The covariance divides by N - 1, as torchmetrics, pytorch-fid and the original TF code do.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _zero_rounding_noise(eigvals: np.ndarray) -> np.ndarray:
    """Eigenvalues (D,) of a PSD matrix with those at rounding level (<= D eps lambda_max) set to 0."""
    cutoff = max(float(eigvals.max(initial=0.0)), 0.0) * eigvals.shape[0] * np.finfo(np.float64).eps
    return np.where(eigvals > cutoff, eigvals, 0.0)


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (D, D), via ``eigh``."""
    sym = (sigma + sigma.T) / 2
    with threadpool_limits(_LAPACK_THREADS, user_api="blas"):
        eigvals, eigvecs = np.linalg.eigh(sym)
    return (eigvecs * np.sqrt(_zero_rounding_noise(eigvals))) @ eigvecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, sqrt_sigma1: np.ndarray | None = None) -> float:
    """tr((Sigma_1 Sigma_2)^(1/2)) = sum of sqrt of the eigenvalues of Sigma_1^½ Sigma_2 Sigma_1^½.

    ``sqrt_sigma1`` = ``psd_sqrt(sigma1)`` may be passed in when Sigma_1 is a fixed reference: it
    saves one of the two D x D eigendecompositions per call.
    """
    root1 = psd_sqrt(sigma1) if sqrt_sigma1 is None else sqrt_sigma1
    m = root1 @ sigma2 @ root1
    with threadpool_limits(_LAPACK_THREADS, user_api="blas"):
        eigvals = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(_zero_rounding_noise(eigvals)).sum())


def _as_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a vector (D,), got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{name} must have shape ({mu.shape[0]}, {mu.shape[0]}), got {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{name} / sigma{name} contain NaN or infinity")
    return mu, sigma


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    sqrt_sigma1: np.ndarray | None = None,
) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); shapes (D,), (D, D).

    Symmetric in its two Gaussians. ``sqrt_sigma1``: optional cached ``psd_sqrt(sigma1)``.
    Not clipped at 0: identical inputs give a value within rounding of 0 (possibly -1e-13).
    """
    mu1, sigma1 = _as_stats(mu1, sigma1, "1")
    mu2, sigma2 = _as_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 have different dimensions: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    tr_covmean = trace_sqrt_product(sigma1, sigma2, sqrt_sigma1)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))
