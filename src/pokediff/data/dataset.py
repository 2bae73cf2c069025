"""Training images as tensors: from an ingested dataset (manifest.csv) or from any folder of images.

`load_training_images` is the one entry point the training loop uses; it returns the whole set as a
uint8 tensor (N, 3, R, R), which for a few thousand 64x64 sprites is ~40 MB and removes all
per-step decoding. `PokemonDataset` wraps the same tensor for users who want a DataLoader.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from pokediff.data.decode import DEFAULT_RESOLUTION
from pokediff.data.raster import BadImageError
from pokediff.data.sources import dataset_files, read_image
from pokediff.errors import PokediffError
from pokediff.pixels import from_uint8

_WARN_LIST_LIMIT = 20


class NoImagesError(PokediffError, FileNotFoundError):
    """Nothing usable at the given path; the message names the path."""


def _load_square(path: Path, resolution: int | None) -> np.ndarray:
    """One file -> (R, R, 3) uint8, first frame, alpha on white; `None` keeps a square file's size."""
    pixels = read_image(path, resolution)
    height, width = pixels.shape[:2]
    if width != height:  # only possible with resolution=None
        raise BadImageError(f"not square ({width}x{height}) and no resolution given")
    return pixels


def _warn_skipped(skipped: list[tuple[str, str]], root: Path) -> None:
    if not skipped:
        return
    lines = [f"  {name}: {reason}" for name, reason in skipped[:_WARN_LIST_LIMIT]]
    more = len(skipped) - _WARN_LIST_LIMIT
    if more > 0:
        lines.append(f"  ... and {more} more")
    warnings.warn(
        f"skipped {len(skipped)} unreadable image file(s) under {root}:\n" + "\n".join(lines),
        UserWarning,
        stacklevel=3,
    )


def load_training_images(path: str | Path, resolution: int | None = None) -> torch.Tensor:
    """All training images under `path` as a uint8 tensor of shape (N, 3, R, R).

    - `path` holds a manifest.csv (output of `pokediff ingest`): the images listed there, in
      manifest order. `resolution=None` keeps their stored size; another value resizes them.
    - otherwise `path` is any folder of png/jpg/webp/gif/svg files, nested at any depth, read in
      sorted path order: first frame of animations, alpha composited on white, padded to a square
      (centred) and Lanczos-resized to `resolution` (default 64 when None).

    Unreadable files are skipped with one UserWarning that names them. Raises NoImagesError
    (a FileNotFoundError) naming `path` when it is missing or nothing usable is found, and
    BadImageError when stored images of an ingested dataset have different sizes.
    """
    root = Path(path)
    if not root.is_dir():
        raise NoImagesError(f"training images: {root} is not a directory")
    files, manifest_path = dataset_files(root)
    if manifest_path is not None:
        source = f"{manifest_path} lists no images"
    else:
        resolution = resolution or DEFAULT_RESOLUTION
        source = f"no image files (png/jpg/jpeg/webp/gif/svg) found under {root}"
    arrays: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for file in files:
        try:
            arrays.append(_load_square(file, resolution))
        except (BadImageError, OSError) as exc:
            skipped.append((str(file), str(exc)))
    _warn_skipped(skipped, root)
    if not arrays:
        detail = f"all {len(skipped)} image file(s) were unreadable" if skipped else source
        raise NoImagesError(f"training images: nothing usable in {root}: {detail}")
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise BadImageError(
            f"training images under {root} have different sizes {sorted(sizes)}; "
            "pass resolution=... to resize them to one size"
        )
    stacked = torch.from_numpy(np.stack(arrays))  # (N, R, R, 3)
    return stacked.permute(0, 3, 1, 2).contiguous()  # (N, 3, R, R)


class PokemonDataset(torch.utils.data.Dataset):
    """Ingested images as float tensors in [-1, 1], shape (3, R, R), with random horizontal flips.

    Holds the whole set in memory as uint8 (see `load_training_images`); a flip is a mirror image
    of the same Pokémon, the one augmentation that never produces an impossible sprite. Flips draw
    from torch's global RNG, which DataLoader seeds per worker.
    """

    def __init__(self, root: str | Path, hflip: bool = True, resolution: int | None = None) -> None:
        self.root = Path(root)
        self.hflip = hflip
        self.images = load_training_images(self.root, resolution)  # (N, 3, R, R) uint8

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        image = from_uint8(self.images[index])  # (3, R, R) in [-1, 1]
        if self.hflip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image
