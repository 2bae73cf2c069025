"""User-facing errors: one base class, so the CLI has one error boundary.

Every error a user can cause or fix (bad params, a missing or unsafe file, a locked out-dir, a machine
too small for the configuration) derives from ``PokediffError``. ``pokediff`` prints such an error as
one line, ``pokediff <command>: <message>``, and exits with its ``exit_code``; anything else is a bug
and keeps its traceback (``--debug`` shows the traceback for PokediffErrors too).

Messages name the file or the params key and say what was expected. They are kept short: a value
quoted in a message is truncated (``shorten``), so a hostile input cannot produce a huge error.
"""

from __future__ import annotations

import errno as errno_names

MAX_MESSAGE_CHARS = 2000


class PokediffError(Exception):
    """Base of every error that ``pokediff`` reports as one line (exit code ``exit_code``)."""

    exit_code = 1


class UsageError(PokediffError):
    """The command line or params are wrong (exit 2, like argparse)."""

    exit_code = 2


def shorten(value: object, limit: int = 200) -> str:
    """``repr``-like text of a value, cut to ``limit`` characters with an ellipsis."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# errnos that mean "the machine or the file system refused", not "the program is wrong": shown as one
# line even when no file name is attached (torch.save's C++ writer reports ENOSPC only as the cause
# of its own RuntimeError, an "[enforce fail at inline_container.cc]" line).
_ENVIRONMENT_ERRNOS = {"ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO", "EACCES", "EPERM", "ENOMEM", "EMFILE"}


def os_error_in_chain(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: ``exc`` itself, or for a RuntimeError (torch's C++ file writer) the
    first OSError in its ``__cause__``/``__context__`` chain. None when there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        if current is not exc and not isinstance(current, (OSError, RuntimeError)):
            return None  # another kind of error in between: not a file-system failure
        current = current.__cause__ or current.__context__
    return None


def describe_os_error(exc: BaseException) -> str | None:
    """One line for a file-system failure (``<file>: <reason>``), or None when ``exc`` is not one.

    An OSError that names a file is always reported (missing file, permission, a folder where a file
    was expected); one without a file name only for errnos in ``_ENVIRONMENT_ERRNOS`` (a full disk)."""
    err = os_error_in_chain(exc)
    if err is None:
        return None
    code = errno_names.errorcode.get(err.errno, str(err.errno))
    reason = err.strerror or str(err)
    if err.filename is not None:
        where = shorten(str(err.filename), 300)
        if err.filename2 is not None:
            where += f" -> {shorten(str(err.filename2), 300)}"
        return f"{where}: {reason} [{code}]"
    if code in _ENVIRONMENT_ERRNOS:
        return f"{reason} [{code}] while writing; free some space or choose another output folder" \
            if code in ("ENOSPC", "EDQUOT", "EFBIG") else f"{reason} [{code}]"
    return None


def one_line(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A message as one line: inner line breaks become "; ", the whole is cut to ``limit`` characters."""
    text = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if part:
            text += part if not text else (" " if text.endswith(":") else "; ") + part
    return shorten(text, limit)
