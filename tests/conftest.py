"""Shared fixtures: tiny configurations that keep CPU tests fast."""

from __future__ import annotations

import os

import pytest

# Before torch is imported (libgomp reads it then), as the pokediff CLI does: on a shared machine,
# spinning OpenMP threads make every CPU test several times slower (pokediff.env.CPU_THREAD_DEFAULTS).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

os.environ.setdefault("DO_NOT_TRACK", "1")
# Under pytest-xdist the workers share the cores: each takes its part, so two workers on two cores do not
# fight over four threads.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _workers)))


from helpers import tiny_model_config  # noqa: E402  (tests/ is on sys.path: pyproject pythonpath)


@pytest.fixture(autouse=True)
def _tracking_uri_put_back():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: a test that tracks in-process would hand its
    temporary store to every later test's subprocesses. Put back what the test found."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def tiny_model_cfg():
    return tiny_model_config()


@pytest.fixture
def gaussian_oracle():
    """The optimal noise predictor for data x0 ~ N(mu, s^2 I), in any parameterisation.

    E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar): the posterior mean of
    the noise when x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with both terms Gaussian."""
    from pokediff.diffusion import from_x0_eps

    def make(sched, mu: float, s: float, prediction: str = "eps"):
        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            abar = sched.table("alphas_cumprod", x_t.device, torch.float64)[t].view(-1, *[1] * (x_t.ndim - 1))
            alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
            eps = sigma * (x_t.double() - alpha * mu) / (abar * s**2 + 1 - abar)
            x0 = (x_t.double() - sigma * eps) / alpha
            return from_x0_eps(prediction, x0, eps, alpha, sigma).to(x_t.dtype)

        return model

    return make
