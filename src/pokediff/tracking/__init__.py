"""MLflow tracking: the only package that imports mlflow.

One MLflow run per training (the *pipeline run*): the train stage opens it and logs every param of
params.yaml, the git commit and the DVC data hash as tags, the dataset and validation summaries,
per-step loss / lr / grad-norm / images-per-second, in-training FID, the checkpoint and the model
(an ``mlflow.pyfunc`` model from code whose only artifact is model.safetensors, registered as
``pokemon-ddpm``, one new version per run). Downstream stages
(sample + score) open a *nested* run under it for each evaluation, so changing the sampler and
re-running gives a second evaluation of the same model, side by side in the UI. The model version
with the best FID under the champion's evaluation key carries the alias ``champion`` (see
registry.py: FIDs compare only under one key of num_samples, reference stats and feature extractor).

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``, both in the
project root (found by walking up from the working directory to dvc.yaml / params.yaml / .dvc).
``MLFLOW_TRACKING_URI`` switches to a server. The run of a pipeline is found by the next stage
through <train.out_dir>/mlflow_run.json.
"""

from pokediff.tracking.registry import (
    CHAMPION_ALIAS,
    MODEL_NAME,
    EvaluationLogger,
    champion_version,
    evaluation_key,
    load_registered_model,
)
from pokediff.tracking.run import TrainingRun
from pokediff.tracking.store import (
    EXPERIMENT_NAME,
    RUN_INFO_FILE,
    TrackingError,
    configure,
    project_root,
    read_run_info,
)

__all__ = [
    "CHAMPION_ALIAS",
    "EXPERIMENT_NAME",
    "MODEL_NAME",
    "RUN_INFO_FILE",
    "EvaluationLogger",
    "TrackingError",
    "TrainingRun",
    "champion_version",
    "configure",
    "evaluation_key",
    "load_registered_model",
    "project_root",
    "read_run_info",
]
