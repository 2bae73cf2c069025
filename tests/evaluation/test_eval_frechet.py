"""The Fréchet distance against closed forms for Gaussians with known mean and covariance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from pokediff.evaluation.frechet import fid_from_features, frechet_distance, gaussian_stats, psd_sqrt


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_diagonal_covariances_closed_form() -> None:
    # N(mu1, diag(a)) vs N(mu2, diag(b)): d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    a, b = rng.uniform(0.1, 4.0, size=(2, 16))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_commuting_covariances_closed_form() -> None:
    # Same eigenvectors Q: Sigma = Q diag(.) Q^T, the distance depends only on the eigenvalues.
    rng = np.random.default_rng(1)
    q = _random_rotation(64, rng)
    a, b = rng.uniform(0.0, 3.0, size=(2, 64))
    mu = rng.normal(size=64)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu, q @ np.diag(a) @ q.T, mu, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_non_commuting_2x2_closed_form() -> None:
    # For 2x2 PSD matrices, tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_matches_scipy_sqrtm_when_well_conditioned() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 500, 20))
    y = y @ rng.normal(size=(20, 20)) + 1.0
    mu1, s1 = gaussian_stats(x)
    mu2, s2 = gaussian_stats(y)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def _singular_case(n1: int, n2: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 0.3, size=(n1, d)), rng.gamma(2.5, 0.3, size=(n2, d))


@pytest.mark.parametrize(("n1", "n2", "d"), [(40, 30, 256), (24, 24, 1024), (300, 200, 64)])
def test_sample_covariances_exact_value(n1: int, n2: int, d: int) -> None:
    # With Sigma_k = A_k^T A_k / (n_k - 1) (A_k centred data), the non-zero eigenvalues of Sigma_1 Sigma_2
    # are the squared singular values of A_1 A_2^T / sqrt((n1-1)(n2-1)), so tr sqrt(Sigma_1 Sigma_2) is
    # its nuclear norm: an exact value from a small, well-conditioned SVD, even when N < D (singular).
    x, y = _singular_case(n1, n2, d, seed=3)
    mu1, s1 = gaussian_stats(x)
    mu2, s2 = gaussian_stats(y)
    nuclear = np.linalg.svd((x - mu1) @ (y - mu2).T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * nuclear
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-10 * np.trace(s1)


def test_singular_covariances_match_torchmetrics_formula() -> None:
    torch = pytest.importorskip("torch")
    from torchmetrics.image.fid import _compute_fid

    x, y = _singular_case(40, 30, 256, seed=4)
    mu1, s1 = gaussian_stats(x)
    mu2, s2 = gaussian_stats(y)
    expected = _compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))).item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_gaussian_stats_are_mean_and_unbiased_covariance() -> None:
    rng = np.random.default_rng(4)
    f = rng.normal(size=(50, 7)).astype(np.float32)
    mu, sigma = gaussian_stats(f)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False, ddof=1), rtol=1e-10)


def test_distance_of_a_sample_to_itself_is_zero_and_symmetric() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(2, 30, 64))
    assert abs(fid_from_features(x, x)) < 1e-6
    assert fid_from_features(x, y) == pytest.approx(fid_from_features(y, x), rel=1e-9)


def test_psd_sqrt_squares_back() -> None:
    rng = np.random.default_rng(6)
    a = rng.normal(size=(10, 4))
    s = a @ a.T  # rank 4, PSD
    r = psd_sqrt(s)
    np.testing.assert_allclose(r @ r, s, atol=1e-10)
    np.testing.assert_allclose(r, r.T, atol=1e-12)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "sigma1 must have shape"),
        ((np.zeros(3), np.eye(3), np.zeros(2), np.eye(2)), "different dimensions"),
        ((np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), "mu1 must be a vector"),
        ((np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2)), "NaN"),
    ],
)
def test_bad_inputs_are_named(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        frechet_distance(*args)


def test_gaussian_stats_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        gaussian_stats(np.zeros(5))


def test_cached_sqrt_gives_the_same_distance() -> None:
    from pokediff.evaluation.frechet import psd_sqrt

    x, y = _singular_case(20, 25, 128, seed=7)
    stats1, stats2 = gaussian_stats(x), gaussian_stats(y)
    plain = frechet_distance(*stats1, *stats2)
    assert frechet_distance(*stats1, *stats2, sqrt_sigma1=psd_sqrt(stats1[1])) == pytest.approx(plain, rel=1e-12)
    assert frechet_distance(*stats2, *stats1) == pytest.approx(plain, rel=1e-9)
