"""The seam between producers of events and where events go: an ``EventSink`` takes events and acknowledges each
one once it is stored (``Ack``). The SQLite ``EventStore`` and the ``JsonlSink`` are sinks; so can be anything the
runtime should feed (a publisher, a live feed)."""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from .model import Event, EventStoreError


class Ack:
    """The outcome of one ``put``: resolved with the id the sink gave the event, or failed with a message.

    A sink creates one per ``put`` and calls ``resolve`` or ``fail`` exactly once, from any thread.
    """

    __slots__ = ("_done", "_id", "_error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._id: int | None = None
        self._error: str | None = None

    def done(self) -> bool:
        """True once the event was stored or dropped."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the event is stored and return its id (the database row id; the line number for JSONL).

        Raises:
            TimeoutError: not stored within ``timeout`` seconds (it may still be later).
            EventStoreError: the event was dropped (memory bound reached while the disk failed, or closed).
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"event not committed within {timeout} s")
        if self._error is not None:
            raise EventStoreError(self._error)
        assert self._id is not None
        return self._id

    def settled(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for the outcome without raising; True if it is known by then."""
        return self._done.wait(timeout)

    @property
    def error(self) -> str | None:
        """Why the event was dropped (None while pending or once stored)."""
        return self._error

    def resolve(self, event_id: int) -> None:
        """Mark the event stored under ``event_id`` (called by the sink)."""
        self._id = event_id
        self._done.set()

    def fail(self, message: str) -> None:
        """Mark the event dropped, with a one-line reason (called by the sink)."""
        self._error = message
        self._done.set()


@runtime_checkable
class EventSink(Protocol):
    """Where the runtime sends events. ``put`` never blocks on I/O for long and never raises for a failing disk:
    the outcome arrives on the returned ``Ack``.

    Methods:
        put(event): take an event (a newer write of the same ``uid`` updates it); returns its Ack.
        flush(timeout): wait until every event put before the call is stored; False on timeout or drops.
        close(timeout): store what is pending (for up to ``timeout`` s), then release the sink; idempotent.
    """

    def put(self, event: Event) -> Ack: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self, timeout: float | None = None) -> None: ...
