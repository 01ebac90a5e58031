"""Retention: delete old events and their thumbnails so a camera deployment does not fill its disk.

Safety rules. A scene that may still be extended (``closed`` false) is never deleted, nor the event written last
(it holds the write counter that ``tail`` and the JSONL mirror follow). Rows go in small
transactions (``batch`` rows each; the FTS rows go with them, by the schema's triggers), with a pause after each as
long as the transaction took, so a running ``edgecap run`` writer gets the database in between and never sees
"database is locked". A thumbnail file is deleted only after the deletion of its row committed; a prune killed in
between leaves files without rows, which the next prune sweeps (files in the thumbnail folder that no row names and
that are older than ``orphan_grace``: the runtime writes a thumbnail just before its row). Only files inside the
thumbnail folder are ever deleted, whatever path a row holds.

Size. The log's size is its live database pages (freed pages stay in the file and are reused: the file does not
shrink) plus the bytes of its thumbnail folder.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from .._log import logger
from ..errors import InputError
from ._writing import check_writable_location
from .model import PRUNE, Event, EventStoreError, as_utc, clean_event
from .schema import SCHEMA_VERSION, UPSERT, connect, event_row
from .thumbs import thumbnail_dir

# Only closed events; by start time because its index makes each batch cheap (end >= start, so every event that
# ended before the cutoff also started before it). The row written last is kept: its ``updated`` is the write
# counter the store continues from, and tail readers and the JSONL mirror rely on it never going back.
_DELETABLE = "closed = 1 AND updated < (SELECT MAX(updated) FROM events)"
_DELETE_OLDER = (f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE start_unix < ? AND {_DELETABLE} "
                 "AND COALESCE(end_unix, start_unix) < ? ORDER BY start_unix LIMIT ?) RETURNING thumbnail")
_DELETE_OLDEST = (f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE {_DELETABLE} ORDER BY start_unix "
                  "LIMIT ?) RETURNING thumbnail")


@dataclass(frozen=True)
class PruneReport:
    """What one prune did.

    Attributes:
        events_deleted: event rows deleted (with their full-text rows).
        thumbnails_deleted: thumbnail files of those rows deleted.
        orphans_swept: thumbnail files no row named (left by a killed prune) deleted.
        bytes_before: the log's size before (live database pages + thumbnail files).
        bytes_after: the log's size after.
        duration_s: how long the prune took.
    """

    events_deleted: int = 0
    thumbnails_deleted: int = 0
    orphans_swept: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    duration_s: float = 0.0

    def summary(self) -> str:
        """One line for a person: what was deleted and the size before and after."""
        return (f"pruned {self.events_deleted} events and {self.thumbnails_deleted} thumbnails "
                f"({self.orphans_swept} orphan thumbnails swept); log {_gb(self.bytes_before)} -> "
                f"{_gb(self.bytes_after)} in {self.duration_s:.1f} s")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


def prune(db_path: str | os.PathLike, *, older_than: timedelta | None = None, max_bytes: int | None = None,
          thumbnails: str | os.PathLike | None = None, now: datetime | None = None, batch: int = 500,
          record: Callable[[Event], object] | None = None,
          orphan_grace: timedelta = timedelta(hours=1)) -> PruneReport:
    """Delete events that ended more than ``older_than`` ago and, while the log is larger than ``max_bytes``, the
    oldest further events, with their thumbnails; never an open scene. Safe while ``edgecap run`` writes.

    Args:
        db_path: the event database.
        older_than: delete closed events that ended before ``now - older_than``.
        max_bytes: then delete the oldest closed events until live database pages + thumbnails fit.
        thumbnails: the thumbnail folder (default: the store's, ``thumbnail_dir(db_path)``).
        now: the time ages are measured from (default: the clock).
        batch: most rows per transaction.
        record: called with the one ``"prune"`` system event (counts in ``details``) when something was deleted,
            e.g. a running store's ``put``; without it, the event is written directly.
        orphan_grace: a thumbnail no row names is swept only when older than this (its row may be on its way).

    Returns:
        a PruneReport.

    Raises:
        InputError: no limit given, or a limit or batch that is not positive.
        EventStoreError: the database is missing, not writable, not an event log, of another schema version, or
            busy for too long.

    Example:
        >>> prune("events.sqlite", older_than=timedelta(days=30), max_bytes=20 * 10**9).summary()
    """
    if older_than is None and max_bytes is None:
        raise InputError("give a retention limit: older_than (an age such as 30d), max_bytes, or both")
    if older_than is not None and (not isinstance(older_than, timedelta) or older_than <= timedelta(0)):
        raise InputError(f"older_than must be a positive timedelta, got {older_than!r}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise InputError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    began = time.monotonic()
    path = Path(db_path)
    if not path.is_file():
        raise EventStoreError(f"event database not found: {path}")
    check_writable_location(path, "event database")
    now = as_utc(now or datetime.now(timezone.utc), "now")
    thumbs = Path(thumbnails).absolute() if thumbnails is not None else thumbnail_dir(path)
    conn, version = connect(path, read_only=False)
    try:
        if version == 0:
            return PruneReport(duration_s=time.monotonic() - began)  # no schema yet: nothing to prune
        if version != SCHEMA_VERSION:
            raise EventStoreError(f"event database {path} has schema v{version}, this edgecap prunes "
                                  f"v{SCHEMA_VERSION}: run `edgecap events migrate --db {path}` first")
        files = _Thumbnails(thumbs, path)
        swept = files.sweep(conn, time.time() - orphan_grace.total_seconds())
        before = _db_bytes(conn) + files.bytes + swept[1]
        deleted = 0
        if older_than is not None:
            cutoff = (now - older_than).timestamp()
            while names := _delete(conn, path, _DELETE_OLDER, (cutoff, cutoff, batch)):
                deleted += len(names)
                files.delete(names)
        if max_bytes is not None:
            count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            while (total := _db_bytes(conn) + files.bytes) > max_bytes:
                want = min(batch, max(1, math.ceil((total - max_bytes) / max(1, total / max(1, count)))))
                names = _delete(conn, path, _DELETE_OLDEST, (want,))
                if not names:
                    logger.warning("event log %s is %d bytes, over the limit of %d, but every event left is an "
                                   "open scene or the one written last", path, total, max_bytes)
                    break
                deleted, count = deleted + len(names), count - len(names)
                files.delete(names)
        report = PruneReport(events_deleted=deleted, thumbnails_deleted=files.deleted, orphans_swept=swept[0],
                             bytes_before=before, bytes_after=_db_bytes(conn) + files.bytes,
                             duration_s=time.monotonic() - began)
        if deleted or files.deleted or swept[0]:
            event = _prune_event(report, now, older_than, max_bytes)
            if record is not None:
                record(event)
            else:
                _write(conn, path, lambda: conn.execute(UPSERT, event_row(clean_event(event))).fetchall())
    finally:
        conn.close()
    logger.info("event log %s: %s", path, report.summary())
    return report


def _prune_event(report: PruneReport, now: datetime, older_than: timedelta | None,
                 max_bytes: int | None) -> Event:
    return Event(uid=uuid.uuid4().hex, kind=PRUNE, camera="", start=now, end=now,
                 details={"message": report.summary(), "events_deleted": report.events_deleted,
                          "thumbnails_deleted": report.thumbnails_deleted, "orphans_swept": report.orphans_swept,
                          "bytes_before": report.bytes_before, "bytes_after": report.bytes_after,
                          "older_than_s": None if older_than is None else older_than.total_seconds(),
                          "max_bytes": max_bytes})


def _db_bytes(conn: sqlite3.Connection) -> int:
    """Live pages: what the rows take; freed pages stay in the file for reuse."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * conn.execute("PRAGMA page_size").fetchone()[0]


def _write(conn: sqlite3.Connection, path: Path, work: Callable[[], list]) -> list:
    """Run ``work`` in one short write transaction, then pause as long as it took so a waiting writer gets in."""
    began = time.monotonic()
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:
        raise EventStoreError(f"cannot prune event database {path}: {exc}; is another prune running? try "
                              "again later") from None
    # SQLite's busy handler polls: without a pause this loop could take the lock again before the writer wakes.
    time.sleep(max(0.01, time.monotonic() - began))
    return result


def _delete(conn: sqlite3.Connection, path: Path, sql: str, params: tuple) -> list[str | None]:
    """Delete one batch; the thumbnail paths of the deleted rows (None where a row had none)."""
    return [name for (name,) in _write(conn, path, lambda: conn.execute(sql, params).fetchall())]


class _Thumbnails:
    """The thumbnail folder of one prune: its byte count, kept up to date as files are deleted."""

    def __init__(self, folder: Path, db_path: Path):
        self.folder = folder
        self._base = str(db_path.absolute().parent)  # a relative path in a row is relative to the database's folder
        self._real = os.path.realpath(folder)
        self._parents: dict[str, str] = {}  # a row's folder as written -> its real path (rows share a few)
        self.deleted = 0
        self._sizes: dict[str, tuple[int, float]] = {}  # real file path -> (bytes, mtime)
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        self._sizes[os.path.join(self._real, entry.name)] = (st.st_size, st.st_mtime)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise EventStoreError(f"cannot list thumbnail folder {folder}: {exc.strerror or exc}; check its "
                                  "permissions or pass another --thumbnails") from None
        self.bytes = sum(size for size, _ in self._sizes.values())

    def _real_path(self, name: str) -> str:
        """The real path of a file a row names, however the path was spelt (relative, through a symlink)."""
        parent, base = os.path.split(os.path.join(self._base, name))
        real = self._parents.get(parent)
        if real is None:
            real = self._parents[parent] = os.path.realpath(parent)
        return os.path.join(real, base)

    def _key(self, name: str) -> str | None:
        """The folder's file a row names, or None when the row names none or a file outside the folder."""
        key = self._real_path(name)
        return key if key in self._sizes else None

    def _unlink(self, key: str) -> bool:
        size, _ = self._sizes.pop(key)
        self.bytes -= size
        try:
            os.unlink(key)
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("thumbnail %s not deleted: %s", key, exc.strerror or exc)
            return False
        return True

    def delete(self, names: list[str | None]) -> None:
        """Delete the files of rows whose deletion committed."""
        for name in names:
            key = None if name is None else self._key(name)
            if key is not None and self._unlink(key):
                self.deleted += 1

    def sweep(self, conn: sqlite3.Connection, older_than_unix: float) -> tuple[int, int]:
        """Delete files no row names that were last written before ``older_than_unix``; (count, bytes)."""
        candidates = {k for k, (_, mtime) in self._sizes.items() if mtime < older_than_unix}
        if not candidates:
            return 0, 0
        for (name,) in conn.execute("SELECT thumbnail FROM events WHERE thumbnail IS NOT NULL"):
            candidates.discard(self._real_path(name))
        count = swept_bytes = 0
        for key in sorted(candidates):
            size = self._sizes[key][0]
            if self._unlink(key):
                count, swept_bytes = count + 1, swept_bytes + size
        if count:
            logger.info("swept %d thumbnails of %s that no event names", count, self.folder)
        return count, swept_bytes
