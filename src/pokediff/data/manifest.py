"""The files ingest writes next to its images: manifest.csv, quarantine.csv, ingest_summary.json,
and the pixel statistics the manifest records for each image (`pixel_stats`).

The manifest is the contract between ingest, validate and training: one row per image, in the
order training reads them. Files are written with the csv module and fixed formatting (no pandas
float printing, no timestamps) so two ingests of the same source are byte-identical.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pokediff.pixels import pixel_sha256

if TYPE_CHECKING:
    import pandas as pd


MANIFEST_NAME = "manifest.csv"
QUARANTINE_NAME = "quarantine.csv"
SUMMARY_NAME = "ingest_summary.json"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class ManifestRow:
    path: str  # relative to the dataset folder, e.g. images/000123.png
    source: str  # file inside the raw source (archive member or path relative to the folder)
    species_id: int | None  # National Pokédex number parsed from the file name; None if absent
    form: str  # form suffix of the file name ("a" in 201-a.gif, "origin" in 487-origin.gif), or ""
    variant: str  # normal | shiny | back | back_shiny | female | ... | dreamworld (see sprites.py)
    frame: int  # frame number inside the source animation (0 for still images)
    n_frames: int  # frames in the source file
    width: int
    height: int
    mode: str  # PIL mode of the written PNG (always RGB from ingest)
    mean: float  # pixel statistics on the 0..255 scale, see pixel_stats
    std: float
    background_fraction: float
    sha256: str  # of the pixels, not of the PNG bytes


MANIFEST_COLUMNS = [f.name for f in fields(ManifestRow)]

# A pixel counts as background when no channel differs from the background colour by more than
# this (0..255 scale). Lanczos leaves faint ringing next to edges; 8 keeps that out of the content.
BACKGROUND_TOLERANCE = 8


@dataclass(frozen=True)
class PixelStats:
    mean: float  # over all pixels and channels, 0..255
    std: float  # same; near 0 means an almost uniform image
    background_fraction: float  # share of pixels within BACKGROUND_TOLERANCE of the background
    sha256: str


def pixel_stats(pixels: np.ndarray, background: tuple[int, int, int]) -> PixelStats:
    """The manifest's measured columns of one uint8 (H, W, C) image, written by ingest and checked
    again by validate."""
    values = pixels.astype(np.float64)
    if pixels.ndim == 3 and pixels.shape[2] == len(background):
        distance = np.abs(values - np.asarray(background, dtype=np.float64)).max(axis=2)
        background_fraction = float((distance <= BACKGROUND_TOLERANCE).mean())
    else:  # not RGB: cannot be compared with an RGB background colour
        background_fraction = float("nan")
    return PixelStats(
        mean=round(float(values.mean()), 4),
        std=round(float(values.std()), 4),
        background_fraction=round(background_fraction, 6),
        sha256=pixel_sha256(pixels),
    )


@dataclass(frozen=True)
class QuarantineRow:
    path: str  # file inside the raw source
    reason: str


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            record = asdict(row)
            record["species_id"] = "" if row.species_id is None else row.species_id
            writer.writerow(record)


def read_manifest(path: Path) -> pd.DataFrame:
    """manifest.csv as a DataFrame with stable dtypes (species_id nullable Int64, form as str)."""
    import pandas as pd  # local: keeps ingest worker processes free of the pandas import

    frame = pd.read_csv(
        path,
        dtype={"path": str, "source": str, "form": str, "variant": str, "mode": str, "sha256": str},
        keep_default_na=False,
        na_values={"species_id": [""], "mean": [""], "std": [""], "background_fraction": [""]},
    )
    missing = [c for c in ("path",) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; is this a pokediff manifest?")
    if "species_id" in frame.columns:
        frame["species_id"] = frame["species_id"].astype("Int64")
    return frame


def write_quarantine(rows: list[QuarantineRow], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows((row.path, row.reason) for row in rows)


def read_summary(dataset_dir: Path) -> dict[str, Any] | None:
    """ingest_summary.json of a dataset, or None when the folder has none (e.g. hand-made)."""
    path = dataset_dir / SUMMARY_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_json(data: dict[str, Any], path: Path) -> None:
    """Sorted keys, fixed indentation, trailing newline: stable bytes for DVC and diffs."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
