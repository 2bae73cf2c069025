"""The model registry: logging and registering models, evaluations and the champion alias."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import pokediff
from pokediff.tracking.store import configure, finite_metrics, read_run_info

MODEL_NAME = "pokemon-ddpm"
CHAMPION_ALIAS = "champion"


def log_and_register_model(model_file: Path, run_id: str | None) -> str:
    """Log the EMA network with the mlflow.pytorch flavour (pickled, with pokediff's code bundled so the
    model loads anywhere) and register it as a new version of MODEL_NAME. model.pt rides along as an
    extra file: it carries the diffusion config that sampling needs."""
    from pokediff.training import load_model

    model, model_cfg, diffusion_cfg, step = load_model(model_file, use_ema=True, device="cpu")
    torch_pin = torch.__version__.split("+")[0]  # a CPU/GPU-agnostic requirement, not "+cu130"
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pickle",
        code_paths=[str(Path(pokediff.__file__).parent)],
        extra_files=[str(model_file)],
        pip_requirements=[f"torch=={torch_pin}", "numpy", "pyyaml", "pydantic"],
        registered_model_name=MODEL_NAME,
        metadata={"model_config": model_cfg.model_dump(mode="json"),
                  "diffusion_config": diffusion_cfg.model_dump(mode="json"), "step": step},
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(MODEL_NAME, version, "run_id", run_id or "")
    client.set_model_version_tag(MODEL_NAME, version, "schedule", diffusion_cfg.schedule)
    client.set_model_version_tag(MODEL_NAME, version, "prediction", diffusion_cfg.prediction)
    return version


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


def load_registered_model(uri: str) -> Path:
    """Download a registered model (e.g. ``models:/pokemon-ddpm@champion``) and return its model.pt."""
    configure()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                         dst_path=tempfile.mkdtemp(prefix="pokediff-model-")))
    except MlflowException as exc:
        raise FileNotFoundError(f"{uri}: not found in the MLflow store {mlflow.get_tracking_uri()} ({exc})") from None
    found = sorted(local.rglob("model.pt"))
    if not found:
        raise FileNotFoundError(f"{uri}: the registered model has no model.pt (not logged by pokediff?)")
    return found[0]
