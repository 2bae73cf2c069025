"""The train stage's MLflow run: params, provenance, per-step metrics, images, final artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException

import pokediff
from pokediff.config import Params, flatten
from pokediff.data.fetch import file_sha256
from pokediff.tracking.registry import MODEL_NAME, log_and_register_model
from pokediff.tracking.store import (
    RUN_INFO_FILE,
    configure,
    dvc_data_hash,
    finite_metrics,
    git_commit,
    read_json,
)


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
        previous = read_json(self.out_dir / RUN_INFO_FILE) if self.resume else {}
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
            summary = read_json(self.dataset_dir / "ingest_summary.json")
            mlflow.log_metrics({f"data.{k}": v for k, v in finite_metrics(flatten(summary)).items()})
            manifest = self.dataset_dir / "manifest.csv"
            if manifest.exists():
                mlflow.set_tag("pokediff.manifest_sha256", file_sha256(manifest))
        if self.validation_dir is not None:
            metrics = read_json(self.validation_dir / "validation_metrics.json")
            mlflow.log_metrics({f"validation.{k}": v for k, v in finite_metrics(metrics).items()})

    # -- during training
    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        mlflow.log_metrics(finite_metrics(metrics), step=step)

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
