"""The type-conditional U-Net: the label path, the null label, and unconditional files made before it existed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_model_config
from pokediff.checkpoint import load_model, save_model_file
from pokediff.config import DiffusionConfig
from pokediff.models import UNet
from pokediff.pokemon_types import NUM_TYPES, multi_hot

GOLDEN = Path(__file__).parent / "golden"


def test_unconditional_file_made_by_the_previous_code_loads_and_gives_the_same_output() -> None:
    """unconditional-629bb64.safetensors and its output were written by main's code at 629bb64."""
    model, cfg, _, step = load_model(GOLDEN / "unconditional-629bb64.safetensors", use_ema=False)
    io = load_file(GOLDEN / "unconditional-629bb64.io.safetensors")
    assert cfg.condition == "none" and step == 7 and not hasattr(model, "label_emb")
    with torch.no_grad():
        torch.testing.assert_close(model(io["x"], io["t"]), io["out"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unconditional"):
        model(io["x"], io["t"], torch.zeros(2, NUM_TYPES))


def test_unconditional_state_dict_keys_are_unchanged_and_conditional_adds_one_table() -> None:
    plain = UNet(tiny_model_config()).state_dict()
    golden = load_file(GOLDEN / "unconditional-629bb64.safetensors")
    assert not any(k.startswith("label_emb") for k in plain)
    assert {k.removeprefix("model.") for k in golden} == set(plain)  # the same keys as the previous code wrote
    conditional = UNet(tiny_model_config(condition="type")).state_dict()
    assert set(conditional) - set(plain) == {"label_emb.weight"}
    assert conditional["label_emb.weight"].shape == (NUM_TYPES + 1, 4 * 16)  # null row + one per type


def test_labels_change_the_output_and_the_null_label_is_the_default(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNet(tiny_model_config(condition="type")).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output layers would hide every input
            if not p.abs().sum():
                p.normal_(0, 0.05)
    x, t = torch.randn(1, 3, 16, 16).repeat(4, 1, 1, 1), torch.full((4,), 500)
    labels = torch.tensor([multi_hot(("fire",)), multi_hot(("water",)), multi_hot(("fire", "flying")), [0] * NUM_TYPES])
    with torch.no_grad():
        out = model(x, t, labels)
        default = model(x[:1], t[:1])
    assert all((out[i] - out[j]).abs().max() > 1e-4 for i in range(4) for j in range(i))
    torch.testing.assert_close(default[0], out[3])  # no labels = the null label
    # a two-type label is the sum of both types' embeddings
    table = model.label_emb.weight
    torch.testing.assert_close(model.label_embedding(labels[2:3])[0], table[1 + 1] + table[1 + 9])
    # the config travels in the model file: the rebuilt model is conditional and gives the same output
    path = save_model_file(tmp_path / "model.safetensors", model.state_dict(), None, model.config,
                           DiffusionConfig(timesteps=1000), 1)
    again, cfg, _, _ = load_model(path, use_ema=False)
    assert cfg.condition == "type"
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, labels), out)
