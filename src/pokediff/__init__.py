"""pokediff: denoising diffusion models that generate Pokémon sprites.

Subpackages:
    diffusion   pure math (schedules, forward process, samplers); imports torch only
    models      the U-Net noise predictor; imports torch only
    training    the training loop (EMA, checkpoints, exact resume)
    data        fetch, ingest, validate, dataset
    evaluation  FID / KID / memorisation
    tracking    the only place that talks to MLflow
    stages      CLI subcommands: read params, do I/O
"""

__version__ = "0.1.0"
