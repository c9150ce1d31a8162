"""Interruptions: SIGTERM as an exception, and signals held back while a run commits an epoch.

Ctrl-C raises :class:`KeyboardInterrupt` in Python. :func:`sigterm_raises` makes SIGTERM raise
:class:`Terminated` (a :class:`KeyboardInterrupt`), so both unwind through ``finally`` blocks and
leave no temporary file behind; the command line exits with :func:`exit_code` (130 or 143).
:func:`signals_deferred` holds both signals back while a block runs (the checkpoint and the
metrics line of one epoch) and raises afterwards, so an epoch is committed whole or not at all.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: Exit codes of a process ended by a signal, by the shell's convention 128 + signal number.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM was received."""


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (SIGINT), 143 for :class:`Terminated` (SIGTERM)."""
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (outside the main thread: no-op)."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block has finished, then act on them.

    A signal received inside the block is raised when the block ends normally:
    :class:`Terminated` for SIGTERM, :class:`KeyboardInterrupt` for SIGINT. A signal whose
    handler was not installed from Python is left alone. Outside the main thread: no-op.
    """
    if not _in_main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:
            previous[signum] = signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if signal.SIGTERM in received:
        raise Terminated("received signal SIGTERM")
    if signal.SIGINT in received:
        raise KeyboardInterrupt
