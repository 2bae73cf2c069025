"""A stopped run keeps its work and tells the truth: real `pokediff` processes sent real SIGTERM/SIGINT.

SIGTERM is what Prefect's cancellation, DVC, systemd and Kubernetes send; SIGINT is Ctrl-C. Each test
starts the console script on a tiny configuration, waits until it is working, sends the signal and
checks what is on disk afterwards: the checkpoint's step, the lock, temporary files, the MLflow run in a
real SQLite store, the exit code (128 + signum) and the one line on stderr. The timing of a signal
is never asserted: only what must hold wherever it lands.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_CLI_OVERRIDES, tiny_model_config, write_noise_pngs
from pokediff.locks import LOCK_NAME

POKEDIFF = str(Path(sys.executable).with_name("pokediff"))  # the real console script of this venv
# Constant learning rate (no warm-up, no decay): train.steps then changes nothing about the weights, so a
# run stopped on its way to 100000 steps and resumed with --steps N equals an uninterrupted N-step run.
TRAIN = ["--params", "none", "--device", "cpu", "--no-progress", "--batch-size", "2", *TINY_CLI_OVERRIDES,
         "-S", "train.warmup_steps=0", "-S", "train.min_lr_ratio=1.0", "-S", "train.log_every=1",
         "-S", "train.checkpoint_every=1000", "-S", "train.lr=1e-3"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's SQLite store
    return {**env, "POKEDIFF_DEBUG": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _project(root: Path) -> Path:
    """A project folder (dvc.yaml marks it: MLflow's store is root/mlruns/mlflow.db) with 4 images."""
    (root / "dvc.yaml").write_text("stages: {}\n")
    write_noise_pngs(root / "imgs", 4, seed=0, high=255, name="{}.png")
    return root


def _start(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([POKEDIFF, *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _log_rows(out: Path) -> list[dict[str, str]]:
    try:
        with (out / "train_log.csv").open() as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


def _pokediff_lines(stderr: str) -> list[str]:
    """stderr without MLflow's own log lines (its first-use 'Creating initial MLflow database tables')."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.strip() and " INFO mlflow" not in line]


def _leftovers(folder: Path) -> list[str]:
    """Lock files and temporary files anywhere below ``folder``."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(LOCK_NAME) or p.name.endswith(".tmp"))


def _sidecar_step(out: Path) -> int:
    return json.loads((out / "checkpoints" / "last.json").read_text())["step"]


def _stop_training(tmp_path: Path, sig: int, extra: list[str], rows: int = 3) -> tuple[subprocess.CompletedProcess,
                                                                                       Path]:
    """Start a 100000-step run into tmp_path/run, send ``sig`` once ``rows`` steps are logged, wait for the exit."""
    out = tmp_path / "run"
    proc = _start(["train", "--data", "imgs", "--out-dir", "run", "--steps", "100000", *TRAIN, *extra], tmp_path)
    try:
        _wait_for(lambda: len(_log_rows(out)) >= rows, proc, f"{rows} logged steps")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out


@pytest.mark.slow
def test_sigterm_saves_the_step_marks_the_mlflow_run_killed_and_resume_reproduces_the_run(tmp_path):
    # On main: killed at once (exit -15), no checkpoint (every step since the last periodic one lost),
    # the lock left behind, the MLflow run RUNNING and mlflow_run.json saying "tracking": "complete".
    _project(tmp_path)
    r, out = _stop_training(tmp_path, signal.SIGTERM, [])
    assert r.returncode == 143, r.stderr[-3000:]
    lines = _pokediff_lines(r.stderr)
    assert len(lines) == 1, lines
    match = re.fullmatch(r"pokediff train: stopped by SIGTERM after step (\d+) of 100000: the checkpoint "
                         r"run/checkpoints/last\.pt holds it \(no model file: the run is unfinished\); "
                         r"run the same command with --resume to continue", lines[0])
    assert match, lines[0]
    stopped_at = int(match.group(1))
    assert stopped_at >= 3 and _sidecar_step(out) == stopped_at
    assert len(_log_rows(out)) == stopped_at, "every trained step is logged"
    assert not (out / "model.safetensors").exists(), "a stopped run writes no model file"
    assert _leftovers(tmp_path / "run") == [], "no lock, no temporary file"

    info = json.loads((out / "mlflow_run.json").read_text())
    assert info["status"] == "KILLED" and info["tracking"] == "partial" and info["stopped"] in lines[0]
    db = sqlite3.connect(tmp_path / "mlruns" / "mlflow.db")
    assert db.execute("select status from runs where run_uuid = ?", (info["run_id"],)).fetchone() == ("KILLED",)
    tags = dict(db.execute("select key, value from tags where run_uuid = ?", (info["run_id"],)).fetchall())
    assert tags["pokediff.training"] == "partial" and tags["pokediff.stopped"] in lines[0]
    db.close()

    # --resume continues the same MLflow run up to a few steps more ...
    total = stopped_at + 3
    resumed = subprocess.run([POKEDIFF, "train", "--data", "imgs", "--out-dir", "run", "--steps", str(total),
                              "--resume", *TRAIN], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads((out / "mlflow_run.json").read_text())
    assert info["status"] == "FINISHED" and info["tracking"] == "complete"
    db = sqlite3.connect(tmp_path / "mlruns" / "mlflow.db")
    assert db.execute("select status from runs").fetchall() == [("FINISHED",)], "one run, continued"
    assert db.execute("select value from tags where key = 'pokediff.training'").fetchone() == ("complete",)
    # the stop's "run the same command with --resume" is not left on the finished run (main kept it)
    assert db.execute("select value from tags where key = 'pokediff.stopped'").fetchall() == []
    db.close()

    # ... and reproduces an uninterrupted run of the same length, loss for loss and weight for weight.
    full = subprocess.run([POKEDIFF, "train", "--data", "imgs", "--out-dir", "full", "--steps", str(total),
                           "--no-track", *TRAIN], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    losses = [(r["step"], r["loss"]) for r in _log_rows(out)]
    assert losses == [(r["step"], r["loss"]) for r in _log_rows(tmp_path / "full")]
    from pokediff.checkpoint import load_file

    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "full" / "model.safetensors")
    assert a["step"] == b["step"] == total
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in b["ema"])


@pytest.mark.slow
def test_sigint_stops_after_a_step_with_exit_130_and_auto_resume_continues(tmp_path):
    # On main: "interrupted" (exit 130) but nothing saved since the last periodic checkpoint.
    _project(tmp_path)
    r, out = _stop_training(tmp_path, signal.SIGINT, ["--no-track", "--auto-resume"])
    assert r.returncode == 130, r.stderr[-3000:]
    (line,) = _pokediff_lines(r.stderr)
    assert line.startswith("pokediff train: stopped by SIGINT after step ") and \
        line.endswith("run the same command again to continue (--auto-resume)"), line
    stopped_at = int(line.split("after step ")[1].split()[0])
    assert _sidecar_step(out) == stopped_at and _leftovers(out) == []

    # The DVC stage's --auto-resume: the same command continues from the stopped step.
    again, out = _stop_training(tmp_path, signal.SIGINT, ["--no-track", "--auto-resume"], rows=stopped_at + 2)
    assert f"resuming from the checkpoint at step {stopped_at}" in again.stdout
    assert again.returncode == 130 and _sidecar_step(out) > stopped_at


def test_a_second_signal_stops_at_once_and_leaves_every_file_whole(tmp_path):
    # Wherever the two signals land (in a step, in the checkpoint write, after it), the process ends
    # with 143, one line, no lock and no temporary file, and any checkpoint on disk loads.
    _project(tmp_path)
    out = tmp_path / "run"
    proc = _start(["train", "--data", "imgs", "--out-dir", "run", "--steps", "100000", "--no-track", *TRAIN,
                   "-S", "train.checkpoint_every=2"], tmp_path)
    try:
        _wait_for(lambda: len(_log_rows(out)) >= 3, proc, "3 logged steps")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr[-3000:]
    (line,) = _pokediff_lines(stderr)
    assert line.startswith("pokediff train: stopped "), line
    assert _leftovers(out) == []
    from pokediff.checkpoint import load_file

    # (the sidecar, written just after the checkpoint, may still name the one before)
    assert load_file(out / "checkpoints" / "last.pt")["step"] >= _sidecar_step(out) >= 2


def _model_file(path: Path) -> Path:
    from pokediff.checkpoint import save_model_file
    from pokediff.config import DiffusionConfig
    from pokediff.models import UNet

    torch.manual_seed(0)
    model = UNet(tiny_model_config())
    return save_model_file(path, model.state_dict(), model.state_dict(), tiny_model_config(), DiffusionConfig(), 1)


def test_sample_locks_its_out_folder_and_stops_cleanly(tmp_path):
    # On main both runs exit 0 and interleave their images (two seeds, one grid); SIGTERM kills at once.
    _model_file(tmp_path / "model.safetensors")
    args = ["sample", "--checkpoint", "model.safetensors", "--params", "none", "--device", "cpu", *TINY_CLI_OVERRIDES,
            "--sampler", "ddim", "--steps", "2", "--batch-size", "4", "--out", "out/grid.png"]
    first = _start([*args, "--num-images", "1000000"], tmp_path)
    images = tmp_path / "out" / "grid_images"
    try:
        _wait_for(lambda: images.is_dir() and any(images.glob("*.png")), first, "the first images")
        second = subprocess.run([POKEDIFF, *args, "--num-images", "4", "--seed", "1"], cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=300)
        (line,) = _pokediff_lines(second.stderr)
        assert second.returncode == 1, second.stderr
        assert line.startswith("pokediff sample: out: another `pokediff sample` (pid ") and "is writing here" in line
        assert first.poll() is None, "the refused run leaves the running one alone"
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 143, stderr[-3000:]
    (line,) = _pokediff_lines(stderr)
    assert re.fullmatch(r"pokediff sample: stopped by SIGTERM after \d+ of 1000000 images \(in out/grid_images/, "
                        r"each one whole\); no grid, labels\.csv or sample_info\.json was written", line), line
    assert _leftovers(tmp_path / "out") == []
    pngs = sorted(images.glob("*.png"))
    assert pngs and all(Image.open(p).size == (16, 16) for p in pngs)  # every PNG decodes
    assert not (tmp_path / "out" / "sample_info.json").exists()


@pytest.mark.slow
def test_ingest_stops_cleanly_and_keeps_the_previous_dataset(tmp_path):
    # On main: SIGTERM kills ingest at once: its lock and the half-built .ingest-build stay behind.
    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source / f"{i}.png")
    args = ["ingest", "--params", "none", "--source", "src", "--out-dir", "ds", "--workers", "2", "--quiet",
            "-S", "data.resolution=16", "-S", "model.resolution=16"]
    proc = _start(args, tmp_path)
    try:
        _wait_for(lambda: (tmp_path / "ds" / ".ingest-build").is_dir(), proc, "the build")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr[-3000:]
    (line,) = _pokediff_lines(stderr)
    assert line == ("pokediff ingest: stopped by SIGTERM; the dataset in ds is unchanged "
                    "(the half-built one was removed)")
    assert sorted(os.listdir(tmp_path / "ds")) == []


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rank 1", "launcher"])
def test_torchrun_stops_every_rank_after_the_same_step(tmp_path, target):
    # A signal to one rank (or to the launcher, which forwards it to all) stops every rank after the same
    # step: no rank waits forever in an all-reduce for one that left; rank 0 saves and releases the lock.
    import psutil

    _project(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pokediff",
         "train", "--data", "imgs", "--out-dir", "run", "--steps", "100000", "--no-track", *TRAIN,
         "-S", "train.log_every=2"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_log_rows(out)) >= 2, proc, "2 logged steps")
        workers = {int(p.environ()["RANK"]): p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "RANK" in p.environ()}
        assert sorted(workers) == [0, 1]
        (workers[1] if target == "rank 1" else proc).send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)  # a hang would end here, at the timeout
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
    ours = [line for line in stderr.splitlines() if line.startswith("pokediff train:")]
    assert len(ours) == 1, stderr[-3000:]  # rank 0 speaks for both
    stopped_at = int(re.search(r"after step (\d+) of 100000", ours[0]).group(1))
    assert stopped_at % 2 == 0, "the ranks agree at a logged step (train.log_every = 2)"
    assert _sidecar_step(out) == stopped_at == int(_log_rows(out)[-1]["step"])
    assert proc.returncode != 0 and _leftovers(out) == []
