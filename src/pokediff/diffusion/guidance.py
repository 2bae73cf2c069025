"""Classifier-free guidance (Ho & Salimans 2022): one network, conditional and unconditional at once.

    model = guided(net, labels, w)      # then any sampler, unchanged: model(x_t, t) -> guided prediction
    f_w(x_t, t) = (1 + w) f(x_t, t, c) - w f(x_t, t, null)  =  f(x_t, t, c) + w [f(x_t, t, c) - f(x_t, t, null)]

f is whatever the network predicts (eps, v or x0), and the two predictions come from one call on a
batch of 2B (x_t twice; the labels c, then the null label). w = 0 is the plain conditional model.

Why guiding the predicted quantity is guiding eps, for every prediction type: at a fixed (x_t, t) each
of them is an affine function of eps with the same coefficients for both labels,

    x_t = alpha x0 + sigma eps,   v = alpha eps - sigma x0   =>   eps = alpha v + sigma x_t,
                                                                  eps = (x_t - alpha x0) / sigma,

and the guidance weights (1 + w) and -w sum to 1, so the affine part cancels: the eps implied by the
guided v (or x0) is exactly (1 + w) eps(c) - w eps(null), the guided score of the paper
(-sigma grad log p(x_t) + w (-sigma grad log p(c | x_t))). The samplers' x0 clipping acts after guidance,
on the guided estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# net(x_t (B, C, H, W), t (B,), labels (B, K)) -> prediction (B, C, H, W); an all-zero label row is the null label
LabelledModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided(net: LabelledModel, labels: torch.Tensor, guidance: float) -> Callable[[torch.Tensor, torch.Tensor],
                                                                                 torch.Tensor]:
    """model(x_t, t) for a sampler: ``net`` conditioned on ``labels`` (B, K), guided with scale ``guidance``."""
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    both = torch.cat([labels, torch.zeros_like(labels)])  # (2B, K): c, then null

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 0:
            return net(x_t, t, labels)
        cond, uncond = net(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)  # one call, 2B
        return cond + guidance * (cond - uncond)

    return model
