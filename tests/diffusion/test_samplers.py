"""Samplers driven by the analytic optimal predictor for Gaussian data (no training involved).

For x0 ~ N(mu, s^2 I) the exact noise predictor is known (see conftest.gaussian_oracle), so an exact
sampler must return samples with mean mu and std s. The deterministic samplers also have an exact
answer per starting point: the probability-flow ODE maps x_T to mu + s (x_T - a mu) / sqrt(a^2 s^2 + b^2)
with a = sqrt(abar_{T-1}), b = sqrt(1 - abar_{T-1}); their error against it must shrink with steps.
"""

import math

import pytest
import torch

from pokediff.diffusion import (
    SPACINGS,
    DiffusionValueError,
    DPMSolverPP2MSampler,
    NoiseSchedule,
    make_sampler,
    make_timesteps,
    reverse_process,
)

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
    x = reverse_process(gaussian_oracle(sched, MU, S), sched, SHAPE, sampler, steps, eta=eta, generator=g,
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
        x = reverse_process(gaussian_oracle(sched, MU, S), sched, SHAPE, sampler, steps, clip_x0=False,
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
        x = reverse_process(gaussian_oracle(sched, MU, S, pred), sched, shape, sampler, 25, eta=0.0,
                   prediction=pred, clip_x0=False, generator=torch.Generator().manual_seed(3),
                   noise=torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
        runs[pred] = x
    torch.testing.assert_close(runs[prediction], runs["eps"], atol=1e-4, rtol=1e-4)


def test_ddim_eta0_is_deterministic_given_the_starting_noise(gaussian_oracle):
    sched = NoiseSchedule("linear", 1000)
    model = gaussian_oracle(sched, MU, S)
    noise = torch.randn((16, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    def g(seed):
        return torch.Generator().manual_seed(seed)

    a = reverse_process(model, sched, noise.shape, "ddim", 30, eta=0.0, noise=noise, generator=g(6))
    b = reverse_process(model, sched, noise.shape, "ddim", 30, eta=0.0, noise=noise, generator=g(7))
    assert torch.equal(a, b)
    c = reverse_process(model, sched, noise.shape, "ddim", 30, eta=1.0, noise=noise, generator=g(7))
    assert not torch.allclose(a, c), "eta=1 must inject fresh noise"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
def test_seeded_generators_make_sampling_reproducible(gaussian_oracle, sampler):
    sched = NoiseSchedule("cosine", 100)
    model = gaussian_oracle(sched, MU, S)
    eta = 0.5 if sampler == "ddim" else 0.0  # the others refuse eta

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return reverse_process(model, sched, (4, 3, 8, 8), sampler, 10, eta=eta, generator=g)

    runs = [run(8) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = run(9)
    assert not torch.equal(runs[0], other)


def test_clipping_keeps_samples_in_data_range(gaussian_oracle):
    sched = NoiseSchedule("linear", 1000)
    x = reverse_process(gaussian_oracle(sched, 0.0, 2.0), sched, (256, 1, 4, 4), "ddim", 20, clip_x0=True,
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


def _tanh_model(prediction_scale=0.7):
    """A fixed nonlinear stand-in for a network: the identities below hold for any model."""
    return lambda x_t, t: torch.tanh(x_t) * prediction_scale + 1e-3 * t.view(-1, *[1] * (x_t.ndim - 1))


def _run(sampler, model, noise, seed):
    """The sampling loop in noise's dtype (reverse_process() works in float32)."""
    g, x = torch.Generator().manual_seed(seed), noise.clone()
    t_batch = torch.empty(x.shape[0], dtype=torch.long)
    for t in sampler.timesteps:
        x = sampler.step(model(x, t_batch.fill_(t)), t, x, g).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_ddim_with_eta_1_is_ddpm_with_the_posterior_variance(prediction, dtype, tol):
    """DDIM eq. 16 at eta = 1 is DDPM's beta_tilde: same grid, same noise, same result."""
    sched = NoiseSchedule("cosine", 1000)
    noise = torch.randn((8, 2, 4, 4), generator=torch.Generator().manual_seed(11), dtype=dtype)
    runs = {}
    for name, kw in (("ddim", {"eta": 1.0}), ("ddpm", {"variance": "beta_tilde"})):
        s = make_sampler(name, sched, 25, prediction=prediction, clip_x0=True, **kw)
        runs[name] = _run(s, _tanh_model(), noise, seed=12)
    assert make_sampler("ddim", sched, 25).timesteps == make_sampler("ddpm", sched, 25).timesteps
    torch.testing.assert_close(runs["ddim"], runs["ddpm"], rtol=0, atol=tol)
    other = _run(make_sampler("ddpm", sched, 25, variance="beta"), _tanh_model(), noise, seed=12)
    assert (other - runs["ddpm"]).abs().max() > 1e-3, "variance='beta' must add more noise"


@pytest.mark.parametrize("variance,table", [("beta_tilde", "posterior_variance"), ("beta", "betas")])
def test_ddpm_step_is_the_posterior_mean_plus_the_chosen_variance(variance, table):
    """One all-T ancestral step against DDPM eqs. 6-7 with the schedule's own tables:
    x_{t-1} = coef1_t x0 + coef2_t x_t + sqrt(var_t) z, var_t = beta_tilde_t or beta_t."""
    sched = NoiseSchedule("linear", 1000)
    sampler = make_sampler("ddpm", sched, variance=variance, prediction="x0", clip_x0=False)
    assert len(sampler) == 1000  # steps None: every timestep
    g = torch.Generator().manual_seed(13)
    x_t = torch.randn((4, 3, 2, 2), generator=g, dtype=torch.float64)
    x0 = torch.rand((4, 3, 2, 2), generator=g, dtype=torch.float64) * 2 - 1
    for t in (999, 500, 10, 1):
        got = sampler.step(x0, t, x_t, torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        c1, c2 = float(sched.posterior_mean_coef1[t]), float(sched.posterior_mean_coef2[t])
        expected = c1 * x0 + c2 * x_t + math.sqrt(float(getattr(sched, table)[t])) * z
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the last step lands on clean data and adds no noise
    torch.testing.assert_close(sampler.step(x0, 0, x_t, g).prev_sample, x0, rtol=1e-12, atol=1e-12)


def _dpmpp2m_reference(sched, ts, x, model, lower_order_final):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, written out step by step in float64 from
    lambda = log(alpha / sigma); the final jump to sigma = 0 returns the last x0 estimate."""
    def alpha_sigma(t):
        return float(sched.sqrt_alphas_cumprod[t]), float(sched.sqrt_one_minus_alphas_cumprod[t])

    prev_d, n = None, len(ts)
    for i, t in enumerate(ts):
        a_t, s_t = alpha_sigma(t)
        d = (x - s_t * model(x, torch.full((x.shape[0],), t))) / a_t  # eps prediction -> x0
        if i == n - 1:
            return d
        a_s, s_s = alpha_sigma(ts[i + 1])
        h = math.log(a_s / s_s) - math.log(a_t / s_t)
        d_used = d
        if prev_d is not None and not (lower_order_final and i == n - 2):
            a_p, s_p = alpha_sigma(ts[i - 1])
            r = (math.log(a_t / s_t) - math.log(a_p / s_p)) / h
            d_used = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * prev_d
        x = (s_s / s_t) * x - a_s * (math.exp(-h) - 1) * d_used
        prev_d = d
    raise AssertionError("unreachable")


@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpmpp2m_matches_the_algorithm_with_and_without_lower_order_final(gaussian_oracle, lower_order_final):
    sched = NoiseSchedule("cosine", 1000)
    model = gaussian_oracle(sched, MU, S)
    noise = _noise(14)[:64]
    sampler = DPMSolverPP2MSampler(sched, 10, lower_order_final=lower_order_final, clip_x0=False)
    got = _run(sampler, model, noise, seed=0)
    expected = _dpmpp2m_reference(sched, sampler.timesteps, noise.clone(), model, lower_order_final)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if not lower_order_final:  # the option changes the step into the last timestep
        first_order = _run(DPMSolverPP2MSampler(sched, 10, clip_x0=False), model, noise, seed=0)
        assert (got - first_order).abs().max() > 1e-4


SIGMOID_CASES = [("ddpm", None, 0.0), ("ddim", 200, 0.0), ("dpmpp2m", 20, 0.0)]  # ddim eta=1 is ddpm (above)


@pytest.mark.parametrize("sampler,steps,eta", SIGMOID_CASES)
def test_sigmoid_schedule_through_every_sampler(gaussian_oracle, sampler, steps, eta):
    sched = NoiseSchedule("sigmoid", 1000)
    noise = _noise(15)
    # log-SNR spacing: the sigmoid schedule's clipped last beta makes uniform steps in t uneven in lambda
    x = reverse_process(gaussian_oracle(sched, MU, S), sched, noise.shape, sampler, steps, eta=eta, clip_x0=False,
               spacing="logsnr", generator=torch.Generator().manual_seed(15), noise=noise)
    assert float(x.mean()) == pytest.approx(MU, rel=0.03), "mean off"
    assert float(x.std()) == pytest.approx(S, rel=0.03), "std off"
    if eta == 0.0 and sampler != "ddpm":  # deterministic: close to the exact ODE endpoint
        assert float((x.double() - _ode_solution(sched, noise)).abs().max()) < 0.05


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp2m"])
def test_steps_zero_is_an_error_not_the_default(sampler):
    sched = NoiseSchedule("cosine", 100)
    with pytest.raises(DiffusionValueError, match=r"steps must be in \[1, 100\].*got 0"):
        make_sampler(sampler, sched, 0)
    assert len(make_sampler(sampler, sched, None)) == {"ddpm": 100, "ddim": 50, "dpmpp2m": 20}[sampler]


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp2m"])
def test_eta_is_refused_by_samplers_that_would_ignore_it(sampler):
    sched = NoiseSchedule("cosine", 100)
    with pytest.raises(DiffusionValueError, match=rf"eta \(sample.eta\) is used only by ddim; {sampler} would"):
        make_sampler(sampler, sched, 10, eta=0.5)
    make_sampler(sampler, sched, 10, eta=0.0)


def test_bad_names_are_one_line_usage_errors():
    from pokediff.errors import UsageError

    sched = NoiseSchedule("cosine", 100)
    for call, what in [(lambda: make_sampler("ddim", sched, 10, spacing="cubic"), "timestep spacing 'cubic'"),
                       (lambda: make_sampler("ddim", sched, 10, prediction="score"), "prediction 'score'"),
                       (lambda: make_sampler("ddpm", sched, 10, variance="big"), "DDPM variance 'big'")]:
        with pytest.raises(UsageError, match=f"unknown {what}; expected one of "):
            call()


def test_dpmpp2m_without_lower_order_final_matches_diffusers(gaussian_oracle):
    """The same grid through diffusers' DPMSolverMultistepScheduler (an independent implementation).

    diffusers keeps its schedule in float32, hence 1e-4. Its lower_order_final only lowers the final
    jump when the order is 2 (which final_sigmas_type="zero" makes first order anyway), so it matches
    ours with lower_order_final=False; ours with True also takes the step into t = 0 at first order."""
    diffusers = pytest.importorskip("diffusers")  # pinned in the bench extra
    sched = NoiseSchedule("cosine", 1000)
    model = gaussian_oracle(sched, MU, S)
    ours = DPMSolverPP2MSampler(sched, 10, lower_order_final=False, clip_x0=False)
    theirs = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=sched.betas.numpy(), solver_order=2, algorithm_type="dpmsolver++",
        lower_order_final=False, final_sigmas_type="zero", prediction_type="epsilon")
    theirs.set_timesteps(timesteps=ours.timesteps)
    noise = _noise(16)[:64]
    got = _run(ours, model, noise, seed=0)
    x = noise.clone()
    for t in theirs.timesteps.tolist():
        x = theirs.step(model(x, torch.full((x.shape[0],), t)), t, x).prev_sample
    torch.testing.assert_close(got, x.double(), rtol=0, atol=1e-4)
