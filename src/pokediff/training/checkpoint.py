"""Checkpoints and model files: written atomically, holding only tensors and plain data.

Two kinds of file:
    training checkpoint  (checkpoints/last.pt): model, EMA, optimizer, LR scheduler, step, every RNG
                         state (as uint8 tensors) and the configs (as dicts). ``torch.save`` of tensors,
                         dicts, lists and numbers only, read back with ``torch.load(weights_only=True)``:
                         its restricted unpickler builds no other object, so the file cannot run code.
                         ``train(resume=True)`` continues from it.
    model file           (model.safetensors): EMA and raw weights as safetensors (a JSON header + raw
                         bytes; no pickle at all), with the format tag, step and the model + diffusion
                         configs as JSON in the header's metadata. What sampling and the MLflow registry
                         use; one self-contained file, so weights and config cannot drift apart.

Files of the first format (``pokediff-*-v1``, whole pickles read with ``weights_only=False``) and any
other pickle are refused, without unpickling them, with a message naming the explicit conversion
``pokediff convert-checkpoint --trust OLD NEW`` (the only place that unpickles; see ``convert_legacy``).

Atomic write: save to a temporary file in the same directory, fsync, then os.replace. A crash
mid-write leaves the previous file intact; a reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig
from pokediff.errors import PokediffError, UsageError, shorten

CHECKPOINT_FORMAT = "pokediff-checkpoint-v2"
MODEL_FORMAT = "pokediff-model-v2"
LEGACY_FORMATS = ("pokediff-checkpoint-v1", "pokediff-model-v1")
MODEL_FILE_NAME = "model.safetensors"

# Our safetensors headers hold a few hundred tensor entries and the configs (~100 KB for the GPU
# recipe); a header claiming more than this is not one of ours and is not parsed.
MAX_SAFETENSORS_HEADER = 16 * 2**20
MAX_METADATA_VALUE = 2**20


class CheckpointError(PokediffError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the requested run."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint (old format, or not pokediff's) that is refused without being unpickled."""


def convert_hint(path: str | Path) -> str:
    return (f"if you made it or trust its source, convert it once with "
            f"`pokediff convert-checkpoint --trust {path} NEW`")


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
    from safetensors.torch import save_file

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
    return _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


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
    from pokediff.pixels import update_pixel_hash

    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    update_pixel_hash(h, images)  # (N, 3, R, R) uint8: shape, then bytes (values of existing runs unchanged)
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
            f"{path}: a bare pickle (old pokediff format or not pokediff's); it could run code when loaded, "
            f"so it is refused; {convert_hint(path)}")
    if kind != "torch-zip":
        raise CheckpointError(f"{path}: not a readable checkpoint (neither safetensors nor a torch checkpoint)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only=True found an object other than tensors / plain data: a pickle we will not run.
        raise UnsafeCheckpointError(
            f"{path}: holds pickled Python objects (old pokediff format or not pokediff's); they could run "
            f"code when loaded, so the file is refused; {convert_hint(path)}") from None
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a bad record: the same thing to the user
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{shorten(str(exc), 200)})") from None
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt in LEGACY_FORMATS:
        raise UnsafeCheckpointError(f"{path}: old checkpoint format {fmt}; {convert_hint(path)}")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pokediff checkpoint or model file")
    return obj


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict:
    from safetensors import SafetensorError, safe_open

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
    from pokediff.models import UNet  # local: keeps this module importable without building models

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
# Converting old (pickled) files: the one place that unpickles, and only with --trust
# ----------------------------------------------------------------------------------------------
def _plain(value: Any, where: str) -> Any:
    """Copy of a v1 payload made of what weights_only=True accepts: tensors, dicts, lists, tuples, str,
    numbers, bools, None (numpy arrays become tensors, torch's version string a str)."""
    import numpy as np

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)  # also TorchVersion (a str subclass) -> str
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {(_plain(k, where) if not isinstance(k, str) else str(k)): _plain(v, f"{where}.{k}")
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(f"cannot convert: {where} holds a {shorten(type(value).__qualname__, 60)}, "
                          "not tensors or plain data")


def convert_legacy(old: str | Path, new: str | Path, *, trust: bool) -> dict:
    """Convert a v1 (pickled) checkpoint or model file into the safe formats.

    NEW ending in .safetensors: a model file (from either kind). Otherwise a v2 training checkpoint
    (needs a training checkpoint). Unpickling OLD runs whatever code it holds: ``trust`` must be True,
    which the CLI sets only for ``--trust``. Returns {"format", "step", "path"}."""
    old, new = Path(old), Path(new)
    if not trust:
        raise UsageError(f"{old}: converting unpickles the file, which runs any code it holds; "
                         "add --trust if you made it or trust its source")
    if not old.is_file():
        raise CheckpointError(f"{old}: no such checkpoint file")
    if new.exists():
        raise UsageError(f"{new}: already exists; give a new path (nothing is overwritten)")
    try:
        obj = torch.load(old, map_location="cpu", weights_only=False)  # the explicit, trusted opt-in
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{old}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{shorten(str(exc), 200)})") from None
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt not in (*LEGACY_FORMATS, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{old}: not a pokediff checkpoint or model file (format {shorten(fmt, 60)})")
    if new.suffix == ".safetensors":
        model_cfg = ModelConfig.model_validate(obj["config"]["model"])
        diffusion_cfg = DiffusionConfig.model_validate(obj["config"]["diffusion"])
        save_model_file(new, obj["model"], obj.get("ema"), model_cfg, diffusion_cfg, int(obj["step"]))
        load_file(new)  # proves the result reads back safely
        return {"format": MODEL_FORMAT, "step": int(obj["step"]), "path": new}
    if fmt == "pokediff-model-v1":
        raise UsageError(f"{old}: a model file converts to a .safetensors file, not {new.name}")
    payload = _plain(obj, "checkpoint")
    payload["format"] = CHECKPOINT_FORMAT
    atomic_torch_save(payload, new)
    try:
        load_file(new)
    except CheckpointError:
        new.unlink(missing_ok=True)  # ours, just written: do not leave a file that cannot be resumed from
        raise
    return {"format": CHECKPOINT_FORMAT, "step": int(payload["step"]), "path": new}

