"""Tensor <-> image files for generated samples: uint8 conversion, PNGs, grids, denoising strips."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Float images in ``value_range`` (the model's [-1, 1]) -> uint8 0..255, rounded as PNG saving does.

    (B, C, H, W) -> (B, C, H, W). The one conversion used for PNGs, grids and FID inputs alike."""
    if not images.is_floating_point():
        raise TypeError(f"to_uint8 expects a float tensor, got {images.dtype}")
    lo, hi = value_range
    x = (images.detach().float() - lo) / (hi - lo)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def _pil(img: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) -> PIL RGB/L image."""
    array = img.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def save_png(img: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(img).save(path, format="PNG", optimize=False, compress_level=6)  # no metadata: byte-stable
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
