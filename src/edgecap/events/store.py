"""The writer of the durable event log: SQLite (WAL + FTS5) written by one thread, with an optional JSONL mirror.

Durability contract. ``EventStore.put`` only enqueues; one writer thread commits whatever is queued in one
transaction (group commit), and an event is *acknowledged* (``Ack.wait`` returns its row id) only after that
transaction committed. The database runs in WAL mode with ``synchronous=NORMAL`` by default: a committed
transaction is in the WAL file (the OS page cache) before it is acknowledged, so it survives a crash or kill -9 of
the process; a power loss or kernel crash may roll back the last commits but never corrupts the file. Pass
``synchronous="FULL"`` to also fsync the WAL at every commit (one fsync per batch, not per event) where power loss
must not lose acknowledged events.

Failure policy. Text is never a reason to raise: bytes, invalid UTF-8, lone surrogates, control characters and
oversized strings are cleaned before storing, so every stored value is valid UTF-8. A write that fails at runtime
(disk full, I/O error) is logged (rate-limited) and retried with a capped backoff; the events wait in memory, up to
``max_pending`` distinct events, beyond which the oldest are dropped and counted (``EventStore.stats``).

JSONL mirror. Each committed write is appended as one line (the event, a ``seq`` that continues across restarts,
and ``updated``, the database's write counter). The line is written after the commit, so a kill in between, or a
mirror write that fails (whatever the error: the events are committed, their acks resolve and the writer goes on),
leaves the mirror behind the database; the next successful mirror write, or the next
``EventStore`` opened on the same files, first appends the current state of every row written after the mirror's
last line. Every committed event is in the mirror, and each row's last line is its latest state.

Outbox. With an ``outbox`` hook, each write also inserts the messages the hook derives from it (MQTT, webhooks)
into the ``outbox`` table, in the same transaction: a message exists exactly when its event was committed, and a
delivery worker (``edgecap.alerts``) sends and deletes them, across restarts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .._log import logger
from ..errors import InputError
from ._writing import Throttled
from .mirror import JsonlSink
from .model import Event, EventStoreError, OutboxMessage, clean_event
from .schema import (INSERT_EMBEDDING, INSERT_OUTBOX, SELECT, SELECT_WITH_UPDATED, UPSERT, event_row, open_writer,
                     row_event)
from .similar import embedding_blob
from .sink import Ack

if TYPE_CHECKING:
    import numpy as np

#: ``hook(conn, before, after, updated)``: the messages one write produces. ``before`` is the row's previous state
#: (None for a new row), ``after`` the new state with its row id, ``updated`` its change counter; ``conn`` is the
#: writer's connection inside the transaction (read-only use: e.g. to find a linked event's row id).
OutboxHook = Callable[[sqlite3.Connection, "Event | None", Event, int], Iterable[OutboxMessage]]


@dataclass
class _Write:
    event: Event
    acks: list[Ack]
    embedding: bytes | None = None  # stored with the event; a later state of the uid without one keeps it


class EventStore:
    """The writer of the event log: SQLite in WAL mode, one writer thread, batched commits; an ``EventSink``.

    Args:
        path: database file (created with its schema; an older schema is migrated in one transaction).
        jsonl: also append every committed write to this JSONL file (``Event.to_json()`` plus ``seq``).
        synchronous: "NORMAL" (default: acknowledged events survive a process crash or kill -9) or "FULL"
            (they also survive power loss, at one fsync per batch).
        fsync_jsonl: fsync the JSONL file after every batch.
        max_batch: most events per transaction.
        max_pending: most distinct events kept in memory while writes fail; the oldest beyond it are dropped.
        retry_max_s: cap of the backoff between retries of a failed write.
        outbox: derive the messages of each write, inserted into the outbox in the write's transaction (see
            ``OutboxHook``).

    Raises:
        EventStoreError: the directory is missing or read-only, the file is not an event database, or its schema is
            newer than this code.

    Example:
        >>> with EventStore("events.sqlite", jsonl="events.jsonl") as store:
        ...     row_id = store.put(Event(uuid.uuid4().hex, "scene", "gate", now, caption="a car")).wait(5)
    """

    def __init__(self, path: str | os.PathLike, *, jsonl: str | os.PathLike | None = None,
                 synchronous: str = "NORMAL", fsync_jsonl: bool = False, max_batch: int = 256,
                 max_pending: int = 10_000, retry_max_s: float = 5.0, outbox: OutboxHook | None = None):
        if synchronous not in ("NORMAL", "FULL"):
            raise InputError(f"synchronous must be one of: NORMAL, FULL; got {synchronous!r}")
        if max_batch < 1 or max_pending < 1:
            raise InputError(f"max_batch and max_pending must be >= 1, got {max_batch} and {max_pending}")
        self.path = Path(path)
        self.jsonl_path = None if jsonl is None else Path(jsonl)
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._retry_max_s = retry_max_s
        self._outbox = outbox
        self._conn = open_writer(self.path, synchronous)
        try:
            self._jsonl = None if self.jsonl_path is None else JsonlSink(self.jsonl_path, fsync=fsync_jsonl)
            if self._jsonl is not None:
                self._open_mirror()
        except EventStoreError:
            self._conn.close()
            raise
        self._cond = threading.Condition()
        self._pending: OrderedDict[str, _Write] = OrderedDict()  # uid -> newest state waiting to be written
        self._in_flight: list[_Write] = []
        self._counts = {"committed": 0, "failed": 0, "dropped": 0, "jsonl_failed": 0}
        self._unresolved = 0
        self._closing = False
        self._deadline = math.inf
        self._wake = threading.Event()
        self._log_write = Throttled()
        self._log_drop = Throttled()
        self._log_jsonl = Throttled()
        self._thread = threading.Thread(target=self._run, name=f"edgecap-events:{self.path.name}", daemon=True)
        self._thread.start()

    # -- producer side ---------------------------------------------------------------------------------------
    #: the runtime hands this sink a scene's image embedding with its first write (``put(ev, embedding=...)``)
    accepts_embeddings = True

    def put(self, event: Event, *, embedding: np.ndarray | None = None) -> Ack:
        """Enqueue an insert (new uid) or update (known uid) and return at once; never blocks on the disk.

        Text fields are cleaned first (see the module docstring). A newer write of a uid that is still queued
        replaces the queued state; both acks complete when it commits.

        Args:
            event: the event.
            embedding: the event's image embedding (1-D, any float dtype), stored normalized in the same
                transaction for ``similar``; None keeps whatever is stored.

        Raises:
            InputError: not an Event, an empty uid, times that are not datetimes, numbers that are not numbers.
            EventStoreError: the store is closed.
        """
        clean = clean_event(event)
        blob = None if embedding is None else embedding_blob(embedding)
        ack = Ack()
        with self._cond:
            if self._closing:
                raise EventStoreError(f"event store {self.path} is closed; open a new EventStore to write")
            self._unresolved += 1
            queued = self._pending.get(clean.uid)
            if queued is None:
                self._pending[clean.uid] = _Write(clean, [ack], blob)
            else:
                queued.event = clean
                queued.acks.append(ack)
                queued.embedding = blob or queued.embedding
            self._drop_over_bound()
            self._cond.notify()
        return ack

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event enqueued before this call is committed.

        Returns:
            True if all were committed, False if the timeout passed first or some were dropped.
        """
        with self._cond:
            acks = [a for w in (*self._in_flight, *self._pending.values()) for a in w.acks]
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        for ack in acks:
            remaining = deadline - time.monotonic()
            if not ack.settled(None if remaining == math.inf else max(0.0, remaining)):
                return False
        return all(a.error is None for a in acks)

    def close(self, timeout: float | None = 10.0) -> None:
        """Commit what is queued (retrying for up to ``timeout`` s if the disk fails), then stop the writer.

        Events still not committed at the deadline are dropped and counted. Calling it again does nothing.
        """
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = math.inf if timeout is None else time.monotonic() + timeout
                self._cond.notify_all()
        self._wake.set()
        self._thread.join(None if timeout is None else timeout + 5.0)
        if self._thread.is_alive():
            logger.error("event writer for %s did not stop within %s s (blocked in SQLite?)", self.path, timeout)

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        """Counters of puts: committed, dropped, queued (not yet either); failed = failed write transactions;
        jsonl_failed = committed events the JSONL mirror could not record."""
        with self._cond:
            return {**self._counts, "queued": self._unresolved}

    # -- writer thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.0
        singles = 0  # writes still to make one per transaction, to isolate an event that cannot be stored
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending or time.monotonic() >= self._deadline:
                        self._give_up()
                        return
                    take = 1 if singles else self._max_batch
                    batch = [self._pending.popitem(last=False)[1] for _ in range(min(take, len(self._pending)))]
                    self._in_flight = batch
                try:
                    written = self._commit(batch)
                except Exception as exc:  # noqa: BLE001 - the writer must outlive any write error
                    if self._requeue(batch, exc):
                        singles = max(singles, len(batch))
                    delay = min(self._retry_max_s, max(0.05, 2 * delay))
                    self._log_write(logging.WARNING, "event database %s: write failed (%s: %s); "
                                    "%d events waiting, retrying in %.2f s", self.path, type(exc).__name__, exc,
                                    self.stats["queued"], delay)
                    self._sleep(delay)
                    continue
                delay, singles = 0.0, max(0, singles - 1)
                self._committed(batch, written)
        except Exception:  # a bug here must not leave producers waiting on acks forever
            logger.exception("event writer for %s stopped", self.path)
            with self._cond:
                self._closing = True
                in_flight, self._in_flight = [a for w in self._in_flight for a in w.acks], []
                self._fail(in_flight, f"event writer for {self.path} stopped on an internal error (see the log)")
                self._give_up()
        finally:
            self._conn.close()
            if self._jsonl is not None:
                self._jsonl.close()

    def _commit(self, batch: list[_Write]) -> list[tuple[int, int]]:
        """Write a batch in one transaction; (row id, updated) per write."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [self._write(w) for w in batch]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return ids

    def _write(self, w: _Write) -> tuple[int, int]:
        """One upsert, its embedding, and its outbox messages when there is a hook; (row id, updated)."""
        conn, ev = self._conn, w.event
        old = None if self._outbox is None else conn.execute(f"{SELECT} WHERE uid = ?", (ev.uid,)).fetchone()
        row_id, updated = conn.execute(UPSERT, event_row(ev)).fetchone()
        if w.embedding is not None:
            conn.execute(INSERT_EMBEDDING, (row_id, w.embedding))
        if self._outbox is not None:
            now = time.time()
            for m in self._outbox(conn, None if old is None else row_event(old), replace(ev, id=row_id), updated):
                conn.execute(INSERT_OUTBOX, (m.dest, m.topic, m.payload, int(m.retain), now))
        return row_id, updated

    def _committed(self, batch: list[_Write], written: list[tuple[int, int]]) -> None:
        try:
            if self._jsonl is not None:
                self._mirror(batch, written)
        finally:  # the batch is committed: its acks resolve whatever the mirror did
            with self._cond:
                self._in_flight = []
                n = sum(len(w.acks) for w in batch)
                self._counts["committed"] += n
                self._unresolved -= n
            for w, (row_id, _) in zip(batch, written):
                for ack in w.acks:
                    ack.resolve(row_id)

    def _mirror(self, batch: list[_Write], written: list[tuple[int, int]]) -> None:
        assert self._jsonl is not None
        try:
            if self._jsonl.synced == written[0][1] - 1:
                self._jsonl.write([(replace(w.event, id=i), u) for w, (i, u) in zip(batch, written)])
            else:  # an earlier mirror write failed: bring the mirror up to date, this batch included
                self._mirror_catch_up()
        except Exception as exc:  # noqa: BLE001 - the mirror lags and catches up; it never costs an event
            with self._cond:
                self._counts["jsonl_failed"] += len(batch)
            self._log_jsonl(logging.WARNING, "JSONL mirror %s: write failed (%s: %s); the events are in the "
                            "database and are mirrored at the next successful write", self._jsonl.path,
                            type(exc).__name__, getattr(exc, "strerror", None) or exc)

    # -- JSONL mirror ------------------------------------------------------------------------------------------
    def _open_mirror(self) -> None:
        """A mirror that was already written to catches up with what the database committed after its last line
        (the process died between a commit and its mirror write, or a mirror write failed); a new mirror, or one
        written before lines carried ``updated``, starts with the next write."""
        assert self._jsonl is not None
        if self._jsonl.synced is None:
            self._jsonl.synced = self._conn.execute("SELECT COALESCE(MAX(updated), 0) FROM events").fetchone()[0]
            return
        try:
            self._mirror_catch_up()
        except (OSError, sqlite3.Error) as exc:
            raise EventStoreError(f"cannot bring JSONL file {self._jsonl.path} up to date with {self.path}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None

    def _mirror_catch_up(self, chunk: int = 1000) -> None:
        """Append the current state of every row written after the mirror's last line, in write order. A row
        written several times meanwhile appears once, in its latest state."""
        assert self._jsonl is not None
        behind = self._conn.execute(f"{SELECT_WITH_UPDATED} WHERE updated > ? ORDER BY updated",
                                    (self._jsonl.synced,))
        caught = 0
        while rows := behind.fetchmany(chunk):
            self._jsonl.write([(row_event(row[:-1]), row[-1]) for row in rows])
            caught += len(rows)
        if caught:
            logger.warning("JSONL mirror %s was behind the database: appended the current state of %d rows",
                           self._jsonl.path, caught)

    def _requeue(self, batch: list[_Write], exc: Exception) -> bool:
        """Put a failed batch back in front of the queue; True if its events should be retried one at a time.

        sqlite3.OperationalError (disk full, I/O error, locked) is the disk's fault: retry everything. Any other
        error may be one poison event: isolate it by writing one event per transaction, and drop it if it fails
        alone, so it cannot block the queue.
        """
        transient = isinstance(exc, sqlite3.OperationalError)
        with self._cond:
            self._in_flight = []
            self._counts["failed"] += 1
            if not transient and len(batch) == 1:
                self._fail(batch[0].acks, f"event {batch[0].event.uid} was not stored: {type(exc).__name__}: {exc}")
                return True
            for w in reversed(batch):
                newer = self._pending.get(w.event.uid)
                if newer is None:
                    self._pending[w.event.uid] = w
                    self._pending.move_to_end(w.event.uid, last=False)
                else:  # a newer state of this uid was queued meanwhile: it answers the older acks too
                    newer.acks[:0] = w.acks
                    newer.embedding = newer.embedding or w.embedding
            self._drop_over_bound()
        return not transient

    def _sleep(self, delay: float) -> None:
        if self._closing:  # keep retrying until the close deadline, without spinning
            time.sleep(max(0.0, min(delay, self._deadline - time.monotonic())))
        else:
            self._wake.wait(delay)

    def _drop_over_bound(self) -> None:
        """Drop the oldest queued events beyond ``max_pending`` (newest wins). Caller holds the lock."""
        dropped: list[Ack] = []
        while len(self._pending) > self._max_pending:
            dropped += self._pending.popitem(last=False)[1].acks
        if dropped:
            self._fail(dropped, f"event dropped: more than {self._max_pending} events waiting for {self.path}")
            self._log_drop(logging.WARNING, "event database %s: %d events dropped (%d in total) because %d "
                           "were already waiting to be written", self.path, len(dropped), self._counts["dropped"],
                           self._max_pending)

    def _give_up(self) -> None:
        """At close: fail what is still queued (the disk kept failing until the deadline). Caller holds the lock."""
        acks = [a for w in self._pending.values() for a in w.acks]
        self._pending.clear()
        if acks:
            self._fail(acks, f"event store {self.path} closed before the event could be committed")
            logger.error("event database %s: %d events were not committed before close", self.path, len(acks))

    def _fail(self, acks: list[Ack], message: str) -> None:
        self._counts["dropped"] += len(acks)
        self._unresolved -= len(acks)
        for ack in acks:
            ack.fail(message)

