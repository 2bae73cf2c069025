"""MLflow tracking against a real SQLite store in a temporary project directory."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_model_config
from pokediff.config import DiffusionConfig, Params
from pokediff.training.checkpoint import load_file, save_model_file


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _model_file(path, seed):
    from pokediff.models import UNet

    torch.manual_seed(seed)
    cfg = tiny_model_config()
    net = UNet(cfg)
    return save_model_file(path, net.state_dict(), net.state_dict(), cfg, DiffusionConfig(), step=3)


def _training_run(out_dir, seed):
    from pokediff.tracking import TrainingRun

    with TrainingRun(Params(), out_dir) as run:
        run.log_metrics(1, {"loss": 0.5, "note": "ignored", "nan": float("nan"), "odd key (é)": 1.0})
        version = run.finish(_model_file(out_dir / "model.safetensors", seed), None)
    return run.run_id, version


def test_champion_follows_the_best_fid(project):
    from mlflow import MlflowClient

    from pokediff.tracking import EvaluationLogger, champion_version, load_registered_model

    run_a, v_a = _training_run(project / "a", seed=0)
    run_b, v_b = _training_run(project / "b", seed=1)
    assert (v_a, v_b) == ("1", "2")
    assert json.loads((project / "a" / "mlflow_run.json").read_text())["model_version"] == "1"

    params = {"sample.sampler": "ddim"}
    first = EvaluationLogger(project / "a").log(params, {"fid": 80.0}, [], "eval-a")
    assert first["is_champion"] and champion_version() == ("1", 80.0)
    worse = EvaluationLogger(project / "b").log(params, {"fid": 95.0}, [], "eval-b1")
    assert not worse["is_champion"] and champion_version() == ("1", 80.0)
    better = EvaluationLogger(project / "b").log(params, {"fid": 60.0}, [], "eval-b2")
    assert better["is_champion"] and champion_version() == ("2", 60.0)
    # Re-scoring the champion with a worse sampler keeps its best FID (and the alias).
    EvaluationLogger(project / "b").log({"sample.sampler": "ddpm"}, {"fid": 70.0}, [], "eval-b3")
    assert champion_version() == ("2", 60.0)

    client = MlflowClient()
    assert client.get_model_version("pokemon-ddpm", "2").tags["fid_by"] == "eval-b2"
    children = client.search_runs(["1"], f"tags.mlflow.parentRunId = '{run_b}'")
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == ["eval-b1", "eval-b2", "eval-b3"]
    parent = client.get_run(run_a)
    assert parent.data.metrics["fid"] == 80.0 and "odd key ___" in parent.data.metrics
    assert "note" not in parent.data.metrics and "nan" not in parent.data.metrics

    # The champion's weights come back as the exact model file that was registered.
    model, _, _, step = load_registered_model("models:/pokemon-ddpm@champion")
    want = load_file(project / "b" / "model.safetensors")["ema"]
    assert step == 3 and all(torch.equal(model.state_dict()[k], want[k]) for k in want)


def test_missing_run_info_is_a_clear_error(project):
    from pokediff.tracking import EvaluationLogger

    with pytest.raises(FileNotFoundError, match="mlflow_run.json: no MLflow run recorded"):
        EvaluationLogger(project / "nowhere")
