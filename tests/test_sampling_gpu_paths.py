"""The GPU sampling options, run on a CPU through the real generate() and `pokediff sample`: bf16 autocast
around the network, channels_last, torch.compile of the network call (and all three together, as a GPU
would run them). Each test checks that the option took effect and that the images agree with plain
fp32 eager sampling of the same seed within a stated tolerance.

CUDA-only and so untested here: cuDNN/Triton kernels and CUDA graphs (compile modes reduce-overhead and
max-autotune capture CUDA graphs; on a CPU they fall back to the default mode's code).
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import fresh_compile_state, inductor_ran, shared_inductor_cache, tiny_model_config, unet_forward_calls
from pokediff.config import DiffusionConfig, SampleConfig
from pokediff.generation import generate
from pokediff.models import UNet

STEPS = 4


@pytest.fixture(scope="module")
def model() -> UNet:
    """A tiny U-Net whose zero-initialised output layers are perturbed, so its prediction (and every
    sampler step) is non-trivial: an untrained U-Net predicts exactly 0."""
    torch.manual_seed(0)
    net = UNet(tiny_model_config()).eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net


def _generate(model: UNet, sampler: str = "ddim", **options) -> torch.Tensor:
    cfg = SampleConfig(sampler=sampler, steps=STEPS, num_images=6, batch_size=3, seed=1)
    # A fresh copy each time: channels_last converts the model's weights in place.
    net = UNet(model.config).eval()
    net.load_state_dict(model.state_dict())
    return generate(net, DiffusionConfig(), cfg, steps=STEPS, **options).images.int()  # uint8 (6, 3, 16, 16)


@pytest.fixture(scope="module")
def fp32_images(model):
    with unet_forward_calls() as calls:
        images = _generate(model)
    assert calls and not any(c["autocast"] or c["x_channels_last"] for c in calls)  # "auto" on a CPU: fp32
    return images


def _max_level_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a - b).abs().max())


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_bf16_sampling_runs_the_network_under_bf16_autocast(model, fp32_images, sampler):
    with unet_forward_calls() as calls:
        bf16 = _generate(model, sampler, precision="bf16")
    assert len(calls) == 2 * STEPS  # 2 batches x STEPS network calls
    assert all(c["autocast"] and c["autocast_dtype"] == torch.bfloat16 for c in calls)
    assert all(c["output_dtype"] == torch.bfloat16 for c in calls)
    if sampler == "ddim":
        # 8 significant bits in each network output; the sampler's own arithmetic stays float32. Measured:
        # at most 3 of 255 levels apart, on average 0.3 (torch 2.14, this model and seed); the bounds leave
        # room for other kernels, and the two must differ.
        assert _max_level_difference(bf16, fp32_images) <= 12
        assert (bf16 - fp32_images).abs().float().mean() < 2.0
        assert not torch.equal(bf16, fp32_images)


def test_channels_last_sampling_feeds_the_network_channels_last(model, fp32_images):
    with unet_forward_calls() as calls:
        images = _generate(model, channels_last=True)
    assert len(calls) == 2 * STEPS
    assert all(c["x_channels_last"] and c["weights_channels_last"] for c in calls)
    assert _max_level_difference(images, fp32_images) <= 1  # the same math, another summation order


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    return shared_inductor_cache(tmp_path_factory)


@pytest.mark.slow
def test_compiled_sampling_compiles_once_and_matches_eager(model, inductor_cache):
    """The GPU configuration: bf16 autocast + channels_last + torch.compile, against the same eagerly."""
    gpu_options = dict(precision="bf16", channels_last=True)
    eager = _generate(model, **gpu_options)
    with fresh_compile_state(inductor_cache) as counters:
        compiled = _generate(model, compile=True, **gpu_options)
    assert inductor_ran(counters), dict(counters["inductor"])
    # One graph for all 2 x STEPS calls: t goes in as a tensor, so the timestep does not recompile.
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    # Inductor's fused kernels keep some bf16 intermediates in float32 where eager autocast rounds them:
    # as far apart as bf16 and fp32 are (measured: at most 3 levels), so the same bounds as that test.
    assert _max_level_difference(compiled, eager) <= 12
    assert (compiled - eager).abs().float().mean() < 2.0


def test_cli_sample_options_reach_the_sampler(tmp_path):
    """`pokediff sample --precision bf16 --channels-last`: recorded in sample_info.json, and the network
    really ran that way."""
    from pokediff.checkpoint import save_model_file
    from pokediff.cli import main

    torch.manual_seed(0)
    net = UNet(tiny_model_config())
    ckpt = save_model_file(tmp_path / "model.safetensors", net.state_dict(), net.state_dict(), tiny_model_config(),
                           DiffusionConfig(), step=1)
    with unet_forward_calls() as calls:
        code = main(["sample", "--params", "none", "--checkpoint", str(ckpt), "--device", "cpu", "--num-images", "2",
                     "--steps", "2", "--out", str(tmp_path / "grid.png"), "--precision", "bf16", "--channels-last"])
    assert code == 0
    assert calls and all(c["autocast_dtype"] == torch.bfloat16 and c["x_channels_last"] for c in calls)
    info = json.loads((tmp_path / "sample_info.json").read_text())
    assert (info["precision"], info["channels_last"], info["compile"]) == ("bf16", True, False)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA: precision=auto is bf16 only on CUDA (on a CPU it is fp32, tested above)")
def test_on_cuda_auto_precision_samples_under_bf16(model):
    net = UNet(model.config).eval().cuda()
    net.load_state_dict(model.state_dict())
    with unet_forward_calls() as calls:
        generate(net, DiffusionConfig(), SampleConfig(steps=STEPS, num_images=2, batch_size=2), steps=STEPS)
    assert calls and all(c["autocast_dtype"] == torch.bfloat16 and c["autocast"] for c in calls)
