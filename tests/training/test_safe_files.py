"""Checkpoints and model files cannot run code when loaded; old pickles are refused and convert on --trust."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_CLI_OVERRIDES, PicklePayload, tiny_model_config
from pokediff.config import DiffusionConfig, TrainConfig
from pokediff.training import UnsafeCheckpointError, load_file, load_model, train
from pokediff.training.checkpoint import convert_legacy

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
        with pytest.raises(UnsafeCheckpointError, match=r"refused; .*pokediff convert-checkpoint --trust"):
            load_model(path)
        with pytest.raises(UnsafeCheckpointError):
            load_file(path)
    assert not marker.exists()


def test_cli_sample_and_resume_refuse_hostile_files(evil, tmp_path):
    marker, files = evil
    for path in files.values():
        r = _pokediff("sample", "--checkpoint", str(path), "--num-images", "1", *TINY, cwd=tmp_path)
        _one_line_error(r, f"pokediff sample: {path}", "convert-checkpoint --trust")

    # A hostile checkpoint left in an out-dir, picked up by --resume.
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(data / f"{i}.png")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(files["zip"].read_bytes())
    r = _pokediff("train", "--data", "imgs", "--out-dir", "run", "--steps", "2", "--batch-size", "2", "--resume",
                  "--no-track", "--no-progress", *TINY, cwd=tmp_path)
    _one_line_error(r, "last.pt: holds pickled Python objects", "convert-checkpoint --trust")

    # Conversion is an explicit opt-in: without --trust nothing is unpickled.
    r = _pokediff("convert-checkpoint", str(files["zip"]), "new.safetensors", cwd=tmp_path)
    assert r.returncode == 2 and "add --trust" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "new.safetensors").exists()


def _as_v1(v2: dict) -> dict:
    """What the first pokediff wrote: the same payload with format v1 and torch's TorchVersion object
    (which weights_only=True refuses)."""
    return {**v2, "format": "pokediff-checkpoint-v1", "torch_version": torch.__version__}


def test_convert_trusted_v1_files_then_resume_exactly(tmp_path):
    model_cfg, diff_cfg = tiny_model_config(dropout=0.1), DiffusionConfig(schedule="cosine", prediction="v")
    full = train(_images(), model_cfg, diff_cfg, _cfg(), tmp_path / "full", progress=False)
    part = train(_images(), model_cfg, diff_cfg, _cfg(), tmp_path / "killed", progress=False, stop_after=6)

    # An old v1 training checkpoint (pickled) in the out-dir: refused, converted, resumed bit-exactly.
    last = part.checkpoint
    old = tmp_path / "old_last.pt"
    torch.save(_as_v1(load_file(last)), old)
    last.unlink()
    with pytest.raises(UnsafeCheckpointError, match="convert-checkpoint --trust"):
        load_file(old)
    done = convert_legacy(old, last, trust=True)
    assert done["format"] == "pokediff-checkpoint-v2" and done["step"] == 4
    resumed = train(_images(), model_cfg, diff_cfg, _cfg(), tmp_path / "killed", progress=False, resume=True)
    assert resumed.resumed_from == 4 and resumed.losses == full.losses[4:]

    # An old v1 model file -> model.safetensors through the CLI, with the same weights.
    legacy = load_file(full.model_file)
    old_model = tmp_path / "model.pt"
    torch.save({"format": "pokediff-model-v1", "step": legacy["step"], "config": legacy["config"],
                "model": legacy["model"], "ema": legacy["ema"]}, old_model)
    with pytest.raises(UnsafeCheckpointError, match="old checkpoint format pokediff-model-v1"):
        load_file(old_model)
    r = _pokediff("convert-checkpoint", "--trust", "model.pt", "converted.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "-> converted.safetensors (pokediff-model-v2, step 8)" in r.stdout
    converted = load_file(tmp_path / "converted.safetensors")
    assert all(torch.equal(converted["ema"][k], legacy["ema"][k]) for k in legacy["ema"])
    # Nothing is overwritten.
    r = _pokediff("convert-checkpoint", "--trust", "model.pt", "converted.safetensors", cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_damaged_or_foreign_model_files_are_one_line_errors(tmp_path):
    from safetensors.torch import save_file

    from pokediff.models import UNet
    from pokediff.training import CheckpointError, save_model_file

    cfg = tiny_model_config()
    good = save_model_file(tmp_path / "good.safetensors", UNet(cfg).state_dict(), None, cfg, DiffusionConfig(), 1)
    (tmp_path / "half.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    save_file({"a": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    # A config (data from the file) describing a huge network: refused from shapes alone, nothing allocated
    # (8192 base channels would be a ~100 GB U-Net).
    meta = {"format": "pokediff-model-v2", "step": "1", "config": json.dumps(
        {"model": {**cfg.model_dump(mode="json"), "base_channels": 8192}, "diffusion": {}})}
    save_file({f"model.{k}": v for k, v in UNet(cfg).state_dict().items()}, tmp_path / "huge.safetensors", meta)
    cases = {"half": "not a readable model file", "foreign": "not a pokediff model file",
             "huge": "weights do not fit its config (0 tensors missing, 0 unexpected, 127 of another shape"}
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(message)) as info:
            load_model(tmp_path / f"{name}.safetensors")
        assert "\n" not in str(info.value)
    assert load_model(good, use_ema=True)[3] == 1  # no EMA stored: falls back to the raw weights
