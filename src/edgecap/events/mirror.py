"""The JSONL mirror: one JSON object per line (``Event.to_json()`` plus ``seq``, a line number that continues
across restarts), appended with O_APPEND, a partial last line (kill -9 mid-write) cut at the next open.

``JsonlSink`` is an ``EventSink`` on its own (``put`` appends the line, its Ack resolves with the line's ``seq``),
and the mirror inside ``EventStore(path, jsonl=...)``, which also writes ``updated`` (the database's write counter)
so that a mirror left behind the database can catch up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterator

from .._log import logger
from ._writing import Throttled, check_writable_location
from .model import Event, EventStoreError, clean_event, json_line
from .sink import Ack


def _lines_backwards(f: Any, end: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The lines of ``f[0:end]`` from last to first, without newlines; the first is the text after the last
    newline (empty when the file ends with one)."""
    pos, rest = end, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + rest).split(b"\n")
        rest = parts[0]  # may continue in the previous chunk
        yield from reversed(parts[1:])
    yield rest


def _recover_jsonl(path: Path) -> tuple[int, int | None]:
    """Cut a partial last line (a kill -9 mid-write); return the ``seq`` of the last complete line (0: none) and
    its ``updated`` (the database write it mirrors; None for an empty file or lines written before it existed)."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return 0, None
    with f:
        end = f.seek(0, os.SEEK_END)
        lines = _lines_backwards(f, end)
        partial = next(lines)
        if partial:
            f.truncate(end - len(partial))
            logger.warning("removed a partial last line (%d bytes) from %s", len(partial), path)
        for line in lines:
            try:
                record = json.loads(line)
                updated = record.get("updated")
                return int(record["seq"]), updated if isinstance(updated, int) else None
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a blank or damaged line: the one before it still tells where seq stands
    return 0, None


class JsonlSink:
    """Appends one JSON line per write to ``path``.

    Args:
        path: the JSONL file (created; an existing one is continued, its partial last line cut).
        fsync: fsync the file after every write (survives power loss; slower).

    Attributes:
        seq: ``seq`` of the last line written.
        synced: the database ``updated`` counter of the last line (None when no line carried one); the store's
            catch-up uses it.

    Raises:
        EventStoreError: the file cannot be created or opened.

    Example:
        >>> with JsonlSink("events.jsonl") as sink:
        ...     line = sink.put(Event(uuid.uuid4().hex, "scene", "gate", now, caption="a car")).wait(5)
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False):
        self.path = Path(path)
        check_writable_location(self.path, "JSONL file")
        self.fsync = fsync
        self._lock = threading.Lock()
        self._closed = False
        self._failed = False  # a put failed since the last flush
        self._log_write = Throttled()
        try:
            self.seq, self.synced = _recover_jsonl(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0),
                               0o644)
        except OSError as exc:
            raise EventStoreError(f"cannot open JSONL file {self.path}: {exc.strerror or exc}") from None

    def put(self, event: Event) -> Ack:
        """Append the event as one line now; the Ack is resolved with its ``seq``, or failed if the write failed
        (the file is left without a partial line).

        Raises:
            InputError: not a usable Event (see ``EventStore.put``).
            EventStoreError: the sink is closed.
        """
        clean = clean_event(event)
        ack = Ack()
        with self._lock:
            if self._closed:
                raise EventStoreError(f"JSONL sink {self.path} is closed; open a new JsonlSink to write")
            try:
                self.write([(clean, None)])
            except OSError as exc:
                self._failed = True
                self._log_write(logging.WARNING, "JSONL file %s: write failed (%s)", self.path, exc.strerror or exc)
                ack.fail(f"event {clean.uid} was not written to {self.path}: {exc.strerror or exc}")
                return ack
            ack.resolve(self.seq)
        return ack

    def flush(self, timeout: float | None = None) -> bool:
        """Every put has already been written when it returned: True unless one failed since the last flush."""
        with self._lock:
            ok, self._failed = not self._failed, False
        return ok

    def write(self, events: list[tuple[Event, int | None]]) -> None:
        """Append (event, updated) pairs in one write, ``updated`` order (None: a line without ``updated``).

        Raises:
            OSError: the write failed; nothing of it is left in the file.
        """
        lines = [json_line({**ev.to_json(), "seq": self.seq + i,
                            **({} if updated is None else {"updated": updated})})
                 for i, (ev, updated) in enumerate(events, 1)]
        data = memoryview("".join(lines).encode("utf-8"))
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self._fd, data):]
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # never leave half a line for the next line to be glued to
            raise
        self.seq += len(lines)
        if events and events[-1][1] is not None:
            self.synced = events[-1][1]

    def close(self, timeout: float | None = None) -> None:
        """Close the file; calling it again does nothing."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
