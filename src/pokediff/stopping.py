"""Stop signals: a stopped command keeps its work, leaves no half-written file or lock, says so in one
line and exits 128 + signum (143 for SIGTERM, 130 for SIGINT), as a shell reports a killed command.

SIGTERM is what Prefect's cancellation, DVC, systemd and Kubernetes send; SIGINT is Ctrl-C.
`pokediff` (cli.main) handles both for every command, with ``handle_stop_signals()``:

- By default a signal raises ``Stopped`` in the main thread at once. ``Stopped`` is a
  KeyboardInterrupt, so no ``except Exception`` swallows it, and everything that cleans up after
  Ctrl-C cleans up after SIGTERM too: an atomic write drops its temporary file, a dataset built
  beside the old one is discarded, ``with`` blocks release their locks. Right for commands whose
  partial work is worth nothing (ingest, sample, ref-stats, score, fid, validate).
- Inside ``deferred()`` (the training loop) the first signal is only recorded: the loop asks
  ``pending()`` after each step, finishes the step, saves a checkpoint and raises ``Stopped`` itself.
  A second signal raises at once, as above: the step or the save in progress is abandoned; the
  previous checkpoint stays whole (checkpoints are written atomically). Under torchrun a repeated
  signal is not a second request: the launcher forwards the terminal's Ctrl-C, so each worker sees it
  twice, and the launcher itself kills a worker that has not stopped within its shutdown timeout.

Handlers are process-wide and can only be set from the main thread; elsewhere (a worker thread, a
library caller that never enters ``handle_stop_signals``) Python's defaults stay.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Stopped(KeyboardInterrupt):
    """A stop signal ended the command. ``message`` is its one line (empty: say nothing, e.g. on a
    training rank other than 0, whose rank 0 reports); the exit code is 128 + signum."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = int(signum)
        self.bare = message is None  # nobody has said yet what was kept (see ``explained``)
        self.message = f"stopped by {signal_name(signum)}" if message is None else message
        super().__init__(self.message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def explained(self, message: str) -> Stopped:
        """The same stop with a line that says what was kept and what was not."""
        return Stopped(self.signum, message)


class StoppedAtOnce(Stopped):
    """A repeated stop signal: whatever was running (a graceful stop included) is abandoned."""


class _Signals:
    """What the handler has seen since ``handle_stop_signals`` was entered."""

    def __init__(self) -> None:
        self.first: int | None = None  # the first stop signal's number
        self.count = 0
        self.deferring = False  # inside deferred(): the first signal is recorded, not raised
        self.repeats_stop_at_once = True

    def handle(self, signum: int, frame) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum
        if self.deferring and (self.count == 1 or not self.repeats_stop_at_once):
            return
        name = signal_name(signum)
        if self.count > 1:
            raise StoppedAtOnce(signum, f"stopped at once by a second {name}; files are written whole or not at all, "
                                  "so what was saved before is intact")
        raise Stopped(signum)


_signals = _Signals()


@contextlib.contextmanager
def handle_stop_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise ``Stopped`` (or are recorded inside ``deferred``) while this is entered;
    the previous handlers come back on exit. A no-op outside the main thread."""
    global _signals
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_state = _signals
    _signals = _Signals()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, _signals.handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _signals = previous_state


@contextlib.contextmanager
def deferred(repeats_stop_at_once: bool = True) -> Iterator[None]:
    """Within: the first stop signal is only recorded (``pending()``), for a loop that stops at its next
    safe point. ``repeats_stop_at_once=False``: later signals are recorded too (see the module doc)."""
    state = _signals
    saved = state.deferring, state.repeats_stop_at_once
    state.deferring, state.repeats_stop_at_once = True, repeats_stop_at_once
    try:
        yield
    finally:
        state.deferring, state.repeats_stop_at_once = saved


@contextlib.contextmanager
def immediate() -> Iterator[None]:
    """Within ``deferred``, a part not worth finishing (the in-training evaluation): a first signal
    raises ``Stopped`` at once after all, for the caller to catch and save what is done."""
    state = _signals
    saved = state.deferring
    state.deferring = False
    try:
        yield
    finally:
        state.deferring = saved


def pending() -> int | None:
    """The number of the first stop signal received (since ``handle_stop_signals``), or None."""
    return _signals.first
