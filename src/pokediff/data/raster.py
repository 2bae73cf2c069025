"""Raster image bytes (PNG, JPEG, WebP, GIF) -> RGBA frames, with every size check made first.

    decode_raster(data, frames_per_animation=F, max_pixels=P) -> [Frame]   RGBA, the file's canvas size

Only Pillow's PNG/JPEG/WebP/GIF decoders run. The pixel limit is checked on the declared size before
any pixel is decoded, so a decompression bomb costs a header read; for a GIF it is checked on the
largest canvas any of its frames makes Pillow allocate. A file that cannot be used raises
BadImageError, whose message is the quarantine reason.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from pokediff.errors import PokediffError

# Only these decoders may run on untrusted input: a file named .png that is really an EPS or a
# PSD must not reach Pillow's more exotic (or external-program) decoders.
ALLOWED_PIL_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


class BadImageError(PokediffError, ValueError):
    """The file cannot become a training image; the message is the quarantine reason."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: RGBA pixels plus where it sits in its animation."""

    image: Image.Image  # mode RGBA, the file's own canvas size
    index: int  # frame number inside the file (0 for still images)
    n_frames: int  # frames in the file (1 for still images)


def spread_frame_indices(n_frames: int, count: int) -> list[int]:
    """`count` frame numbers spread evenly over an animation of `n_frames`, always starting at 0.

    floor(i * n / count) for i < count, deduplicated: 2 of 40 frames -> [0, 20]; 3 of 2 -> [0, 1].
    """
    if n_frames < 1 or count < 1:
        raise ValueError(f"need n_frames >= 1 and count >= 1, got {n_frames}, {count}")
    return sorted({i * n_frames // count for i in range(count)})


def check_pixel_limit(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise BadImageError(f"empty image size {width}x{height}")
    if width * height > max_pixels:
        raise BadImageError(
            f"declared size {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (data.max_pixels); not decoded"
        )


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """Position after a GIF sub-block chain (length-prefixed blocks ending with a 0 length)."""
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


def gif_canvas_size(data: bytes) -> tuple[int, int, int]:
    """(width, height, frames) of the largest canvas Pillow may build for this GIF.

    Walks the block structure without decompressing anything: the logical screen, then every image
    descriptor's extent (left + width, top + height). Pillow enlarges its canvas to the largest
    extent seen, so that is what decoding the frames would allocate. Stops quietly at malformed
    data: Pillow reports that itself.
    """
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        return 0, 0, 0
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # skip the global colour table
    frames = 0
    while pos < len(data):
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor: left, top, width, height, flags
            if pos + 10 > len(data):
                break
            left, top, frame_width, frame_height, frame_flags = struct.unpack_from("<HHHHB", data, pos + 1)
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            frames += 1
            pos += 10 + (3 << ((frame_flags & 7) + 1) if frame_flags & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)  # +1: the LZW minimum code size byte
        else:  # 0x3B trailer, or garbage
            break
    return width, height, frames


def check_raster_header(data: bytes, max_pixels: int) -> None:
    """Size checks of `decode_raster`, without decoding any pixel (used for SVG-embedded images)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"declared size exceeds the limit of Pillow, not decoded: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any header failure is a property of the file
        raise BadImageError(f"not an image Pillow can identify ({type(exc).__name__})") from None
    check_pixel_limit(image.width, image.height, max_pixels)
    if image.format == "GIF":
        width, height, _ = gif_canvas_size(data)
        _check_gif_canvas(width, height, max_pixels)


def _check_gif_canvas(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise BadImageError(
            f"a GIF frame extends the canvas to {width}x{height} = {width * height:,} pixels, over the "
            f"limit of {max_pixels:,} (data.max_pixels); not decoded"
        )


def _check_complete(image_format: str | None, data: bytes) -> None:
    """Catch truncation Pillow forgives: a cut GIF decodes as a shorter animation, and a PNG cut
    after its last pixel chunk decodes fine. Both formats end with a fixed marker."""
    if image_format == "GIF" and not data.endswith(b"\x3b"):
        raise BadImageError("truncated GIF: the file does not end with the GIF trailer byte")
    if image_format == "PNG" and data.rfind(b"IEND") < 0:
        raise BadImageError("truncated PNG: no IEND chunk")


def decode_raster(data: bytes, *, frames_per_animation: int, max_pixels: int) -> list[Frame]:
    """PNG/JPEG/WebP/GIF bytes -> RGBA frames (`frames_per_animation` spread over an animation).

    Raises BadImageError for empty, unidentifiable, oversized, truncated or corrupt data.
    """
    if not data:
        raise BadImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; ours (max_pixels) is checked right below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_PIL_FORMATS)
    except Image.UnidentifiedImageError:
        raise BadImageError("not an image Pillow can identify (PNG/JPEG/WebP/GIF)") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"declared size exceeds the limit of Pillow, not decoded: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
        raise BadImageError(f"unreadable image header: {type(exc).__name__}: {exc}") from None
    check_pixel_limit(image.width, image.height, max_pixels)
    if image.format == "GIF":  # before n_frames or seek: both walk the frames, seek decodes them
        _check_gif_canvas(*gif_canvas_size(data)[:2], max_pixels)
    _check_complete(image.format, data)
    n_frames = int(getattr(image, "n_frames", 1) or 1)
    out: list[Frame] = []
    try:
        for index in spread_frame_indices(n_frames, frames_per_animation):
            image.seek(index)
            frame = image if n_frames > 1 else ImageOps.exif_transpose(image)
            out.append(Frame(frame.convert("RGBA"), index, n_frames))
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pixel data surfaces only here
        raise BadImageError(f"corrupt or truncated pixel data: {type(exc).__name__}: {exc}") from None
    return out
