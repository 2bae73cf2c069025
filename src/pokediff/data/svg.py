"""The SVG sandbox: SVG bytes -> one RGBA frame, rendered by resvg from the file's own bytes only.

    decode_svg(data, render_size=S, max_pixels=P) -> [Frame]   RGBA, fit into an S x S square

Checked before resvg sees the document: its declared size and every raster embedded in it (`data:`
URIs, which resvg decodes at full size, and nested SVGs) against the pixel limit; any href that is not
a `data:` URI or a `#fragment`, CSS `url()`/`@import` pointing elsewhere and external entities make it
a BadImageError (resvg would load local files named by `<image href>`). The render runs in a forked
child with an address-space and CPU limit, so an allocation resvg cannot make kills the child only.
"""

from __future__ import annotations

import base64
import io
import os
import re
import urllib.parse
from xml.parsers import expat

from PIL import Image

from pokediff.data.raster import BadImageError, Frame, check_pixel_limit, check_raster_header
from pokediff.errors import shorten

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
