"""Stopping a command with a signal, in whatever phase it is: SIGINT (Ctrl-C) and SIGTERM (a
scheduler's pre-emption, ``kill``) both end the work at once and reach the entry point as an
exception it can answer in one line.

Without this, Python's SIGTERM kills the process where it stands: no cleanup runs (an export's
temporary files stay) and nothing is said. Ctrl-C raises :class:`KeyboardInterrupt`, which
Lightning turns into ``sys.exit(1)`` inside a fit, and a traceback elsewhere. While
:func:`stop_on_signals` is in force both signals raise :class:`Stopped` (a KeyboardInterrupt, so
that Lightning still tears its fit down and code catching ``Exception`` never swallows it), the
``finally`` and ``except BaseException`` blocks on the way out run (temporary files are removed),
and :func:`received` tells the entry point which signal it was, even where Lightning replaced the
exception by a ``SystemExit``. Only the first signal stops the work; later ones, while it stops,
are noted and ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []  # the signals received while stop_on_signals was in force, in order
_held = {"depth": 0, "pending": None}  # inside signals_held(): how deep, and a signal not acted on yet


class Stopped(KeyboardInterrupt):
    """Raised by the handler: the work was stopped by ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum: int, frame) -> None:
    _received.append(signum)
    if len(_received) > 1:  # the stop is under way: a second Ctrl-C must not cut its cleanup and report short
        return
    if _held["depth"]:
        _held["pending"] = signum  # acted on when the held block ends
        return
    raise Stopped(signum)


@contextmanager
def signals_held() -> Iterator[None]:
    """Inside, a SIGINT or SIGTERM is noted, not acted on; it stops the work as soon as the block
    ends. For writes that belong together: the files of an export renamed into place, an epoch's
    ``epochNNN.ckpt`` and the ``last.ckpt`` a resume reads. (Short blocks only: a pre-empting
    scheduler sends SIGKILL some seconds after its SIGTERM.)"""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
    pending = _held["pending"]
    if pending is not None and not _held["depth"]:
        _held["pending"] = None
        raise Stopped(pending)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` for the block; the earlier handlers come back
    after it. (Only the main thread may set handlers: elsewhere the block runs as it is.)

    Lightning's fit composes its own SIGTERM handler with this one (it calls both), so inside a
    fit SIGTERM stops at once as well, rather than at the next batch boundary: the last complete
    epoch's checkpoint is what a resume reads either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _held["pending"] = None
    earlier = {s: signal.getsignal(s) for s in SIGNALS}
    for s, handler in earlier.items():
        if handler is not signal.SIG_IGN:  # ignored by whoever started us (a background job's Ctrl-C): it stays so
            signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in earlier.items():
            # once stopped, the process is on its way out: a further signal would only print a
            # KeyboardInterrupt from some finaliser, or end it before its report
            signal.signal(s, signal.SIG_IGN if _received else handler if handler is not None else signal.SIG_DFL)


def received() -> int | None:
    """The first signal that stopped the work since :func:`stop_on_signals` began; None if none."""
    return _received[0] if _received else None


def exit_status(signum: int) -> int:
    """The shell's status for a process ended by ``signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


def name(signum: int) -> str:
    return signal.Signals(signum).name
