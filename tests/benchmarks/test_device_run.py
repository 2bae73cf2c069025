"""The GPU run's script, rehearsed on this CPU: `bash benchmarks/device_run.sh --dry-run-cpu` runs every
phase at toy sizes with only the wheel set importable, and leaves the files the GPU run would return.
Also: the carried dataset round-trips exactly, the import guard hides what the GPU machine lacks, and
the wheel list agrees with the lock file."""

from __future__ import annotations

import json
import lzma
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import device_dataset  # noqa: E402
from benchmarks.import_guard import pinned_distributions  # noqa: E402
from helpers import write_noise_pngs  # noqa: E402


@pytest.fixture(scope="module")
def carry(tmp_path_factory) -> Path:
    """A tiny ingested-like dataset (six 16x16 images), packed as the GPU run carries it."""
    images = write_noise_pngs(tmp_path_factory.mktemp("images"), 6, seed=0, name="{:02d}.png")
    folder = tmp_path_factory.mktemp("carry")
    device_dataset.pack_images(images, folder, resolution=16)
    return folder


def test_the_carried_dataset_unpacks_to_the_same_pixels(carry, tmp_path):
    from pokediff.data.image_folder import load_training_images

    header = device_dataset.unpack_images(carry, tmp_path / "images")
    assert header["shape"] == [6, 3, 16, 16]
    original = load_training_images(header["source"], 16)
    assert torch.equal(load_training_images(tmp_path / "images", 16), original)


def test_a_damaged_or_oversized_carried_dataset_is_refused(carry, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    header = json.loads((carry / device_dataset.HEADER_FILE).read_text())
    raw = bytearray(lzma.decompress((carry / device_dataset.ARRAY_FILE).read_bytes()))
    raw[0] ^= 1
    (damaged / device_dataset.ARRAY_FILE).write_bytes(lzma.compress(bytes(raw)))
    (damaged / device_dataset.HEADER_FILE).write_text(json.dumps(header))
    with pytest.raises(ValueError, match="sha256 differs"):
        device_dataset.unpack_images(damaged, tmp_path / "out")
    # a header declaring more than the bound is refused before anything is decompressed
    (damaged / device_dataset.HEADER_FILE).write_text(json.dumps({**header, "shape": [1 << 20, 3, 64, 64]}))
    with pytest.raises(ValueError, match="at most"):
        device_dataset.unpack_images(damaged, tmp_path / "out")
    # a header declaring less than the payload: the payload is not the declared array
    (damaged / device_dataset.HEADER_FILE).write_text(json.dumps({**header, "shape": [5, 3, 16, 16]}))
    with pytest.raises(ValueError, match="does not hold exactly"):
        device_dataset.unpack_images(damaged, tmp_path / "out")


def test_the_wheel_list_is_pinned_as_in_the_lock_file_and_has_no_mlops_stack():
    lock = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        lock[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    pins = {}
    for line in (ROOT / "benchmarks" / "device_requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert set(pins) == set(pinned_distributions())
    assert {n: v for n, v in pins.items() if lock.get(n) != v} == {}, "device_requirements.txt drifted from the lock"
    assert not {"torch", "mlflow", "dvc", "prefect", "great-expectations", "torchvision", "scipy"} & set(pins)


def _guarded(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    return subprocess.run([sys.executable, "-m", "benchmarks.import_guard", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_import_guard_hides_what_the_gpu_machine_lacks():
    ok = _guarded("import importlib.util, numpy, torch, pydantic, safetensors, diffusers\n"
                  "for name in ('mlflow', 'prefect', 'dvc', 'great_expectations', 'scipy', 'torchvision'):\n"
                  "    assert importlib.util.find_spec(name) is None, name\n")
    assert ok.returncode == 0, ok.stderr[-3000:]
    refused = _guarded("import mlflow")
    assert refused.returncode != 0 and "No module named 'mlflow'" in refused.stderr


@pytest.mark.slow
def test_dry_run_leaves_the_files_the_gpu_run_returns(carry, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_run.sh"), "--dry-run-cpu", "--carry", str(carry),
                           "--work", str(work)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    files = sorted(p.name for p in out.iterdir())
    assert files == ["logs.tar.xz", "samples.tar.gz", "summary.json"]
    assert all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run-cpu"
    phases = {p["name"]: p["status"] for p in summary["phases"]}
    assert phases == dict.fromkeys(["environment", "dataset", "bench-train-eager", "bench-sampling-eager",
                                    "bench-train-compiled", "bench-sampling-compiled", "train", "sample",
                                    "pack-samples", "check-outputs"], "ok")
    # the benchmarks ran every implementation (a missing wheel shows as a row with an error)
    for name in ("bench-train-eager", "bench-sampling-eager"):
        rows = summary["benchmarks"][name]["rows"]
        assert rows and not [r for r in rows if "error" in r], rows
    # training stopped on its wall-clock budget and said so; sampling used bf16 autocast as on CUDA
    assert summary["train"]["stopped_by_budget"] == 1 and summary["train"]["steps"] >= 1
    assert summary["sample"]["num_images"] == 8 and summary["sample"]["precision"] == "bf16"

    with tarfile.open(out / "samples.tar.gz") as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert names == [f"samples/{i:06d}.png" for i in range(8)]
        first = Image.open(tar.extractfile(names[0]))
        assert first.size == (16, 16) and first.mode == "RGB"
    with tarfile.open(out / "logs.tar.xz") as tar:
        logs = set(tar.getnames())
    assert {"train.log", "sample.log", "train_log.csv", "train_metrics.json", "grid.png",
            "import_guard.txt"} <= logs
