"""The training loop: MSE on the network's prediction at random timesteps (DDPM Algorithm 1).

One step, for a global batch of B images (uint8 (N, 3, R, R) dataset held on the training device):

    x0    = images[idx] / 127.5 - 1, randomly flipped       (B, 3, R, R) in [-1, 1]
    t     ~ U{0, ..., T-1}                                  (B,)
    noise ~ N(0, I)                                         (B, 3, R, R)
    x_t   = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise        q(x_t | x0)
    loss  = mean_b  w_b * || model(x_t, t) - target ||^2    target: eps, v or x0

then gradient clipping, AdamW with warm-up + cosine LR, and an EMA update (training/step.py).

Reproducibility and resume: every random draw comes from one seeded generator on the device (and
dropout from torch's global RNG); both states go into each checkpoint (pokediff.checkpoint
.TrainingState), so a resumed run replays the uninterrupted run's batches exactly. Host syncs happen
only every ``log_every`` steps.

Progress is one plain line per logged step at most every ``progress_seconds`` (and at the last step):
the same in a terminal, a DVC or Prefect log and CI, where a redrawn bar would leave thousands of
carriage-return fragments.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pokediff import stopping
from pokediff.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE_NAME,
    NonFiniteStateError,
    TrainingState,
    save_model_file,
)
from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig
from pokediff.devices import resolve_device
from pokediff.errors import PokediffError
from pokediff.models import UNet
from pokediff.pokemon_types import NUM_TYPES
from pokediff.training import distributed as ddp
from pokediff.training.budget import WallClockBudget
from pokediff.training.step import TrainStep, draw_batch
from pokediff.training.stop import StopPoll, TrainingStopped

LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "images_per_second"]

# on_log(step, {"loss": ..., "lr": ..., "grad_norm": ..., "images_per_second": ...})
LogCallback = Callable[[int, dict[str, float]], None]
# evaluate(ema_model, step) -> metrics (e.g. FID on a few samples); runs on the main rank only
EvalCallback = Callable[[nn.Module, int], dict[str, float]]


class NonFiniteLossError(PokediffError, RuntimeError):
    """Training met NaN or inf: in the loss at ``step`` (what="loss") or in the state about to be saved
    at ``step`` (what="weights"). ``checkpoint`` is the last good state of this run (None: there is none);
    no non-finite state is ever written (pokediff.checkpoint.check_finite)."""

    def __init__(self, step: int, checkpoint: Path | None, good_step: int | None = None, what: str = "loss"):
        self.step, self.checkpoint, self.good_step = step, checkpoint, good_step
        found = (f"the loss became non-finite (NaN or inf) at step {step}" if what == "loss" else
                 f"the weights or optimizer state became non-finite (NaN or inf) by step {step}")
        where = (f"; the last good state (step {good_step}) is in {checkpoint}" if checkpoint is not None else
                 "; no good state of this run was saved (nothing non-finite is written)")
        super().__init__(
            f"training stopped: {found}{where}. Lower train.lr, enable train.grad_clip, or use train.precision=fp32."
        )


@dataclass
class TrainResult:
    step: int  # optimizer steps completed
    checkpoint: Path  # training checkpoint (resumable)
    model_file: Path  # model.safetensors: EMA (and raw) weights + configs, for sampling
    log_file: Path
    losses: list[float] = field(default_factory=list)  # per step, every step of this run (1-based order)
    images_per_second: float = float("nan")
    resumed_from: int = 0
    seconds: float = 0.0
    stopped_by_budget: bool = False  # train.max_seconds ended this call before train.steps


def train(
    images: torch.Tensor,
    model_cfg: ModelConfig,
    diffusion_cfg: DiffusionConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    on_log: LogCallback | None = None,
    evaluate: EvalCallback | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    fingerprint: str | None = None,
    progress_seconds: float = 30.0,
    labels: torch.Tensor | None = None,
) -> TrainResult:
    """Train a U-Net on ``images`` (uint8 (N, 3, R, R)) and write checkpoints under ``out_dir``.

    labels:      the images' multi-hot types (N, NUM_TYPES) uint8: required by a type-conditional model
                 (model_cfg.condition), refused by an unconditional one.
    resume:      continue from out_dir/checkpoints/last.pt if it exists (else start fresh).
    fingerprint: an identifier of (data, configs) stored with each checkpoint; see run_fingerprint.
    stop_after:  stop after this many optimizer steps of *this* call, as if killed (tests, time limits);
                 no final checkpoint is written, so resume starts from the last periodic one.
    A stop signal (pokediff.stopping, training/stop.py) ends the loop after the current step: the
    checkpoint is written (not the model file) and TrainingStopped is raised. No state holding NaN or
    inf is ever written: NonFiniteLossError names the last good checkpoint instead.
    progress:    print a progress line (step/total, loss, images/s, ETA) at a logged step every
                 ``progress_seconds`` and at the last step.
    train_cfg.max_seconds (> 0) ends the loop after the step that crosses that wall-clock budget and saves
    as at train.steps; the result says so (stopped_by_budget). See pokediff.training.budget.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    ckpt_path, model_path = out_dir / CHECKPOINT_FILE, out_dir / MODEL_FILE_NAME
    _validate_images(images, model_cfg)
    _validate_labels(labels, images, model_cfg)
    device, info = _join_processes(resolve_device(device), train_cfg.batch_size)

    # ---- state: model, optimizer, LR schedule, EMA (main rank), batch generator; restored on resume
    torch.manual_seed(train_cfg.seed)
    model = UNet(model_cfg).to(device)
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator(device=device).manual_seed(train_cfg.seed)
    trainer = TrainStep(model, diffusion_cfg, train_cfg, device, info, with_ema=info.is_main)
    state = TrainingState(model, trainer.ema, trainer.optimizer, trainer.scheduler, generator,
                          model_cfg, diffusion_cfg, train_cfg, fingerprint)
    start_step = state.restore(ckpt_path) if resume and ckpt_path.exists() else 0
    _seed_dropout_per_rank(train_cfg.seed, start_step, info)
    data = images.to(device)  # the whole (small) dataset lives on the device: no loader, no host copies
    data_labels = labels.to(device) if labels is not None else None
    end_step = train_cfg.steps if stop_after is None else min(train_cfg.steps, start_step + stop_after)
    log = _TrainLog(out_dir / "train_log.csv", start_step, train_cfg.steps, info, on_log,
                    progress_seconds if progress else None)
    saved = _Checkpoints(state, ckpt_path, info, start_step)
    stop_poll = StopPoll(info, device, train_cfg.log_every)

    budget = WallClockBudget(train_cfg.max_seconds, info, device)  # train.max_seconds; 0 = never exhausted

    # ---- the loop: one optimizer step per iteration, until train.steps (or stop_after) or the budget;
    # a stop signal ends it after a whole step
    trainer.raw_model.train()
    step, signum, out_of_time = start_step, None, False
    with stopping.deferred(repeats_stop_at_once=not info.enabled):
        while step < end_step and signum is None and not out_of_time:
            batch = draw_batch(data, generator, train_cfg.batch_size, diffusion_cfg.timesteps, train_cfg.hflip, info,
                               data_labels, train_cfg)
            loss = trainer.loss(batch)
            if device.type == "cpu" and not torch.isfinite(loss):
                # Checked every step on CPU, where reading a scalar costs nothing. The parameters still hold
                # the state after `step` updates (this loss has not been applied): save it if it is finite.
                raise saved.after_non_finite_loss(step + 1, step)
            trainer.update(loss, step)
            step += 1
            log.add(loss)
            signum = stop_poll(step)
            out_of_time = budget.exhausted(step, train_cfg.log_every)
            last = step == end_step or signum is not None or out_of_time  # a budget stop ends like train.steps
            if step % train_cfg.log_every == 0 or last:
                log.flush(step, trainer, last, saved)  # one host sync; raises NonFiniteLossError
            if step % train_cfg.checkpoint_every == 0 and not last:
                saved.save(step)
            if evaluate is not None and info.is_main and train_cfg.eval_every and step % train_cfg.eval_every == 0 \
                    and signum is None:
                signum = _evaluate(evaluate, trainer.ema.model, step, log, info)

        # ---- the end: the checkpoint, and the model file only for a finished run (not after stop_after);
        # a budget stop finishes the call (the LR schedule still spans train.steps, so resume continues it)
        finished = signum is None and (stop_after is None or step >= train_cfg.steps or out_of_time)
        if signum is not None and log.pending:  # stopped during an evaluation between two logged steps
            log.flush(step, trainer, True, saved)
        if finished or signum is not None:
            saved.save(step)
        if finished and info.is_main:
            save_model_file(model_path, model.state_dict(), trainer.ema.state_dict(), model_cfg, diffusion_cfg, step)
    signum = signum or stopping.pending()  # also a signal that came during the final save
    ddp.barrier(info)
    ddp.cleanup(info)
    if signum is not None:
        raise TrainingStopped(signum, step, train_cfg.steps, ckpt_path if info.is_main else None)
    return TrainResult(
        step=step, checkpoint=ckpt_path, model_file=model_path, log_file=log.path, losses=log.losses,
        images_per_second=log.images_per_second, resumed_from=start_step, seconds=time.perf_counter() - t_start,
        stopped_by_budget=step < end_step,
    )


# ----------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------
def _validate_images(images: torch.Tensor, model_cfg: ModelConfig) -> None:
    want = (model_cfg.in_channels, model_cfg.resolution, model_cfg.resolution)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"training images must be a uint8 tensor of shape (N, {want[0]}, {want[1]}, {want[2]}) "
            f"(model.in_channels, model.resolution); got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("training images: the dataset is empty")


def _validate_labels(labels: torch.Tensor | None, images: torch.Tensor, model_cfg: ModelConfig) -> None:
    if model_cfg.condition == "none":
        if labels is not None:
            raise ValueError("labels given for an unconditional model (model.condition: none)")
        return
    if labels is None or labels.ndim != 2 or labels.shape != (images.shape[0], NUM_TYPES):
        got = None if labels is None else tuple(labels.shape)
        raise ValueError(f"model.condition={model_cfg.condition} needs one multi-hot label row per image, "
                         f"shape ({images.shape[0]}, {NUM_TYPES}); got {got}")
    if not bool(labels.any()):
        raise ValueError(f"model.condition={model_cfg.condition}: no training image has a type label")


def _join_processes(device: torch.device, batch_size: int) -> tuple[torch.device, ddp.DistInfo]:
    """Join torchrun's process group if there is one: each rank trains on its own GPU (cuda:LOCAL_RANK)
    and computes its slice of every global batch."""
    info = ddp.init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if batch_size % info.world_size:
        raise ValueError(
            f"train.batch_size ({batch_size}) must be divisible by the number of processes ({info.world_size})"
        )
    return device, info


class _Checkpoints:
    """The training checkpoint (written by the main rank) and the last good state of this run: the step
    it was resumed from or last saved at. Every write is finite-checked (pokediff.checkpoint), so the
    file on disk always holds a good state, and an error can name it."""

    def __init__(self, state: TrainingState, path: Path, info: ddp.DistInfo, resumed_from: int):
        self.state, self.path, self.info = state, path, info
        self.good_step: int | None = resumed_from or None

    def save(self, step: int) -> None:
        if not self.info.is_main:
            return
        try:
            self.state.save(self.path, step)
        except NonFiniteStateError:
            raise self.non_finite(step, what="weights") from None
        self.good_step = step

    def after_non_finite_loss(self, step: int, trained_steps: int) -> NonFiniteLossError:
        """The loss of ``step`` is non-finite: keep the state after ``trained_steps`` updates if it is good."""
        if self.info.is_main:
            try:
                self.state.save(self.path, trained_steps)
                self.good_step = trained_steps
            except NonFiniteStateError:
                pass  # the weights themselves went bad (e.g. a huge learning rate): name the last good file
        return self.non_finite(step)

    def non_finite(self, step: int, what: str = "loss") -> NonFiniteLossError:
        good = self.good_step is not None and self.info.is_main
        return NonFiniteLossError(step, self.path if good else None, self.good_step if good else None, what)


def _evaluate(evaluate: EvalCallback, ema_model: nn.Module, step: int, log: _TrainLog,
              info: ddp.DistInfo) -> int | None:
    """Run the in-training evaluation; returns a stop signal's number if one came. A single process
    abandons the evaluation at the first signal (the step is done, and is saved); with several processes
    it finishes, since the other ranks wait for rank 0 in the next step's all-reduce."""
    if info.enabled:
        log.metrics(step, evaluate(ema_model, step))
        return None
    try:
        with stopping.immediate():
            if stopping.pending() is None:
                log.metrics(step, evaluate(ema_model, step))
    except stopping.StoppedAtOnce:
        raise
    except stopping.Stopped as stop:
        return stop.signum
    return stopping.pending()


def _seed_dropout_per_rank(seed: int, start_step: int, info: ddp.DistInfo) -> None:
    """Dropout draws from the global RNG: give each rank other than 0 its own masks, as separate GPUs
    would have. (Batches come from the shared generator, identical on every rank, so sharding stays exact.)"""
    if info.rank > 0:
        torch.manual_seed(seed + 1_000_003 * info.rank + start_step)


# ----------------------------------------------------------------------------------------------
# What a run reports: train_log.csv, the on_log callback, progress lines
# ----------------------------------------------------------------------------------------------
class _TrainLog:
    """Collects per-step losses (device scalars) between host syncs; at each logged step writes one
    train_log.csv row (main rank), calls on_log and prints a progress line. On resume, the rows after
    the checkpoint's step are dropped (they are trained again)."""

    def __init__(self, path: Path, start_step: int, total: int, info: ddp.DistInfo, on_log: LogCallback | None,
                 progress_seconds: float | None):
        self.path, self.info, self.on_log = path, info, on_log if info.is_main else None
        self.pending: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.images_per_second = float("nan")
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.progress = _ProgressLines(start_step, total, progress_seconds) \
            if info.is_main and progress_seconds is not None else None
        if info.is_main:
            self._start_csv(start_step)

    def _start_csv(self, resume_step: int) -> None:
        rows = []
        if resume_step > 0 and self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach())
        self.window_steps += 1

    def flush(self, step: int, trainer: TrainStep, final: bool, saved: _Checkpoints) -> None:
        losses = ddp.mean_across_ranks(torch.stack(self.pending), self.info).tolist()  # one host sync
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:  # on GPU: found at the sync; the last good checkpoint predates it (saves are finite-checked)
            raise saved.non_finite(step - len(losses) + bad[0] + 1)
        self.losses.extend(losses)
        self.pending.clear()
        now = time.perf_counter()
        batch = trainer.train_cfg.batch_size
        self.images_per_second = self.window_steps * batch / max(now - self.window_start, 1e-9)
        self.window_start, self.window_steps = now, 0
        row = {"step": step, "loss": sum(losses) / len(losses), "lr": trainer.scheduler.get_last_lr()[0],
               "grad_norm": float(trainer.grad_norm), "images_per_second": self.images_per_second}
        if self.info.is_main:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(row)
        self.metrics(step, {k: v for k, v in row.items() if k != "step"})
        if self.progress is not None:
            self.progress.update(step, row["loss"], self.images_per_second, final)

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.on_log is not None and metrics:
            self.on_log(step, metrics)


class _ProgressLines:
    """``train: step 120/600 (20%) loss 0.0812 31.5 img/s ETA 4m10s`` on stdout at the first logged
    step, then at most every ``every_s`` seconds, and at the last step."""

    def __init__(self, start: int, total: int, every_s: float):
        self.start, self.total, self.every_s = start, total, every_s
        self.t0 = time.perf_counter()
        self.last_print: float | None = None

    def update(self, step: int, loss: float, images_per_second: float, final: bool = False) -> None:
        now = time.perf_counter()
        if self.last_print is not None and now - self.last_print < self.every_s and not final:
            return
        self.last_print = now
        done = step - self.start
        rate = done / max(now - self.t0, 1e-9)  # steps/s of this run, in-training evaluations included
        eta = _duration((self.total - step) / rate) if rate > 0 else "?"
        print(f"train: step {step}/{self.total} ({step / max(self.total, 1):.0%}) loss {loss:.4f} "
              f"{images_per_second:.1f} img/s ETA {eta}", flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
