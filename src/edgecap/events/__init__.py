"""The durable, searchable event log: SQLite (WAL + FTS5) written by one thread, an optional JSONL mirror, JPEG
thumbnails, and the reading side (search, export, tail) behind ``edgecap events``.

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
mirror write that fails, leaves the mirror behind the database; the next successful mirror write, or the next
``EventStore`` opened on the same files, first appends the current state of every row written after the mirror's
last line. Every committed event is in the mirror, and each row's last line is its latest state.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import numpy as np

from .._log import logger
from ..errors import EdgecapError, InputError

SCENE = "scene"
SYSTEM_KINDS = ("source_up", "source_down", "reconnecting", "source_error", "drops", "finished", "error")
KINDS = (SCENE, *SYSTEM_KINDS)
EXPORT_FORMATS = ("jsonl", "csv")

MAX_CAPTION_CHARS = 2000
MAX_NAME_CHARS = 200  # uid, kind, camera, keys of details
MAX_PATH_CHARS = 4096
MAX_DETAIL_TEXT_CHARS = 4000
MAX_DETAILS_BYTES = 64 * 1024
MAX_SEARCH_TERMS = 32


class EventStoreError(EdgecapError):
    """The event database cannot be opened or written, is of another schema version, or an event was dropped."""


# -- records ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """One event of the log: a scene (a caption that held from ``start`` to ``end``) or a system event.

    Args:
        uid: stable id chosen by the producer (e.g. ``uuid.uuid4().hex``); writing the same uid again updates the
            row, which is how a scene is extended and closed.
        kind: ``"scene"`` or a system kind (``SYSTEM_KINDS``: source_up, source_down, reconnecting, ...).
        camera: camera name.
        start: wall-clock start, timezone-aware UTC (a naive datetime is taken as UTC).
        end: wall-clock end (None for a point event).
        source_start_s: position in the file or stream, seconds.
        source_end_s: position in the file or stream, seconds.
        caption: the caption (scenes).
        confidence: mean token log-probability of the caption.
        observations: how many sampled frames said the same thing.
        thumbnail: path of a JPEG (see ``save_jpeg``).
        details: JSON-able provenance (model, precision, per-stage ms), error messages, drop counts.
        closed: False while a scene may still be extended.
        id: row id, assigned by the store.

    Example:
        >>> Event(uuid.uuid4().hex, "scene", "gate", datetime.now(timezone.utc), caption="a red car")
    """

    uid: str
    kind: str
    camera: str
    start: datetime
    end: datetime | None = None
    source_start_s: float | None = None
    source_end_s: float | None = None
    caption: str | None = None
    confidence: float | None = None
    observations: int = 1
    thumbnail: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    closed: bool = True
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; times are UTC ISO 8601 strings ending in 'Z'."""
        return {"id": self.id, "uid": self.uid, "kind": self.kind, "camera": self.camera,
                "start": _iso(self.start), "end": _iso(self.end), "source_start_s": self.source_start_s,
                "source_end_s": self.source_end_s, "caption": self.caption, "confidence": self.confidence,
                "observations": self.observations, "thumbnail": self.thumbnail, "details": self.details,
                "closed": self.closed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        """The inverse of ``to_json`` (extra keys such as the JSONL ``seq`` are ignored)."""
        return cls(uid=data["uid"], kind=data["kind"], camera=data["camera"], start=_parse_iso(data["start"]),
                   end=_parse_iso(data["end"]) if data.get("end") else None,
                   source_start_s=data.get("source_start_s"), source_end_s=data.get("source_end_s"),
                   caption=data.get("caption"), confidence=data.get("confidence"),
                   observations=data.get("observations", 1), thumbnail=data.get("thumbnail"),
                   details=data.get("details") or {}, closed=data.get("closed", True), id=data.get("id"))


JSON_FIELDS = ("id", *(f.name for f in fields(Event) if f.name != "id"))  # the keys of Event.to_json(), in order


def json_line(record: dict[str, Any]) -> str:
    """One JSONL line (with its newline). U+2028/U+2029 are escaped too: str.splitlines() would split on them."""
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    s = text.strip()
    if s[-1:] in ("Z", "z"):  # fromisoformat reads 'Z' only from Python 3.11
        s = s[:-1] + "+00:00"
    return _utc(datetime.fromisoformat(s), "time")


def _utc(t: Any, name: str) -> datetime:
    if not isinstance(t, datetime):
        raise InputError(f"event {name} must be a datetime, got {type(t).__name__}")
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """Read a time given by a user: ISO 8601 (naive means UTC) or an age such as 30s, 15m, 2h, 3d (now minus it).

    Returns:
        a timezone-aware UTC datetime.

    Raises:
        InputError: anything else.

    Example:
        >>> parse_time("2h", now=datetime(2024, 5, 1, 12, tzinfo=timezone.utc))
        datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc)
    """
    if not isinstance(text, str):
        raise InputError(f"time must be text, got {type(text).__name__}")
    age = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip(), re.IGNORECASE)
    try:
        if age:
            seconds = float(age[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[age[2].lower()]
            return _utc(now or datetime.now(timezone.utc), "now") - timedelta(seconds=seconds)
        return _parse_iso(text)
    except (ValueError, OverflowError, IndexError):
        raise InputError(f"cannot read time {text!r}: expected ISO 8601 such as 2024-05-01T14:30:00Z (no zone "
                         "means UTC) or an age such as 30s, 15m, 2h, 3d") from None


# -- cleaning --------------------------------------------------------------------------------------------------

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tab and newline stay


def _clean_text(value: Any, limit: int) -> str:
    """Any value -> valid UTF-8 text of at most ``limit`` characters (U+FFFD for undecodable bytes and lone
    surrogates, control characters removed)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A UTF-16 round trip joins valid surrogate pairs and turns lone surrogates into U+FFFD.
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    value = _CONTROL.sub("", value)
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _clean_optional(value: Any, limit: int) -> str | None:
    return None if value is None else _clean_text(value, limit)


def _clean_number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"event {name} must be a number or None, got {type(value).__name__}") from None
    return number if math.isfinite(number) else None


def _clean_count(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"event observations must be an integer, got {value!r}") from None


def _clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy: finite numbers, clean strings, bounded containers; anything else becomes its str()."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _clean_json(value.item(), depth)
    if isinstance(value, dict) and depth < 8:
        return {_clean_text(k, MAX_NAME_CHARS): _clean_json(v, depth + 1) for k, v in list(value.items())[:256]}
    if isinstance(value, (list, tuple)) and depth < 8:
        return [_clean_json(v, depth + 1) for v in value[:1024]]
    return _clean_text(value, MAX_DETAIL_TEXT_CHARS)


def _clean_details(details: Any) -> dict[str, Any]:
    if details is None:
        return {}
    if not isinstance(details, dict):
        raise InputError(f"event details must be a dict, got {type(details).__name__}")
    clean = _clean_json(details)
    size = len(json.dumps(clean, ensure_ascii=False).encode("utf-8"))
    return clean if size <= MAX_DETAILS_BYTES else {"truncated": True, "bytes": size}


def _clean_event(ev: Event) -> Event:
    """The event as it will be stored; also a deep copy, so the producer may keep mutating its ``details``."""
    if not isinstance(ev, Event):
        raise InputError(f"expected an Event, got {type(ev).__name__}")
    uid = _clean_text(ev.uid, MAX_NAME_CHARS)
    if not uid:
        raise InputError("event uid is empty: give every event a stable id such as uuid.uuid4().hex")
    return Event(uid=uid, kind=_clean_text(ev.kind, MAX_NAME_CHARS), camera=_clean_text(ev.camera, MAX_NAME_CHARS),
                 start=_utc(ev.start, "start"), end=None if ev.end is None else _utc(ev.end, "end"),
                 source_start_s=_clean_number(ev.source_start_s, "source_start_s"),
                 source_end_s=_clean_number(ev.source_end_s, "source_end_s"),
                 caption=_clean_optional(ev.caption, MAX_CAPTION_CHARS),
                 confidence=_clean_number(ev.confidence, "confidence"), observations=_clean_count(ev.observations),
                 thumbnail=_clean_optional(ev.thumbnail, MAX_PATH_CHARS), details=_clean_details(ev.details),
                 closed=bool(ev.closed))


class _Throttled:
    """Log the first message at once, then at most one per ``interval_s`` with a count of those suppressed (a full
    disk must not flood the log it may be writing to)."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s = interval_s
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg, args = msg + " (%d similar messages suppressed)", (*args, self._suppressed)
        logger.log(level, msg, *args)
        self._suppressed, self._next = 0, now + self.interval_s


# -- schema ----------------------------------------------------------------------------------------------------

def _execute_all(conn: sqlite3.Connection, statements: Iterable[str]) -> None:
    for sql in statements:  # not executescript: it commits first, and a migration is one transaction
        conn.execute(sql)


def _create_v1(conn: sqlite3.Connection) -> None:
    """v0 -> v1: events with times, captions and counts; AUTOINCREMENT so ids are never reused after deletions."""
    _execute_all(conn, (
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
    _execute_all(conn, (
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


# MIGRATIONS[v] takes a database from schema v to v + 1; a new database runs them all. Append, never edit.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_create_v1, _add_thumbnails_details_search]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = ("uid", "kind", "camera", "start_unix", "end_unix", "source_start_s", "source_end_s", "caption",
            "confidence", "observations", "thumbnail", "details", "closed")
_SELECT = f"SELECT id, {', '.join(_COLUMNS)} FROM events"
_SELECT_WITH_UPDATED = f"SELECT id, {', '.join(_COLUMNS)}, updated FROM events"  # the JSONL mirror's catch-up
_UPSERT = (f"INSERT INTO events ({', '.join(_COLUMNS)}, updated) "
           f"VALUES ({', '.join('?' * len(_COLUMNS))}, (SELECT COALESCE(MAX(updated), 0) + 1 FROM events)) "
           f"ON CONFLICT (uid) DO UPDATE SET "
           f"{', '.join(f'{c} = excluded.{c}' for c in (*_COLUMNS[1:], 'updated'))} RETURNING id, updated")


def _row(ev: Event) -> tuple:
    return (ev.uid, ev.kind, ev.camera, ev.start.timestamp(), None if ev.end is None else ev.end.timestamp(),
            ev.source_start_s, ev.source_end_s, ev.caption, ev.confidence, ev.observations, ev.thumbnail,
            json.dumps(ev.details, ensure_ascii=False, allow_nan=False), int(ev.closed))


def _event(row: tuple) -> Event:
    (id_, uid, kind, camera, start, end, source_start_s, source_end_s, caption, confidence, observations,
     thumbnail, details, closed) = row
    return Event(uid=uid, kind=kind, camera=camera, start=datetime.fromtimestamp(start, timezone.utc),
                 end=None if end is None else datetime.fromtimestamp(end, timezone.utc),
                 source_start_s=source_start_s, source_end_s=source_end_s, caption=caption, confidence=confidence,
                 observations=observations, thumbnail=thumbnail, details=json.loads(details or "{}"),
                 closed=bool(closed), id=id_)


def _read_version(conn: sqlite3.Connection, path: Path) -> int:
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


def _newer_schema(path: Path, version: int) -> EventStoreError:
    return EventStoreError(f"event database {path} has schema v{version}, newer than this edgecap understands "
                           f"(v{SCHEMA_VERSION}); upgrade edgecap or choose another --db path")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")  # the version is re-read under the write lock: two openers migrate once
    version = 0
    try:
        version = _read_version(conn, path)
        if version > SCHEMA_VERSION:
            raise _newer_schema(path, version)
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


def _check_writable_location(path: Path, what: str) -> None:
    parent = path.absolute().parent
    if not parent.exists():
        raise EventStoreError(f"cannot create {what} {path}: directory {parent} does not exist; create it or "
                              "choose another path")
    if not parent.is_dir():
        raise EventStoreError(f"cannot create {what} {path}: {parent} is not a directory; choose another path")
    if path.is_dir():
        raise EventStoreError(f"{what} {path} is a directory; give a file path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EventStoreError(f"cannot write {what} {path}: directory {parent} is read-only; make it writable or "
                              "choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise EventStoreError(f"cannot write {what} {path}: the file is read-only; make it writable or choose "
                              "another path")


def _connect(path: Path, *, read_only: bool) -> tuple[sqlite3.Connection, int]:
    """A connection and the schema version of the database; a schema newer than this code is refused."""
    target = f"{path.absolute().as_uri()}?mode=ro" if read_only else path
    try:
        conn = sqlite3.connect(target, uri=read_only, timeout=5.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise EventStoreError(f"cannot open event database {path}: {exc}; check the path and permissions") from None
    try:
        version = _read_version(conn, path)
        if version > SCHEMA_VERSION:
            raise _newer_schema(path, version)
    except BaseException:
        conn.close()
        raise
    return conn, version


def _open_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    _check_writable_location(path, "event database")
    conn, _ = _connect(path, read_only=False)
    try:
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            logger.warning("event database %s is not in WAL mode (file system without shared memory?); "
                           "writes will block readers", path)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate the WAL after checkpoints: months of uptime
        _migrate(conn, path)
    except EventStoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise EventStoreError(f"cannot open event database {path}: {exc}; check free space and permissions, or "
                              "choose another path") from None
    return conn


# -- JSONL mirror ----------------------------------------------------------------------------------------------

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


class _JsonlSink:
    """Appends one JSON object per committed write, with a ``seq`` that continues across restarts and the
    database's ``updated`` counter of that write (``synced``: the last one mirrored)."""

    def __init__(self, path: Path, *, fsync: bool):
        _check_writable_location(path, "JSONL file")
        self.path = path
        self.fsync = fsync
        try:
            self.seq, self.synced = _recover_jsonl(path)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as exc:
            raise EventStoreError(f"cannot open JSONL file {path}: {exc.strerror or exc}") from None

    def write(self, events: list[tuple[Event, int]]) -> None:
        """Append (event, updated) pairs, in ``updated`` order."""
        lines = [json_line({**ev.to_json(), "seq": self.seq + i, "updated": updated})
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
        if events:
            self.synced = events[-1][1]

    def close(self) -> None:
        os.close(self._fd)


# -- the store -------------------------------------------------------------------------------------------------

class Ack:
    """The outcome of one ``EventStore.put``."""

    __slots__ = ("_done", "_id", "_error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._id: int | None = None
        self._error: str | None = None

    def done(self) -> bool:
        """True once the event was committed or dropped."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the event is committed and return its row id.

        Raises:
            TimeoutError: not committed within ``timeout`` seconds (it may still be later).
            EventStoreError: the event was dropped (memory bound reached while the disk failed, or closed).
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"event not committed within {timeout} s")
        if self._error is not None:
            raise EventStoreError(self._error)
        assert self._id is not None
        return self._id

    def _resolve(self, row_id: int) -> None:
        self._id = row_id
        self._done.set()

    def _fail(self, message: str) -> None:
        self._error = message
        self._done.set()

    resolve = _resolve  # TEMP shim until the events slice lands


@dataclass
class _Write:
    event: Event
    acks: list[Ack]


from typing import Protocol


class EventSink(Protocol):  # TEMP shim until the events slice lands
    def put(self, event: Event) -> Ack: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def close(self, timeout: float | None = None) -> None: ...


class EventStore:
    """The writer of the event log: SQLite in WAL mode, one writer thread, batched commits.

    Args:
        path: database file (created with its schema; an older schema is migrated in one transaction).
        jsonl: also append every committed write to this JSONL file (``Event.to_json()`` plus ``seq``).
        synchronous: "NORMAL" (default: acknowledged events survive a process crash or kill -9) or "FULL"
            (they also survive power loss, at one fsync per batch).
        fsync_jsonl: fsync the JSONL file after every batch.
        max_batch: most events per transaction.
        max_pending: most distinct events kept in memory while writes fail; the oldest beyond it are dropped.
        retry_max_s: cap of the backoff between retries of a failed write.

    Raises:
        EventStoreError: the directory is missing or read-only, the file is not an event database, or its schema is
            newer than this code.

    Example:
        >>> with EventStore("events.sqlite", jsonl="events.jsonl") as store:
        ...     row_id = store.put(Event(uuid.uuid4().hex, "scene", "gate", now, caption="a car")).wait(5)
    """

    def __init__(self, path: str | os.PathLike, *, jsonl: str | os.PathLike | None = None,
                 synchronous: str = "NORMAL", fsync_jsonl: bool = False, max_batch: int = 256,
                 max_pending: int = 10_000, retry_max_s: float = 5.0):
        if synchronous not in ("NORMAL", "FULL"):
            raise InputError(f"synchronous must be one of: NORMAL, FULL; got {synchronous!r}")
        if max_batch < 1 or max_pending < 1:
            raise InputError(f"max_batch and max_pending must be >= 1, got {max_batch} and {max_pending}")
        self.path = Path(path)
        self.jsonl_path = None if jsonl is None else Path(jsonl)
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._retry_max_s = retry_max_s
        self._conn = _open_writer(self.path, synchronous)
        try:
            self._jsonl = None if self.jsonl_path is None else _JsonlSink(self.jsonl_path, fsync=fsync_jsonl)
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
        self._log_write = _Throttled()
        self._log_drop = _Throttled()
        self._log_jsonl = _Throttled()
        self._thread = threading.Thread(target=self._run, name=f"edgecap-events:{self.path.name}", daemon=True)
        self._thread.start()

    # -- producer side ---------------------------------------------------------------------------------------
    def put(self, event: Event) -> Ack:
        """Enqueue an insert (new uid) or update (known uid) and return at once; never blocks on the disk.

        Text fields are cleaned first (see the module docstring). A newer write of a uid that is still queued
        replaces the queued state; both acks complete when it commits.

        Raises:
            InputError: not an Event, an empty uid, times that are not datetimes, numbers that are not numbers.
            EventStoreError: the store is closed.
        """
        clean = _clean_event(event)
        ack = Ack()
        with self._cond:
            if self._closing:
                raise EventStoreError(f"event store {self.path} is closed; open a new EventStore to write")
            self._unresolved += 1
            queued = self._pending.get(clean.uid)
            if queued is None:
                self._pending[clean.uid] = _Write(clean, [ack])
            else:
                queued.event = clean
                queued.acks.append(ack)
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
            if not ack._done.wait(None if remaining == math.inf else max(0.0, remaining)):
                return False
        return all(a._error is None for a in acks)

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
            ids = [tuple(conn.execute(_UPSERT, _row(w.event)).fetchone()) for w in batch]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return ids

    def _committed(self, batch: list[_Write], written: list[tuple[int, int]]) -> None:
        if self._jsonl is not None:
            try:
                if self._jsonl.synced == written[0][1] - 1:
                    self._jsonl.write([(replace(w.event, id=i), u) for w, (i, u) in zip(batch, written)])
                else:  # an earlier mirror write failed: bring the mirror up to date, this batch included
                    self._mirror_catch_up()
            except (OSError, ValueError, sqlite3.Error) as exc:
                with self._cond:
                    self._counts["jsonl_failed"] += len(batch)
                self._log_jsonl(logging.WARNING, "JSONL mirror %s: write failed (%s); the events are in the "
                                "database and are mirrored at the next successful write", self._jsonl.path,
                                getattr(exc, "strerror", None) or exc)
        with self._cond:
            self._in_flight = []
            n = sum(len(w.acks) for w in batch)
            self._counts["committed"] += n
            self._unresolved -= n
        for w, (row_id, _) in zip(batch, written):
            for ack in w.acks:
                ack._resolve(row_id)

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
        behind = self._conn.execute(f"{_SELECT_WITH_UPDATED} WHERE updated > ? ORDER BY updated",
                                    (self._jsonl.synced,))
        caught = 0
        while rows := behind.fetchmany(chunk):
            self._jsonl.write([(_event(row[:-1]), row[-1]) for row in rows])
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
            ack._fail(message)


# -- thumbnails ------------------------------------------------------------------------------------------------

def thumbnail_dir(db_path: str | os.PathLike) -> Path:
    """The folder for thumbnails of a database: ``thumbnails/`` next to it."""
    return Path(db_path).absolute().parent / "thumbnails"


def save_jpeg(path: str | os.PathLike, image: np.ndarray, *, max_side: int = 320, quality: int = 5) -> Path:
    """Write an RGB image as a JPEG, downscaled so its longer side is at most ``max_side``, atomically.

    Args:
        path: destination (parent folders are created).
        image: HxWx3 uint8 RGB.
        max_side: longest side in pixels after downscaling (never upscales).
        quality: FFmpeg's JPEG quantiser (``-q:v``): 2 (best) to 31 (smallest).

    Returns:
        the path written.

    Raises:
        InputError: not an HxWx3 uint8 image, or options out of range.
        EventStoreError: the file cannot be written (disk full, permissions).
    """
    import av

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or 0 in arr.shape:
        raise InputError(f"thumbnail image must be HxWx3 uint8 RGB, got shape {arr.shape} dtype {arr.dtype}")
    if not 2 <= quality <= 31 or max_side < 1:
        raise InputError(f"expected 2 <= quality <= 31 and max_side >= 1, got quality={quality} "
                         f"max_side={max_side}")
    h, w = arr.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
    frame = frame.reformat(width=tw, height=th, format="yuvj420p", interpolation="AREA")
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = tw, th, "yuvj420p", Fraction(1, 1)
    ctx.qmin = ctx.qmax = quality
    data = b"".join(bytes(p) for p in (*ctx.encode(frame), *ctx.encode(None)))
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise EventStoreError(f"cannot write thumbnail {out}: {exc.strerror or exc}; check free space and "
                              "permissions") from None
    return out


# -- reading side ----------------------------------------------------------------------------------------------

def _open_reader(db_path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection (works while the writer runs: WAL readers see committed data, never block it)."""
    path = Path(db_path)
    if not path.is_file():
        raise EventStoreError(f"event database not found: {path}")
    conn, version = _connect(path, read_only=True)
    if version == SCHEMA_VERSION:
        return conn
    conn.close()
    if version == 0:
        raise EventStoreError(f"{path} is an empty database, not an event log; point --db at the database the "
                              "runtime writes")
    raise EventStoreError(f"event database {path} has schema v{version}, this edgecap reads v{SCHEMA_VERSION}: "
                          f"run `edgecap events migrate --db {path}` first")


def migrate(db_path: str | os.PathLike) -> int:
    """Bring an existing event database to the current schema (one transaction); returns the schema version."""
    if not Path(db_path).is_file():
        raise EventStoreError(f"event database not found: {db_path}")
    EventStore(db_path).close()
    return SCHEMA_VERSION


def fts_query(text: str) -> str | None:
    """User text -> a safe FTS5 query: each whitespace-separated term quoted (quotes doubled), terms ANDed.

    FTS5 and SQL syntax (``"``, ``*``, ``(``, ``NEAR``, ``-``, ``'; DROP TABLE``) thus only ever means words.
    Terms without a letter or digit are left out (they would match nothing). None when no term is left.
    """
    terms = [t for t in _clean_text(text, MAX_CAPTION_CHARS).split() if re.search(r"[^\W_]", t)]
    if not terms:
        return None
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in terms[:MAX_SEARCH_TERMS])


def _as_time(value: datetime | str) -> datetime:
    return parse_time(value) if isinstance(value, str) else _utc(value, "time filter")


def search(db_path: str | os.PathLike, text: str | None = None, *, camera: str | None = None,
           since: datetime | str | None = None, until: datetime | str | None = None,
           kinds: str | Iterable[str] | None = None, limit: int = 50) -> list[Event]:
    """Find events, newest first.

    Args:
        db_path: the event database (read-only access; works while the runtime writes).
        text: words that must all occur in the caption (stemmed: "cars" finds "car"); any text is safe.
        camera: only this camera.
        since: only events that end at or after this time (datetime, ISO text or an age such as "2h").
        until: only events that start at or before this time. With ``since``: events overlapping the range.
        kinds: only these kinds (a string or several).
        limit: most events returned.

    Raises:
        EventStoreError: the database is missing, not an event log, or of another schema version.
        InputError: a bad time or limit.

    Example:
        >>> search("events.sqlite", "red car", camera="gate", since="1d")
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    where: list[str] = []
    params: list[Any] = []
    if text is not None and text.strip():
        query = fts_query(text)
        if query is None:
            return []
        where.append("id IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
        params.append(query)
    if camera is not None:
        where.append("camera = ?")
        params.append(_clean_text(camera, MAX_NAME_CHARS))
    if kinds is not None:
        wanted = [_clean_text(k, MAX_NAME_CHARS) for k in ([kinds] if isinstance(kinds, str) else kinds)]
        where.append(f"kind IN ({', '.join('?' * len(wanted))})")
        params += wanted
    if since is not None:
        where.append("COALESCE(end_unix, start_unix) >= ?")
        params.append(_as_time(since).timestamp())
    if until is not None:
        where.append("start_unix <= ?")
        params.append(_as_time(until).timestamp())
    sql = f"{_SELECT}{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY start_unix DESC, id DESC LIMIT ?"
    with contextlib.closing(_open_reader(db_path)) as conn:
        return [_event(row) for row in conn.execute(sql, (*params, limit))]


# A CSV cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        # Captions, camera names and error texts come from models, config and remote servers: a reviewer opening
        # the export in a spreadsheet must see them as text, never run them. The leading ' is what spreadsheets
        # take as "this is text"; JSONL keeps the value unchanged.
        return "'" + value
    return value


def export(db_path: str | os.PathLike, fmt: str, out: TextIO) -> int:
    """Write every event, oldest first, to a text stream as JSON lines or CSV (with a header; details as JSON).

    In CSV, a text cell that a spreadsheet would run as a formula (starting with = + - @, a tab or a carriage
    return) is written with a leading ' so it opens as text; JSON lines are exact.

    Returns:
        the number of events written.
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}, expected one of: {', '.join(EXPORT_FORMATS)}")
    count = 0
    with contextlib.closing(_open_reader(db_path)) as conn:
        writer = csv.DictWriter(out, fieldnames=JSON_FIELDS) if fmt == "csv" else None
        if writer is not None:
            writer.writeheader()
        for row in conn.execute(f"{_SELECT} ORDER BY start_unix, id"):
            record = _event(row).to_json()
            if writer is None:
                out.write(json_line(record))
            else:
                writer.writerow({k: _csv_value(v) for k, v in record.items()})
            count += 1
    return count


def tail(db_path: str | os.PathLike, *, follow: bool = True, poll_s: float = 0.5, since_id: int | None = None,
         last: int = 10) -> Iterator[Event]:
    """Yield events as they are committed, in commit order: new rows, and rows again whenever they are updated.

    Starts with the ``last`` most recently written events, or, with ``since_id``, with every event whose id is
    greater; then, with ``follow``, polls every ``poll_s`` seconds and yields each write since. The database is
    opened and the position taken now: every write committed after this call returns is yielded. A row written
    several times between two polls is yielded once, in its newest state. Rows are read lazily as the iterator
    advances; stop by closing it (``break``).
    """
    if poll_s <= 0 or last < 0:
        raise InputError(f"expected poll_s > 0 and last >= 0, got poll_s={poll_s} last={last}")
    conn = _open_reader(db_path)
    try:
        mark = conn.execute("SELECT COALESCE(MAX(updated), 0) FROM events").fetchone()[0]
    except BaseException:
        conn.close()
        raise
    return _tail(conn, mark, follow, poll_s, since_id, last)


def _tail(conn: sqlite3.Connection, mark: int, follow: bool, poll_s: float, since_id: int | None,
          last: int) -> Iterator[Event]:
    select = _SELECT.replace(" FROM events", ", updated FROM events")
    try:
        # the backlog is the state at ``mark``; a row written again since comes later, with its new state
        if since_id is None:
            rows = conn.execute(f"SELECT * FROM ({select} WHERE updated <= ? ORDER BY updated DESC LIMIT ?) "
                                "ORDER BY updated", (mark, last))
        else:
            rows = conn.execute(f"{select} WHERE id > ? AND updated <= ? ORDER BY updated", (since_id, mark))
        for row in rows.fetchall():
            yield _event(row[:-1])
        while follow:
            time.sleep(poll_s)
            rows = conn.execute(f"{select} WHERE updated > ? ORDER BY updated", (mark,)).fetchall()
            for row in rows:
                mark = row[-1]
                yield _event(row[:-1])
    finally:
        conn.close()
