"""The forward (noising) process, prediction targets, and the training loss.

Shapes: x0, x_t, noise: (B, C, H, W); t: (B,) long in [0, T-1] (checked: see schedules.check_timesteps).

Parameterisations of the network output (alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t)):
    eps:  the noise added,             eps = (x_t - alpha x0) / sigma
    x0:   the clean image,             x0  = (x_t - sigma eps) / alpha
    v:    velocity (Salimans & Ho 2022) v = alpha eps - sigma x0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pokediff.choices import PREDICTIONS
from pokediff.diffusion.schedules import NoiseSchedule, check_choice, extract


def _alpha_sigma(sched: NoiseSchedule, t: torch.Tensor, like: torch.Tensor):
    """(alpha_t, sigma_t) = (sqrt(abar_t), sqrt(1 - abar_t)) for a batch of t, each (B, 1, 1, ...)."""
    alpha = extract(sched.table("sqrt_alphas_cumprod", like.device, like.dtype), t, like.shape)
    sigma = extract(sched.table("sqrt_one_minus_alphas_cumprod", like.device, like.dtype), t, like.shape)
    return alpha, sigma


def q_sample(sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) in closed form (DDPM eq. 4)."""
    alpha, sigma = _alpha_sigma(sched, t, x0)
    return alpha * x0 + sigma * noise


def q_step_sample(
    sched: NoiseSchedule, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I): one step (DDPM eq. 2)."""
    beta = extract(sched.table("betas", x_prev.device, x_prev.dtype), t, x_prev.shape)
    return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * noise


def training_target(
    sched: NoiseSchedule, prediction: str, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """What the network is trained to output for parameterisation ``prediction``: the output a perfect
    network would give for this (x0, noise) pair."""
    alpha, sigma = _alpha_sigma(sched, t, x0)
    return from_x0_eps(prediction, x0, noise, alpha, sigma)


def to_x0_eps(
    prediction: str, output: torch.Tensor, x_t: torch.Tensor, alpha, sigma
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a network output to (x0_hat, eps_hat) given x_t and alpha_t, sigma_t: the one conversion
    from any parameterisation (samplers, tests); ``from_x0_eps`` is its inverse.

    alpha, sigma: Python floats (samplers, one t for the batch) or tensors broadcastable to x_t."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return (x_t - sigma * output) / alpha, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    # v: from v = alpha eps - sigma x0 and x_t = alpha x0 + sigma eps, with alpha^2 + sigma^2 = 1.
    return alpha * x_t - sigma * output, sigma * x_t + alpha * output


def from_x0_eps(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The inverse of ``to_x0_eps``: the output a perfect network of type ``prediction`` would give."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return alpha * eps - sigma * x0  # v


# An eps-MSE equals SNR times an x0-MSE and a v-MSE equals (SNR + 1) times it (the conversions above).
_MSE_PER_X0_MSE = {"eps": lambda snr: snr, "v": lambda snr: snr + 1.0, "x0": None}  # keys: PREDICTIONS


def min_snr_weight(sched: NoiseSchedule, t: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), expressed for each parameterisation.

    The x0-space weight is min(SNR, gamma); an MSE in another parameterisation is divided by its factor
    over the x0-MSE, so the same trade-off results. Returns (B,)."""
    check_choice("prediction", prediction, PREDICTIONS)
    snr = extract(sched.table("snr", t.device), t, t.shape)
    clipped = snr.clamp(max=gamma)
    factor = _MSE_PER_X0_MSE[prediction]
    return clipped if factor is None else clipped / factor(snr)


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
