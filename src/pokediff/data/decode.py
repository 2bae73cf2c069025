"""Image file bytes -> RGB pixels: the raster decoder or the SVG sandbox by file extension, then
composited on a background colour, padded to a centred square and Lanczos-resized.

    decode_frames(data, ext, ...)             -> [Frame]          RGBA, the file's own size
    to_square_frames(frames, R, background)   -> [PIL RGB R x R]  (ingest)
    decode_rgb(data, ext, resolution=R)       -> uint8 (R, R, 3), or (H, W, 3) with R=None  (the folder loader)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pokediff.data.raster import BadImageError, Frame, decode_raster
from pokediff.data.svg import decode_svg

RASTER_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
VECTOR_EXTENSIONS = frozenset({".svg"})
IMAGE_EXTENSIONS = RASTER_EXTENSIONS | VECTOR_EXTENSIONS

# SVGs are rendered at this multiple of the target resolution, then Lanczos-downsampled like the
# rasters: the same filter for every image, and resvg's anti-aliasing is not the last word.
SVG_OVERSAMPLE = 2
# The size an SVG is rendered for when none is asked for (the project's default data.resolution).
DEFAULT_RESOLUTION = 64

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)  # the default background transparent pixels are composited on


def check_square_limit(width: int, height: int, max_pixels: int) -> None:
    """The padded square of `to_square_rgb` (side = the longer edge) is allocated too: a 4,000,000x1
    image is within a 4,000,000-pixel limit, its 4,000,000^2 square is not."""
    side = max(width, height)
    if side * side > max_pixels:
        raise BadImageError(
            f"size {width}x{height} pads to a {side}x{side} square = {side * side:,} pixels, over the "
            f"limit of {max_pixels:,} (data.max_pixels); not used"
        )


def decode_frames(
    data: bytes, extension: str, *, frames_per_animation: int, max_pixels: int, resolution: int
) -> list[Frame]:
    """Dispatch on the file extension (lower case, with dot). Unknown extensions are bad files.

    `resolution` is the size the frames are meant for: SVGs are rendered at SVG_OVERSAMPLE times it."""
    if extension in VECTOR_EXTENSIONS:
        return decode_svg(data, render_size=SVG_OVERSAMPLE * resolution, max_pixels=max_pixels)
    if extension in RASTER_EXTENSIONS:
        return decode_raster(data, frames_per_animation=frames_per_animation, max_pixels=max_pixels)
    shown = extension or "(none)"
    raise BadImageError(f"unknown extension {shown}; expected one of {', '.join(sorted(IMAGE_EXTENSIONS))}")


# ----------------------------------------------------------------------------------------------
# Compositing and squaring
# ----------------------------------------------------------------------------------------------
def to_rgb(image: Image.Image, background: RGB = WHITE) -> Image.Image:
    """Any mode, any size -> RGB of the same size, transparent pixels composited on `background`.

    Compositing blends by alpha; dropping alpha instead would show whatever colour the fully
    transparent pixels happen to hold. An opaque image comes out with its pixels unchanged."""
    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (*background, 255))
    flat.alpha_composite(rgba)
    return flat.convert("RGB")


def to_square_rgb(image: Image.Image, resolution: int, background: RGB = WHITE) -> Image.Image:
    """RGBA (any size) -> RGB `resolution`x`resolution`: composite, pad centred, Lanczos resize.

    In this order because: resizing before compositing would blend the (arbitrary) colour of fully
    transparent pixels into the edges as fringes; padding the *canvas* (not each frame's bounding
    box) keeps the frames of one animation at one scale, and the generation-V canvases are already
    tight (median 78 % covered by the alpha bounding box); one Lanczos resize of the padded square
    is a proper low-pass filter when shrinking."""
    flat = to_rgb(image, background)
    side = max(flat.size)
    square = Image.new("RGB", (side, side), background)
    square.paste(flat, ((side - flat.width) // 2, (side - flat.height) // 2))
    if side != resolution:
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return square


def to_square_frames(frames: list[Frame], resolution: int, background: RGB, max_pixels: int) -> list[Image.Image]:
    """`to_square_rgb` of every frame; all padded squares are checked against `max_pixels` before
    the first one is allocated."""
    for frame in frames:
        check_square_limit(frame.image.width, frame.image.height, max_pixels)
    return [to_square_rgb(frame.image, resolution, background) for frame in frames]


def decode_rgb(
    data: bytes, extension: str, *, resolution: int | None, max_pixels: int, background: RGB = WHITE
) -> np.ndarray:
    """One image file's bytes -> uint8 (H, W, 3): the first frame of an animation, composited on
    `background`; padded to a square and resized to `resolution` x `resolution`, or, with
    `resolution=None`, at its own size. Raises BadImageError."""
    frames = decode_frames(data, extension, frames_per_animation=1, max_pixels=max_pixels,
                           resolution=resolution or DEFAULT_RESOLUTION)
    if resolution is None:
        return np.array(to_rgb(frames[0].image, background))
    return np.array(to_square_frames(frames, resolution, background, max_pixels)[0])
