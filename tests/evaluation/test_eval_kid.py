"""KID: the unbiased polynomial-kernel MMD^2 against a closed form and against torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pokediff.evaluation.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel


def test_linear_kernel_closed_form() -> None:
    # With k(x, y) = x.y (degree 1, gamma 1, coef 0): sum_{i!=j} x_i.x_j = |sum x|^2 - sum |x_i|^2, so
    # MMD^2_u = (|Sx|^2 - sum|x|^2 + |Sy|^2 - sum|y|^2) / (m (m-1)) - 2 Sx.Sy / m^2.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 12, 5))
    m = 12
    sx, sy = x.sum(0), y.sum(0)
    expected = (sx @ sx - (x * x).sum() + sy @ sy - (y * y).sum()) / (m * (m - 1)) - 2 * sx @ sy / m**2
    assert mmd2_unbiased(x, y, degree=1, gamma=1.0, coef=0.0) == pytest.approx(expected, rel=1e-12)


def test_polynomial_kernel_definition() -> None:
    x = np.array([[1.0, 2.0], [0.0, -1.0]])
    y = np.array([[3.0, 1.0]])
    # gamma = 1/D = 0.5: (0.5 * 5 + 1)^3 = 42.875, (0.5 * -1 + 1)^3 = 0.125
    np.testing.assert_allclose(polynomial_kernel(x, y), [[42.875], [0.125]])


def test_mmd_matches_torchmetrics_poly_mmd() -> None:
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 0.3, size=(40, 64))
    y = rng.gamma(2.2, 0.3, size=(40, 64))
    expected = poly_mmd(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-10)


def test_kid_with_full_subsets_matches_torchmetrics_metric() -> None:
    # subset_size = N makes every subset a permutation of the whole set, and the estimator is
    # permutation invariant: torchmetrics' random subsets and ours then agree exactly.
    from torchmetrics.image.kid import KernelInceptionDistance

    rng = np.random.default_rng(2)
    real = rng.gamma(2.0, 0.3, size=(24, 32)).astype(np.float32)
    fake = rng.gamma(2.6, 0.3, size=(24, 32)).astype(np.float32)
    metric = KernelInceptionDistance(feature=nn.Identity(), subsets=3, subset_size=24)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    tm_mean, tm_std = (v.item() for v in metric.compute())
    mean, std = kernel_inception_distance(real, fake, subsets=3, subset_size=24)
    assert mean == pytest.approx(tm_mean, rel=1e-5)
    assert std == pytest.approx(0.0, abs=1e-12) and tm_std == pytest.approx(0.0, abs=1e-6)


def test_kid_is_reproducible_and_seed_dependent() -> None:
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(2, 60, 16))
    a = kernel_inception_distance(real, fake, subsets=10, subset_size=20, seed=7)
    assert a == kernel_inception_distance(real, fake, subsets=10, subset_size=20, seed=7)
    assert a != kernel_inception_distance(real, fake, subsets=10, subset_size=20, seed=8)
    assert a[1] > 0


def test_kid_on_inception_features(train_features, other_features, fresh_features) -> None:
    different = kernel_inception_distance(train_features, other_features, subsets=50, subset_size=16)[0]
    same_dist = kernel_inception_distance(train_features, fresh_features, subsets=50, subset_size=16)
    identical = kernel_inception_distance(train_features, train_features, subsets=50, subset_size=16)[0]
    assert different > 0.05
    # Same distribution: the unbiased estimator is ~0 (within its spread over subsets).
    assert abs(same_dist[0]) < max(3 * same_dist[1], 0.1 * different)
    assert abs(identical) < 0.1 * different


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subset_size": 100}, "subset_size must be in"),
        ({"subset_size": 1}, "subset_size must be in"),
        ({"subsets": 0}, "subsets must be >= 1"),
    ],
)
def test_kid_bad_arguments(kwargs, match) -> None:
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match=match):
        kernel_inception_distance(x, x, **{"subsets": 1, "subset_size": 5, **kwargs})


def test_kid_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="same D"):
        kernel_inception_distance(np.zeros((10, 4)), np.zeros((10, 5)), subset_size=5)
