"""`edgecap serve`: the JSON API and its security, against a real server on a loopback port, over a log written by
`edgecap run` on a generated clip (plus hand-made events for the hostile cases)."""

from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from edgecap import synth  # noqa: E402
from edgecap.events import Event, EventStore, save_jpeg, search, search_page, thumbnail_dir  # noqa: E402
from edgecap.events.model import JSON_FIELDS  # noqa: E402
from edgecap.web.api import parse_query  # noqa: E402
from edgecap.web.auth import FailureLimiter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "src" / "edgecap" / "web" / "static"


def request(server, path: str, *, token: str | None | bool = True, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One GET without following redirects; ``token=True`` sends the server's token as a Bearer header."""
    parts = urlsplit(server.base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if token is True:
            token = server.token
        if token:
            sent["Authorization"] = f"Bearer {token}"
        conn.request("GET", path, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def get_json(server, path: str, **kw):
    status, _, body = request(server, path, **kw)
    assert status == 200, body
    return json.loads(body)


def put_events(db: Path, *events: Event) -> None:
    """Write events into the log as a second writer would (the runtime's store), and wait until committed."""
    with EventStore(db) as store:
        for ev in events:
            store.put(ev)


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def log(tmp_path_factory, review_clips, write_log) -> Path:
    db = tmp_path_factory.mktemp("serve") / "events.sqlite"
    write_log(db, review_clips["gate"])
    return db


@pytest.fixture(scope="module")
def server(log, start_server):
    return start_server(log)


def scene_colour(db: Path) -> str:
    """A colour word that some but not all scene captions of the log contain."""
    captions = [ev.caption for ev in search(db, kinds="scene", limit=1000)]
    for colour in synth.COLOURS:
        if 0 < sum(colour in c.split() for c in captions) < len(captions):
            return colour
    raise AssertionError(f"no colour narrows these captions: {captions}")


# -- authentication ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/", "/api/events", "/api/events?q=red", "/api/events/1", "/api/events/1/thumbnail.jpg", "/api/cameras",
    "/api/stream", "/healthz", "/static/app.js",
])
def test_requests_without_the_token_get_401(server, path):
    status, headers, body = request(server, path, token=None)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert b"caption" not in body and b"token=" in body  # says how to log in, shows nothing of the log


def test_a_wrong_token_or_scheme_gets_401(server):
    assert request(server, "/api/events", token="x" * len(server.token))[0] == 401
    assert request(server, "/api/events", token=False, headers={"Authorization": f"Basic {server.token}"})[0] == 401
    assert request(server, f"/api/events?token={server.token}x", token=None)[0] == 401


def test_token_login_sets_a_strict_httponly_cookie_and_redirects_to_the_url_without_it(server):
    status, headers, _ = request(server, f"/?q=red&token={server.token}", token=None)
    assert status == 303 and headers["Location"] == "/?q=red"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    pair = cookie.split(";")[0]
    assert get_json(server, "/api/events", token=None, headers={"Cookie": pair})["events"]
    page = request(server, "/", token=None, headers={"Cookie": pair})
    assert page[0] == 200 and b"<html" in page[2]
    # a stale cookie of an earlier server is dropped, and does not spoil a fresh login
    stale = request(server, "/", token=None, headers={"Cookie": pair + "x"})
    assert stale[0] == 401 and "Max-Age=0" in stale[1]["Set-Cookie"]
    assert request(server, f"/?token={server.token}", token=None, headers={"Cookie": pair + "x"})[0] == 303


def test_api_calls_accept_the_token_in_the_query(server):
    assert get_json(server, f"/api/events?token={server.token}", token=None)["events"]


def test_failed_logins_are_limited_per_client(log, start_server):
    own = start_server(log)
    for _ in range(10):
        assert request(own, "/api/events", token="wrong")[0] == 401
    status, headers, _ = request(own, "/api/events")  # the right token too: the client is not even checked now
    assert status == 429 and headers["Retry-After"]


def test_the_failure_limiter_forgets_old_failures_and_bounds_its_memory(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("edgecap.web.auth.time.monotonic", lambda: clock[0])
    limiter = FailureLimiter(max_failures=3, window_s=60, max_clients=2)
    for _ in range(3):
        limiter.fail("a")
    assert limiter.blocked("a") and not limiter.blocked("b")
    clock[0] += 61
    assert not limiter.blocked("a")
    for client in "xyz":
        limiter.fail(client)
    assert len(limiter._failures) <= 2


def test_token_file_is_created_private_and_reused_across_restarts(log, start_server, tmp_path):
    token_file = tmp_path / "token"
    first = start_server(log, "--token-file", str(token_file))
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    first.proc.terminate()
    first.proc.wait(timeout=30)
    second = start_server(log, "--token-file", str(token_file))
    assert second.token == first.token and get_json(second, "/api/events")["events"]


def serve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecap.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60)


def test_a_token_file_others_can_read_is_refused(log, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t" * 40)
    token_file.chmod(0o644)
    proc = serve_cli("--db", str(log), "--port", "0", "--token-file", str(token_file))
    assert proc.returncode == 2 and "chmod 600" in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10"])
def test_no_auth_is_refused_off_loopback(log, host):
    proc = serve_cli("--db", str(log), "--port", "0", "--no-auth", "--host", host)
    assert proc.returncode == 2 and "loopback" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_no_auth_on_loopback_serves_loopback_host_names_only(log, start_server):
    open_server = start_server(log, "--no-auth")
    assert open_server.token is None and get_json(open_server, "/api/events", token=None)["events"]
    # DNS rebinding: a page at evil.example resolving to 127.0.0.1 sends its own host name
    assert request(open_server, "/api/events", token=None, headers={"Host": "evil.example:80"})[0] == 403


def test_a_missing_database_fails_at_start_with_one_line(tmp_path):
    proc = serve_cli("--db", str(tmp_path / "none.sqlite"), "--port", "0")
    assert proc.returncode == 2 and "not found" in proc.stderr and len(proc.stderr.splitlines()) == 1


# -- the page's protections ---------------------------------------------------------------------------------------

def test_every_response_has_a_csp_without_inline_script(server):
    for path, token in (("/", True), ("/api/events", True), ("/static/app.js", True), ("/api/events", None)):
        csp = request(server, path, token=token)[1]["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


def test_the_page_has_no_inline_script_and_builds_no_html_from_data():
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and not re.search(r"\son[a-z]+=", html)
    assert not re.search(r"https?://", html)  # nothing from a CDN: works offline
    js = (STATIC / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", js)


# -- the API ----------------------------------------------------------------------------------------------------

def test_events_api_agrees_with_events_search(server, log):
    colour = scene_colour(log)
    for q in (colour, f"{colour} parking", "", "zebra giraffe", '"; DROP TABLE events; --'):
        body = get_json(server, f"/api/events?q={quote(q)}&limit=500")
        assert [e["id"] for e in body["events"]] == [ev.id for ev in search(log, q, limit=500)]
    hits = get_json(server, f"/api/events?q={colour}")["events"]
    assert hits and all(colour in e["caption"] for e in hits)
    assert set(JSON_FIELDS) | {"thumbnail_url"} == set(hits[0])
    assert hits[0]["thumbnail_url"] == f"/api/events/{hits[0]['id']}/thumbnail.jpg"
    # the thumbnail by its file name: the server's folders are not the page's business
    stored = search(log, limit=500)
    assert hits[0]["thumbnail"] == Path(next(e for e in stored if e.id == hits[0]["id"]).thumbnail).name
    assert all("/" not in (e["thumbnail"] or "") for e in get_json(server, "/api/events?limit=500")["events"])


def test_search_box_tokens_filter_by_camera_and_kind(server, log):
    scenes = get_json(server, "/api/events?q=camera:gate%20kind:scene&limit=500")["events"]
    assert [e["id"] for e in scenes] == [ev.id for ev in search(log, camera="gate", kinds="scene", limit=500)]
    assert get_json(server, "/api/events?q=camera:nowhere")["events"] == []
    system = get_json(server, "/api/events?kind=finished&kind=source_up")["events"]
    assert system and {e["kind"] for e in system} <= {"finished", "source_up"}


@pytest.mark.parametrize("q, expected", [
    ("red car", ("red car", (), ())),
    ('camera:"front door" kind:scene red', ("red", ("front door",), ("scene",))),
    ("camera:a camera:b camera:a", ("", ("a", "b"), ())),
    ("xcamera:a", ("xcamera:a", (), ())),  # only a whole word is a token
])
def test_parse_query(q, expected):
    got = parse_query(q)
    assert (got.text, got.cameras, got.kinds) == expected


def test_cursor_pages_walk_every_event_once_in_order(server, log):
    everything = [ev.id for ev in search(log, limit=1000)]
    walked, cursor = [], None
    for _ in range(len(everything) + 1):  # bounded: one page per event at most
        body = get_json(server, "/api/events?limit=2" + (f"&cursor={quote(cursor)}" if cursor else ""))
        walked += [e["id"] for e in body["events"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert walked == everything


def test_a_cursor_page_does_not_shift_when_newer_events_arrive(tmp_path):
    db = tmp_path / "ev.sqlite"
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    put_events(db, *(Event(f"e{i}", "scene", "cam", t0 + timedelta(seconds=i), caption=f"scene {i}") for i in range(6)))
    first, cursor = search_page(db, limit=3)
    put_events(db, Event("newer", "scene", "cam", t0 + timedelta(hours=1), caption="late"))
    second, end = search_page(db, limit=3, cursor=cursor)
    assert [e.uid for e in first + second] == [f"e{i}" for i in range(5, -1, -1)] and end is None


@pytest.mark.parametrize("window", [2, 4096])
def test_full_text_pages_are_exact_when_starts_do_not_follow_ids(tmp_path, monkeypatch, window):
    """Full-text pages look among the newest ids first (fast on a large log); a row written late with an early start,
    or early with a late one, must still land where its start puts it, on every page."""
    monkeypatch.setattr("edgecap.events.query._FIRST_WINDOW", window)
    db = tmp_path / "ev.sqlite"
    rng = np.random.default_rng(0)
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    offsets = np.arange(120.0)
    offsets[rng.choice(120, 25, replace=False)] = rng.uniform(0, 120, 25)  # a fifth out of id order
    words = ("red car", "blue car", "red dog", "green bus")
    put_events(db, *(Event(f"e{i}", "scene", "cam", t0 + timedelta(seconds=float(s)), caption=words[i % 4])
                     for i, s in enumerate(offsets)))
    for text in ("red", "car", "red dog", "bus", "zebra"):
        everything = [(ev.start, ev.id) for ev in search(db, limit=1000) if all(w in ev.caption for w in text.split())]
        expected = [i for _, i in sorted(everything, reverse=True)]
        for limit in (1, 7, 50):
            walked, cursor = [], None
            for _ in range(len(expected) + 2):
                page, cursor = search_page(db, text, limit=limit, cursor=cursor)
                walked += [ev.id for ev in page]
                if cursor is None:
                    break
            assert walked == expected, (text, limit)


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "since=yesterdayish", "cursor=bogus",
                                   # past SQLite's integers: was a 500 and a server traceback
                                   "cursor=1.0_9223372036854775808", "q=red&cursor=1.0_9223372036854775808",
                                   # a digit to str.isdigit but not to int(), and past int()'s 4,300 digits: were 500s
                                   "limit=%C2%B2", "limit=" + "9" * 5000])
def test_bad_parameters_get_400_with_a_message(server, query):
    status, _, body = request(server, f"/api/events?{query}")
    assert status == 400 and json.loads(body)["error"]


def test_one_event_and_a_missing_one(server, log):
    ev = search(log, kinds="scene", limit=1)[0]
    assert get_json(server, f"/api/events/{ev.id}")["caption"] == ev.caption
    assert request(server, "/api/events/999999")[0] == 404
    for path in ("", "/thumbnail.jpg", "/similar"):  # an id past SQLite's integers is just no such event (was 500)
        assert request(server, f"/api/events/9223372036854775808{path}")[0] == 404, path
    assert request(server, "/api/events/..%2f..%2fetc")[0] == 404


def test_thumbnails_are_served_from_the_thumbnail_folder_only(server, log, tmp_path):
    ev = search(log, kinds="scene", limit=1)[0]
    status, headers, body = request(server, f"/api/events/{ev.id}/thumbnail.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"\xff\xd8secret")
    link = thumbnail_dir(log) / "link.jpg"
    link.symlink_to(outside)
    hostile = {"abs": str(outside), "dotdot": str(thumbnail_dir(log) / ".." / "events.sqlite"),
               "relative": "../events.sqlite", "link": str(link), "notjpeg": str(log)}
    put_events(log, *(Event(f"thumb-{k}", "scene", "gate", now(), caption=k, thumbnail=v) for k, v in hostile.items()))
    for name in hostile:
        (found,) = [e for e in search(log, name, limit=5) if e.uid == f"thumb-{name}"]
        status, _, body = request(server, f"/api/events/{found.id}/thumbnail.jpg")
        assert status == 404 and b"secret" not in body and b"SQLite" not in body, name


def test_cameras_report_their_state_and_open_outage(server, log):
    start = now()
    put_events(log, Event("door-down", "source_down", "door", start, closed=False,
                          details={"message": "rtsp://cam/: connection refused", "attempts": 3}))
    cams = {c["camera"]: c for c in get_json(server, "/api/cameras")["cameras"]}
    assert cams["gate"]["state"] == "finished" and cams["gate"]["open_outage"] is None
    assert cams["door"]["state"] == "down" and cams["door"]["open_outage"]["details"]["attempts"] == 3


def test_no_camera_credential_in_any_response(server, log):
    put_events(log, Event("cred", "source_error", "lobby", now(),
                          details={"message": "cannot open rtsp://admin:hunter2@10.0.0.5/live",
                                   "nested": ["https://u:hunter2@x/y?token=hunter2"]}))
    for path in ("/api/events?kind=source_error", "/api/cameras"):
        body = request(server, path)[2]
        assert b"lobby" in body and b"hunter2" not in body and b"admin:***@10.0.0.5" in body
    # a message with a secret query value: the masking keeps the words after the URL (the outage's reason)
    put_events(log, Event("cred-query", "source_down", "porch", now(),
                          details={"message": "rtsp://127.0.0.1:1/live?token=hunter2 down: ConnectionRefusedError: "
                                              "Connection refused; reconnecting in 0.20 s"}))
    (found,) = get_json(server, "/api/events?kind=source_down&camera=porch")["events"]
    assert found["details"]["message"] == ("rtsp://127.0.0.1:1/live?token=*** down: ConnectionRefusedError: "
                                           "Connection refused; reconnecting in 0.20 s")


def test_healthz(server):
    assert get_json(server, "/healthz")["ok"] is True


def read_stream(server, out: queue.Queue, stop: threading.Event) -> None:
    """Put each ``data:`` JSON of /api/stream on ``out`` until ``stop``."""
    parts = urlsplit(server.base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("GET", "/api/stream", headers={"Authorization": f"Bearer {server.token}"})
    resp = conn.getresponse()
    out.put(("status", resp.status))
    try:
        while not stop.is_set():
            line = resp.fp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                out.put(("event", json.loads(line[6:])))
    finally:
        conn.close()


def test_the_stream_sends_new_and_updated_events(server, log):
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=read_stream, args=(server, out, stop), daemon=True).start()
    assert out.get(timeout=30) == ("status", 200)
    uid = uuid.uuid4().hex
    start = now()
    put_events(log, Event(uid, "scene", "gate", start, caption="a live test scene", closed=False))
    put_events(log, Event(uid, "scene", "gate", start, end=start + timedelta(seconds=5), caption="a live test scene",
                          observations=2, closed=True))
    seen = []
    try:
        while not (seen and seen[-1]["closed"]):
            kind, ev = out.get(timeout=30)  # bounded: fails rather than hangs when the stream sends nothing
            if ev["uid"] == uid:
                seen.append(ev)
    finally:
        stop.set()
    assert seen[0]["thumbnail_url"] is None and seen[-1]["observations"] == 2
    assert set(JSON_FIELDS) | {"thumbnail_url"} == set(seen[-1])


@pytest.mark.parametrize("last", ["9223372036854775808", "\xb2"])
def test_a_last_event_id_past_sqlites_integers_is_ignored(server, log, last):
    # the stream died after its first line (OverflowError in the server) when an EventSource sent one; a
    # superscript two (a digit to str.isdigit, not to int) was a ValueError
    parts = urlsplit(server.base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", "/api/stream", headers={"Authorization": f"Bearer {server.token}",
                                                    "Last-Event-ID": last})
        resp = conn.getresponse()
        assert resp.status == 200
        uid = uuid.uuid4().hex
        put_events(log, Event(uid, "scene", "gate", now(), caption="after a huge last event id"))
        for _ in range(10_000):  # bounded; the socket timeout bounds each read
            line = resp.fp.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: ") and json.loads(line[6:])["uid"] == uid:
                break
        else:
            raise AssertionError("the new event never came")
    finally:
        conn.close()


def test_a_database_being_created_reads_as_no_events_yet(start_server, tmp_path):
    db = tmp_path / "new.sqlite"
    db.touch()  # `edgecap run` has created the file, not yet the schema
    empty = start_server(db)
    assert get_json(empty, "/api/events") == {"events": [], "next_cursor": None}
    assert get_json(empty, "/api/cameras") == {"cameras": []}
    assert get_json(empty, "/healthz")["ok"] is True
    put_events(db, Event("first", "scene", "cam", now(), caption="the first scene"))
    assert [e["uid"] for e in get_json(empty, "/api/events")["events"]] == ["first"]


def test_a_thumbnail_written_with_the_runtime_helper_is_served(server, log):
    path = save_jpeg(thumbnail_dir(log) / "made.jpg", np.full((48, 64, 3), 200, np.uint8))
    put_events(log, Event("made", "scene", "gate", now(), caption="made thumbnail", thumbnail=str(path)))
    (ev,) = [e for e in search(log, "made thumbnail", limit=5) if e.uid == "made"]
    status, _, body = request(server, f"/api/events/{ev.id}/thumbnail.jpg")
    assert status == 200 and body == path.read_bytes()


def test_serve_help_lists_its_options():
    proc = serve_cli("--help")
    assert proc.returncode == 0 and all(o in proc.stdout for o in ("--token-file", "--no-auth", "--host", "--port"))


def test_the_listening_socket_is_tcp_so_keep_alive_requests_are_not_delayed():
    import socket

    from edgecap.web import bind

    # asyncio disables Nagle only on sockets whose proto says TCP; with proto 0 every request after the first on a
    # keep-alive connection waited ~40 ms for a delayed ACK
    sock = bind("127.0.0.1", 0)
    with sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_without_the_web_extra_serve_says_what_to_install(log):
    code = ("import sys; sys.modules['starlette'] = None; from edgecap.cli import main; "
            f"sys.exit(main(['serve', '--db', {str(log)!r}, '--port', '0']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "pip install 'edgecap[web]'" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_a_port_in_use_fails_with_one_line(log, server):
    proc = serve_cli("--db", str(log), "--port", str(urlsplit(server.base).port))
    assert proc.returncode == 2 and "choose another --port" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_run_serve_on_a_port_in_use_fails_before_it_creates_the_log(server, tmp_path):
    # the port was bound after the model had loaded and the event log existed: an empty database was left behind
    from PIL import Image

    db = tmp_path / "run" / "e.sqlite"
    db.parent.mkdir()
    (tmp_path / "frames").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "frames" / "0.png")
    proc = subprocess.run([sys.executable, "-m", "edgecap", "run", str(tmp_path / "frames"), "--db", str(db),
                           "--jsonl", str(tmp_path / "run" / "e.jsonl"), "--serve", "--port",
                           str(urlsplit(server.base).port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "choose another --port" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not list(db.parent.iterdir())


@pytest.mark.slow
def test_run_with_serve_reviews_the_log_while_it_writes(tmp_path):
    """`edgecap run --serve`: the page and API of `edgecap serve`, from the process that writes the log."""
    clip = tmp_path / "clip.mp4"
    synth.render_clip(clip, seed=synth.HELD_OUT_SEED_START + 9, duration_s=40)
    proc = subprocess.Popen([sys.executable, "-m", "edgecap", "run", str(clip), "--realtime", "--db",
                             str(tmp_path / "e.sqlite"), "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "review page at http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("review page at ", 1)[1].strip()
        base, token = url.split("/?token=")
        request = urllib.request.Request(f"{base}/api/events?kind=scene",
                                         headers={"Authorization": f"Bearer {token}"})
        events = []
        for _ in range(120):  # bounded: up to a minute for the first scene to be written
            with urllib.request.urlopen(request, timeout=10) as response:
                events = json.load(response)["events"]
            if events:
                break
            proc.stdout.readline()  # wait for the next printed scene (or the end)
        assert events and events[0]["camera"] == "clip" and events[0]["thumbnail_url"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/events", timeout=10)
        assert refused.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
