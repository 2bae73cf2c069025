"""Raster image bytes (PNG, JPEG, WebP, GIF) -> RGBA frames, with every size check made first.

    decode_raster(data, frames_per_animation=F, max_pixels=P) -> [Frame]   RGBA, the file's canvas size
    open_raster(data)                                         -> PIL image, header only (checked as below)

Only Pillow's PNG/JPEG/WebP/GIF decoders run. Before Pillow parses anything, the file's own structure
is walked without decompressing it (`check_decode_work`): what the decoder would walk, the check walks
first, and refuses a file whose walk is out of proportion to an image:

- blocks: PNG chunks, JPEG segments before the first scan, GIF sub-blocks, WebP chunks are parsed by
  Pillow one at a time in Python: at most MAX_BLOCKS of them;
- scans: a progressive JPEG makes the decoder pass over the whole image once per scan (a 1.8 MB file
  of 50,000 scans took 36 s): at most MAX_JPEG_SCANS;
- frames: an animation (GIF, APNG, WebP) is decoded frame by frame up to the frame asked for, each
  one composed onto the full canvas: at most MAX_FRAMES frames and MAX_FRAME_WORK frames x canvas
  pixels (a 2 MB GIF of 100,000 one-pixel frames on a 2000x2000 canvas ran for hours).

The pixel limit is checked on the declared size before any pixel is decoded, so a decompression bomb
costs a header read; for a GIF it is checked on the largest canvas any of its frames makes Pillow
allocate, for an animation's later frames again after each seek. Decoding itself runs under a CPU-time
limit (DECODE_CPU_SECONDS, pokediff.limits.cpu_time_limit). A file that cannot be used raises
BadImageError, whose message is the quarantine reason.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from pokediff.errors import PokediffError
from pokediff.limits import cpu_time_limit

# Only these decoders may run on untrusted input: a file named .png that is really an EPS or a
# PSD must not reach Pillow's more exotic (or external-program) decoders.
ALLOWED_PIL_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

# What one file may make the decoder walk (see the module docstring). The sprite GIFs have up to 357
# frames of about 96x96 pixels and ~200 blocks; an encoder's progressive JPEG has about 10 scans.
MAX_BLOCKS = 1_000_000
MAX_JPEG_SCANS = 256
MAX_FRAMES = 10_000
MAX_FRAME_WORK = 1_000_000_000  # frames x canvas pixels: about a second of decoding
DECODE_CPU_SECONDS = 10.0  # per file; a 4-megapixel still image decodes in a tenth of that


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


# ----------------------------------------------------------------------------------------------
# Walking a file's structure before Pillow does (nothing is decompressed)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Structure:
    """What the decoder will walk in a file, counted from its structure alone."""

    width: int  # the largest canvas the frames make (GIF: screen or frame extents; else the header)
    height: int
    frames: int  # frames the decoder steps through (1 for a still image)
    blocks: int  # chunks / segments / sub-blocks Pillow parses one by one
    scans: int = 0  # JPEG: scan headers in the file (progressive passes)


def _gif_structure(data: bytes) -> Structure:
    """Walks the block structure: the logical screen, every image descriptor's extent (left + width,
    top + height; Pillow enlarges its canvas to the largest one) and every sub-block. Stops quietly at
    malformed data (Pillow reports that) or after MAX_BLOCKS sub-blocks."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # skip the global colour table
    frames = blocks = 0
    end = len(data)

    def skip_sub_blocks(at: int) -> int:  # length-prefixed blocks ending with a 0 length
        nonlocal blocks
        while at < end and blocks <= MAX_BLOCKS:
            size = data[at]
            at += 1 + size
            blocks += 1
            if size == 0:
                break
        return at

    while pos < end and blocks <= MAX_BLOCKS:
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif block == 0x2C:  # image descriptor: left, top, width, height, flags
            if pos + 10 > end:
                break
            left, top, frame_width, frame_height, frame_flags = struct.unpack_from("<HHHHB", data, pos + 1)
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            frames += 1
            pos += 10 + (3 << ((frame_flags & 7) + 1) if frame_flags & 0x80 else 0)
            pos = skip_sub_blocks(pos + 1)  # +1: the LZW minimum code size byte
        else:  # 0x3B trailer, or garbage
            break
    return Structure(width, height, max(frames, 1), blocks)


def _png_structure(data: bytes) -> Structure:
    """Chunks up to IEND; an APNG's frames are its fcTL chunks (acTL only declares a count)."""
    width, height = struct.unpack_from(">II", data, 16) if len(data) >= 24 else (0, 0)
    pos, blocks, frames = 8, 0, 0
    while pos + 8 <= len(data) and blocks <= MAX_BLOCKS:
        length, kind = struct.unpack_from(">I4s", data, pos)
        blocks += 1
        if kind == b"fcTL":
            frames += 1
        elif kind == b"IEND":
            break
        pos += 12 + length
    return Structure(width, height, max(frames, 1), blocks)


_JPEG_SCAN = b"\xff\xda"  # start-of-scan marker; the entropy-coded data that follows never holds it


def _jpeg_structure(data: bytes) -> Structure:
    """Segments before the first scan (Pillow's header parser reads each in Python), and the scan
    headers in the whole file (every frame of an MPO, every pass of a progressive JPEG). The size is
    Pillow's to read; the frames are the MPO's, counted by Pillow from a header of at most 64 KB."""
    pos, blocks = 2, 0
    while pos + 4 <= len(data) and blocks <= MAX_BLOCKS:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        blocks += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # the first scan, or the end: the header is over
            break
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return Structure(0, 0, 1, blocks, data.count(_JPEG_SCAN))


def _webp_structure(data: bytes) -> Structure:
    """RIFF chunks; an animation's frames are its ANMF chunks, its canvas the VP8X chunk's."""
    width = height = 0
    pos, blocks, frames = 12, 0, 0
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    while pos + 8 <= end and blocks <= MAX_BLOCKS:
        kind, length = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        blocks += 1
        if kind == b"VP8X" and length >= 10:
            width = 1 + int.from_bytes(data[pos + 12:pos + 15], "little")
            height = 1 + int.from_bytes(data[pos + 15:pos + 18], "little")
        elif kind == b"ANMF":
            frames += 1
        pos += 8 + length + (length & 1)
    return Structure(width, height, max(frames, 1), blocks)


def _structure(data: bytes) -> Structure | None:
    """The walk for the format the data's signature names; None for anything else (Pillow refuses it)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_structure(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 13:
        return _gif_structure(data)
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_structure(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_structure(data)
    return None


def check_decode_work(data: bytes, max_pixels: int) -> None:
    """Refuse a file whose decoding would walk more than an image's worth (see the module docstring):
    BadImageError naming what is over which limit. Nothing is decompressed."""
    structure = _structure(data)
    if structure is None:
        return
    if structure.blocks > MAX_BLOCKS:
        raise BadImageError(f"more than {MAX_BLOCKS:,} chunks or blocks to parse (an image has hundreds); not decoded")
    if structure.scans > MAX_JPEG_SCANS:
        raise BadImageError(f"JPEG with {structure.scans:,} scans (the limit is {MAX_JPEG_SCANS}; each one is a pass "
                            "over the whole image); not decoded")
    if data[:3] == b"GIF" and structure.width * structure.height > max_pixels:
        raise BadImageError(  # Pillow's header says only the logical screen size
            f"a GIF frame extends the canvas to {structure.width}x{structure.height} = "
            f"{structure.width * structure.height:,} pixels, over the limit of {max_pixels:,} (data.max_pixels); "
            "not decoded"
        )
    if structure.frames > MAX_FRAMES:
        raise BadImageError(f"animation of {structure.frames:,} frames (the limit is {MAX_FRAMES:,}); not decoded")
    work = structure.frames * structure.width * structure.height
    if structure.frames > 1 and work > MAX_FRAME_WORK:
        raise BadImageError(
            f"animation of {structure.frames:,} frames on a {structure.width}x{structure.height} canvas: "
            f"{work:,} pixels to compose, over the limit of {MAX_FRAME_WORK:,}; not decoded"
        )


# ----------------------------------------------------------------------------------------------
# Opening and decoding
# ----------------------------------------------------------------------------------------------
def open_raster(data: bytes, max_pixels: int) -> Image.Image:
    """The file's header as a PIL image (no pixel decoded yet), after `check_decode_work` and the
    pixel limit on its declared size. Only PNG/JPEG/WebP/GIF are opened. Raises BadImageError."""
    if not data:
        raise BadImageError("empty file (0 bytes)")
    check_decode_work(data, max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; ours (max_pixels) is checked right below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with cpu_time_limit(DECODE_CPU_SECONDS, _too_slow):
                image = Image.open(io.BytesIO(data), formats=ALLOWED_PIL_FORMATS)
    except Image.UnidentifiedImageError:
        raise BadImageError("not an image Pillow can identify (PNG/JPEG/WebP/GIF)") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"declared size exceeds the limit of Pillow, not decoded: {exc}") from None
    except BadImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any header failure is a property of the file
        raise BadImageError(f"unreadable image header: {type(exc).__name__}: {exc}") from None
    check_pixel_limit(image.width, image.height, max_pixels)
    return image


def check_raster_header(data: bytes, max_pixels: int) -> None:
    """Size checks of `decode_raster`, without decoding any pixel (used for SVG-embedded images)."""
    open_raster(data, max_pixels)


def _too_slow() -> BadImageError:
    return BadImageError(f"decoding took more than {DECODE_CPU_SECONDS:g} s of CPU time (the limit per file); "
                         "not used")


def _check_complete(image_format: str | None, data: bytes) -> None:
    """Catch truncation Pillow forgives: a cut GIF decodes as a shorter animation, and a PNG cut
    after its last pixel chunk decodes fine. Both formats end with a fixed marker."""
    if image_format == "GIF" and not data.endswith(b"\x3b"):
        raise BadImageError("truncated GIF: the file does not end with the GIF trailer byte")
    if image_format == "PNG" and data.rfind(b"IEND") < 0:
        raise BadImageError("truncated PNG: no IEND chunk")


def decode_raster(data: bytes, *, frames_per_animation: int, max_pixels: int) -> list[Frame]:
    """PNG/JPEG/WebP/GIF bytes -> RGBA frames (`frames_per_animation` spread over an animation).

    Raises BadImageError for empty, unidentifiable, oversized, truncated, corrupt or too costly data.
    """
    image = open_raster(data, max_pixels)
    _check_complete(image.format, data)
    out: list[Frame] = []
    try:
        with cpu_time_limit(DECODE_CPU_SECONDS, _too_slow):
            n_frames = int(getattr(image, "n_frames", 1) or 1)
            for index in spread_frame_indices(n_frames, frames_per_animation):
                image.seek(index)
                check_pixel_limit(image.width, image.height, max_pixels)  # an MPO frame has its own size
                frame = image if n_frames > 1 else ImageOps.exif_transpose(image)
                out.append(Frame(frame.convert("RGBA"), index, n_frames))
    except BadImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pixel data surfaces only here
        raise BadImageError(f"corrupt or truncated pixel data: {type(exc).__name__}: {exc}") from None
    return out
