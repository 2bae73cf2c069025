"""Device choice and mixed precision, shared by training, sampling and scoring."""

from __future__ import annotations

import contextlib

import torch

from pokediff.choices import PRECISIONS
from pokediff.errors import UsageError, shorten


class DeviceError(UsageError, ValueError):
    """A device name that is not a torch device, or CUDA asked for on a machine without it: one line
    naming the option, exit 2, before any work (the one check every command uses)."""


def resolve_device(device: str | torch.device | None = "auto", option: str = "device") -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else CPU; anything else is passed to ``torch.device``
    and checked, so a typo or a missing GPU is a DeviceError before any work. ``option`` names where the
    value came from in the message (``--device``, ``score.device``)."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"{option} {shorten(device, 60)}: not a device; expected auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{option} {shorten(device, 60)}: CUDA is not available on this machine; use cpu or auto")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(f"{option} {shorten(device, 60)}: this machine has {torch.cuda.device_count()} CUDA "
                          "device(s), numbered from 0")
    return resolved


def autocast_for(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The mixed-precision context for a network call on ``device``.

    "bf16": bf16 autocast on any device (on CPU too, which is how the tests run the GPU path);
    "auto": bf16 autocast on CUDA, plain fp32 elsewhere; "fp32": plain fp32. Under autocast the convolutions,
    linears and attention run in bf16 while the weights, normalisation and the loss stay float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
