"""The reading side of the event log: full-text search, export, and tail (follow writes as they commit).

Readers open the database read-only and never block the writer. A database that has no schema yet (an empty
file, or one ``edgecap run`` is creating at this moment) holds no events: search and export return nothing, and
``tail`` waits for the schema to appear.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator, TextIO

from ..errors import InputError
from ..sources.records import StatusKind
from .model import (JSON_FIELDS, MAX_CAPTION_CHARS, MAX_NAME_CHARS, MAX_SEARCH_TERMS, Event, as_utc, clean_text,
                    json_line, parse_time)
from .schema import SELECT, SELECT_WITH_UPDATED, open_reader, row_event

EXPORT_FORMATS = ("jsonl", "csv")


def fts_query(text: str) -> str | None:
    """User text -> a safe FTS5 query: each whitespace-separated term quoted (quotes doubled), terms ANDed.

    FTS5 and SQL syntax (``"``, ``*``, ``(``, ``NEAR``, ``-``, ``'; DROP TABLE``) thus only ever means words.
    Terms without a letter or digit are left out (they would match nothing). None when no term is left.
    """
    terms = [t for t in clean_text(text, MAX_CAPTION_CHARS).split() if re.search(r"[^\W_]", t)]
    if not terms:
        return None
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in terms[:MAX_SEARCH_TERMS])


def _as_time(value: datetime | str) -> datetime:
    return parse_time(value) if isinstance(value, str) else as_utc(value, "time filter")


def _filters(text: str | None, cameras: str | Iterable[str] | None, kinds: str | Iterable[str] | None,
             since: datetime | str | None, until: datetime | str | None) -> tuple[list[str], list[Any], str | None]:
    """The WHERE terms and parameters of a search besides the text, and the FTS query of the text ("" for none;
    None when the text holds no searchable word, so nothing matches)."""
    where: list[str] = []
    params: list[Any] = []
    query: str | None = ""
    if text is not None and text.strip():
        query = fts_query(text)
    for column, values in (("camera", cameras), ("kind", kinds)):
        if values is not None:
            wanted = [clean_text(v, MAX_NAME_CHARS) for v in ([values] if isinstance(values, str) else values)]
            where.append(f"{column} IN ({', '.join('?' * len(wanted))})")
            params += wanted
    if since is not None:
        where.append("COALESCE(end_unix, start_unix) >= ?")
        params.append(_as_time(since).timestamp())
    if until is not None:
        where.append("start_unix <= ?")
        params.append(_as_time(until).timestamp())
    return where, params, query


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"limit must be a positive integer, got {limit!r}")


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
    return search_page(db_path, text, cameras=camera, since=since, until=until, kinds=kinds, limit=limit)[0]


def search_page(db_path: str | os.PathLike, text: str | None = None, *, cameras: str | Iterable[str] | None = None,
                since: datetime | str | None = None, until: datetime | str | None = None,
                kinds: str | Iterable[str] | None = None, limit: int = 50,
                cursor: str | None = None) -> tuple[list[Event], str | None]:
    """One page of ``search`` (newest first) and the cursor of the next page, by keyset: a page costs the same
    however deep it is, and events written meanwhile neither repeat nor shift later pages.

    Args:
        db_path, text, since, until, kinds, limit: as for ``search``.
        cameras: only these cameras (a name or several).
        cursor: the ``next_cursor`` of the previous page; None for the first page.

    Returns:
        (events, next_cursor); next_cursor is None on the last page.

    Raises:
        EventStoreError: the database is missing, not an event log, or of another schema version.
        InputError: a bad time, limit or cursor.
    """
    _check_limit(limit)
    where, params, query = _filters(text, cameras, kinds, since, until)
    if query is None:
        return [], None
    bound: tuple[float, int] | None = None
    if cursor is not None:
        bound = _read_cursor(cursor)
        where.append("(start_unix < ? OR (start_unix = ? AND id < ?))")
        params += [bound[0], bound[0], bound[1]]
    conn = open_reader(db_path)
    if conn is None:
        return [], None  # no schema yet: no events yet
    with contextlib.closing(conn):
        if query:
            rows = _text_page(conn, where, params, query, limit + 1, bound)
        else:
            rows = conn.execute(_page_sql(where), (*params, limit + 1)).fetchall()
    events = [row_event(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return events, None
    last = rows[limit - 1]  # the stored start, not the Event's: a datetime keeps microseconds, the float more
    return events, f"{last[4]!r}_{last[0]}"


def _page_sql(where: list[str]) -> str:
    return f"{SELECT}{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY start_unix DESC, id DESC LIMIT ?"


_FIRST_WINDOW = 4096  # ids; a full-text page first looks among the newest this many rows, then 4x as many, ...


def _text_page(conn: sqlite3.Connection, where: list[str], params: list[Any], query: str, want: int,
               bound: tuple[float, int] | None) -> list[tuple]:
    """The first ``want`` rows, by start, among those matching the other filters and the full-text query.

    Matching the whole log first costs in proportion to all matches of the words (1.3 s for a common colour
    among 1,000,000 events). Ids grow with writing, and starts mostly with ids, so the newest matches are found
    among the newest ids: look in a window of ids below the newest (or below the cursor), restrict the full-text
    match to it (FTS5 seeks to a rowid range), and widen the window 4x at a time. The answer is exact: a window
    is taken only when it holds ``want`` rows and no row outside it starts late enough to come before the last of
    them; otherwise, at the latest once the window covers every id, the whole log is searched.
    """
    top = bound[1] if bound is not None else conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
    window = max(_FIRST_WINDOW, 4 * want)
    while top - window > 0:
        low = top - window
        rows = conn.execute(_page_sql([*where, "id > ?", "id IN (SELECT rowid FROM events_fts WHERE events_fts "
                                                        "MATCH ? AND rowid > ?)"]),
                            (*params, low, query, low, want)).fetchall()
        if len(rows) == want:
            # could a row at or below ``low`` sort before the last row found? (within the cursor's bound)
            last_start = rows[-1][4]
            sql = "SELECT 1 FROM events WHERE start_unix >= ? AND id <= ?"
            args: tuple = (last_start, low)
            if bound is not None:
                sql += " AND start_unix <= ?"
                args += (bound[0],)
            if conn.execute(sql + " LIMIT 1", args).fetchone() is None:
                return rows
        window *= 4
    return conn.execute(_page_sql([*where, "id IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)"]),
                        (*params, query, want)).fetchall()


def _read_cursor(cursor: str) -> tuple[float, int]:
    start, _, id_ = cursor.partition("_")
    try:
        value = float(start), int(id_)
    except ValueError:
        value = (math.nan, 0)
    if not math.isfinite(value[0]) or not -2**63 <= value[1] < 2**63:
        raise InputError(f"bad cursor {cursor[:40]!r}: pass the next_cursor of the previous page unchanged")
    return value


def get_event(db_path: str | os.PathLike, event_id: int) -> Event | None:
    """The event with this row id, or None (no such event, or no schema yet)."""
    conn = open_reader(db_path)
    if conn is None:
        return None
    with contextlib.closing(conn):
        row = conn.execute(f"{SELECT} WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else row_event(row)


def changes(db_path: str | os.PathLike, after: int | None, *, limit: int = 500) -> tuple[list[Event], int]:
    """The events written (inserted or updated) since the change mark ``after``, oldest write first, and the new
    mark. ``after=None`` takes the current mark and returns no events: follow from now on.

    A row written several times since ``after`` comes once, in its newest state. With more than ``limit`` writes
    pending, the oldest ``limit`` come now and the rest on the next call.
    """
    _check_limit(limit)
    conn = open_reader(db_path)
    if conn is None:
        return [], 0  # no schema yet: every write once it exists is new
    with contextlib.closing(conn):
        if after is None:
            return [], conn.execute("SELECT COALESCE(MAX(updated), 0) FROM events").fetchone()[0]
        rows = conn.execute(f"{SELECT_WITH_UPDATED} WHERE updated > ? ORDER BY updated LIMIT ?",
                            (after, limit)).fetchall()
    return [row_event(row[:-1]) for row in rows], rows[-1][-1] if rows else after


@dataclass(frozen=True)
class CameraSummary:
    """What the log says about one camera: its newest event, its newest status and an outage still open."""

    camera: str
    last_event: Event | None
    last_status: Event | None
    open_outage: Event | None


# Every camera name without reading every row: jump from one name to the next through the (camera, start) index.
_CAMERA_NAMES = """WITH RECURSIVE names(name) AS (
    SELECT MIN(camera) FROM events
    UNION ALL SELECT (SELECT MIN(camera) FROM events WHERE camera > names.name) FROM names WHERE name IS NOT NULL)
SELECT name FROM names WHERE name IS NOT NULL"""


def cameras(db_path: str | os.PathLike) -> list[CameraSummary]:
    """Every camera of the log, by name, with its newest event, newest status and open outage (if any).

    An outage is one ``source_down`` event, kept open and rewritten until the camera is back, and nothing else
    is reported while a camera is down; so a camera's outage is open exactly when its newest status is an open
    ``source_down``. Reading only the newest rows keeps this fast on a large log.
    """
    conn = open_reader(db_path)
    if conn is None:
        return []
    statuses = tuple(str(k) for k in StatusKind)
    marks = ", ".join("?" * len(statuses))
    with contextlib.closing(conn):

        def newest(camera: str, extra: str = "", params: tuple = ()) -> Event | None:
            row = conn.execute(f"{SELECT} WHERE camera = ?{extra} ORDER BY start_unix DESC, id DESC LIMIT 1",
                               (camera, *params)).fetchone()
            return None if row is None else row_event(row)

        out = []
        for (name,) in conn.execute(_CAMERA_NAMES).fetchall():
            status = newest(name, f" AND kind IN ({marks})", statuses)
            down = status is not None and status.kind == StatusKind.SOURCE_DOWN and not status.closed
            out.append(CameraSummary(camera=name, last_event=newest(name), last_status=status,
                                     open_outage=status if down else None))
        return out


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
    conn = open_reader(db_path)
    writer = csv.DictWriter(out, fieldnames=JSON_FIELDS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    if conn is None:
        return 0  # no schema yet: no events yet
    count = 0
    with contextlib.closing(conn):
        for row in conn.execute(f"{SELECT} ORDER BY start_unix, id"):
            record = row_event(row).to_json()
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
    several times between two polls is yielded once, in its newest state. A database without a schema yet (the
    runtime is creating it) has no backlog; with ``follow`` the iterator waits for the schema, then yields every
    write. Rows are read lazily as the iterator advances; stop by closing it (``break``).

    Raises:
        EventStoreError: the database is missing, not an event log, or of another schema version.
        InputError: ``poll_s`` not positive or ``last`` negative.
    """
    if poll_s <= 0 or last < 0:
        raise InputError(f"expected poll_s > 0 and last >= 0, got poll_s={poll_s} last={last}")
    conn = open_reader(db_path)
    if conn is None:
        return _tail_new_log(db_path, follow, poll_s)
    try:
        mark = conn.execute("SELECT COALESCE(MAX(updated), 0) FROM events").fetchone()[0]
    except BaseException:
        conn.close()
        raise
    return _tail(conn, mark, follow, poll_s, since_id, last)


def _tail_new_log(db_path: str | os.PathLike, follow: bool, poll_s: float) -> Iterator[Event]:
    """Tail a database whose schema does not exist yet: every write once it does is new."""
    while follow:
        time.sleep(poll_s)
        conn = open_reader(db_path)
        if conn is not None:
            yield from _tail(conn, 0, follow, poll_s, None, 0)
            return


def _tail(conn: sqlite3.Connection, mark: int, follow: bool, poll_s: float, since_id: int | None,
          last: int) -> Iterator[Event]:
    select = SELECT_WITH_UPDATED
    try:
        # the backlog is the state at ``mark``; a row written again since comes later, with its new state
        if since_id is None:
            rows = conn.execute(f"SELECT * FROM ({select} WHERE updated <= ? ORDER BY updated DESC LIMIT ?) "
                                "ORDER BY updated", (mark, last))
        else:
            rows = conn.execute(f"{select} WHERE id > ? AND updated <= ? ORDER BY updated", (since_id, mark))
        for row in rows.fetchall():
            yield row_event(row[:-1])
        while follow:
            time.sleep(poll_s)
            rows = conn.execute(f"{select} WHERE updated > ? ORDER BY updated", (mark,)).fetchall()
            for row in rows:
                mark = row[-1]
                yield row_event(row[:-1])
    finally:
        conn.close()
