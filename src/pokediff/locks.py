"""One writer per output folder: a lock file that a second process respects.

    with OutDirLock(out_dir, "train"):
        ...  # only this process writes into out_dir

The lock is ``<out_dir>/.pokediff.lock``, holding the owner's pid, host and command. It appears with
its whole content in one step: the record is written to a temporary file beside it, which is then
hard-linked to the lock's name (an atomic create-if-absent, like O_EXCL). So a full disk fails before
any lock file exists, and a lock file is never seen half-written; where the file system has no hard
links, O_EXCL and a single write are used, and a failed write removes the file. A second process that
finds a live owner stops with ``LockedError`` naming the folder and the owner. A lock left by a process
that no longer exists (same host, pid gone), and an empty or garbled lock file, are stale: replaced at
once. The lock file is removed on exit, also after an exception or a stop signal.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from pokediff.errors import PokediffError, shorten

LOCK_NAME = ".pokediff.lock"
_TEMP_SUFFIX = ".tmp"
# Errnos of a file system that has no hard links (link() is refused, not failed): use O_EXCL there.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def is_lock_file(name: str) -> bool:
    """The lock file, or the temporary file it is published from (for a check of what a folder holds)."""
    return name == LOCK_NAME or (name.startswith(LOCK_NAME + ".") and name.endswith(_TEMP_SUFFIX))


class LockedError(PokediffError):
    """Another live process is writing into the same output folder."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutDirLock:
    def __init__(self, out_dir: str | Path, what: str):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.what = what
        self._held = False

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text()[:4096])
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _is_stale(self, owner: dict) -> bool:
        pid = owner.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            # Empty or garbled: no pokediff writes such a file (it appears whole), so it is left over from
            # a failure (a full disk under an older version, a crash): stale at once.
            return True
        if owner.get("host") != socket.gethostname():
            return False  # cannot check a process on another machine
        return not pid_alive(pid)

    def _create(self, record: bytes) -> bool:
        """Make the lock file with ``record`` as its whole content; False when it exists already."""
        tmp = self.out_dir / f"{LOCK_NAME}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        try:
            with open(tmp, "xb") as f:  # a full disk fails here, before any lock file exists
                f.write(record)
            try:
                os.link(tmp, self.path)  # atomic: fails if the lock exists, publishes the whole record
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
            return self._create_exclusive(record)
        finally:
            tmp.unlink(missing_ok=True)

    def _create_exclusive(self, record: bytes) -> bool:
        """O_EXCL and one write, for file systems without hard links; a failed write removes the file."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            if os.write(fd, record) != len(record):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return True

    def acquire(self) -> OutDirLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                             "command": " ".join(sys.argv)[:300], "since": time.time()}).encode()
        for _ in range(3):
            if self._create(record):
                self._held = True
                return self
            owner = self._owner()
            if self._is_stale(owner):
                self.path.unlink(missing_ok=True)
                continue
            raise LockedError(
                f"{self.out_dir}: another `pokediff {shorten(owner.get('what', '?'), 40)}` (pid {owner.get('pid')} "
                f"on {shorten(owner.get('host', '?'), 80)}) is writing here; wait for it or choose another out-dir "
                f"(a stale lock is {self.path})")
        raise LockedError(f"{self.path}: could not take the lock (it keeps changing hands)")

    def release(self) -> None:
        if self._held:
            if self._owner().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> OutDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
