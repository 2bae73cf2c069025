"""Bounds shared by every reader of a file or request that pokediff did not write itself: what a small
input may make a reader allocate or walk is checked before the reader runs, and the work that cannot
be checked in advance (pixel decoding) runs under a CPU-time limit.

    read_json_text(text, what)               JSON -> value; ValueError naming `what` (not JSON, nested too deep)
    read_small_json(path, limit)             a small JSON file -> value; ValueError / OSError naming it
    zip_directory_size(file)                 (entries, bytes) of a zip's central directory, from its end
                                             record alone: what zipfile would read and keep per entry
    cpu_time_limit(seconds, error)           a context: `error()` is raised in it once the process has used
                                             `seconds` of CPU time (main thread; a no-op elsewhere)

Why each exists: json.loads recurses once per nesting level (a 100 KB "[[[[..." raises RecursionError,
a traceback, not a message); zipfile reads the whole central directory and keeps one ZipInfo (~400
bytes) per 46-byte record, so a 64 MB directory of empty names is ~1.4 M objects and 1 GB before any
member is opened; and a decoder's work is not always visible in a header (a progressive JPEG repeats
its scans, an animation its frames), so a limit on time backs up the header checks.
"""

from __future__ import annotations

import json
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pokediff.errors import shorten

# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------
MAX_JSON_BYTES = 16 << 20  # pokediff's own JSON files (summaries, sidecars, run info) are a few KB


def read_json_text(text: str | bytes, what: str) -> Any:
    """``json.loads`` that fails with one ValueError naming `what`: not JSON, not UTF-8, or nested
    deeper than Python's recursion limit (json's decoder recurses per level; its RecursionError is
    turned into the same ValueError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply to be one of pokediff's files") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{what}: not valid JSON ({shorten(str(exc), 120)})") from None


def read_small_json(path: str | Path, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value of a file of at most `limit` bytes. Raises OSError when it cannot be read and
    ValueError (naming the file) when it is larger, not JSON or nested too deeply."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit:,} bytes; not one of pokediff's JSON files")
    return read_json_text(data, str(path))


# ----------------------------------------------------------------------------------------------
# Zip central directory
# ----------------------------------------------------------------------------------------------
_END = b"PK\x05\x06"  # end of central directory record (22 bytes + comment)
_END64_LOCATOR = b"PK\x06\x07"  # zip64 locator (20 bytes), just before the end record
_END64 = b"PK\x06\x06"  # zip64 end record (56 bytes)
_MAX_TAIL = 22 + 0xFFFF  # the end record and the longest comment


def zip_directory_size(handle: BinaryIO) -> tuple[int, int]:
    """(entries, bytes) of the central directory that a zip file's end record declares, found the way
    zipfile finds it (the last end-record signature in the file's final 64 KiB, zip64 when present).

    zipfile reads that many bytes and walks them whole when the archive is opened, whatever the entry
    count says, so the byte count is what bounds its memory. Raises ValueError when there is no end
    record (not a zip)."""
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(max(0, size - _MAX_TAIL))
    tail = handle.read(_MAX_TAIL)
    at = tail.rfind(_END)
    if at < 0 or at + 22 > len(tail):
        raise ValueError("no zip end-of-central-directory record")
    entries, directory_bytes = struct.unpack_from("<HI", tail, at + 10)
    end_offset = size - len(tail) + at
    if end_offset >= 20:
        handle.seek(end_offset - 20)
        locator = handle.read(20)
        if locator[:4] == _END64_LOCATOR:
            (record_offset,) = struct.unpack_from("<Q", locator, 8)
            handle.seek(record_offset)
            record = handle.read(56)
            if len(record) == 56 and record[:4] == _END64:
                entries, directory_bytes = struct.unpack_from("<QQ", record, 32)
    return entries, directory_bytes


# ----------------------------------------------------------------------------------------------
# CPU time
# ----------------------------------------------------------------------------------------------
class _CpuTimeExpired(BaseException):
    """Raised by the SIGPROF handler. A BaseException, so a library's `except Exception` inside the
    limited code (Pillow has several) cannot swallow it; `cpu_time_limit` turns it into its error."""


_limit_active = threading.local()


@contextmanager
def cpu_time_limit(seconds: float, error: Callable[[], Exception]) -> Iterator[None]:
    """Raise `error()` inside the block once this process has used `seconds` of CPU time in it.

    A SIGPROF interval timer (process CPU time, so a busy machine does not shorten it): the handler
    raises between two Python bytecodes, which for Pillow is between two decoder calls of at most
    64 KB of input each. It keeps firing every 0.1 s of CPU after that, so code that catches the first
    one is interrupted again. Signals reach only the main thread: elsewhere, or nested inside another
    limit, the block runs without one (the checks made before decoding still bound it)."""
    if (threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer")
            or getattr(_limit_active, "on", False)):
        yield
        return
    armed = True

    def expired(signum: int, frame: Any) -> None:
        if armed:
            raise _CpuTimeExpired

    previous = signal.signal(signal.SIGPROF, expired)
    _limit_active.on = True
    signal.setitimer(signal.ITIMER_PROF, seconds, 0.1)
    try:
        yield
        armed = False
    except _CpuTimeExpired:
        armed = False
        raise error() from None
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        _limit_active.on = False
