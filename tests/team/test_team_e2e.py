"""A team on five hosts, for real: a server host (PostgreSQL, MLflow with login and proxied artifacts,
Prefect with API auth, the DVC remote folder and the bare git remote, all from `pokediff.team stack up`),
a laptop that deploys, two GPU hosts (CPU here) each running a worker of one pool, and a teammate's host.
They share nothing but the git remote, the DVC remote and the two servers (see conftest.py: separate
folders, HOMEs and environments, and separate network namespaces where the machine allows).

In order (one module, one stack; a few minutes on 2 cores):
    1. two flow runs of the pool land on the two workers, one each
    2. the nightly deployment: run 1 trains on one worker; run 2 (2 torchrun processes) is queued by the
       deployment's concurrency limit while run 1 trains; run 1's host dies after a checkpoint was pushed;
       run 2 runs on the other worker, resumes run 1's MLflow run from that checkpoint, and pushes
    3. the teammate: `dvc exp pull` + `dvc exp show` list the run with its FID, `dvc pull` brings the model,
       MLflow (logged in) has the run, one training run, the champion; `pokediff sample --model
       models:/pokemon-ddpm@champion` and `mlflow models serve` work through the server
    4. no password in logs, Prefect deployments or parameters, MLflow params or tags, or git
    5. a wrong password or an unreachable server: one line naming the setting, exit 1, no secret
    6. PostgreSQL, then the MLflow server, stopped while `pokediff train` logs to them: training finishes,
       the metrics of the outage reach the run at the end, which is tagged partial
The stack is stopped at the end, and `stack down` a second time says nothing was running.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from project_copy import project_checkout

from pokediff.config import load_params, overlay_overrides, write_overrides
from team_hosts import PY, TINY_RECIPE, Host, Network, Team, free_port, team_root

pytestmark = pytest.mark.slow
HOSTS = ["server", "laptop", "gpu-a", "gpu-b", "mate"]
POOL = "pokediff-team"
NIGHTLY = "pokediff-team-pipeline/team-nightly-train"
CHECK = "pokediff-team-check/team-check"
TEAM = [PY, "-m", "pokediff.team"]
GIT = ["git"]


def _timed(team: Team, step: str, command: str, started: float, seen: str) -> None:
    team.timings.append((step, command, round(time.monotonic() - started, 1), seen))


@pytest.fixture(scope="module")
def team():
    with team_root() as root:
        yield from _team(root)


def _team(root: Path):
    net = Network(HOSTS)
    net.up()
    if net.note:
        print(f"note: {net.note}")
    hosts = {name: Host(name, root / name, net) for name in HOSTS}
    server, laptop = hosts["server"], hosts["laptop"]
    state = server.root / "state"
    stack = [*TEAM, "stack"]
    second_down = team = None
    try:
        # -- the server host: everything from one command
        t0 = time.monotonic()
        server.run([*stack, "up", "--state", str(state), "--host", server.address],
                   PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2")
        t_up = time.monotonic() - t0
        again = server.run([*stack, "up", "--state", str(state), "--host", server.address])
        assert "running on" not in again.stdout  # idempotent: nothing started a second time
        users = {}
        for user in ("trainer", "alice", "bob"):
            server.run([*stack, "add-user", user, "--state", str(state), "--host", server.address])
            lines = (state / "secrets" / "users" / f"{user}.env").read_text().split()
            users[user] = dict(line.split("=", 1) for line in lines)
        client = dict(line.split("=", 1) for line in (state / "client.env").read_text().split())
        team = Team(net, hosts, state, client, users)
        team.timings.append(("team-up (server host)", "python -m pokediff.team stack up", round(t_up, 1),
                             "MLflow and Prefect URLs; nothing else yet"))

        # -- the laptop: a clone with the tiny recipe committed, pushed to the team's git remote, deployed
        clone = project_checkout(laptop.root / "pokediff")
        write_overrides(clone / "params.yaml", overlay_overrides(clone / "configs" / "cpu-small.yaml") + TINY_RECIPE)
        load_params(clone / "params.yaml")  # valid
        laptop.run([*GIT, "init", "-q", "-b", "main"], cwd=clone)
        laptop.run([*GIT, "add", "-A"], cwd=clone)
        laptop.run([*GIT, "commit", "-qm", "pokediff with a tiny recipe"], cwd=clone)
        laptop.run([*GIT, "remote", "add", "origin", client["POKEDIFF_GIT_REMOTE"]], cwd=clone)
        laptop.run([*GIT, "push", "-q", "origin", "main"], cwd=clone)
        laptop.run([PY, "-m", "dvc", "commit", "-f", "-q", "data.dvc"], cwd=clone)  # data/ into the local cache
        team.write_team_env(clone, "bob")
        assert laptop.run([*GIT, "status", "--porcelain"], cwd=clone).stdout.strip() == ""  # team.env ignored
        t0 = time.monotonic()
        laptop.run([*TEAM, "deploy"], cwd=clone)
        _timed(team, "deploy (laptop)", "make team-deploy", t0, "deployments team-nightly-train, team-check")

        # -- two GPU hosts, one worker each
        for name in ("gpu-a", "gpu-b"):
            host = hosts[name]
            env_file = team.write_team_env(host.root, "trainer")
            host.spawn([*TEAM, "worker", "--pool", POOL, "--name", name, "--work-dir", str(host.root / "runs")],
                       host.root / "worker.log", POKEDIFF_TEAM_ENV=str(env_file))
        deadline = time.monotonic() + 300
        while True:
            workers = team.api("POST", f"/work_pools/{POOL}/workers/filter", {})
            if {"gpu-a", "gpu-b"} <= {w["name"] for w in workers if w.get("status") == "ONLINE"}:
                break
            assert time.monotonic() < deadline, [(w["name"], w.get("status")) for w in workers]
            time.sleep(2)
        team.clone = clone
        yield team
    finally:
        for name in ("gpu-a", "gpu-b", "laptop", "mate"):
            hosts[name].crash()
        server.run([*stack, "down", "--state", str(state), "--host", server.address], check=False)
        second_down = server.run([*stack, "down", "--state", str(state), "--host", server.address], check=False)
        server.crash()
        net.down()
        if team is not None:
            print("\nstep | command | seconds | what the teammate sees")
            for row in team.timings:
                print(" | ".join(map(str, row)))
    assert second_down is not None and "nothing was running" in second_down.stdout, second_down


def _secrets(team: Team) -> list[str]:
    found = [p.read_text().strip() for p in (team.state / "secrets").iterdir() if p.is_file()]
    found += [v for user in team.users.values() for k, v in user.items() if k.endswith("PASSWORD")]
    return [s.split(":", 1)[-1] for s in found if len(s) >= 12]


def _last_line_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in:\n{text[-2000:]}")


# ----------------------------------------------------------------------------------------------
# 1. several workers, one pool
# ----------------------------------------------------------------------------------------------
def test_each_worker_of_the_pool_takes_a_different_flow_run(team):
    t0 = time.monotonic()
    runs = [team.run_deployment(CHECK, {"peers": 2, "batch": "e2e"}, tags=["batch:e2e"]) for _ in range(2)]
    for run in runs:
        team.wait_state(run, {"COMPLETED"}, timeout=600)
    seen = [json.loads(team.wait_log(run, r"\{.*\"worker\".*\}").group(0)) for run in runs]
    assert sorted(s["worker"] for s in seen) == ["gpu-a", "gpu-b"], seen
    for s in seen:  # each ran in its own host's folder, in a fresh clone, and reached the servers
        assert s["cwd"].startswith(str(team.hosts[s["worker"]].root / "runs")) and s["cwd"].endswith("/pokediff")
        assert s["mlflow"] == team.client["MLFLOW_TRACKING_URI"] and s["peers_started"] >= 2
    _timed(team, "2 team-check runs", "prefect deployment run 'pokediff-team-check/team-check' (x2)", t0,
           "one flow run per worker (gpu-a, gpu-b)")


# ----------------------------------------------------------------------------------------------
# 2. the nightly run: queued second run, a host dying mid-train, resume on the other worker
# ----------------------------------------------------------------------------------------------
def _first_checkpoint(team: Team, timeout: float = 900) -> tuple[Host, Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in ("gpu-a", "gpu-b"):
            host = team.hosts[name]
            for sidecar in (host.root / "runs").glob("*/pokediff/outputs/train/checkpoints/last.json"):
                return host, sidecar
        time.sleep(0.02)
    raise AssertionError("no checkpoint written by the first nightly run")


def test_nightly_run_queues_the_second_and_resumes_on_another_worker_after_a_host_dies(team):
    t0 = time.monotonic()
    first = team.run_deployment(NIGHTLY)
    team.wait_state(first, {"RUNNING"}, timeout=600)
    host, sidecar = _first_checkpoint(team)
    frozen = host.signal_matching(("pokediff", "train", "--auto-resume"), signal.SIGSTOP)  # training holds still
    assert frozen, "the train process was not found"
    step_frozen = json.loads(sidecar.read_text())["step"]
    # a second nightly run now: the deployment's concurrency limit holds it while the first trains
    second = team.run_deployment(NIGHTLY, {"train_processes": 2})
    team.wait_state(second, {"AwaitingConcurrencySlot"}, timeout=300)
    pushed = team.wait_log(first, r"checkpoint at step (\d+) pushed to MLflow run (\w+)", timeout=300)
    assert team.flow_run(first)["state"]["type"] == "RUNNING"
    assert team.flow_run(second)["state"]["name"] == "AwaitingConcurrencySlot"  # not running beside it
    _timed(team, "nightly run 1 (until its host dies)", "prefect deployment run 'pokediff-team-pipeline/"
           "team-nightly-train'", t0, f"MLflow: run {pushed.group(2)} RUNNING, checkpoint step {pushed.group(1)}")

    # the host dies; someone marks its run Crashed (`make team-crashed RUN=...`; or Prefect's zombie-run
    # automation, docs/team.md), which frees the deployment's slot
    assert host.crash() > 0
    marked = team.hosts["laptop"].run([*TEAM, "mark-crashed", first], cwd=team.clone)
    assert "Crashed (was Running)" in marked.stdout
    t0 = time.monotonic()
    done = team.wait_state(second, {"COMPLETED"}, timeout=1200)
    summary = team.wait_log(second, r"team pipeline done on (\S+): experiment (\S+) pushed, MLflow run (\w+), "
                                    r"model v(\d+), FID ([\d.]+)")
    logs = team.logs_text(second)
    resumed = re.search(r"resuming MLflow run (\w+) from its pushed checkpoint at step (\d+)", logs)
    assert resumed, logs[-5000:]
    other = "gpu-b" if host.name == "gpu-a" else "gpu-a"
    assert summary.group(1) == other
    assert resumed.group(1) == pushed.group(2) == summary.group(3)  # one MLflow run across both workers
    assert int(resumed.group(2)) >= step_frozen >= 4
    stages = team.prefect_logs_of(team.with_subflows(second))  # the stages log in the pipeline subflow
    assert "POKEDIFF_TRAIN_PROCESSES=2: running on 2 processes" in stages
    assert "pushed outputs to the DVC remote and experiment" in logs
    team.results.update(run_id=summary.group(3), experiment=summary.group(2), version=summary.group(4),
                        fid=float(summary.group(5)), resumed_step=int(resumed.group(2)),
                        flow_runs=team.with_subflows(first) + team.with_subflows(second), worker=other,
                        second_state=done["state"]["name"])
    _timed(team, f"nightly run 2 on {other} (resumed, 2 torchrun processes)", "(queued behind run 1)", t0,
           f"experiment {summary.group(2)} on the git remote; FID {summary.group(5)}; model v{summary.group(4)}")


# ----------------------------------------------------------------------------------------------
# 3. the teammate
# ----------------------------------------------------------------------------------------------
MLFLOW_VIEW = r"""
import json, sys
from mlflow import MlflowClient
run_id = sys.argv[1]
c = MlflowClient()
run = c.get_run(run_id)
exp = c.get_experiment(run.info.experiment_id)
trains = c.search_runs([exp.experiment_id], filter_string="tags.`pokediff.stage` = 'train'")
champion = c.get_model_version_by_alias("pokemon-ddpm", "champion")
print(json.dumps({
    "status": run.info.status, "artifact_uri": run.info.artifact_uri, "fid": run.data.metrics.get("fid"),
    "tags": run.data.tags, "params": run.data.params,
    "loss_steps": sorted(m.step for m in c.get_metric_history(run_id, "loss")),
    "train_runs": [r.info.run_id for r in trains], "champion_run": champion.run_id,
    "champion_version": champion.version, "artifacts": [a.path for a in c.list_artifacts(run_id)],
}))
"""


def test_teammate_sees_the_run_pulls_the_model_and_samples_the_champion(team):
    results = team.results
    assert results, "the nightly run did not complete"
    mate = team.hosts["mate"]
    t0 = time.monotonic()
    mate.run([*GIT, "clone", "-q", team.client["POKEDIFF_GIT_REMOTE"], "pokediff"])
    clone = mate.root / "pokediff"
    team.write_team_env(clone, "alice")
    mate.run([*TEAM, "dvc-remote"], cwd=clone)
    mate.run([PY, "-m", "dvc", "exp", "pull", "origin", results["experiment"]], cwd=clone)
    shown = mate.run([PY, "-m", "dvc", "exp", "show", "--no-pager", "--md"], cwd=clone).stdout
    rows = json.loads(mate.run([PY, "-m", "dvc", "exp", "show", "--json"], cwd=clone).stdout)
    print(shown)
    assert results["experiment"] in shown and re.search(r"\|\s*main\s*\|", shown)
    exp = next(e for row in rows for e in (row.get("experiments") or []) if e.get("name") == results["experiment"])
    fid_dvc = next(v["data"]["fid"] for run in exp["revs"] for v in run["data"]["metrics"].values()
                   if "fid" in v.get("data", {}))
    assert fid_dvc == pytest.approx(results["fid"], abs=0.01)
    _timed(team, "teammate: dvc exp pull + dvc exp show", f"dvc exp pull origin {results['experiment']}", t0,
           f"the experiment beside main with fid {fid_dvc:.2f}")

    t0 = time.monotonic()
    mate.run([PY, "-m", "dvc", "exp", "apply", results["experiment"]], cwd=clone)
    mate.run([PY, "-m", "dvc", "pull", "outputs/train/model.safetensors"], cwd=clone)
    assert (clone / "outputs" / "train" / "model.safetensors").stat().st_size > 10_000
    _timed(team, "teammate: the run's model", "dvc exp apply + dvc pull outputs/train/model.safetensors", t0,
           "outputs/train/model.safetensors")

    t0 = time.monotonic()
    view = json.loads(mate.run([PY, "-c", MLFLOW_VIEW, results["run_id"]], cwd=clone, **team.settings_for("alice"))
                      .stdout.splitlines()[-1])
    assert view["status"] == "FINISHED" and view["fid"] == pytest.approx(results["fid"], abs=0.01)
    assert view["artifact_uri"].startswith("mlflow-artifacts:")  # proxied: the teammate never sees the disk
    assert view["train_runs"] == [results["run_id"]]  # two workers, two processes: one training run
    assert view["champion_run"] == results["run_id"] and view["champion_version"] == results["version"]
    assert view["tags"]["pokediff.dvc_exp_name"] == results["experiment"]
    assert view["tags"]["pokediff.pushed_checkpoint_step"]
    steps = view["loss_steps"]  # the curve runs on from where the killed worker's checkpoint was
    assert steps[-1] == 60 and min(steps) <= results["resumed_step"] < max(steps)
    assert {"checkpoints", "pushed-checkpoint"} <= set(view["artifacts"])
    _timed(team, "teammate: MLflow (logged in as alice)", "MlflowClient().get_run / get_model_version_by_alias",
           t0, f"run FINISHED, fid {view['fid']:.2f}, one training run, champion v{view['champion_version']}")

    t0 = time.monotonic()
    mate.run(["pokediff", "sample", "--model", "models:/pokemon-ddpm@champion", "--num-images", "4", "--steps", "3",
              "--out", "champion/grid.png"], cwd=clone)
    assert Image.open(clone / "champion" / "grid.png").size[0] > 16
    _timed(team, "teammate: sample the champion", "pokediff sample --model models:/pokemon-ddpm@champion", t0,
           "champion/grid.png (4 sprites)")

    t0 = time.monotonic()
    port = free_port()
    serve = mate.spawn([*TEAM, "exec", "--", "mlflow", "models", "serve", "-m", "models:/pokemon-ddpm@champion",
                        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], mate.root / "serve.log",
                       cwd=clone)
    request = json.dumps({"dataframe_records": [{"num_images": 2, "sampler": "ddim", "steps": 3, "seed": 0}]})
    ask = (f"import urllib.request,time,sys\nfor _ in range(600):\n    try:\n"
           f"        r=urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:{port}/invocations',"
           f"data={request!r}.encode(),headers={{'Content-Type':'application/json'}}),timeout=120)\n"
           f"        sys.stdout.write(r.read().decode()); break\n    except OSError: time.sleep(1)\n")
    answer = json.loads(mate.run([PY, "-c", ask], cwd=clone, timeout=900).stdout)
    serve.send_signal(signal.SIGTERM)
    png = base64.b64decode(answer["predictions"][0]["png_base64"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(answer["predictions"]) == 2
    _timed(team, "teammate: serve the champion", "mlflow models serve -m models:/pokemon-ddpm@champion", t0,
           "POST /invocations -> 2 PNGs")


# ----------------------------------------------------------------------------------------------
# 4. passwords stay where they are put
# ----------------------------------------------------------------------------------------------
def test_no_password_reaches_logs_prefect_mlflow_or_git(team):
    secrets = _secrets(team)
    assert len(secrets) >= 6
    places = {}
    for name in ("gpu-a", "gpu-b"):
        places[f"{name} worker log"] = (team.hosts[name].root / "worker.log").read_text(errors="replace")
    places["Prefect flow run logs"] = team.prefect_logs_of(team.results.get("flow_runs", []))
    places["Prefect deployments"] = json.dumps(team.api("POST", "/deployments/filter", {}))
    places["Prefect flow runs"] = json.dumps(team.api("POST", "/flow_runs/filter", {}))
    if team.results:
        view = team.hosts["mate"].run([PY, "-c", MLFLOW_VIEW, team.results["run_id"]],
                                      **team.settings_for("alice")).stdout
        places["MLflow params and tags"] = view
    bare = team.client["POKEDIFF_GIT_REMOTE"]
    places["git remote (all refs, all files)"] = team.hosts["laptop"].run(
        [*GIT, "--git-dir", bare, "log", "--all", "-p", "--format=%H %s"]).stdout
    for where, text in places.items():
        assert text, where
        for secret in secrets:
            assert secret not in text, f"a password appears in {where}"
    committed = team.hosts["laptop"].run([*GIT, "--git-dir", bare, "log", "--all", "--name-only", "--format="]).stdout
    assert not {"team.env", ".team/client.env"} & set(committed.split())  # settings files never committed


# ----------------------------------------------------------------------------------------------
# 5. a wrong password, an unreachable server: one line naming the setting
# ----------------------------------------------------------------------------------------------
def _one_line(out, *, names: str, secret: str) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert names in lines[0] and secret not in out.stdout + out.stderr
    return lines[0]


def test_a_wrong_password_or_a_dead_server_is_one_line_naming_the_setting(team, tmp_path):
    laptop = team.hosts["laptop"]
    clone = team.clone
    wrong = "not-the-password-4711"
    bob = team.settings_for("bob")
    env = {**bob, "MLFLOW_TRACKING_PASSWORD": wrong}
    line = _one_line(laptop.run(["pokediff", "sample", "--model", "models:/pokemon-ddpm@champion", "--out",
                                 str(tmp_path / "g.png")], cwd=clone, check=False, **env),
                     names="MLFLOW_TRACKING_PASSWORD (from environment)", secret=wrong)
    assert "'bob'" in line
    env = {**bob, "PREFECT_API_AUTH_STRING": f"pokediff:{wrong}"}
    _one_line(laptop.run([PY, "-m", "pipelines.flows", "-S", "train.steps=1"], cwd=clone, check=False, **env),
              names="PREFECT_API_AUTH_STRING (from environment)", secret=wrong)
    dead = f"http://{team.hosts['server'].address}:9"  # discard port: nothing listens
    _one_line(laptop.run([*TEAM, "worker", "--pool", POOL], cwd=clone, check=False, MLFLOW_TRACKING_URI=dead),
              names="MLFLOW_TRACKING_URI (from environment)", secret=bob["MLFLOW_TRACKING_PASSWORD"])
    # the same settings from team.env are named with the file
    _one_line(laptop.run([*TEAM, "check"], cwd=clone, check=False, PREFECT_API_URL=dead + "/api"),
              names="PREFECT_API_URL (from environment)", secret=bob["MLFLOW_TRACKING_PASSWORD"])


# ----------------------------------------------------------------------------------------------
# 6. the database or the tracking server away while training logs to them
# ----------------------------------------------------------------------------------------------
TRAIN_TINY = ["-S", "model.base_channels=16", "-S", "model.channel_mults=[1,2]", "-S", "model.num_res_blocks=1",
              "-S", "model.attention_resolutions=[8]", "-S", "model.head_channels=8", "-S", "model.groups=8",
              "-S", "model.resolution=16", "-S", "data.resolution=16", "-S", "model.dropout=0.0",
              "-S", "train.batch_size=4", "-S", "train.warmup_steps=2", "-S", "train.eval_every=0",
              "-S", "train.log_every=5", "-S", "train.checkpoint_every=50"]
OUTAGE_VIEW = r"""
import json, sys
from mlflow import MlflowClient
c = MlflowClient()
run = c.get_run(sys.argv[1])
print(json.dumps({"status": run.info.status, "tracking": run.data.tags.get("pokediff.tracking"),
                  "version": run.data.tags.get("pokediff.model_version"),
                  "steps": sorted(m.step for m in c.get_metric_history(sys.argv[1], "loss"))}))
"""


def _last_step(log: Path) -> int:
    try:
        rows = log.read_text().splitlines()[1:]
    except OSError:
        return 0
    return int(rows[-1].split(",")[0]) if rows else 0


def _wait_step(proc, log: Path, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while _last_step(log) < step:
        assert proc.poll() is None, "training ended early"
        assert time.monotonic() < deadline, f"training did not reach step {step}"
        time.sleep(0.02)


@pytest.mark.parametrize("service", ["postgres", "mlflow"])
def test_training_finishes_when_postgres_or_the_mlflow_server_goes_away_mid_run(team, service):
    laptop, server = team.hosts["laptop"], team.hosts["server"]
    work = laptop.root / f"outage-{service}"
    (work / "imgs").mkdir(parents=True)
    (work / "params.yaml").write_text("{}\n")
    rng = np.random.default_rng(0)
    for i in range(16):
        img = np.full((16, 16, 3), 255, np.uint8)
        img[3:13, 3:13] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(work / "imgs" / f"mon_{i}.png")
    log = work / "run" / "train_log.csv"
    train = laptop.spawn([PY, "-m", "pokediff", "train", "--data", "imgs", "--out-dir", "run", "--steps", "80",
                          "--no-progress", *TRAIN_TINY], work / "train.out", cwd=work, **team.settings_for("bob"))

    def stack(action: str) -> list[str]:
        return [*TEAM, "stack", action, service, "--state", str(team.state), "--host", server.address]

    try:
        _wait_step(train, log, 5)  # the run is open and logging
        train.send_signal(signal.SIGSTOP)
        server.run(stack("stop"))
        train.send_signal(signal.SIGCONT)  # trains on while the store is away
        _wait_step(train, log, 30)
        train.send_signal(signal.SIGSTOP)
        server.run(stack("start"))
        train.send_signal(signal.SIGCONT)
        assert train.wait(timeout=900) == 0, (work / "train.out").read_text()[-3000:]
    finally:
        if train.poll() is None:
            train.kill()
        server.run(stack("start"), check=False)  # whatever happened, it is back
    output = (work / "train.out").read_text()
    assert output.count("MLflow tracking failed") == 1 and "Traceback" not in output, output[-3000:]
    assert (work / "run" / "model.safetensors").is_file() and _last_step(log) == 80
    run_id = json.loads((work / "run" / "mlflow_run.json").read_text())["run_id"]
    view = json.loads(team.hosts["mate"].run([PY, "-c", OUTAGE_VIEW, run_id], **team.settings_for("alice"))
                      .stdout.splitlines()[-1])
    assert view["status"] == "FINISHED" and view["tracking"] == "partial" and view["version"]
    assert view["steps"] == list(range(5, 81, 5))  # the outage's metrics were kept and logged at the end
