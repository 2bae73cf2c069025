"""Training checkpoints kept in the team's MLflow run, so that a run killed on one worker resumes on another.

A worker's checkout is a fresh clone that lives as long as its flow run: a checkpoint on its disk is lost
with it. While a team run trains, each new ``checkpoints/last.pt`` (and its ``last.json`` sidecar: step and
fingerprint) is uploaded to the training run's artifacts under ``pushed-checkpoint/`` through the server's
artifact proxy, and the run is tagged with the step and the run's *resume key* (a hash of the recipe:
everything that decides the trained weights). The next run of the same recipe finds the newest unfinished
run with that key, downloads the two files into its own ``checkpoints/`` and writes ``mlflow_run.json``
naming that run: `pokediff train --auto-resume` then continues it (it still checks the fingerprint itself,
and starts fresh if the data or settings differ), logging into the same MLflow run.

Uploads never cost training: a failure is returned to the caller, who warns and tries the next checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from pokediff.tracking.store import EXPERIMENT_NAME, RUN_INFO_FILE, quick_http

ARTIFACT_DIR = "pushed-checkpoint"
STEP_TAG = "pokediff.pushed_checkpoint_step"
KEY_TAG = "pokediff.resume_key"
FLOW_RUN_TAG = "pokediff.team_flow_run_id"
CHECKPOINT_NAME, SIDECAR_NAME = "last.pt", "last.json"
MAX_CANDIDATES = 20
# A checkpoint of the GPU recipe is about 1 GB: a few retries and a per-read timeout long enough for it,
# but still bounded (MLflow's defaults wait minutes on a dead server).
TRANSFER_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def push_checkpoint(run_id: str, checkpoint_dir: Path, resume_key: str, flow_run_id: str | None) -> int | None:
    """Upload checkpoint_dir/last.pt and last.json to ``run_id``; returns the step pushed, None if there was
    nothing complete to push. A snapshot is copied first: training may replace the files meanwhile."""
    sidecar = checkpoint_dir / SIDECAR_NAME
    checkpoint = checkpoint_dir / CHECKPOINT_NAME
    if not (sidecar.is_file() and checkpoint.is_file()):
        return None
    with tempfile.TemporaryDirectory(prefix="pokediff-ckpt-") as tmp:
        # The sidecar first: training writes last.pt, then last.json, so this last.pt is at least as new.
        info_text = sidecar.read_text()[:10_000]
        shutil.copy2(checkpoint, Path(tmp) / CHECKPOINT_NAME)
        (Path(tmp) / SIDECAR_NAME).write_text(info_text)
        step = int(json.loads(info_text).get("step", 0))
        with quick_http(TRANSFER_HTTP_ENV):
            client = MlflowClient()
            client.log_artifacts(run_id, tmp, ARTIFACT_DIR)
            tags = {STEP_TAG: str(step), KEY_TAG: resume_key}
            if flow_run_id:
                tags[FLOW_RUN_TAG] = flow_run_id
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
    return step


def find_pushed_checkpoint(resume_key: str) -> list[dict]:
    """Unfinished training runs of this recipe that pushed a checkpoint, newest first:
    [{"run_id", "step", "flow_run_id", "status"}]."""
    with quick_http():
        client = MlflowClient()
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            return []
        unfinished = f"tags.`{KEY_TAG}` = '{resume_key}' and attributes.status != 'FINISHED'"
        runs = client.search_runs([experiment.experiment_id], filter_string=unfinished,
                                  order_by=["attributes.start_time DESC"], max_results=MAX_CANDIDATES)
    return [{"run_id": run.info.run_id, "step": int(run.data.tags.get(STEP_TAG, "0")),
             "flow_run_id": run.data.tags.get(FLOW_RUN_TAG), "status": run.info.status}
            for run in runs if STEP_TAG in run.data.tags]


def restore_pushed_checkpoint(run_id: str, train_out_dir: Path) -> int:
    """Download run_id's pushed checkpoint into <train_out_dir>/checkpoints and point mlflow_run.json at
    the run (so training continues it). Returns the checkpoint's step."""
    checkpoint_dir = train_out_dir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pokediff-ckpt-") as tmp, quick_http(TRANSFER_HTTP_ENV):
        local = Path(MlflowClient().download_artifacts(run_id, ARTIFACT_DIR, tmp))
        step = int(json.loads((local / SIDECAR_NAME).read_text()[:10_000]).get("step", 0))
        shutil.move(local / CHECKPOINT_NAME, checkpoint_dir / CHECKPOINT_NAME)
        shutil.move(local / SIDECAR_NAME, checkpoint_dir / SIDECAR_NAME)
    (train_out_dir / RUN_INFO_FILE).write_text(json.dumps({"run_id": run_id, "resumed_from_step": step}) + "\n")
    return step
