"""User-facing errors: one base class, so the CLI has one error boundary.

Every error a user can cause or fix (bad params, a missing or unsafe file, a locked out-dir, a machine
too small for the configuration) derives from ``PokediffError``. ``pokediff`` prints such an error as
one line, ``pokediff <command>: <message>``, and exits with its ``exit_code``; anything else is a bug
and keeps its traceback (``--debug`` shows the traceback for PokediffErrors too).

Messages name the file or the params key and say what was expected. They are kept short: a value
quoted in a message is truncated (``shorten``), so a hostile input cannot produce a huge error.
"""

from __future__ import annotations

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
