"""Data-parallel training equals single-process training with the same global batch.

`torchrun --nproc_per_node 2 -m pokediff train ...` (2 CPU processes, gloo) against `python -m pokediff
train ...` with the same params: every rank draws the same global batch and keeps its half, DDP averages
the gradients, so the logged losses and the final weights must agree up to float summation order. Only
rank 0 may write files. MLflow tracking is off (--no-track); the stage starts it on rank 0 only.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pokediff.checkpoint import load_file

RTOL, ATOL = 1e-4, 1e-5  # float summation order differs (gradient all-reduce); everything else is identical
STEPS = 6

TINY = [
    "model.base_channels=16", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
    "model.attention_resolutions=[8]", "model.head_channels=8", "model.groups=8", "model.resolution=16",
    "data.resolution=16", "model.dropout=0",  # dropout masks come from per-process RNGs: not shardable exactly
    "train.batch_size=8", f"train.steps={STEPS}", "train.warmup_steps=2", "train.log_every=1",
    "train.checkpoint_every=4", "train.lr=1e-3", "train.seed=7",
]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Six distinct 16x16 RGB PNGs: smooth gradients plus noise, so every draw of the batch matters."""
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 16)
    for i in range(6):
        img = np.stack([np.add.outer(ramp * (c + 1) / 3, ramp * (i % 3) / 2) % 256 for c in range(3)], axis=-1)
        img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def _train_cli(args: list[str], image_dir: Path, out_dir: Path, *, torchrun: bool) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                if torchrun else [sys.executable])
    cmd = [*launcher, "-m", "pokediff", "train", "--data", str(image_dir), "--out-dir", str(out_dir),
           "--params", "none", "--device", "cpu", "--no-progress", "--no-track"]
    for override in args:
        cmd += ["-S", override]
    # One thread per worker: two ranks on a 2-core machine, and no thread oversubscription.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, cwd=out_dir.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    return proc


def _log(out_dir: Path) -> list[dict[str, float]]:
    with (out_dir / "train_log.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _files(out_dir: Path) -> set[str]:
    return {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}


def _close(a, b) -> bool:
    return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=RTOL, atol=ATOL))


def _weights_close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=RTOL, atol=ATOL) for k in a)


@pytest.fixture(scope="module")
def runs(image_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    single = _train_cli(TINY, image_dir, root / "single", torchrun=False)
    ddp = _train_cli(TINY, image_dir, root / "ddp", torchrun=True)
    return {"single": (root / "single", single), "ddp": (root / "ddp", ddp)}


def test_ddp_losses_and_weights_match_single_process(runs):
    (single_dir, _), (ddp_dir, _) = runs["single"], runs["ddp"]
    single_log, ddp_log = _log(single_dir), _log(ddp_dir)
    assert [r["step"] for r in ddp_log] == list(range(1, STEPS + 1))
    assert _close([r["loss"] for r in ddp_log], [r["loss"] for r in single_log])
    assert _close([r["grad_norm"] for r in ddp_log], [r["grad_norm"] for r in single_log])
    assert _close([r["lr"] for r in ddp_log], [r["lr"] for r in single_log])

    single_model = load_file(single_dir / "model.safetensors")
    ddp_model = load_file(ddp_dir / "model.safetensors")
    assert ddp_model["step"] == single_model["step"] == STEPS
    assert _weights_close(ddp_model["ema"], single_model["ema"])
    assert _weights_close(ddp_model["model"], single_model["model"])
    # ...and training moved the weights far beyond that tolerance (the comparison is not vacuous).
    assert not _weights_close(_initial_weights(single_model), single_model["model"])


def _initial_weights(model_file: dict) -> dict:
    from pokediff.config import ModelConfig
    from pokediff.models import UNet

    torch.manual_seed(7)  # train() seeds with train.seed before building the model
    return UNet(ModelConfig.model_validate(model_file["config"]["model"])).state_dict()


def test_only_rank_zero_writes(runs):
    (single_dir, _), (ddp_dir, ddp_proc) = runs["single"], runs["ddp"]
    expected = {"checkpoints/last.pt", "checkpoints/last.json", "model.safetensors", "train_log.csv",
                "train_metrics.json", "eval_log.csv"}
    assert _files(ddp_dir) == _files(single_dir) == expected  # no stray temp files, no per-rank copies
    assert len(_log(ddp_dir)) == STEPS  # a second writer would duplicate rows
    metrics = json.loads((ddp_dir / "train_metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["final_loss"] == pytest.approx(_log(ddp_dir)[-1]["loss"])
    assert load_file(ddp_dir / "checkpoints" / "last.pt")["step"] == STEPS
    # The stage's closing line is printed after train_metrics.json is written: by rank 0 only.
    assert ddp_proc.stdout.count(f"{STEPS} steps in") == 1, ddp_proc.stdout


def test_wrong_sharding_would_be_caught(runs, image_dir, tmp_path, monkeypatch):
    """The tolerance is tight enough to see a sharding bug: if every rank trained on the first half of the
    global batch, the run would equal single-process training on those halves, emulated here."""
    from pokediff.config import load_params
    from pokediff.data.image_folder import load_training_images
    from pokediff.training import distributed
    from pokediff.training.loop import train

    ddp_dir, _ = runs["ddp"]
    params = load_params("none", TINY)
    monkeypatch.setattr(distributed, "shard", lambda batch, info: batch[: batch.shape[0] // 2])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs ~5x faster on one thread when the 2 cores are shared
    try:
        wrong = train(load_training_images(image_dir, 16), params.model, params.diffusion, params.train,
                      tmp_path / "wrong", device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert not _close(wrong.losses, [r["loss"] for r in _log(ddp_dir)])
    assert not _weights_close(load_file(wrong.model_file)["ema"], load_file(ddp_dir / "model.safetensors")["ema"])
