"""Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel, on features only.

KID (Bińkowski et al. 2018, "Demystifying MMD GANs") is the squared maximum mean discrepancy between
the feature distributions, with k(x, y) = (gamma x.y + coef)^degree, gamma = 1/D, coef = 1, degree = 3.
For m features X and m features Y the unbiased estimator is

    MMD^2 = [sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m^2

(the cross term keeps i == j: x_i and y_i are independent). It is averaged over ``subsets`` random
subsets of ``subset_size`` from each set; the std over subsets is the population std. This is the
estimator of torchmetrics' ``KernelInceptionDistance`` (and of the paper's code); it is unbiased, so
it can be slightly negative for two samples of one distribution. Unlike FID it needs no Gaussian
fit and is fair at small sample counts, which is why it is reported next to FID.
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> np.ndarray:
    """k(x_i, y_j) = (gamma x_i . y_j + coef)^degree for x (N, D), y (M, D) -> (N, M); gamma = 1/D."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef) ** degree


def mmd2_unbiased(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> float:
    """Unbiased MMD^2 between equally sized feature sets x, y of shape (m, D), in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both have shape (m, D), got {x.shape} and {y.shape}")
    m = x.shape[0]
    if m < 2:
        raise ValueError(f"need at least 2 samples per set, got {m}")
    k_xx = polynomial_kernel(x, x, degree, gamma, coef)
    k_yy = polynomial_kernel(y, y, degree, gamma, coef)
    k_xy = polynomial_kernel(x, y, degree, gamma, coef)
    off_xx = k_xx.sum() - np.trace(k_xx)
    off_yy = k_yy.sum() - np.trace(k_yy)
    return float((off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / m**2)


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
) -> tuple[float, float]:
    """(mean, std) of unbiased MMD^2 over ``subsets`` random subsets drawn without replacement.

    Args:
        real: features (N_real, D); fake: features (N_fake, D).
        subset_size: samples per subset from each set; must not exceed N_real or N_fake.
        seed: the subsets come from ``np.random.default_rng(seed)``, so results are reproducible.
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must be (N, D) with the same D, got {real.shape} and {fake.shape}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if not 2 <= subset_size <= min(len(real), len(fake)):
        raise ValueError(
            f"subset_size must be in [2, min(N_real, N_fake)] = [2, {min(len(real), len(fake))}], got {subset_size}"
        )
    rng = np.random.default_rng(seed)
    scores = np.array(
        [
            mmd2_unbiased(
                real[rng.choice(len(real), subset_size, replace=False)],
                fake[rng.choice(len(fake), subset_size, replace=False)],
                degree,
                gamma,
                coef,
            )
            for _ in range(subsets)
        ]
    )
    return float(scores.mean()), float(scores.std())
