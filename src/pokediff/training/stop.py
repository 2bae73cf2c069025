"""Stopping a training call on a stop signal, after a whole step, with its state saved.

A stop signal (pokediff.stopping: SIGTERM from Prefect, DVC, systemd or Kubernetes; Ctrl-C) is only
recorded while the loop runs; ``StopPoll`` tells the loop after which step to stop. The loop then logs
that step, writes the checkpoint (not the model file: a stopped run's model.safetensors would look like
a finished one) and raises ``TrainingStopped``. ``pokediff train --resume`` continues from that step
and reproduces the uninterrupted run, since the checkpoint holds every RNG state.

With several processes (torchrun) every rank must stop after the same step, or the next all-reduce
would wait forever for a rank that left: they decide together every ``log_every`` steps (where the
loop syncs anyway) on the largest signal number any rank received, so a signal to one rank stops them
all, and so does one to the launcher (which forwards it to every rank). A single process asks after
every step: a Python flag, no device sync.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pokediff import stopping
from pokediff.stopping import Stopped
from pokediff.training import distributed as ddp


class TrainingStopped(Stopped):
    """A stop signal ended training after optimizer step ``step`` of ``steps``; ``checkpoint`` holds
    that step (None on ranks other than 0, which write nothing)."""

    def __init__(self, signum: int, step: int, steps: int, checkpoint: Path | None, message: str | None = None):
        self.step, self.steps, self.checkpoint = step, steps, checkpoint
        if message is None:
            where = f"; {checkpoint} holds it" if checkpoint is not None else ""
            message = f"stopped by {stopping.signal_name(signum)} after step {step} of {steps}{where}"
        super().__init__(signum, message)

    def explained(self, message: str) -> TrainingStopped:
        return TrainingStopped(self.signum, self.step, self.steps, self.checkpoint, message)


class StopPoll:
    """``poll(step)`` after optimizer step ``step`` (1-based): the stop signal's number when the loop
    must stop after this step, else None; the same answer on every rank."""

    def __init__(self, info: ddp.DistInfo, device: torch.device, every: int):
        self.info, self.device, self.every = info, device, every

    def __call__(self, step: int) -> int | None:
        local = stopping.pending() or 0
        if not self.info.enabled:
            return local or None
        if step % self.every:
            return None
        return ddp.max_across_ranks(local, self.info, self.device) or None
