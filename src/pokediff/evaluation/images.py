"""Image folders -> uint8 tensors (3, H, W) for scoring, a deterministic subset, and a content hash.

Reading and converting are `pokediff.data`'s, the same code training uses: a folder is read through
its ``manifest.csv`` (the ingest stage's output: a ``path`` column of paths relative to the folder)
when it has one, else as every image file below it (png/jpg/webp/gif/svg, hidden ones skipped),
sorted by relative path so that the order, the subset and the hash do not depend on the file
system. Unlike training, images keep their own size (Inception resizes them) and an unreadable file
is an error, not a warning: a score must not silently leave images out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pokediff.data.decode import IMAGE_EXTENSIONS, RGB, WHITE
from pokediff.data.manifest import MANIFEST_NAME
from pokediff.data.raster import BadImageError
from pokediff.data.sources import dataset_files, read_image


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder``: from ``manifest.csv`` (column ``path``) if present, else recursive."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory of images")
    paths, manifest = dataset_files(folder)
    missing = [p for p in paths if not p.is_file()] if manifest is not None else []
    if missing:
        raise FileNotFoundError(f"{manifest}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    if not paths:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) and no {MANIFEST_NAME}")
    return paths


def load_image(path: str | Path, background: RGB = WHITE) -> torch.Tensor:
    """One image file -> uint8 tensor (3, H, W) at its own size (first frame of an animation).
    Transparency is composited onto ``background``."""
    try:
        rgb = read_image(Path(path), background=background)  # (H, W, 3)
    except (BadImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


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
