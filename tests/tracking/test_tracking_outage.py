"""Tracking must not cost training: a real `mlflow server` on 127.0.0.1 that is absent at the start,
killed in the middle of a real `pokediff train`, or killed and started again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = [
    "-S", "model.base_channels=16", "-S", "model.channel_mults=[1,2]", "-S", "model.num_res_blocks=1",
    "-S", "model.attention_resolutions=[8]", "-S", "model.head_channels=8", "-S", "model.groups=8",
    "-S", "model.resolution=16", "-S", "data.resolution=16", "-S", "model.dropout=0.0", "-S", "train.batch_size=4",
    "-S", "train.warmup_steps=2", "-S", "train.eval_every=0", "-S", "train.log_every=5",
]
WARNING = "MLflow tracking failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, port: int):
    """`mlflow server` with its own SQLite store and artifact folder; killed (process group) on exit."""
    root.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("mlflow")
    log = (root / f"server-{time.time_ns()}.log").open("w")
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        kill(proc)
        log.close()


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the server's own process group (start_new_session)
        proc.wait(timeout=30)


def _project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text("{}\n")
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        img = np.full((16, 16, 3), 255, np.uint8)
        img[3:13, 3:13] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(images / f"mon_{i}.png")
    return tmp_path


def _train_cmd(steps: int) -> list[str]:
    return [sys.executable, "-m", "pokediff", "train", "--data", "imgs", "--out-dir", "run", "--steps", str(steps),
            "-S", "train.checkpoint_every=50", "--no-progress", *TINY]


def _last_logged_step(log: Path) -> int:
    try:
        rows = log.read_text().splitlines()[1:]
    except OSError:
        return 0
    return int(rows[-1].split(",")[0]) if rows else 0


def test_unreachable_server_at_start_fails_in_seconds(tmp_path):
    project = _project(tmp_path)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"}
    env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    env.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
    t0 = time.monotonic()
    r = subprocess.run(_train_cmd(20), cwd=project, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and "INFO mlflow" not in line]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("pokediff train: MLflow store http://127.0.0.1:") and "--no-track" in lines[0]
    # Python, torch and mlflow start-up included (10 s idle, ~30 s on a loaded 2-core machine); MLflow's
    # defaults waited ~4 minutes here. The probe itself is timed below.
    assert seconds < 60, seconds
    assert not (project / "run" / "model.safetensors").exists()


def test_the_start_probe_itself_takes_seconds(tmp_path, monkeypatch):
    from pokediff.tracking.store import TrackingError, configure

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="not reachable .*--no-track"):
        configure()
    assert time.monotonic() - t0 < 5
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the probe's settings are not left behind


def test_server_killed_mid_run_training_finishes_and_writes_the_model(tmp_path):
    project = _project(tmp_path)
    port = _free_port()
    # The server is killed as soon as the first row (step 5) is logged: the remaining 145 steps take
    # over a second even on an idle 2-core CPU, minutes on a loaded one.
    steps = 150
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    with mlflow_server(tmp_path / "server", port) as server:
        with (project / "train.out").open("w") as out, (project / "train.err").open("w") as err:
            train = subprocess.Popen(_train_cmd(steps), cwd=project, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + 240
        while _last_logged_step(project / "run" / "train_log.csv") < 5:
            assert train.poll() is None, (project / "train.err").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        kill(server)
        killed_at, t_kill = _last_logged_step(project / "run" / "train_log.csv"), time.monotonic()
    rc = train.wait(timeout=600)
    after_kill = time.monotonic() - t_kill
    stderr = (project / "train.err").read_text()
    assert rc == 0, stderr
    assert killed_at < steps  # the server really died mid-run
    assert (project / "run" / "model.safetensors").is_file() and (project / "run" / "checkpoints" / "last.pt").is_file()
    assert _last_logged_step(project / "run" / "train_log.csv") == steps
    assert stderr.count(WARNING) == 1 and "Traceback" not in stderr, stderr
    assert "MLflow still unreachable" in stderr
    info = json.loads((project / "run" / "mlflow_run.json").read_text())
    assert info["tracking"] == "partial" and info["model_version"] is None
    print(f"killed at step {killed_at}/{steps}; training exited {after_kill:.1f} s after the kill")


def test_server_back_before_the_end_gets_the_buffered_metrics(tmp_path, monkeypatch, capsys):
    """Outage then recovery, in-process: metrics logged while the server was down reach it at the end,
    the model is registered and the run is tagged partial."""
    import torch
    from mlflow import MlflowClient

    from helpers import tiny_model_config
    from pokediff.checkpoint import save_model_file
    from pokediff.config import DiffusionConfig, Params
    from pokediff.models import UNet
    from pokediff.tracking.run import TrainingRun

    monkeypatch.chdir(_project(tmp_path))
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    net = UNet(tiny_model_config())
    model_file = save_model_file(tmp_path / "run" / "model.safetensors", net.state_dict(), net.state_dict(),
                                 tiny_model_config(), DiffusionConfig(), step=3)
    with mlflow_server(tmp_path / "server", port) as server:
        run = TrainingRun(Params(), tmp_path / "run", system_metrics=False)
        run.__enter__()
        run.log_metrics(5, {"loss": 0.9, "lr": 1e-3})
        kill(server)
        t0 = time.monotonic()
        run.log_metrics(10, {"loss": 0.8, "lr": 1e-3})  # fails: warned once, buffered
        assert time.monotonic() - t0 < 5  # one retry after 1 s, not MLflow's ~4 minutes of back-off
        run.log_metrics(15, {"loss": 0.7, "lr": 1e-3})  # buffered without another try
        run.log_image(torch.zeros(3, 8, 8, dtype=torch.uint8), "samples", 15)
    assert capsys.readouterr().err.count(WARNING) == 1
    with mlflow_server(tmp_path / "server", port):
        version = run.finish(model_file, None, summary={"steps": 15, "final_loss": 0.7})
        run.__exit__(None, None, None)
        client = MlflowClient(uri)
        got = client.get_run(run.run_id)
        history = client.get_metric_history(run.run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(5, 0.9), (10, 0.8), (15, 0.7)]
        assert got.data.tags["pokediff.tracking"] == "partial" and got.info.status == "FINISHED"
        assert version == "1" and "final loss | 0.7" in got.data.tags["mlflow.note.content"]
    assert "logged 4 buffered metric values" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
