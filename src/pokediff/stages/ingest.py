"""`pokediff ingest`: raw source -> data.out_dir (images/*.png, manifest.csv, quarantine.csv, ...).

The source is data.source: "sprites" (the pinned tarball in data.raw_dir, see `pokediff fetch-data`)
or a path to a folder / .tar.gz / .zip of images. Exit code 1 when the dataset is unusable (nothing
left, or more than data.max_quarantine_fraction of the files quarantined; the previous dataset then
stays, the rejected one is in <out_dir>/.ingest-rejected), when out_dir holds files ingest did not
write, when another ingest holds out_dir's lock, or when writing fails; the one-line message names
the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pokediff.cli import add_common_arguments
from pokediff.config import load_params
from pokediff.data.fetch import matches_pin
from pokediff.data.ingest import ingest
from pokediff.data.sources import SourceError
from pokediff.data.sprites import TARBALL_NAME
from pokediff.errors import PokediffError, one_line
from pokediff.stopping import Stopped, signal_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--source", help='"sprites" or a folder/.tar.gz/.zip of images (default: data.source)')
    parser.add_argument("--raw-dir", help="where the sprite tarball lies (default: data.raw_dir)")
    parser.add_argument("--out-dir", help="dataset folder to (re)write (default: data.out_dir)")
    parser.add_argument("--workers", type=int, help="decoding processes, 0 = one per CPU (default: data.num_workers)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def resolve_source(source: str, raw_dir: Path) -> tuple[Path, bool]:
    """(path to read, is it the sprite tarball?) for a data.source value.

    The pinned tarball must be the pinned file: a different file there would make the dataset differ
    from what data.dvc promises, so it is refused with the two ways forward.
    """
    if source != "sprites":
        path = Path(source)
        return path, path.name == TARBALL_NAME
    path = raw_dir / TARBALL_NAME
    if not path.is_file():
        raise SourceError(
            f"{path} not found: run `pokediff fetch-data` (or `dvc pull data.dvc`), "
            "or set data.source to a folder/.tar.gz/.zip of your own images"
        )
    if not matches_pin(path):
        raise SourceError(
            f"{path} is not the pinned tarball (sha256 differs): run `pokediff fetch-data --force` to "
            f"download it again, or set data.source={path} to ingest this file as it is"
        )
    return path, True


def run(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 0:
        print("pokediff ingest: --workers must be >= 0", file=sys.stderr)
        return 2
    params = load_params(args.params, args.overrides, {"data.num_workers": args.workers})
    data = params.data
    out_dir = Path(args.out_dir or data.out_dir)
    try:
        source, sprite_layout = resolve_source(args.source or data.source, Path(args.raw_dir or data.raw_dir))
        report = ingest(source, out_dir, data, sprite_layout=sprite_layout, progress=not args.quiet)
    except PokediffError as exc:  # IngestError, SourceError, LockedError (another ingest writes here), ...
        print(f"pokediff ingest: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except Stopped as stop:  # the new dataset is built beside the old one and dropped (data/ingest.py)
        raise stop.explained(f"stopped by {signal_name(stop.signum)}; the dataset in {out_dir} is unchanged "
                             "(the half-built one was removed)") from None
    summary = report.summary
    per_variant = ", ".join(f"{k} {v}" for k, v in summary["images_per_variant"].items())
    print(
        f"{summary['images']} images ({per_variant}) of {summary['species']} species from "
        f"{summary['files_used']} files -> {out_dir} in {summary['seconds']:.1f} s\n"
        f"duplicates dropped: {summary['duplicates_dropped']}; quarantined: {summary['quarantined']} "
        f"(see {out_dir / 'quarantine.csv'}); ignored: {sum(summary['ignored'].values())} (see ignored.csv)"
    )
    return 0
