import pytest
import torch

from helpers import tiny_model_config
from pokediff.config import ModelConfig
from pokediff.models import UNet, count_parameters, timestep_embedding


def _randomise_zero_inits(model: torch.nn.Module) -> None:
    """Zero-initialised output layers make every block the identity at init; perturb them so the
    tests below see a generic network."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("overrides", [
    {},
    {"channel_mults": (1, 2, 3), "num_res_blocks": 2, "attention_resolutions": (4, 8)},
    {"in_channels": 1, "resolution": 8, "channel_mults": (1,)},
])
def test_output_has_the_input_shape(overrides):
    cfg = tiny_model_config(**overrides)
    model = UNet(cfg)
    x = torch.randn(3, cfg.in_channels, cfg.resolution, cfg.resolution)
    assert model(x, torch.tensor([0, 10, 999])).shape == x.shape


def test_zero_initialised_output_starts_at_zero(tiny_model_cfg):
    model = UNet(tiny_model_cfg)
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))
    assert torch.count_nonzero(out) == 0


def test_time_conditioning_changes_the_output(tiny_model_cfg):
    model = UNet(tiny_model_cfg).eval()
    _randomise_zero_inits(model)
    x = torch.randn(2, 3, 16, 16).repeat(2, 1, 1, 1)
    out = model(x, torch.tensor([5, 5, 700, 700]))
    assert torch.allclose(out[0], model(x[:1], torch.tensor([5]))[0], atol=1e-5)
    assert (out[:2] - out[2:]).abs().mean() > 1e-3


def test_gradients_reach_every_parameter(tiny_model_cfg):
    model = UNet(tiny_model_cfg)
    _randomise_zero_inits(model)
    x, t = torch.randn(4, 3, 16, 16), torch.randint(0, 1000, (4,))
    model(x, t).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"no gradient for {missing}"


def test_attention_is_placed_at_the_configured_resolutions():
    cfg = tiny_model_config(resolution=32, channel_mults=(1, 2, 2), attention_resolutions=(16,))
    model = UNet(cfg)
    n_attn = sum(type(m).__name__ == "AttentionBlock" for m in model.modules())
    # one per encoder block at 16x16, one per decoder block at 16x16 (num_res_blocks + 1), one in the middle
    assert n_attn == cfg.num_res_blocks + (cfg.num_res_blocks + 1) + 1


def test_default_unet_size():
    model = UNet(ModelConfig())
    level_widths = [level.blocks[-1].conv1.out_channels for level in model.down_levels]
    assert level_widths == [64, 128, 256, 512] and model.mid1.conv1.out_channels == 512
    assert 30e6 < count_parameters(model) < 80e6


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert float(emb[1, 0]) == pytest.approx(torch.cos(torch.tensor(3.0)).item(), abs=1e-6)


def test_bad_model_config_names_the_problem():
    expected = r"resolution 20 must be divisible by 2\*\*\(len\(channel_mults\)-1\) = 8"
    with pytest.raises(ValueError, match=expected):
        ModelConfig(resolution=20, channel_mults=(1, 2, 2, 2))
