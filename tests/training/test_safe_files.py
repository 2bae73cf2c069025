"""Checkpoints and model files cannot run code when loaded; any other pickle is refused unread."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_CLI_OVERRIDES, PicklePayload, tiny_model_config
from pokediff.checkpoint import UnsafeCheckpointError, load_file, load_model
from pokediff.config import DiffusionConfig, TrainConfig
from pokediff.training.loop import train

TINY = TINY_CLI_OVERRIDES


Payload = PicklePayload


@pytest.fixture
def evil(tmp_path):
    """Three hostile files and the marker their code would create: a torch zip checkpoint, a bare
    pickle (torch's legacy format) and a bare pickle named like a safetensors file."""
    marker = tmp_path / "PWNED"
    files = {"zip": tmp_path / "evil_zip.pt", "legacy": tmp_path / "evil_legacy.pt",
             "named": tmp_path / "evil.safetensors"}
    torch.save({"format": "pokediff-checkpoint-v2", "step": 1, "model": Payload(marker)}, files["zip"])
    for path in (files["legacy"], files["named"]):
        path.write_bytes(pickle.dumps({"format": "pokediff-model-v1", "model": Payload(marker)}, protocol=4))
    # The payload is real: the loader of today's main (weights_only=False) runs it.
    torch.load(files["zip"], weights_only=False)
    assert marker.read_text() == "pwned"
    marker.unlink()
    return marker, files


def _images(n=4, res=16):
    imgs = torch.zeros(n, 3, res, res, dtype=torch.uint8)
    for i in range(n):
        imgs[i, i % 3, : res // 2 * (1 + i % 2), :] = 255
    return imgs


def _cfg(**kw):
    return TrainConfig(**{**dict(steps=8, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1, checkpoint_every=4,
                                 seed=5), **kw})


def _pokediff(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pokediff", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _one_line_error(r, *needles):
    err = r.stderr.strip()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_files_hold_only_tensors_and_plain_data(tmp_path):
    from safetensors import safe_open

    result = train(_images(), tiny_model_config(), DiffusionConfig(), _cfg(steps=4), tmp_path, progress=False)
    ckpt = torch.load(result.checkpoint, weights_only=True)  # the restricted unpickler accepts all of it
    assert ckpt["format"] == "pokediff-checkpoint-v2" and ckpt["step"] == 4
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and isinstance(ckpt["rng"]["generator"], torch.Tensor)
    assert isinstance(ckpt["config"]["train"], dict) and type(ckpt["torch_version"]) is str

    assert result.model_file.name == "model.safetensors"
    with safe_open(str(result.model_file), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == "pokediff-model-v2" and meta["step"] == "4"
    assert json.loads(meta["config"])["model"] == tiny_model_config().model_dump(mode="json")
    names = set(ckpt["model"])
    assert keys == {f"model.{k}" for k in names} | {f"ema.{k}" for k in names}


def test_hostile_pickles_are_refused_without_running(evil):
    marker, files = evil
    for path in files.values():
        with pytest.raises(UnsafeCheckpointError, match=r"could run code.*refused"):
            load_model(path)
        with pytest.raises(UnsafeCheckpointError):
            load_file(path)
    assert not marker.exists()


def test_cli_sample_and_resume_refuse_hostile_files(evil, tmp_path):
    marker, files = evil
    for path in files.values():
        r = _pokediff("sample", "--checkpoint", str(path), "--num-images", "1", "--out", "shots/grid.png", *TINY,
                      cwd=tmp_path)
        _one_line_error(r, f"pokediff sample: {path}", "refused")
        assert not (tmp_path / "shots").exists()  # refused before any output folder is made

    # A hostile checkpoint left in an out-dir, picked up by --resume.
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(data / f"{i}.png")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(files["zip"].read_bytes())
    r = _pokediff("train", "--data", "imgs", "--out-dir", "run", "--steps", "2", "--batch-size", "2", "--resume",
                  "--no-track", "--no-progress", *TINY, cwd=tmp_path)
    _one_line_error(r, "last.pt: holds pickled Python objects", "refused")
    assert not marker.exists()


def test_damaged_or_foreign_model_files_are_one_line_errors(tmp_path):
    from safetensors.torch import save_file

    from pokediff.checkpoint import CheckpointError, save_model_file
    from pokediff.models import UNet

    cfg = tiny_model_config()
    good = save_model_file(tmp_path / "good.safetensors", UNet(cfg).state_dict(), None, cfg, DiffusionConfig(), 1)
    (tmp_path / "half.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    save_file({"a": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    # A config (data from the file) describing a large network: refused from shapes alone, nothing allocated
    # (1024 base channels: a U-Net of ~1 GB); beyond the config's bounds, refused from the config alone.
    weights = {f"model.{k}": v for k, v in UNet(cfg).state_dict().items()}
    for name, base in (("huge", 1024), ("out-of-range", 8192)):
        meta = {"format": "pokediff-model-v2", "step": "1", "config": json.dumps(
            {"model": {**cfg.model_dump(mode="json"), "base_channels": base}, "diffusion": {}})}
        save_file(weights, tmp_path / f"{name}.safetensors", meta)
    cases = {"half": "not a readable model file", "foreign": "not a pokediff model file",
             "huge": "weights do not fit its config (0 tensors missing, 0 unexpected, 127 of another shape",
             "out-of-range": "its model config: base_channels: Input should be less than or equal to 1024"}
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(message)) as info:
            load_model(tmp_path / f"{name}.safetensors")
        assert "\n" not in str(info.value)
    assert load_model(good, use_ema=True)[3] == 1  # no EMA stored: falls back to the raw weights


def test_the_same_weights_give_the_same_model_file_bytes_in_every_process(tmp_path):
    """safetensors writes its metadata map in a hash order that changes per process; the model file is
    DVC's train output, so the same weights must give the same bytes (and md5) wherever they are saved."""
    code = (
        "import sys, torch\n"
        "from helpers import tiny_model_config\n"
        "from pokediff.checkpoint import save_model_file\n"
        "from pokediff.config import DiffusionConfig\n"
        "from pokediff.models import UNet\n"
        "torch.manual_seed(0)\n"
        "net = UNet(tiny_model_config())\n"
        "save_model_file(sys.argv[1], net.state_dict(), net.state_dict(), tiny_model_config(), DiffusionConfig(), 3)\n"
    )
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}
    files = [tmp_path / f"model{i}.safetensors" for i in range(4)]
    for path in files:
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, timeout=300)
    assert len({path.read_bytes() for path in files}) == 1
    loaded = load_file(files[0])
    assert loaded["step"] == 3 and loaded["config"]["model"] == tiny_model_config().model_dump(mode="json")
