"""Similar scenes: each scene's pooled image embedding (stored by ``EventStore.put(ev, embedding=...)`` in the
``event_embeddings`` table, unit length, float16) and the nearest events by cosine.

``SimilarIndex`` keeps the stored vectors of one database in memory: loaded once, then extended with the rows
written since (ids only grow: AUTOINCREMENT), so a query costs one matrix-vector product, not a table read. Rows
deleted by retention are noticed when a result names an event that is gone; the index then reloads. Vectors of
another length (a log written by two models) are kept apart and never compared. Why numpy and not sqlite-vec:
docs/REVIEW.md ("Similar scenes").
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .model import Event
from .schema import SELECT, open_reader, row_event

STORED_DTYPE = np.float16  # on disk: half the bytes of float32; cosine ranks are unchanged at this precision
MEMORY_DTYPE = np.float32  # in memory: numpy has no BLAS for float16 (a float16 product is ~12x slower, measured)
_LOAD_CHUNK = 50_000


def embedding_blob(vec: np.ndarray) -> bytes:
    """A pooled embedding as stored: 1-D, normalized to unit length, float16 bytes.

    Raises:
        InputError: not a 1-D array of finite numbers, or all zeros.
    """
    a = np.asarray(vec, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError(f"an embedding must be a 1-D array of finite numbers, got shape {a.shape}")
    norm = float(np.linalg.norm(a))
    if norm == 0.0:
        raise InputError("an embedding of all zeros has no direction; pass None to store none")
    return (a / norm).astype(STORED_DTYPE).tobytes()


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=STORED_DTYPE)


@dataclass(frozen=True)
class Similar:
    """The answer for one event: the nearest events (most similar first) with their cosine, or why there are none.

    Attributes:
        events: (event, cosine similarity) pairs.
        reason: None when the event has an embedding, else why no neighbours can be given.
    """

    events: list[tuple[Event, float]]
    reason: str | None = None


class _Block:
    """The vectors of one length: ids and rows, grown by doubling so appends are amortized O(1)."""

    def __init__(self, dim: int):
        self.ids = np.empty(0, dtype=np.int64)
        self.vecs = np.empty((0, dim), dtype=MEMORY_DTYPE)
        self.n = 0

    def append(self, ids: list[int], vecs: list[np.ndarray]) -> None:
        need = self.n + len(ids)
        if need > len(self.ids):
            cap = max(need, 2 * len(self.ids), 1024)
            self.ids = np.resize(self.ids, cap)
            grown = np.empty((cap, self.vecs.shape[1]), dtype=MEMORY_DTYPE)
            grown[: self.n] = self.vecs[: self.n]
            self.vecs = grown
        self.ids[self.n:need] = ids
        self.vecs[self.n:need] = np.stack(vecs)
        self.n = need


class SimilarIndex:
    """Nearest scene events by cosine over the stored embeddings of one database; thread-safe.

    Args:
        db_path: the event database (read-only).
    """

    def __init__(self, db_path: str | os.PathLike):
        self.db_path = Path(db_path)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._blocks: dict[int, _Block] = {}
        self._last_id = 0

    def _refresh(self, conn: sqlite3.Connection) -> None:
        """Load the embeddings written since the last call (all of them the first time)."""
        rows = conn.execute("SELECT event_id, vec FROM event_embeddings WHERE event_id > ? ORDER BY event_id",
                            (self._last_id,))
        while chunk := rows.fetchmany(_LOAD_CHUNK):
            by_dim: dict[int, tuple[list[int], list[np.ndarray]]] = {}
            for event_id, blob in chunk:
                v = _vector(blob)
                ids, vecs = by_dim.setdefault(v.size, ([], []))
                ids.append(event_id)
                vecs.append(v)
            for dim, (ids, vecs) in by_dim.items():
                self._blocks.setdefault(dim, _Block(dim)).append(ids, vecs)
            self._last_id = chunk[-1][0]

    def nearest(self, event_id: int, *, limit: int = 20) -> Similar | None:
        """The ``limit`` events whose embeddings are nearest (cosine) to the event's own, the event excluded.

        Returns:
            None for an unknown event; a ``Similar`` with a ``reason`` when the event has no embedding.

        Raises:
            InputError: limit below 1.
            EventStoreError: the database cannot be read.
        """
        if limit < 1:
            raise InputError(f"limit must be >= 1, got {limit}")
        conn = open_reader(self.db_path)
        if conn is None:
            return None
        with contextlib.closing(conn):
            if conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is None:
                return None
            row = conn.execute("SELECT vec FROM event_embeddings WHERE event_id = ?", (event_id,)).fetchone()
            if row is None:
                return Similar([], "this event has no stored image embedding (only scenes captioned by a model "
                                   "that encodes separately have one, and only when the run stored embeddings)")
            query = _vector(row[0]).astype(np.float32)
            with self._lock:
                for attempt in range(2):
                    self._refresh(conn)
                    ids, scores = self._top(query, event_id, limit)
                    found = self._events(conn, ids)
                    if len(found) == len(ids) or attempt:
                        break
                    self._reset()  # some were deleted (retention): forget them all, load what is left
        return Similar([(found[i], float(s)) for i, s in zip(ids, scores) if i in found])

    def _top(self, query: np.ndarray, exclude: int, limit: int) -> tuple[list[int], np.ndarray]:
        block = self._blocks.get(query.size)
        if block is None or block.n == 0:
            return [], np.empty(0)
        scores = block.vecs[: block.n] @ query
        ids = block.ids[: block.n]
        scores[ids == exclude] = -np.inf
        k = min(limit, block.n - 1 if exclude in ids else block.n)  # not the event itself
        if k <= 0:
            return [], np.empty(0)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [int(i) for i in ids[top]], scores[top]

    @staticmethod
    def _events(conn: sqlite3.Connection, ids: list[int]) -> dict[int, Event]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        return {ev.id: ev for ev in map(row_event, conn.execute(f"{SELECT} WHERE id IN ({marks})", ids))}
