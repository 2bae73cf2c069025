"""One writer per output folder: a lock file that a second process respects.

    with OutDirLock(out_dir, "train"):
        ...  # only this process writes into out_dir

The lock is ``<out_dir>/.pokediff.lock``, created with O_EXCL and holding the owner's pid, host and
command. A second process that finds a live owner stops with ``LockedError`` naming the folder and
the owner. A lock left by a process that no longer exists (same host, pid gone) is stale: it is
replaced. The lock file is removed on exit, also after an exception.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from pokediff.errors import PokediffError

LOCK_NAME = ".pokediff.lock"


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
            return json.loads(self.path.read_text()[:4096])
        except (OSError, ValueError):
            return {}

    def _is_stale(self, owner: dict) -> bool:
        pid = owner.get("pid")
        if not isinstance(pid, int):
            # Unreadable: maybe being written right now. Old enough -> stale.
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        if owner.get("host") != socket.gethostname():
            return False  # cannot check a process on another machine
        return not pid_alive(pid)

    def acquire(self) -> OutDirLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                             "command": " ".join(sys.argv)[:300], "since": time.time()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if self._is_stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockedError(
                    f"{self.out_dir}: another `pokediff {owner.get('what', '?')}` (pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')}) is writing here; wait for it or choose another out-dir "
                    f"(a stale lock is {self.path})") from None
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self._held = True
            return self
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
