import math

import numpy as np
import pytest
import torch

from pokediff.diffusion import NoiseSchedule, make_betas


def test_linear_schedule_matches_ddpm_closed_form():
    sched = NoiseSchedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    # The value quoted in the DDPM literature: abar_999 ~= 4.04e-5.
    assert float(sched.alphas_cumprod[999]) == pytest.approx(4.0358e-5, rel=1e-3)


def test_linear_schedule_rescales_with_timesteps():
    # Endpoints scale by 1000/T so the total noise stays comparable.
    sched = NoiseSchedule("linear", 500)
    assert float(sched.betas[0]) == pytest.approx(2e-4)
    assert float(sched.betas[-1]) == pytest.approx(0.04)
    assert float(sched.alphas_cumprod[-1]) < 1e-4


def test_cosine_schedule_matches_closed_form_alphas_cumprod():
    T, s = 1000, 0.008
    sched = NoiseSchedule("cosine", T)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f((t + 1) / T) / f(0) for t in range(T)])
    unclipped = sched.betas.numpy() < 0.999
    assert unclipped[:-1].all(), "only the very last betas may hit the clip"
    np.testing.assert_allclose(sched.alphas_cumprod.numpy()[unclipped], expected[unclipped], rtol=1e-9, atol=1e-15)
    assert float(sched.betas.max()) <= 0.999


def test_sigmoid_schedule_matches_closed_form():
    T = 1000
    sched = NoiseSchedule("sigmoid", T)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    abar = lambda u: (sig(3) - sig(6 * u - 3)) / (sig(3) - sig(-3))  # noqa: E731
    expected = np.array([abar((t + 1) / T) / abar(0) for t in range(T)])
    ok = sched.betas.numpy() < 0.999
    np.testing.assert_allclose(sched.alphas_cumprod.numpy()[ok], expected[ok], rtol=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_schedules_are_monotone_and_float64(name):
    sched = NoiseSchedule(name, 1000)
    for table in (sched.betas, sched.alphas_cumprod, sched.posterior_variance, sched.log_snr):
        assert table.dtype == torch.float64 and table.shape == (1000,)
    assert bool((sched.betas > 0).all() and (sched.betas < 1).all())
    assert bool((sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all())
    assert bool((sched.log_snr[1:] < sched.log_snr[:-1]).all())
    assert float(sched.alphas_cumprod[-1]) < 1e-3 < 0.99 < float(sched.alphas_cumprod[0])


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_matches_bayes_rule(name):
    """q(x_{t-1} | x_t, x0) from the product of q(x_{t-1} | x0) and q(x_t | x_{t-1})."""
    sched = NoiseSchedule(name, 1000)
    x0, x_t = 0.7, -0.4
    for t in (1, 10, 500, 998):
        abar_prev, alpha, beta = (float(v[t]) for v in (sched.alphas_cumprod_prev, sched.alphas, sched.betas))
        precision = 1 / (1 - abar_prev) + alpha / beta
        var = 1 / precision
        mean = var * (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(alpha) * x_t / beta)
        got_mean = float(sched.posterior_mean_coef1[t]) * x0 + float(sched.posterior_mean_coef2[t]) * x_t
        assert got_mean == pytest.approx(mean, rel=1e-9)
        assert float(sched.posterior_variance[t]) == pytest.approx(var, rel=1e-9)
    # t = 0: the posterior is a point mass; its log variance is clipped to t = 1's.
    assert float(sched.posterior_variance[0]) == 0.0
    assert float(sched.posterior_log_variance_clipped[0]) == pytest.approx(math.log(float(sched.posterior_variance[1])))


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'.*linear, cosine, sigmoid"):
        make_betas("quadratic", 100)


def test_device_tables_are_cached_float32_copies():
    sched = NoiseSchedule("cosine", 100)
    a = sched.table("sqrt_alphas_cumprod", "cpu")
    assert a.dtype == torch.float32 and a is sched.table("sqrt_alphas_cumprod", "cpu")
    torch.testing.assert_close(a.double(), sched.sqrt_alphas_cumprod, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("timesteps", [2, 10, 20])
def test_short_linear_schedule_names_the_key_and_the_limit(timesteps):
    """Its betas scale by 1000/T, so beta_end = 0.02 reaches 1 at T = 20."""
    with pytest.raises(ValueError, match=rf"diffusion.timesteps: the linear schedule needs more than 20 "
                                         rf"timesteps .* got {timesteps};"):
        NoiseSchedule("linear", timesteps)
    assert float(NoiseSchedule("linear", 21).betas[-1]) < 1.0
