import pytest
import torch

from pokediff.diffusion import (
    DiffusionValueError,
    NoiseSchedule,
    diffusion_loss,
    from_x0_eps,
    min_snr_weight,
    q_sample,
    q_step_sample,
    to_x0_eps,
    training_target,
)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_moments_match_closed_form(name):
    sched = NoiseSchedule(name, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-0.8, 0.1, 0.5, 1.0]).view(1, 4, 1, 1)
    n = 200_000
    for t_val in (0, 100, 600, 999):
        t = torch.full((n,), t_val, dtype=torch.long)
        noise = torch.randn((n, 4, 1, 1), generator=g)
        x_t = q_sample(sched, x0.expand(n, 4, 1, 1), t, noise)
        abar = float(sched.alphas_cumprod[t_val])
        torch.testing.assert_close(x_t.mean(0).flatten(), abar**0.5 * x0.flatten(), atol=0.01, rtol=0)
        torch.testing.assert_close(x_t.var(0).flatten(), torch.full((4,), 1 - abar), atol=0.01, rtol=0.02)


def test_one_step_chain_equals_closed_form_marginal():
    """Composing q(x_t | x_{t-1}) t times gives the same Gaussian as q(x_t | x_0)."""
    sched = NoiseSchedule("linear", 1000)
    g = torch.Generator().manual_seed(1)
    n, steps = 100_000, 200
    x = torch.full((n, 1, 1, 1), 0.6)
    for t in range(steps):
        x = q_step_sample(sched, x, torch.full((n,), t, dtype=torch.long), torch.randn(x.shape, generator=g))
    abar = float(sched.alphas_cumprod[steps - 1])
    assert float(x.mean()) == pytest.approx(abar**0.5 * 0.6, abs=0.01)
    assert float(x.var()) == pytest.approx(1 - abar, abs=0.01)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_prediction_conversions_round_trip(prediction):
    sched = NoiseSchedule("cosine", 1000)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.rand((8, 3, 4, 4), generator=g) * 2 - 1, torch.randn((8, 3, 4, 4), generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    x_t = q_sample(sched, x0.double(), t, noise.double())
    target = training_target(sched, prediction, x0.double(), t, noise.double())
    alpha = sched.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
    sigma = sched.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_hat, eps_hat = to_x0_eps(prediction, target, x_t, alpha, sigma)
    # x0 from an eps prediction divides by alpha ~ 0 at the noisiest steps: compare where it is well posed.
    ok = (alpha > 1e-2).flatten()
    torch.testing.assert_close(x0_hat[ok], x0.double()[ok], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(eps_hat[(sigma > 1e-2).flatten()], noise.double()[(sigma > 1e-2).flatten()])
    torch.testing.assert_close(from_x0_eps(prediction, x0_hat, eps_hat, alpha, sigma), target)


def test_v_target_definition():
    sched = NoiseSchedule("linear", 1000)
    x0, noise, t = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([400])
    a, s = float(sched.sqrt_alphas_cumprod[400]), float(sched.sqrt_one_minus_alphas_cumprod[400])
    assert float(training_target(sched, "v", x0, t, noise)) == pytest.approx(a * 2.0 - s * 1.0, rel=1e-6)


def test_min_snr_weights():
    sched = NoiseSchedule("cosine", 1000)
    t = torch.tensor([0, 200, 900])
    snr = sched.snr[t].float()
    gamma = 5.0
    torch.testing.assert_close(min_snr_weight(sched, t, "eps", gamma), snr.clamp(max=gamma) / snr)
    torch.testing.assert_close(min_snr_weight(sched, t, "x0", gamma), snr.clamp(max=gamma))
    torch.testing.assert_close(min_snr_weight(sched, t, "v", gamma), snr.clamp(max=gamma) / (snr + 1))
    w = min_snr_weight(sched, t, "eps", gamma)
    assert w[0] < 0.01 and float(w[2]) == pytest.approx(1.0)  # clean steps down-weighted, noisy ones kept


def test_diffusion_loss_is_weighted_per_example_mse():
    out = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert float(diffusion_loss(out, target)) == pytest.approx((1 + 4) / 2)
    assert float(diffusion_loss(out, target, torch.tensor([1.0, 0.0]))) == pytest.approx(0.5)


def test_unknown_prediction_is_an_error():
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        to_x0_eps("score", torch.zeros(1), torch.zeros(1), 1.0, 0.0)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_q_sample_is_the_closed_form_at_every_t(name):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps exactly, with abar from the float64 table."""
    sched = NoiseSchedule(name, 1000)
    g = torch.Generator().manual_seed(3)
    t = torch.arange(1000)
    x0 = torch.rand((1000, 2, 3, 3), generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn((1000, 2, 3, 3), generator=g, dtype=torch.float64)
    abar = sched.alphas_cumprod.view(-1, 1, 1, 1)
    torch.testing.assert_close(q_sample(sched, x0, t, eps), abar.sqrt() * x0 + (1 - abar).sqrt() * eps,
                               rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("bad_t", [-1, 1000])
def test_q_sample_refuses_timesteps_outside_the_schedule(bad_t):
    """t = -1 used to wrap around to the noisiest step T-1."""
    sched = NoiseSchedule("cosine", 1000)
    t = torch.tensor([0, bad_t])
    with pytest.raises(DiffusionValueError, match=r"t must be in \[0, 999\].*from .*-?\d+ to"):
        q_sample(sched, torch.zeros(2, 1, 1, 1), t, torch.zeros(2, 1, 1, 1))
    with pytest.raises(DiffusionValueError, match=r"t must be in \[0, 999\]"):
        training_target(sched, "v", torch.zeros(2, 1, 1, 1), t, torch.zeros(2, 1, 1, 1))
    with pytest.raises(DiffusionValueError, match=r"t must be in \[0, 999\]"):
        min_snr_weight(sched, t, "eps", 5.0)
