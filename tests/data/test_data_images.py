"""Decoding and squaring single images: real sprite GIFs and SVGs, and hand-made edge cases."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pokediff.data.decode import WHITE, to_square_rgb
from pokediff.data.manifest import pixel_stats
from pokediff.data.raster import BadImageError, decode_raster, spread_frame_indices
from pokediff.data.sprites import ANIMATED_DIR, DREAMWORLD_DIR
from pokediff.data.svg import decode_svg, svg_declared_size
from pokediff.pixels import encode_png


@pytest.mark.parametrize(
    ("n_frames", "count", "expected"),
    [(40, 2, [0, 20]), (1, 2, [0]), (2, 3, [0, 1]), (51, 2, [0, 25]), (10, 4, [0, 2, 5, 7]), (5, 1, [0])],
)
def test_frames_are_spread_evenly_from_the_first(n_frames: int, count: int, expected: list[int]) -> None:
    assert spread_frame_indices(n_frames, count) == expected


def test_real_animated_gif_gives_spread_frames_with_transparency(sprite_member) -> None:
    data = sprite_member(ANIMATED_DIR + "25.gif")  # Pikachu, palette GIF with a transparent colour
    frames = decode_raster(data, frames_per_animation=2, max_pixels=10**6)
    n = frames[0].n_frames
    assert n > 2
    assert [f.index for f in frames] == [0, n // 2]
    alpha = np.asarray(frames[0].image)[..., 3]
    assert frames[0].image.mode == "RGBA"
    assert alpha.min() == 0 and alpha.max() == 255  # transparent surround, opaque Pokémon


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 200, 30)])
def test_transparent_pixels_take_the_background_colour(sprite_member, background) -> None:
    frame = decode_raster(sprite_member(ANIMATED_DIR + "25.gif"), frames_per_animation=1, max_pixels=10**6)[0]
    square = np.asarray(to_square_rgb(frame.image, 64, background))
    assert square.shape == (64, 64, 3)
    assert tuple(square[0, 0]) == background and tuple(square[-1, -1]) == background
    stats = pixel_stats(square, background)
    assert 0.2 < stats.background_fraction < 0.95  # a Pokémon on the background, not either alone


def test_non_square_image_is_centred_on_padding() -> None:
    wide = Image.new("RGBA", (60, 20), (255, 0, 0, 255))
    square = np.asarray(to_square_rgb(wide, 30))  # 60x60 padded, then resized by 1/2
    assert square.shape == (30, 30, 3)
    assert (square[:6] >= 250).all() and (square[-6:] >= 250).all()  # white bands (Lanczos rings a little)
    assert tuple(square[15, 15]) == (255, 0, 0)  # red in the middle


def test_real_dream_world_svg_renders(sprite_member) -> None:
    data = sprite_member(DREAMWORLD_DIR + "1.svg")
    assert svg_declared_size(data) == (226.0, 218.0)
    frame = decode_svg(data, render_size=128, max_pixels=10**6)[0]
    assert max(frame.image.size) == 128
    stats = pixel_stats(np.asarray(to_square_rgb(frame.image, 64)), WHITE)
    assert 0.2 < stats.background_fraction < 0.95 and stats.std > 20


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ('<svg width="2in" height="96px">', (192.0, 96.0)),
        ('<svg viewBox="0 0 300 150">', (300.0, 150.0)),
        ('<svg width="100%" height="100%" viewBox="-5 -5 40,20">', (40.0, 20.0)),
        ('<svg width="100%">', None),
    ],
)
def test_svg_declared_size(root: str, expected) -> None:
    assert svg_declared_size(f'<?xml version="1.0"?>{root}</svg>'.encode()) == expected


def test_svg_bomb_is_refused_before_rendering() -> None:
    # resvg would abort the whole process allocating this canvas; the declared size stops it first.
    bomb = b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><rect width="9" height="9"/></svg>'
    with pytest.raises(BadImageError, match="exceeds the limit"):
        decode_svg(bomb, render_size=128, max_pixels=4_000_000)


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [(3000, 3000, "3000x3000 = 9,000,000 pixels exceeds the limit"), (50_000, 50_000, "exceeds the limit of Pillow")],
)
def test_raster_bomb_is_refused_from_its_header(width: int, height: int, reason: str, bomb_png) -> None:
    with pytest.raises(BadImageError, match=reason):
        decode_raster(bomb_png(width, height), frames_per_animation=1, max_pixels=4_000_000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am a text file", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "unreadable image header|not an image"),
    ],
)
def test_unusable_bytes_raise_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImageError, match=reason):
        decode_raster(data, frames_per_animation=1, max_pixels=10**6)


@pytest.mark.parametrize("keep", [0.01, 0.33, 0.999])
def test_truncated_real_gif_is_a_bad_image(sprite_member, keep: float) -> None:
    # Pillow alone would decode a cut animated GIF as a shorter animation without complaint.
    data = sprite_member(ANIMATED_DIR + "25.gif")
    with pytest.raises(BadImageError, match="truncated"):
        decode_raster(data[: int(len(data) * keep)], frames_per_animation=2, max_pixels=10**6)


@pytest.mark.parametrize("keep", [0.5, -12])  # cut in the pixel data / just before the IEND chunk
def test_truncated_png_is_a_bad_image(keep: float) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = encode_png(Image.fromarray(pixels))
    cut = data[: int(len(data) * keep)] if keep > 0 else data[: int(keep)]
    with pytest.raises(BadImageError, match="truncated"):
        decode_raster(cut, frames_per_animation=1, max_pixels=10**6)


def test_png_encoding_is_deterministic_and_carries_no_metadata() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    first, second = encode_png(Image.fromarray(pixels)), encode_png(Image.fromarray(pixels.copy()))
    assert first == second
    chunks, position = [], 8
    while position < len(first):
        length = int.from_bytes(first[position : position + 4], "big")
        chunks.append(first[position + 4 : position + 8])
        position += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}  # no tEXt/tIME/pHYs chunks
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first))), pixels)
