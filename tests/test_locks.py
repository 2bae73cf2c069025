"""One writer per output folder, for every command that writes one, and locks that never block a retry
after a failure: a lock file appears whole or not at all, and an empty or garbled one is stale at once.

Real processes and real file systems: a 64 KiB tmpfs that is full (root only; without mount rights the
same failure comes from a file-size limit of 0 bytes, a real EFBIG from the kernel on the first write,
which is the same "created, then the write failed" path), live lock holders, the real console script.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY_CLI_OVERRIDES
from pokediff.locks import LOCK_NAME, OutDirLock

POKEDIFF = str(Path(sys.executable).with_name("pokediff"))
TRAIN_EMPTY = ["train", "--data", "empty", "--params", "none", "--no-track", "--device", "cpu", *TINY_CLI_OVERRIDES]


def _run(args, cwd, **kw):
    return subprocess.run([POKEDIFF, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "POKEDIFF_DEBUG": "0"}, **kw)


def _one_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    return lines[0]


@pytest.fixture
def full_disk(tmp_path):
    """(folder on a full file system, how to free it, limit for the child or None)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    if not mounted:  # no mount rights: a file-size limit of 0 makes the first write fail the same way
        yield disk, lambda: None, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        return
    filler = disk / "filler"
    try:
        with filler.open("wb") as f:  # fill it to the last byte
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    try:
        yield disk, lambda: filler.unlink(), None
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_leaves_no_lock_file_and_the_retry_is_not_blocked(tmp_path, full_disk):
    # On main the lock file was created empty, its write failed, and the empty file stayed: the retry
    # was refused for 60 s ("another `pokediff ?` (pid ? on ?) is writing here").
    disk, free, limit = full_disk
    (tmp_path / "empty").mkdir()
    out = disk / "run"
    r = _run([*TRAIN_EMPTY, "--out-dir", str(out)], tmp_path, preexec_fn=limit)
    line = _one_line(r)
    assert r.returncode == 1 and ("No space left on device [ENOSPC]" in line or "File too large [EFBIG]" in line)
    assert [p.name for p in out.iterdir()] == [], "no lock file, no temporary file"

    free()
    r = _run([*TRAIN_EMPTY, "--out-dir", str(out)], tmp_path)  # at once, and this time it gets the lock
    assert r.returncode == 1 and "is writing here" not in r.stderr and "empty" in _one_line(r)
    assert [p.name for p in out.iterdir()] == []


@pytest.mark.parametrize("content", ["", "{", "garbage\n", "[1, 2]", '{"pid": "12"}', '{"pid": true}'])
def test_an_empty_or_garbled_lock_is_stale_at_once(tmp_path, content):
    # On main an empty or unreadable lock blocked for 60 s, and a JSON list crashed with a traceback.
    (tmp_path / LOCK_NAME).write_text(content)
    with OutDirLock(tmp_path, "train") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_empty_lock_does_not_block_the_command(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).write_text("")
    r = _run([*TRAIN_EMPTY, "--out-dir", "run"], tmp_path)
    assert r.returncode == 1 and "empty" in _one_line(r) and "is writing here" not in r.stderr
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_the_lock_appears_with_its_whole_record(tmp_path):
    with OutDirLock(tmp_path / "out", "sample") as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["what"] == "sample"
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_NAME]  # the temporary file is gone
    assert list((tmp_path / "out").iterdir()) == []


@pytest.fixture
def live_holder():
    holder = subprocess.Popen(["sleep", "300"])
    yield holder
    holder.kill()
    holder.wait()


def _lock(folder: Path, holder: subprocess.Popen) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "what": "sample",
                                                "command": "x", "since": 0}))


@pytest.mark.parametrize(("argv", "locked"), [
    # On main none of these looked at a lock: two of them into one folder wrote over each other.
    (["sample", "--checkpoint", "tiny.safetensors", "--out", "s/grid.png"], "s"),
    (["sample", "--checkpoint", "tiny.safetensors", "--out", "s/grid.png", "--images-dir", "pngs"], "pngs"),
    (["score", "--samples", "imgs", "--ref", "none.npz", "--out", "sc/metrics.json", "--device", "cpu"], "sc"),
    (["ref-stats", "--data", "imgs", "--out", "ref/ref_stats.npz", "--device", "cpu"], "ref"),
    (["validate", "--dataset-dir", "imgs", "--out-dir", "val"], "val"),
])
def test_every_command_that_writes_a_folder_takes_its_lock(tmp_path, live_holder, argv, locked):
    (tmp_path / "imgs").mkdir()
    if argv[0] == "sample":  # sample reads its model before it creates any folder: a real (tiny) one
        from helpers import tiny_model_config
        from pokediff.checkpoint import save_model_file
        from pokediff.config import DiffusionConfig
        from pokediff.models import UNet

        cfg = tiny_model_config()
        save_model_file(tmp_path / "tiny.safetensors", UNet(cfg).state_dict(), None, cfg, DiffusionConfig(), 1)
    _lock(tmp_path / locked, live_holder)
    r = _run([*argv, "--params", "none"], tmp_path)
    line = _one_line(r)
    assert r.returncode == 1, r.stderr
    assert f"{locked}: another `pokediff sample` (pid {live_holder.pid} on " in line and "is writing here" in line
    assert sorted(p.name for p in (tmp_path / locked).iterdir()) == [LOCK_NAME]  # nothing written there
