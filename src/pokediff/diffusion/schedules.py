"""Noise schedules and the quantities derived from them.

Notation (DDPM, Ho et al. 2020; code name <- paper symbol):

    betas[t]                 beta_t            variance of q(x_t | x_{t-1})
    alphas[t]                alpha_t = 1 - beta_t
    alphas_cumprod[t]        abar_t = prod_{s<=t} alpha_s
    alphas_cumprod_prev[t]   abar_{t-1}, with abar_{-1} = 1
    posterior_variance[t]    beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)   (eq. 7)
    posterior_mean_coef1/2   mu_tilde_t = coef1 * x_0 + coef2 * x_t                  (eq. 7)
    log_snr[t]               lambda_t = log(abar_t / (1 - abar_t)) = 2 log(alpha_t / sigma_t)

Time index t runs over 0..T-1 (t = 0 is the first, least noisy step). All tables are float64 tensors of
shape (T,) computed once; float32 device copies are cached for the training hot path (``table``).
"""

from __future__ import annotations

import math

import torch

from pokediff.choices import LINEAR_BETA_END, LINEAR_BETA_START, SCHEDULES
from pokediff.errors import UsageError


class DiffusionValueError(UsageError, ValueError):
    """A diffusion argument that is not one of its choices or is out of range; the message names it.

    A ValueError for library callers, a one-line UsageError for the CLI."""


def check_choice(what: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise the one error for a name that is not one of ``allowed`` (see pokediff.choices)."""
    if value not in allowed:
        raise DiffusionValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


# ----------------------------------------------------------------------------------------------
# Beta schedules: pure functions T -> betas (T,) float64
# ----------------------------------------------------------------------------------------------
def linear_betas(timesteps: int, beta_start: float = LINEAR_BETA_START,
                 beta_end: float = LINEAR_BETA_END) -> torch.Tensor:
    """DDPM's linear schedule. For T != 1000 the endpoints scale by 1000/T (Nichol & Dhariwal 2021),
    so the total amount of noise, and hence abar_{T-1}, stays about the same. The last beta,
    beta_end * 1000 / T, must stay below 1: T > 1000 * beta_end (T > 20 for the default)."""
    scale = 1000.0 / timesteps
    if beta_end * scale >= 1.0:
        limit = math.floor(beta_end * 1000.0)
        raise DiffusionValueError(
            f"diffusion.timesteps: the linear schedule needs more than {limit} timesteps (its last beta, "
            f"{beta_end} * 1000 / T, must stay below 1), got {timesteps}; use more or the cosine schedule")
    return torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)


def betas_from_alphas_cumprod(abar_fn, timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - abar((t+1)/T) / abar(t/T), clipped at max_beta (avoids a singular final step)."""
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    abar = abar_fn(u)
    return (1.0 - abar[1:] / abar[:-1]).clamp(min=0.0, max=max_beta)


def cosine_alphas_cumprod(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """abar(u) = f(u) / f(0), f(u) = cos^2(((u + s) / (1 + s)) * pi / 2), u in [0, 1]
    (Nichol & Dhariwal 2021, eq. 17)."""
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return f / f0


def sigmoid_alphas_cumprod(u: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0):
    """abar(u) = (sigmoid(end/tau) - sigmoid((u (end-start) + start)/tau)) /
    (sigmoid(end/tau) - sigmoid(start/tau)): Chen 2023, "On the importance of noise scheduling"."""
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    return betas_from_alphas_cumprod(lambda u: cosine_alphas_cumprod(u, s), timesteps, max_beta)


def sigmoid_betas(timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    return betas_from_alphas_cumprod(sigmoid_alphas_cumprod, timesteps, max_beta)


_BETAS = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}  # keys: SCHEDULES


def make_betas(name: str, timesteps: int) -> torch.Tensor:
    check_choice("noise schedule", name, SCHEDULES)
    return _BETAS[name](timesteps)


# ----------------------------------------------------------------------------------------------
# NoiseSchedule: betas plus every derived table, float64
# ----------------------------------------------------------------------------------------------
class NoiseSchedule:
    """A discrete diffusion schedule of T steps with its derived quantities (see module docstring).

    >>> sched = NoiseSchedule("linear", timesteps=1000)
    >>> float(sched.alphas_cumprod[-1])  # doctest: +ELLIPSIS
    4.035...e-05
    """

    def __init__(self, name: str = "cosine", timesteps: int = 1000, betas: torch.Tensor | None = None):
        if timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {timesteps}")
        self.name = name if betas is None else "custom"
        betas = make_betas(name, timesteps) if betas is None else betas.to(torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        self.timesteps = betas.shape[0]

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

        # q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)               (DDPM eq. 4)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t I)  (DDPM eqs. 6-7)
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        # beta_tilde_0 = 0: clip the log at t = 0 to the value at t = 1 (improved-diffusion's convention)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / one_minus

        # Signal-to-noise ratio and its log: used by min-SNR weighting and DPM-Solver.
        self.snr = self.alphas_cumprod / one_minus
        self.log_snr = torch.log(self.snr)

        self._device_tables: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name!r}, timesteps={self.timesteps})"

    def table(self, name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A cached copy of a derived table on ``device`` (avoids a host-to-device copy every step)."""
        key = (name, torch.device(device), dtype)
        if key not in self._device_tables:
            self._device_tables[key] = getattr(self, name).to(device=device, dtype=dtype)
        return self._device_tables[key]

    def alpha_sigma(self, t: int) -> tuple[float, float]:
        """(alpha_t, sigma_t) = (sqrt(abar_t), sqrt(1 - abar_t)) for an integer step; t = -1 is clean data."""
        if t < 0:
            return 1.0, 0.0
        return float(self.sqrt_alphas_cumprod[t]), float(self.sqrt_one_minus_alphas_cumprod[t])


def extract(table: torch.Tensor, t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Gather table[t] for a batch of timesteps and reshape to broadcast over ``shape``.

    table: (T,), t: (B,) long -> (B, 1, 1, ...) with len(shape) dims, on t's device."""
    check_timesteps(t, table.shape[0])
    if table.device != t.device:
        table = table.to(t.device)
    return table[t].reshape(t.shape[0], *([1] * (len(shape) - 1)))


def check_timesteps(t: torch.Tensor, timesteps: int) -> None:
    """Every t must be in [0, T-1]: a negative index would silently wrap around to the noisiest steps.

    On the CPU this raises DiffusionValueError. On an accelerator it queues an assertion instead of
    reading t back, which would make the training loop wait for the device at every step."""
    if t.device.type != "cpu":
        torch._assert_async(((t >= 0) & (t < timesteps)).all())
    elif t.numel() and (int(t.min()) < 0 or int(t.max()) >= timesteps):
        raise DiffusionValueError(
            f"t must be in [0, {timesteps - 1}] (the schedule's timesteps), got values from {int(t.min())} "
            f"to {int(t.max())}")
