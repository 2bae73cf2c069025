"""Image conversion, the one place for it: raw file bytes -> RGBA frames -> RGB pixels -> PNG bytes,
uint8 <-> [-1, 1] floats, and the pixel hash.

Everything here works on bytes, PIL images, arrays and tensors, never on paths or params, so the same
code serves ingest (archives and folders), training and scoring (through `pokediff.data.sources`,
which finds and reads the files) and the tests. torch is never imported here: ingest's worker
processes load this module and must stay light; the tensor functions only call tensor methods.

Why the steps are in this order (see `to_square_rgb`):

1. composite RGBA on the background colour first: resizing before compositing would blend the
   (arbitrary) colour of fully transparent pixels into the edges as dark or coloured fringes;
2. pad the *canvas* to a square, content centred: the generation-V sprite canvases are already
   tight around the Pokémon (median 78 % of the canvas is covered by the alpha bounding box), and
   keeping the canvas instead of cropping each frame to its own bounding box keeps the frames of
   one animation at the same scale;
3. resize the padded square once with Lanczos (a proper low-pass filter when shrinking).

A decoded image that cannot be used raises `BadImageError` whose message is the reason written to
quarantine.csv. The pixel limit is checked on the *declared* size before any pixel is decoded,
so a decompression bomb costs a header read, not gigabytes of memory. It is checked for every
buffer a decoder will allocate, not just the file's header:

- every frame of a GIF: Pillow grows the canvas to fit a frame larger than the logical screen
  (an 8x8 screen can hold a 13000x13000 frame), so all image descriptors are read first;
- every raster embedded in an SVG (`data:` URIs), which resvg decodes at full size, whatever size
  it is drawn at; nested SVG images are checked the same way;
- the square a frame is padded to (`to_square_rgb`): a 4,000,000x1 image is within the limit,
  its 4,000,000^2 square is not.

SVGs are rendered from their own bytes only: any href that is not a `data:` URI or a `#fragment`,
any CSS `url()` / `@import` pointing elsewhere and any external entity make the file quarantined
before resvg (which would load local files named by `<image href>`) sees it.
"""

from __future__ import annotations

import base64
import io
import os
import re
import struct
import urllib.parse
import warnings
from dataclasses import dataclass
from xml.parsers import expat

import numpy as np
from PIL import Image, ImageOps

from pokediff.errors import PokediffError, shorten
from pokediff.pixels import pixel_sha256

RASTER_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
VECTOR_EXTENSIONS = frozenset({".svg"})
IMAGE_EXTENSIONS = RASTER_EXTENSIONS | VECTOR_EXTENSIONS

# Only these decoders may run on untrusted input: a file named .png that is really an EPS or a
# PSD must not reach Pillow's more exotic (or external-program) decoders.
ALLOWED_PIL_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

# A pixel counts as background when no channel differs from the background colour by more than
# this (0..255 scale). Lanczos leaves faint ringing next to edges; 8 keeps that out of the content.
BACKGROUND_TOLERANCE = 8

# SVGs are rendered at this multiple of the target resolution, then Lanczos-downsampled like the
# rasters: the same filter for every image, and resvg's anti-aliasing is not the last word.
SVG_OVERSAMPLE = 2
# The size an SVG is rendered for when none is asked for (the project's default data.resolution).
DEFAULT_RESOLUTION = 64

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)  # the default background transparent pixels are composited on


class BadImageError(PokediffError, ValueError):
    """The file cannot become a training image; the message is the quarantine reason."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: RGBA pixels plus where it sits in its animation."""

    image: Image.Image  # mode RGBA, the file's own canvas size
    index: int  # frame number inside the file (0 for still images)
    n_frames: int  # frames in the file (1 for still images)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
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


def check_square_limit(width: int, height: int, max_pixels: int) -> None:
    """The padded square of `to_square_rgb` (side = the longer edge) is allocated too."""
    side = max(width, height)
    if side * side > max_pixels:
        raise BadImageError(
            f"size {width}x{height} pads to a {side}x{side} square = {side * side:,} pixels, over the "
            f"limit of {max_pixels:,} (data.max_pixels); not used"
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


_SVG_ROOT = re.compile(rb"<svg\b[^>]*>", re.IGNORECASE | re.DOTALL)
_SVG_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px|pt|pc|mm|cm|in)?\s*$")
_PX_PER_UNIT = {None: 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0}


def _svg_attribute(tag: str, name: str) -> str | None:
    match = re.search(rf"\s{name}\s*=\s*[\"']([^\"']*)[\"']", tag)
    return match.group(1) if match else None


def svg_declared_size(data: bytes) -> tuple[float, float] | None:
    """(width, height) in px the SVG asks for (width/height attributes, else the viewBox).

    None when the root tag declares no absolute size (e.g. percentages): the render size is
    bounded by `decode_svg` anyway. Parsed with a regex on the root tag only, without an XML parser,
    so a hostile document cannot make the *check* expensive.
    """
    root = _SVG_ROOT.search(data[:65536])
    if root is None:
        return None
    tag = root.group(0).decode("utf-8", "replace")
    width, height = _svg_attribute(tag, "width"), _svg_attribute(tag, "height")
    lengths = [_SVG_LENGTH.match(v) if v is not None else None for v in (width, height)]
    if all(lengths):
        return tuple(float(m.group(1)) * _PX_PER_UNIT[m.group(2)] for m in lengths)  # type: ignore[return-value, union-attr]
    view_box = _svg_attribute(tag, "viewBox")
    if view_box:
        parts = re.split(r"[\s,]+", view_box.strip())
        if len(parts) == 4:
            try:
                return abs(float(parts[2])), abs(float(parts[3]))
            except ValueError:
                return None
    return None


_SVG_MAX_NESTING = 3  # SVG images embedded in SVG images ... checked this deep, refused deeper
# CSS that names a resource: url(...) that is not a #fragment or data:, and @import of any kind.
_CSS_EXTERNAL = re.compile(r"url\(\s*['\"]?\s*(?!#|data:)[^)\s'\"]|@import", re.IGNORECASE)


def _data_uri_payload(uri: str) -> tuple[str, bytes]:
    """(media type, bytes) of a `data:` URI."""
    header, _, payload = uri.strip()[5:].partition(",")
    if ";base64" in header.lower():
        body = base64.b64decode(re.sub(r"\s+", "", payload) + "==", validate=False)
    else:
        body = urllib.parse.unquote_to_bytes(payload)
    return header.split(";")[0].strip().lower(), body


def check_svg_resources(data: bytes, max_pixels: int, depth: int = 0) -> None:
    """Refuse an SVG that would make the renderer read anything but its own bytes, or decode an
    embedded image larger than `max_pixels`. The document is parsed once with expat (no external
    entities, no DTD fetching); every attribute named href (any namespace prefix) must be empty, a
    `#fragment` or a `data:` URI, whose payload is size-checked like a raster file (header only).
    """
    def refuse(reason: str) -> None:
        raise BadImageError(f"SVG {reason}")

    def check_href(value: str) -> None:
        target = value.strip()
        if not target or target.startswith("#"):
            return
        if target[:5].lower() != "data:":
            refuse(f"refers to an external resource (href={shorten(target, 80)!r}); only data: URIs are "
                   "rendered, nothing outside the file is read")
        try:
            media, payload = _data_uri_payload(target)
        except ValueError as exc:
            refuse(f"has an unreadable data: URI ({exc})")
        if "svg" in media or payload.lstrip()[:5] in (b"<svg ", b"<?xml", b"<svg>"):
            if depth + 1 >= _SVG_MAX_NESTING:
                refuse(f"nests SVG images more than {_SVG_MAX_NESTING} deep")
            declared = svg_declared_size(payload)
            if declared is not None:
                check_pixel_limit(max(1, round(declared[0])), max(1, round(declared[1])), max_pixels)
            check_svg_resources(payload, max_pixels, depth + 1)
        else:
            try:
                check_raster_header(payload, max_pixels)
            except BadImageError as exc:
                refuse(f"embeds an image that is refused: {exc}")

    open_elements: list[str] = []

    def start(name: str, attributes: dict[str, str]) -> None:
        open_elements.append(name.rsplit(":", 1)[-1])
        for key, value in attributes.items():
            if key.rsplit(":", 1)[-1] == "href":
                check_href(value)
            elif _CSS_EXTERNAL.search(value):
                refuse(f"attribute {key} refers to an external resource ({shorten(value, 80)!r})")

    def end(name: str) -> None:
        open_elements.pop()

    def text(content: str) -> None:
        if open_elements and open_elements[-1] == "style" and _CSS_EXTERNAL.search(content):
            refuse(f"style refers to an external resource ({shorten(content.strip(), 80)!r})")

    def external_entity(*_: object) -> int:
        refuse("declares an external entity; nothing outside the file is read")
        return 0

    parser = expat.ParserCreate()  # no namespace processing: attribute names keep their prefix
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.ExternalEntityRefHandler = external_entity
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise BadImageError(f"unreadable SVG: not well-formed XML ({exc})") from None


# The renderer runs in a forked child with these limits: resvg allocates whatever a document asks
# for (a <pattern> tile of 100000 user units at the render scale is a 6.5 TB pixmap: it aborts the
# process; 20000 units would succeed and take gigabytes), and a failed allocation in Rust is an
# abort, not an exception. The child's death becomes a quarantine reason instead.
SVG_RENDER_MEMORY = 1024**3  # bytes of address space the render may add
SVG_RENDER_SECONDS = 60  # CPU seconds
_SVG_OUTPUT_LIMIT = 64 * 1024 * 1024  # PNG bytes read back from the child (a 256^2 render is ~100 KB)


def _render_svg(text: str, render_size: int) -> bytes:
    import resvg_py  # local import: only ingest of SVG sources needs the native renderer

    return bytes(resvg_py.svg_to_bytes(svg_string=text, skip_system_fonts=True, width=render_size,
                                       height=render_size))


def _vm_size() -> int:
    """This process's current address space in bytes (0 when /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _render_svg_limited(text: str, render_size: int) -> bytes:
    """`_render_svg` in a forked child with RLIMIT_AS/RLIMIT_CPU; BadImageError when it fails or dies.

    Without fork (Windows) or /proc, the render runs in this process, bounded only by the checks
    made before it.
    """
    import resource

    import resvg_py  # noqa: F401 - imported here, before the fork, never in the child

    base = _vm_size()
    if not hasattr(os, "fork") or base == 0:
        return _render_svg(text, render_size)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: render, send [status byte][PNG or error text], exit without cleanup
        status, payload = 1, b"renderer failed"
        try:
            os.close(read_fd)
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 2)  # Rust prints "memory allocation of N bytes failed" before aborting
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = base + SVG_RENDER_MEMORY
            resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
            resource.setrlimit(resource.RLIMIT_CPU, (SVG_RENDER_SECONDS, SVG_RENDER_SECONDS + 5))
            try:
                status, payload = 0, _render_svg(text, render_size)
            except Exception as exc:  # noqa: BLE001 - resvg reports every parse/render failure as ValueError
                payload = f"{type(exc).__name__}: {exc}".encode()[:2000]
            with os.fdopen(write_fd, "wb") as out:
                out.write(bytes([status]) + payload)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        reply = pipe.read(_SVG_OUTPUT_LIMIT + 2)
    _, wait_status = os.waitpid(pid, 0)
    if not reply or len(reply) > _SVG_OUTPUT_LIMIT + 1:
        if os.WIFSIGNALED(wait_status):
            how = f"died of signal {os.WTERMSIG(wait_status)}"
        else:
            how = "gave no image"
        raise BadImageError(
            f"SVG renderer {how}: the document needs more than {SVG_RENDER_MEMORY:,} bytes or "
            f"{SVG_RENDER_SECONDS} CPU seconds to render; not rendered"
        )
    if reply[0] != 0:
        raise BadImageError(f"unreadable SVG: {reply[1:].decode('utf-8', 'replace')}")
    return reply[1:]


def decode_svg(data: bytes, *, render_size: int, max_pixels: int) -> list[Frame]:
    """SVG bytes -> one RGBA frame rendered by resvg to fit a `render_size` square.

    Checked before rendering: the declared size against `max_pixels` (resvg aborts the whole
    process, not an exception, when asked to allocate a huge canvas), and that the document reads
    nothing but itself and embeds no raster over `max_pixels` (`check_svg_resources`). The render
    itself runs with a memory and CPU limit (`_render_svg_limited`), at an explicit width/height.
    """
    if not data:
        raise BadImageError("empty file (0 bytes)")
    if _SVG_ROOT.search(data[:65536]) is None:
        raise BadImageError("not an SVG document (no <svg> root element)")
    declared = svg_declared_size(data)
    if declared is not None:
        check_pixel_limit(max(1, round(declared[0])), max(1, round(declared[1])), max_pixels)
    check_svg_resources(data, max_pixels)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadImageError(f"unreadable SVG: {type(exc).__name__}: {exc}") from None
    png = _render_svg_limited(text, render_size)
    try:
        image = Image.open(io.BytesIO(png), formats=("PNG",))
        image.load()
    except Exception as exc:  # noqa: BLE001 - a broken render is a property of the file
        raise BadImageError(f"unreadable SVG: {type(exc).__name__}: {exc}") from None
    return [Frame(image.convert("RGBA"), 0, 1)]


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
# RGB, square RGB, encoding
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
    """RGBA (any size) -> RGB `resolution`x`resolution`: composite, pad centred, Lanczos resize."""
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


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelStats:
    mean: float  # over all pixels and channels, 0..255
    std: float  # same; near 0 means an almost uniform image
    background_fraction: float  # share of pixels within BACKGROUND_TOLERANCE of the background
    sha256: str


def pixel_stats(pixels: np.ndarray, background: RGB = WHITE) -> PixelStats:
    """Statistics of an (H, W, C) uint8 array, as written to manifest.csv and checked by validate."""
    values = pixels.astype(np.float64)
    if pixels.ndim == 3 and pixels.shape[2] == len(background):
        distance = np.abs(values - np.asarray(background, dtype=np.float64)).max(axis=2)
        background_fraction = float((distance <= BACKGROUND_TOLERANCE).mean())
    else:  # not RGB: cannot be compared with an RGB background colour
        background_fraction = float("nan")
    return PixelStats(
        mean=round(float(values.mean()), 4),
        std=round(float(values.std()), 4),
        background_fraction=round(background_fraction, 6),
        sha256=pixel_sha256(pixels),
    )
