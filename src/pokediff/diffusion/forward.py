"""The forward (noising) process, prediction targets, and the training loss.

Shapes: x0, x_t, noise: (B, C, H, W); t: (B,) long in [0, T-1].

Parameterisations of the network output (alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t)):
    eps:  the noise added,             eps = (x_t - alpha x0) / sigma
    x0:   the clean image,             x0  = (x_t - sigma eps) / alpha
    v:    velocity (Salimans & Ho 2022) v = alpha eps - sigma x0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pokediff.diffusion.schedules import NoiseSchedule, extract

PREDICTIONS = ("eps", "v", "x0")


def q_sample(sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) in closed form (DDPM eq. 4)."""
    alpha = extract(sched.table("sqrt_alphas_cumprod", x0.device, x0.dtype), t, x0.shape)
    sigma = extract(sched.table("sqrt_one_minus_alphas_cumprod", x0.device, x0.dtype), t, x0.shape)
    return alpha * x0 + sigma * noise


def q_step_sample(
    sched: NoiseSchedule, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I): one step (DDPM eq. 2)."""
    beta = extract(sched.table("betas", x_prev.device, x_prev.dtype), t, x_prev.shape)
    return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * noise


def _alpha_sigma(sched: NoiseSchedule, t: torch.Tensor, like: torch.Tensor):
    alpha = extract(sched.table("sqrt_alphas_cumprod", like.device, like.dtype), t, like.shape)
    sigma = extract(sched.table("sqrt_one_minus_alphas_cumprod", like.device, like.dtype), t, like.shape)
    return alpha, sigma


def training_target(
    sched: NoiseSchedule, prediction: str, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """What the network is trained to output for parameterisation ``prediction``."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        alpha, sigma = _alpha_sigma(sched, t, x0)
        return alpha * noise - sigma * x0
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


def to_x0_eps(
    prediction: str, output: torch.Tensor, x_t: torch.Tensor, alpha, sigma
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a network output to (x0_hat, eps_hat) given x_t and alpha_t, sigma_t.

    alpha, sigma: Python floats (samplers, one t for the batch) or tensors broadcastable to x_t."""
    if prediction == "eps":
        return (x_t - sigma * output) / alpha, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    if prediction == "v":
        # From v = alpha eps - sigma x0 and x_t = alpha x0 + sigma eps, with alpha^2 + sigma^2 = 1.
        return alpha * x_t - sigma * output, sigma * x_t + alpha * output
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


def from_x0_eps(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The inverse of ``to_x0_eps``: the output a perfect network of type ``prediction`` would give."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


def min_snr_weight(sched: NoiseSchedule, t: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), expressed for each parameterisation.

    The x0-space weight is min(SNR, gamma). An eps-MSE equals SNR times an x0-MSE and a v-MSE equals
    (SNR + 1) times it, so the same trade-off divides by those factors. Returns (B,)."""
    snr = sched.table("snr", t.device)[t]
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1.0)
    if prediction == "x0":
        return clipped
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


def diffusion_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error per example, optionally weighted, averaged over the batch (a scalar).

    output/target: (B, C, H, W); weights: (B,) or None. The MSE is computed in float32 even when the
    network ran under bf16 autocast."""
    per_example = F.mse_loss(output.float(), target.float(), reduction="none").mean(dim=tuple(range(1, output.ndim)))
    if weights is not None:
        per_example = per_example * weights
    return per_example.mean()
