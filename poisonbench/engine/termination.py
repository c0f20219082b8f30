"""Stopping on SIGTERM without losing the epoch in progress (SLURM pre-emption, `scancel`, a sweep being stopped).

A cluster asks a job to stop with SIGTERM and kills it a grace period later. Python's default is to die at once,
which throws away everything since the last periodic checkpoint. With `install()`, SIGTERM instead raises
`Terminated` (a BaseException, so `except Exception` handlers, such as the runner's failure record, let it pass:
a stopped run is not a failed one), except while the engine is inside its epoch loop (`deferred()`): there the
first SIGTERM only sets a flag, and the engine finishes the epoch, saves its checkpoint and raises `Terminated`
itself, so re-running resumes with the numbers of an uninterrupted run. A second SIGTERM while deferring raises at
once. Anywhere else the stop is immediate: every file poisonbench writes is written atomically, so nothing is left
half-written.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODE = 128 + int(signal.SIGTERM)  # what a shell reports for a process ended by SIGTERM (143)


class Terminated(BaseException):
    """The process was asked to stop by SIGTERM; the message says where it stopped and what was saved."""


_requested = False  # a SIGTERM arrived (and, if deferred, awaits the end of the epoch in progress)
_deferring = 0  # nesting depth of `deferred()` blocks (an engine run may train a model of its own inside)
_previous = None  # the SIGTERM handler `install` replaced; None while not installed


REPEATS_WITHIN = 1.0  # seconds: SIGTERMs this close to the first are one request, not a second one
_requested_at = 0.0


def _on_sigterm(signum, frame) -> None:
    # A dying sweep's PR_SET_PDEATHSIG can reach its workers more than once (once per exiting thread of the sweep);
    # those repeats must not turn the first SIGTERM's checkpoint into an immediate stop.
    global _requested, _requested_at
    if _deferring and (not _requested or time.monotonic() - _requested_at < REPEATS_WITHIN):
        if not _requested:
            _requested_at = time.monotonic()
        _requested = True
        return
    _requested = True
    raise Terminated("stopped by SIGTERM" + (" (a second one, while finishing an epoch)" if _deferring else ""))


def install() -> bool:
    """Handle SIGTERM as above. Only the main thread may set signal handlers: elsewhere (or where signals cannot be
    handled) this does nothing. Returns whether this call installed the handler (False if it was already)."""
    global _previous
    if _previous is not None or threading.current_thread() is not threading.main_thread():
        return False
    try:
        _previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # no signals on this platform / interpreter
        return False
    if _previous is None:  # a handler not set from Python: restored as the default
        _previous = signal.SIG_DFL
    return True


def reset() -> None:
    """Forget any SIGTERM received and give SIGTERM back to the handler `install` replaced (for tests and
    in-process callers of the CLI)."""
    global _requested, _deferring, _previous
    _requested, _deferring = False, 0
    if _previous is not None:
        try:
            signal.signal(signal.SIGTERM, _previous)
        except ValueError:  # not the main thread: the handler stays, harmless without a request
            return
        _previous = None


def requested() -> bool:
    """Whether a SIGTERM arrived."""
    return _requested


@contextmanager
def deferred() -> Iterator[None]:
    """Within this block a first SIGTERM only sets `requested()`; the block's owner must check it at its next safe
    point (the engine: each epoch's end) and raise `Terminated`."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def stop_if_requested(where: str) -> None:
    """Raise `Terminated` (saying it stopped `where`) when a SIGTERM arrived, e.g. between two runs."""
    if _requested:
        raise Terminated(f"stopped by SIGTERM {where}")
