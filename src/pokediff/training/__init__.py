"""Training: the loop, EMA, LR schedule, checkpoints (atomic, exactly resumable), DDP."""

from pokediff.devices import resolve_device
from pokediff.training.checkpoint import (
    MODEL_FILE_NAME,
    CheckpointError,
    UnsafeCheckpointError,
    atomic_torch_save,
    load_file,
    load_model,
    read_sidecar,
    run_fingerprint,
    save_model_file,
)
from pokediff.training.ema import EMA
from pokediff.training.loop import NonFiniteLossError, TrainResult, train
from pokediff.training.lr import warmup_cosine

__all__ = [
    "train", "TrainResult", "NonFiniteLossError", "resolve_device",
    "EMA", "warmup_cosine",
    "CheckpointError", "UnsafeCheckpointError", "MODEL_FILE_NAME", "atomic_torch_save", "load_file", "load_model",
    "read_sidecar", "run_fingerprint", "save_model_file",
]
