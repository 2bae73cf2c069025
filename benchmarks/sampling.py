"""Sampling speed: DDIM-50 images/s for ours and two references, plus ours with DPM-Solver++(2M)-20.

    python -m benchmarks.sampling                                # CUDA: batch 128, bf16 autocast
    python -m benchmarks.sampling --cuda-graphs                  # adds ours with the U-Net call captured
    python -m benchmarks.sampling --compile --compile-mode max-autotune
    python -m benchmarks.sampling --device cpu                   # tiny smoke run

One sampling call = one batch of B images from pure noise to the final image, on the device; images/s
= B / seconds per call (median over windows). As each project's users sample:

    ours          pokediff.diffusion.reverse_process(model, sched, shape, sampler="ddim", steps=50) under bf16
                  autocast on CUDA (what pokediff.generation.generate runs), and sampler="dpmpp2m", steps=20
    ddpm-pytorch  GaussianDiffusion(Unet(dim=64, dim_mults=(1, 2, 4, 8), flash_attn=True), image_size=64,
                  timesteps=1000, sampling_timesteps=50).sample(batch_size=B)   (its DDIM path)
    diffusers     DDIMPipeline(UNet2DModel(<unconditional example's 64x64 config>), DDIMScheduler())(
                  batch_size=B, num_inference_steps=50, output_type="pt")

Weights are random (nothing is downloaded): speed does not depend on them, since no layer skips zeros
or branches on values. Our U-Net zero-initialises the last layer of every residual branch and its output
conv, so an untrained model predicts exactly 0; those all-zero tensors are perturbed with N(0, 0.02^2)
anyway so that every network's output, and so the sampler arithmetic, is non-trivial.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
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
class Sampling:
    """One implementation's sampling call for a fixed batch, and a single network evaluation."""

    network: nn.Module  # the denoiser; --compile compiles it in place
    sample: Callable[[], torch.Tensor]  # B images from noise, on the device
    evaluate: Callable[[], object]  # one network call on a (B, 3, R, R) batch (for the FLOP count)
    sampler: str
    steps: int  # network evaluations per sample call


@dataclass
class Options(WorkloadOptions):
    steps: int


def _example_inputs(opts: Options) -> tuple[torch.Tensor, torch.Tensor]:
    B, R = opts.batch_size, opts.resolution
    return (torch.randn(B, 3, R, R, device=opts.device),
            torch.full((B,), 500, dtype=torch.long, device=opts.device))


def perturb_zero_init(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Give every all-zero parameter small random values (see the module docstring)."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return model


# ----------------------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------------------
def ours(opts: Options, sampler: str, cuda_graphs: bool = False) -> Sampling:
    """pokediff.diffusion.sample with the default model and diffusion configs, as
    pokediff.generation.generate calls it: a CPU generator for the initial noise (device-independent
    seeds), bf16 autocast on CUDA."""
    from pokediff.config import DiffusionConfig, ModelConfig
    from pokediff.diffusion import NoiseSchedule, reverse_process
    from pokediff.models import UNet

    device, B, R = opts.device, opts.batch_size, opts.resolution
    diffusion_cfg = DiffusionConfig()
    model = perturb_zero_init(UNet(ModelConfig(resolution=R)).to(device).eval())
    sched = NoiseSchedule(diffusion_cfg.schedule, diffusion_cfg.timesteps)
    generator = torch.Generator().manual_seed(0)
    network: Callable = model
    if cuda_graphs:
        network = CudaGraphed(model, *_example_inputs(opts), precision=opts.precision)

    def run() -> torch.Tensor:
        with autocast(device, opts.precision):
            return reverse_process(network, sched, (B, 3, R, R), sampler=sampler, steps=opts.steps,
                          prediction=diffusion_cfg.prediction, generator=generator, device=device)

    x, t = _example_inputs(opts)
    return Sampling(model, run, lambda: model(x, t), sampler, opts.steps)


class CudaGraphed:
    """Our U-Net call captured once as a CUDA graph and replayed at every sampling step.

    Sampling calls the network with the same shapes every step, so the ~400 kernel launches of one
    U-Net forward can be recorded once; a replay costs one launch. That removes the CPU launch
    overhead, which matters when a step's GPU work is short (small batches, bf16, H100).

    Inputs are copied into static buffers and the output is cloned out of the graph's static buffer,
    so callers may keep it across steps (DPM-Solver++ keeps the previous x0 estimate). Capture runs
    under autocast with its weight-cast cache disabled: cached casts made during capture would be
    freed when the autocast context exits, leaving the graph reading freed memory."""

    def __init__(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, precision: str, warmup: int = 3):
        if x.device.type != "cuda":
            raise ValueError("--cuda-graphs needs a CUDA device")
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._autocast = lambda: torch.autocast("cuda", dtype=dtype, enabled=precision == "bf16",
                                                cache_enabled=False)
        with torch.inference_mode():
            self.static_x, self.static_t = x.clone(), t.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), self._autocast():  # warm up (cuDNN autotuning, lazy init) off-graph
                for _ in range(warmup):
                    model(self.static_x, self.static_t)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), self._autocast():
                self.static_out = model(self.static_x, self.static_t)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.static_x.copy_(x)
        self.static_t.copy_(t)
        self.graph.replay()
        return self.static_out.clone()


# ----------------------------------------------------------------------------------------------
# denoising-diffusion-pytorch
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_ddpm_progress_bar():
    """GaussianDiffusion.ddim_sample wraps its loop in a tqdm bar that cannot be switched off by argument;
    silence it for the run (its per-step cost is microseconds, so this changes no timing)."""
    import functools

    import denoising_diffusion_pytorch.denoising_diffusion_pytorch as ddp_module

    original = ddp_module.tqdm
    ddp_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        ddp_module.tqdm = original


def ddpm_pytorch(opts: Options) -> Sampling:
    """``GaussianDiffusion(..., sampling_timesteps=50).sample(batch_size=B)``: the DDIM loop the Trainer
    uses for its sample grids and FID (eta 0, clipped x0, noise from torch's global RNG)."""
    ddpm = import_ddpm_pytorch()
    GaussianDiffusion, Unet = ddpm.GaussianDiffusion, ddpm.Unet

    unet = Unet(dim=64, dim_mults=(1, 2, 4, 8), flash_attn=True)
    diffusion = GaussianDiffusion(unet, image_size=opts.resolution, timesteps=1000,
                                  sampling_timesteps=opts.steps).to(opts.device).eval()

    def run() -> torch.Tensor:
        with autocast(opts.device, opts.precision), _quiet_ddpm_progress_bar():
            return diffusion.sample(batch_size=opts.batch_size)

    x, t = _example_inputs(opts)
    return Sampling(unet, run, lambda: unet(x, t), "ddim", opts.steps)


# ----------------------------------------------------------------------------------------------
# diffusers
# ----------------------------------------------------------------------------------------------
def diffusers_ddim(opts: Options) -> Sampling:
    """DDIMPipeline on the unconditional example's UNet2DModel with a DDIMScheduler of the example's
    training schedule (1000 linear betas), eta 0, returning tensors on the device (output_type="pt")."""
    from diffusers import DDIMPipeline, DDIMScheduler

    unet = diffusers_example_unet(opts.resolution).to(opts.device).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)

    def run() -> torch.Tensor:
        with autocast(opts.device, opts.precision):
            return pipe(batch_size=opts.batch_size, generator=generator, eta=0.0, num_inference_steps=opts.steps,
                        output_type="pt").images

    x, t = _example_inputs(opts)
    return Sampling(unet, run, lambda: unet(x, t).sample, "ddim", opts.steps)


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------
def variants(models: list[str], cuda_graphs: bool) -> list[str]:
    """Rows to measure: ours expands to DDIM and DPM-Solver++(2M) (and their CUDA-graph versions)."""
    rows = []
    for name in models:
        if name == "ours":
            rows += ["ours", "ours-dpmpp2m"]
            if cuda_graphs:
                rows += ["ours+graphs", "ours-dpmpp2m+graphs"]
        else:
            rows.append(name)
    return rows


def build(row: str, args: argparse.Namespace) -> Sampling:
    opts = Options(args.device, args.batch_size, args.resolution, args.precision,
                   args.dpm_steps if "dpmpp2m" in row else args.ddim_steps)
    if row.startswith("ours"):
        return ours(opts, "dpmpp2m" if "dpmpp2m" in row else "ddim", cuda_graphs=row.endswith("+graphs"))
    return {"ddpm-pytorch": ddpm_pytorch, "diffusers": diffusers_ddim}[row](opts)


def prepare(row: str, args: argparse.Namespace) -> Prepared:
    seed_everything(args.seed)
    work = build(row, args)
    # Forward only, per image, per evaluation. Counted without autocast: the FLOPs do not depend on the
    # dtype, and FlopCounterMode under CPU autocast + inference_mode trips over ddpm-pytorch's mixed-dtype
    # einsum (torch 2.14) although the uncounted call runs.
    with torch.inference_mode():
        flops = count_flops(work.evaluate) / args.batch_size
    if args.compile:
        work.network.compile(mode=args.compile_mode)
    info = {"sampler": work.sampler, "steps": work.steps, "params": count_parameters(work.network),
            "gflop_per_image_eval": flops / 1e9}
    return Prepared(work.sample, info)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sampling", description=__doc__.split("\n")[0])
    add_common_arguments(p, MODELS)
    p.add_argument("--ddim-steps", type=int, help="DDIM steps for all three (default: 50 on CUDA, 2 on CPU)")
    p.add_argument("--dpm-steps", type=int, help="our DPM-Solver++(2M) steps (default: 20 on CUDA, 2 on CPU)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time ours with the U-Net call captured as a CUDA graph (CUDA only, not with --compile)")
    args = p.parse_args(argv)
    args = finish_arguments(p, args, MODELS, {"ddim_steps": (50, 2), "dpm_steps": (20, 2), "warmup": (1, 1)})
    if not 1 <= min(args.ddim_steps, args.dpm_steps) <= max(args.ddim_steps, args.dpm_steps) <= 1000:
        p.error("--ddim-steps and --dpm-steps must be in [1, 1000] (the training timesteps)")
    if args.cuda_graphs and args.device.type != "cuda":
        p.error("--cuda-graphs needs a CUDA device")
    if args.cuda_graphs and args.compile:
        p.error("--cuda-graphs and --compile do not combine here; compile-mode reduce-overhead/max-autotune "
                "already capture CUDA graphs")
    return args


def run(args: argparse.Namespace) -> dict:
    rows_wanted = variants(args.models, args.cuda_graphs)
    measured = measure_models(rows_wanted, lambda row: prepare(row, args), args.device, windows=args.windows,
                              calls_per_window=1, warmup=args.warmup, interleave=args.interleave)
    rows = [timed_row(name, m, args.batch_size) for name, m in measured.items()]
    for r in rows:
        if "error" not in r:
            r["ms_per_eval"] = 1e3 * measured[r["model"]].timing.median_s / r["steps"]
            evals_per_s = r["images_per_s"] * r["steps"]  # network evaluations per second, per image
            r["mfu"] = mfu(r["gflop_per_image_eval"] * 1e9, evals_per_s, args.peak_tflops)
    ok = {r["model"]: r for r in rows if "error" not in r}
    for r in ok.values():
        for ours_row, key in (("ours", "ours_ddim_over_this"), ("ours-dpmpp2m", "ours_dpmpp2m_over_this")):
            if ours_row in ok:
                r[key] = ok[ours_row]["images_per_s"] / r["images_per_s"]
    return {
        "benchmark": "sampling",
        "environment": environment(args.device),
        "settings": {**common_settings(args), "ddim_steps": args.ddim_steps, "dpm_steps": args.dpm_steps,
                     "cuda_graphs": args.cuda_graphs},
        "rows": rows,
    }


HEADERS = ("model", "sampler", "steps", "GFLOP/img/eval", "images/s", "slowest-fastest", "ms/eval",
           "ours DDIM/this", "ours DPM++/this", "MFU", "peak GiB")


def format_report(result: dict) -> str:
    s = result["settings"]

    def cells(r: dict) -> list[str]:
        return [
            r["model"], r["sampler"], str(r["steps"]), fmt(r["gflop_per_image_eval"], ".2f"), *rate_cells(r),
            fmt(r["ms_per_eval"], ".1f"), fmt(r.get("ours_ddim_over_this"), ".3f"),
            fmt(r.get("ours_dpmpp2m_over_this"), ".3f"), mfu_cell(r), fmt(r["peak_memory_gib"], ".2f"),
        ]

    lines = [
        f"sampling: {describe_environment(result['environment'])}",
        f"batch {s['batch_size']} x {s['resolution']}x{s['resolution']}, {s['precision']}, compile={s['compile']}, "
        f"cuda_graphs={s['cuda_graphs']}, median of {s['windows']} {'interleaved ' if s['interleave'] else ''}"
        f"sampling calls (after {s['warmup']} warm-up), MFU vs {fmt(s['peak_tflops'], 'g')} TFLOP/s",
        "",
        report_table(HEADERS, result["rows"], cells),
    ]
    errors = [f"  {r['model']}: {r['error']}" for r in result["rows"] if "error" in r]
    return "\n".join(lines + ([""] + errors if errors else []))


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(argv, parse_args, run, format_report)


if __name__ == "__main__":
    sys.exit(main())
