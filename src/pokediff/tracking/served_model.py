"""Logging the served model: model.safetensors registered as an ``mlflow.pyfunc`` model from code.

"Models from code": MLflow stores the source of tracking/pyfunc_model.py (and pokediff's code) and the
safetensors weights as its only artifact, never a pickle of the network. The signature and the input
example are those of the sampling requests the served model answers (pokediff.sample_requests).
"""

from __future__ import annotations

from importlib.metadata import version as _version
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import pokediff
from pokediff.checkpoint import MODEL_FILE_NAME, CheckpointError, load_file
from pokediff.sample_requests import REQUEST_EXAMPLE
from pokediff.tracking.store import MODEL_NAME

# The code file MLflow stores as the model; named as a module so that pipelines.stage_deps counts it
# as a dependency of the stages that register models.
PYFUNC_MODULE = "pokediff.tracking.pyfunc_model"


def log_and_register_model(model_file: Path, run_id: str | None) -> str:
    """Log model.safetensors as an ``mlflow.pyfunc`` model and register it as a new version of MODEL_NAME.

    "Models from code": python_model is the path of tracking/pyfunc_model.py, so MLflow stores source
    code and the safetensors weights (its only artifact), never a pickle of the network. With a
    signature and an input example (a request of pokediff.sample_requests), so ``mlflow models serve``
    answers sampling requests with PNGs."""
    model_file = Path(model_file)
    if model_file.name != MODEL_FILE_NAME:
        raise CheckpointError(f"{model_file}: the registry takes a {MODEL_FILE_NAME} model file")
    meta = load_file(model_file)  # refuses anything but a pokediff model file before logging it
    model_cfg, diffusion_cfg, step = meta["config"]["model"], meta["config"]["diffusion"], meta["step"]
    signature = ModelSignature(
        inputs=Schema([ColSpec("long", "num_images"), ColSpec("string", "sampler"), ColSpec("long", "steps"),
                       ColSpec("long", "seed"), ColSpec("double", "eta", required=False)]),
        outputs=Schema([ColSpec("long", "request"), ColSpec("long", "image"), ColSpec("string", "png_base64")]),
    )
    torch_pin = torch.__version__.split("+")[0]  # a CPU/GPU-agnostic requirement, not "+cu130"
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=_module_path(PYFUNC_MODULE),
        artifacts={"weights": str(model_file)},
        code_paths=[str(Path(pokediff.__file__).parent)],
        signature=signature,
        input_example=pd.DataFrame([REQUEST_EXAMPLE]),
        pip_requirements=[f"torch=={torch_pin}", f"safetensors=={_version('safetensors')}", "numpy", "pandas",
                          "pillow", "pyyaml", "pydantic", f"mlflow=={mlflow.__version__}"],
        registered_model_name=MODEL_NAME,
        metadata={"model_config": model_cfg, "diffusion_config": diffusion_cfg, "step": step,
                  "weights": f"artifacts/{MODEL_FILE_NAME}", "format": meta["format"]},
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(MODEL_NAME, version, "run_id", run_id or "")
    client.set_model_version_tag(MODEL_NAME, version, "schedule", diffusion_cfg["schedule"])
    client.set_model_version_tag(MODEL_NAME, version, "prediction", diffusion_cfg["prediction"])
    return version


def _module_path(module: str) -> str:
    """pokediff.a.b -> the path of src/pokediff/a/b.py (without importing it)."""
    return str(Path(pokediff.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py"))
