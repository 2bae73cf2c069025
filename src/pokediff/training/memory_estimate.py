"""Will this training run fit in memory? Estimated from the config before anything is allocated.

    need = weights + activations + data
    weights     = 20 bytes x parameters: fp32 weights, gradients, AdamW exp_avg and exp_avg_sq, EMA copy
    activations = ACTIVATION_FACTOR[device] x (bytes of every tensor the forward pass produces), for the
                  per-process batch; counted by running the U-Net on the "meta" device (shapes only,
                  nothing allocated) with batch 1 and scaling by the batch (every op is per-sample)
    data        = the uint8 training set, held on the device (N x 3 x R x R bytes; small)

The activation factor is calibrated against the real peak RSS of `pokediff train` on CPU (see
ACTIVATION_FACTOR); autograd keeps most forward outputs for the backward pass, and the backward pass
adds its own gradient buffers on top. On CUDA the forward runs under bf16 autocast, so most saved
activations are half the size (uncalibrated: no GPU was available to measure it).

``check_training_fits`` compares ``need`` with what the device has free (psutil's "available" on CPU,
``torch.cuda.mem_get_info`` on CUDA) and raises ``InsufficientMemoryError`` naming the keys to change:
an out-of-memory kill after minutes becomes a one-line message within seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from pokediff.config import ModelConfig, TrainConfig
from pokediff.errors import PokediffError
from pokediff.models import UNet

# Bytes per parameter that live for the whole run: weight, gradient, AdamW's two moments, EMA copy.
BYTES_PER_PARAMETER = 5 * 4
# Peak activation memory / bytes produced by one fp32 forward pass. CPU: fitted to the peak RSS of real
# training steps of 4 U-Nets (0.2 M to 64.6 M parameters, batch 8 to 64): the per-image slope was 1.06x
# (1.6 M model) to 1.10x (64.6 M) the forward bytes counted here (the backward pass holds gradient
# buffers while the activations are freed); 1.2 keeps the estimate above every measurement. CUDA runs
# under bf16 autocast, so most saved activations are half size; 0.8 is a conservative guess, not a
# measurement (no GPU was available).
ACTIVATION_FACTOR = {"cpu": 1.2, "cuda": 0.8}
# Fixed cost of a training process beyond its tensors: allocator slack, kernels' scratch space, the
# checkpoint writer (CPU: fitted with the factor above; CUDA: context and cuDNN workspace, a guess).
OVERHEAD_BYTES = {"cpu": 200 << 20, "cuda": 1 << 30}
# Keep this share of the free memory for everything else on the machine.
SAFETY_FRACTION = 0.9

SMALL_CONFIG = Path("configs") / "cpu-small.yaml"  # the small CPU configuration (the Makefile's main job)


class InsufficientMemoryError(PokediffError):
    """The configured model x batch needs more memory than the device has free."""


@dataclass(frozen=True)
class MemoryEstimate:
    device: str  # "cpu" or "cuda"
    parameters: int
    batch_per_process: int
    weights_bytes: int
    activation_bytes: int
    data_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.data_bytes + self.overhead_bytes


def _meta_unet(model_cfg: ModelConfig) -> torch.nn.Module:
    with torch.device("meta"):  # parameters have shapes but no storage: a 64.6 M model in ~50 ms
        return UNet(model_cfg)


def count_config_parameters(model_cfg: ModelConfig) -> int:
    """Parameters of ``UNet(model_cfg)``, counted without allocating them."""
    return sum(p.numel() for p in _meta_unet(model_cfg).parameters())


class _CountOutputs(TorchDispatchMode):
    """Sums the bytes of every new tensor an op returns (views and in-place ops allocate nothing)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and not func._schema.is_mutable:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


class _FusedAttention(TorchFunctionMode):
    """On a real device scaled_dot_product_attention runs a fused (flash / memory-efficient) kernel
    that keeps the output (B, heads, L, D) and a log-sum-exp (B, heads, L), never the (L, L) matrix
    that the meta device's reference path would build: count it that way."""

    def __init__(self, counter: _CountOutputs):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, v = args[0], args[2]
            out = torch.empty((*q.shape[:-1], v.shape[-1]), device=q.device, dtype=q.dtype)
            self.counter.bytes += out.numel() * out.element_size() + q[..., 0].numel() * 4
            return out
        return func(*args, **(kwargs or {}))


def forward_bytes_per_sample(model_cfg: ModelConfig) -> int:
    """Bytes of all tensors one fp32 training forward pass produces for one image: UNet.forward itself
    runs on the "meta" device (shapes only, nothing allocated) under a counter of every op's outputs,
    so the count follows the network whatever unet.py becomes. Costs 0.1 s (small CPU configuration)
    to 0.3 s (the 64.6 M-parameter recipe) after torch's first-use imports, which training pays anyway."""
    model = _meta_unet(model_cfg)
    R = model_cfg.resolution
    x = torch.empty(1, model_cfg.in_channels, R, R, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    counter = _CountOutputs()
    with _FusedAttention(counter), counter:
        model.train()(x, t)
    return counter.bytes


def estimate_training_memory(model_cfg: ModelConfig, train_cfg: TrainConfig, device: str | torch.device,
                             world_size: int = 1, num_images: int = 0) -> MemoryEstimate:
    """Peak memory one training process needs on ``device`` (the per-process batch is batch / world)."""
    kind = torch.device(device).type
    kind = kind if kind in ACTIVATION_FACTOR else "cpu"
    batch = max(1, train_cfg.batch_size // max(1, world_size))
    parameters = count_config_parameters(model_cfg)
    activations = ACTIVATION_FACTOR[kind] * forward_bytes_per_sample(model_cfg) * batch
    return MemoryEstimate(
        device=kind, parameters=parameters, batch_per_process=batch,
        weights_bytes=BYTES_PER_PARAMETER * parameters, activation_bytes=int(activations),
        data_bytes=num_images * model_cfg.in_channels * model_cfg.resolution ** 2,
        overhead_bytes=OVERHEAD_BYTES[kind],
    )


def available_memory(device: str | torch.device) -> int:
    """Bytes free for this process: the host's "available" memory on CPU, the GPU's free memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:  # under torchrun each rank trains on cuda:LOCAL_RANK
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    free = int(psutil.virtual_memory().available)
    limited = _cgroup_free()
    return free if limited is None else min(free, limited)


def _cgroup_free() -> int | None:
    """Memory left under this container's cgroup limit (psutil reports the host's), or None without one.
    Page cache that the kernel can drop (inactive files) counts as free."""
    for limit_file, usage_file, stat_file, cache_key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat",
         "total_inactive_file"),  # cgroup v1
    ):
        root = Path("/sys/fs/cgroup")
        try:
            limit_text = (root / limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 1 << 60:  # no limit
                return None
            usage = int((root / usage_file).read_text())
            cache = 0
            for line in (root / stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
            return max(0, int(limit_text) - (usage - cache))
        except (OSError, ValueError):
            continue
    return None


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def check_training_fits(model_cfg: ModelConfig, train_cfg: TrainConfig, device: str | torch.device,
                        world_size: int = 1, processes_on_device: int = 1,
                        available: int | None = None) -> MemoryEstimate:
    """Raise InsufficientMemoryError when the run cannot fit; return the estimate otherwise.

    processes_on_device: training processes sharing this memory (torchrun on CPU: all local ranks)."""
    estimate = estimate_training_memory(model_cfg, train_cfg, device, world_size)
    free = available_memory(device) if available is None else available
    need = estimate.total_bytes * processes_on_device
    if need <= SAFETY_FRACTION * free:
        return estimate
    small = SMALL_CONFIG if SMALL_CONFIG.exists() else _project_small_config()
    per = f" per process x {processes_on_device}" if processes_on_device > 1 else ""
    raise InsufficientMemoryError(
        f"this training run needs about {_gib(need)} on {estimate.device}{per} "
        f"({estimate.parameters / 1e6:.1f} M-parameter U-Net, batch {estimate.batch_per_process} at "
        f"{model_cfg.resolution}x{model_cfg.resolution}: {_gib(estimate.activation_bytes)} of activations) "
        f"but {_gib(free)} is free; lower train.batch_size, or model.base_channels / model.channel_mults / "
        f"model.num_res_blocks / model.attention_resolutions, or use the small CPU configuration: "
        f"--overlay {small} (--no-memory-check to try anyway)"
    )


def _project_small_config() -> Path:
    """configs/cpu-small.yaml of the source checkout this package runs from (editable install)."""
    candidate = Path(__file__).resolve().parents[3] / SMALL_CONFIG
    if candidate.exists():
        try:
            return candidate.relative_to(Path.cwd())
        except ValueError:
            return candidate
    return SMALL_CONFIG


def processes_sharing_memory(device: str | torch.device) -> int:
    """Training processes on this host that share ``device``'s memory: all local torchrun ranks on CPU,
    one per GPU on CUDA."""
    if torch.device(device).type == "cuda":
        return 1
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
