"""MLflow runs, metrics, artifacts and the model registry for pokediff (see the package docstring)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import pokediff
from pokediff.config import Params, flatten
from pokediff.data.fetch import file_sha256

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
ARTIFACT_ROOT = Path("mlruns") / "artifacts"
EXPERIMENT_NAME = "pokediff"
MODEL_NAME = "pokemon-ddpm"
CHAMPION_ALIAS = "champion"
RUN_INFO_FILE = "mlflow_run.json"


# ----------------------------------------------------------------------------------------------
# Store set-up and provenance
# ----------------------------------------------------------------------------------------------
def configure(experiment: str = EXPERIMENT_NAME) -> str:
    """Point MLflow at the project store (or MLFLOW_TRACKING_URI) and make sure the experiment exists.

    With the embedded SQLite store, artifacts go to mlruns/artifacts next to the database, so the whole
    store is one git-ignored folder. Returns the experiment id."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri == DEFAULT_TRACKING_URI:
        Path("mlruns").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return mlflow.set_experiment(experiment).experiment_id
    location = ARTIFACT_ROOT.resolve().as_uri() if uri.startswith("sqlite:") else None
    try:
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent stage
        experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    """HEAD's commit, with "-dirty" when tracked files differ from it; "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def dvc_data_hash(dvc_file: str | Path = "data.dvc") -> str:
    """The md5 that data.dvc pins for data/ (what the raw source was), or "unknown"."""
    try:
        outs = yaml.safe_load(Path(dvc_file).read_text())["outs"]
        return str(outs[0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers only (MLflow rejects None and strings; NaN is noise in the UI), under names MLflow
    accepts (free-text keys such as ingest's ignore reasons get their odd characters replaced)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[_METRIC_NAME_UNSAFE.sub("_", key)] = float(value)
    return out


_METRIC_NAME_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. :/]")


def read_run_info(train_out_dir: str | Path) -> dict[str, Any]:
    path = Path(train_out_dir) / RUN_INFO_FILE
    info = _read_json(path)
    if not info.get("run_id"):
        raise FileNotFoundError(f"{path}: no MLflow run recorded; run `pokediff train` first")
    return info


# ----------------------------------------------------------------------------------------------
# The training run
# ----------------------------------------------------------------------------------------------
class TrainingRun:
    """Context manager around the train stage's MLflow run.

        with TrainingRun(params, out_dir, resume=args.resume) as run:
            result = train(..., on_log=run.log_metrics, evaluate=...)
            run.finish(result.model_file, ...)
    """

    def __init__(self, params: Params, out_dir: str | Path, *, resume: bool = False,
                 dataset_dir: str | Path | None = None, validation_dir: str | Path | None = None):
        self.params, self.out_dir, self.resume = params, Path(out_dir), resume
        self.dataset_dir = Path(dataset_dir) if dataset_dir else None
        self.validation_dir = Path(validation_dir) if validation_dir else None
        self.run_id: str | None = None
        self.model_version: str | None = None

    # -- lifecycle
    def __enter__(self) -> TrainingRun:
        experiment_id = configure()
        previous = _read_json(self.out_dir / RUN_INFO_FILE) if self.resume else {}
        run = None
        if previous.get("run_id"):
            try:  # continue the killed run's MLflow run, so its curves stay in one place
                run = mlflow.start_run(run_id=previous["run_id"])
            except MlflowException:
                run = None
        if run is None:
            tags = {"pokediff.git_commit": git_commit(), "pokediff.dvc_data_md5": dvc_data_hash(),
                    "pokediff.stage": "train", "pokediff.version": pokediff.__version__,
                    "pokediff.device": "cuda" if torch.cuda.is_available() else "cpu"}
            run = mlflow.start_run(experiment_id=experiment_id, tags=tags,
                                   run_name=f"train-{self.params.diffusion.schedule}-{self.params.train.steps}")
            mlflow.log_params(self.params.to_flat_dict())
            self._log_dataset_summary()
        self.run_id = run.info.run_id
        self._write_run_info(experiment_id)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        mlflow.end_run(status="FINISHED" if exc_type is None else "FAILED")

    def _write_run_info(self, experiment_id: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        info = {"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": mlflow.get_tracking_uri(),
                "model_name": MODEL_NAME, "model_version": self.model_version}
        (self.out_dir / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    def _log_dataset_summary(self) -> None:
        """Ingest counts and validation results, as params/metrics of the run that used that data."""
        if self.dataset_dir is not None:
            summary = _read_json(self.dataset_dir / "ingest_summary.json")
            mlflow.log_metrics({f"data.{k}": v for k, v in _finite(flatten(summary)).items()})
            manifest = self.dataset_dir / "manifest.csv"
            if manifest.exists():
                mlflow.set_tag("pokediff.manifest_sha256", file_sha256(manifest))
        if self.validation_dir is not None:
            metrics = _read_json(self.validation_dir / "validation_metrics.json")
            mlflow.log_metrics({f"validation.{k}": v for k, v in _finite(metrics).items()})

    # -- during training
    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        mlflow.log_metrics(_finite(metrics), step=step)

    def log_image(self, image: torch.Tensor, key: str, step: int) -> None:
        """uint8 (C, H, W) image, e.g. the in-training sample grid, as a step-indexed image."""
        mlflow.log_image(image.permute(1, 2, 0).cpu().numpy(), key=key, step=step)

    # -- at the end
    def finish(self, model_file: Path, checkpoint: Path | None, extra_artifacts: list[Path] = ()) -> str:
        """Log files, the checkpoint and the model; register a new model version. Returns the version."""
        for path in extra_artifacts:
            if Path(path).exists():
                mlflow.log_artifact(str(path))
        if checkpoint is not None and checkpoint.exists():
            mlflow.log_artifact(str(checkpoint), artifact_path="checkpoints")
        self.model_version = log_and_register_model(model_file, self.run_id)
        mlflow.set_tag("pokediff.model_version", self.model_version)
        self._write_run_info(mlflow.get_run(self.run_id).info.experiment_id)
        return self.model_version


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
        clean = _finite(metrics)
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
