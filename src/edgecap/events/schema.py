"""The database side of the event log: the schema and its migrations, row <-> Event, and opening a database for
writing (creating or migrating its schema in one transaction) or for reading.

A new database gets its whole schema, version stamp included, in one transaction: a reader that opens the file
while it is being created sees either no schema at all (``open_reader`` returns None: "no events yet") or the
complete log, never a half-made one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .._log import logger
from ._writing import check_writable_location
from .model import Event, EventStoreError

# -- migrations ---------------------------------------------------------------------------------------------

def execute_all(conn: sqlite3.Connection, statements: Iterable[str]) -> None:
    """Run statements inside the caller's transaction."""
    for sql in statements:  # not executescript: it commits first, and a migration is one transaction
        conn.execute(sql)


def _create_v1(conn: sqlite3.Connection) -> None:
    """v0 -> v1: events with times, captions and counts; AUTOINCREMENT so ids are never reused after deletions."""
    execute_all(conn, (
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        """CREATE TABLE events (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               uid TEXT NOT NULL UNIQUE,
               kind TEXT NOT NULL,
               camera TEXT NOT NULL,
               start_unix REAL NOT NULL,
               end_unix REAL,
               source_start_s REAL,
               source_end_s REAL,
               caption TEXT,
               confidence REAL,
               observations INTEGER NOT NULL DEFAULT 1,
               closed INTEGER NOT NULL DEFAULT 1)""",
        "CREATE INDEX events_camera_start ON events (camera, start_unix)",
        "CREATE INDEX events_start ON events (start_unix)",
    ))


def _add_thumbnails_details_search(conn: sqlite3.Connection) -> None:
    """v1 -> v2: thumbnail, details (JSON), the ``updated`` change sequence (tail) and full-text search."""
    execute_all(conn, (
        "ALTER TABLE events ADD COLUMN thumbnail TEXT",
        "ALTER TABLE events ADD COLUMN details TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE events ADD COLUMN updated INTEGER NOT NULL DEFAULT 0",
        "UPDATE events SET updated = id",
        "CREATE INDEX events_updated ON events (updated)",
        """CREATE VIRTUAL TABLE events_fts USING fts5 (
               caption, content='events', content_rowid='id', tokenize='porter unicode61')""",
        """CREATE TRIGGER events_fts_insert AFTER INSERT ON events BEGIN
               INSERT INTO events_fts (rowid, caption) VALUES (new.id, new.caption);
           END""",
        """CREATE TRIGGER events_fts_delete AFTER DELETE ON events BEGIN
               INSERT INTO events_fts (events_fts, rowid, caption) VALUES ('delete', old.id, old.caption);
           END""",
        """CREATE TRIGGER events_fts_update AFTER UPDATE OF caption ON events BEGIN
               INSERT INTO events_fts (events_fts, rowid, caption) VALUES ('delete', old.id, old.caption);
               INSERT INTO events_fts (rowid, caption) VALUES (new.id, new.caption);
           END""",
        "INSERT INTO events_fts (events_fts) VALUES ('rebuild')",
    ))


def _add_outbox(conn: sqlite3.Connection) -> None:
    """v2 -> v3: the outbox of messages to deliver (MQTT, webhooks), written in the transaction of their event and
    deleted once delivered; AUTOINCREMENT so delivery order (by id) survives deletions."""
    execute_all(conn, (
        """CREATE TABLE outbox (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               dest TEXT NOT NULL,
               topic TEXT NOT NULL,
               payload TEXT NOT NULL,
               retain INTEGER NOT NULL DEFAULT 0,
               created_unix REAL NOT NULL)""",
        "CREATE INDEX outbox_dest_id ON outbox (dest, id)",
    ))


def _add_embeddings(conn: sqlite3.Connection) -> None:
    """v3 -> v4: each scene's pooled image embedding (unit length, float16), for "find similar". A trigger deletes
    it with its event, in the deleting transaction (foreign keys are off by default in SQLite, so no CASCADE)."""
    execute_all(conn, (
        """CREATE TABLE event_embeddings (
               event_id INTEGER PRIMARY KEY,
               vec BLOB NOT NULL)""",
        """CREATE TRIGGER events_embedding_delete AFTER DELETE ON events BEGIN
               DELETE FROM event_embeddings WHERE event_id = old.id;
           END""",
    ))


# MIGRATIONS[v] takes a database from schema v to v + 1; a new database runs them all. Append, never edit.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_create_v1, _add_thumbnails_details_search, _add_outbox,
                                                          _add_embeddings]
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = ("uid", "kind", "camera", "start_unix", "end_unix", "source_start_s", "source_end_s", "caption",
           "confidence", "observations", "thumbnail", "details", "closed")
SELECT = f"SELECT id, {', '.join(COLUMNS)} FROM events"
SELECT_WITH_UPDATED = f"SELECT id, {', '.join(COLUMNS)}, updated FROM events"  # the JSONL catch-up, tail
UPSERT = (f"INSERT INTO events ({', '.join(COLUMNS)}, updated) "
          f"VALUES ({', '.join('?' * len(COLUMNS))}, (SELECT COALESCE(MAX(updated), 0) + 1 FROM events)) "
          f"ON CONFLICT (uid) DO UPDATE SET "
          f"{', '.join(f'{c} = excluded.{c}' for c in (*COLUMNS[1:], 'updated'))} RETURNING id, updated")

INSERT_EMBEDDING = "INSERT OR REPLACE INTO event_embeddings (event_id, vec) VALUES (?, ?)"
INSERT_OUTBOX = "INSERT INTO outbox (dest, topic, payload, retain, created_unix) VALUES (?, ?, ?, ?, ?)"


def event_row(ev: Event) -> tuple:
    """The values of ``UPSERT`` for a cleaned event."""
    return (ev.uid, ev.kind, ev.camera, ev.start.timestamp(), None if ev.end is None else ev.end.timestamp(),
            ev.source_start_s, ev.source_end_s, ev.caption, ev.confidence, ev.observations, ev.thumbnail,
            json.dumps(ev.details, ensure_ascii=False, allow_nan=False), int(ev.closed))


def row_event(row: tuple) -> Event:
    """An Event from a row of ``SELECT``."""
    (id_, uid, kind, camera, start, end, source_start_s, source_end_s, caption, confidence, observations,
     thumbnail, details, closed) = row
    return Event(uid=uid, kind=kind, camera=camera, start=datetime.fromtimestamp(start, timezone.utc),
                 end=None if end is None else datetime.fromtimestamp(end, timezone.utc),
                 source_start_s=source_start_s, source_end_s=source_end_s, caption=caption, confidence=confidence,
                 observations=observations, thumbnail=thumbnail, details=json.loads(details or "{}"),
                 closed=bool(closed), id=id_)


def read_version(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version (0 for an empty database)."""
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if tables:
                raise EventStoreError(f"{path} is an SQLite database but not an edgecap event log (no "
                                      "schema_version table); choose another --db path")
            return 0
        return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
    except sqlite3.DatabaseError as exc:
        raise EventStoreError(f"{path} is not a readable SQLite database ({exc}); move it away or choose another "
                              "--db path") from None


def newer_schema(path: Path, version: int) -> EventStoreError:
    """The error for a database written by a newer edgecap."""
    return EventStoreError(f"event database {path} has schema v{version}, newer than this edgecap understands "
                           f"(v{SCHEMA_VERSION}); upgrade edgecap or choose another --db path")


def migrate_connection(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database of ``conn`` to ``SCHEMA_VERSION`` in one transaction (a new one gets the whole schema)."""
    conn.execute("BEGIN IMMEDIATE")  # the version is re-read under the write lock: two openers migrate once
    version = 0
    try:
        version = read_version(conn, path)
        if version > SCHEMA_VERSION:
            raise newer_schema(path, version)
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](conn)
        if version < SCHEMA_VERSION:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise EventStoreError(f"migrating event database {path} from schema v{version} to v{SCHEMA_VERSION} "
                                  f"failed ({exc}); the database is unchanged: check free space and permissions"
                                  ) from None
        raise
    if 0 < version < SCHEMA_VERSION:
        logger.info("migrated event database %s from schema v%d to v%d", path, version, SCHEMA_VERSION)


def connect(path: Path, *, read_only: bool) -> tuple[sqlite3.Connection, int]:
    """A connection and the schema version of the database; a schema newer than this code is refused."""
    target = f"{path.absolute().as_uri()}?mode=ro" if read_only else path
    try:
        conn = sqlite3.connect(target, uri=read_only, timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise EventStoreError(f"cannot open event database {path}: {exc}; check the path and permissions") from None
    try:
        version = read_version(conn, path)
        if version > SCHEMA_VERSION:
            raise newer_schema(path, version)
    except BaseException:
        conn.close()
        raise
    return conn, version


def open_writer(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A write connection in WAL mode on a database with the current schema (created or migrated now)."""
    check_writable_location(path, "event database")
    conn, _ = connect(path, read_only=False)
    try:
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            logger.warning("event database %s is not in WAL mode (file system without shared memory?); "
                           "writes will block readers", path)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate the WAL after checkpoints: months of uptime
        migrate_connection(conn, path)
    except EventStoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise EventStoreError(f"cannot open event database {path}: {exc}; check free space and permissions, or "
                              "choose another path") from None
    return conn


def open_reader(db_path: str | os.PathLike) -> sqlite3.Connection | None:
    """A read-only connection (works while the writer runs: WAL readers see committed data, never block it), or
    None while the database has no schema yet (an empty file, or one the runtime is creating right now).

    Raises:
        EventStoreError: the file is missing, not SQLite, another application's database, or of another schema.
    """
    path = Path(db_path)
    if not path.is_file():
        raise EventStoreError(f"event database not found: {path}")
    conn, version = connect(path, read_only=True)
    if version == SCHEMA_VERSION:
        return conn
    conn.close()
    if version == 0:
        return None
    raise EventStoreError(f"event database {path} has schema v{version}, this edgecap reads v{SCHEMA_VERSION}: "
                          f"run `edgecap events migrate --db {path}` first")


def migrate(db_path: str | os.PathLike) -> int:
    """Bring an existing event database to the current schema in one transaction.

    Returns:
        the schema version now: ``SCHEMA_VERSION``, or 0 for a database without a schema yet (left untouched: the
        runtime creates it when it opens the database).

    Raises:
        EventStoreError: missing, not writable, not an event log, or newer than this edgecap.
    """
    path = Path(db_path)
    if not path.is_file():
        raise EventStoreError(f"event database not found: {db_path}")
    check_writable_location(path, "event database")
    conn, version = connect(path, read_only=False)
    with contextlib.closing(conn):
        if version == 0:
            return 0
        migrate_connection(conn, path)
    return SCHEMA_VERSION
