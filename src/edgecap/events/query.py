"""The reading side of the event log: full-text search, export, and tail (follow writes as they commit).

Readers open the database read-only and never block the writer. A database that has no schema yet (an empty
file, or one ``edgecap run`` is creating at this moment) holds no events: search and export return nothing, and
``tail`` waits for the schema to appear.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import sqlite3
import time
from datetime import datetime
from typing import Any, Iterable, Iterator, TextIO

from ..errors import InputError
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
        params.append(clean_text(camera, MAX_NAME_CHARS))
    if kinds is not None:
        wanted = [clean_text(k, MAX_NAME_CHARS) for k in ([kinds] if isinstance(kinds, str) else kinds)]
        where.append(f"kind IN ({', '.join('?' * len(wanted))})")
        params += wanted
    if since is not None:
        where.append("COALESCE(end_unix, start_unix) >= ?")
        params.append(_as_time(since).timestamp())
    if until is not None:
        where.append("start_unix <= ?")
        params.append(_as_time(until).timestamp())
    sql = f"{SELECT}{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY start_unix DESC, id DESC LIMIT ?"
    conn = open_reader(db_path)
    if conn is None:
        return []  # no schema yet: no events yet
    with contextlib.closing(conn):
        return [row_event(row) for row in conn.execute(sql, (*params, limit))]


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
