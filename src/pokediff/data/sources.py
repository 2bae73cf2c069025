"""Where image bytes are read from, the one place for it:

- raw sources for ingest, as a list of named files: a folder (any depth), a .tar/.tar.gz/.tgz or a
  .zip (`open_source`, `iter_contents`);
- one file of a dataset or image folder the user points training or scoring at (`read_file`; the
  folder itself is pokediff.data.image_folder's).

Nothing outside a raw source is ever read:

- archives are read in place, never extracted: nothing is written outside the output folder, and
  member names such as `../../x` or absolute paths are only ever labels (manifest/quarantine text);
- symbolic links are never followed, in folders or archives: they are listed (ignored.csv) with
  where they point (inside or outside the source), and the files they point to inside the source
  are ingested under their own names anyway;
- folder files are opened with O_NOFOLLOW and checked to be regular files after opening, so a file
  swapped for a link or a FIFO between listing and reading is refused, not followed or waited on.

Reads are bounded whatever the headers say: each file is read in chunks and refused beyond
MAX_FILE_BYTES (a zip member's declared size is not trusted; zipfile would otherwise inflate one
whole compressed chunk, up to 2 GiB, in one call), an archive may not inflate to more than
`max(MIN_TOTAL_BYTES, MAX_EXPANSION x its own size)` in total, and a tar may not list more than
MAX_ENTRIES members (each header costs ~1 KB of Python objects; a gzip of empty headers is tiny).

Names are shown as text: bytes that are not UTF-8 (a non-UTF-8 file system or tar) are written as
`\\xNN` escapes, so the manifest stays valid UTF-8; reading uses the real name (`SourceEntry.key`).
Two archive members with the same (normalised) name are not silently merged: every one but the
last is quarantined as shadowed, as an extracting tool would keep only the last.

Datasets and folders for training and scoring are the user's own: `read_file` follows links (DVC may
check a dataset out as links into its cache) and refuses files larger than MAX_FILE_BYTES.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO, Self

from pokediff.errors import PokediffError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# One raw file (or archive member) larger than this is quarantined, unread past the limit.
MAX_FILE_BYTES = 64 * 1024 * 1024
# An archive may inflate to at most max(MIN_TOTAL_BYTES, MAX_EXPANSION x its size) in total. The
# sprite tarball inflates 2.7x (69 MB -> 186 MB); already-compressed images barely inflate at all,
# while a zip bomb inflates ~1000x.
MIN_TOTAL_BYTES = 1024**3
MAX_EXPANSION = 100
MAX_ENTRIES = 200_000  # the sprite tarball has 4,237
_CHUNK = 1024 * 1024  # bytes per read() call: bounds what one inflate call may produce


class SourceError(PokediffError, ValueError):
    """The source cannot be opened at all (missing path, unsupported kind, broken archive, bomb)."""


class TooLargeError(OSError):
    """One file is larger than MAX_FILE_BYTES once read (an OSError: the file is quarantined)."""


def is_hidden(name: str) -> bool:
    """A posix path (relative to its source) with a hidden part: a dot file or folder, or __MACOSX."""
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


def display_name(raw: str) -> str:
    """`raw` as valid UTF-8 text: undecodable bytes (surrogate escapes) become `\\xNN`."""
    try:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        return raw.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class SourceEntry:
    name: str  # posix path inside the source as UTF-8 text; what manifest/quarantine call `source`/`path`
    size: int  # bytes as declared (by the archive) or on disk
    regular: bool = True  # False: symlink, device, ... (listed, never read)
    key: Any = field(default=None, compare=False)  # how the source finds it (real name, member index)
    note: str = ""  # not regular: why it is not read (ignored.csv); regular: why it is quarantined unread


class RawSource(ABC):
    """A read-only set of files. Reading in `entries` order is the fast path (archives stream)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bytes_read = 0
        self.max_total_bytes: int | None = None  # archives: see the module docstring

    @abstractmethod
    def entries(self) -> list[SourceEntry]: ...

    @abstractmethod
    def _open(self, entry: SourceEntry) -> BinaryIO:
        """A binary stream of one regular entry."""

    def read(self, entry: SourceEntry) -> bytes:
        """Contents of one regular entry, at most MAX_FILE_BYTES (TooLargeError beyond).

        Raises SourceError when the archive as a whole inflates past its total limit.
        """
        chunks: list[bytes] = []
        size = 0
        with self._open(entry) as handle:
            while chunk := handle.read(_CHUNK):
                size += len(chunk)
                self.bytes_read += len(chunk)
                if self.max_total_bytes is not None and self.bytes_read > self.max_total_bytes:
                    raise SourceError(
                        f"{self.path}: inflates to more than {self.max_total_bytes:,} bytes in total "
                        f"({MAX_EXPANSION}x its size, at least {MIN_TOTAL_BYTES:,}); refusing it as a "
                        "decompression bomb"
                    )
                if size > MAX_FILE_BYTES:
                    raise TooLargeError(f"more than {MAX_FILE_BYTES:,} bytes when read (the limit); not read further")
                chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:  # noqa: B027 - deliberately optional: folders hold no handle
        """Release file handles (archives)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class FolderSource(RawSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._root = os.path.realpath(path)

    def _link_note(self, full: str, what: str) -> str:
        target = os.path.realpath(full)
        if not os.path.exists(target):
            where = "a path that does not exist"
        elif os.path.commonpath([self._root, target]) == self._root:
            where = "a path inside the source (ingested under its own name)"
        else:
            where = "a path outside the source"
        return f"symbolic link ({what}) to {where}; links are not followed"

    def entries(self) -> list[SourceEntry]:
        found: list[SourceEntry] = []

        def unreadable(exc: OSError) -> None:  # a folder os.walk cannot list: its files must not vanish
            relative = os.path.relpath(exc.filename or self.path, self.path)
            found.append(SourceEntry(display_name(Path(relative).as_posix()), -1, True, None,
                                     f"cannot list folder: {exc.strerror or exc}"))

        for directory, folders, files in os.walk(self.path, onerror=unreadable):
            folders.sort()
            for name in list(folders):  # os.walk lists links to folders but never enters them
                full = os.path.join(directory, name)
                if os.path.islink(full):
                    relative = Path(full).relative_to(self.path).as_posix()
                    found.append(SourceEntry(display_name(relative), 0, False, relative,
                                             self._link_note(full, "folder")))
            for name in sorted(files):
                full = os.path.join(directory, name)
                relative = Path(full).relative_to(self.path).as_posix()
                try:
                    info = os.lstat(full)
                except OSError as exc:
                    found.append(SourceEntry(display_name(relative), -1, True, relative,
                                             f"cannot read file: {exc.strerror or exc}"))
                    continue
                if stat.S_ISLNK(info.st_mode):
                    found.append(SourceEntry(display_name(relative), 0, False, relative, self._link_note(full, "file")))
                elif not stat.S_ISREG(info.st_mode):
                    found.append(SourceEntry(display_name(relative), 0, False, relative,
                                             "not a regular file (device, pipe or socket)"))
                else:
                    found.append(SourceEntry(display_name(relative), info.st_size, True, relative))
        found.sort(key=lambda e: e.name)  # walk order differs between file systems
        return found

    def _open(self, entry: SourceEntry) -> BinaryIO:
        # O_NOFOLLOW: a file replaced by a link since `entries` is refused (ELOOP), not followed;
        # O_NONBLOCK: a FIFO in its place cannot make us wait forever. Checked regular after open.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(self.path / entry.key, flags)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{entry.name}: not a regular file")
        return os.fdopen(fd, "rb")


def _archive_limits(path: Path) -> int:
    return max(MIN_TOTAL_BYTES, MAX_EXPANSION * path.stat().st_size)


def _mark_shadowed(entries: list[SourceEntry], kind: str) -> list[SourceEntry]:
    """Quarantine every member but the last of a name (normalised: `./a.png` and `a.png` are one).

    Extracting the archive would leave only the last one; keeping one silently (tar) or reading the
    last twice (zip, which looks members up by name) would lose an image without a record.
    """
    def normal(name: str) -> str:
        return posixpath.normpath("/" + name).lstrip("/")

    counts = Counter(normal(e.name) for e in entries if e.regular)
    seen: Counter[str] = Counter()
    marked = []
    for entry in entries:
        key = normal(entry.name)
        if entry.regular and counts[key] > 1:
            seen[key] += 1
            if seen[key] < counts[key]:
                entry = SourceEntry(
                    entry.name, entry.size, True, entry.key,
                    f"the {kind} holds {counts[key]} members named {key!r}; this is number {seen[key]}, "
                    "shadowed by the last one (which extracting would keep); not used",
                )
        marked.append(entry)
    return marked


class TarSource(RawSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.max_total_bytes = _archive_limits(path)
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - open for the object's life, see close()
            # One pass over the headers (no file data kept); later reads seek forward in order.
            self._members: list[tarfile.TarInfo] = []
            for member in self._tar:
                self._members.append(member)
                if len(self._members) > MAX_ENTRIES:
                    self._tar.close()
                    raise SourceError(f"{path}: more than {MAX_ENTRIES:,} members; refusing it as a tar bomb")
            self._tar.members = []  # our list is the one kept; tarfile's own copy would double it
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise SourceError(f"{path}: not a readable tar archive ({type(exc).__name__}: {exc})") from None

    def entries(self) -> list[SourceEntry]:
        listed = []
        for index, member in enumerate(self._members):
            if member.isdir():
                continue
            name = display_name(member.name)
            if member.isfile():
                listed.append(SourceEntry(name, member.size, True, index))
            elif member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                listed.append(SourceEntry(name, 0, False, index,
                                          f"{kind} link inside the archive (to {display_name(member.linkname)!r}); "
                                          "links are not followed"))
            else:
                listed.append(SourceEntry(name, 0, False, index, "not a regular file (device, pipe or folder)"))
        return _mark_shadowed(listed, "tar")

    def _open(self, entry: SourceEntry) -> BinaryIO:
        handle = self._tar.extractfile(self._members[entry.key])
        if handle is None:
            raise OSError(f"{entry.name}: not a regular file")
        return handle

    def close(self) -> None:
        self._tar.close()


class ZipSource(RawSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.max_total_bytes = _archive_limits(path)
            # The central directory costs ~46 bytes of file per entry, so its size bounds the count.
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # ValueError: bad UTF-8 names
            raise SourceError(f"{path}: not a readable zip archive ({type(exc).__name__}: {exc})") from None
        self._infos = self._zip.infolist()

    def entries(self) -> list[SourceEntry]:
        listed = []
        for index, info in enumerate(self._infos):
            if info.is_dir():
                continue
            name = display_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):  # unix mode in the high bits
                listed.append(SourceEntry(name, 0, False, index,
                                          "symbolic link inside the archive; links are not followed"))
            else:
                # file_size is only what the archive declares: checked first, enforced when read.
                listed.append(SourceEntry(name, info.file_size, True, index))
        return _mark_shadowed(listed, "zip")

    def _open(self, entry: SourceEntry) -> BinaryIO:
        return self._zip.open(self._infos[entry.key])  # by ZipInfo: same-named members stay apart

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


# What reading one member can raise besides OSError: corrupt archives, encrypted or unsupported
# zip members (RuntimeError, NotImplementedError), bad compressed data.
_READ_ERRORS = (OSError, tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, KeyError,
                RuntimeError, NotImplementedError, ValueError)


def iter_contents(source: RawSource, entries: list[SourceEntry]) -> Iterator[tuple[SourceEntry, bytes | OSError]]:
    """(entry, bytes) in the given order; a read failure is yielded as an OSError, not raised.

    SourceError (the archive's total limit) is raised: it concerns the whole source.
    """
    for entry in entries:
        try:
            yield entry, source.read(entry)
        except SourceError:
            raise
        except TooLargeError as exc:
            yield entry, exc
        except _READ_ERRORS as exc:
            yield entry, OSError(f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------------
# One file of the user's own dataset or image folder (see pokediff.data.image_folder)
# ----------------------------------------------------------------------------------------------
def read_file(path: Path) -> bytes:
    """Contents of one file, following links, at most MAX_FILE_BYTES (TooLargeError beyond)."""
    with open(path, "rb") as handle:
        declared = os.fstat(handle.fileno()).st_size
        data = handle.read(min(declared, MAX_FILE_BYTES) + 1)  # read(n) allocates n bytes: the file's size
        if len(data) > declared:  # grew since fstat, or a special file: read on, up to the cap
            data += handle.read(MAX_FILE_BYTES + 1 - len(data))
    if len(data) > MAX_FILE_BYTES:
        raise TooLargeError(f"{path}: more than {MAX_FILE_BYTES:,} bytes (the limit); not read further")
    return data
