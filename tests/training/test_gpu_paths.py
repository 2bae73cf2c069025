"""The GPU training options, run on a CPU through the real train(): train.precision=bf16,
train.channels_last=true, train.compile=true, and compile under torchrun (DDP, gloo).

Each test checks that the option took effect (what the U-Net saw inside its forward; that Inductor
generated code) and that the run agrees with plain fp32 eager training of the same seed within a stated
tolerance. What stays CUDA-only, and so untested here: fused AdamW (`fused=True` only on CUDA), NCCL,
cuDNN's kernels and Triton code generation (Inductor emits C++ on a CPU); bf16 autocast itself runs the
same autocast machinery on both devices, with CPU kernels.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import (
    TINY_CLI_OVERRIDES,
    fresh_compile_state,
    inductor_ran,
    shared_inductor_cache,
    tiny_model_config,
    unet_forward_calls,
    write_noise_pngs,
)
from pokediff.checkpoint import load_file, load_model
from pokediff.config import DiffusionConfig, TrainConfig
from pokediff.training.loop import train

STEPS = 6


def _images(n=6, res=16):
    return torch.randint(0, 256, (n, 3, res, res), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _train(tmp_path: Path, name: str, **options):
    # lr 1e-2: by step 2 the zero-initialised output layers have moved, so the network's output (and the
    # numerics of each option) matter for the later losses.
    cfg = TrainConfig(steps=STEPS, batch_size=4, lr=1e-2, warmup_steps=1, log_every=1, checkpoint_every=100,
                      seed=3, **options)
    return train(_images(), tiny_model_config(), DiffusionConfig(), cfg, tmp_path / name, device="cpu",
                 progress=False)


def _relative(a: list[float], b: list[float]) -> list[float]:
    return [abs(x - y) / abs(y) for x, y in zip(a, b)]


def _weights_close(a: dict, b: dict) -> bool:
    """Weights after a few AdamW steps at lr 1e-2: Adam divides by sqrt(v), so a rounding-level difference in
    a near-zero gradient can move a weight by up to ~lr; 5e-4 absolute is 1/20 of that (measured ~1e-4)."""
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=5e-4) for k in a)


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp32")
    with unet_forward_calls() as calls:
        result = _train(tmp, "fp32")
    assert calls and not any(c["autocast"] for c in calls)  # the reference really is plain fp32
    assert all(c["output_dtype"] == torch.float32 for c in calls)
    return result


def test_bf16_runs_the_forward_under_bf16_autocast_and_stays_near_fp32(tmp_path, fp32_run):
    with unet_forward_calls() as calls:
        bf16 = _train(tmp_path, "bf16", precision="bf16")
    assert len(calls) == STEPS
    assert all(c["autocast"] and c["autocast_dtype"] == torch.bfloat16 for c in calls)
    assert all(c["input_dtype"] == torch.float32 and c["output_dtype"] == torch.bfloat16 for c in calls)
    assert all(math.isfinite(v) for v in bf16.losses)
    # Tolerance: 2 % per step (bf16 keeps 8 significant bits, ~0.4 % per rounding; measured here at most
    # 0.6 %, at step 5). The losses must differ somewhere, or the forward did not run in bf16 at all.
    assert max(_relative(bf16.losses, fp32_run.losses)) < 0.02, (bf16.losses, fp32_run.losses)
    assert bf16.losses != fp32_run.losses
    # Weights and EMA stay float32 (autocast casts per op; the model file is what sampling loads).
    model, *_ = load_model(bf16.model_file)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_channels_last_trains_in_channels_last_and_matches_the_default_layout(tmp_path, fp32_run):
    with unet_forward_calls() as calls:
        cl = _train(tmp_path, "channels_last", channels_last=True)
    assert len(calls) == STEPS
    assert all(c["x_channels_last"] and c["weights_channels_last"] for c in calls)
    # The same math in another memory layout: only the convolution kernels' summation order differs.
    assert max(_relative(cl.losses, fp32_run.losses)) < 1e-4
    assert _weights_close(load_file(cl.model_file)["ema"], load_file(fp32_run.model_file)["ema"])
    # Saved weights are plain contiguous tensors: a channels_last run's model file loads like any other.
    model, *_ = load_model(cl.model_file)
    assert not any(p.dim() == 4 and p.shape[-1] > 1 and not p.is_contiguous() for p in model.parameters())


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory) -> Path:
    return shared_inductor_cache(tmp_path_factory)


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tmp_path, fp32_run, inductor_cache):
    with fresh_compile_state(inductor_cache) as counters:
        compiled = _train(tmp_path, "compiled", compile=True)
    # Dynamo captured the U-Net (forward and, through AOTAutograd, backward) and Inductor compiled it.
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    assert inductor_ran(counters), dict(counters["inductor"])
    assert max(_relative(compiled.losses, fp32_run.losses)) < 1e-4
    # The checkpoint holds the raw module's weights (no torch.compile "_orig_mod." prefix): it loads.
    model, *_ = load_model(compiled.model_file)
    assert _weights_close(model.state_dict(), load_file(fp32_run.model_file)["ema"])


# ----------------------------------------------------------------------------------------------
# DDP + compile: torchrun, two CPU processes (gloo)
# ----------------------------------------------------------------------------------------------
DDP_OVERRIDES = ["-S", "train.batch_size=8", "-S", f"train.steps={STEPS}", "-S", "train.warmup_steps=1",
                 "-S", "train.log_every=1", "-S", "train.checkpoint_every=100", "-S", "train.lr=1e-2",
                 "-S", "train.seed=7", "-S", "model.dropout=0"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return write_noise_pngs(tmp_path_factory.mktemp("pngs"), 8, seed=1)


def _train_cli(out_dir: Path, image_dir: Path, extra: list[str], torchrun: bool,
               env: dict) -> tuple[list[dict], str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                if torchrun else [sys.executable])
    cmd = [*launcher, "-m", "pokediff", "train", "--data", str(image_dir), "--out-dir", str(out_dir),
           "--params", "none", "--device", "cpu", "--no-progress", "--no-track", *TINY_CLI_OVERRIDES,
           *DDP_OVERRIDES, *extra]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, cwd=out_dir.parent,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    with (out_dir / "train_log.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)], proc.stderr


@pytest.mark.slow
def test_ddp_with_compile_matches_single_process_eager(tmp_path, image_dir, inductor_cache):
    """DDP wraps the U-Net, then torch.compile wraps DDP (Dynamo's DDPOptimizer splits the graph at the
    gradient buckets). Two compiled ranks must train like one eager process on the same global batch."""
    eager, _ = _train_cli(tmp_path / "single", image_dir, [], torchrun=False, env={})
    ddp, log = _train_cli(tmp_path / "ddp", image_dir, ["-S", "train.compile=true"], torchrun=True,
                          env={"TORCHINDUCTOR_CACHE_DIR": str(inductor_cache), "TORCH_LOGS": "dynamo"})
    # Dynamo's INFO log: each rank traced the DDP-wrapped U-Net's forward (whether Inductor then compiled
    # it or found it in the shared cache).
    assert log.count("torchdynamo done tracing forward") >= 2, log[-3000:]
    assert [r["step"] for r in ddp] == list(range(1, STEPS + 1))
    # gradient all-reduce and fused kernels change float summation order only
    np.testing.assert_allclose([r["loss"] for r in ddp], [r["loss"] for r in eager], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([r["grad_norm"] for r in ddp], [r["grad_norm"] for r in eager], rtol=1e-3)
    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    assert _weights_close(a["ema"], b["ema"])


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA: precision=auto means bf16 only on CUDA, and TrainStep's fused AdamW and "
                           "cuDNN kernels exist only there (the CPU tests above run the same code with CPU kernels)")
def test_on_cuda_auto_precision_is_bf16_and_training_stays_finite(tmp_path):
    cfg = TrainConfig(steps=STEPS, batch_size=4, lr=1e-2, warmup_steps=1, log_every=1, checkpoint_every=100, seed=3)
    with unet_forward_calls() as calls:
        result = train(_images(), tiny_model_config(), DiffusionConfig(), cfg, tmp_path, device="cuda",
                       progress=False)
    assert all(c["autocast"] and c["autocast_dtype"] == torch.bfloat16 for c in calls)
    assert all(math.isfinite(v) for v in result.losses)
