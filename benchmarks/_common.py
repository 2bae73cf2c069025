"""Shared benchmark machinery: devices, precision, timing windows, FLOP counting, memory, tables.

Every benchmark here follows one protocol, so the numbers of ours and of the references are
comparable inside one run:

    build the workload -> count its FLOPs once (eager) -> optional compile -> warm-up (not timed)
    -> W timed windows of S calls each -> median over windows

On CUDA a window is timed with CUDA events around the S calls, after a synchronize, so queued work
from the warm-up never leaks into a window; on CPU with perf_counter. The median over windows (not
the mean) keeps one window disturbed by another process from moving the result.

Two schedules (``measure_models``):
    sequential   build, time and free one model after the other: a clean peak-memory figure per model.
                 The default on CUDA, where the GPU is ours alone for the run.
    interleaved  build all, then time window 1 of every model, window 2 of every model, ... (rotating
                 the order). The default on CPU: on a shared machine the load drifts over minutes, and
                 only interleaving exposes every model to the same drift, so the ratios stay meaningful.
                 Peak memory is not per model then and is not reported.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# H100 SXM dense bf16 tensor-core peak (989.4 TFLOP/s, no sparsity): the MFU denominator on CUDA unless
# --peak-tflops says otherwise. There is no meaningful peak for a shared CPU, so no MFU there.
H100_BF16_DENSE_TFLOPS = 989.0


# ----------------------------------------------------------------------------------------------
# Device and precision
# ----------------------------------------------------------------------------------------------
def pick_device(name: str | None) -> torch.device:
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: CUDA is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, precision: str):
    """bf16 autocast for "bf16", nothing for "fp32": the same context for ours and the references."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    # The references draw timesteps and noise from torch's global RNG, as their users' loops do.
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
@dataclass
class Timing:
    seconds: list[float]  # one entry per timed window
    calls_per_window: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def rate(self, items_per_call: int) -> tuple[float, float, float]:
        """(median, slowest, fastest) items per second, e.g. images/s."""
        per_window = items_per_call * self.calls_per_window
        return per_window / self.median_s, per_window / max(self.seconds), per_window / min(self.seconds)


def time_windows(fn: Callable[[], object], device: torch.device, *, windows: int, calls_per_window: int,
                 warmup: int) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then time ``windows`` windows of ``calls_per_window`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(windows):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls_per_window):
                fn()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)  # ms -> s
        else:
            t0 = time.perf_counter()
            for _ in range(calls_per_window):
                fn()
            seconds.append(time.perf_counter() - t0)
        synchronize(device)
    return Timing(seconds, calls_per_window)


@dataclass
class Prepared:
    """A built workload: ``fn`` is the timed call; ``info`` holds what was learnt while building it
    (parameters, FLOPs, a description)."""

    fn: Callable[[], object]
    info: dict


# Modules denoising_diffusion_pytorch imports at import time but only uses in code the benchmarks never
# run: torchvision (its Trainer's dataset transforms and image saving) and scipy (linear_sum_assignment,
# for its optional "immiscible" noise assignment). The GPU machine has neither, and their wheels (about
# 45 MB together, torchvision's tied to the exact torch build) do not fit the 64 MiB the run may carry.
DDPM_PYTORCH_UNUSED_IMPORTS = {"torchvision": ("transforms", "utils"), "scipy.optimize": ("linear_sum_assignment",)}


class _Unavailable(types.ModuleType):
    """A stand-in: any attribute is another stand-in, so ``from torchvision import transforms as T`` works;
    calling one (``T.Compose(...)``, ``linear_sum_assignment(...)``) raises."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is not installed on this machine; denoising_diffusion_pytorch "
                           "imports it, but the benchmarks do not use it")


def import_ddpm_pytorch():
    """``denoising_diffusion_pytorch``, also where torchvision or scipy is not installed: stand-ins for
    the names in DDPM_PYTORCH_UNUSED_IMPORTS are in sys.modules only while it is imported (so no one
    else's availability check sees them); GaussianDiffusion, Unet and ema_pytorch stay the real code."""
    import importlib.util

    missing = [m for m in DDPM_PYTORCH_UNUSED_IMPORTS if importlib.util.find_spec(m.split(".")[0]) is None]
    planted = []
    for dotted in missing:
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = _Unavailable(name)
                planted.append(name)
    try:
        import denoising_diffusion_pytorch

        return denoising_diffusion_pytorch
    finally:
        for name in planted:
            del sys.modules[name]


def diffusers_example_unet(resolution: int) -> torch.nn.Module:
    """diffusers' examples/unconditional_image_generation UNet2DModel (its 64x64 config), on the CPU."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


@dataclass
class WorkloadOptions:
    """What every implementation's workload is built for; each benchmark adds its own fields."""

    device: torch.device
    batch_size: int
    resolution: int
    precision: str  # "bf16" | "fp32"


@dataclass
class Measured:
    info: dict
    timing: Timing | None = None
    peak_memory_gib: float | None = None
    error: str | None = None


def timed_row(name: str, measured: Measured, batch_size: int) -> dict:
    """The report row both benchmarks share: images/s (median, slowest, fastest window), window
    seconds and peak memory, after the workload's own ``info``; ``{"model", "error"}`` if it failed."""
    if measured.error:
        return {"model": name, "error": measured.error}
    ips, slowest, fastest = measured.timing.rate(batch_size)
    return {"model": name, **measured.info, "images_per_s": ips, "images_per_s_slowest": slowest,
            "images_per_s_fastest": fastest, "window_seconds": measured.timing.seconds,
            "peak_memory_gib": measured.peak_memory_gib}


def rate_cells(row: dict) -> list[str]:
    """images/s and its slowest-fastest range, as report cells."""
    return [fmt(row["images_per_s"], ".4g"),
            f"{fmt(row['images_per_s_slowest'], '.4g')}-{fmt(row['images_per_s_fastest'], '.4g')}"]


def report_table(headers: Sequence[str], rows: Sequence[dict], cells: Callable[[dict], list[str]]) -> str:
    """The markdown table of a report: ``cells(row)`` for each measured row, dashes for a failed one."""
    return markdown_table(headers, [[r["model"]] + ["-"] * (len(headers) - 1) if "error" in r else cells(r)
                                    for r in rows])


def mfu_cell(row: dict) -> str:
    return fmt(row["mfu"] * 100, ".1f") + "%" if row["mfu"] is not None else "-"


def benchmark_main(argv: list[str] | None, parse_args: Callable, run: Callable[..., dict],
                   format_report: Callable[[dict], str]) -> int:
    """Parse, run, print the report, write --json; exit 1 if any implementation failed."""
    args = parse_args(argv)
    result = run(args)
    print(format_report(result))
    if args.json:
        write_json(args.json, result)
    return 1 if any("error" in r for r in result["rows"]) else 0


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def measure_models(names: Sequence[str], prepare: Callable[[str], Prepared], device: torch.device, *,
                   windows: int, calls_per_window: int, warmup: int, interleave: bool) -> dict[str, Measured]:
    """Time every named workload (see the module docstring for the two schedules).

    A workload that raises (a reference that does not support a setting, an out-of-memory) is reported
    with its error and does not stop the others."""
    results: dict[str, Measured] = {}
    if not interleave:
        for name in names:
            reset_memory(device)
            try:
                work = prepare(name)
                timing = time_windows(work.fn, device, windows=windows, calls_per_window=calls_per_window,
                                      warmup=warmup)
                results[name] = Measured(work.info, timing, peak_memory_gib(device))
            except Exception as exc:  # noqa: BLE001 - see docstring
                results[name] = Measured({}, error=_error(exc))
            work = None  # free the model before the next one is built
            reset_memory(device)
        return results

    prepared: dict[str, Prepared] = {}
    for name in names:
        try:
            prepared[name] = prepare(name)
            for _ in range(warmup):
                prepared[name].fn()
        except Exception as exc:  # noqa: BLE001
            results[name] = Measured({}, error=_error(exc))
    seconds: dict[str, list[float]] = {name: [] for name in prepared}
    order = list(prepared)
    for w in range(windows):
        k = w % max(len(order), 1)
        for name in order[k:] + order[:k]:  # rotate, so no model always runs right after the same one
            if name in results:
                continue  # failed in an earlier window
            try:
                seconds[name] += time_windows(prepared[name].fn, device, windows=1,
                                              calls_per_window=calls_per_window, warmup=0).seconds
            except Exception as exc:  # noqa: BLE001
                results[name] = Measured({}, error=_error(exc))
    for name in prepared:
        results.setdefault(name, Measured(prepared[name].info, Timing(seconds[name], calls_per_window)))
    prepared.clear()
    reset_memory(device)
    return {name: results[name] for name in names}


# ----------------------------------------------------------------------------------------------
# FLOPs and memory
# ----------------------------------------------------------------------------------------------
def _attention_model_flops() -> dict:
    """Count every attention kernel the same way, so a FLOP count depends neither on the device nor on
    the kernel SDPA picks: forward Q K^T and P V (2 * 2 B H L S D), backward twice that.

    FlopCounterMode knows the CUDA kernels but not the CPU flash kernel, and its fused-kernel backward
    formula adds the recomputed Q K^T. Model FLOPs, the MFU numerator, leave recomputation out (PaLM's
    definition), and the math path (plain bmm) counts exactly this."""
    aten = torch.ops.aten
    forward = lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    backward = lambda g, q, k, v, *args, out_shape=None, **kwargs: 2 * sdpa_flop_count(q, k, v)
    names = {
        "_scaled_dot_product_flash_attention_for_cpu": forward,
        "_scaled_dot_product_flash_attention_for_cpu_backward": backward,
        "_scaled_dot_product_flash_attention_backward": backward,
        "_scaled_dot_product_efficient_attention_backward": backward,
        "_scaled_dot_product_cudnn_attention_backward": backward,
    }
    return {getattr(aten, name): formula for name, formula in names.items() if hasattr(aten, name)}


def count_flops(fn: Callable[[], object]) -> int:
    """Model FLOPs of one eager call of ``fn`` (matmuls, convolutions, attention; 1 multiply-add = 2 FLOPs).

    Elementwise work (norms, activations, the optimizer) is not counted: that is the MFU convention.
    Attention is counted without recomputation on every device and kernel (see _attention_model_flops)."""
    with FlopCounterMode(display=False, custom_mapping=_attention_model_flops()) as counter:
        fn()
    return int(counter.get_total_flops())


def mfu(flops_per_item: float, items_per_second: float, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return flops_per_item * items_per_second / (peak_tflops * 1e12)


def default_peak_tflops(device: torch.device, precision: str, given: float | None) -> float | None:
    if given is not None:
        return given if given > 0 else None
    # The H100 bf16 peak is only a fair denominator for bf16 work on a GPU; fp32 runs need their own.
    return H100_BF16_DENSE_TFLOPS if device.type == "cuda" and precision == "bf16" else None


def reset_memory(device: torch.device) -> None:
    """Free what the previous workload left and restart the peak counter (CUDA only)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# Command line shared by the benchmarks
# ----------------------------------------------------------------------------------------------
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_common_arguments(p: argparse.ArgumentParser, models: Sequence[str]) -> None:
    """Options every benchmark takes. Device-dependent defaults are None here, filled by finish_arguments."""
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, help="images per call (default: 128 on CUDA, 1 on CPU)")
    p.add_argument("--resolution", type=int, default=64, help="image size, a multiple of 32 (default: 64)")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile every network (in place)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark = True for every model (fixed shapes: autotuned convs)")
    p.add_argument("--windows", type=int, help="timed windows; the median is reported (default: 5 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int,
                   help="untimed calls before the windows (default: training 5 CUDA / 1 CPU steps, sampling 1 call)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction,
                   help="alternate the models' windows (default: on for CPU, off for CUDA; see benchmarks/_common)")
    p.add_argument("--threads", type=int,
                   help="CPU intra-op threads (torch.set_num_threads); 1 is the robust choice on a shared machine")
    p.add_argument("--models", default=",".join(models), help=f"comma-separated subset of {','.join(models)}")
    p.add_argument("--peak-tflops", type=float,
                   help="peak for MFU (default: 989 = H100 dense bf16 on CUDA with bf16; none on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")


def finish_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, models: Sequence[str],
                     defaults: dict[str, tuple]) -> argparse.Namespace:
    """Fill device-dependent defaults ({name: (on_cuda, on_cpu)}), validate, apply --threads/--cudnn-benchmark."""
    args.device = pick_device(args.device)
    cuda = args.device.type == "cuda"
    defaults = {"batch_size": (128, 1), "precision": ("bf16", "fp32"), "windows": (5, 3),
                "interleave": (False, True), **defaults}
    for name, (on_cuda, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    if args.resolution % 32 or args.resolution <= 0:
        p.error("--resolution must be a positive multiple of 32 (the diffusers U-Net halves it five times)")
    if min(args.batch_size, args.windows) < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error("--batch-size, --windows and --threads must be >= 1, --warmup >= 0")
    args.models = parse_models(args.models, models)
    args.peak_tflops = default_peak_tflops(args.device, args.precision, args.peak_tflops)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Same host allocator settings as the pokediff CLI, applied to every model in the run alike.
    from pokediff.env import tune_cpu_allocator

    tune_cpu_allocator()
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    return args


def common_settings(args: argparse.Namespace) -> dict:
    return {
        "batch_size": args.batch_size, "resolution": args.resolution, "precision": args.precision,
        "compile": args.compile_mode if args.compile else False, "cudnn_benchmark": args.cudnn_benchmark,
        "windows": args.windows, "warmup": args.warmup, "interleave": args.interleave,
        "peak_tflops": args.peak_tflops, "seed": args.seed,
    }


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of the first markdown table in ``text`` as dicts keyed by header (used by the tests)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return []
    cells = lambda ln: [c.strip() for c in ln.strip("|").split("|")]
    headers = cells(lines[0])
    return [dict(zip(headers, cells(ln))) for ln in lines[2:]]


def environment(device: torch.device) -> dict:
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "device": str(device),
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def describe_environment(env: dict) -> str:
    where = env.get("gpu") or f"CPU ({env['cpu_threads']} threads)"
    return f"{env['date']}  torch {env['torch']}  {where}"


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def parse_models(text: str, known: Sequence[str]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"--models: unknown {unknown or text!r}; choose from {','.join(known)}")
    return names
