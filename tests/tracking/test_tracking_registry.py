"""MLflow tracking against a real SQLite store in a temporary project directory."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_model_config
from pokediff.checkpoint import load_file, load_model, save_model_file
from pokediff.config import DiffusionConfig, Params


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("{}\n")  # marks the project root the store is found from
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
    from pokediff.tracking.run import TrainingRun

    with TrainingRun(Params(), out_dir) as run:
        run.log_metrics(1, {"loss": 0.5, "note": "ignored", "nan": float("nan"), "odd key (é)": 1.0})
        version = run.finish(_model_file(out_dir / "model.safetensors", seed), None)
    return run.run_id, version


KEY = "n300 ref:0123456789ab inception-2015-12-05/pool3/tf1"


def test_champion_follows_the_best_fid(project):
    from mlflow import MlflowClient

    from pokediff.tracking.evaluations import EvaluationLogger, champion_version
    from pokediff.tracking.registry import download_model_file

    run_a, v_a = _training_run(project / "a", seed=0)
    run_b, v_b = _training_run(project / "b", seed=1)
    assert (v_a, v_b) == ("1", "2")
    assert json.loads((project / "a" / "mlflow_run.json").read_text())["model_version"] == "1"

    params = {"sample.sampler": "ddim"}
    first = EvaluationLogger(project / "a").log(params, {"fid": 80.0}, [], "eval-a", key=KEY)
    assert first["is_champion"] and champion_version() == ("1", 80.0)
    worse = EvaluationLogger(project / "b").log(params, {"fid": 95.0}, [], "eval-b1", key=KEY)
    assert not worse["is_champion"] and champion_version() == ("1", 80.0)
    better = EvaluationLogger(project / "b").log(params, {"fid": 60.0}, [], "eval-b2", key=KEY)
    assert better["is_champion"] and champion_version() == ("2", 60.0)
    # Re-scoring the champion with a worse sampler keeps its best FID (and the alias).
    EvaluationLogger(project / "b").log({"sample.sampler": "ddpm"}, {"fid": 70.0}, [], "eval-b3", key=KEY)
    assert champion_version() == ("2", 60.0) == champion_version(KEY)

    client = MlflowClient()
    assert client.get_model_version("pokemon-ddpm", "2").tags["fid_by"] == "eval-b2"
    children = client.search_runs(["1"], f"tags.mlflow.parentRunId = '{run_b}'")
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == ["eval-b1", "eval-b2", "eval-b3"]
    assert {r.data.tags["pokediff.eval_key"] for r in children} == {KEY}
    # Only time series go to the training run's metrics: no free-text or NaN keys.
    parent = client.get_run(run_a)
    assert set(parent.data.metrics) <= {"loss", "lr", "grad_norm", "images_per_second", "eval_fid",
                                        "eval_kid_mean"} | {m for m in parent.data.metrics if m.startswith("system/")}

    # The champion's weights come back as the exact model file that was registered.
    (project / "download").mkdir()
    path = download_model_file("models:/pokemon-ddpm@champion", project / "download")
    assert path.read_bytes() == (project / "b" / "model.safetensors").read_bytes()
    model, _, _, step = load_model(path)
    want = load_file(project / "b" / "model.safetensors")["ema"]
    assert step == 3 and all(torch.equal(model.state_dict()[k], want[k]) for k in want)


def test_versions_scored_under_different_keys_never_compete(project):
    """FID falls with more samples: a version scored on 100 samples must not beat one scored on 300."""
    from mlflow import MlflowClient

    from pokediff.tracking.evaluations import EvaluationLogger, champion_version, evaluation_key

    key300 = evaluation_key(300, "ab" * 32, "inception-2015-12-05/pool3/tf1")
    key100 = evaluation_key(100, "ab" * 32, "inception-2015-12-05/pool3/tf1")
    other_ref = evaluation_key(300, "cd" * 32, "inception-2015-12-05/pool3/tf1")
    assert len({key300, key100, other_ref}) == 3 and "n300" in key300
    _training_run(project / "a", seed=0)
    _training_run(project / "b", seed=1)
    _training_run(project / "c", seed=2)
    params = {"sample.sampler": "ddim", "sample.steps": 25}
    EvaluationLogger(project / "a").log(params, {"fid": 80.0}, [], "eval-ddim-25 n300", key=key300, how="ddim")
    low = EvaluationLogger(project / "b").log(params, {"fid": 20.0}, [], "eval-ddim-25 n100", key=key100)
    assert low["is_champion"] and low["champion_alias"].startswith("champion-")  # its own key's champion
    EvaluationLogger(project / "c").log(params, {"fid": 10.0}, [], "eval-ddim-25 n300 ref2", key=other_ref)
    # `champion` stays with the n300 evaluation of version 1 however low the others' FIDs are.
    assert champion_version() == ("1", 80.0)
    assert champion_version(key100) == ("2", 20.0) and champion_version(other_ref) == ("3", 10.0)
    client = MlflowClient()
    assert client.get_registered_model("pokemon-ddpm").tags["champion_key"] == key300
    v1 = client.get_model_version("pokemon-ddpm", "1")
    assert v1.tags["eval_key"] == key300 and "fid" not in client.get_model_version("pokemon-ddpm", "2").tags
    # A better version under the champion's key takes the alias.
    EvaluationLogger(project / "b").log(params, {"fid": 70.0}, [], "eval-ddim-25 n300", key=key300)
    assert champion_version() == ("2", 70.0)


def test_headline_metrics_description_and_duration(project):
    """The pipeline run shows only the evaluation of its configured sampler/steps/num_samples, keeps the
    duration of training, and the model version's description states its evaluation."""
    import time

    from mlflow import MlflowClient

    from pokediff.tracking.evaluations import EvaluationLogger

    run_a, _ = _training_run(project / "a", seed=0)
    client = MlflowClient()
    end_before = client.get_run(run_a).info.end_time
    configured = {"sample.sampler": "ddim", "sample.steps": 50, "score.num_samples": 2048}  # Params()
    other = {"sample.sampler": "dpmpp2m", "sample.steps": 20, "score.num_samples": 2048}
    time.sleep(1.1)  # any re-opening of the training run would move its end time by >= 1 s
    first = EvaluationLogger(project / "a").log(configured, {"fid": 50.0, "kid_mean": 0.02, "num_samples": 2048},
                                                [], "eval-ddim-50 n2048", key=KEY, how="ddim, 50 steps, 2048 samples")
    second = EvaluationLogger(project / "a").log(other, {"fid": 40.0}, [], "eval-dpmpp2m-20 n2048", key=KEY,
                                                 how="dpmpp2m, 20 steps, 2048 samples")
    assert first["headline"] and not second["headline"]
    parent = client.get_run(run_a)
    assert parent.data.metrics["fid"] == 50.0 and parent.data.metrics["kid_mean"] == 0.02
    assert parent.info.end_time == end_before
    assert parent.data.tags["pokediff.headline_evaluation"] == first["evaluation_run_id"]
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("<!-- evaluation -->\n### FID 50.00") and "ddim, 50 steps, 2048 samples" in note
    child = client.get_run(first["evaluation_run_id"])
    assert set(child.data.metrics) == {"fid", "kid_mean"}  # num_samples is a count, not a metric
    description = client.get_model_version("pokemon-ddpm", "1").description
    assert "FID **40.00** with dpmpp2m, 20 steps, 2048 samples" in description and KEY in description


def test_missing_run_info_is_a_clear_error(project):
    from pokediff.tracking.evaluations import EvaluationLogger

    with pytest.raises(FileNotFoundError, match="mlflow_run.json: no MLflow run recorded"):
        EvaluationLogger(project / "nowhere")


def test_dataset_input_summaries_links_and_description(project, monkeypatch):
    """The dataset is an MLflow dataset input with DVC's md5; counts are JSON artifacts and tags, not
    metric charts; the run links to the Prefect flow run and the DVC experiment."""
    from mlflow import MlflowClient

    from pokediff.tracking.run import TrainingRun

    dataset = project / "outputs" / "dataset"
    (dataset / "images").mkdir(parents=True)
    (dataset / "manifest.csv").write_text("path\nimages/a.png\n")
    (dataset / "ingest_summary.json").write_text(json.dumps({"n_images": 2572, "ignored": {"back": 3}}))
    (project / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  ingest:\n    outs:\n    - path: outputs/dataset/images\n"
        "      md5: 0123456789abcdef0123456789abcdef.dir\n")
    monkeypatch.setenv("POKEDIFF_FLOW_RUN_ID", "flow-run-42")
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-pram")
    with TrainingRun(Params(), project / "train", dataset_dir=dataset) as run:
        run.log_metrics(10, {"loss": 0.5, "images_per_second": 40.0, "train_seconds": 3.0})
        run.finish(_model_file(project / "train" / "model.safetensors", 0), None,
                   summary={"steps": 10, "final_loss": 0.5, "seconds": 3.0, "parameters": 123})
    client = MlflowClient()
    got = client.get_run(run.run_id)
    [dataset_input] = got.inputs.dataset_inputs
    assert dataset_input.dataset.digest == "0123456789abcdef0123456789abcdef.dir"
    assert dataset_input.dataset.name == "pokemon-sprites-64px" and "outputs/dataset" in dataset_input.dataset.source
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert {m for m in got.data.metrics if not m.startswith("system/")} == {"loss", "images_per_second"}
    assert got.data.tags["pokediff.data.n_images"] == "2572"
    assert got.data.tags["pokediff.prefect_flow_run_id"] == "flow-run-42"
    assert got.data.tags["pokediff.dvc_exp_name"] == "bushy-pram"
    assert {a.path for a in client.list_artifacts(run.run_id, "data")} == {"data/ingest_summary.json"}
    note = got.data.tags["mlflow.note.content"]
    assert "| final loss | 0.5 |" in note and "version 1" in note


def test_the_run_name_tells_a_conditional_model_from_an_unconditional_one(project):
    from mlflow import MlflowClient

    from pokediff.tracking.run import TrainingRun

    names = []
    for condition in ("none", "type"):
        params = Params.model_validate({"model": {"condition": condition}, "train": {"steps": 600}})
        with TrainingRun(params, project / condition) as run:
            run.log_metrics(1, {"loss": 0.5})
        names.append(MlflowClient().get_run(run.run_id).info.run_name)
    assert names == ["train-cosine-600", "train-cosine-600-type"]
