"""Prefect flows for a team: the pipeline on a worker of another host, and a check of a pool's workers.

    pokediff_team_pipeline   (deployment team-nightly-train, prefect-team.yaml) on a worker, in a fresh clone
                             of the deployed commit that the deployment's pull steps made (`dvc pull` done):
                             1. check the team settings (servers answer, logins accepted, remotes set)
                             2. resume: the newest pushed checkpoint of this recipe, if a run was killed
                             3. the pipeline (pipelines/flows.py, as a subflow), each new checkpoint pushed
                                to the training run's MLflow artifacts while it trains
                             4. push: `dvc push` (data, model, metrics), `dvc exp push origin <exp>`
    pokediff_team_check      where a flow run of the pool lands and whether it reaches the servers
                             (several at once: each waits until `peers` of them have started)

The deployment's concurrency limit (1, queued) keeps a second nightly run from starting while one trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

# A worker runs this file from its clone of the deployed commit: that commit's pokediff (src/ beside this
# folder) is what this flow and the stages' subprocesses must import, not the copy installed in the
# worker's environment (which may be another version).
CHECKOUT_SRC = Path(__file__).resolve().parents[1] / "src"
if str(CHECKOUT_SRC) not in sys.path:
    sys.path.insert(0, str(CHECKOUT_SRC))
os.environ["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT_SRC), *filter(None, [os.environ.get("PYTHONPATH")])])

from prefect import flow, get_run_logger, task  # noqa: E402 (after the checkout's src/ is first on the path)
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import Failed  # noqa: E402

from pipelines.dvc_tasks import PARAMS_FILE  # noqa: E402
from pipelines.flows import check_overrides, pokediff_pipeline  # noqa: E402

PUSH_POLL_S = 2.0  # how often the pusher looks for a new checkpoint (a cheap stat)
BARRIER_TIMEOUT_S = 600.0


# ----------------------------------------------------------------------------------------------
# The recipe's identity, and the checkpoint pusher
# ----------------------------------------------------------------------------------------------
def resume_key(overrides: list[str]) -> str:
    """sha256 of what decides the trained weights: the data section, data.dvc's pin, the model, diffusion
    and the train settings that change weights (not intervals or folders). Equal keys = one recipe."""
    from pokediff.config import load_params
    from pokediff.tracking.store import dvc_data_hash

    params = load_params(PARAMS_FILE, overrides)
    recipe = {"data": params.data.model_dump(mode="json"), "data_md5": dvc_data_hash("data.dvc"),
              "model": params.model.model_dump(mode="json"), "diffusion": params.diffusion.model_dump(mode="json"),
              "train": params.train.weight_settings()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:32]


class CheckpointPusher:
    """While the pipeline trains: each new checkpoint (its sidecar's step changed) goes to the training
    run's MLflow artifacts. A failed upload is one warning; the next checkpoint is tried again."""

    def __init__(self, train_out_dir: Path, key: str, flow_run_id: str, logger):
        self.out_dir, self.key, self.flow_run_id, self.logger = train_out_dir, key, flow_run_id, logger
        self.pushed_step: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-pusher", daemon=True)

    def __enter__(self) -> CheckpointPusher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=600)

    def _loop(self) -> None:
        from pokediff.tracking.checkpoints import push_checkpoint

        sidecar = self.out_dir / "checkpoints" / "last.json"
        seen = None
        failed = False
        while not self._stop.wait(PUSH_POLL_S):
            try:
                stamp = sidecar.stat().st_mtime_ns
            except OSError:
                continue
            if stamp == seen:
                continue
            run_id = _read_json(self.out_dir / "mlflow_run.json").get("run_id")
            if not run_id:
                continue  # the train stage has not opened its MLflow run yet
            try:
                step = push_checkpoint(run_id, self.out_dir / "checkpoints", self.key, self.flow_run_id)
            except Exception as exc:  # never let an upload stop the run
                if not failed:
                    self.logger.warning("pushing the checkpoint to MLflow failed (%s); will retry with the next one",
                                        str(exc).splitlines()[0][:200])
                failed = True
                seen = stamp
                continue
            seen, failed = stamp, False
            if step is not None:
                self.pushed_step = step
                self.logger.info("checkpoint at step %d pushed to MLflow run %s", step, run_id)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text()[:100_000])
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------
@task(name="check-team-settings", task_run_name="check-team-settings")
def check_team_settings() -> dict[str, str]:
    """The servers this run reports to answer and accept its logins; the remotes it pushes to are set."""
    from pokediff.team import settings

    settings.load()
    settings.require("MLFLOW_TRACKING_URI", "POKEDIFF_DVC_REMOTE")
    return {"mlflow": settings.check_mlflow() or "", "prefect": settings.check_prefect() or "",
            "dvc_remote": settings.shown("POKEDIFF_DVC_REMOTE"), "git_remote": _git_origin()}


@task(name="resume-checkpoint", task_run_name="resume-checkpoint", retries=2, retry_delay_seconds=10)
def resume_checkpoint(key: str, train_out_dir: str) -> dict:
    """The newest checkpoint that an unfinished run of this recipe pushed, put where `pokediff train
    --auto-resume` finds it. A run still Running in Prefect may be alive (or a zombie nobody marked
    Crashed): its checkpoint is not taken."""
    from pokediff.tracking.checkpoints import find_pushed_checkpoint, restore_pushed_checkpoint

    logger = get_run_logger()
    this_run = str(flow_run.get_id() or "")
    for candidate in find_pushed_checkpoint(key):
        owner = candidate["flow_run_id"]
        if owner and owner != this_run and _flow_run_active(owner):
            logger.warning("run %s pushed a checkpoint at step %d, but its flow run %s is still %s in Prefect: not "
                           "resuming from it (mark that flow run Crashed if its worker is gone)",
                           candidate["run_id"], candidate["step"], owner, "running")
            continue
        step = restore_pushed_checkpoint(candidate["run_id"], Path(train_out_dir))
        logger.info("resuming MLflow run %s from its pushed checkpoint at step %d", candidate["run_id"], step)
        return {"run_id": candidate["run_id"], "step": step}
    logger.info("no pushed checkpoint of this recipe: training starts from step 0")
    return {}


@task(name="push-results", task_run_name="push-results", retries=2, retry_delay_seconds=15)
def push_results(experiment: str | None) -> str:
    """`dvc push` (everything the run made, into POKEDIFF_DVC_REMOTE) and `dvc exp push origin <exp>`."""
    from pokediff.team.remotes import push_results as push

    push(".", experiment)
    get_run_logger().info("pushed outputs to the DVC remote and experiment %s to the git remote", experiment)
    return experiment or ""


def _flow_run_active(flow_run_id: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and (state.is_running() or state.is_pending())


def _git_origin() -> str:
    import subprocess

    from pokediff.team.settings import redact_url

    out = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True)
    return redact_url(out.stdout.strip()) if out.returncode == 0 else ""


# ----------------------------------------------------------------------------------------------
# Flows
# ----------------------------------------------------------------------------------------------
@flow(name="pokediff-team-pipeline", log_prints=True)
def pokediff_team_pipeline(overrides: list[str] | None = None, params_file: str | None = None,
                           committed_recipe: bool = True, train_processes: int = 1):
    """The pipeline on a worker, resumable across workers, its results pushed for the team.

    overrides:         params as "section.key=value" (only with committed_recipe=false)
    params_file:       a committed overlay of params.yaml, e.g. configs/cpu-small.yaml (overrides win)
    committed_recipe:  train the committed params.yaml only (the nightly run)
    train_processes:   torchrun processes for the train stage on this worker (POKEDIFF_TRAIN_PROCESSES)
    """
    from pokediff.launch import MAX_PROCESSES, PROCESSES_VAR

    logger = get_run_logger()
    if not 1 <= train_processes <= MAX_PROCESSES:
        return Failed(message=f"invalid flow parameter: train_processes={train_processes} (1 to {MAX_PROCESSES})")
    overrides = list(overrides or [])
    if params_file:
        from pokediff.config import ConfigError, overlay_overrides

        try:
            overrides = overlay_overrides(params_file) + overrides
        except (ConfigError, OSError) as exc:
            return Failed(message=f"invalid flow parameter: params_file: {exc}".splitlines()[0])
    problem = check_overrides(overrides)
    if problem:
        return Failed(message=problem)
    # 1. settings
    where = check_team_settings()
    logger.info("reporting to MLflow %s; pushing to DVC remote %s and git remote %s",
                where["mlflow"], where["dvc_remote"], where["git_remote"])
    # 2. resume from what a killed run pushed
    from pokediff.config import load_params

    train_out = Path(load_params(PARAMS_FILE, overrides).train.out_dir)
    key = resume_key(overrides)
    resumed = resume_checkpoint(key, str(train_out))
    # 3. the pipeline; the stage processes inherit the process count
    os.environ[PROCESSES_VAR] = str(train_processes)
    with CheckpointPusher(train_out, key, str(flow_run.get_id() or ""), logger) as pusher:
        state = pokediff_pipeline(overrides=overrides, committed_recipe=committed_recipe, return_state=True)
    if not state.is_completed():
        return Failed(message=f"pipeline: {(state.message or state.name or 'failed').splitlines()[0]}")
    result = state.result()
    # 4. what the team sees
    push_results(result["experiment"])
    result.update(resumed_from=resumed, last_pushed_checkpoint=pusher.pushed_step, train_processes=train_processes,
                  worker=os.environ.get("POKEDIFF_WORKER_NAME") or socket.gethostname())
    print(f"team pipeline done on {result['worker']}: experiment {result['experiment']} pushed, MLflow run "
          f"{result['mlflow_run_id']}, model v{result['model_version']}, FID {result['fid']}")
    return result


@flow(name="pokediff-team-check", log_prints=True)
def pokediff_team_check(peers: int = 0, batch: str = ""):
    """Where this flow run landed (worker, host, folder) and whether it reaches the team's servers.

    peers:    with batch, wait (up to 10 min) until this many flow runs tagged `batch:<batch>` have started
              at once, so that a pool's workers each show up (a worker with --limit 1 takes one at a time)."""
    from pokediff.team import settings

    settings.load()
    found = {"worker": os.environ.get("POKEDIFF_WORKER_NAME", ""), "host": socket.gethostname(),
             "cwd": os.getcwd(), "flow_run": str(flow_run.get_id()),
             "mlflow": settings.check_mlflow() or "", "prefect": settings.check_prefect() or ""}
    if peers > 1 and batch:
        found["peers_started"] = _wait_for_peers(f"batch:{batch}", peers)
    print(json.dumps(found))
    return found


def _wait_for_peers(tag: str, count: int) -> int:
    """Wait until ``count`` flow runs with ``tag`` have started (running or done). None of them can finish
    before all have started (each waits here), so they run at the same time, on different workers when
    each worker takes one flow run at a time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    started = FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]), state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.COMPLETED])))
    with get_client(sync_client=True) as client:
        while True:
            now = len(client.read_flow_runs(flow_run_filter=started, limit=count + 10))
            if now >= count:
                return now
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {now} of {count} flow runs tagged {tag} started within "
                                   f"{BARRIER_TIMEOUT_S:.0f} s")
            time.sleep(1.0)
