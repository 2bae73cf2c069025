"""Image folders -> uint8 tensors (3, H, W), a deterministic subset, and a content hash.

A folder is read through its ``manifest.csv`` (the ingest stage's output: a ``path`` column of paths
relative to the folder) when it has one, else as every PNG/JPEG below it, sorted by relative path so
that the order, the subset and the hash do not depend on the file system.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST = "manifest.csv"


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder``: from ``manifest.csv`` (column ``path``) if present, else recursive."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory of images")
    manifest = folder / MANIFEST
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(f"{manifest}: needs a 'path' column, has {reader.fieldnames}")
            paths = [folder / row["path"] for row in reader]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{manifest}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    else:
        paths = sorted(
            (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
    if not paths:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) and no {MANIFEST}")
    return paths


def load_image(path: str | Path, background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """One image file -> uint8 tensor (3, H, W). Transparency is composited onto ``background``."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (*background, 255))
                img = Image.alpha_composite(canvas, rgba)
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def subset_indices(n: int, max_images: int, seed: int = 0, how: str = "random") -> np.ndarray:
    """Indices of at most ``max_images`` of ``n`` items (0 = all), sorted.

    ``how="random"``: a fixed-seed draw without replacement (a fair sample of a whole dataset);
    ``how="first"``: the first ones (generated samples, numbered in order).
    """
    if max_images < 0:
        raise ValueError(f"max_images must be >= 0 (0 = all), got {max_images}")
    if max_images == 0 or max_images >= n:
        return np.arange(n)
    if how == "first":
        return np.arange(max_images)
    if how == "random":
        return np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
    raise ValueError(f"how must be 'random' or 'first', got {how!r}")


def load_image_folder(
    folder: str | Path, max_images: int = 0, seed: int = 0, how: str = "random"
) -> tuple[list[torch.Tensor], list[str]]:
    """Images (each uint8 (3, H, W)) and their paths relative to ``folder``, subset as in
    :func:`subset_indices`."""
    folder = Path(folder)
    paths = list_images(folder)
    chosen = [paths[i] for i in subset_indices(len(paths), max_images, seed, how)]
    return [load_image(p) for p in chosen], [_relative(p, folder) for p in chosen]


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.as_posix()


def content_hash(images: torch.Tensor | Sequence[torch.Tensor]) -> str:
    """SHA-256 over the decoded pixels (shape + bytes of each image, in order).

    Independent of file names and PNG encoding: same pixels in the same order, same hash.
    """
    h = hashlib.sha256()
    for img in images:
        img = img.detach().to("cpu", torch.uint8).contiguous()
        h.update(repr(tuple(img.shape)).encode())
        h.update(img.numpy().tobytes())
    return h.hexdigest()
