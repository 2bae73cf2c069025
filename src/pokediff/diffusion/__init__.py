"""Pure diffusion math: schedules, the forward process, samplers. Imports torch only (and the
torch-free pokediff.choices and pokediff.errors).

    from pokediff.diffusion import NoiseSchedule, q_sample, reverse_process
    sched = NoiseSchedule("cosine", timesteps=1000)
    x_t = q_sample(sched, x0, t, noise)
    x0_hat = reverse_process(model, sched, shape=(16, 3, 64, 64), sampler="ddim", steps=50, eta=0.0,
                             prediction="eps", generator=g)
"""

from pokediff.choices import PREDICTIONS, SAMPLERS, SCHEDULES, SPACINGS
from pokediff.diffusion.forward import (
    diffusion_loss,
    from_x0_eps,
    min_snr_weight,
    q_sample,
    q_step_sample,
    to_x0_eps,
    training_target,
)
from pokediff.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    GaussianStepSampler,
    Sampler,
    StepOutput,
    make_sampler,
    make_timesteps,
    reverse_process,
)
from pokediff.diffusion.schedules import DiffusionValueError, NoiseSchedule, extract, make_betas

__all__ = [
    "PREDICTIONS", "SAMPLERS", "SCHEDULES", "SPACINGS",
    "NoiseSchedule", "make_betas", "extract", "DiffusionValueError",
    "q_sample", "q_step_sample", "training_target", "to_x0_eps", "from_x0_eps",
    "min_snr_weight", "diffusion_loss",
    "Sampler", "StepOutput", "GaussianStepSampler", "DDPMSampler", "DDIMSampler", "DPMSolverPP2MSampler",
    "make_sampler", "make_timesteps", "reverse_process",
]
