"""A budget-stopped training run says so in MLflow: the steps reached and the stop, as tags and in the
description (real SQLite store in a temporary project)."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_model_config
from pokediff.checkpoint import save_model_file
from pokediff.config import DiffusionConfig, Params


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _finish(project, summary: dict, max_seconds: float):
    from pokediff.models import UNet
    from pokediff.tracking.run import TrainingRun

    torch.manual_seed(0)
    net = UNet(tiny_model_config())
    model_file = save_model_file(project / "train" / "model.safetensors", net.state_dict(), net.state_dict(),
                                 tiny_model_config(), DiffusionConfig(), step=summary["steps"])
    params = Params().model_copy(update={"train": Params().train.model_copy(update={"max_seconds": max_seconds})})
    with TrainingRun(params, project / "train") as run:
        run.finish(model_file, None, summary=summary)
    return run.run_id


def test_steps_reached_and_the_budget_stop_are_recorded(project):
    from mlflow import MlflowClient

    stopped = _finish(project, {"steps": 1234, "stopped_by_budget": 1, "final_loss": 0.1}, max_seconds=300)
    tags = MlflowClient().get_run(stopped).data.tags
    assert tags["pokediff.steps_reached"] == "1234" and tags["pokediff.stopped_by_budget"] == "True"
    assert "| stopped by | wall-clock budget (300 s) at step 1234 of 20000 |" in tags["mlflow.note.content"]

    finished = _finish(project, {"steps": 20000, "stopped_by_budget": 0}, max_seconds=0)
    tags = MlflowClient().get_run(finished).data.tags
    assert tags["pokediff.steps_reached"] == "20000" and tags["pokediff.stopped_by_budget"] == "False"
    assert "stopped by" not in tags["mlflow.note.content"]
