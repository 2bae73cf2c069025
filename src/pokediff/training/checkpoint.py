"""Checkpoints: written atomically, holding everything needed to resume exactly or to sample.

Two kinds of file:
    training checkpoint  (checkpoints/last.pt): model, EMA, optimizer, LR scheduler, step, every RNG
                         state and the configs. ``train(resume=True)`` continues from it.
    model file           (model.pt): configs + EMA (and raw) weights only; what sampling and
                         the MLflow registry use.

Atomic write: save to a temporary file in the same directory, fsync, then os.replace. A crash
mid-write leaves the previous file intact; a reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pokediff.config import DiffusionConfig, ModelConfig
from pokediff.errors import PokediffError

CHECKPOINT_FORMAT = "pokediff-checkpoint-v1"
MODEL_FORMAT = "pokediff-model-v1"


class CheckpointError(PokediffError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the requested run."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_sidecar(checkpoint: Path, info: dict) -> None:
    """checkpoints/last.json next to last.pt: step and fingerprint, written atomically."""
    sidecar = checkpoint.with_suffix(".json")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, sidecar)


def read_sidecar(checkpoint: Path) -> dict:
    try:
        return json.loads(checkpoint.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def run_fingerprint(images: torch.Tensor, model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig,
                    train_cfg) -> str:
    """sha256 over the training images and every setting that changes the trained weights.

    Bookkeeping keys (log/checkpoint/eval intervals, out_dir) are left out: changing them must not
    throw away a run that can be resumed."""
    bookkeeping = {"log_every", "checkpoint_every", "eval_every", "eval_num_samples", "eval_sampler_steps",
                   "out_dir"}
    settings = {
        "model": model_cfg.model_dump(mode="json"),
        "diffusion": diffusion_cfg.model_dump(mode="json"),
        "train": {k: v for k, v in train_cfg.model_dump(mode="json").items() if k not in bookkeeping},
    }
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling error means the same thing to the user
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"{path}: not a pokediff checkpoint or model file")
    return obj


def model_file_payload(model_state: dict, ema_state: dict | None, model_cfg: ModelConfig,
                       diffusion_cfg: DiffusionConfig, step: int, extra: dict | None = None) -> dict:
    return {
        "format": MODEL_FORMAT,
        "step": step,
        "config": {"model": model_cfg.model_dump(mode="json"), "diffusion": diffusion_cfg.model_dump(mode="json")},
        "model": model_state,
        "ema": ema_state,
        **(extra or {}),
    }


def load_model(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild the exact network from a checkpoint or model file, with no other file needed.

    Returns (model in eval mode, ModelConfig, DiffusionConfig, step)."""
    from pokediff.models import UNet  # local: keeps this module importable without building models

    obj = load_file(path)
    model_cfg = ModelConfig.model_validate(obj["config"]["model"])
    diffusion_cfg = DiffusionConfig.model_validate(obj["config"]["diffusion"])
    state = obj["ema"] if use_ema and obj.get("ema") is not None else obj["model"]
    model = UNet(model_cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), model_cfg, diffusion_cfg, int(obj["step"])
