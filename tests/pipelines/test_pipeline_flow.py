"""The whole pipeline, end to end, as the Prefect flow runs it: real DVC, real MLflow store, real
Prefect (test harness), real sprites, a tiny configuration.

One project is shared by the tests in this module (a couple of minutes on 2 cores): the pipeline flow
with overrides, the same flow again (every stage cached), a bad parameter, the champion sampling flow
and a two-point sampler sweep, all in one Prefect test harness; then two `dvc exp run` experiments.
The tests check what a user would look at: the flow's result and its Prefect task runs and artifact,
`git status`, `dvc exp show`, `dvc metrics diff`, `dvc plots diff`, the MLflow run, the registered
model and its alias, and the sweep's table, plot and MLflow artifacts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from project_copy import commit_all, project_checkout

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


def _dvc(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _git(*args: str, cwd: Path) -> str:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run([*git, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _task_runs_and_artifacts(flow_run_id) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """From the Prefect API: {task run name: (state name, message)} and {artifact key: markdown}."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return ({r.name: (r.state.name, r.state.message or "") for r in runs},
            {a.key: a.data for a in artifacts if a.key})


def _log_lines(flow_run_id, last: str, wait_s: float = 60) -> list[str]:
    """Every log message of a flow run and its tasks, in order, from the Prefect API, once one starting
    with ``last`` has arrived (logs reach the API in batches, after the run may have ended)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            logs, offset = [], 0
            while True:
                page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                        limit=200, offset=offset, sort=LogSort.TIMESTAMP_ASC)
                logs += [log.message for log in page]
                if len(page) < 200:
                    break
                offset += 200
            if any(line.startswith(last) for line in logs) or time.monotonic() > deadline:
                return logs
            time.sleep(1)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    project = project_checkout(tmp_path_factory.mktemp("project"))
    commit_all(project)
    cwd = os.getcwd()
    os.chdir(project)
    env_before = dict(os.environ)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    runs = {}
    try:
        from pipelines.flows import pokediff_pipeline, sample_from_champion
        from pipelines.sweep import pokediff_sweep

        with prefect_test_harness(server_startup_timeout=180):  # the default 30 s is short on a busy 2-core CPU
            state = pokediff_pipeline(sampler="ddim", train_steps=12, overrides=TINY, return_state=True)
            result = state.result()
            runs["first"] = _task_runs_and_artifacts(state.state_details.flow_run_id)
            runs["first_state"] = state
            runs["first_logs"] = _log_lines(state.state_details.flow_run_id, last="pipeline done: ")
            runs["git_status"] = _git("status", "--porcelain", cwd=project)
            runs["params_after"] = (project / "params.yaml").read_text()
            again = pokediff_pipeline(sampler="ddim", train_steps=12, overrides=TINY, return_state=True)
            runs["again"] = (again.result(), _task_runs_and_artifacts(again.state_details.flow_run_id))
            runs["bad"] = pokediff_pipeline(overrides=["sample.sampler=euler"], return_state=True)
            runs["bad_grid"] = pokediff_sweep(grid=["ddim:10", "heun:5"], return_state=True)
            champion = sample_from_champion(num_images=4, steps=3, out="outputs/champion/grid.png", return_state=True)
            champion_grid = champion.result()
            runs["champion"] = _task_runs_and_artifacts(champion.state_details.flow_run_id)
            sweep = pokediff_sweep(grid=["ddim:3", "dpmpp2m:4"], overrides=TINY, return_state=True)
            runs["sweep"] = (sweep.result(), _task_runs_and_artifacts(sweep.state_details.flow_run_id))
            runs["git_status_after_sweep"] = _git("status", "--porcelain", cwd=project)
        yield project, result, champion_grid, runs
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env_before)


def test_flow_result_names_the_run_the_model_and_the_fid(pipeline_run):
    project, result, _, _ = pipeline_run
    assert result["model_name"] == "pokemon-ddpm" and result["model_version"] == "1"
    assert len(result["mlflow_run_id"]) == 32
    assert 0 < result["fid"] < 1000
    assert list(result["stages"]) == ["ingest", "validate", "ref_stats", "ref_stats_types", "train", "sample", "score"]
    assert all(info["ran"] for info in result["stages"].values())


def test_prefect_tasks_are_the_stages_cached_ones_say_so_and_the_run_has_a_summary(pipeline_run):
    _, result, _, runs = pipeline_run
    tasks, artifacts = runs["first"]
    stages = ["ingest", "validate", "ref_stats", "train", "sample", "score"]
    assert set(stages) <= set(tasks) and {"preflight", "record-experiment"} <= set(tasks)
    assert all(tasks[s][0] == "Completed" and tasks[s][1].startswith("ran: ") for s in stages)
    # why each ran, on a fresh checkout: a first run, not every file "modified"
    assert tasks["ingest"][1] == "ran: first run (no dvc.lock)"
    assert tasks["train"][1] == "ran: first run of this stage (dvc.lock has no entry for it)"
    summary = artifacts["pokediff-pipeline"]
    assert result["mlflow_run_id"] in summary and "| score | ran |" in summary and "| fid |" in summary
    assert f"[pokemon-ddpm version {result['model_version']}](http://127.0.0.1:5000/#/models/pokemon-ddpm/versions/" \
           in summary
    assert f"(http://127.0.0.1:5000/#/experiments/1/runs/{result['mlflow_run_id']})" in summary
    assert "`make compare`" in summary and not re.search(r"\bmain\b", summary)  # nothing to compare on main
    assert "first run of this commit" in summary
    assert runs["first_state"].message.startswith(f"FID {result['fid']:.2f}, KID ")

    again, (tasks2, artifacts2) = runs["again"]
    assert all(tasks2[s][0] == "Cached" and "up to date" in tasks2[s][1] for s in stages), tasks2
    assert not any(info["ran"] for info in again["stages"].values())
    assert again["fid"] == pytest.approx(result["fid"])
    # The second run's summary compares it with the first: commands that work, on real experiments.
    commands = [f"dvc metrics diff {result['experiment']} {again['experiment']}",
                f"dvc plots diff {result['experiment']} {again['experiment']}"]
    assert all(f"`{c}`" in artifacts2["pokediff-pipeline"] for c in commands)
    for command in commands:
        _dvc(*command.split()[1:], "--json", cwd=pipeline_run[0])


def test_the_log_says_what_runs_when_without_noise(pipeline_run):
    logs = pipeline_run[3]["first_logs"]
    text = "\n".join(logs)
    # the preflight, in seconds before the first stage, names what it checked
    preflight = next(i for i, line in enumerate(logs) if line.startswith("pokediff train --check: params valid"))
    assert "MLflow store" in logs[preflight]
    assert preflight < next(i for i, line in enumerate(logs) if line.startswith("$ pokediff fetch-data"))
    # each in-training evaluation says that it starts, and its FID when it ends
    for step in (6, 12):
        assert f"train: step {step}: in-training FID of 16 EMA samples (DDIM 3 steps)" in text
        assert re.search(rf"train: step {step}: in-training FID \d+\.\d\d, KID ", text), step
    assert "git add dvc.lock" not in text and "dvc push" not in text and "\x1b[" not in text
    # the end: where the samples, curves, comparisons and runs are
    done = next(line for line in logs if line.startswith("pipeline done: FID "))
    for words in ("outputs/samples/grid.png", "dvc plots show", "make compare", "mlflow ui --backend-store-uri",
                  "http://127.0.0.1:5000/#/experiments/1/runs/"):
        assert words in done, (words, done)
    # the Prefect link names the server the flow ran on (here the test harness's, on a free port)
    assert re.search(r"http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}", done), done


def test_a_bad_parameter_fails_with_one_line_naming_it(pipeline_run):
    _, _, _, runs = pipeline_run
    for state, words in ((runs["bad"], ("sample.sampler", "euler")), (runs["bad_grid"], ("grid", "heun:5"))):
        assert state.is_failed()
        assert "\n" not in state.message and all(w in state.message for w in words), state.message


def test_params_yaml_is_never_changed_and_the_run_is_an_experiment(pipeline_run):
    project, result, _, runs = pipeline_run
    assert runs["params_after"] == (REPO / "params.yaml").read_text()
    for key in ("git_status", "git_status_after_sweep"):
        changed = [line for line in runs[key].splitlines() if line.strip()]
        assert changed in ([" M dvc.lock"], ["?? dvc.lock"]), (key, runs[key])
    shown = json.loads(_dvc("exp", "show", "--json", cwd=project))
    names = {e["name"] for rev in shown for e in (rev.get("experiments") or [])}
    assert result["experiment"] in names


def test_outputs_and_dvc_metrics(pipeline_run):
    project, result, _, _ = pipeline_run
    for path in ("outputs/dataset/manifest.csv", "outputs/validation/validation_metrics.json",
                 "outputs/ref_stats/ref_stats.npz", "outputs/train/model.safetensors", "outputs/samples/grid.png",
                 "outputs/samples/progression.png", "outputs/score/metrics.json"):
        assert (project / path).exists(), path
    assert len(list((project / "outputs/samples/images").glob("*.png"))) == 24
    shown = json.loads(_dvc("metrics", "show", "--json", cwd=project))
    flat = json.dumps(shown)
    for key in ('"fid"', '"kid_mean"', '"final_loss"', '"n_images"'):
        assert key in flat, key
    for text_key in ('"sampler"', '"spacing"', '"source"'):  # text is params, not metrics
        assert text_key not in flat, text_key
    eval_rows = (project / "outputs/train/eval_log.csv").read_text().splitlines()
    assert eval_rows[0] == "step,fid,kid_mean" and [r.split(",")[0] for r in eval_rows[1:]] == ["6", "12"]


def test_mlflow_run_params_metrics_tags_and_registry(pipeline_run):
    import mlflow
    from mlflow import MlflowClient

    project, result, _, _ = pipeline_run
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
    # the pipeline's evaluation, and the sweep's two points (ddim:3, dpmpp2m:4) beside it
    assert len(children) == 3
    pipeline_eval = next(c for c in children if c.info.run_id == result["evaluation_run_id"])
    assert pipeline_eval.data.metrics["fid"] == round(result["fid"], 2)  # the table shows 403.68, DVC every digit
    assert run.data.metrics["fid"] == round(result["fid"], 2)
    assert pipeline_eval.data.params["sample.sampler"] == "ddim"
    # The evaluation run lasts as long as its sampling and scoring (it is opened once the scores exist).
    sampled = json.loads((project / "outputs/samples/sample_info.json").read_text())["seconds"]
    assert pipeline_eval.info.end_time - pipeline_eval.info.start_time >= 1000 * sampled

    # The run's page: the final samples and the denoising steps open its description (served by the UI
    # from the evaluation run's artifacts) and are its images, so Model metrics shows them at once.
    description = run.data.tags["mlflow.note.content"]
    eval_id = result["evaluation_run_id"]
    grid_link = f'<a href="get-artifact?path=grid.png&amp;run_uuid={eval_id}"'
    assert description.startswith(f"<!-- evaluation -->\n{grid_link}")
    assert f'<img src="get-artifact?path=progression.png&amp;run_uuid={eval_id}"' in description
    assert f"(#/experiments/{run.info.experiment_id}/runs/{eval_id})" in description
    flow_run_id = run.data.tags["pokediff.prefect_flow_run_id"]
    assert re.search(rf"Prefect flow run \[{flow_run_id[:8]}\]\(http://127\.0\.0\.1:\d+/runs/flow-run/{flow_run_id}\)",
                     description), description
    images = {a.path.split("/")[1] for a in client.list_artifacts(run.info.run_id, "images")}
    assert any(name.startswith("final_samples") for name in images), images
    assert any(name.startswith("denoising_steps") for name in images), images
    # The runs table's saved view: newest first, the order in which MLflow nests evaluations under their run.
    view = json.loads(client.get_experiment(run.info.experiment_id).tags["mlflow.sharedViewState.pokediff"])
    assert (view["orderByKey"], view["orderByAsc"]) == ("attributes.start_time", False)

    champion = client.get_model_version_by_alias("pokemon-ddpm", "champion")
    # FIDs compare only under one evaluation key: the champion's fid is the best of the evaluations
    # that share the pipeline evaluation's key (a version keeps its best FID per key)
    key = pipeline_eval.data.tags["pokediff.eval_key"]
    best = min(c.data.metrics["fid"] for c in children if c.data.tags.get("pokediff.eval_key") == key)
    assert str(champion.version) == "1" and float(champion.tags["fid"]) == pytest.approx(best, rel=1e-4)
    # The registered model's safetensors weights load and predict (no pickle anywhere).
    import torch

    from pokediff.stages.sample import load_for_sampling

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlruns/mlflow.db")
    model, *_ = load_for_sampling(None, "models:/pokemon-ddpm@champion", device="cpu")
    assert model(torch.zeros(1, 3, 16, 16), torch.tensor([5])).shape == (1, 3, 16, 16)


def test_sample_from_champion_flow(pipeline_run):
    project, _, grid, runs = pipeline_run
    assert (project / grid).exists()
    assert len(list((project / "outputs/champion/grid_images").glob("*.png"))) == 4
    # Its artifact shows the grid itself (the Prefect UI renders the embedded PNG) and says where it is.
    markdown = runs["champion"][1]["champion-samples"]
    embedded = re.search(r"!\[samples\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert embedded and base64.b64decode(embedded.group(1)) == (project / grid).read_bytes()
    assert f"Grid: `{grid}`" in markdown and "seed 0" in markdown


def test_sweep_table_plot_experiments_and_mlflow(pipeline_run):
    from mlflow import MlflowClient

    project, result, _, runs = pipeline_run
    sweep, (tasks, artifacts) = runs["sweep"]
    points = {(p["sampler"], p["nfe"]): p for p in sweep["points"]}
    assert set(points) == {("ddim", 3), ("dpmpp2m", 4)}
    assert all(0 < p["fid"] < 1000 and p["sample_seconds"] > 0 for p in points.values())
    assert {"ddim-3", "dpmpp2m-4"} <= set(tasks)
    plot = project / sweep["plot"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    assert "| dpmpp2m | 4 | 4 |" in artifacts["pokediff-sweep"]
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlruns/mlflow.db")
    logged = {a.path for a in client.list_artifacts(result["mlflow_run_id"], "sweep")}
    assert {"sweep/fid_vs_nfe.png", "sweep/sweep.md", "sweep/sweep.json"} <= logged
    evaluation = client.get_run(points[("dpmpp2m", 4)]["evaluation_run_id"])
    # MLflow shows FID to 2 decimals (the table's width); the sweep's JSON keeps every digit
    assert evaluation.data.metrics["nfe"] == 4 and evaluation.data.metrics["fid"] == round(
        points[("dpmpp2m", 4)]["fid"], 2)
    shown = json.dumps(json.loads(_dvc("exp", "show", "--json", cwd=project)))
    assert all(p["experiment"] in shown for p in points.values())


def _exp_fids(shown: list) -> dict:
    """`dvc exp show --json` -> {branch or experiment name: its score FID (None when DVC shows "!")}."""
    found = {}
    for base in shown:
        for entry in [base] + [r for e in (base.get("experiments") or []) for r in e.get("revs", [])]:
            metrics = ((entry.get("data") or {}).get("metrics") or {}).get("outputs/score/metrics.json") or {}
            found[entry.get("name") or entry.get("rev")] = (metrics.get("data") or {}).get("fid")
    return found


def test_two_experiments_compare_in_exp_show_metrics_diff_and_plots_diff(pipeline_run):
    """`dvc exp run` as the README shows it (with the tiny config's params): only sample and score
    rerun, and both experiments' FIDs (and main's) come back from DVC after the workspace moved on."""
    project, result, _, _ = pipeline_run
    _git("add", "dvc.lock", cwd=project)
    _git("commit", "-qm", "tiny pipeline", cwd=project)  # main now records the flow's outputs
    tiny = [arg for item in TINY for arg in ("-S", item)] + ["-S", "train.steps=12", "-S", "sample.sampler=ddim"]
    fids = {}
    for name, extra in (("exp-dpm", ["-S", "sample.sampler=dpmpp2m", "-S", "sample.steps=5"]),
                        ("exp-ddim6", ["-S", "sample.steps=6"])):
        out = _dvc("exp", "run", "-n", name, *tiny, *extra, cwd=project)
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran == {"sample", "score"}, out
        fids[name] = json.loads((project / "outputs/score/metrics.json").read_text())["fid"]
    assert (project / "params.yaml").read_text() != (REPO / "params.yaml").read_text()  # what DVC leaves
    _git("checkout", "params.yaml", cwd=project)

    found = _exp_fids(json.loads(_dvc("exp", "show", "--json", cwd=project)))
    assert found.get("exp-dpm") == pytest.approx(fids["exp-dpm"])
    assert found.get("exp-ddim6") == pytest.approx(fids["exp-ddim6"])
    assert found.get("main") == pytest.approx(result["fid"])

    diff = json.loads(_dvc("metrics", "diff", "main", "exp-dpm", "--json", cwd=project))
    fid = diff["outputs/score/metrics.json"]["fid"]
    assert fid["old"] == pytest.approx(result["fid"]) and fid["new"] == pytest.approx(fids["exp-dpm"])
    diff = json.loads(_dvc("metrics", "diff", "exp-dpm", "exp-ddim6", "--json", cwd=project))
    assert diff["outputs/score/metrics.json"]["fid"]["new"] == pytest.approx(fids["exp-ddim6"])

    plots = json.loads(_dvc("plots", "diff", "main", "exp-dpm", "--json", cwd=project))["data"]
    assert {"outputs/train/train_log.csv", "outputs/train/eval_log.csv"} <= set(plots)
    loss = json.dumps(plots["outputs/train/train_log.csv"])
    assert '"main"' in loss and '"exp-dpm"' in loss  # both revisions' curves
