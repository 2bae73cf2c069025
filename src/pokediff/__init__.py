"""pokediff: denoising diffusion models that generate Pokémon sprites.

Subpackages:
    diffusion   pure math (schedules, forward process, samplers); imports torch only
    models      the U-Net noise predictor, built from a config.ModelConfig: imports torch and
                pokediff.config (pydantic, PyYAML), no MLOps package
    training    the training loop (EMA, checkpoints, exact resume, the in-training FID)
    data        fetch, ingest, validate, dataset
    evaluation  FID / KID / memorisation
    tracking    the only place that talks to MLflow
    stages      CLI subcommands: read params, do I/O
"""

__version__ = "0.1.0"
