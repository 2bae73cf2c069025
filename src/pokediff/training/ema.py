"""Exponential moving average of the weights, used for sampling.

    ema <- decay * ema + (1 - decay) * theta,    decay_k = min(decay, (1 + k) / (10 + k)) with warm-up

The warm-up lets early EMA weights follow the fast-changing network instead of averaging in the
random initialisation for thousands of steps. The update is one fused ``_foreach_lerp_`` call.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._ema_params = [p for p in self.model.parameters()]
        self._ema_buffers = [b for b in self.model.buffers()]

    def decay_at(self, step: int) -> float:
        """Decay used for the update made after optimizer step ``step`` (0-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(self._ema_params, params, 1.0 - self.decay_at(step))
        for ema_buf, buf in zip(self._ema_buffers, model.buffers()):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
