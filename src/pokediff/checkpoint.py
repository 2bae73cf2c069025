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

Any other pickle is refused without being unpickled. Atomic write (pokediff.files): save to a
temporary file in the same directory, fsync, then os.replace; a crash mid-write leaves the previous
file intact and a reader never sees a half-written checkpoint. Nothing holding NaN or inf (weights,
EMA, optimizer moments) is written (``check_finite``): a checkpoint on disk is always a good state.

Reading allocates only what the file's own config needs, checked before any tensor is read: the config
is range-checked like params (config.ModelConfig bounds every key), the U-Net it describes is built on
the "meta" device (shapes only) and its parameter count bounded (MAX_MODEL_PARAMETERS); a model file's
tensor shapes (from the safetensors header) must be exactly those; a checkpoint (a zip written by
torch.save) must hold only stored, uncompressed entries (a deflated entry inflates to whatever its
header declares: 4 MB of file became 4.8 GB), a pickle of at most MAX_CHECKPOINT_PICKLE_BYTES (read
first with every tensor on the meta device) and at most the tensor bytes its config accounts for.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig, format_errors
from pokediff.errors import PokediffError, shorten
from pokediff.files import atomic_write, write_atomic
from pokediff.limits import read_json_text, read_small_json, zip_directory_size
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
# A U-Net larger than this is not one pokediff trains (the GPU recipe has 64.6 M parameters).
MAX_MODEL_PARAMETERS = 2_000_000_000
# torch.save's zip: our checkpoints hold ~1,500 entries and a pickle of a few hundred KB.
MAX_CHECKPOINT_DIRECTORY_BYTES = 4 << 20
MAX_CHECKPOINT_PICKLE_BYTES = 64 << 20
# A checkpoint's tensors: model, EMA and AdamW's two moments (float32 per parameter), plus the RNG
# states, step counters and the LR scheduler's few numbers.
CHECKPOINT_TENSOR_COPIES = 4
CHECKPOINT_EXTRA_BYTES = 16 << 20
MAX_SIDECAR_BYTES = 1 << 20


class CheckpointError(PokediffError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the requested run."""


class NonFiniteStateError(CheckpointError):
    """Weights, EMA or optimizer moments hold NaN or inf: such a state is never written as a checkpoint,
    nor resumed from."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle holding Python objects (not pokediff's format), refused without being unpickled."""


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save(obj) atomically. ``obj`` must hold only what weights_only=True reads back."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write, durable=True)


def check_finite(state: Any, path: str | Path, doing: str = "not written") -> None:
    """NonFiniteStateError unless every floating-point tensor in ``state`` (nested dicts and lists of
    tensors, e.g. {"model": ..., "ema": ..., "optimizer": ...}) is finite. One host sync for all of them.
    ``doing`` words the message: "<path>: <doing>: N non-finite value(s) ..."."""
    tensors: list[tuple[str, torch.Tensor]] = []

    def collect(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() or value.is_complex():
                tensors.append((where, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                collect(item, f"{where}[{i}]")

    collect(state, "")
    if not tensors:
        return
    with torch.no_grad():
        bad = torch.stack([(~torch.isfinite(t.detach())).sum() for _, t in tensors]).cpu()  # one sync
    if int(bad.sum()):
        first = next(where for (where, _), n in zip(tensors, bad.tolist()) if n)
        raise NonFiniteStateError(f"{path}: {doing}: {int(bad.sum())} non-finite value(s) (NaN or inf), the first "
                                  f"in {first}")


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

    check_finite({"model": model_state, "ema": ema_state or {}}, path)
    return atomic_write(path, write, durable=True)


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
    write_atomic(checkpoint.with_suffix(".json"), json.dumps(info) + "\n")


def read_sidecar(checkpoint: Path) -> dict:
    """checkpoints/last.json, or {} when it is missing or not what `write_sidecar` writes."""
    try:
        info = read_small_json(checkpoint.with_suffix(".json"), MAX_SIDECAR_BYTES)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


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
    {"format", "step", "config": {"model", "diffusion"[, "train"]}, "model", "ema"[, optimizer, ...]}.

    What the file declares is checked before its tensors are read (see the module docstring)."""
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
    _check_torch_zip(path)
    return _torch_load(path, map_location)


def _torch_load(path: Path, map_location: str | torch.device) -> dict:
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


def _check_torch_zip(path: Path) -> None:
    """Refuse a torch.save zip whose entries, pickle or tensor bytes exceed what its config needs,
    before any tensor is read (the pickle is read with every tensor on the meta device)."""
    try:
        with path.open("rb") as handle:
            _, directory_bytes = zip_directory_size(handle)
        if directory_bytes > MAX_CHECKPOINT_DIRECTORY_BYTES:
            raise CheckpointError(f"{path}: a zip directory of {directory_bytes:,} bytes, larger than a pokediff "
                                  f"checkpoint's ({MAX_CHECKPOINT_DIRECTORY_BYTES:,} at most)")
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{shorten(str(exc), 200)})") from None
    compressed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise CheckpointError(f"{path}: holds compressed entries (e.g. {shorten(compressed[0], 80)}); torch.save "
                              "writes none, and one inflates to whatever size it declares")
    pickles = [e for e in entries if e.filename.endswith("data.pkl")]
    if any(e.file_size > MAX_CHECKPOINT_PICKLE_BYTES for e in pickles):
        raise CheckpointError(f"{path}: a pickle of more than {MAX_CHECKPOINT_PICKLE_BYTES:,} bytes, larger than "
                              "a pokediff checkpoint's")
    outline = _torch_load(path, "meta")  # every tensor on the meta device: only the pickle is read
    parameters = 0  # a checkpoint without a config holds no model: only the small extras
    if outline.get("config") is not None:
        parameters = _parameter_count(file_configs(outline["config"], path)[0], path)
    tensor_bytes = sum(e.file_size for e in entries if "/data/" in e.filename)
    limit = CHECKPOINT_TENSOR_COPIES * 4 * parameters + CHECKPOINT_EXTRA_BYTES
    if tensor_bytes > limit:
        raise CheckpointError(
            f"{path}: holds {tensor_bytes:,} bytes of tensors, more than its config's U-Net of {parameters:,} "
            f"parameters needs ({limit:,} at most: model, EMA, two optimizer moments); not loaded")


def file_configs(config: Any, path: Path) -> tuple[ModelConfig, DiffusionConfig]:
    """The model and diffusion configs a file holds, range-checked like params; CheckpointError
    (one line naming the file and the key) when they are missing or out of range."""
    if not isinstance(config, dict) or not {"model", "diffusion"} <= set(config):
        raise CheckpointError(f"{path}: the file's config lacks the model/diffusion sections")
    configs = []
    for section, kind in (("model", ModelConfig), ("diffusion", DiffusionConfig)):
        try:
            configs.append(kind.model_validate(config[section]))
        except ValidationError as exc:
            raise CheckpointError(f"{format_errors(exc, f'{path}: its {section} config')}; "
                                  "its config does not make a pokediff U-Net") from None
    return configs[0], configs[1]


def _expected_shapes(model_cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of UNet(model_cfg) and its shape, built on the meta device (no memory;
    the config's bounds keep the build itself small)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in UNet(model_cfg).state_dict().items()}


def _parameter_count(model_cfg: ModelConfig, path: Path) -> int:
    count = sum(math.prod(shape) for shape in _expected_shapes(model_cfg).values())
    if count > MAX_MODEL_PARAMETERS:
        raise CheckpointError(f"{path}: its config describes a U-Net of {count:,} parameters, more than "
                              f"{MAX_MODEL_PARAMETERS:,}; not loaded")
    return count


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
            try:
                config = read_json_text(meta.get("config", ""), f"{path}: the config in its metadata")
            except ValueError as exc:
                raise CheckpointError(str(exc)) from None
            step = int(meta["step"])
            model_cfg, _ = file_configs(config, path)
            _parameter_count(model_cfg, path)
            wanted = _expected_shapes(model_cfg)
            declared: dict[str, dict[str, tuple[int, ...]]] = {"model": {}, "ema": {}}
            for key in f.keys():  # noqa: SIM118 - a safe_open handle, not a dict
                which, _, name = key.partition(".")
                if which not in declared or not name:
                    raise CheckpointError(f"{path}: unexpected tensor {shorten(key, 80)} in a model file")
                declared[which][name] = tuple(f.get_slice(key).get_shape())  # from the header: nothing read
            for which in ("model", "ema"):
                if declared[which] or which == "model":
                    _check_shapes(declared[which], wanted, path)
            states = {which: {name: f.get_tensor(f"{which}.{name}") for name in names}
                      for which, names in declared.items()}
    except (SafetensorError, ValueError, KeyError, TypeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable model file ({type(exc).__name__}: "
                              f"{shorten(str(exc), 200)})") from None
    return {"format": MODEL_FORMAT, "step": step, "config": config, "model": states["model"],
            "ema": states["ema"] or None}


def _check_shapes(have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]], path: Path) -> None:
    if want != have:
        wrong = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
        raise CheckpointError(
            f"{path}: its weights do not fit its config ({len(want.keys() - have.keys())} tensors missing, "
            f"{len(have.keys() - want.keys())} unexpected, {len(wrong)} of another shape"
            + (f", e.g. {shorten(wrong[0], 80)}: {have[wrong[0]]} vs {want[wrong[0]]}" if wrong else "") + ")")


def load_model(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild the exact network from a checkpoint or model file, with no other file needed.

    Returns (model in eval mode, ModelConfig, DiffusionConfig, step)."""
    path = Path(path)
    obj = load_file(path)
    model_cfg, diffusion_cfg = file_configs(obj.get("config"), path)
    state = obj["ema"] if use_ema and obj.get("ema") is not None else obj["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its weights are not a state dict")
    _check_shapes({k: tuple(v.shape) for k, v in state.items()}, _expected_shapes(model_cfg), path)
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
        check_finite({k: payload[k] for k in ("model", "ema", "optimizer")}, path)
        atomic_torch_save(payload, path)
        # A small sidecar, so deciding whether to resume does not mean loading a large checkpoint.
        write_sidecar(path, {"step": step, "fingerprint": self.fingerprint})
        return path

    def restore(self, path: Path) -> int:
        """Load every state from the checkpoint at ``path``; returns its step. CheckpointError when it
        is not a training checkpoint or was made with another model/diffusion config."""
        ckpt = load_file(path, map_location=self.generator.device)
        _check_resumable(ckpt, self.model_cfg, self.diffusion_cfg, path)
        check_finite({k: ckpt.get(k) for k in ("model", "ema", "optimizer")}, path,
                     "not a good state to resume from (start without --resume)")
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
