"""uint8 pixels to and from the model's floats, to PNG bytes and sample files, and their hash.

    from_uint8   uint8 0..255, any shape, e.g. (B, 3, R, R) -> float32 in [-1, 1] (the model's range)
    to_uint8     float (B, C, H, W) in [-1, 1] -> uint8 (B, C, H, W), rounded and clamped
    encode_png   PIL image -> PNG bytes: the one encoder (ingest, sample files, served answers)
    to_pil       uint8 (C, H, W) -> PIL image (RGB, or L for one channel)
    save_png, save_pngs, make_grid, save_grid   uint8 (B, C, H, W) -> sample files
    pixel_sha256, content_hash, update_pixel_hash   the pixel hash: manifest sha256, reference
                 content_hash and run fingerprint

torch is not imported: ingest's worker processes encode PNGs and hash pixels and must not pay for
loading torch, so the tensor functions call tensor methods only.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pokediff.files import write_atomic

if TYPE_CHECKING:
    import torch

# No metadata chunks and the same zlib level every time, so equal pixels always give equal bytes:
# ingest's byte-identical output and the sample PNGs rest on this. 6 is also zlib's default, so a
# PNG saved with Pillow's defaults has the same bytes.
PNG_COMPRESS_LEVEL = 6


# ----------------------------------------------------------------------------------------------
# uint8 <-> model floats
# ----------------------------------------------------------------------------------------------
def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1], same shape."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Float images in ``value_range`` -> uint8 0..255, same shape, rounded to nearest and clamped.

    The one conversion for sample PNGs, grids and FID inputs alike."""
    if not images.is_floating_point():
        raise TypeError(f"to_uint8 expects a float tensor, got {images.dtype}")
    lo, hi = value_range
    x = (images.detach().float() - lo) / (hi - lo)
    return (x * 255).round().clamp(0, 255).byte()


# ----------------------------------------------------------------------------------------------
# PNG bytes and sample files
# ----------------------------------------------------------------------------------------------
def encode_png(image: Image.Image) -> bytes:
    """PNG bytes with fixed settings and no metadata (byte-identical for identical pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) with C = 3 or 1 -> PIL RGB or L image (H, W)."""
    array = image.permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    if array.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {array.dtype}; convert floats with to_uint8")
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """uint8 (C, H, W) -> a PNG file at ``path`` (folders created), written whole or not at all."""
    return write_atomic(path, encode_png(to_pil(image)))


def save_pngs(images: torch.Tensor, directory: str | Path, start: int = 0) -> list[Path]:
    """uint8 (B, C, H, W) -> directory/000000.png, 000001.png, ... numbered from ``start``."""
    return [save_png(image, Path(directory) / f"{start + i:06d}.png") for i, image in enumerate(images)]


def make_grid(images: torch.Tensor, ncols: int | None = None, pad: int = 2, fill: int = 255) -> torch.Tensor:
    """uint8 (B, C, H, W) -> one uint8 (C, rows * (H + pad) + pad, ncols * (W + pad) + pad) mosaic on
    the CPU, filled row by row; ``ncols`` defaults to a square layout."""
    b, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(b))
    nrows = math.ceil(b / ncols)
    grid = images.new_full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), fill, device="cpu")
    for i, image in enumerate(images):
        row, col = divmod(i, ncols)
        top, left = pad + row * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = image.cpu()
    return grid


def save_grid(images: torch.Tensor, path: str | Path, ncols: int | None = None) -> Path:
    """uint8 (B, C, H, W) -> one PNG of their grid (see `make_grid`)."""
    return save_png(make_grid(images, ncols), path)


# ----------------------------------------------------------------------------------------------
# The pixel hash
# ----------------------------------------------------------------------------------------------
def update_pixel_hash(digest: Any, pixels: np.ndarray | torch.Tensor) -> None:
    """Feed one uint8 array or tensor (any shape) into a hashlib object: its shape as text, e.g.
    "(64, 64, 3)", so equal bytes of another shape differ, then its raw bytes in C order.

    The manifest's sha256 column, the reference statistics' content_hash and the checkpoint's run
    fingerprint are all made of this; stored values of all three depend on it staying as it is."""
    if hasattr(pixels, "numpy"):  # a torch tensor: its bytes on the CPU
        pixels = pixels.detach().cpu().numpy()
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8:
        raise TypeError(f"the pixel hash is defined for uint8 pixels, got {pixels.dtype}")
    digest.update(repr(tuple(pixels.shape)).encode())
    digest.update(pixels.tobytes())


def pixel_sha256(pixels: np.ndarray | torch.Tensor) -> str:
    """sha256 of one image's pixels (see `update_pixel_hash`)."""
    digest = hashlib.sha256()
    update_pixel_hash(digest, pixels)
    return digest.hexdigest()


def content_hash(images: Iterable[np.ndarray | torch.Tensor]) -> str:
    """sha256 over several images in order (each as in `update_pixel_hash`); a (N, 3, H, W) tensor
    counts as its N images. Independent of file names and PNG encoding."""
    digest = hashlib.sha256()
    for image in images:
        update_pixel_hash(digest, image)
    return digest.hexdigest()
