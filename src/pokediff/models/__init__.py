"""Noise-prediction networks. Imports torch (and the typed config) only."""

from pokediff.models.unet import UNet, count_parameters, timestep_embedding

__all__ = ["UNet", "count_parameters", "timestep_embedding"]
