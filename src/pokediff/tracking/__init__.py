"""MLflow tracking: the only package that imports mlflow.

One MLflow run per training (the *pipeline run*): the train stage opens it and logs every param of
params.yaml, the git commit and the DVC data hash as tags, the dataset and validation summaries,
per-step loss / lr / grad-norm / images-per-second, in-training FID, the checkpoint and the model
(an ``mlflow.pyfunc`` model from code whose only artifact is model.safetensors, registered as
``pokemon-ddpm``, one new version per run). Downstream stages
(sample + score) open a *nested* run under it for each evaluation, so changing the sampler and
re-running gives a second evaluation of the same model, side by side in the UI. The model version
with the best FID carries the alias ``champion``.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``, both relative
to the project root (the working directory of every stage). ``MLFLOW_TRACKING_URI`` switches to a
server. The run of a pipeline is found by the next stage through <train.out_dir>/mlflow_run.json.
"""

from pokediff.tracking.registry import (
    CHAMPION_ALIAS,
    MODEL_NAME,
    EvaluationLogger,
    champion_version,
    load_registered_model,
)
from pokediff.tracking.run import TrainingRun
from pokediff.tracking.store import EXPERIMENT_NAME, RUN_INFO_FILE, configure, read_run_info

__all__ = [
    "CHAMPION_ALIAS",
    "EXPERIMENT_NAME",
    "MODEL_NAME",
    "RUN_INFO_FILE",
    "EvaluationLogger",
    "TrainingRun",
    "champion_version",
    "configure",
    "load_registered_model",
    "read_run_info",
]
