"""Training throughput: our full training step against two reference implementations, in one process.

    python -m benchmarks.train_throughput                         # CUDA: batch 128, bf16 autocast
    python -m benchmarks.train_throughput --compile --json out.json
    python -m benchmarks.train_throughput --device cpu            # tiny smoke run (batch 2)

All models run on the same device with random 64x64 batches that already live there (no data loading
is timed, for anyone); on CUDA one after the other, on CPU with their timed windows interleaved (see
benchmarks/_common.py). A "step" is everything one optimizer step of that implementation's own training
loop does, as its users run it:

    ours          pokediff.training.step: draw_batch + TrainStep.loss + TrainStep.update
                  (forward, MSE, backward, grad clip, AdamW (fused on CUDA), LR schedule, EMA lerp)
    ddpm-pytorch  denoising-diffusion-pytorch: Unet(dim=64, dim_mults=(1, 2, 4, 8), flash_attn=True) in
                  GaussianDiffusion(image_size=64, timesteps=1000), stepped as its Trainer.train does
    diffusers     UNet2DModel with examples/unconditional_image_generation's 64x64 config, stepped as
                  train_unconditional.py does (DDPMScheduler.add_noise, MSE, AdamW, cosine LR, EMAModel)

Reported per model: parameters, model FLOPs per image (fwd + bwd, torch.utils.flop_counter), median
images/s over the timed windows (and the slowest/fastest window), ms per step, the ratio
ours / this model (images/s; > 1 means ours is faster), MFU against --peak-tflops, peak GPU memory.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._common import (
    Prepared,
    WorkloadOptions,
    add_common_arguments,
    autocast,
    benchmark_main,
    common_settings,
    count_flops,
    count_parameters,
    describe_environment,
    diffusers_example_unet,
    environment,
    finish_arguments,
    fmt,
    import_ddpm_pytorch,
    measure_models,
    mfu,
    mfu_cell,
    rate_cells,
    report_table,
    seed_everything,
    timed_row,
)

MODELS = ("ours", "ddpm-pytorch", "diffusers")


@dataclass
class Workload:
    """One implementation's training step, ready to call repeatedly on a fixed-size batch."""

    network: nn.Module  # the denoiser; --compile compiles it in place (parameter names unchanged)
    step: Callable[[], None]  # one complete optimizer step
    how: str  # one line for the report: what exactly a step is


@dataclass
class Options(WorkloadOptions):
    channels_last: bool


def _channels_last(x: torch.Tensor, opts: Options) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if opts.channels_last else x


# ----------------------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------------------
def ours(opts: Options) -> Workload:
    """The training loop's own step (pokediff.training.loop.train runs exactly these three calls).

    The loop reads the loss back to the host only every train.log_every (10) steps, so no per-step
    sync is timed here either. Dropout 0.1 and hflip stay on, as in the default config."""
    from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig
    from pokediff.models import UNet
    from pokediff.training.step import TrainStep, draw_batch

    device, B = opts.device, opts.batch_size
    model_cfg, diffusion_cfg = ModelConfig(resolution=opts.resolution), DiffusionConfig()
    # compile stays off here: the runner compiles the network in place, after counting FLOPs eagerly;
    # that is the graph TrainConfig.compile would build (torch.compile of the same module).
    train_cfg = TrainConfig(batch_size=B, precision=opts.precision, channels_last=opts.channels_last,
                            compile=False)
    model = UNet(model_cfg).to(device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)  # as the loop does before building TrainStep
    trainer = TrainStep(model, diffusion_cfg, train_cfg, device)
    trainer.raw_model.train()
    # The loop keeps the whole uint8 dataset on the device and draws the batch there.
    images = torch.randint(0, 256, (4 * B, 3, opts.resolution, opts.resolution), dtype=torch.uint8, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    counter = itertools.count()

    def step() -> None:
        batch = draw_batch(images, generator, B, diffusion_cfg.timesteps, train_cfg.hflip)
        loss = trainer.loss(batch)
        trainer.update(loss, next(counter))

    fused = "fused " if device.type == "cuda" else ""
    return Workload(model, step, f"TrainStep: draw_batch, loss, backward, clip 1.0, {fused}AdamW, LR, EMA lerp; "
                                 "no per-step host sync")


# ----------------------------------------------------------------------------------------------
# denoising-diffusion-pytorch
# ----------------------------------------------------------------------------------------------
def ddpm_pytorch(opts: Options) -> Workload:
    """What ``Trainer(GaussianDiffusion(Unet(...)), folder).train()`` does per step (single process,
    gradient_accumulate_every=1), with the Trainer's defaults:

        with accelerator.autocast(): loss = diffusion(data); total_loss += loss.item()
        accelerator.backward(loss); clip_grad_norm_(params, max_grad_norm=1.0)
        opt.step(); opt.zero_grad()               # Adam(lr=1e-4, betas=(0.9, 0.99))
        ema.update()                              # ema_pytorch.EMA(beta=0.995, update_every=10)

    GaussianDiffusion's own defaults apply: v-prediction, sigmoid schedule, timesteps and noise from
    torch's global RNG, inputs in [0, 1] normalised to [-1, 1] inside. Accelerate's bf16 mixed precision
    is torch.autocast around the forward; here that is the shared autocast context. The EMA copies (first
    100 steps) or lerps (afterwards) once every 10 steps, so the timed windows see its steady cost."""
    from ema_pytorch import EMA

    ddpm = import_ddpm_pytorch()
    GaussianDiffusion, Unet = ddpm.GaussianDiffusion, ddpm.Unet

    device = opts.device
    unet = Unet(dim=64, dim_mults=(1, 2, 4, 8), flash_attn=True)
    diffusion = GaussianDiffusion(unet, image_size=opts.resolution, timesteps=1000).to(device)
    if opts.channels_last:
        unet.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10).to(device)
    # The Trainer's DataLoader yields images in [0, 1].
    data = _channels_last(torch.rand(opts.batch_size, 3, opts.resolution, opts.resolution, device=device), opts)

    def step() -> None:
        diffusion.train()
        with autocast(device, opts.precision):
            loss = diffusion(data)
            loss.item()  # the Trainer's `total_loss += loss.item()`: one host sync per step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.update()

    return Workload(unet, step, "Trainer step: GaussianDiffusion(pred_v, sigmoid) loss, loss.item(), backward, "
                                "clip 1.0, Adam, EMA every 10 steps")


# ----------------------------------------------------------------------------------------------
# diffusers
# ----------------------------------------------------------------------------------------------
def diffusers_unconditional(opts: Options) -> Workload:
    """What examples/unconditional_image_generation/train_unconditional.py does per step with its
    defaults (--resolution 64 --use_ema, lr 1e-4, AdamW betas (0.95, 0.999), wd 1e-6, cosine with 500
    warm-up steps, EMA max decay 0.9999 with warm-up inv_gamma 1, power 3/4):

        noise = randn(clean.shape, dtype=weight_dtype); t = randint(0, 1000, (B,))
        noisy = noise_scheduler.add_noise(clean, noise, t)
        model_output = model(noisy, t).sample     # under accelerate's autocast
        loss = F.mse_loss(model_output.float(), noise.float()); accelerator.backward(loss)
        clip_grad_norm_(params, 1.0); optimizer.step(); lr_scheduler.step(); optimizer.zero_grad()
        ema_model.step(model.parameters()); logs = {"loss": loss.detach().item(), ...}

    With --mixed_precision bf16 the example casts its inputs and noise to bf16 (weight_dtype) and keeps
    fp32 weights under autocast; that is reproduced here. EMAModel runs its default per-parameter loop."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    device, B, R = opts.device, opts.batch_size, opts.resolution
    model = diffusers_example_unet(R)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=100_000)
    model.to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    ema_model = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                         model_cls=UNet2DModel, model_config=model.config)
    ema_model.to(device)
    weight_dtype = torch.bfloat16 if opts.precision == "bf16" else torch.float32
    # The example's transforms normalise images to [-1, 1].
    clean = _channels_last(torch.rand(B, 3, R, R, device=device) * 2 - 1, opts).to(weight_dtype)

    def step() -> None:
        model.train()
        noise = torch.randn(clean.shape, dtype=weight_dtype, device=device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (B,), device=device).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with autocast(device, opts.precision):
            model_output = model(noisy, timesteps).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema_model.step(model.parameters())
        loss.detach().item()  # the example logs the loss every step: one host sync per step

    return Workload(model, step, "train_unconditional step: add_noise, MSE, backward, clip 1.0, AdamW, cosine LR, "
                                 "EMAModel.step, loss.item()")


BUILDERS: dict[str, Callable[[Options], Workload]] = {
    "ours": ours,
    "ddpm-pytorch": ddpm_pytorch,
    "diffusers": diffusers_unconditional,
}


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n")[0])
    add_common_arguments(p, MODELS)
    p.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs for all")
    p.add_argument("--steps-per-window", type=int, help="optimizer steps per window (default: 20 CUDA, 1 CPU)")
    args = p.parse_args(argv)
    args = finish_arguments(p, args, MODELS, {"steps_per_window": (20, 1), "warmup": (5, 1)})
    if args.steps_per_window < 1:
        p.error("--steps-per-window must be >= 1")
    return args


def prepare(name: str, args: argparse.Namespace) -> Prepared:
    """Build one model's step, count its FLOPs, compile it if asked."""
    B = args.batch_size
    seed_everything(args.seed)
    work = BUILDERS[name](Options(args.device, B, args.resolution, args.precision, args.channels_last))
    # One eager step under the FLOP counter (it is also the first warm-up step, which creates the
    # optimizer state); compiling afterwards leaves the model FLOPs unchanged.
    flops_per_image = count_flops(work.step) / B
    if args.compile:
        work.network.compile(mode=args.compile_mode)
    info = {"how": work.how, "params": count_parameters(work.network), "gflop_per_image": flops_per_image / 1e9}
    return Prepared(work.step, info)


def run(args: argparse.Namespace) -> dict:
    measured = measure_models(args.models, lambda name: prepare(name, args), args.device, windows=args.windows,
                              calls_per_window=args.steps_per_window, warmup=args.warmup,
                              interleave=args.interleave)
    rows = [timed_row(name, m, args.batch_size) for name, m in measured.items()]
    for r in rows:
        if "error" not in r:
            timing = measured[r["model"]].timing
            r["ms_per_step"] = 1e3 * timing.median_s / timing.calls_per_window
            r["mfu"] = mfu(r["gflop_per_image"] * 1e9, r["images_per_s"], args.peak_tflops)
    ours_ips = next((r["images_per_s"] for r in rows if r["model"] == "ours" and "error" not in r), None)
    for r in rows:
        if "error" not in r and ours_ips is not None:
            r["ours_over_this"] = ours_ips / r["images_per_s"]
    return {
        "benchmark": "train_throughput",
        "environment": environment(args.device),
        "settings": {**common_settings(args), "channels_last": args.channels_last,
                     "steps_per_window": args.steps_per_window},
        "rows": rows,
    }


HEADERS = ("model", "params (M)", "GFLOP/img fwd+bwd", "images/s", "slowest-fastest", "ms/step", "ours/this",
           "MFU", "peak GiB")


def format_report(result: dict) -> str:
    s = result["settings"]

    def cells(r: dict) -> list[str]:
        return [
            r["model"], fmt(r["params"] / 1e6, ".1f"), fmt(r["gflop_per_image"], ".2f"), *rate_cells(r),
            fmt(r["ms_per_step"], ".1f"), fmt(r.get("ours_over_this"), ".3f"), mfu_cell(r),
            fmt(r["peak_memory_gib"], ".2f"),
        ]

    lines = [
        f"train throughput: {describe_environment(result['environment'])}",
        f"batch {s['batch_size']} x {s['resolution']}x{s['resolution']}, {s['precision']}, "
        f"compile={s['compile']}, channels_last={s['channels_last']}, median of {s['windows']} "
        f"{'interleaved ' if s['interleave'] else ''}windows x {s['steps_per_window']} steps "
        f"(after {s['warmup']} warm-up), MFU vs "
        f"{fmt(s['peak_tflops'], 'g')} TFLOP/s",
        "",
        report_table(HEADERS, result["rows"], cells),
        "",
    ]
    for r in result["rows"]:
        lines.append(f"  {r['model']}: {r.get('error') or r['how']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(argv, parse_args, run, format_report)


if __name__ == "__main__":
    sys.exit(main())
