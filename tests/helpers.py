"""Small builders shared by tests (import as ``from helpers import ...``; tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn


def tiny_model_config(**overrides):
    """A U-Net of a few hundred thousand parameters on 16x16 images: fast on a 2-core CPU."""
    from pokediff.config import ModelConfig

    base = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                head_channels=8, dropout=0.0, resolution=16, groups=8)
    base.update(overrides)
    return ModelConfig(**base)


def write_noise_pngs(folder: Path, count: int, *, seed: int = 0, size: int = 16, high: int = 256,
                     name: str = "img{}.png") -> Path:
    """``count`` RGB PNGs of uniform noise (size x size) in ``folder``: a dataset for CLI tests of the tiny
    model (the same seed gives the same files)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, high, (size, size, 3), dtype=np.uint8)).save(folder / name.format(i))
    return folder


# `pokediff` overrides for the tiny model above (16x16 images), for CLI tests
TINY_CLI_OVERRIDES = ["-S", "model.base_channels=16", "-S", "model.channel_mults=[1,2]", "-S", "model.num_res_blocks=1",
                      "-S", "model.attention_resolutions=[8]", "-S", "model.head_channels=8", "-S", "model.groups=8",
                      "-S", "model.resolution=16", "-S", "data.resolution=16"]


class PicklePayload:
    """Unpickling this runs code: it writes ``marker`` (as a real attack would run anything)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


# ----------------------------------------------------------------------------------------------
# Observing the GPU code paths on a CPU: what the U-Net saw inside its forward (autocast state, memory
# formats, output dtype) and whether torch.compile really compiled (tests/*/test_*gpu_paths.py)
# ----------------------------------------------------------------------------------------------
def _first_spatial_conv(module: nn.Module) -> nn.Conv2d:
    # a 3x3 kernel: for a 1x1 one, channels_last and contiguous are the same layout
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))


def _channels_last(t: torch.Tensor) -> bool:
    """Strictly channels_last: (N, C, H, W) with C, H, W > 1 cannot be both this and contiguous."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@contextlib.contextmanager
def unet_forward_calls():
    """Record, for every UNet forward in the block (eager only: a compiled forward runs no Python hooks):
    autocast on and its dtype for the input's device, x_t and the weights in channels_last, output dtype."""
    from pokediff.models import UNet

    calls: list[dict] = []

    def before(module: nn.Module, args: tuple) -> None:
        if isinstance(module, UNet):
            x = args[0]
            calls.append({
                "autocast": torch.is_autocast_enabled(x.device.type),
                "autocast_dtype": torch.get_autocast_dtype(x.device.type),
                "input_dtype": x.dtype,
                "x_channels_last": _channels_last(x),
                "weights_channels_last": _channels_last(_first_spatial_conv(module).weight),
            })

    def after(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(module, UNet):
            calls[-1]["output_dtype"] = output.dtype

    handles = [nn.modules.module.register_module_forward_pre_hook(before),
               nn.modules.module.register_module_forward_hook(after)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def shared_inductor_cache(tmp_path_factory) -> Path:
    """One Inductor cache for every compile test of the session: they compile the same tiny U-Net at the
    same shapes, so later tests reuse the C++ kernels (and graphs) the first one built. On a 2-core CPU
    a cold compile of its training step takes 1.5 to 4 minutes, a warm one a fraction of that."""
    return tmp_path_factory.getbasetemp() / "inductor-cache"


@contextlib.contextmanager
def fresh_compile_state(cache_dir: Path):
    """Empty Dynamo caches and counters, Inductor's output under ``cache_dir``; yields Dynamo's counters.

    Proof that a call compiled: counters["stats"]["unique_graphs"] (Dynamo captured a graph) and
    inductor_ran(counters) (Inductor compiled it or found it in its cache; an eager fallback does neither)."""
    import os

    import torch._dynamo
    from torch._dynamo.utils import counters

    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    torch._dynamo.reset()
    counters.clear()
    try:
        yield counters
    finally:
        torch._dynamo.reset()
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def inductor_ran(counters) -> bool:
    return counters["inductor"]["fxgraph_cache_miss"] + counters["inductor"]["fxgraph_cache_hit"] > 0
