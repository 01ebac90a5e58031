"""Ending a long-running command (`edgecap run`, `edgecap ingest`) on Ctrl-C or SIGTERM.

Python runs a signal handler on the main thread, between two bytecodes of whatever that thread is doing, and that
may be while it holds a lock. ``threading.Event.set()`` takes the event's internal lock, and ``Event.wait()`` holds
that same lock for a few bytecodes around every wait. A handler calling ``stop.set()`` on the event the main loop
polls with ``stop.wait(0.005)`` therefore deadlocked the main thread on its own lock whenever the signal landed in
that window: `edgecap run` ignored SIGTERM for good, while its reader threads went on streaming and logging "drops"
because nobody read their frames any more. (The Python docs warn against using locks in signal handlers.)

:class:`SignalStop` is the stop flag those commands hand to ``Runtime.run`` / ``Ingestor.run`` instead: its
``set()`` takes no lock, so a handler can call it at any point.
"""

from __future__ import annotations

import signal
import time

__all__ = ["SignalStop", "stop_on_signals"]


class SignalStop:
    """A stop flag with the part of ``threading.Event``'s interface the run loops use (``set``, ``is_set``,
    ``wait``) that a signal handler may set: ``set()`` only assigns an attribute (no lock), and ``wait()`` sleeps
    in slices of at most ``poll_s`` seconds, so a flag set during a wait is seen within ``poll_s``."""

    def __init__(self, poll_s: float = 0.05):
        self._set = False
        self._poll_s = poll_s

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until the flag is set or ``timeout`` seconds passed (None: until set); returns the flag."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self._set:
            step = self._poll_s if deadline is None else min(self._poll_s, deadline - time.monotonic())
            if step <= 0:
                break
            time.sleep(step)  # a signal handled meanwhile sets the flag; the sleep then ends its short slice
        return self._set


def stop_on_signals(signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> SignalStop:
    """A :class:`SignalStop` that ``signals`` set (call on the main thread: Python installs handlers there only)."""
    stop = SignalStop()

    def handler(signum: int, frame: object) -> None:
        stop.set()  # no lock here: see the module docstring

    for sig in signals:
        signal.signal(sig, handler)
    return stop
