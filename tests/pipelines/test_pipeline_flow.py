"""The whole pipeline, end to end, as the Prefect flow runs it: real DVC, real MLflow store, real
Prefect (test harness), real sprites, a tiny configuration.

One flow run is shared by the tests in this module (it takes a couple of minutes on 2 cores); the
tests then check what a user would look at: the flow's result, `dvc metrics show`, the MLflow run,
the registered model and its alias, that a second `dvc repro` does nothing, and that changing the
sampler reruns only sample and score.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.resolution=16", "model.resolution=16", "model.base_channels=16", "model.channel_mults=[1,2]",
    "model.num_res_blocks=1", "model.attention_resolutions=[8]", "model.head_channels=16", "model.groups=8",
    "model.dropout=0.0", "train.steps=12", "train.batch_size=8", "train.warmup_steps=2", "train.log_every=2",
    "train.checkpoint_every=6", "train.eval_every=6", "train.eval_num_samples=16", "train.eval_sampler_steps=3",
    "sample.steps=4", "sample.num_images=24", "sample.batch_size=24",
    "score.num_samples=24", "score.ref_max_images=24", "score.batch_size=8", "score.kid_subset_size=8",
    "score.kid_subsets=10",
]


def _sprites_tarball() -> Path:
    cache = Path(os.environ.get("POKEDIFF_CACHE_DIR", Path.home() / ".cache" / "pokediff")) / "sprites"
    subprocess.run([sys.executable, "-m", "pokediff", "fetch-data", "--params", "none",
                    "--raw-dir", str(cache)], check=True, capture_output=True)
    return next(cache.glob("*.tgz"))


def _project_copy(dest: Path) -> Path:
    """A fresh git + DVC checkout of this project (what `git clone` gives), with the sprites in data/."""
    for name in ("dvc.yaml", "params.yaml", "data.dvc", "prefect.yaml"):
        shutil.copy(REPO / name, dest / name)
    for name in ("src", "pipelines"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy(REPO / ".gitignore", dest / ".gitignore")
    (dest / "data").mkdir()
    shutil.copy(_sprites_tarball(), dest / "data")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)
    return dest


def _dvc(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    project = _project_copy(tmp_path_factory.mktemp("project"))
    cwd = os.getcwd()
    os.chdir(project)
    env_before = dict(os.environ)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        from pipelines.flows import pokediff_pipeline, sample_from_champion

        with prefect_test_harness():
            result = pokediff_pipeline(sampler="ddim", train_steps=12, overrides=TINY)
            champion_grid = sample_from_champion(num_images=4, steps=3, out="outputs/champion/grid.png")
        yield project, result, champion_grid
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env_before)


def test_flow_result_names_the_run_the_model_and_the_fid(pipeline_run):
    project, result, _ = pipeline_run
    assert result["model_name"] == "pokemon-ddpm" and result["model_version"] == "1"
    assert len(result["mlflow_run_id"]) == 32
    assert 0 < result["fid"] < 1000
    assert set(result["stages"]) == {"ingest", "validate", "ref_stats", "train", "sample", "score"}


def test_outputs_and_dvc_metrics(pipeline_run):
    project, result, _ = pipeline_run
    for path in ("outputs/dataset/manifest.csv", "outputs/validation/validation_metrics.json",
                 "outputs/ref_stats/ref_stats.npz", "outputs/train/model.safetensors", "outputs/samples/grid.png",
                 "outputs/samples/progression.png", "outputs/score/metrics.json"):
        assert (project / path).exists(), path
    assert len(list((project / "outputs/samples/images").glob("*.png"))) == 24
    shown = json.loads(_dvc("metrics", "show", "--json", cwd=project))
    flat = json.dumps(shown)
    for key in ('"fid"', '"kid_mean"', '"final_loss"', '"n_images"'):
        assert key in flat, key
    eval_rows = (project / "outputs/train/eval_log.csv").read_text().splitlines()
    assert eval_rows[0] == "step,fid,kid_mean" and [r.split(",")[0] for r in eval_rows[1:]] == ["6", "12"]


def test_mlflow_run_params_metrics_tags_and_registry(pipeline_run):
    import mlflow
    from mlflow import MlflowClient

    project, result, _ = pipeline_run
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlruns/mlflow.db")
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.params["train.steps"] == "12" and run.data.params["sample.sampler"] == "ddim"
    assert run.data.params["diffusion.schedule"] == "cosine"
    assert len(run.data.tags["pokediff.git_commit"]) >= 40
    assert run.data.tags["pokediff.dvc_data_md5"].endswith(".dir")
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [2, 4, 6, 8, 10, 12]
    assert {"fid", "kid_mean", "eval_fid", "images_per_second", "grad_norm", "lr"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "train_log.csv", "model.safetensors"} <= artifacts

    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 1 and children[0].data.metrics["fid"] == pytest.approx(result["fid"])
    assert children[0].data.params["sample.sampler"] == "ddim"

    champion = client.get_model_version_by_alias("pokemon-ddpm", "champion")
    assert str(champion.version) == "1" and float(champion.tags["fid"]) == pytest.approx(result["fid"], rel=1e-4)
    # The registered model's safetensors weights load and predict (no pickle anywhere).
    import torch

    from pokediff.tracking import load_registered_model

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    model, *_ = load_registered_model("models:/pokemon-ddpm@champion")
    assert model(torch.zeros(1, 3, 16, 16), torch.tensor([5])).shape == (1, 3, 16, 16)


def test_sample_from_champion_flow(pipeline_run):
    project, _, grid = pipeline_run
    assert (project / grid).exists()
    assert len(list((project / "outputs/champion/grid_images").glob("*.png"))) == 4


def test_second_repro_does_nothing_and_a_sampler_change_reruns_only_sample_and_score(pipeline_run):
    project, _, _ = pipeline_run
    out = _dvc("repro", cwd=project)
    assert "Running stage" not in out and "up to date" in out

    out = _dvc("exp", "run", "-S", "sample.sampler=dpmpp2m", "-S", "sample.steps=5", cwd=project)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"sample", "score"}, out
    info = json.loads((project / "outputs/samples/sample_info.json").read_text())
    assert info["sampler"] == "dpmpp2m" and info["spacing"] == "logsnr"
    assert "Running stage" not in _dvc("repro", cwd=project)
