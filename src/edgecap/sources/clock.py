"""Process-wide helpers of the reader threads: the reconnect rate cap and the PyAV interrupt/clock hook."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._log import logger

__all__ = ["GLOBAL_RECONNECTS_PER_S", "GLOBAL_RECONNECT_BURST", "INTERRUPTS", "RECONNECTS", "InterruptHook",
           "TokenBucket"]

#: Process-wide reconnect cap, DeepStream style: sustained attempts per second across all sources, and burst.
GLOBAL_RECONNECTS_PER_S = 2.0
GLOBAL_RECONNECT_BURST = 2


class TokenBucket:
    """A small shared token bucket: callers wait their turn; a cancelled wait gives its token back."""

    def __init__(self, rate_per_s: float, burst: int):
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, cancel: threading.Event) -> bool:
        """Wait for a token; False if ``cancel`` was set first."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate) - 1.0
            self._stamp = now
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        cancelled = cancel.wait(wait) if wait > 0 else cancel.is_set()
        if cancelled:
            with self._lock:
                self._tokens += 1.0
        return not cancelled


#: The one bucket every live source draws a reconnect attempt from.
RECONNECTS = TokenBucket(GLOBAL_RECONNECTS_PER_S, GLOBAL_RECONNECT_BURST)


class InterruptHook:
    """Interrupt a reader thread's blocked PyAV open or read from another thread.

    PyAV's FFmpeg interrupt callback (av/container/core.py ``interrupt_cb``) aborts the blocked call when
    ``time.monotonic()`` -- looked up on that module at every poll, about every 100 ms inside network waits -- is
    earlier than the call's start. The hook replaces that module's ``time`` with a proxy that returns the real clock,
    except on a watched thread whose predicate is true, where it returns a falling clock. FFmpeg then returns from
    av_read_frame on the reader thread, which closes its own container. Closing the container from the stopping
    thread instead would free the AVFormatContext under the blocked call (a use after free). If a PyAV version no
    longer looks the clock up this way, the hook stays uninstalled and a blocked call ends by PyAV's own timeouts.
    """

    def __init__(self) -> None:
        self._checks: dict[int, Callable[[], bool]] = {}
        self._ticks = itertools.count()
        self._lock = threading.Lock()
        self.installed = False

    def install(self) -> bool:
        """Put the hooked clock into av.container.core (once per process); True if the hook is in place."""
        with self._lock:
            if not self.installed:
                import av.container.core as core

                if getattr(core, "time", None) is time:
                    core.time = _HookedClock(self)
                    self.installed = True
                else:
                    logger.debug("PyAV interrupt hook unavailable; blocked reads end by PyAV's timeouts")
            return self.installed

    def monotonic(self) -> float:
        """The clock PyAV sees: the real one, or a falling one on a watched thread that asked to be interrupted."""
        check = self._checks.get(threading.get_ident())
        if check is not None and check():
            return -1e12 - next(self._ticks)  # strictly falling: also interrupts a call started while interrupted
        return time.monotonic()

    @contextmanager
    def watch(self, check: Callable[[], bool]) -> Iterator[None]:
        """While the block runs, PyAV calls on this thread are interrupted as soon as ``check()`` is true."""
        ident = threading.get_ident()
        self._checks[ident] = check
        try:
            yield
        finally:
            self._checks.pop(ident, None)


class _HookedClock:
    """Stands in for the ``time`` module inside av.container.core."""

    def __init__(self, hook: InterruptHook):
        self._hook = hook

    def monotonic(self) -> float:
        return self._hook.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


#: The one hook every reader thread registers with (installed once, by the first network source).
INTERRUPTS = InterruptHook()
