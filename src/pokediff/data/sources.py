"""Where image bytes are read from, the one place for it:

- raw sources for ingest, as a list of named files: a folder (any depth), a .tar/.tar.gz/.tgz or a
  .zip (`open_source`, `iter_contents`);
- the files of a dataset or image folder the user points training, validation or scoring at
  (`walk_folder`, `read_in_folder`; the folder's images and manifest are pokediff.data.image_folder's),
  and one file the user names (`read_file`).

Nothing outside a raw source is ever read:

- archives are read in place, never extracted: nothing is written outside the output folder, and
  member names such as `../../x` or absolute paths are only ever labels (manifest/quarantine text);
- symbolic links are never followed, in folders or archives: they are listed (ignored.csv) with
  where they point (inside or outside the source), and the files they point to inside the source
  are ingested under their own names anyway;
- folders are walked and read through directory file descriptors, one path component at a time,
  each opened with O_NOFOLLOW, and files are checked to be regular after opening: a file or a folder
  swapped for a link or a FIFO between listing and reading is refused, not followed or waited on;
- folders are walked without recursion, at most MAX_DEPTH levels deep (deeper ones are quarantined).

Nothing outside a dataset folder is read either: a path is relative text without `..` (see
`check_relative`), every folder on the way is opened without following links, and the file itself is
read only when it is a regular file inside the folder, or a link into the DVC cache of the project
that holds the folder (DVC's symlink checkout); a link anywhere else, a FIFO or a device is refused.

Reads are bounded whatever the headers say: each file is read in chunks and refused beyond
MAX_FILE_BYTES (a zip member's declared size is not trusted; zipfile would otherwise inflate one
whole compressed chunk, up to 2 GiB, in one call), an archive may not inflate to more than
`max(MIN_TOTAL_BYTES, MAX_EXPANSION x its own size)` in total, and its directory is bounded before it
is parsed: a zip's central directory to MAX_ZIP_DIRECTORY_BYTES (zipfile keeps ~400 bytes of Python
objects per 46-byte record), a tar to MAX_ENTRIES members (each header costs ~1 KB of Python objects;
a gzip of empty headers is tiny), each member's header records (pax, GNU long names, sparse maps: a
pax header declaring 1.5 GB compresses to 1.5 MB) to MAX_MEMBER_HEADER_BYTES and all of them beyond
the first block to MAX_EXTRA_HEADER_BYTES.

Names are shown as text: bytes that are not UTF-8 (a non-UTF-8 file system or tar) are written as
`\\xNN` escapes, and so are control characters (a member named "a.png\\nok" cannot start a line of
its own in a message or a CSV), so the manifest stays valid, one-line UTF-8; reading uses the real name
(`SourceEntry.key`). Two archive members with the same (normalised) name are not silently merged:
every one but the last is quarantined as shadowed, as an extracting tool would keep only the last.
"""

from __future__ import annotations

import bz2
import configparser
import errno
import gzip
import lzma
import os
import posixpath
import re
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
from pokediff.limits import zip_directory_size

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# One raw file (or archive member) larger than this is quarantined, unread past the limit.
MAX_FILE_BYTES = 64 * 1024 * 1024
# An archive may inflate to at most max(MIN_TOTAL_BYTES, MAX_EXPANSION x its size) in total. The
# sprite tarball inflates 2.7x (69 MB -> 186 MB); already-compressed images barely inflate at all,
# while a zip bomb inflates ~1000x.
MIN_TOTAL_BYTES = 1024**3
MAX_EXPANSION = 100
MAX_ENTRIES = 200_000  # the sprite tarball has 4,237
MAX_ZIP_DIRECTORY_BYTES = 16 << 20  # 200,000 entries with 34-character names
MAX_MEMBER_HEADER_BYTES = 64 << 10  # a tar member's header records: a ustar block, pax lines, a long name
MAX_EXTRA_HEADER_BYTES = 64 << 20  # all tar header records beyond each member's first block
MAX_DEPTH = 64  # folder levels below a source or dataset folder (the sprite tarball nests 10)
_CHUNK = 1024 * 1024  # bytes per read() call: bounds what one inflate call may produce


class SourceError(PokediffError, ValueError):
    """The source cannot be opened at all (missing path, unsupported kind, broken archive, bomb)."""


class TooLargeError(OSError):
    """One file is larger than MAX_FILE_BYTES once read (an OSError: the file is quarantined)."""


def is_hidden(name: str) -> bool:
    """A posix path (relative to its source) with a hidden part: a dot file or folder, or __MACOSX."""
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


# C0 and C1 control characters and the Unicode line and paragraph separators: what could start a line
# of its own, move the cursor or colour a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def display_name(raw: str) -> str:
    """`raw` as one line of valid UTF-8 text: undecodable bytes (surrogate escapes) and control
    characters become `\\xNN` (`\\u2028` for the two Unicode line separators)."""
    try:
        text = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        text = raw.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


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
    """A folder, walked and read through directory file descriptors (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._root = os.path.realpath(path)

    def _link_note(self, relative: str, what: str) -> str:
        target = os.path.realpath(os.path.join(self._root, relative))
        if not os.path.exists(target):
            where = "a path that does not exist"
        elif os.path.commonpath([self._root, target]) == self._root:
            where = "a path inside the source (ingested under its own name)"
        else:
            where = "a path outside the source"
        return f"symbolic link ({what}) to {where}; links are not followed"

    def entries(self) -> list[SourceEntry]:
        found: list[SourceEntry] = []
        for item in walk_folder(self.path):
            name = display_name(item.relative)
            if item.problem:  # a folder that cannot be listed or lies too deep: its files must not vanish
                found.append(SourceEntry(name, -1, True, None, item.problem))
            elif item.kind == "link":
                found.append(SourceEntry(name, 0, False, item.relative, self._link_note(item.relative, item.link_to)))
            elif item.kind == "other":
                found.append(SourceEntry(name, 0, False, item.relative, "not a regular file (device, pipe or socket)"))
            else:
                found.append(SourceEntry(name, item.size, True, item.relative))
        found.sort(key=lambda e: e.name)  # walk order differs between file systems
        return found

    def _open(self, entry: SourceEntry) -> BinaryIO:
        return os.fdopen(open_below(self.path, entry.key), "rb")


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


class _HeaderBomb(Exception):
    """A tar's header records are larger than any real archive's (see TarSource)."""


class _BoundedHeaders:
    """The decompressed tar stream, as tarfile reads it: while the headers are listed, each member's
    header records may take MAX_MEMBER_HEADER_BYTES and all records beyond each member's first block
    MAX_EXTRA_HEADER_BYTES (tarfile reads a pax header or a GNU long name whole, at its declared size,
    in one call); at any time, no position beyond `max_position` is sought or read (skipping a member
    decompresses it). `start_member` opens the next member's budget."""

    def __init__(self, raw: BinaryIO, max_position: int) -> None:
        self.raw = raw
        self.max_position = max_position
        self.listing = True
        self.extra_left = MAX_EXTRA_HEADER_BYTES
        self.start_member()

    def start_member(self) -> None:
        self.member_read = 0

    def read(self, size: int = -1) -> bytes:
        if self.listing:
            if size < 0 or self.member_read + size > MAX_MEMBER_HEADER_BYTES:
                raise _HeaderBomb(f"a member's header records take more than {MAX_MEMBER_HEADER_BYTES:,} bytes")
            self.extra_left -= min(size, self.member_read + size - tarfile.BLOCKSIZE)
            self.member_read += size
            if self.extra_left < 0:
                raise _HeaderBomb(f"header records beyond the members' first blocks take more than "
                                  f"{MAX_EXTRA_HEADER_BYTES:,} bytes")
        if self.raw.tell() + max(size, 0) > self.max_position:
            raise _HeaderBomb(f"inflates past {self.max_position:,} bytes")
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET and offset > self.max_position:
            raise _HeaderBomb(f"inflates past {self.max_position:,} bytes")
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _decompressed(path: Path) -> BinaryIO:
    """The tar stream inside `path`: gzip, bzip2, xz or none, chosen by the first bytes."""
    with path.open("rb") as handle:
        magic = handle.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(path, "rb")
    return path.open("rb")


class TarSource(RawSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._raw: BinaryIO | None = None
        try:
            self.max_total_bytes = _archive_limits(path)
            self._raw = _decompressed(path)
            stream = _BoundedHeaders(self._raw, self.max_total_bytes)
            # One pass over the headers (no file data kept); later reads seek forward in order.
            self._tar = tarfile.TarFile(fileobj=stream, mode="r")  # type: ignore[arg-type]  # reads the first header
            self._members: list[tarfile.TarInfo] = []
            while (member := self._tar.next()) is not None:
                self._members.append(member)
                if len(self._members) > MAX_ENTRIES:
                    raise SourceError(f"{path}: more than {MAX_ENTRIES:,} members; refusing it as a tar bomb")
                stream.start_member()
            stream.listing = False
            self._tar.members = []  # our list is the one kept; tarfile's own copy would double it
        except _HeaderBomb as exc:
            self.close()
            raise SourceError(f"{path}: {exc}; refusing it as a tar bomb") from None
        except SourceError:
            self.close()
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            self.close()
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
        if self._raw is not None:
            self._raw.close()


class ZipSource(RawSource):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.max_total_bytes = _archive_limits(path)
            with path.open("rb") as handle:
                _, directory_bytes = zip_directory_size(handle)
            if directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
                raise SourceError(f"{path}: a central directory of {directory_bytes:,} bytes (the limit is "
                                  f"{MAX_ZIP_DIRECTORY_BYTES:,}); refusing it as a zip bomb")
            self._zip = zipfile.ZipFile(path)
        except SourceError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # ValueError: bad UTF-8 names
            raise SourceError(f"{path}: not a readable zip archive ({type(exc).__name__}: {exc})") from None
        self._infos = self._zip.infolist()
        if len(self._infos) > MAX_ENTRIES:
            self._zip.close()
            raise SourceError(f"{path}: more than {MAX_ENTRIES:,} members; refusing it as a zip bomb")

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
# Folders: walked and read one component at a time, never following a link
# ----------------------------------------------------------------------------------------------
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (and is then refused as not regular);
# O_NOCTTY: a terminal device never becomes our controlling terminal.
_FILE_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


class LinkRefusedError(OSError):
    """A path component is a symbolic link where none may be followed (its message says which)."""


class NotRegularFileError(OSError):
    """A path names a device, FIFO or socket, which is never read (nor, below a folder, opened)."""


@dataclass(frozen=True)
class FolderItem:
    """One thing `walk_folder` found below a folder."""

    relative: str  # posix path below the folder, the OS's own name (non-UTF-8 bytes as surrogate escapes)
    kind: str  # "file" (regular), "link" (symbolic), "other" (device, FIFO, socket) or "problem"
    size: int = 0  # bytes, for a regular file
    link_to: str = ""  # for a link: "file" or "folder", what it points to (by stat, never opened)
    problem: str = ""  # a folder that cannot be listed, or lies more than MAX_DEPTH levels deep


def _refuse_link(relative: str, component: str) -> LinkRefusedError:
    where = "" if component == relative else f" (its component {component!r})"
    return LinkRefusedError(errno.ELOOP, f"a symbolic link{where}; links are not followed here", relative)


def _open_components(folder: str | Path, parts: list[str], relative: str) -> int:
    """An fd of the folder `parts` names below `folder`, opened one component at a time with
    O_NOFOLLOW (the folder itself is opened as given: the user named it)."""
    fd = os.open(folder, _DIRECTORY_FLAGS)
    try:
        for part in parts:
            try:
                below = os.open(part, _DIRECTORY_FLAGS | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(fd, part):
                    raise _refuse_link(relative, part) from None
                raise OSError(exc.errno, exc.strerror, relative) from None
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _points_to_folder(dir_fd: int, name: str) -> bool:
    """Whether the link `name` leads to a folder (stat only; nothing is opened)."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd).st_mode)
    except OSError:  # dangling, or a loop
        return False


def open_below(folder: str | Path, relative: str) -> int:
    """A read-only fd of the regular file `relative` (posix, no `..`) below `folder`, opened through
    directory fds with O_NOFOLLOW on every component. LinkRefusedError for a link on the way,
    OSError for a file that is missing or not regular (a FIFO is opened without waiting, then refused)."""
    *parents, name = relative.split("/")
    parent = _open_components(folder, parents, relative)
    try:
        try:  # a FIFO is not even opened (opening one wakes a writer waiting on it); the fstat below
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode  # catches a later swap
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, relative) from None
        if stat.S_ISLNK(mode):
            raise _refuse_link(relative, name)
        if not stat.S_ISREG(mode):
            raise _not_regular(relative)
        try:
            fd = os.open(name, _FILE_FLAGS | _NOFOLLOW, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse_link(relative, name) from None
            raise OSError(exc.errno, exc.strerror, relative) from None
    finally:
        os.close(parent)
    return _regular_only(fd, relative)


def _not_regular(label: str) -> NotRegularFileError:
    return NotRegularFileError(errno.EINVAL, "not a regular file (a device, FIFO or socket); not read", label)


def _regular_only(fd: int, label: str) -> int:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_regular(label)
    return fd


def walk_folder(folder: str | Path, max_depth: int = MAX_DEPTH) -> list[FolderItem]:
    """Everything below `folder`, depth first, names sorted, without recursion: files with their size,
    links and special files (never opened), and a "problem" item for each folder that cannot be
    listed or lies more than `max_depth` levels deep (not entered). Links to folders are not entered."""
    found: list[FolderItem] = []
    pending: list[tuple[str, ...]] = [()]  # folders still to list, as path components below `folder`
    while pending:
        parts = pending.pop()
        relative = "/".join(parts)
        if len(parts) > max_depth:
            found.append(FolderItem(relative, "problem",
                                    problem=f"folder nested more than {max_depth} levels deep; not read"))
            continue
        try:
            fd = _open_components(folder, list(parts), relative or ".")
        except OSError as exc:
            found.append(FolderItem(relative or ".", "problem", problem=f"cannot list folder: {exc.strerror or exc}"))
            continue
        below = []
        try:
            with os.scandir(fd) as listing:  # entries of an fd: stat() is fstatat(fd, name, no-follow)
                children = sorted(listing, key=lambda entry: entry.name)
            for entry in children:
                path = f"{relative}/{entry.name}" if relative else entry.name
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except OSError as exc:
                    found.append(FolderItem(path, "problem", problem=f"cannot read file: {exc.strerror or exc}"))
                    continue
                if stat.S_ISDIR(mode):
                    below.append((*parts, entry.name))
                elif stat.S_ISLNK(mode):
                    found.append(FolderItem(path, "link", link_to="folder" if _points_to_folder(fd, entry.name)
                                            else "file"))
                elif stat.S_ISREG(mode):
                    found.append(FolderItem(path, "file", entry.stat(follow_symlinks=False).st_size))
                else:
                    found.append(FolderItem(path, "other"))
        except OSError as exc:
            found.append(FolderItem(relative or ".", "problem", problem=f"cannot list folder: {exc.strerror or exc}"))
            continue
        finally:
            os.close(fd)
        pending.extend(reversed(below))  # popped in name order
    return found


def check_relative(path: str) -> str | None:
    """Why `path` (a manifest row) cannot name a file inside its dataset folder, or None when it can:
    it must be relative posix text without `..`, NUL or an empty name."""
    if not path or "\x00" in path:
        return "empty or holds a NUL character"
    if path.startswith("/"):
        return "an absolute path"
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts:
        return "the dataset folder itself"
    if ".." in parts:
        return "a path with a '..' part"
    return None


def read_in_folder(folder: str | Path, relative: str) -> bytes:
    """Contents of the file `relative` below a dataset or image folder, at most MAX_FILE_BYTES.

    Never leaves the folder (see the module docstring): the path must pass `check_relative`, every
    folder on the way is opened without following links, and the file must be regular. A link as the
    last component is followed only into the folder itself or the DVC cache of the project holding it
    (`dvc checkout` with cache.type symlink); its target is resolved, checked, opened, then checked again
    through /proc after opening. Raises OSError (LinkRefusedError for a link, TooLargeError)."""
    reason = check_relative(relative)
    if reason is not None:
        raise OSError(errno.EINVAL, reason, relative)
    relative = "/".join(part for part in relative.split("/") if part not in ("", "."))
    try:
        fd = open_below(folder, relative)
    except LinkRefusedError:
        *parents, _ = relative.split("/")
        os.close(_open_components(folder, parents, relative))  # refuses a link among the folders on the way
        fd = _open_link_target(folder, relative)
    with os.fdopen(fd, "rb") as handle:
        return _read_capped(handle, relative)


def _open_link_target(folder: str | Path, relative: str) -> int:
    target = os.path.realpath(os.path.join(folder, relative))
    roots = _link_roots(os.path.realpath(folder))
    if not any(_inside(target, root) for root in roots):
        raise LinkRefusedError(errno.ELOOP, "a symbolic link to a file outside the folder (and outside the "
                                            "project's DVC cache); not read", relative)
    if not stat.S_ISREG(os.stat(target, follow_symlinks=False).st_mode):
        raise _not_regular(relative)
    fd = os.open(target, _FILE_FLAGS | _NOFOLLOW)
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the target was resolved and checked just before opening
        opened = target
    if not any(_inside(opened, root) for root in roots):  # swapped between the check and the open
        os.close(fd)
        raise LinkRefusedError(errno.ELOOP, "a symbolic link whose target changed while it was opened", relative)
    return _regular_only(fd, relative)


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


_DVC_CONFIG_BYTES = 1 << 20


def _link_roots(real_folder: str) -> tuple[str, ...]:
    """Where a link in a dataset folder may point: the folder, and the DVC cache of the nearest DVC
    project at or above it (.dvc/cache, or cache.dir of .dvc/config or .dvc/config.local, relative to .dvc/)."""
    roots = [real_folder]
    here = Path(real_folder)
    for root in (here, *here.parents):
        dvc_dir = root / ".dvc"
        if not dvc_dir.is_dir():
            continue
        roots.append(os.path.realpath(dvc_dir / "cache"))
        for name in ("config", "config.local"):
            parser = configparser.ConfigParser(interpolation=None, strict=False)
            try:
                with open(dvc_dir / name, "rb") as handle:
                    parser.read_string(handle.read(_DVC_CONFIG_BYTES).decode("utf-8", "replace"))
            except (OSError, configparser.Error):
                continue
            configured = parser.get("cache", "dir", fallback=None)
            if configured:
                roots.append(os.path.realpath(dvc_dir / configured))
        break
    return tuple(roots)


def read_file(path: Path) -> bytes:
    """Contents of one file the user named (links followed), at most MAX_FILE_BYTES (TooLargeError
    beyond); a FIFO or device is refused without waiting on it."""
    fd = _regular_only(os.open(path, _FILE_FLAGS), str(path))
    with os.fdopen(fd, "rb") as handle:
        return _read_capped(handle, str(path))


def _read_capped(handle: BinaryIO, label: str) -> bytes:
    declared = os.fstat(handle.fileno()).st_size
    data = handle.read(min(declared, MAX_FILE_BYTES) + 1)  # read(n) allocates n bytes: the file's size
    if len(data) > declared:  # grew since fstat: read on, up to the cap
        data += handle.read(MAX_FILE_BYTES + 1 - len(data))
    if len(data) > MAX_FILE_BYTES:
        raise TooLargeError(f"{label}: more than {MAX_FILE_BYTES:,} bytes (the limit); not read further")
    return data
