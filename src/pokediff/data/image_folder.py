"""A folder of images -> uint8 tensors: the one loader behind training and scoring.

    load_image_folder(folder, resolution=R, on_error=E) -> [uint8 (3, H, W)], paths  (scoring: None, "raise")
    load_training_images(folder, resolution=R)          -> uint8 (N, 3, R, R)        (training: "skip")
    load_labelled_training_images(folder, resolution=R) -> the same, and the multi-hot types (N, NUM_TYPES)

A folder is an ingested dataset (the files its manifest.csv lists, in that order) or any folder of
images (png/jpg/jpeg/webp/gif/svg at most sources.MAX_DEPTH levels deep, hidden ones skipped, sorted
by relative path); each file is decoded as ingest decodes it (first frame, alpha composited on white).

Nothing outside the folder is read (pokediff.data.sources.read_in_folder): a manifest row that is
absolute or climbs out with `..`, or that names a link out of the folder (other than into the project's
DVC cache), a FIFO or a device, makes the whole manifest an error (ManifestError, one line: a dataset
whose rows point there is broken or tampered with; the FIFO is never opened). In a folder without a
manifest such a file, like any undecodable one, is unreadable: skipped with a warning when training,
an error when scoring.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pokediff.data.decode import DEFAULT_RESOLUTION, IMAGE_EXTENSIONS, RGB, WHITE, decode_rgb
from pokediff.data.manifest import MANIFEST_NAME, TYPES_COLUMN, ManifestError, read_manifest
from pokediff.data.raster import BadImageError
from pokediff.data.sources import (
    MAX_DEPTH,
    LinkRefusedError,
    NotRegularFileError,
    check_relative,
    display_name,
    is_hidden,
    read_file,
    read_in_folder,
    walk_folder,
)
from pokediff.errors import PokediffError, shorten
from pokediff.pokemon_types import NUM_TYPES, multi_hot, parse_manifest_types

# A file over sources.MAX_FILE_BYTES is refused, and each decode has this pixel limit: generous, but
# it keeps a stray 100-megapixel photo from stalling a training start.
FOLDER_MAX_PIXELS = 40_000_000
_WARN_LIST_LIMIT = 20  # skipped files named in the warning; the rest are counted

OnError = Literal["raise", "skip"]


class NoImagesError(PokediffError, FileNotFoundError):
    """Nothing usable at the given path; the message names the path."""


class NoLabelsError(PokediffError, ValueError):
    """A conditional model was asked to train on images without type labels; the message names the folder."""


def list_images(folder: str | Path) -> tuple[list[Path], Path | None]:
    """(image files, its manifest.csv or None): the files the manifest lists, in manifest order, or,
    without one, every image file below `folder` (regular files and links to files; links are checked
    when read). Listed files are not checked to exist.

    Raises NoImagesError when `folder` is not a directory or nests folders more than MAX_DEPTH deep,
    ManifestError when a manifest row is not a path inside the folder (see sources.check_relative)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoImagesError(f"{folder} is not a directory of images")
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        paths = read_manifest(manifest)["path"]
        for row, relative in enumerate(paths, start=1):
            reason = check_relative(relative)
            if reason is not None:
                shown = shorten(display_name(relative), 80)
                raise ManifestError(f"{manifest}: row {row}: path {shown!r} is {reason}; expected a relative path "
                                    "inside the dataset folder, e.g. images/000000.png")
        return [folder / relative for relative in paths], manifest
    found = []
    for item in walk_folder(folder):
        if item.kind == "problem" and "levels deep" in item.problem:
            raise NoImagesError(f"{folder / display_name(item.relative)}: {item.problem} (an image folder may "
                                f"nest {MAX_DEPTH} levels)")
        if (item.kind in ("file", "link") and not is_hidden(item.relative)
                and Path(item.relative).suffix.lower() in IMAGE_EXTENSIONS):
            found.append(folder / item.relative)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix()), None


def read_image(path: str | Path, resolution: int | None = None, background: RGB = WHITE) -> np.ndarray:
    """One image file the user names -> uint8 (H, W, 3), see `decode_rgb` (square `resolution`^2, or
    its own size). Links are followed: the user named this file.

    Raises BadImageError (a ValueError) for a file that is not a usable image, OSError when it cannot
    be read (TooLargeError beyond sources.MAX_FILE_BYTES, a FIFO or device)."""
    path = Path(path)
    return _decode(read_file(path), path, resolution, background)


def _read_in(folder: Path, path: Path, resolution: int | None, background: RGB = WHITE) -> np.ndarray:
    """`read_image` for a file listed below `folder`, read without leaving it (sources.read_in_folder)."""
    return _decode(read_in_folder(folder, path.relative_to(folder).as_posix()), path, resolution, background)


def _decode(data: bytes, path: Path, resolution: int | None, background: RGB) -> np.ndarray:
    return decode_rgb(data, path.suffix.lower(), resolution=resolution, max_pixels=FOLDER_MAX_PIXELS,
                      background=background)


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
    folder: str | Path, *, resolution: int | None, on_error: OnError, max_images: int = 0, seed: int = 0,
    how: str = "random",
) -> tuple[list[torch.Tensor], list[str]]:
    """The images of `folder`, each uint8 (3, H, W), and their paths relative to it; with `max_images`,
    the subset of `subset_indices` is chosen before any file is read.

    resolution: None keeps each file's size (scoring: Inception resizes); R gives R x R squares.
    on_error: "raise": BadImageError naming the first unreadable file, and NoImagesError before
    anything is read when the manifest lists files that are missing (a score must not silently leave
    images out); "skip": unreadable and missing files are left out with one UserWarning naming them.
    Raises NoImagesError (a FileNotFoundError) naming `folder` when it is not a directory or nothing
    usable is in it."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    folder = Path(folder)
    paths, manifest = list_images(folder)
    if on_error == "raise" and manifest is not None:
        missing = [p for p in paths if not os.path.lexists(p)]
        if missing:
            raise NoImagesError(f"{manifest}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    if not paths:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        detail = f"{manifest} lists none" if manifest else f"no {kinds} files and no {MANIFEST_NAME}"
        raise NoImagesError(f"{folder}: no images: {detail}")
    images, kept, skipped = [], [], []
    for index in subset_indices(len(paths), max_images, seed, how):
        path = paths[index]
        try:
            pixels = _read_in(folder, path, resolution)  # (H, W, 3)
        except (BadImageError, OSError) as exc:
            if manifest is not None and isinstance(exc, (LinkRefusedError, NotRegularFileError)):
                shown = shorten(display_name(_relative(path, folder)), 80)
                raise ManifestError(f"{manifest}: row {index + 1}: path {shown!r} is {exc.strerror}; expected a "
                                    "regular file inside the dataset folder, e.g. images/000000.png") from None
            if on_error == "raise":
                raise BadImageError(f"{path}: cannot read image ({exc})") from None
            skipped.append(f"{path}: {exc}")
            continue
        images.append(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())  # (3, H, W)
        kept.append(_relative(path, folder))
    if skipped:
        shown = [f"  {line}" for line in skipped[:_WARN_LIST_LIMIT]]
        if len(skipped) > _WARN_LIST_LIMIT:
            shown.append(f"  ... and {len(skipped) - _WARN_LIST_LIMIT} more")
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) under {folder}:\n" + "\n".join(shown),
                      UserWarning, stacklevel=2)
    if not images:
        raise NoImagesError(f"{folder}: no images: all {len(skipped)} image file(s) were unreadable")
    return images, kept


def load_training_images(folder: str | Path, resolution: int | None = None) -> torch.Tensor:
    """All images of `folder` as one uint8 tensor (N, 3, R, R), unreadable files skipped with a warning.

    resolution=None keeps an ingested dataset's stored size and makes a plain folder's images
    DEFAULT_RESOLUTION (64) squares. Raises NoImagesError as `load_image_folder` does, and
    BadImageError when the images are not squares of one size."""
    return _load_squares(Path(folder), resolution)[0]


def load_labelled_training_images(folder: str | Path, resolution: int | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`load_training_images` and each kept image's types from the manifest's ``types`` column, as
    multi-hot uint8 (N, NUM_TYPES) rows (pokediff.pokemon_types). NoLabelsError (one line) when the
    folder is not an ingested dataset with type labels (only the sprites have them)."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    frame = read_manifest(manifest) if manifest.is_file() else None
    if frame is None or TYPES_COLUMN not in frame.columns or not (frame[TYPES_COLUMN] != "").any():
        raise NoLabelsError(f"{folder}: no type labels (manifest.csv column {TYPES_COLUMN}); model.condition=type "
                            "trains on a labelled dataset: the ingested sprites (data.source: sprites)")
    images, paths = _load_squares(folder, resolution)
    types = dict(zip(frame["path"], frame[TYPES_COLUMN]))
    try:
        rows = [multi_hot(parse_manifest_types(types[path])) for path in paths]
    except ValueError as exc:
        raise NoLabelsError(f"{manifest}: {exc}") from None
    return images, torch.tensor(rows, dtype=torch.uint8).reshape(len(paths), NUM_TYPES)


def _load_squares(folder: Path, resolution: int | None) -> tuple[torch.Tensor, list[str]]:
    if resolution is None and not (folder / MANIFEST_NAME).is_file():
        resolution = DEFAULT_RESOLUTION  # the files of a plain folder have no common size to keep
    images, paths = load_image_folder(folder, resolution=resolution, on_error="skip")
    sizes: dict[tuple[int, int], str] = {}  # (H, W) -> the first file of that size
    for image, path in zip(images, paths, strict=True):
        sizes.setdefault((image.shape[1], image.shape[2]), path)
    if len(sizes) > 1 or any(h != w for h, w in sizes):
        shown = ", ".join(f"{path} is {w}x{h}" for (h, w), path in list(sizes.items())[:3])
        raise BadImageError(f"training images under {folder} must be squares of one size ({shown}); "
                            "pass a resolution to resize them")
    return torch.stack(images), paths  # (N, 3, R, R), relative paths


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.as_posix()
