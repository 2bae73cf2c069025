"""Raw sources as a list of named files: a folder (any depth), a .tar/.tar.gz/.tgz or a .zip.

Archives are read in place, never extracted: nothing is written outside the output folder, and
member names such as `../../x` or absolute paths are only ever labels. Only regular files are
listed (symlinks, devices and folders inside archives are skipped and reported as ignored).
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class SourceError(ValueError):
    """The source cannot be opened at all (missing path, unsupported kind, broken archive)."""


@dataclass(frozen=True)
class SourceEntry:
    name: str  # posix path inside the source; what manifest/quarantine call `source`/`path`
    size: int  # bytes as declared (by the archive) or on disk
    regular: bool = True  # False: symlink, device, ... (listed, never read)


class RawSource(ABC):
    """A read-only set of files. `read_all` yields contents in `entries` order, for streaming."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @abstractmethod
    def entries(self) -> list[SourceEntry]: ...

    @abstractmethod
    def read(self, entry: SourceEntry) -> bytes:
        """Contents of one regular entry; reading in `entries` order is the fast path."""

    def close(self) -> None:  # noqa: B027 - deliberately optional: folders hold no handle
        """Release file handles (archives)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class FolderSource(RawSource):
    def entries(self) -> list[SourceEntry]:
        found = []
        for directory, folders, files in os.walk(self.path):
            folders.sort()
            for name in sorted(files):
                full = Path(directory, name)
                relative = full.relative_to(self.path).as_posix()
                try:
                    size = full.stat().st_size
                except OSError:
                    size = -1  # broken symlink and the like: read() will fail and quarantine it
                found.append(SourceEntry(relative, size, full.is_file() or size < 0))
        return found

    def read(self, entry: SourceEntry) -> bytes:
        return (self.path / entry.name).read_bytes()


class TarSource(RawSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - open for the object's life, see close()
            # One pass over the headers (no file data kept); later reads seek forward in order.
            self._members = {m.name: m for m in self._tar.getmembers()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"{path}: not a readable tar archive ({type(exc).__name__}: {exc})") from None

    def entries(self) -> list[SourceEntry]:
        return [SourceEntry(m.name, m.size, m.isfile()) for m in self._members.values() if not m.isdir()]

    def read(self, entry: SourceEntry) -> bytes:
        handle = self._tar.extractfile(self._members[entry.name])
        if handle is None:
            raise OSError(f"{entry.name}: not a regular file")
        return handle.read()

    def close(self) -> None:
        self._tar.close()


class ZipSource(RawSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(f"{path}: not a readable zip archive ({type(exc).__name__}: {exc})") from None

    def entries(self) -> list[SourceEntry]:
        # file_size is the *declared* uncompressed size: checked before reading (zip bombs).
        return [SourceEntry(i.filename, i.file_size) for i in self._zip.infolist() if not i.is_dir()]

    def read(self, entry: SourceEntry) -> bytes:
        return self._zip.read(entry.name)

    def close(self) -> None:
        self._zip.close()


def open_source(path: Path) -> RawSource:
    """The right reader for a folder or an archive; SourceError naming the path otherwise."""
    if path.is_dir():
        return FolderSource(path)
    if not path.exists():
        raise SourceError(f"data source {path} does not exist")
    name = path.name.lower()
    if name.endswith(".zip"):
        return ZipSource(path)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return TarSource(path)
    raise SourceError(f"data source {path}: expected a folder or one of {', '.join(ARCHIVE_SUFFIXES)}")


def iter_contents(source: RawSource, entries: list[SourceEntry]) -> Iterator[tuple[SourceEntry, bytes | OSError]]:
    """(entry, bytes) in the given order; a read failure is yielded as the OSError, not raised."""
    for entry in entries:
        try:
            yield entry, source.read(entry)
        except (OSError, tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, KeyError) as exc:
            yield entry, OSError(f"{type(exc).__name__}: {exc}")
