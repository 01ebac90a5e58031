"""Delivering the outbox: one worker thread per destination reads its undelivered messages in id order, hands
them to a transport (MQTT, a webhook) and deletes each once the transport confirms it (PUBACK, HTTP 2xx).

Guarantees. A message is in the outbox exactly when its event is committed (the store writes both in one
transaction); it is deleted only after confirmation, so a broker outage, a crash or a SIGKILL loses nothing: the
next worker (the next start) sends what is left, oldest first. A message confirmed but killed before its delete is
sent again: delivery is at-least-once, and every JSON message carries an ``id`` to drop duplicates by.

Bounds. While a destination is down its messages pile up; beyond ``max_messages`` or ``max_age_s`` the oldest are
dropped, counted (``DeliveryWorker.dropped``) and recorded as an ``outbox_drop`` system event.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from .._log import logger
from ..events.model import OUTBOX_DROP, Event
from .settings import OutboxSettings


@dataclass(frozen=True)
class Pending:
    """One undelivered outbox row."""

    id: int
    topic: str
    payload: str
    retain: bool
    created_unix: float


class Transport(Protocol):
    """Sends outbox rows somewhere and reports which were confirmed.

    Methods:
        room(): how many more rows it accepts now (rows submitted and not yet confirmed count against it).
        submit(rows): take rows, in order (never blocks for long).
        take_confirmed(timeout): ids confirmed since the last call, waiting up to ``timeout`` s for one.
        close(timeout): release the connection.
    """

    def room(self) -> int: ...

    def submit(self, rows: list[Pending]) -> None: ...

    def take_confirmed(self, timeout: float) -> list[int]: ...

    def close(self, timeout: float) -> None: ...


class Outbox:
    """The outbox table of an event database, for a delivery worker (its own connection; the store writes rows)."""

    def __init__(self, db_path: str | os.PathLike):
        self.path = Path(db_path)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)

    def fetch(self, dest: str, after_id: int, limit: int) -> list[Pending]:
        rows = self._conn.execute("SELECT id, topic, payload, retain, created_unix FROM outbox "
                                  "WHERE dest = ? AND id > ? ORDER BY id LIMIT ?", (dest, after_id, limit))
        return [Pending(i, t, p, bool(r), c) for i, t, p, r, c in rows]

    def delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            self._conn.execute(f"DELETE FROM outbox WHERE id IN ({', '.join('?' * len(chunk))})", chunk)

    def count(self, dest: str) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM outbox WHERE dest = ?", (dest,)).fetchone()[0]

    def enforce(self, dest: str, bounds: OutboxSettings, now: float) -> int:
        """Drop the rows of ``dest`` older than the age bound, then the oldest beyond the size bound; how many."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            aged = self._conn.execute("DELETE FROM outbox WHERE dest = ? AND created_unix < ?",
                                      (dest, now - bounds.max_age_s)).rowcount
            over = self._conn.execute(
                "DELETE FROM outbox WHERE dest = ? AND id <= (SELECT id FROM outbox WHERE dest = ? "
                "ORDER BY id DESC LIMIT 1 OFFSET ?)", (dest, dest, bounds.max_messages)).rowcount
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        return aged + over

    def close(self) -> None:
        self._conn.close()


class DeliveryWorker:
    """Delivers the outbox rows of one destination through a transport, on its own thread.

    Args:
        db_path: the event database (its schema created by an ``EventStore`` first).
        dest: the destination ("mqtt", "webhook:NAME").
        transport: where rows go.
        bounds: outbox age and size bounds.
        record: where the ``outbox_drop`` system event goes (the store's ``put``).
        poll_s: how often an idle worker looks for new rows.
        check_every_s: how often the bounds are enforced.
    """

    def __init__(self, db_path: str | os.PathLike, dest: str, transport: Transport, *,
                 bounds: OutboxSettings = OutboxSettings(), record: Callable[[Event], object] | None = None,
                 poll_s: float = 0.2, check_every_s: float = 5.0):
        self.dest = dest
        self.transport = transport
        self.bounds = bounds
        self.record = record
        self.delivered = 0
        self.dropped = 0
        self._outbox = Outbox(db_path)
        self._poll_s = poll_s
        self._check_every_s = check_every_s
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._thread = threading.Thread(target=self._run, name=f"edgecap-outbox:{dest}", daemon=True)

    def start(self) -> DeliveryWorker:
        self._thread.start()
        return self

    def stop(self, drain_s: float = 5.0) -> None:
        """Keep delivering for up to ``drain_s`` s while rows remain, then stop (what is left stays for the next
        start) and close the transport."""
        self._drain_until = time.monotonic() + drain_s
        self._stop.set()
        self._thread.join(drain_s + 10.0)
        self.transport.close(2.0)
        with contextlib.suppress(sqlite3.Error):
            left = self._outbox.count(self.dest)
            if left:
                logger.warning("outbox %s: %d messages not delivered yet; they are kept and sent at the next start",
                               self.dest, left)
        self._outbox.close()

    def _run(self) -> None:
        cursor, in_flight, next_check = 0, 0, 0.0
        while True:
            try:
                now = time.monotonic()
                if self._stop.is_set() and (now >= self._drain_until
                                            or (in_flight == 0 and not self._outbox.fetch(self.dest, cursor, 1))):
                    return
                if now >= next_check:
                    next_check = now + self._check_every_s
                    self._enforce()
                rows = self._outbox.fetch(self.dest, cursor, self.transport.room())
                if rows:
                    self.transport.submit(rows)
                    cursor, in_flight = rows[-1].id, in_flight + len(rows)
                done = self.transport.take_confirmed(0.0 if rows else self._poll_s)
                if done:
                    self._outbox.delete(done)
                    self.delivered += len(done)
                    in_flight = max(0, in_flight - len(done))
            except sqlite3.Error as exc:  # a busy or failing disk: wait and go on; the rows are still there
                logger.warning("outbox %s: %s; retrying", self.dest, exc)
                self._stop.wait(1.0)
            except Exception:  # noqa: BLE001 - a bug must not end delivery silently
                logger.exception("outbox %s: delivery worker error; retrying", self.dest)
                self._stop.wait(1.0)

    def _enforce(self) -> None:
        dropped = self._outbox.enforce(self.dest, self.bounds, time.time())
        if not dropped:
            return
        self.dropped += dropped
        logger.warning("outbox %s: dropped %d undelivered messages (older than %.0f s or beyond %d waiting); %d "
                       "dropped in total", self.dest, dropped, self.bounds.max_age_s, self.bounds.max_messages,
                       self.dropped)
        if self.record is not None:
            self.record(Event(uuid.uuid4().hex, OUTBOX_DROP, "", datetime.now(timezone.utc),
                              details={"dest": self.dest, "dropped": dropped, "dropped_total": self.dropped,
                                       "max_age_s": self.bounds.max_age_s,
                                       "max_messages": self.bounds.max_messages}))
