"""The training loop: MSE on the network's prediction at random timesteps (DDPM Algorithm 1).

One step, for a global batch of B images (uint8 (N, 3, R, R) dataset held on the training device):

    x0    = images[idx] / 127.5 - 1, randomly flipped       (B, 3, R, R) in [-1, 1]
    t     ~ U{0, ..., T-1}                                  (B,)
    noise ~ N(0, I)                                         (B, 3, R, R)
    x_t   = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise        q(x_t | x0)
    loss  = mean_b  w_b * || model(x_t, t) - target ||^2    target: eps, v or x0

then gradient clipping, AdamW with warm-up + cosine LR, and an EMA update.

Reproducibility and resume: every random draw comes from one seeded generator on the device (and
dropout from torch's global RNG); both states go into each checkpoint, so a resumed run replays the
uninterrupted run's batches exactly. Host syncs happen only every ``log_every`` steps.
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

from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig
from pokediff.devices import resolve_device
from pokediff.errors import PokediffError
from pokediff.models import UNet
from pokediff.training import distributed as ddp
from pokediff.training.budget import WallClockBudget
from pokediff.training.checkpoint import (
    CHECKPOINT_FORMAT,
    MODEL_FILE_NAME,
    CheckpointError,
    atomic_torch_save,
    load_file,
    save_model_file,
    write_sidecar,
)
from pokediff.training.step import TrainStep, draw_batch

LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "images_per_second"]

# on_log(step, {"loss": ..., "lr": ..., "grad_norm": ..., "images_per_second": ...})
LogCallback = Callable[[int, dict[str, float]], None]
# evaluate(ema_model, step) -> metrics (e.g. FID on a few samples); runs on the main rank only
EvalCallback = Callable[[nn.Module, int], dict[str, float]]


class NonFiniteLossError(PokediffError, RuntimeError):
    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        where = f"; the last good state is in {checkpoint}" if checkpoint else ""
        super().__init__(
            f"training stopped: the loss became non-finite (NaN or inf) at step {step}{where}. "
            "Lower train.lr, enable train.grad_clip, or use train.precision=fp32."
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


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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


class _LogWriter:
    """train_log.csv: one row per logged step; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        rows = []
        if resume_step > 0 and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow({k: row[k] for k in LOG_FIELDS})


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
) -> TrainResult:
    """Train a U-Net on ``images`` (uint8 (N, 3, R, R)) and write checkpoints under ``out_dir``.

    resume:      continue from out_dir/checkpoints/last.pt if it exists (else start fresh).
    fingerprint: an identifier of (data, configs) stored with each checkpoint; see run_fingerprint.
    stop_after:  stop after this many optimizer steps of *this* call, as if killed (tests, time limits);
                 no final checkpoint is written, so resume starts from the last periodic one.
    progress:    a tqdm bar when stderr is a terminal; otherwise (or with progress=False, as in the DVC
                 stage) one plain line at a logged step every ``progress_seconds`` (and at the end), so
                 a log file still shows step/total, loss, images/s and the ETA.
    """
    t_start = time.perf_counter()
    device = resolve_device(device)
    info = ddp.init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    model_path = out_dir / MODEL_FILE_NAME

    _validate_images(images, model_cfg)
    if train_cfg.batch_size % info.world_size:
        raise ValueError(
            f"train.batch_size ({train_cfg.batch_size}) must be divisible by the number of processes "
            f"({info.world_size})"
        )

    # ---- state: model, optimizer, LR schedule, EMA (rank 0), RNGs
    torch.manual_seed(train_cfg.seed)
    model = UNet(model_cfg).to(device)
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator(device=device).manual_seed(train_cfg.seed)

    start_step, resume_state = 0, None
    if resume and ckpt_path.exists():
        resume_state = load_file(ckpt_path, map_location=device)
        _check_resumable(resume_state, model_cfg, diffusion_cfg, ckpt_path)
        model.load_state_dict(resume_state["model"])
    trainer = TrainStep(model, diffusion_cfg, train_cfg, device, info, with_ema=info.is_main)
    if resume_state is not None:
        trainer.optimizer.load_state_dict(resume_state["optimizer"])
        trainer.scheduler.load_state_dict(resume_state["lr_scheduler"])
        if trainer.ema is not None:
            trainer.ema.load_state_dict(resume_state["ema"])
        _set_rng_state(resume_state["rng"], generator, device)
        start_step = int(resume_state["step"])
        resume_state = None
    if info.rank > 0:
        # Dropout draws from the global RNG: give each rank its own masks, as separate GPUs would have.
        # (Batches come from `generator`, identical on every rank, so sharding stays exact.)
        torch.manual_seed(train_cfg.seed + 1_000_003 * info.rank + start_step)

    data = images.to(device)  # the whole (small) dataset lives on the device: no loader, no host copies
    log = _LogWriter(out_dir / "train_log.csv", start_step, info.is_main)

    def save_checkpoint(step: int) -> Path:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "model": model.state_dict(),
            "ema": trainer.ema.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "lr_scheduler": trainer.scheduler.state_dict(),
            "rng": _rng_state(generator, device),
            "config": {
                "model": model_cfg.model_dump(mode="json"),
                "diffusion": diffusion_cfg.model_dump(mode="json"),
                "train": train_cfg.model_dump(mode="json"),
            },
            "torch_version": str(torch.__version__),  # a plain str: weights_only=True refuses TorchVersion
            "fingerprint": fingerprint,
        }
        path = atomic_torch_save(payload, ckpt_path)
        # A small sidecar, so deciding whether to resume does not mean loading a large checkpoint.
        write_sidecar(ckpt_path, {"step": step, "fingerprint": fingerprint})
        return path

    # ---- the loop
    end_step = train_cfg.steps if stop_after is None else min(train_cfg.steps, start_step + stop_after)
    pending: list[torch.Tensor] = []  # per-step losses (device scalars) since the last host sync
    all_losses: list[float] = []
    window_start, window_images = time.perf_counter(), 0
    last_ips = float("nan")
    use_bar = progress and info.is_main and _is_terminal()
    bar = _progress_bar(start_step, train_cfg.steps, use_bar)
    lines = _ProgressLines(start_step, train_cfg.steps, progress_seconds, info.is_main and not use_bar)

    budget = WallClockBudget(train_cfg.max_seconds, info, device)
    trainer.raw_model.train()
    step = start_step
    while step < end_step:
        batch = draw_batch(data, generator, train_cfg.batch_size, diffusion_cfg.timesteps, train_cfg.hflip, info)
        loss = trainer.loss(batch)
        if device.type == "cpu" and not torch.isfinite(loss):
            # Checked every step on CPU, where reading a scalar costs nothing. The parameters still hold
            # the state after `step` updates (this loss has not been applied): save it, then stop.
            raise NonFiniteLossError(step + 1, save_checkpoint(step) if info.is_main else None)
        trainer.update(loss, step)
        step += 1
        pending.append(loss.detach())
        window_images += train_cfg.batch_size
        out_of_time = budget.exhausted(step, train_cfg.log_every)

        if step % train_cfg.log_every == 0 or step == end_step or out_of_time:
            losses = ddp.mean_across_ranks(torch.stack(pending), info).tolist()  # one host sync
            bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
            if bad:  # on GPU: found at the sync; the last periodic checkpoint predates it
                raise NonFiniteLossError(step - len(losses) + bad[0] + 1, ckpt_path if ckpt_path.exists() else None)
            all_losses.extend(losses)
            pending.clear()
            now = time.perf_counter()
            last_ips = window_images / max(now - window_start, 1e-9)
            window_start, window_images = now, 0
            row = {"step": step, "loss": sum(losses) / len(losses), "lr": trainer.scheduler.get_last_lr()[0],
                   "grad_norm": float(trainer.grad_norm), "images_per_second": last_ips}
            log.write(row)
            if on_log is not None and info.is_main:
                on_log(step, {k: v for k, v in row.items() if k != "step"})
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{last_ips:.1f}")
            lines.update(step, row["loss"], last_ips, final=step == end_step or out_of_time)

        if info.is_main and step % train_cfg.checkpoint_every == 0 and step < end_step and not out_of_time:
            save_checkpoint(step)
        if evaluate is not None and info.is_main and train_cfg.eval_every and step % train_cfg.eval_every == 0:
            metrics = evaluate(trainer.ema.model, step)
            if on_log is not None and metrics:
                on_log(step, metrics)
        if out_of_time:
            break  # the final checkpoint and model file are written below, as at train.steps

    bar.close()
    if (stop_after is None or step >= train_cfg.steps) and info.is_main:
        save_checkpoint(step)
        save_model_file(model_path, model.state_dict(), trainer.ema.state_dict(), model_cfg, diffusion_cfg, step)
    ddp.barrier(info)
    ddp.cleanup(info)
    return TrainResult(
        step=step, checkpoint=ckpt_path, model_file=model_path, log_file=out_dir / "train_log.csv",
        losses=all_losses, images_per_second=last_ips, resumed_from=start_step,
        seconds=time.perf_counter() - t_start, stopped_by_budget=step < end_step,
    )


def _validate_images(images: torch.Tensor, model_cfg: ModelConfig) -> None:
    want = (model_cfg.in_channels, model_cfg.resolution, model_cfg.resolution)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"training images must be a uint8 tensor of shape (N, {want[0]}, {want[1]}, {want[2]}) "
            f"(model.in_channels, model.resolution); got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("training images: the dataset is empty")


def _is_terminal() -> bool:
    import sys

    return sys.stderr.isatty()


class _ProgressLines:
    """Progress for logs (DVC, Prefect, CI): ``train: step 120/600 (20%) loss 0.0812 31.5 img/s ETA 4m10s``
    on stdout at the first logged step, then at most every ``every_s`` seconds, and at the last step."""

    def __init__(self, start: int, total: int, every_s: float, enabled: bool):
        self.start, self.total, self.every_s, self.enabled = start, total, every_s, enabled
        self.t0 = time.perf_counter()
        self.last_print: float | None = None

    def update(self, step: int, loss: float, images_per_second: float, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (self.last_print is not None and now - self.last_print < self.every_s and not final):
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


def _progress_bar(start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True,
                desc="train")
