"""One training step, shared by the training loop and the throughput benchmark.

    batch = draw_batch(images, generator, B, T)     # global batch, identical on every rank
    loss  = step.loss(batch)                        # forward under autocast, fp32 MSE
    step.update(loss, k)                            # backward, clip, fused AdamW, LR, EMA

Kept apart from the loop so the benchmark times exactly what training runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pokediff.config import DiffusionConfig, TrainConfig
from pokediff.devices import autocast_for
from pokediff.diffusion import NoiseSchedule, diffusion_loss, min_snr_weight, q_sample, training_target
from pokediff.pixels import from_uint8
from pokediff.training import distributed as ddp
from pokediff.training.ema import EMA
from pokediff.training.lr import warmup_cosine


@dataclass
class Batch:
    x0: torch.Tensor  # (b, C, R, R) float in [-1, 1]
    t: torch.Tensor  # (b,) long
    noise: torch.Tensor  # (b, C, R, R)


def draw_batch(images: torch.Tensor, generator: torch.Generator, batch_size: int, timesteps: int,
               hflip: bool, info: ddp.DistInfo = ddp.SINGLE_PROCESS) -> Batch:
    """Draw a global batch from a uint8 (N, C, R, R) dataset on the generator's device; keep this rank's
    shard. Every rank makes the same draws, so sharding reproduces single-process training exactly."""
    device = images.device
    B = batch_size
    idx = torch.randint(images.shape[0], (B,), generator=generator, device=device)
    flip = torch.rand(B, generator=generator, device=device) < 0.5
    t = torch.randint(timesteps, (B,), generator=generator, device=device)
    noise = torch.randn((B, *images.shape[1:]), generator=generator, device=device)
    idx, flip, t, noise = (ddp.shard(v, info) for v in (idx, flip, t, noise))
    x0 = from_uint8(images[idx])  # (b, C, R, R) uint8 -> [-1, 1]
    if hflip:
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
    return Batch(x0, t, noise)


class TrainStep:
    """Owns the optimizer, LR schedule and EMA of a model; applies one step at a time.

    model:  the raw nn.Module (its state dict is what checkpoints hold).
    ema:    None on non-main ranks (EMA and checkpoints live on rank 0 only)."""

    def __init__(self, model: nn.Module, diffusion_cfg: DiffusionConfig, train_cfg: TrainConfig,
                 device: torch.device, info: ddp.DistInfo = ddp.SINGLE_PROCESS, with_ema: bool = True):
        self.raw_model = model
        self.diffusion_cfg, self.train_cfg, self.device = diffusion_cfg, train_cfg, device
        self.sched = NoiseSchedule(diffusion_cfg.schedule, diffusion_cfg.timesteps)
        self.ema = EMA(model, train_cfg.ema_decay, train_cfg.ema_warmup) if with_ema else None
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=train_cfg.lr, betas=train_cfg.betas, weight_decay=train_cfg.weight_decay,
            fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: warmup_cosine(s, train_cfg.steps, train_cfg.effective_warmup_steps, train_cfg.min_lr_ratio),
        )
        wrapped: nn.Module = model
        if info.enabled:
            wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = torch.compile(wrapped) if train_cfg.compile else wrapped
        self.grad_norm = torch.zeros((), device=device)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Forward pass and the (optionally min-SNR weighted) MSE; a float32 scalar."""
        cfg = self.diffusion_cfg
        x_t = q_sample(self.sched, batch.x0, batch.t, batch.noise)
        target = training_target(self.sched, cfg.prediction, batch.x0, batch.t, batch.noise)
        if self.train_cfg.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        weights = None
        if cfg.loss_weighting == "min_snr":
            weights = min_snr_weight(self.sched, batch.t, cfg.prediction, cfg.min_snr_gamma)
        with autocast_for(self.device, self.train_cfg.precision):
            output = self.model(x_t, batch.t)
        return diffusion_loss(output, target, weights)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Backward, clip, AdamW, LR schedule, EMA. ``step`` is the 0-based index of this update."""
        loss.backward()
        if self.train_cfg.grad_clip > 0:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.train_cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.raw_model, step)
