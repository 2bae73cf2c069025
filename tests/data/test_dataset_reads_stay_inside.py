"""Nothing outside a dataset folder is read: `pokediff train --data DS` as a real process on a real
ingested dataset whose manifest.csv was edited to point elsewhere, and ingest's folder reads with a
folder swapped for a link between listing and reading.

On 980612b a row `../../../etc/hostname` or `/etc/passwd` was opened (and skipped only for its
extension, with a 3-line warning), an image outside the dataset was silently trained on, and a row
naming a FIFO hung training for good with the out-dir lock left behind.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TINY_CLI_OVERRIDES
from pokediff.data.image_folder import load_training_images
from pokediff.data.manifest import ManifestError
from pokediff.data.sources import FolderSource, iter_contents
from pokediff.locks import LOCK_NAME

POKEDIFF = str(Path(sys.executable).with_name("pokediff"))  # the real console script of this venv
TINY = ["--params", "none", *TINY_CLI_OVERRIDES]
TRAIN = [*TINY, "-S", "train.batch_size=4", "--steps", "2", "--no-track", "--no-progress", "--device", "cpu"]


def _pokediff(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "POKEDIFF_DEBUG": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([POKEDIFF, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _pngs(folder: Path, count: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A dataset of 12 16x16 PNGs made by the real `pokediff ingest`."""
    root = tmp_path_factory.mktemp("ingested")
    _pngs(root / "src", 12)
    done = _pokediff("ingest", *TINY, "--source", "src", "--out-dir", "ds", "--workers", "1", "--quiet", cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "ds"


def _with_row_one(dataset: Path, target: Path, path: str) -> Path:
    """A copy of `dataset` at `target` whose manifest row 1 names `path`."""
    shutil.copytree(dataset, target)
    manifest = target / "manifest.csv"
    with manifest.open(newline="") as f:
        rows = list(csv.reader(f))
    rows[1][0] = path
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return target


def _refused(result: subprocess.CompletedProcess, out: Path, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    # nothing trained, nothing left: no model, no checkpoint, no log, no lock
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert not [name for name in left if name.endswith((".safetensors", ".pt", ".csv")) or LOCK_NAME in name], left
    return lines[0]


@pytest.mark.parametrize("row, reason", [
    ("../../../etc/hostname", "a path with a '..' part"),
    ("/etc/passwd", "an absolute path"),
    ("OUTSIDE", "an absolute path"),  # an image elsewhere: silently trained on before
])
def test_train_refuses_a_manifest_row_outside_the_dataset(dataset, tmp_path, row, reason):
    if row == "OUTSIDE":
        _pngs(tmp_path / "elsewhere", 1, seed=7)
        row = str(tmp_path / "elsewhere" / "00.png")
    data = _with_row_one(dataset, tmp_path / "ds", row)
    result = _pokediff("train", "--data", str(data), "--out-dir", "run", *TRAIN, cwd=tmp_path)
    # The row is quoted whole when short; a long one (a deep tmp_path) is cut with an ellipsis.
    _refused(result, tmp_path / "run", f"{data / 'manifest.csv'}: row 1: path {row[:40]!r}"[:-1],
             f"is {reason}; expected a relative path inside the dataset folder")


def test_train_refuses_a_manifest_row_naming_a_fifo_without_opening_it(dataset, tmp_path):
    """A FIFO inside the dataset is a broken dataset, not an image to skip: one line, and the FIFO is
    never opened. A writer blocked on opening it would be woken by any reader (even a non-blocking
    one), so a writer thread that is still blocked afterwards proves nothing opened it."""
    data = _with_row_one(dataset, tmp_path / "ds", "images/fifo.png")
    fifo = data / "images" / "fifo.png"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until a reader opens the FIFO
        opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        result = _pokediff("train", "--data", str(data), "--out-dir", "run", *TRAIN, cwd=tmp_path, timeout=240)
        _refused(result, tmp_path / "run", f"{data / 'manifest.csv'}: row 1: path 'images/fifo.png' is not a "
                 "regular file (a device, FIFO or socket)")
        assert not opened.is_set(), "pokediff opened the FIFO"
    finally:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer thread finish
        thread.join(timeout=10)
        os.close(reader)


def test_a_manifest_row_through_a_link_out_of_the_dataset_is_refused(dataset, tmp_path):
    """A row whose folder or file is a link out of the dataset (not into the project's DVC cache) is a
    ManifestError naming the row, not an image skipped with a warning."""
    _pngs(tmp_path / "elsewhere", 1, seed=7)
    data = _with_row_one(dataset, tmp_path / "ds", "linked/00.png")
    (data / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ManifestError, match=r"manifest.csv: row 1: path 'linked/00.png' is a symbolic link"):
        load_training_images(data)
    data2 = _with_row_one(dataset, tmp_path / "ds2", "images/link.png")
    (data2 / "images" / "link.png").symlink_to(tmp_path / "elsewhere" / "00.png")
    with pytest.raises(ManifestError, match=r"row 1: path 'images/link.png' is a symbolic link to a file outside"):
        load_training_images(data2)


def test_ingest_does_not_follow_a_folder_swapped_for_a_link_after_listing(tmp_path):
    """The race: ingest lists the source, then a folder in it is replaced by a link to elsewhere before
    its files are read. The reads go through directory fds opened without following links, so the
    file behind the link is refused, not read."""
    _pngs(tmp_path / "src" / "sub", 2)
    _pngs(tmp_path / "secret", 2, seed=9)
    source = FolderSource(tmp_path / "src")
    entries = source.entries()
    assert [e.name for e in entries] == ["sub/00.png", "sub/01.png"]
    (tmp_path / "src" / "sub").rename(tmp_path / "moved")
    (tmp_path / "src" / "sub").symlink_to(tmp_path / "secret")
    results = dict(iter_contents(source, entries))
    assert all(isinstance(r, OSError) and "symbolic link" in str(r) for r in results.values()), results
    assert source.bytes_read == 0
