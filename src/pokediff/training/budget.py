"""A wall-clock budget for one training call (train.max_seconds).

    budget = WallClockBudget(train_cfg.max_seconds, info, device)   # just before the first step
    ...after each optimizer step k (1-based):  if budget.exhausted(k, log_every): save and stop

What a budget is and is not:
- It bounds the wall-clock time of the training loop of one `pokediff train` call, from its first step
  (the first, compiling, step and in-training evaluations count; loading the data and building the
  model before it do not): the loop stops after the first step that ends past ``max_seconds``; the
  final checkpoint and model file are then written as after train.steps, so the overrun is one step
  (plus an evaluation if that step has one) plus the save.
- It does not reshape the run. The LR schedule stays the cosine over train.steps: a budget-stopped run
  at step k holds exactly the weights of an unbudgeted run at step k, resuming it continues that same
  run, and the budget stays out of the checkpoint fingerprint (TrainConfig.BOOKKEEPING). Fitting the
  schedule to the budget instead would make the weights depend on the machine's speed. To end a budget
  run on a decayed LR, pick train.steps to match the steps the budget reaches (train_metrics.json's
  images_per_second / batch_size x max_seconds).
- Resume gets a new budget: `pokediff train --resume -S train.max_seconds=300` trains another 300 s, or
  up to train.steps, whichever comes first.

With several processes (torchrun) the ranks must stop after the same step, or the next all-reduce would
hang: they decide together, at every ``log_every``-th step (where the loop syncs anyway), so the overrun
grows by at most log_every - 1 steps. A single process checks after every step (a host clock read,
no device sync).
"""

from __future__ import annotations

import time

import torch

from pokediff.training import distributed as ddp


class WallClockBudget:
    def __init__(self, max_seconds: float, info: ddp.DistInfo, device: torch.device):
        self.max_seconds = float(max_seconds)
        self.info, self.device = info, device
        self.start = time.perf_counter()

    @property
    def enabled(self) -> bool:
        return self.max_seconds > 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exhausted(self, step: int, log_every: int) -> bool:
        """Whether to stop after optimizer step ``step`` (1-based); the same answer on every rank."""
        if not self.enabled:
            return False
        if not self.info.enabled:
            return self.elapsed() >= self.max_seconds
        if step % log_every:
            return False
        return ddp.any_across_ranks(self.elapsed() >= self.max_seconds, self.info, self.device)
