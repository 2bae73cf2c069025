"""The model-file format: model.safetensors and the training checkpoint, written atomically, read
without running code.

Its own module beside models/ because four places read it (training saves and resumes, `pokediff
sample` loads, the registry logs, the served model loads) and each of them must get it without the
others: importing it loads the U-Net and the typed configs, never the training loop, MLflow or the
samplers.

Two kinds of file:
    training checkpoint  (checkpoints/last.pt): model, EMA, optimizer, LR scheduler, step, every RNG
                         state (as uint8 tensors), the configs (as dicts) and the run's fingerprint.
                         ``torch.save`` of tensors, dicts, lists and numbers only, read back with
                         ``torch.load(weights_only=True)``: its restricted unpickler builds no other
                         object, so the file cannot run code. ``TrainingState`` saves and restores it;
                         checkpoints/last.json beside it (step, fingerprint) decides whether to resume
                         without loading the large file.
    model file           (model.safetensors): EMA and raw weights as safetensors (a JSON header + raw
                         bytes; no pickle at all), with the format tag, step and the model + diffusion
                         configs as JSON in the header's metadata. What sampling, the MLflow registry
                         and the served model read; one self-contained file, so weights and config
                         cannot drift apart.

Any other pickle is refused without being unpickled. Atomic write: save to a temporary file in the
same directory, fsync, then os.replace; a crash mid-write leaves the previous file intact and a
reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig
from pokediff.errors import PokediffError, shorten
from pokediff.models.unet import UNet
from pokediff.pixels import update_pixel_hash

CHECKPOINT_FORMAT = "pokediff-checkpoint-v2"
MODEL_FORMAT = "pokediff-model-v2"
MODEL_FILE_NAME = "model.safetensors"  # in train.out_dir
CHECKPOINT_FILE = Path("checkpoints") / "last.pt"  # in train.out_dir

# Our safetensors headers hold a few hundred tensor entries and the configs (~100 KB for the GPU
# recipe); a header claiming more than this is not one of ours and is not parsed.
MAX_SAFETENSORS_HEADER = 16 * 2**20
MAX_METADATA_VALUE = 2**20


class CheckpointError(PokediffError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the requested run."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle holding Python objects (not pokediff's format), refused without being unpickled."""


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """write(tmp) into a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save(obj) atomically. ``obj`` must hold only what weights_only=True reads back."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return _atomic_write(path, write)


def save_model_file(path: str | Path, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor] | None,
                    model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig, step: int) -> Path:
    """model.safetensors: tensors ``ema.<name>`` and ``model.<name>`` (each state dict entry, on CPU,
    contiguous) + metadata {format, step, config: JSON {"model": ..., "diffusion": ...}}."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for prefix, state in (("model", model_state), ("ema", ema_state or {})):
        for k, v in state.items():
            v = v.detach().cpu().contiguous()
            if v.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage (e.g. ema is model)
                v = v.clone()
            seen.add(v.untyped_storage().data_ptr())
            tensors[f"{prefix}.{k}"] = v
    metadata = {
        "format": MODEL_FORMAT,
        "step": str(int(step)),
        "config": json.dumps({"model": model_cfg.model_dump(mode="json"),
                              "diffusion": diffusion_cfg.model_dump(mode="json")}, sort_keys=True),
    }

    def write(tmp: Path) -> None:
        save_file(tensors, tmp, metadata=metadata)
        _sort_safetensors_metadata(tmp)

    return _atomic_write(path, write)


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite the header's ``__metadata__`` with its keys sorted, in place.

    safetensors writes that map in Rust hash order, which changes from process to process: the same
    weights would give a file with other bytes (and another DVC md5) on every run. The header keeps its
    length (the same characters in another order), so only those bytes change; when re-encoding the
    header does not reproduce safetensors' own bytes exactly, the file is left as it is."""
    with path.open("rb+") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        raw = f.read(length)
        text = raw.decode("utf-8").rstrip(" ")  # safetensors pads the header with spaces to 8 bytes
        header = json.loads(text)
        if _compact_json(header) != text:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        header = {"__metadata__": header.pop("__metadata__"), **header}
        f.seek(8)
        f.write(_compact_json(header).encode("utf-8").ljust(length, b" "))


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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
                    train_cfg: TrainConfig) -> str:
    """sha256 over the training images and every setting that changes the trained weights.

    TrainConfig.BOOKKEEPING keys (log/checkpoint/eval intervals, out_dir) are left out: changing them
    must not throw away a run that can be resumed."""
    settings = {
        "model": model_cfg.model_dump(mode="json"),
        "diffusion": diffusion_cfg.model_dump(mode="json"),
        "train": train_cfg.weight_settings(),
    }
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    update_pixel_hash(h, images)  # (N, 3, R, R) uint8: shape, then bytes
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Reading (never unpickles anything but tensors and plain data)
# ----------------------------------------------------------------------------------------------
def _sniff(path: Path) -> str:
    """'safetensors', 'torch-zip' (torch.save's zip container), 'pickle' (a bare pickle, e.g. torch's
    legacy format or pickle.dump) or 'unknown', from the first bytes only."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # u64 little-endian header length, then the JSON header
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # PROTO opcode 0x80, then the protocol number
    return "unknown"


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint or model file into one dict shape:
    {"format", "step", "config": {"model", "diffusion"[, "train"]}, "model", "ema"[, optimizer, ...]}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    kind = _sniff(path)
    if kind == "safetensors":
        return _load_safetensors(path, map_location)
    if kind == "pickle":
        raise UnsafeCheckpointError(
            f"{path}: a bare pickle, not a pokediff checkpoint or model file; unpickling it could run code, "
            "so it is refused")
    if kind != "torch-zip":
        raise CheckpointError(f"{path}: not a readable checkpoint (neither safetensors nor a torch checkpoint)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only=True found an object other than tensors / plain data: a pickle we will not run.
        raise UnsafeCheckpointError(
            f"{path}: holds pickled Python objects, not a pokediff checkpoint; they could run code when "
            "loaded, so the file is refused") from None
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a bad record: the same thing to the user
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{shorten(str(exc), 200)})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pokediff checkpoint or model file")
    return obj


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict:
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > MAX_SAFETENSORS_HEADER:
        raise CheckpointError(f"{path}: safetensors header of {header_len} bytes is larger than a pokediff "
                              f"model file's ({MAX_SAFETENSORS_HEADER} bytes at most)")
    device = str(torch.device(map_location))
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            if meta.get("format") != MODEL_FORMAT:
                raise CheckpointError(f"{path}: a safetensors file, but not a pokediff model file "
                                      f"(format {shorten(meta.get('format'), 60)}, expected {MODEL_FORMAT})")
            if len(meta.get("config", "")) > MAX_METADATA_VALUE:
                raise CheckpointError(f"{path}: the config in the safetensors metadata is too large")
            config = json.loads(meta["config"])
            step = int(meta["step"])
            states: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}}
            for key in f.keys():  # noqa: SIM118 - a safe_open handle, not a dict
                which, _, name = key.partition(".")
                if which not in states or not name:
                    raise CheckpointError(f"{path}: unexpected tensor {shorten(key, 80)} in a model file")
                states[which][name] = f.get_tensor(key)
    except (SafetensorError, ValueError, KeyError, TypeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable model file ({type(exc).__name__}: "
                              f"{shorten(str(exc), 200)})") from None
    if not isinstance(config, dict) or not {"model", "diffusion"} <= set(config):
        raise CheckpointError(f"{path}: the model file's config lacks the model/diffusion sections")
    return {"format": MODEL_FORMAT, "step": step, "config": config, "model": states["model"],
            "ema": states["ema"] or None}


def load_model(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild the exact network from a checkpoint or model file, with no other file needed.

    Returns (model in eval mode, ModelConfig, DiffusionConfig, step)."""
    obj = load_file(path)
    try:
        model_cfg = ModelConfig.model_validate(obj["config"]["model"])
        diffusion_cfg = DiffusionConfig.model_validate(obj["config"]["diffusion"])
        state = obj["ema"] if use_ema and obj.get("ema") is not None else obj["model"]
        # The config is data from the file: check it against the tensors the file holds on the meta
        # device (no memory), so a config describing a huge network cannot make us allocate one.
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in UNet(model_cfg).state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state.items()}
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:  # pydantic: ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: its config does not make a pokediff U-Net ({shorten(first, 200)})") from None
    if want != have:
        wrong = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
        raise CheckpointError(
            f"{path}: its weights do not fit its config ({len(want.keys() - have.keys())} tensors missing, "
            f"{len(have.keys() - want.keys())} unexpected, {len(wrong)} of another shape"
            + (f", e.g. {shorten(wrong[0], 80)}: {have[wrong[0]]} vs {want[wrong[0]]}" if wrong else "") + ")")
    model = UNet(model_cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), model_cfg, diffusion_cfg, int(obj["step"])


# ----------------------------------------------------------------------------------------------
# The full training state: what `train(resume=True)` continues from
# ----------------------------------------------------------------------------------------------
class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


@dataclass
class TrainingState:
    """The live objects of a training run whose states a training checkpoint holds.

    Restoring them all (weights, EMA, AdamW moments, LR schedule position, the batch generator and
    torch's global RNG used by dropout) makes a resumed run replay the uninterrupted one exactly."""

    model: nn.Module  # the raw module (not the DDP / compiled wrapper): its state dict is the weights
    ema: Stateful | None  # training.ema.EMA on the main rank, None on the others
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # draws every batch: indices, flips, timesteps, noise
    model_cfg: ModelConfig
    diffusion_cfg: DiffusionConfig
    train_cfg: TrainConfig
    fingerprint: str | None = None  # see run_fingerprint: what auto-resume compares

    def save(self, path: Path, step: int) -> Path:
        """Write the checkpoint (atomically) and its sidecar; the EMA must be present (main rank)."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng": _rng_state(self.generator),
            "config": {
                "model": self.model_cfg.model_dump(mode="json"),
                "diffusion": self.diffusion_cfg.model_dump(mode="json"),
                "train": self.train_cfg.model_dump(mode="json"),
            },
            "torch_version": str(torch.__version__),  # a plain str: weights_only=True refuses TorchVersion
            "fingerprint": self.fingerprint,
        }
        atomic_torch_save(payload, path)
        # A small sidecar, so deciding whether to resume does not mean loading a large checkpoint.
        write_sidecar(path, {"step": step, "fingerprint": self.fingerprint})
        return path

    def restore(self, path: Path) -> int:
        """Load every state from the checkpoint at ``path``; returns its step. CheckpointError when it
        is not a training checkpoint or was made with another model/diffusion config."""
        ckpt = load_file(path, map_location=self.generator.device)
        _check_resumable(ckpt, self.model_cfg, self.diffusion_cfg, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        _set_rng_state(ckpt["rng"], self.generator)
        return int(ckpt["step"])


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if generator.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(generator.device)
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if generator.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], generator.device)


def _check_resumable(ckpt: dict, model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig, path: Path) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: a model file, not a training checkpoint; cannot resume from it")
    saved = {"model": ckpt["config"]["model"], "diffusion": ckpt["config"]["diffusion"]}
    wanted = {"model": model_cfg.model_dump(mode="json"), "diffusion": diffusion_cfg.model_dump(mode="json")}
    diffs = [
        f"{section}.{key}: checkpoint {saved[section].get(key)!r} vs params {value!r}"
        for section, values in wanted.items()
        for key, value in values.items()
        if saved[section].get(key) != value
    ]
    if diffs:
        raise CheckpointError(  # one line: the CLI prints it as the error
            f"{path}: cannot resume, the model/diffusion config differs from the checkpoint's: "
            + "; ".join(diffs)
            + ". Start a fresh run (without --resume) or restore the original params."
        )
