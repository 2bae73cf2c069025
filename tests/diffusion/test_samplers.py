"""Samplers driven by the analytic optimal predictor for Gaussian data (no training involved).

For x0 ~ N(mu, s^2 I) the exact noise predictor is known (see conftest.gaussian_oracle), so an exact
sampler must return samples with mean mu and std s. The deterministic samplers also have an exact
answer per starting point: the probability-flow ODE maps x_T to mu + s (x_T - a mu) / sqrt(a^2 s^2 + b^2)
with a = sqrt(abar_{T-1}), b = sqrt(1 - abar_{T-1}); their error against it must shrink with steps.
"""

import math

import pytest
import torch

from pokediff.diffusion import SPACINGS, NoiseSchedule, make_sampler, make_timesteps, sample

MU, S = 0.3, 0.5
SHAPE = (20_000, 1, 2, 2)  # 80,000 scalar draws: std of the sample mean ~ 0.002


def _noise(seed=0, dtype=torch.float64):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _ode_solution(sched, noise):
    a, b = float(sched.sqrt_alphas_cumprod[-1]), float(sched.sqrt_one_minus_alphas_cumprod[-1])
    return MU + S * (noise - a * MU) / math.sqrt(a * a * S * S + b * b)


CASES = [  # sampler, steps, eta
    ("ddpm", None, 0.0),  # all 1000 ancestral steps
    ("ddim", 500, 0.0),
    ("ddim", 500, 1.0),
    ("dpmpp2m", 100, 0.0),
    ("dpmpp2m", 20, 0.0),  # few-step: needs the log-SNR spacing and the lower-order final step
]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler,steps,eta", CASES)
def test_oracle_samples_have_the_data_mean_and_std(gaussian_oracle, schedule, sampler, steps, eta):
    sched = NoiseSchedule(schedule, 1000)
    g = torch.Generator().manual_seed(1)
    x = sample(gaussian_oracle(sched, MU, S), sched, SHAPE, sampler, steps, eta=eta, generator=g,
               clip_x0=False, noise=_noise(1, torch.float32))
    assert float(x.mean()) == pytest.approx(MU, rel=0.03), "mean off"
    assert float(x.std()) == pytest.approx(S, rel=0.03), "std off"


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler,ratio", [("ddim", 0.6), ("dpmpp2m", 0.35)])
def test_deterministic_error_shrinks_with_steps(gaussian_oracle, schedule, sampler, ratio):
    """Max error against the exact ODE endpoint; DDIM is first order, DPM-Solver++(2M) second order."""
    sched = NoiseSchedule(schedule, 1000)
    noise = _noise(2)
    exact = _ode_solution(sched, noise)
    errors = []
    for steps in (20, 40, 80, 160):
        x = sample(gaussian_oracle(sched, MU, S), sched, SHAPE, sampler, steps, clip_x0=False,
                   spacing="logsnr", noise=noise.clone())
        errors.append(float((x.double() - exact).abs().max()))
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < ratio * coarse, f"errors {errors} do not shrink fast enough"


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m", "ddpm"])
def test_samplers_accept_every_parameterisation(gaussian_oracle, prediction, sampler):
    """The same exact predictor expressed as eps, v or x0 gives the same samples."""
    sched = NoiseSchedule("cosine", 1000)
    shape = (64, 1, 2, 2)
    runs = {}
    for pred in ("eps", prediction):
        x = sample(gaussian_oracle(sched, MU, S, pred), sched, shape, sampler, 25, eta=0.0,
                   prediction=pred, clip_x0=False, generator=torch.Generator().manual_seed(3),
                   noise=torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
        runs[pred] = x
    torch.testing.assert_close(runs[prediction], runs["eps"], atol=1e-4, rtol=1e-4)


def test_ddim_eta0_is_deterministic_given_the_starting_noise(gaussian_oracle):
    sched = NoiseSchedule("linear", 1000)
    model = gaussian_oracle(sched, MU, S)
    noise = torch.randn((16, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    a = sample(model, sched, noise.shape, "ddim", 30, eta=0.0, noise=noise, generator=torch.Generator().manual_seed(6))
    b = sample(model, sched, noise.shape, "ddim", 30, eta=0.0, noise=noise, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = sample(model, sched, noise.shape, "ddim", 30, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(a, c), "eta=1 must inject fresh noise"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
def test_seeded_generators_make_sampling_reproducible(gaussian_oracle, sampler):
    sched = NoiseSchedule("cosine", 100)
    model = gaussian_oracle(sched, MU, S)
    eta = 0.5 if sampler == "ddim" else 0.0  # the others refuse eta
    runs = [sample(model, sched, (4, 3, 8, 8), sampler, 10, eta=eta, generator=torch.Generator().manual_seed(8))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = sample(model, sched, (4, 3, 8, 8), sampler, 10, eta=eta, generator=torch.Generator().manual_seed(9))
    assert not torch.equal(runs[0], other)


def test_clipping_keeps_samples_in_data_range(gaussian_oracle):
    sched = NoiseSchedule("linear", 1000)
    x = sample(gaussian_oracle(sched, 0.0, 2.0), sched, (256, 1, 4, 4), "ddim", 20, clip_x0=True,
               generator=torch.Generator().manual_seed(0))
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_timesteps_are_distinct_descending_and_in_range(spacing, schedule):
    sched = NoiseSchedule(schedule, 1000)
    for steps in (1, 2, 7, 10, 20, 50, 333, 999, 1000):
        ts = make_timesteps(sched, steps, spacing)
        assert len(ts) == steps
        assert all(a > b for a, b in zip(ts, ts[1:])), (spacing, steps, ts[:10])
        assert ts[-1] >= 0 and ts[0] <= 999
    assert make_timesteps(sched, 1000, spacing) == list(range(999, -1, -1))


def test_spacing_endpoints():
    sched = NoiseSchedule("linear", 1000)
    assert make_timesteps(sched, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert make_timesteps(sched, 10, "leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    ts = make_timesteps(sched, 20, "logsnr")
    assert ts[0] == 999 and ts[-1] == 0
    gaps = [float(sched.log_snr[b] - sched.log_snr[a]) for a, b in zip(ts, ts[1:])]
    assert max(gaps[1:-3]) < 1.3 * min(gaps[1:-3]), "log-SNR spacing must be roughly uniform in lambda"


def test_sampler_rejects_bad_arguments():
    sched = NoiseSchedule("linear", 100)
    with pytest.raises(ValueError, match=r"steps must be in \[1, 100\]"):
        make_sampler("ddim", sched, 101)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        make_sampler("euler", sched, 10)
    with pytest.raises(ValueError, match="eta must be in"):
        make_sampler("ddim", sched, 10, eta=2.0)
    s = make_sampler("ddim", sched, 10)
    with pytest.raises(ValueError, match="timestep 5 is not one of"):
        s.step(torch.zeros(1), 5, torch.zeros(1))
