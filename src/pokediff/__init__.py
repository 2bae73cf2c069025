"""pokediff: denoising diffusion models that generate Pokémon sprites.

Subpackages and modules, each importing only what sits below it:
    diffusion        pure math (schedules, forward process, samplers); imports torch only
    models           the U-Net noise predictor, built from a config.ModelConfig: imports torch and
                     pokediff.config (pydantic, PyYAML), no MLOps package
    checkpoint       the model-file format (model.safetensors, checkpoints/last.pt): save, load, resume
    generation       images from a trained model in seeded batches, saved as PNGs
    sample_requests  the served model's sampling requests: parse, bound, answer
    training         the training loop (EMA, exact resume, DDP, the in-training FID, memory estimate)
    data             fetch, ingest, validate, load the dataset
    evaluation       FID / KID / memorisation
    tracking         the only package that imports MLflow; only the stages import it
    stages           CLI subcommands: read params, do I/O
    config, choices, errors, devices, env, locks, imaging, cli: the basics every layer shares
"""

__version__ = "0.1.0"
