"""Small builders shared by tests (import as ``from helpers import ...``; tests/ is on sys.path)."""

from __future__ import annotations


def tiny_model_config(**overrides):
    """A U-Net of a few hundred thousand parameters on 16x16 images: fast on a 2-core CPU."""
    from pokediff.config import ModelConfig

    base = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                head_channels=8, dropout=0.0, resolution=16, groups=8)
    base.update(overrides)
    return ModelConfig(**base)
