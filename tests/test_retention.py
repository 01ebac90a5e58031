"""Retention: prune by age and size, never an open scene, FTS rows with their events, thumbnails after their rows,
a running writer never locked out, and a killed prune leaving nothing half-deleted that matters."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cli_helpers import run_cli
from edgecap.errors import InputError
from edgecap.events import Event, EventStore, EventStoreError, prune, search

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
THUMB_BYTES = 2000


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def make_log(db: Path, specs, *, thumbs: bool = True) -> None:
    """Write events: each spec is (uid, start age in days, end age in days or None, closed). Each event gets a
    thumbnail file (named by a path relative to the database's folder) last modified when the event started."""
    folder = db.parent / "thumbnails"
    folder.mkdir(exist_ok=True)
    events = []
    for uid, start, end, closed in specs:
        name = None
        if thumbs:
            name = f"thumbnails/{uid}.jpg"
            (db.parent / name).write_bytes(b"j" * THUMB_BYTES)
            stamp = days_ago(start).timestamp()
            os.utime(db.parent / name, (stamp, stamp))
        events.append(Event(uid, "scene", "gate", days_ago(start), end=None if end is None else days_ago(end),
                            caption=f"a red car number {uid}", thumbnail=name, closed=closed))
    with EventStore(db, max_pending=len(events) + 1) as store:  # all queued at once: none may be dropped
        for ack in [store.put(e) for e in events]:
            ack.wait(60)


def uids(db: Path, **kw) -> set[str]:
    return {e.uid for e in search(db, limit=10**6, **kw)} - {e.uid for e in search(db, kinds="prune", limit=10**6)}


def assert_fts_consistent(db: Path) -> None:
    """Every event row has its full-text row and every full-text row its event, and the index matches content."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM events WHERE id NOT IN (SELECT id FROM events_fts_docsize)"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM events_fts_docsize WHERE id NOT IN (SELECT id FROM events)"
                            ).fetchone() == (0,)
        conn.execute("INSERT INTO events_fts (events_fts, rank) VALUES ('integrity-check', 1)")  # raises if not
    finally:
        conn.close()


def thumbnail_files(db: Path) -> set[str]:
    folder = db.parent / "thumbnails"
    return {p.stem for p in folder.iterdir()} if folder.exists() else set()


@pytest.fixture()
def db(tmp_path):
    return tmp_path / "events.sqlite"


def test_age_prune_deletes_closed_events_that_ended_before_the_cutoff_with_their_thumbnails(db):
    make_log(db, [("old", 40, 39, True), ("old_point", 35, None, True), ("long", 45, 10, True),
                  ("open_old", 50, 49, False), ("new", 5, 4, True)])
    report = prune(db, older_than=timedelta(days=30), now=NOW)
    assert uids(db) == {"long", "open_old", "new"}  # "long" ended 10 days ago; an open scene is never deleted
    assert thumbnail_files(db) == {"long", "open_old", "new"}
    assert (report.events_deleted, report.thumbnails_deleted, report.orphans_swept) == (2, 2, 0)
    assert report.bytes_after < report.bytes_before
    assert search(db, "car") and {e.uid for e in search(db, "red car", limit=100)} >= {"long", "new"}
    assert_fts_consistent(db)
    (event,) = search(db, kinds="prune")
    assert event.details["events_deleted"] == 2 and event.details["thumbnails_deleted"] == 2
    assert "pruned 2 events" in event.details["message"]


def test_a_prune_that_deletes_nothing_records_nothing(db):
    make_log(db, [("new", 1, 0.5, True)])
    assert prune(db, older_than=timedelta(days=30), now=NOW).events_deleted == 0
    assert search(db, kinds="prune") == [] and uids(db) == {"new"}


def test_size_prune_deletes_the_oldest_closed_events_until_the_log_fits(db):
    specs = [(f"e{i:03d}", 200 - i, 199.5 - i, True) for i in range(200)]
    specs[3] = ("open", 197, 196.5, False)
    make_log(db, specs)
    full = prune(db, max_bytes=10**12, now=NOW)  # over nothing: measures the log
    assert full.events_deleted == 0 and full.bytes_before == full.bytes_after
    limit = full.bytes_before - 150 * THUMB_BYTES
    report = prune(db, max_bytes=limit, now=NOW)
    assert report.bytes_after <= limit < report.bytes_before
    left = uids(db)
    gone = {s[0] for s in specs} - left
    assert "open" in left and len(gone) == report.events_deleted >= 150 // 2
    # the oldest went first: every deleted event started before every kept closed one
    assert min(int(u[1:]) for u in left - {"open"}) > max(int(u[1:]) for u in gone)
    assert thumbnail_files(db) == left
    assert_fts_consistent(db)


def test_the_event_written_last_survives_so_the_write_counter_never_goes_back(db, tmp_path):
    """Deleting every row would restart ``updated`` at 1: the JSONL mirror (and tail) would take new writes for
    ones already seen and never record them."""
    jsonl = tmp_path / "events.jsonl"
    with EventStore(db, jsonl=jsonl) as store:
        for uid in ("a", "b", "last"):
            store.put(Event(uid, "scene", "gate", days_ago(40), end=days_ago(39), caption=uid)).wait(5)
    report = prune(db, older_than=timedelta(days=30), now=NOW, record=lambda event: None)
    assert report.events_deleted == 2 and uids(db) == {"last"}
    with EventStore(db, jsonl=jsonl) as store:
        store.put(Event("after", "scene", "gate", NOW, caption="after the prune")).wait(5)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["uid"] for r in lines] == ["a", "b", "last", "after"]
    assert lines[-1]["updated"] > lines[-2]["updated"]


def test_record_receives_the_prune_event_instead_of_a_direct_write(db):
    make_log(db, [("old", 40, 39, True), ("new", 1, 0.5, True)], thumbs=False)
    recorded: list[Event] = []
    report = prune(db, older_than=timedelta(days=30), now=NOW, record=recorded.append)
    (event,) = recorded
    assert event.kind == "prune" and event.details["events_deleted"] == report.events_deleted == 1
    assert search(db, kinds="prune") == []  # the caller's sink writes it


def test_orphan_thumbnails_are_swept_only_past_the_grace_period(db):
    make_log(db, [("kept", 1, 0.5, True)])
    folder = db.parent / "thumbnails"
    (folder / "orphan_old.jpg").write_bytes(b"o" * 100)
    old = (datetime.now(timezone.utc) - timedelta(days=2)).timestamp()
    os.utime(folder / "orphan_old.jpg", (old, old))
    (folder / "orphan_new.jpg").write_bytes(b"n" * 100)  # a thumbnail whose row the runtime is about to write
    report = prune(db, older_than=timedelta(days=30), now=NOW)
    assert report.orphans_swept == 1 and thumbnail_files(db) == {"kept", "orphan_new"}
    (event,) = search(db, kinds="prune")
    assert event.details["orphans_swept"] == 1


def test_only_files_inside_the_thumbnail_folder_are_ever_deleted(db, tmp_path):
    precious = tmp_path / "precious.jpg"
    precious.write_bytes(b"p")
    make_log(db, [], thumbs=False)
    with EventStore(db) as store:
        store.put(Event("escape", "scene", "gate", days_ago(40), end=days_ago(39), thumbnail=str(precious))).wait(5)
        store.put(Event("dots", "scene", "gate", days_ago(40), end=days_ago(39),
                        thumbnail="thumbnails/../precious.jpg")).wait(5)
        store.put(Event("recent", "scene", "gate", NOW)).wait(5)
    report = prune(db, older_than=timedelta(days=30), now=NOW)
    assert report.events_deleted == 2 and report.thumbnails_deleted == 0 and precious.exists()


def test_thumbnails_named_through_a_symlinked_folder_are_not_orphans(db, tmp_path):
    """A row may spell the folder another way (a symlink, ``..``): the file is still its thumbnail."""
    make_log(db, [("a", 40, 39, True), ("b", 2, 1, True)])
    alias = tmp_path / "alias"
    alias.symlink_to(db.parent)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE events SET thumbnail = ? WHERE uid = 'b'", (str(alias / "thumbnails" / "b.jpg"),))
    conn.commit()
    conn.close()
    report = prune(db, older_than=timedelta(days=30), now=NOW, orphan_grace=timedelta(0))
    assert report.orphans_swept == 0 and thumbnail_files(db) == {"b"}


@pytest.mark.parametrize("kw, fragment", [
    ({}, "give a retention limit"),
    ({"older_than": timedelta(0)}, "older_than must be a positive"),
    ({"older_than": "30d"}, "older_than must be a positive"),
    ({"max_bytes": 0}, "max_bytes must be a positive"),
    ({"max_bytes": 10, "batch": 0}, "batch must be a positive"),
])
def test_bad_limits_are_one_line_input_errors(db, kw, fragment):
    make_log(db, [("a", 1, 0.5, True)], thumbs=False)
    with pytest.raises(InputError, match=fragment):
        prune(db, **kw)


def test_a_missing_database_and_a_log_without_schema_yet(tmp_path):
    with pytest.raises(EventStoreError, match="^event database not found"):
        prune(tmp_path / "missing.sqlite", older_than=timedelta(days=1))
    empty = tmp_path / "empty.sqlite"
    empty.touch()  # `edgecap run` has created the file, not yet its schema
    report = prune(empty, older_than=timedelta(days=1))
    assert (report.events_deleted, report.bytes_before, report.bytes_after) == (0, 0, 0)
    assert empty.stat().st_size == 0


def test_a_running_writer_keeps_committing_during_a_large_prune(db):
    make_log(db, [(f"old{i}", 60 + i / 1000, 59 + i / 1000, True) for i in range(6000)], thumbs=False)
    done, acks, result = threading.Event(), [], {}

    def run_prune():
        try:
            result["report"] = prune(db, older_than=timedelta(days=30), now=NOW, batch=100)
        finally:
            done.set()

    with EventStore(db) as store:
        pruner = threading.Thread(target=run_prune)
        pruner.start()
        i = 0
        while not done.is_set() or i < 20:  # write all through the prune, and at least 20 events
            ack = store.put(Event(f"live{i}", "scene", "gate", NOW, caption="a live car"))
            acks.append(ack)
            ack.wait(30)  # a writer locked out would time out or fail here
            i += 1
        pruner.join(60)
        assert store.stats["failed"] == 0 and store.stats["dropped"] == 0
    assert result["report"].events_deleted == 6000
    assert uids(db) == {f"live{k}" for k in range(len(acks))}
    assert_fts_consistent(db)


# -- a killed prune ----------------------------------------------------------------------------------------------

PRUNER = textwrap.dedent("""
    import sys
    from datetime import datetime, timedelta, timezone
    from edgecap.events import prune
    print("ready", flush=True)
    prune(sys.argv[1], older_than=timedelta(days=30), now=datetime(2024, 6, 1, 12, tzinfo=timezone.utc), batch=50)
    print("finished", flush=True)
""")

KILL_EVENTS = 12_000


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    """A log of old closed scenes (every third with a thumbnail), a few open ones, and recent ones."""
    db = tmp_path_factory.mktemp("big") / "events.sqlite"
    specs = [(f"s{i}", 400 - i / 100, 399.9 - i / 100, True) for i in range(KILL_EVENTS)]
    specs += [(f"open{i}", 300, 299, False) for i in range(5)] + [(f"new{i}", 1, 0.5, True) for i in range(5)]
    make_log(db, specs, thumbs=False)  # creates the thumbnail folder
    folder = db.parent / "thumbnails"
    conn = sqlite3.connect(db)
    with conn:
        for uid, start, _, _ in specs[:KILL_EVENTS:3]:
            (folder / f"{uid}.jpg").write_bytes(b"j" * 100)
            stamp = days_ago(start).timestamp()
            os.utime(folder / f"{uid}.jpg", (stamp, stamp))
            conn.execute("UPDATE events SET thumbnail = ? WHERE uid = ?", (f"thumbnails/{uid}.jpg", uid))
    conn.close()
    return db


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_a_killed_prune_leaves_nothing_half_deleted(big_log, tmp_path, trial):
    work = tmp_path / "log"
    shutil.copytree(big_log.parent, work)
    db = work / "events.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", PRUNER, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        try:  # kill at a random moment of the prune (a wait that returns early: the prune had finished)
            proc.wait(timeout=random.Random(trial).uniform(0.3, 2.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode in (0, -signal.SIGKILL), err
    assert_fts_consistent(db)
    left = uids(db)
    assert {f"open{i}" for i in range(5)} | {f"new{i}" for i in range(5)} <= left  # nothing that must stay went
    report = prune(db, older_than=timedelta(days=30), now=NOW)  # the next prune finishes the job
    assert uids(db) == {f"open{i}" for i in range(5)} | {f"new{i}" for i in range(5)}
    assert thumbnail_files(db) == set()  # the files of rows the killed prune deleted were swept
    assert report.events_deleted == len(left) - 10
    assert_fts_consistent(db)


# -- CLI ---------------------------------------------------------------------------------------------------------

def test_cli_prune_prints_one_summary_line(db, capsys):
    make_log(db, [("old", 0, 0, True), ("new", 0, 0, True)])
    now = datetime.now(timezone.utc)
    conn = sqlite3.connect(db)
    with conn:  # the CLI measures ages from the clock
        for uid, age in (("old", timedelta(days=40)), ("new", timedelta(0))):
            conn.execute("UPDATE events SET start_unix = ?, end_unix = ? WHERE uid = ?",
                         ((now - age).timestamp(), (now - age).timestamp(), uid))
    conn.close()
    code, out, err = run_cli(["events", "prune", "--db", str(db), "--older-than", "30d", "--max-gb", "20"], capsys)
    assert code == 0 and err == "" and out.count("\n") == 1
    assert "pruned 1 events and 1 thumbnails" in out
    assert uids(db) == {"new"} and thumbnail_files(db) == {"new"}


@pytest.mark.parametrize("argv, fragment", [
    (["--older-than", "30 days"], "cannot read duration"),
    (["--older-than", "0d"], "is zero"),
    (["--max-gb", "lots"], "--max-gb must be a positive number"),
    (["--max-gb", "-1"], "--max-gb must be a positive number"),
    ([], "give a retention limit"),
])
def test_cli_prune_user_errors_are_one_line_exit_2(db, capsys, argv, fragment):
    make_log(db, [("a", 1, 0.5, True)], thumbs=False)
    code, out, err = run_cli(["events", "prune", "--db", str(db), *argv], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("edgecap: error: ") and fragment in err


def test_cli_prune_help_names_the_limits(capsys):
    code, out, _ = run_cli(["events", "prune", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0 and all(flag in text for flag in ("--older-than", "--max-gb", "--thumbnails", "Open scenes are never"))
