"""The MLflow store: where it is, the experiment, provenance tags and small shared helpers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
ARTIFACT_ROOT = Path("mlruns") / "artifacts"
EXPERIMENT_NAME = "pokediff"
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


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
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
    info = read_json(path)
    if not info.get("run_id"):
        raise FileNotFoundError(f"{path}: no MLflow run recorded; run `pokediff train` first")
    return info
