"""`python -m pokediff.team COMMAND`: a machine's team settings and the team stack (docs/team.md).

    check                     show this machine's team settings (secrets as ***) and test each server's login
    exec -- CMD ...           run CMD with the team settings in its environment (e.g. `prefect deploy`)
    worker --pool P           start a Prefect worker with the team settings (checked first)
    dvc-remote                make POKEDIFF_DVC_REMOTE this checkout's DVC remote (.dvc/config.local)
    pull                      dvc remote + `dvc pull --allow-missing` (a deployment's pull step)
    deploy                    create the work pools prefect-team.yaml names (if missing), deploy its deployments
    mark-crashed FLOW_RUN_ID  a flow run whose worker died: Crashed, which frees its deployment's slot
    deploy-commit             check HEAD can be deployed, push its data; print its sha (a build step)
    stack up|down|status      the team's servers on this machine (make team-up / make team-down)
    stack start|stop|restart SERVICE   one of them (postgres, mlflow, prefect); the others keep running
    stack add-user NAME       an MLflow login for a teammate or a worker

Any failure is one line on stderr naming the setting or file, exit 1 (--debug: the traceback too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import traceback
from pathlib import Path

from pokediff.env import set_offline_defaults
from pokediff.errors import PokediffError, one_line
from pokediff.team import settings

DEFAULT_STATE = ".team"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pokediff.team", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="show the settings and test each server's login")
    run = sub.add_parser("exec", help="run a command with the team settings in its environment")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    worker = sub.add_parser("worker", help="start a Prefect worker with the team settings")
    worker.add_argument("--pool", required=True)
    worker.add_argument("--name", help="worker name (default: Prefect's)")
    worker.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1)")
    worker.add_argument("--work-dir", help="where flow runs clone the repository (default: the system's temp)")
    sub.add_parser("dvc-remote", help="POKEDIFF_DVC_REMOTE -> .dvc/config.local")
    sub.add_parser("pull", help="dvc remote + dvc pull --allow-missing")
    deploy = sub.add_parser("deploy", help="create the work pools (if missing) and deploy prefect-team.yaml")
    deploy.add_argument("--prefect-file", default="prefect-team.yaml")
    sub.add_parser("deploy-commit", help="check HEAD is deployable, push its data, print its sha")
    crashed = sub.add_parser("mark-crashed", help="a flow run whose worker died -> Crashed (frees its slot)")
    crashed.add_argument("flow_run_id")
    stack = sub.add_parser("stack", help="the team's servers on this machine")
    stack.add_argument("action", choices=("up", "down", "status", "start", "stop", "restart", "add-user"))
    stack.add_argument("name", nargs="?", help="add-user: the login name; start/stop/restart: postgres, mlflow "
                                                "or prefect")
    stack.add_argument("--state", default=None, help=f"state folder (default: {DEFAULT_STATE} in the project root)")
    stack.add_argument("--host", default="127.0.0.1", help="address the MLflow and Prefect servers listen on")
    return parser


def _state_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    root = settings.project_root()
    if root is None:
        raise settings.TeamSettingsError("not inside a pokediff project: pass --state DIR")
    return root / DEFAULT_STATE


def run(args: argparse.Namespace) -> int:
    if args.command == "stack":
        return _stack(args)
    settings.load()
    if args.command == "check":
        for line in settings.describe():
            print(line)
        for name, probe in (("MLflow", settings.check_mlflow), ("Prefect", settings.check_prefect)):
            where = probe()
            print(f"{name}: " + (f"{where} accepted the login" if where else "embedded default (nothing configured)"))
        return 0
    if args.command == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise settings.TeamSettingsError("exec: no command given (python -m pokediff.team exec -- CMD ...)")
        _exec(argv)
    if args.command == "deploy":
        settings.check_prefect() or settings.require("PREFECT_API_URL")
        for pool in _work_pools(Path(args.prefect_file)):
            _ensure_work_pool(pool)
        _exec(["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", args.prefect_file])
    if args.command == "mark-crashed":
        settings.check_prefect() or settings.require("PREFECT_API_URL")
        print(_mark_crashed(args.flow_run_id))
        return 0
    if args.command == "worker":
        settings.check_prefect() or settings.require("PREFECT_API_URL")
        settings.check_mlflow() or settings.require("MLFLOW_TRACKING_URI")
        settings.require("POKEDIFF_GIT_REMOTE", "POKEDIFF_DVC_REMOTE")
        cmd = ["prefect", "worker", "start", "--pool", args.pool, "--type", "process", "--limit", str(args.limit)]
        if args.name:
            cmd += ["--name", args.name]
            os.environ["POKEDIFF_WORKER_NAME"] = args.name  # the flow runs it starts can say where they ran
        if args.work_dir:
            Path(args.work_dir).mkdir(parents=True, exist_ok=True)
            os.environ["TMPDIR"] = str(Path(args.work_dir).resolve())  # the process worker's per-run folders
        _exec(cmd)
    from pokediff.team import remotes

    if args.command == "dvc-remote":
        print(f"DVC remote `{remotes.DVC_REMOTE_NAME}` = {settings.shown('POKEDIFF_DVC_REMOTE')} (.dvc/config.local)")
        remotes.configure_dvc_remote()
    elif args.command == "pull":
        print(remotes.pull_inputs().strip())
    elif args.command == "deploy-commit":
        print(remotes.deploy_commit())
    return 0


def _stack(args: argparse.Namespace) -> int:
    from pokediff.team.stack import Stack

    stack = Stack(_state_dir(args.state), host=args.host, log=print)
    if args.action == "up":
        stack.up()
        print(f"team stack up; its client settings: {stack.client_env}\n"
              f"  use them here: export POKEDIFF_TEAM_ENV={stack.client_env}   (or copy it to team.env)")
    elif args.action == "down":
        stopped = stack.down()
        print(f"stopped: {', '.join(stopped)}" if stopped else "team stack: nothing was running")
    elif args.action == "status":
        for name, running in stack.status().items():
            print(f"{name:<9} {'running' if running else 'stopped'}")
    elif args.action in ("start", "stop", "restart"):
        if args.name not in ("postgres", "mlflow", "prefect"):
            raise settings.TeamSettingsError(f"stack {args.action}: name postgres, mlflow or prefect")
        if args.action != "start":
            stack.stop_service(args.name)
        if args.action != "stop":
            stack.start_service(args.name)
    elif args.action == "add-user":
        if not args.name:
            raise settings.TeamSettingsError("stack add-user: give the login name")
        path = stack.add_user(args.name)
        print(f"MLflow login {args.name!r}: its MLFLOW_TRACKING_USERNAME/PASSWORD lines are in {path} (mode 600); "
              "put them into that machine's team.env")
    return 0


def _mark_crashed(flow_run_id: str) -> str:
    """A flow run left Running by a worker that died (its host lost, the process killed) holds its
    deployment's concurrency slot until its lease runs out (5 minutes) and shows as Running for ever;
    Crashed releases the slot, and the next run resumes from its last pushed checkpoint."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        raise settings.TeamSettingsError(f"mark-crashed: {flow_run_id!r} is not a flow run id") from None
    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(run_id).state
        except ObjectNotFound:
            raise settings.TeamSettingsError(f"mark-crashed: no flow run {run_id} on this Prefect server") from None
        if state is not None and state.is_final():
            return f"flow run {run_id} is already {state.name}: left as it is"
        client.set_flow_run_state(run_id, Crashed(message="marked Crashed: its worker is gone"), force=True)
    return f"flow run {run_id}: Crashed (was {state.name if state else 'without a state'})"


def _work_pools(prefect_file: Path) -> list[str]:
    import yaml

    try:
        config = yaml.safe_load(prefect_file.read_text()[:1_000_000]) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise settings.TeamSettingsError(f"{prefect_file}: cannot read it ({exc})") from None
    return sorted({d["work_pool"]["name"] for d in config.get("deployments", []) if d.get("work_pool", {}).get("name")})


def _ensure_work_pool(name: str) -> None:
    """A process work pool NAME on the Prefect server, created when missing (an existing one is kept as is)."""
    import subprocess

    prefect = [sys.executable, "-m", "prefect"]
    if subprocess.run([*prefect, "work-pool", "inspect", name], capture_output=True).returncode == 0:
        return
    made = subprocess.run([*prefect, "work-pool", "create", name, "--type", "process"], capture_output=True, text=True)
    if made.returncode != 0 and "already exists" not in made.stdout + made.stderr:
        raise settings.TeamSettingsError(f"work pool {name!r}: `prefect work-pool create` failed: "
                                         f"{(made.stderr or made.stdout).strip().splitlines()[-1:]}")
    print(f"work pool {name!r} created (type process)")


def _exec(argv: list[str]) -> None:
    """Replace this process with argv, this interpreter's scripts (prefect, dvc, pokediff) first on PATH."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    found = shutil.which(argv[0])
    if found is None:
        raise settings.TeamSettingsError(f"exec: {argv[0]!r} not found on PATH")
    sys.stdout.flush()
    os.execv(found, argv)


def main(argv: list[str] | None = None) -> int:
    set_offline_defaults()
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except PokediffError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"pokediff team: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
