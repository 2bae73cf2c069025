"""The names of every diffusion choice, each defined once. No imports: torch-free and cheap.

The diffusion math (pokediff.diffusion, which re-exports these), the pydantic fields of params.yaml
(pokediff.config: ``Literal[SAMPLERS]``), the CLI's argparse ``choices`` and the Prefect flows all take
the accepted values from here, so adding a sampler or a schedule is one edit. The order is the order
in which error messages list them.

This module lives beside config.py rather than inside pokediff/diffusion/ because config.py (loaded by
every stage, also ingest's worker processes) must not import torch, and importing any module of the
diffusion package runs its __init__, which imports torch.
"""

SCHEDULES = ("linear", "cosine", "sigmoid")  # beta schedules (diffusion.schedule)
PREDICTIONS = ("eps", "v", "x0")  # what the network outputs (diffusion.prediction)
LOSS_WEIGHTINGS = ("none", "min_snr")  # per-example loss weights (diffusion.loss_weighting)
SAMPLERS = ("ddpm", "ddim", "dpmpp2m")  # sample.sampler
SPACINGS = ("trailing", "leading", "linspace", "logsnr")  # how a sampler picks its timesteps
AUTO_SPACING = "auto"  # sample.spacing: the sampler's own default below
DEFAULT_SPACING = {"ddpm": "trailing", "ddim": "trailing", "dpmpp2m": "logsnr"}
VARIANCES = ("beta_tilde", "beta")  # DDPM's per-step noise: the posterior variance or its upper bound
ETA_SAMPLERS = ("ddim",)  # the samplers whose noise level eta can set; the others refuse eta != 0
PRECISIONS = ("auto", "bf16", "fp32")  # train.precision, `pokediff sample --precision`; auto = bf16 on CUDA only

# DDPM's linear schedule at T = 1000; other T scale both ends by 1000 / T, so the last beta stays below 1
# only for T > 1000 * LINEAR_BETA_END (20): params.yaml is checked against that before any work.
LINEAR_BETA_START, LINEAR_BETA_END = 1e-4, 0.02
LINEAR_MIN_TIMESTEPS = int(1000 * LINEAR_BETA_END) + 1
