"""Output files written whole or not at all: into a temporary file beside the target, then renamed
over it. An exception, a stop signal (pokediff.stopping) or a full disk half-way leaves the previous
file as it was and no temporary file; a reader never sees half a file.

    write_atomic(path, b"...")                   # bytes
    write_atomic(path, text)                     # str, UTF-8
    atomic_write(path, lambda tmp: np.savez(tmp, ...), durable=True)   # anything that writes a path

``durable=True`` also fsyncs the file before the rename (checkpoints: a crash of the machine must not
leave a renamed but empty file); small outputs that can be made again skip it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".tmp"  # temporary files are hidden (a leading dot) and end in .tmp: no image lister reads them


def atomic_write(path: str | Path, write: Callable[[Path], object], *, durable: bool = False) -> Path:
    """write(tmp) into a temporary file beside ``path`` (folders created), then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # also a stop signal or Ctrl-C: no temporary file stays behind
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: str | Path, data: bytes | str, *, durable: bool = False) -> Path:
    """``data`` (bytes, or text written as UTF-8) as the whole content of ``path``, atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_write(path, lambda tmp: tmp.write_bytes(raw), durable=durable)
