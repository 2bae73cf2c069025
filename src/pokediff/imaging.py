"""Tensors -> image files for generated samples: PNGs and grids.

The conversions themselves (float -> uint8, PNG bytes with the one compression level) are
pokediff.data.images'; `to_uint8` is re-exported here for the sampling code."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from pokediff.data.images import encode_png
from pokediff.data.images import to_uint8 as to_uint8  # re-exported (sampling)


def _pil(img: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) -> PIL RGB/L image."""
    array = img.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def save_png(img: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(_pil(img)))  # no metadata: byte-stable
    return path


def save_pngs(images: torch.Tensor, directory: str | Path, start: int = 0) -> list[Path]:
    """uint8 (B, C, H, W) -> directory/000000.png, 000001.png, ..."""
    return [save_png(img, Path(directory) / f"{start + i:06d}.png") for i, img in enumerate(images)]


def make_grid(images: torch.Tensor, ncols: int | None = None, pad: int = 2, fill: int = 255) -> torch.Tensor:
    """uint8 (B, C, H, W) -> one uint8 (C, H', W') mosaic, ncols defaulting to a square layout."""
    b, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(b))
    nrows = math.ceil(b / ncols)
    grid = torch.full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), fill, dtype=torch.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = img.cpu()
    return grid


def save_grid(images: torch.Tensor, path: str | Path, ncols: int | None = None) -> Path:
    return save_png(make_grid(images, ncols), path)
