"""Training fits the machine: the memory estimate, its calibration against real peak RSS, the refusal."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import tiny_model_config
from pokediff.config import ModelConfig, Params, TrainConfig, load_params, overlay_overrides
from pokediff.models import UNet
from pokediff.models import count_parameters as count_allocated
from pokediff.training.memory_estimate import (
    InsufficientMemoryError,
    check_training_fits,
    count_config_parameters,
    estimate_training_memory,
    forward_bytes_per_sample,
)

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "configs" / "cpu-small.yaml"
GIB = 1 << 30

CONFIGS = {
    "default": ModelConfig(),
    "cpu-small": load_params("none", overlay_overrides(SMALL)).model,
    "tiny": tiny_model_config(),
    "mid": ModelConfig(base_channels=64, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                       head_channels=32),
}


@pytest.mark.parametrize("name", ["cpu-small", "tiny", "mid"])
def test_parameters_are_counted_without_allocating(name):
    assert count_config_parameters(CONFIGS[name]) == count_allocated(UNet(CONFIGS[name]))


def test_default_recipe_is_counted_from_its_config():
    assert count_config_parameters(ModelConfig()) == 64_648_003  # the README's 64.6 M


@pytest.mark.parametrize("name", ["tiny", "cpu-small"])
def test_the_meta_count_equals_the_count_of_a_real_forward_pass(name):
    """The estimate traces UNet.forward on the "meta" device; the same counters over a real CPU forward
    (real tensors, real kernels) see the same bytes, so nothing is lost by never allocating."""
    import torch

    from pokediff.training.memory_estimate import _CountOutputs, _FusedAttention

    cfg = CONFIGS[name]
    model, counter = UNet(cfg).train(), _CountOutputs()
    x, t = torch.zeros(1, cfg.in_channels, cfg.resolution, cfg.resolution), torch.zeros(1, dtype=torch.long)
    with _FusedAttention(counter), counter:
        model(x, t)
    assert forward_bytes_per_sample(cfg) == counter.bytes


def test_the_count_follows_the_network_it_traces():
    # Twice the channels: every feature map doubles (attention's per-head log-sum-exp does not).
    small, wide = CONFIGS["tiny"], CONFIGS["tiny"].model_copy(update={"base_channels": 32, "head_channels": 16})
    assert 1.9 < forward_bytes_per_sample(wide) / forward_bytes_per_sample(small) < 2.0
    # One more residual block per level: more bytes; no attention at 8x8: fewer.
    assert forward_bytes_per_sample(small.model_copy(update={"num_res_blocks": 2})) > forward_bytes_per_sample(small)
    assert forward_bytes_per_sample(small.model_copy(update={"attention_resolutions": ()})) < \
        forward_bytes_per_sample(small)


def test_the_default_recipe_does_not_fit_a_24_gb_cpu_and_the_message_says_what_to_change():
    # The machine: 24 GB in all (the recipe was OOM-killed there), so at most that is free.
    params = Params()
    with pytest.raises(InsufficientMemoryError) as info:
        check_training_fits(params.model, params.train, "cpu", available=24 * 10**9)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    for part in ("64.6 M-parameter U-Net", "batch 128", "train.batch_size", "model.base_channels",
                 "configs/cpu-small.yaml"):
        assert part in message, (part, message)


def test_the_small_cpu_configuration_fits_in_2_gib():
    params = load_params("none", overlay_overrides(SMALL))
    estimate = check_training_fits(params.model, params.train, "cpu", available=2 * GIB)
    assert estimate.total_bytes < 1.5 * GIB


def test_torchrun_on_one_host_splits_the_batch_but_multiplies_the_processes():
    params = load_params("none", overlay_overrides(SMALL))
    one = estimate_training_memory(params.model, params.train, "cpu")
    four = estimate_training_memory(params.model, params.train, "cpu", world_size=4)
    assert four.batch_per_process == 4 and four.activation_bytes < one.activation_bytes
    with pytest.raises(InsufficientMemoryError, match="per process x 4"):
        check_training_fits(params.model, params.train, "cpu", world_size=4, processes_on_device=4,
                            available=int(3 * four.total_bytes))


MEASURE = textwrap.dedent("""
    import json, sys
    import psutil, torch
    from pokediff import env
    env.tune_cpu_allocator()  # as the CLI does
    from pokediff.config import DiffusionConfig, ModelConfig, TrainConfig
    from pokediff.training.loop import train
    torch.set_num_threads(2)
    model, batch = ModelConfig(**json.loads(sys.argv[1])), int(sys.argv[2])
    images = torch.randint(0, 255, (64, 3, model.resolution, model.resolution), dtype=torch.uint8)
    before = psutil.Process().memory_info().rss
    cfg = TrainConfig(steps=2, batch_size=batch, warmup_steps=0, log_every=1, checkpoint_every=1000)
    train(images, model, DiffusionConfig(), cfg, sys.argv[3], device="cpu", progress=False)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent that forked us (pytest, GBs by
    # the end of the suite), while VmHWM is this process's own high-water mark since exec.
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) * 1024 - before)
""")


def test_the_estimate_matches_the_measured_peak_rss_of_real_training(tmp_path):
    # Two real CPU training steps of the small CPU configuration at batch 16 (~1 GB).
    model = CONFIGS["cpu-small"]
    r = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(model.model_dump(mode="json")), "16",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    measured = int(r.stdout.split()[-1])
    estimate = estimate_training_memory(model, TrainConfig(batch_size=16), "cpu").total_bytes
    assert 0.8 < estimate / measured < 1.35, (estimate, measured)


def test_default_recipe_on_cpu_stops_at_once_with_the_message(tmp_path):
    # The README's "train by hand" command with the project's params.yaml (the GPU recipe) on a CPU.
    import psutil

    params = load_params(ROOT / "params.yaml")
    need = estimate_training_memory(params.model, params.train, "cpu").total_bytes
    if need < 0.9 * psutil.virtual_memory().available:
        pytest.skip("this machine has the memory for the GPU recipe on CPU")
    (tmp_path / "imgs").mkdir()
    # A wrapper process reports the peak RSS of its one child (this process has had bigger children).
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(r.stderr); print(r.returncode, time.perf_counter() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "pokediff", "train", "--params",
                        str(ROOT / "params.yaml"), "--data", "imgs", "--steps", "20", "--device", "cpu",
                        "--out-dir", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    code, seconds, peak_kib = r.stdout.split()
    assert int(code) == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "train.batch_size" in r.stderr and "cpu-small.yaml" in r.stderr
    assert float(seconds) < 30 and not (tmp_path / "run").exists()
    # Nothing big allocated: the refusal costs little more than importing torch, whose shared libraries
    # alone are 650-900 MiB of RSS depending on the page cache, so the reference is a process that only
    # imports torch, measured the same way now. The recipe would need ~27 GiB.
    ref = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-c", "import torch"],
                         capture_output=True, text=True, timeout=120)
    ref_kib = int(ref.stdout.split()[2])
    extra_mib = (int(peak_kib) - ref_kib) // 1024
    assert extra_mib < 512, f"peak RSS {int(peak_kib) // 1024} MiB, {extra_mib} MiB above importing torch"


@pytest.mark.slow
def test_train_check_reports_what_it_checked_and_trains_nothing(tmp_path):
    """`pokediff train --check`, the Prefect flow's preflight: params, the memory estimate and the MLflow
    store, then exit; a recipe that cannot fit is the memory check's one line (exit 1), and a tracking
    server that does not answer is one line naming it."""
    def check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pokediff", "train", "--check", "--params", "none",
                               "--overlay", str(SMALL), *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env if env is not None else _without_tracking_uri())

    (tmp_path / "params.yaml").write_text("{}\n")  # a project root: the store is tmp_path/mlruns
    r = check()
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pokediff train --check: params valid (600 steps x batch 16); needs about "), r.stdout
    assert f"MLflow store sqlite:///{tmp_path}/mlruns/mlflow.db answers" in r.stdout
    assert not (tmp_path / "outputs").exists()  # nothing trained, nothing written but the store

    r = check("-S", "train.batch_size=65536", "--no-track")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "needs about" in r.stderr and "batch 65536" in r.stderr

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = check(env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert r.returncode == 1 and f"MLflow store http://127.0.0.1:{port} not reachable" in r.stderr, r.stderr


def _without_tracking_uri() -> dict[str, str]:
    """This process's environment without MLFLOW_TRACKING_URI: the check must find the project's own store
    whatever the shell running the tests has configured (leaks between tests are put back by conftest)."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
