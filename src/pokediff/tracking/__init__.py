"""MLflow tracking: the only package that imports mlflow, and nothing below the stages imports it.
Import the module you need; nothing is imported here, so the score stage loads no model code.

    store.py         where the store is (project sqlite or MLFLOW_TRACKING_URI), the experiment, the
                     registered model's name, provenance and link tags, the run info file
    run.py           TrainingRun: the train stage's run (params, metrics, images, the model at the end);
                     an MLflow outage never costs training
    served_model.py  log model.safetensors as an mlflow.pyfunc model from code, register a version
    pyfunc_model.py  the code MLflow stores and `mlflow models serve` runs (never imported by pokediff)
    registry.py      download a registered version's safetensors weights (`pokediff sample --model`)
    evaluations.py   the score stage's nested evaluation runs, evaluation keys, the champion aliases

One MLflow run per training (the *pipeline run*): the train stage opens it and logs every param of
params.yaml, the git commit and the DVC data hash as tags, the dataset and validation summaries,
per-step loss / lr / grad-norm / images-per-second, in-training FID, the checkpoint and the model
(registered as ``pokemon-ddpm``, one new version per run). The score stage opens a *nested* run under
it for each evaluation, so changing the sampler and re-running gives a second evaluation of the same
model, side by side in the UI. The model version with the best FID under the champion's evaluation
key carries the alias ``champion`` (evaluations.py: FIDs compare only under one key of num_samples,
reference stats and feature extractor).

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``, both in the
project root (found by walking up from the working directory to dvc.yaml / params.yaml / .dvc).
``MLFLOW_TRACKING_URI`` switches to a server. The run of a pipeline is found by the next stage
through <train.out_dir>/mlflow_run.json.
"""
