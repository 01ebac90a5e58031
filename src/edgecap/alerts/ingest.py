"""Many nodes, one log: consume the ``PREFIX/events`` and ``PREFIX/system`` messages of any number of edgecap nodes
from a broker into one event database.

Idempotent: a message is applied only when its ``updated`` counter is newer than the one already stored for its
event uid, so duplicates (at-least-once delivery) and late, out-of-order copies change nothing. The node's name is
kept in ``details.node`` (and the node's counter in ``details.node_updated``).

Nothing lost: the subscription is a persistent session (clean_session=False, a fixed client id) with QoS 1, and a
message is acknowledged to the broker only after the transaction holding it committed; messages published while
ingest is down wait in the broker (up to its queue limit) and arrive when it comes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._log import logger
from ..events.model import Event, clean_event
from ..events.schema import UPSERT, event_row, open_writer
from .mqtt import new_client
from .settings import MqttSettings


@dataclass
class IngestStats:
    """Counters of one ingest run."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    malformed: int = 0
    nodes: set[str] = field(default_factory=set)


def parse_change(payload: bytes) -> tuple[Event, str, int]:
    """A ``PREFIX/events`` or ``PREFIX/system`` message -> (event with ``details.node``, node, updated).

    Raises:
        ValueError: not such a message.
    """
    data = json.loads(payload)
    if not isinstance(data, dict) or not isinstance(data.get("after"), dict):
        raise ValueError("no 'after' object")
    node, updated = data.get("node"), data.get("updated")
    if not isinstance(node, str) or not isinstance(updated, int) or isinstance(updated, bool):
        raise ValueError("no 'node' string or 'updated' integer")
    after = Event.from_json({**data["after"], "id": None})
    details = {**after.details, "node": node, "node_updated": updated}
    return clean_event(replace(after, details=details)), node, updated


class Ingestor:
    """Subscribes to the nodes' event topics and writes them into one database.

    Args:
        settings: broker url, credentials, client id (``topic_prefix`` names the topics to read).
        db_path: the central event database (created with the schema if missing).
        batch: most messages per transaction.
    """

    def __init__(self, settings: MqttSettings, db_path: str | os.PathLike, *, batch: int = 500):
        self.settings = settings
        self.path = Path(db_path)
        self.stats = IngestStats()
        self._batch = batch
        self._conn = open_writer(self.path)
        self._inbox: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        topics = [(f"{settings.topic_prefix}/{name}", 1) for name in ("events", "system")]
        client = new_client(settings, client_id=f"edgecap-ingest-{settings.topic_prefix}", window=batch,
                            clean_session=False, manual_ack=True)
        client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topics) if not rc.is_failure else
                                                    logger.warning("MQTT broker refused ingest: %s", rc))
        client.on_subscribe = lambda *a: self.subscribed.set()
        client.on_message = lambda c, u, msg: self._inbox.put(msg)
        self._client = client

    def run(self, stop: threading.Event) -> IngestStats:
        """Ingest until ``stop`` is set; returns the counters."""
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=30)
        self._client.loop_start()
        try:
            while not stop.is_set():
                try:
                    first = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                msgs = [first]
                with contextlib.suppress(queue.Empty):
                    while len(msgs) < self._batch:
                        msgs.append(self._inbox.get_nowait())
                self._apply(msgs)
        finally:
            self._client.disconnect()
            self._client.loop_stop()
            self._conn.close()
        return self.stats

    def _apply(self, msgs: list[Any]) -> None:
        """Write a batch in one transaction, then acknowledge it (a crash in between means a redelivery)."""
        conn = self._conn
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                counts = [self._apply_one(m.payload) for m in msgs]
                conn.execute("COMMIT")
                break
            except sqlite3.OperationalError as exc:  # busy or failing disk: the messages are not acked yet
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                logger.warning("ingest into %s failed (%s); retrying", self.path, exc)
                threading.Event().wait(1.0)
        for m, outcome in zip(msgs, counts):
            self.stats.received += 1
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
            self._client.ack(m.mid, m.qos)

    def _apply_one(self, payload: bytes) -> str:
        try:
            ev, node, updated = parse_change(payload)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ingest: skipped a malformed message (%s)", exc)
            return "malformed"
        self.stats.nodes.add(node)
        row = self._conn.execute("SELECT json_extract(details, '$.node_updated') FROM events WHERE uid = ?",
                                 (ev.uid,)).fetchone()
        if row is not None and row[0] is not None and row[0] >= updated:
            return "duplicates"
        self._conn.execute(UPSERT, event_row(ev)).fetchone()
        return "applied"
