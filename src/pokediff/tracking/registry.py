"""The model registry: logging and registering models, evaluations and the champion alias."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import pokediff
from pokediff.errors import shorten
from pokediff.tracking.store import configure, finite_metrics, read_run_info
from pokediff.training.checkpoint import CheckpointError

MODEL_NAME = "pokemon-ddpm"
CHAMPION_ALIAS = "champion"


def log_and_register_model(model_file: Path, run_id: str | None) -> str:
    """Log model.safetensors as an ``mlflow.pyfunc`` model and register it as a new version of MODEL_NAME.

    "Models from code": python_model is the path of tracking/pyfunc_model.py, so MLflow stores source
    code and the safetensors weights (its only artifact), never a pickle of the network. With a
    signature and an input example (the request of pokediff/serving.py), so ``mlflow models serve``
    answers sampling requests with PNGs."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pokediff.serving import REQUEST_EXAMPLE
    from pokediff.training.checkpoint import MODEL_FILE_NAME, load_file

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
        python_model=str(Path(pokediff.__file__).parent / "tracking" / "pyfunc_model.py"),
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


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


# ----------------------------------------------------------------------------------------------
# Evaluations (sample + score) and the champion
# ----------------------------------------------------------------------------------------------
class EvaluationLogger:
    """Logs one evaluation as a nested run under the pipeline's training run and keeps the
    ``champion`` alias on the model version with the lowest FID."""

    def __init__(self, train_out_dir: str | Path):
        self.info = read_run_info(train_out_dir)

    def log(self, params: dict[str, Any], metrics: dict[str, Any], artifacts: list[Path], run_name: str) -> dict:
        configure()
        parent = self.info["run_id"]
        clean = finite_metrics(metrics)
        with mlflow.start_run(run_id=parent):
            with mlflow.start_run(run_name=run_name, nested=True, tags={"pokediff.stage": "score"}) as child:
                mlflow.log_params(params)
                mlflow.log_metrics(clean)
                for path in artifacts:
                    if Path(path).exists():
                        mlflow.log_artifact(str(path))
            # The headline numbers also go on the pipeline run, so runs compare side by side.
            mlflow.log_metrics(clean)
        result = {"evaluation_run_id": child.info.run_id, "pipeline_run_id": parent}
        version = self.info.get("model_version")
        if version and "fid" in clean:
            result.update(update_champion(str(version), clean["fid"], run_name))
        return result


def update_champion(version: str, fid: float, how: str = "") -> dict[str, Any]:
    """Record an evaluation's FID on the model version and move ``champion`` to the best version.

    A version's ``fid`` tag is its best FID over all its evaluations (``fid_by`` says which sampler
    settings reached it): re-scoring a model with a worse sampler does not make the model worse."""
    client = MlflowClient()
    tags = client.get_model_version(MODEL_NAME, version).tags
    best = fid
    if tags.get("fid") is not None and float(tags["fid"]) <= fid:
        best = float(tags["fid"])
    else:
        client.set_model_version_tag(MODEL_NAME, version, "fid", f"{fid:.6g}")
        client.set_model_version_tag(MODEL_NAME, version, "fid_by", how)
    current = champion_version()
    if current is None or current[1] is None or current[0] == version or best < current[1]:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION_ALIAS, version)
        return {"champion_version": version, "champion_fid": best, "is_champion": True}
    return {"champion_version": current[0], "champion_fid": current[1], "is_champion": False}


def champion_version() -> tuple[str, float | None] | None:
    """(version, its FID) of the model carrying the champion alias, or None."""
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    except MlflowException:
        return None
    fid = mv.tags.get("fid")
    return str(mv.version), (float(fid) if fid is not None else None)


def load_registered_model(uri: str, *, use_ema: bool = True, device: str | torch.device = "cpu"):
    """Load a registered model (e.g. ``models:/pokemon-ddpm@champion``) from its safetensors weights.

    Downloads only ``artifacts/*.safetensors`` of the version into a temporary directory that is removed
    before returning, and reads it with safetensors: nothing in the registry is unpickled or imported.
    Returns (model in eval mode on device, ModelConfig, DiffusionConfig, step), as training.load_model."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    from pokediff.training.checkpoint import load_model

    configure()
    if not ModelsArtifactRepository.is_models_uri(uri):
        raise CheckpointError(f"{shorten(uri, 200)}: not a registry URI (expected models:/NAME@ALIAS or "
                              "models:/NAME/VERSION)")
    try:
        repo = ModelsArtifactRepository(uri)
        found = [f for f in repo.list_artifacts(_WEIGHTS_DIR) if not f.is_dir and f.path.endswith(".safetensors")]
    except MlflowException as exc:
        first = (exc.message or str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{shorten(uri, 200)}: not found in the MLflow store {mlflow.get_tracking_uri()} "
                              f"({shorten(first, 200)})") from None
    where = f"{shorten(uri, 200)} (version {repo.model_version})"
    if len(found) != 1:
        raise CheckpointError(
            f"{where}: holds no safetensors weights under {_WEIGHTS_DIR}/ (a version logged by an older pokediff "
            "is a pickle, which pokediff does not load); register a model.safetensors, e.g. convert the run's "
            "model.pt with `pokediff convert-checkpoint --trust OLD model.safetensors`")
    with tempfile.TemporaryDirectory(prefix="pokediff-model-") as tmp:
        local = Path(repo.download_artifacts(found[0].path, dst_path=tmp))
        return load_model(local, use_ema=use_ema, device=device)


_WEIGHTS_DIR = "artifacts"  # where mlflow.pyfunc puts the `artifacts={"weights": ...}` files
