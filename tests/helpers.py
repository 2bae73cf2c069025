"""Small builders shared by tests (import as ``from helpers import ...``; tests/ is on sys.path)."""

from __future__ import annotations


def tiny_model_config(**overrides):
    """A U-Net of a few hundred thousand parameters on 16x16 images: fast on a 2-core CPU."""
    from pokediff.config import ModelConfig

    base = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                head_channels=8, dropout=0.0, resolution=16, groups=8)
    base.update(overrides)
    return ModelConfig(**base)


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

