"""Samplers: DDPM (ancestral), DDIM, DPM-Solver++(2M). One small interface, no network inside.

A sampler owns a descending list of integer timesteps and turns one network output into the next,
less noisy state. The loop stays unrolled and readable:

    sampler = make_sampler("ddim", sched, steps=50)
    x = torch.randn(shape, generator=g)
    for t in sampler.timesteps:
        x = sampler.step(model(x, full((B,), t)), t, x, generator=g).prev_sample

After the last timestep every sampler jumps to clean data (abar = 1, written t = -1 below), so the
result is the final x0 estimate with no residual noise.

Per-step coefficients are precomputed in float64 and applied as Python floats: no tensor indexing,
no host-device syncs in the loop, and the arithmetic is identical on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pokediff.choices import (
    AUTO_SPACING,
    DEFAULT_SPACING,
    ETA_SAMPLERS,
    PREDICTIONS,
    SAMPLERS,
    SPACINGS,
    VARIANCES,
)
from pokediff.diffusion.forward import to_x0_eps
from pokediff.diffusion.schedules import DiffusionValueError, NoiseSchedule, check_choice


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x at the next (smaller) timestep, (B, C, H, W)
    pred_x0: torch.Tensor  # the current estimate of the clean image, (B, C, H, W)


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` on the generator's own device, then moved.

    Drawing on the generator's device keeps a seeded CPU generator reproducible for CUDA sampling."""
    gen_device = generator.device if generator is not None else torch.device(device)
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


# ----------------------------------------------------------------------------------------------
# Timestep selection
# ----------------------------------------------------------------------------------------------
def make_timesteps(sched: NoiseSchedule, steps: int, spacing: str = "trailing") -> list[int]:
    """Choose ``steps`` distinct integer timesteps in [0, T-1], descending.

    trailing:  T-1, T-1-T/N, ..., T/N-1  (starts at the noisiest step; Lin et al. 2024 show that
               starting below T-1 leaves signal the model never saw)
    leading:   (N-1)*floor(T/N), ..., 0 (the original DDIM / Stable Diffusion choice)
    linspace:  round(linspace(T-1, 0, N))
    logsnr:    uniform in lambda = log SNR from lambda_{T-1} (floored at -10) to lambda_0, rounded to the
               nearest integer step: the DPM-Solver papers' step-size rule for low-resolution images.
               It ends at t = 0, so the final jump to clean data starts from almost no noise.
    """
    T = sched.timesteps
    check_choice("timestep spacing", spacing, SPACINGS)
    if not 1 <= steps <= T:
        raise DiffusionValueError(f"steps must be in [1, {T}] (the schedule's timesteps), got {steps}")
    if spacing == "trailing":
        ts = [round(T - 1 - i * T / steps) for i in range(steps)]
    elif spacing == "leading":
        ts = [(steps - 1 - i) * (T // steps) for i in range(steps)]
    elif spacing == "linspace":
        ts = [round(x) for x in torch.linspace(T - 1, 0, steps, dtype=torch.float64).tolist()]
    else:  # logsnr
        ts = _logsnr_uniform_timesteps(sched, steps)
    return _strictly_decreasing(ts, T)


# Below this log-SNR (SNR 4.5e-5, alpha 0.007) the data is invisible in x_t: the cosine schedule's clipped
# final beta puts lambda_{T-1} near -20, and uniform spacing would spend a third of the steps down there.
LOGSNR_FLOOR = -10.0


def _logsnr_uniform_timesteps(sched: NoiseSchedule, steps: int) -> list[int]:
    """t_0 = T-1, then uniform in lambda over [max(lambda_{T-1}, LOGSNR_FLOOR), lambda_0], each target
    mapped to the integer step whose lambda is nearest (lambda is monotone decreasing in t)."""
    lam = sched.log_snr  # (T,)
    if steps == 1:
        return [sched.timesteps - 1]
    low = max(float(lam[-1]), LOGSNR_FLOOR)
    targets = torch.linspace(low, float(lam[0]), steps, dtype=torch.float64)  # noisy -> clean
    ts = [int((lam - target).abs().argmin()) for target in targets.tolist()]
    ts[0] = sched.timesteps - 1
    return ts


def _strictly_decreasing(ts: list[int], T: int) -> list[int]:
    """Clamp to [0, T-1] and remove ties by pushing later entries down, then earlier ones up."""
    n = len(ts)
    out = [min(max(t, 0), T - 1) for t in ts]
    for i in range(1, n):
        out[i] = min(out[i], out[i - 1] - 1)
    for i in range(n - 1, -1, -1):
        floor = n - 1 - i  # there must be room for the steps after i
        out[i] = max(out[i], floor)
        if i < n - 1:
            out[i] = max(out[i], out[i + 1] + 1)
    return out


# ----------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------
class Sampler:
    """Shared machinery: timesteps, (alpha, sigma) per step, output -> (x0, eps) with optional clipping.

    prediction: what the network outputs ("eps", "v" or "x0").
    clip_x0:    clamp the x0 estimate to [-1, 1] at every step (data lives there), then recompute eps
                from the clamped x0 so the update stays consistent.
    """

    name = "base"

    def __init__(self, sched: NoiseSchedule, steps: int, *, prediction: str = "eps", clip_x0: bool = True,
                 spacing: str | None = None):
        check_choice("prediction", prediction, PREDICTIONS)
        self.sched = sched
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.spacing = spacing or DEFAULT_SPACING[self.name]
        self.timesteps: list[int] = make_timesteps(sched, steps, self.spacing)
        self._index = {t: i for i, t in enumerate(self.timesteps)}
        # prev[i] is where step i lands; -1 means clean data.
        self.prev_timesteps = self.timesteps[1:] + [-1]
        self.reset()

    def reset(self) -> None:
        """Forget multistep history; called automatically when a new trajectory starts."""

    def __len__(self) -> int:
        return len(self.timesteps)

    def _position(self, t: int) -> int:
        t = int(t)
        if t not in self._index:
            raise ValueError(f"timestep {t} is not one of this sampler's {len(self.timesteps)} timesteps")
        i = self._index[t]
        if i == 0:
            self.reset()
        return i

    def predict_x0_eps(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor):
        alpha, sigma = self.sched.alpha_sigma(t)
        x0, eps = to_x0_eps(self.prediction, model_output.to(x_t.dtype), x_t, alpha, sigma)
        if self.clip_x0:  # the eps that the clamped x0 implies, so the update stays consistent
            x0, eps = to_x0_eps("x0", x0.clamp(-1.0, 1.0), x_t, alpha, sigma)
        return x0, eps

    def step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor,
             generator: torch.Generator | None = None) -> StepOutput:
        raise NotImplementedError


def _abar(sched: NoiseSchedule, t: int) -> float:
    return 1.0 if t < 0 else float(sched.alphas_cumprod[t])


# ----------------------------------------------------------------------------------------------
# DDPM and DDIM: one Gaussian step x_s = c_x0 x0 + c_eps eps + c_xt x_t + std z
# ----------------------------------------------------------------------------------------------
class GaussianStepSampler(Sampler):
    """The step DDPM and DDIM share: a Gaussian around a combination of the estimates and x_t,

        x_s = c_x0 x0_hat + c_eps eps_hat + c_xt x_t + std z,   z ~ N(0, I) from ``generator``,

    with one (c_x0, c_eps, c_xt, std) per step from ``_coefficients``. A zero coefficient's term is
    skipped rather than multiplied out, so each sampler does exactly the arithmetic of its own formula.
    Noise is drawn only where std > 0 (never on the final step to clean data): DDPM and DDIM(eta = 1)
    draw the same z from the same generator, which is what makes them comparable."""

    def __init__(self, sched: NoiseSchedule, steps: int, **kw):
        super().__init__(sched, steps, **kw)
        self._coefs = [self._coefficients(_abar(sched, t), _abar(sched, s), s < 0)
                       for t, s in zip(self.timesteps, self.prev_timesteps)]

    def _coefficients(self, abar_t: float, abar_s: float, final: bool) -> tuple[float, float, float, float]:
        raise NotImplementedError

    def step(self, model_output, t, x_t, generator=None) -> StepOutput:
        i = self._position(t)
        x0, eps = self.predict_x0_eps(model_output, t, x_t)
        c_x0, c_eps, c_xt, std = self._coefs[i]
        x_prev = c_x0 * x0
        if c_eps:
            x_prev = x_prev + c_eps * eps
        if c_xt:
            x_prev = x_prev + c_xt * x_t
        if std > 0:
            x_prev = x_prev + std * randn(x_t.shape, generator, x_t.device, x_t.dtype)
        return StepOutput(x_prev, x0)


class DDPMSampler(GaussianStepSampler):
    """Ancestral sampling, DDPM eq. 6-7 generalised to a jump t -> s < t (s = t-1 with all T steps).

    With beta_ts = 1 - abar_t / abar_s:
        mean = sqrt(abar_s) beta_ts / (1 - abar_t) * x0 + sqrt(1 - beta_ts) (1 - abar_s) / (1 - abar_t) * x_t
        var  = beta_ts (1 - abar_s) / (1 - abar_t)   ("beta_tilde", the posterior variance; default)
            or beta_ts                               ("beta", the upper bound in DDPM sec. 3.2)
    No noise is added on the final step to clean data. With "beta_tilde" this is DDIM with eta = 1
    (the same mean written with x_t instead of eps; tests/diffusion checks the two agree)."""

    name = "ddpm"

    def __init__(self, sched: NoiseSchedule, steps: int | None = None, *, variance: str = "beta_tilde", **kw):
        check_choice("DDPM variance", variance, VARIANCES)
        self.variance = variance
        super().__init__(sched, sched.timesteps if steps is None else steps, **kw)

    def _coefficients(self, abar_t, abar_s, final):
        beta_ts = 1.0 - abar_t / abar_s
        c_x0 = math.sqrt(abar_s) * beta_ts / (1.0 - abar_t)
        c_xt = math.sqrt(1.0 - beta_ts) * (1.0 - abar_s) / (1.0 - abar_t)
        var = beta_ts * (1.0 - abar_s) / (1.0 - abar_t) if self.variance == "beta_tilde" else beta_ts
        return c_x0, 0.0, c_xt, 0.0 if final else math.sqrt(var)


class DDIMSampler(GaussianStepSampler):
    """DDIM (Song et al. 2021) eq. 12:

        x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma_ts^2) eps + sigma_ts z,
        sigma_ts = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)      (eq. 16)

    eta = 0 is the deterministic probability-flow-like sampler; eta = 1 is DDPM with the posterior
    variance (DDPMSampler, variance "beta_tilde"). At s = -1 (abar_s = 1) sigma_ts = 0."""

    name = "ddim"

    def __init__(self, sched: NoiseSchedule, steps: int = 50, *, eta: float = 0.0, **kw):
        if not 0.0 <= eta <= 1.0:
            raise DiffusionValueError(f"eta must be in [0, 1], got {eta}")
        self.eta = eta
        super().__init__(sched, steps, **kw)

    def _coefficients(self, abar_t, abar_s, final):
        sigma = self.eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
        return math.sqrt(abar_s), math.sqrt(max(1 - abar_s - sigma**2, 0.0)), 0.0, sigma


# ----------------------------------------------------------------------------------------------
# DPM-Solver++(2M): second-order multistep solver of the diffusion ODE in data-prediction form
# ----------------------------------------------------------------------------------------------
class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), with lambda = log(alpha / sigma), h = lambda_s - lambda_t:

        first order (DDIM):  x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D_t
        second order:        D = (1 + 1/(2r)) D_t - 1/(2r) D_prev,  r = h_prev / h

    where D is the x0 prediction. The first step has no history and is first order. The final jump to
    clean data (sigma = 0, lambda = inf) is first order, which reduces to x = D_t. With
    ``lower_order_final`` the step into the last timestep is first order too: near t = 0 the
    log-SNR gaps are uneven (r far from 1) and the second-order extrapolation amplifies errors; this
    is the paper's "lower order final steps" rule that keeps 10-25 step sampling stable.

    Spacing matters as much (see make_timesteps): "logsnr" (default) ends at t = 0, so the final
    x0 estimate is taken where sigma is ~0.01 and loses almost no variance."""

    name = "dpmpp2m"

    def __init__(self, sched: NoiseSchedule, steps: int = 20, *, lower_order_final: bool = True, **kw):
        super().__init__(sched, steps, **kw)
        n = len(self.timesteps)
        self._coefs = []
        for i, (t, s) in enumerate(zip(self.timesteps, self.prev_timesteps)):
            alpha_t, sigma_t = sched.alpha_sigma(t)
            alpha_s, sigma_s = sched.alpha_sigma(s)
            if s < 0:  # jump to clean data: x = D_t
                self._coefs.append((0.0, 1.0, None))
                continue
            lam_t, lam_s = math.log(alpha_t / sigma_t), math.log(alpha_s / sigma_s)
            h = lam_s - lam_t
            r = None
            first_order = i == 0 or (lower_order_final and i == n - 2)
            if not first_order:
                alpha_p, sigma_p = sched.alpha_sigma(self.timesteps[i - 1])
                r = (lam_t - math.log(alpha_p / sigma_p)) / h
            self._coefs.append((sigma_s / sigma_t, -alpha_s * math.expm1(-h), r))

    def reset(self) -> None:
        self._prev_x0: torch.Tensor | None = None

    def step(self, model_output, t, x_t, generator=None) -> StepOutput:
        i = self._position(t)
        x0, _ = self.predict_x0_eps(model_output, t, x_t)
        c_xt, c_d, r = self._coefs[i]
        d = x0
        if r is not None and self._prev_x0 is not None:
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * self._prev_x0
        self._prev_x0 = x0
        return StepOutput(c_xt * x_t + c_d * d, x0)


# ----------------------------------------------------------------------------------------------
# Factory and the sampling loop
# ----------------------------------------------------------------------------------------------
def make_sampler(name: str, sched: NoiseSchedule, steps: int | None = None, *, eta: float = 0.0,
                 prediction: str = "eps", clip_x0: bool = True, spacing: str | None = None,
                 variance: str = "beta_tilde") -> Sampler:
    """The sampler called ``name`` (see pokediff.choices.SAMPLERS).

    steps None: the sampler's default (ddpm: all T, ddim: 50, dpmpp2m: 20); anything else must be in
    [1, T]. spacing None or "auto": the sampler's default spacing. eta must be 0 for the samplers that
    have no use for it, rather than being ignored."""
    check_choice("sampler", name, SAMPLERS)
    if eta != 0.0 and name not in ETA_SAMPLERS:
        raise DiffusionValueError(f"eta (sample.eta) is used only by {', '.join(ETA_SAMPLERS)}; {name} would "
                                  f"ignore it: give 0, got {eta}")
    spacing = None if spacing in (None, AUTO_SPACING) else spacing
    common = dict(prediction=prediction, clip_x0=clip_x0, spacing=spacing)
    if name == "ddpm":
        return DDPMSampler(sched, steps, variance=variance, **common)
    if name == "ddim":
        return DDIMSampler(sched, 50 if steps is None else steps, eta=eta, **common)
    return DPMSolverPP2MSampler(sched, 20 if steps is None else steps, **common)


Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.inference_mode()
def reverse_process(
    model: Model,
    sched: NoiseSchedule,
    shape: tuple[int, ...],
    sampler: str | Sampler = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    prediction: str = "eps",
    generator: torch.Generator | None = None,
    *,
    clip_x0: bool = True,
    spacing: str | None = None,
    variance: str = "beta_tilde",
    device: torch.device | str | None = None,
    noise: torch.Tensor | None = None,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process p(x_{t-1} | x_t) along the sampler's timesteps, from x_T ~ N(0, I) to x_0.

    model(x_t, t) -> prediction, with x_t (B, C, H, W) float and t (B,) long.
    Returns (B, C, H, W) float32 in [-1, 1] space (clamped when clip_x0 is set).
    callback(i, t, x_t, pred_x0) is called after each step (e.g. for a denoising strip).
    """
    if device is None:
        params = getattr(model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        device = first.device if first is not None else torch.device("cpu")
    if isinstance(sampler, str):
        sampler = make_sampler(sampler, sched, steps, eta=eta, prediction=prediction, clip_x0=clip_x0,
                               spacing=spacing, variance=variance)
    x = noise.to(device, torch.float32) if noise is not None else randn(shape, generator, device)
    t_batch = torch.empty(x.shape[0], dtype=torch.long, device=device)
    for i, t in enumerate(sampler.timesteps):
        out = sampler.step(model(x, t_batch.fill_(t)), t, x, generator)
        x = out.prev_sample
        if callback is not None:
            callback(i, t, x, out.pred_x0)
    return x.clamp(-1.0, 1.0) if sampler.clip_x0 else x
