"""The files ingest writes next to its images: manifest.csv, quarantine.csv, ingest_summary.json,
and the pixel statistics the manifest records for each image (`pixel_stats`).

The manifest is the contract between ingest, validate and training: one row per image, in the
order training reads them. Files are written with the csv module and fixed formatting (no pandas
float printing, no timestamps) so two ingests of the same source are byte-identical. Cells made from
file names are neutralised for spreadsheets (pokediff.csv_cells) and restored by ``read_manifest``.

A manifest read back may have been edited or made by hand, so `read_manifest` bounds it before pandas
parses it: at most MAX_MANIFEST_BYTES of UTF-8 text, MAX_MANIFEST_ROWS rows, fields of at most
MAX_FIELD_CHARS characters, every row as long as the header, a `path` column; anything else is one
ManifestError naming the file, the row and what was expected. Where the paths may lead is checked by
the readers of the images (pokediff.data.sources.check_relative).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pokediff.csv_cells import neutralise, restore
from pokediff.errors import PokediffError, shorten
from pokediff.files import write_atomic
from pokediff.limits import read_small_json
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
NAME_COLUMNS = ("source", "form")  # text taken from the source's file names

# A manifest read back: the sprite dataset's is 400 KB and 2,572 rows; a million 64x64 images would
# not fit in a training process anyway (12 GB of pixels).
MAX_MANIFEST_BYTES = 64 << 20
MAX_MANIFEST_ROWS = 1_000_000
MAX_FIELD_CHARS = 4096  # the longest path most file systems accept
MAX_SUMMARY_BYTES = 1 << 20  # ingest_summary.json is ~2 KB


class ManifestError(PokediffError, ValueError):
    """manifest.csv (or ingest_summary.json) is not what ingest writes; one line naming the file and the row."""

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
            for column in NAME_COLUMNS:  # from file names: no spreadsheet formula (pokediff.csv_cells)
                record[column] = neutralise(record[column])
            writer.writerow(record)


def read_manifest(path: Path) -> pd.DataFrame:
    """manifest.csv as a DataFrame with stable dtypes (species_id nullable Int64, form as str).

    Raises ManifestError (one line) when the file is too large, not UTF-8, not well-formed CSV, has no
    `path` column, a row of another length than the header, a field longer than MAX_FIELD_CHARS
    characters or more than MAX_MANIFEST_ROWS rows; OSError when it cannot be read."""
    import pandas as pd  # local: keeps ingest worker processes free of the pandas import

    data = _manifest_bytes(Path(path))
    _check_manifest_rows(data, path)
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            dtype={"path": str, "source": str, "form": str, "variant": str, "mode": str, "sha256": str},
            keep_default_na=False,
            na_values={"species_id": [""], "mean": [""], "std": [""], "background_fraction": [""]},
        )
        if "species_id" in frame.columns:
            frame["species_id"] = frame["species_id"].astype("Int64")
    except (ValueError, TypeError, pd.errors.ParserError) as exc:  # e.g. a species_id that is not a number
        raise ManifestError(f"{path}: not a manifest pokediff can read ({shorten(str(exc).splitlines()[0], 160)}); "
                            "expected the CSV that `pokediff ingest` writes") from None
    for column in NAME_COLUMNS:  # written neutralised for spreadsheets: read back as they were
        if column in frame.columns:
            frame[column] = frame[column].map(lambda cell: restore(cell) if isinstance(cell, str) else cell)
    return frame


def _manifest_bytes(path: Path) -> bytes:
    """The file's bytes, at most MAX_MANIFEST_BYTES of UTF-8."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES:,} bytes; expected a manifest of at most "
                            f"{MAX_MANIFEST_ROWS:,} rows")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start:,}); "
                            "expected the CSV that `pokediff ingest` writes") from None
    return data


def _check_manifest_rows(data: bytes, path: Path) -> None:
    """The structure pandas would parse, checked row by row with the csv module (nothing kept; the
    text is decoded in chunks, so no copy of the whole file is made)."""
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header or "path" not in header:
            shown = shorten(",".join(header or []), 80)
            raise ManifestError(f"{path}: no 'path' column in the header ({shown!r}); expected a header line "
                                f"naming the columns, e.g. {','.join(MANIFEST_COLUMNS[:3])},...")
        for rows, row in enumerate(reader, start=1):
            number = reader.line_num
            if rows > MAX_MANIFEST_ROWS:
                raise ManifestError(f"{path}: more than {MAX_MANIFEST_ROWS:,} rows (the limit)")
            if len(row) != len(header) and row:
                raise ManifestError(f"{path}: line {number} has {len(row)} fields, the header {len(header)}; "
                                    "expected one field per column")
            if any(len(field) > MAX_FIELD_CHARS for field in row):
                raise ManifestError(f"{path}: line {number} has a field longer than {MAX_FIELD_CHARS:,} characters")
    except csv.Error as exc:
        raise ManifestError(f"{path}: not well-formed CSV at line {reader.line_num} ({shorten(str(exc), 120)}); "
                            "expected the CSV that `pokediff ingest` writes") from None


def write_quarantine(rows: list[QuarantineRow], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows((neutralise(row.path), neutralise(row.reason)) for row in rows)


def read_summary(dataset_dir: Path) -> dict[str, Any] | None:
    """ingest_summary.json of a dataset, or None when the folder has none (e.g. hand-made).
    ManifestError when it is not a JSON object of at most MAX_SUMMARY_BYTES."""
    path = dataset_dir / SUMMARY_NAME
    if not path.is_file():
        return None
    try:
        summary = read_small_json(path, MAX_SUMMARY_BYTES)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    if not isinstance(summary, dict):
        raise ManifestError(f"{path}: expected a JSON object, as `pokediff ingest` writes")
    return summary


def write_json(data: dict[str, Any], path: Path) -> None:
    """Sorted keys, fixed indentation, trailing newline: stable bytes for DVC and diffs."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
