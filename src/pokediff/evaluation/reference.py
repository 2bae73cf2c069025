"""Reference statistics of the training images: computed once, saved as .npz, reused by every score.

A stats file holds everything later scores need from the reference set, so Inception never runs on
it twice:

    mu        (2048,)        float64  feature mean            (FID)
    sigma     (2048, 2048)   float64  feature covariance, N-1 (FID)
    features  (N, 2048)      float32  the features themselves (KID, memorisation)
    train_nn  (N,)           float64  distance of each image to its nearest other one (memorisation)
    n         ()             int      number of images
    content_hash  str                 SHA-256 of the decoded pixels (pokediff.pixels.content_hash)
    extractor     str                 feature convention, e.g. inception-2015-12-05/pool3/tf1
    paths     (N,)           str      relative paths ("" for in-memory tensors)

``compute_reference_stats`` is a cache: if the output file exists with the same content hash and
extractor, it is returned without running Inception.

A stats file is read only as far as it checks out (``_check_stats_members``): each array's .npy header
(dtype, shape) is read and checked against the table above before the array is, and its member must be
stored uncompressed with exactly the bytes that header declares. So reading allocates what the file
holds, never what it merely declares (a deflated member declaring 3.7 GB of zeros fits in 3 MB).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pokediff.data.image_folder import load_image_folder, subset_indices
from pokediff.evaluation.frechet import gaussian_stats
from pokediff.evaluation.inception import (
    DEFAULT_BATCH_SIZE,
    NUM_FEATURES,
    RESIZE_MODES,
    ResizeMode,
    check_uint8_images,
    extract_features,
    extractor_id,
)
from pokediff.evaluation.memorisation import train_nn_distances
from pokediff.limits import zip_directory_size
from pokediff.pixels import content_hash

_KEYS = ("mu", "sigma", "features", "train_nn", "n", "content_hash", "extractor", "paths")
_MAX_DIRECTORY_BYTES = 64 << 10  # eight members
_MAX_NPY_HEADER = 10_000  # numpy's own default for a trusted header


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    features: np.ndarray  # (N, D) float32
    train_nn: np.ndarray  # (N,) float64
    n: int
    content_hash: str
    extractor: str
    paths: tuple[str, ...] = ()

    @property
    def resize(self) -> ResizeMode:
        """The resize convention encoded in ``extractor`` ("tf1" or "antialias")."""
        return self.extractor.rsplit("/", 1)[-1]  # type: ignore[return-value]


def stats_from_features(
    features: np.ndarray, digest: str, extractor: str, paths: Sequence[str] = ()
) -> ReferenceStats:
    """Build :class:`ReferenceStats` from features (N, D): mean, covariance, train NN distances."""
    features = np.asarray(features, dtype=np.float32)
    mu, sigma = gaussian_stats(features)
    return ReferenceStats(
        mu=mu,
        sigma=sigma,
        features=features,
        train_nn=train_nn_distances(features),
        n=int(features.shape[0]),
        content_hash=digest,
        extractor=extractor,
        paths=tuple(paths),
    )


def save_reference_stats(stats: ReferenceStats, path: str | Path) -> Path:
    """Write ``stats`` to ``path`` (.npz, uncompressed) atomically; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            np.savez(
                fh,
                mu=stats.mu,
                sigma=stats.sigma,
                features=stats.features,
                train_nn=stats.train_nn,
                n=np.int64(stats.n),
                content_hash=np.str_(stats.content_hash),
                extractor=np.str_(stats.extractor),
                paths=np.array(stats.paths if stats.paths else [""] * stats.n, dtype=np.str_),
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_reference_stats(path: str | Path) -> ReferenceStats:
    """Read a stats file written by :func:`save_reference_stats`; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reference statistics not found (run `pokediff ref-stats` first)")
    _check_stats_members(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files if k in _KEYS}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read reference statistics ({exc})") from None
    missing = [k for k in _KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path}: not a pokediff reference-stats file, missing {missing}")
    n = int(raw["n"])
    d = raw["mu"].shape[0] if raw["mu"].ndim == 1 else -1
    expected = {"mu": (d,), "sigma": (d, d), "features": (n, d), "train_nn": (n,)}
    for key, shape in expected.items():
        if raw[key].shape != shape or d != NUM_FEATURES:
            raise ValueError(f"{path}: {key} has shape {raw[key].shape}, expected {shape} with D={NUM_FEATURES}")
    known = {extractor_id(mode) for mode in RESIZE_MODES}
    if str(raw["extractor"]) not in known:
        raise ValueError(f"{path}: extractor {str(raw['extractor'])!r} is not one of {sorted(known)}")
    return ReferenceStats(
        mu=raw["mu"].astype(np.float64),
        sigma=raw["sigma"].astype(np.float64),
        features=raw["features"].astype(np.float32),
        train_nn=raw["train_nn"].astype(np.float64),
        n=n,
        content_hash=str(raw["content_hash"]),
        extractor=str(raw["extractor"]),
        paths=tuple(str(p) for p in raw["paths"]),
    )


def _expected_shape(key: str, n: int | None) -> tuple[int | None, ...]:
    """The shape each member must have (None: the image count, read from the file's `n`)."""
    d = NUM_FEATURES
    return {"mu": (d,), "sigma": (d, d), "features": (n, d), "train_nn": (n,), "paths": (n,)}.get(key, ())


def _check_stats_members(path: Path) -> None:
    """ValueError naming the file when a member is compressed, declares a dtype or shape other than the
    module docstring's, or holds other bytes than its .npy header declares; nothing but headers is read."""
    def refuse(why: str) -> ValueError:
        return ValueError(f"{path}: not a pokediff reference-stats file ({why})")

    try:
        with path.open("rb") as handle:
            _, directory_bytes = zip_directory_size(handle)
        if directory_bytes > _MAX_DIRECTORY_BYTES:
            raise refuse(f"a zip directory of {directory_bytes:,} bytes")
        headers: dict[str, tuple[tuple[int, ...], np.dtype, int, int]] = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                key = info.filename.removesuffix(".npy")
                if key not in _KEYS:
                    continue
                if info.compress_type != zipfile.ZIP_STORED:
                    raise refuse(f"{key} is compressed; np.savez stores arrays uncompressed")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = reader(member, max_header_size=_MAX_NPY_HEADER)
                    headers[key] = (shape, dtype, member.tell(), info.file_size)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        if str(exc).startswith(f"{path}: "):  # one of refuse()'s messages, already naming the file
            raise
        raise ValueError(f"{path}: cannot read reference statistics ({exc})") from None
    n_shape = headers.get("n", ((), None, 0, 0))[0]
    if n_shape != ():
        raise refuse(f"n has shape {n_shape}, expected a scalar")
    features_shape = headers["features"][0] if "features" in headers else ()
    images = features_shape[0] if len(features_shape) == 2 else None
    for key, (shape, dtype, header_bytes, member_bytes) in headers.items():
        if dtype.hasobject:
            raise refuse(f"{key} holds Python objects")
        expected = _expected_shape(key, images)
        if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected, strict=True)):
            raise refuse(f"{key} has shape {shape}, expected {expected} with D={NUM_FEATURES}")
        declared = math.prod(shape) * dtype.itemsize
        if header_bytes + declared != member_bytes:
            raise refuse(f"{key} declares {declared:,} bytes of data but its member holds "
                         f"{member_bytes - header_bytes:,}")


def compute_reference_stats(
    images: str | Path | torch.Tensor | Sequence[torch.Tensor],
    out_path: str | Path | None = None,
    *,
    max_images: int = 0,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    resize: ResizeMode = "tf1",
    force: bool = False,
    progress: bool = False,
) -> ReferenceStats:
    """Inception statistics of a reference image set, cached in ``out_path``.

    Args:
        images: a folder (see :mod:`pokediff.data.image_folder`), a uint8 tensor
            (N, 3, H, W) or a sequence of uint8 tensors (3, H, W).
        out_path: where to save the .npz; if it already holds stats of the same pixels and
            extractor (and ``force`` is False), they are loaded and returned.
        max_images: use a fixed-seed random subset of this many images (0 = all).
    """
    if isinstance(images, (str, Path)):
        imgs, paths = load_image_folder(images, resolution=None, on_error="raise", max_images=max_images, seed=seed,
                                        how="random")
    else:
        if isinstance(images, torch.Tensor):
            check_uint8_images(images)
        idx = subset_indices(len(images), max_images, seed, how="random")
        imgs, paths = [images[int(i)] for i in idx], []
    if len(imgs) < 2:
        raise ValueError(f"reference statistics need at least 2 images, got {len(imgs)}")
    digest = content_hash(imgs)
    ext_id = extractor_id(resize)
    if out_path is not None and Path(out_path).is_file() and not force:
        try:
            cached = load_reference_stats(out_path)
        except ValueError:
            cached = None
        if cached is not None and cached.content_hash == digest and cached.extractor == ext_id:
            return cached
    features = extract_features(imgs, batch_size, device, resize=resize, progress=progress)
    stats = stats_from_features(features, digest, ext_id, paths)
    if out_path is not None:
        save_reference_stats(stats, out_path)
    return stats
