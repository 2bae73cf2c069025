"""Classifier-free guidance against a closed form, with no training.

Setting: two classes with x0 | c ~ N(mu_c, s^2 I), and the null label's predictor the optimal one for
x0 ~ N(mu_null, s^2 I) (a network whose null label learned one Gaussian, e.g. the mixture's moment match).
With equal variances V_t = abar s^2 + 1 - abar the optimal predictors are linear in x_t,

    eps_c(x_t)    = sigma (x_t - alpha mu_c) / V_t,     eps_null(x_t) = sigma (x_t - alpha mu_null) / V_t,

so the guided noise prediction (1 + w) eps_c - w eps_null = sigma (x_t - alpha mu_w) / V_t is exactly the
optimal predictor of N(mu_w, s^2 I) with

    mu_w = (1 + w) mu_c - w mu_null = mu_c + w (mu_c - mu_null),   std s unchanged.

Every exact sampler driven by it must return mean mu_w and std s, for each prediction type (guiding v
or x0 is guiding eps: see pokediff.diffusion.guidance), and each image at its own label's mean.
"""

from __future__ import annotations

import pytest
import torch

from pokediff.diffusion import NoiseSchedule, from_x0_eps, guided, reverse_process

S = 0.5
MU = {"a": 0.3, "b": -0.2}  # class means
MU_NULL = 0.05  # the null label's Gaussian
N_PER_CLASS = 4_000


def labelled_oracle(sched: NoiseSchedule, prediction: str, calls: list[int]):
    """net(x_t, t, labels (B, 2)): the optimal predictor of the Gaussian of each row's label; a zero row
    is the null label. Records the batch size of every call."""
    abar_table = sched.table("alphas_cumprod", torch.device("cpu"), torch.float64)

    def net(x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(x_t.shape[0])
        shape = (-1, *[1] * (x_t.ndim - 1))
        mu = (labels[:, 0] * MU["a"] + labels[:, 1] * MU["b"] + (labels.sum(1) == 0) * MU_NULL).double().view(shape)
        abar = abar_table[t].view(shape)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        eps = sigma * (x_t.double() - alpha * mu) / (abar * S**2 + 1 - abar)
        x0 = (x_t.double() - sigma * eps) / alpha
        return from_x0_eps(prediction, x0, eps, alpha, sigma).to(x_t.dtype)

    return net


CASES = [  # sampler, steps, prediction, w: every sampler, every prediction type, no and strong guidance
    ("ddpm", 250, "eps", 2.0), ("ddim", 100, "eps", 2.0), ("dpmpp2m", 20, "eps", 2.0),
    ("ddim", 100, "v", 3.0), ("dpmpp2m", 20, "x0", 1.0), ("dpmpp2m", 20, "v", 0.0),
]


@pytest.mark.parametrize("sampler,steps,prediction,w", CASES)
def test_guided_samples_land_at_the_closed_form_mean(sampler, steps, prediction, w):
    sched = NoiseSchedule("cosine", 1000)
    labels = torch.tensor([[1.0, 0.0]] * N_PER_CLASS + [[0.0, 1.0]] * N_PER_CLASS)  # (2N, 2): a, then b
    calls: list[int] = []
    model = guided(labelled_oracle(sched, prediction, calls), labels, w)
    shape = (labels.shape[0], 1, 2, 2)
    x = reverse_process(model, sched, shape, sampler, steps, prediction=prediction, clip_x0=False,
                        generator=torch.Generator().manual_seed(0))
    for i, name in enumerate(("a", "b")):
        part = x[i * N_PER_CLASS:(i + 1) * N_PER_CLASS]
        expected = MU[name] + w * (MU[name] - MU_NULL)  # 16,000 draws: the sample mean's std is ~0.004
        assert float(part.mean()) == pytest.approx(expected, abs=0.02), (name, float(part.mean()), expected)
        assert float(part.std()) == pytest.approx(S, rel=0.03)
    # one network call per step, on a batch of 2B (conditional + null) when guided, B when w = 0
    assert set(calls) == {2 * labels.shape[0] if w else labels.shape[0]}
    assert len(calls) == steps


def test_guidance_is_the_combination_of_one_batched_call() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, generator=g)

    def net(x, t, labels):  # any function of all three inputs
        return torch.tanh(x * (1 + labels @ weight).view(-1, 4, 1, 1)) + 0.01 * t.view(-1, 1, 1, 1)

    x, t = torch.randn(5, 4, 2, 2, generator=g), torch.full((5,), 7)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0]])
    cond, uncond = net(x, t, labels), net(x, t, torch.zeros_like(labels))
    torch.testing.assert_close(guided(net, labels, 2.5)(x, t), 3.5 * cond - 2.5 * uncond)
    torch.testing.assert_close(guided(net, labels, 0.0)(x, t), cond)
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        guided(net, labels, -1.0)
