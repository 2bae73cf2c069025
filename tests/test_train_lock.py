"""One out-dir, one writer: `pokediff train` locks its out-dir; a stale lock of a dead process is recovered.

Real processes throughout: a long `pokediff train` holds the lock, a second one into the same out-dir
stops at once with one line; the first is then SIGKILLed (its lock file stays behind, its pid is gone)
and a third run recovers the stale lock, trains and removes the lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pokediff.locks import LOCK_NAME

TINY = [
    "--params", "none", "--no-track", "--no-progress", "--device", "cpu", "--batch-size", "2",
    "-S", "model.base_channels=16", "-S", "model.channel_mults=[1,2]", "-S", "model.num_res_blocks=1",
    "-S", "model.attention_resolutions=[8]", "-S", "model.head_channels=8", "-S", "model.groups=8",
    "-S", "model.resolution=16", "-S", "data.resolution=16", "-S", "train.warmup_steps=0",
]


def _pokediff(*args, cwd, **kw):
    return [sys.executable, "-m", "pokediff", "train", *args, *TINY], dict(cwd=cwd, text=True, **kw)


def _images(path, n=4):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path / f"{i}.png")


def test_second_writer_is_refused_and_a_dead_writers_lock_is_recovered(tmp_path):
    _images(tmp_path / "imgs")
    lock = tmp_path / "run" / LOCK_NAME
    argv, kw = _pokediff("--data", "imgs", "--out-dir", "run", "--steps", "1000000", cwd=tmp_path)
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "train_log.csv").exists():  # training has started, lock held
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        owner = json.loads(lock.read_text())
        assert owner["pid"] == first.pid and owner["what"] == "train"

        argv, kw = _pokediff("--data", "imgs", "--out-dir", "run", "--steps", "2", cwd=tmp_path)
        t0 = time.monotonic()
        second = subprocess.run(argv, capture_output=True, timeout=120, **kw)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 1 and len(lines) == 1, second.stderr
        assert f"another `pokediff train` (pid {first.pid}" in lines[0] and "run" in lines[0]
        assert time.monotonic() - t0 < 60
        assert first.poll() is None, "the refused run must not disturb the running one"
    finally:
        first.send_signal(signal.SIGKILL)  # dies without releasing: the lock file stays
        first.wait(timeout=60)
    assert json.loads(lock.read_text())["pid"] == first.pid  # stale: its pid is gone
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)

    argv, kw = _pokediff("--data", "imgs", "--out-dir", "run", "--steps", "2", cwd=tmp_path)
    third = subprocess.run(argv, capture_output=True, timeout=300, **kw)
    assert third.returncode == 0, third.stderr
    assert json.loads((tmp_path / "run" / "train_metrics.json").read_text())["steps"] == 2
    assert not lock.exists(), "the lock is released at the end of the run"


def test_lock_of_a_live_process_on_this_host_is_respected(tmp_path):
    # Any live process counts (here a sleeping one), and nothing is written into the out-dir.
    _images(tmp_path / "imgs")
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "run" / LOCK_NAME).write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "what": "train", "command": "x", "since": 0}))
        argv, kw = _pokediff("--data", "imgs", "--out-dir", "run", "--steps", "2", cwd=tmp_path)
        r = subprocess.run(argv, capture_output=True, timeout=120, **kw)
        assert r.returncode == 1 and "is writing here" in r.stderr and "Traceback" not in r.stderr
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
