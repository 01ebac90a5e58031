"""Sources: sampling, buffer policy per kind, state machine, reconnects, watchdog, stop latency, secrets, bad input.

Servers are loopback sockets with bounded lifetimes; every source is stopped by the test that starts it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import av
import numpy as np
import pytest

from edgecap.errors import SourceError
from edgecap.sources import (ALLOWED_TRANSITIONS, GLOBAL_RECONNECT_BURST, GLOBAL_RECONNECTS_PER_S, TERMINAL_STATES,
                             BufferPolicy, Source, SourceConfig, SourceState, SourceStatus, StatusKind,
                             check_transition, classify_source, decoding, mask_url, open_sources)
from edgecap.synth import render_clip
from edgecap.video import sample_frames
from rtsp import free_port
from source_helpers import Recorder, assert_legal_history, source_threads

S = SourceState
FAST = dict(open_timeout_s=0.5, read_timeout_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.2)


# --------------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    render_clip(path, seed=1, duration_s=6)  # 10 fps, 60 frames
    return path


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "short.mp4"
    render_clip(path, seed=2, duration_s=1)  # 10 fps, 10 frames
    return path


@pytest.fixture(scope="module")
def clip_ts(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("clip") / "clip.ts"
    render_clip(path, seed=1, duration_s=6)
    return path.read_bytes()


def drain(src: Source, *, sleep: float = 0.0, limit_s: float = 15.0) -> list:
    out = []
    deadline = time.monotonic() + limit_s
    while not src.finished and time.monotonic() < deadline:
        sample = src.read(timeout=0.5)
        if sample is not None:
            out.append(sample)
            if sleep:
                time.sleep(sleep)
    assert src.finished, "source did not finish in time"
    return out


class LoopbackServer:
    """A TCP server on 127.0.0.1 running ``handler(conn, closed)`` per connection; close() ends everything."""

    def __init__(self, handler):
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            self.handler(conn, self.closed)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed.set()
        self._thread.join(2)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def serve():
    servers: list[LoopbackServer] = []

    def start(handler) -> LoopbackServer:
        servers.append(LoopbackServer(handler))
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


def read_request(conn: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def hold_open(conn: socket.socket, closed: threading.Event) -> None:
    """Keep the connection open without sending until the client hangs up or the server closes (<= 10 s)."""
    conn.settimeout(0.1)
    deadline = time.monotonic() + 10
    while not closed.is_set() and time.monotonic() < deadline:
        try:
            if not conn.recv(4096):
                return
        except TimeoutError:
            continue


def http_stream(data: bytes, *, stall: bool):
    """Answer one GET with ``data`` as MPEG-TS, then close (a graceful end) or hold the socket open (a stall)."""

    def handler(conn, closed):
        read_request(conn)
        length = b"" if stall else b"Content-Length: %d\r\n" % len(data)  # without it FFmpeg reports EIO at the end
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n" + length + b"\r\n" + data)
        if stall:
            hold_open(conn, closed)

    return handler


def silent(conn, closed):
    hold_open(conn, closed)


def rtsp_401(conn, closed):
    conn.settimeout(0.2)
    buf = b""
    while not closed.is_set():
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            return
        buf += chunk
        while b"\r\n\r\n" in buf:
            req, buf = buf.split(b"\r\n\r\n", 1)
            cseq = next((ln.split(b":", 1)[1].strip() for ln in req.split(b"\r\n") if ln.lower().startswith(b"cseq")),
                        b"1")
            conn.sendall(b"RTSP/1.0 401 Unauthorized\r\nCSeq: " + cseq
                         + b'\r\nWWW-Authenticate: Basic realm="cam"\r\n\r\n')


def write_png(path: Path, rgb: np.ndarray) -> None:
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


# --------------------------------------------------------------------------------------------------------------------
# files and folders
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interval, expected", [
    (0.5, 12),  # the brief's case: 6 s at 0.5 s
    (1.0, 6),
    (0.1, 60),  # every frame of a 10 fps clip
])
def test_file_yields_one_frame_per_interval(clip, interval, expected):
    rec = Recorder()
    with Source(SourceConfig("f", str(clip), interval_s=interval), on_status=rec) as src:
        assert not src.is_live
        frames = drain(src)
    assert len(frames) == expected
    pts = [f.pts_s for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    # the first frame at or after each multiple of the interval (10 fps: the multiple itself)
    assert pts == pytest.approx([i * interval for i in range(expected)], abs=1e-6)
    assert [f.seq for f in frames] == list(range(expected))
    monos = [f.mono for f in frames]
    assert all(b >= a for a, b in zip(monos, monos[1:]))
    img = frames[0].image
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    assert all(f.wall_utc.tzinfo is not None and f.camera == "f" for f in frames)
    c = src.counters
    assert c["frames_read"] == 60 and c["frames_sampled"] == expected and c["dropped"] == 0
    assert src.finished and src.state is S.STOPPED


def test_file_slow_consumer_drops_nothing_and_reader_blocks(clip):
    with Source(SourceConfig("slow", str(clip), interval_s=0.25, queue_size=2)) as src:
        first = src.read(timeout=5)
        time.sleep(0.3)
        # the reader is parked on the full queue: one frame taken, two queued, at most one in hand
        assert src.counters["frames_sampled"] <= 4
        depths = []
        frames = [first]
        while not src.finished:
            depths.append(src.queue_depth)
            sample = src.read(timeout=2)
            if sample is not None:
                frames.append(sample)
                time.sleep(0.02)
    assert [f.seq for f in frames] == list(range(24))
    assert max(depths) <= 2
    assert src.counters["dropped"] == 0


def test_file_state_transitions_in_order(clip):
    rec = Recorder()
    src = Source(SourceConfig("t", str(clip), interval_s=2.0), on_status=rec)
    assert src.state is S.CONNECTING
    src.start()
    drain(src)
    src.stop()
    assert [(s.previous, s.state, s.kind) for s in rec.statuses] == [
        (S.CONNECTING, S.STREAMING, "source_up"),
        (S.STREAMING, S.STOPPED, "finished"),
    ]
    assert_legal_history(rec)


def test_folder_in_name_order_with_corrupt_image_skipped(tmp_path):
    colours = {"b.png": (0, 200, 0), "a.png": (200, 0, 0), "d.png": (0, 0, 200)}
    for name, rgb in colours.items():
        write_png(tmp_path / name, np.full((16, 24, 3), rgb, np.uint8))
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))  # corrupt, sorts between b and d
    (tmp_path / "notes.txt").write_text("not an image")
    rec = Recorder()
    with Source(SourceConfig("folder", str(tmp_path), interval_s=2.0), on_status=rec) as src:
        assert src.kind == "folder"
        frames = drain(src)
    assert [tuple(f.image[0, 0]) for f in frames] == [(200, 0, 0), (0, 200, 0), (0, 0, 200)]  # a, b, d
    assert [f.pts_s for f in frames] == [0.0, 2.0, 6.0]  # index * interval; the corrupt c.png leaves its gap
    assert src.counters["decode_errors"] == 1
    errors = [s for s in rec.statuses if s.kind == "source_error"]
    assert len(errors) == 1 and "c.png" in errors[0].message
    assert rec.statuses[-1].kind == "finished" and src.state is S.STOPPED


def test_realtime_file_behaves_like_live(clip):
    rec = Recorder()
    cfg = SourceConfig("rt", str(clip), interval_s=0.1, realtime=True, queue_size=2)
    with Source(cfg, on_status=rec) as src:
        assert src.is_live and src.buffer_policy is BufferPolicy.LATEST
        depths, frames = [], []
        began = time.monotonic()
        while len(frames) < 5:
            depths.append(src.queue_depth)
            sample = src.read(timeout=5)
            assert sample is not None
            frames.append(sample)
            time.sleep(0.25)  # a consumer 2.5x slower than the 10 fps clip
        read_so_far, elapsed = src.counters["frames_read"], time.monotonic() - began
    assert max(depths) <= 2  # bounded memory: the queue never exceeds queue_size
    assert src.counters["dropped"] > 0
    # paced at 10 fps against the clock, not decoded at file speed (all 60 at once); a busy host only reads fewer
    assert read_so_far <= 10 * elapsed + 3, (read_so_far, elapsed)
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] > len(seqs) - 1  # gaps: the newest frames won
    drops = [s for s in rec.statuses if s.kind == "drops"]
    assert len(drops) == 1 and "discarded" in drops[0].message  # rate-limited: one report per 5 s


def test_file_with_latest_policy_and_a_slow_consumer_drops_frames(clip):
    rec = Recorder()
    cfg = SourceConfig("latest", str(clip), interval_s=0.1, queue_size=2, buffer="latest")
    with Source(cfg, on_status=rec) as src:
        assert not src.is_live and src.buffer_policy is BufferPolicy.LATEST
        first = src.read(timeout=5)
        assert rec.wait_for("finished", timeout=30) is not None  # the consumer sleeps through the whole file
        frames = [first] + drain(src)
    c = src.counters
    assert c["frames_sampled"] == 60 and c["dropped"] > 0
    assert len(frames) + c["dropped"] == 60  # every sampled frame was either delivered or counted as dropped
    assert len(frames) <= 1 + cfg.queue_size + 1  # the first, the newest queue_size, at most one in flight
    assert frames[-1].seq == 59  # the newest frame won
    assert "discarded" in [s for s in rec.statuses if s.kind == "drops"][0].message


def test_realtime_file_with_wait_policy_drops_nothing(short_clip):
    cfg = SourceConfig("wait", str(short_clip), interval_s=0.1, realtime=True, queue_size=1, buffer=BufferPolicy.WAIT)
    with Source(cfg) as src:
        assert src.is_live and src.buffer_policy is BufferPolicy.WAIT
        frames = []
        while (sample := src.read(timeout=10)) is not None:
            frames.append(sample)
            time.sleep(0.2)  # a consumer 2x slower than the clip's 10 fps
    assert [f.seq for f in frames] == list(range(10))
    assert src.counters["dropped"] == 0 and src.state is S.STOPPED


@pytest.mark.parametrize("value, expected", [(None, None), ("wait", BufferPolicy.WAIT),
                                             ("latest", BufferPolicy.LATEST), (BufferPolicy.WAIT, BufferPolicy.WAIT)])
def test_buffer_policy_accepts_enum_or_its_value(value, expected):
    assert SourceConfig("c", "clip.mp4", buffer=value).buffer is expected


@pytest.mark.parametrize("value", ["newest", "", 1, True, "LATEST "])
def test_buffer_policy_rejects_anything_else_in_one_line(value):
    with pytest.raises(SourceError, match="buffer must be one of 'latest', 'wait'") as info:
        SourceConfig("c", "clip.mp4", buffer=value)
    assert "\n" not in str(info.value)


def test_default_buffer_policy_follows_the_kind(tmp_path):
    assert Source(SourceConfig("f", "clip.mp4")).buffer_policy is BufferPolicy.WAIT
    assert Source(SourceConfig("d", str(tmp_path))).buffer_policy is BufferPolicy.WAIT
    assert Source(SourceConfig("r", "clip.mp4", realtime=True)).buffer_policy is BufferPolicy.LATEST
    for url in ("rtsp://cam/s1", "https://cam/live.m3u8", 0):
        assert Source(SourceConfig("l", url)).buffer_policy is BufferPolicy.LATEST


# --------------------------------------------------------------------------------------------------------------------
# state machine, config, API contract
# --------------------------------------------------------------------------------------------------------------------

def test_state_machine_has_no_dead_ends_and_terminal_states_are_final():
    def reachable(start):
        seen, todo = {start}, [start]
        while todo:
            for nxt in ALLOWED_TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reachable(S.CONNECTING) == set(S)  # every state can happen
    assert TERMINAL_STATES == {S.STOPPED, S.FAILED}
    for state in set(S) - TERMINAL_STATES:  # every live state can still stop, and fail
        assert TERMINAL_STATES <= reachable(state), state
        assert S.STOPPED in ALLOWED_TRANSITIONS[state]  # stop() works from anywhere
    for terminal in TERMINAL_STATES:
        for new in S:
            with pytest.raises(RuntimeError, match=f"illegal source state transition {terminal.name} -> "):
                check_transition(terminal, new)
    with pytest.raises(RuntimeError, match="allowed from STREAMING: FAILED, RECONNECTING, STOPPED"):
        check_transition(S.STREAMING, S.CONNECTING)


def test_stop_before_start_and_restart_refused(clip):
    rec = Recorder()
    src = Source(SourceConfig("never", str(clip)), on_status=rec)
    src.stop()
    src.stop()  # twice is fine
    assert src.state is S.STOPPED and src.finished and src.read(timeout=0) is None
    assert [(s.previous, s.state, s.kind) for s in rec.statuses] == [(S.CONNECTING, S.STOPPED, "finished")]
    with pytest.raises(SourceError, match="already started"):
        src.start()
    with pytest.raises(SourceError, match="call start"):
        Source(SourceConfig("fresh", str(clip))).read(timeout=0)


@pytest.mark.parametrize("bad", [
    dict(interval_s=0),  # zero interval
    dict(interval_s=float("nan")),  # NaN passes a naive "> 0" check in no direction
    dict(read_timeout_s=-1),
    dict(reconnect_min_s=5, reconnect_max_s=1),  # min above max
    dict(queue_size=0),
    dict(max_reconnects=-1),
    dict(name=""),
    dict(name="cam\nforged log line"),  # names go into log lines and thread names
    dict(url=""),
])
def test_config_rejects_bad_values(bad):
    values = dict(name="c", url="clip.mp4") | bad
    with pytest.raises(SourceError):
        SourceConfig(**values)


def test_config_repr_masks_password():
    cfg = SourceConfig("door", "rtsp://admin:hunter2@10.0.0.5/s1")
    assert "hunter2" not in repr(cfg) and "hunter2" not in repr(Source(cfg))


def test_status_kind_is_an_enum_that_compares_as_its_string():
    status = SourceStatus("c", S.STREAMING, S.CONNECTING, datetime.now(timezone.utc), "up", "source_up")
    assert status.kind is StatusKind.SOURCE_UP and status.kind == "source_up" and f"{status.kind}" == "source_up"
    with pytest.raises(ValueError):
        SourceStatus("c", S.STREAMING, S.CONNECTING, status.wall_utc, "?", "source_sideways")


def test_concurrent_start_starts_exactly_one_reader(clip, monkeypatch):
    # Regression (issue 11, bug 8): start() checked its started flag and set it under two lock acquisitions, so
    # threads calling start() at once could each pass the check and start a reader of their own. A slow first
    # import of PyAV (inside that window) makes the race certain rather than likely.
    real_preload = decoding.preload_av

    def slow_preload():
        real_preload()
        time.sleep(0.05)

    monkeypatch.setattr(decoding, "preload_av", slow_preload)
    src = Source(SourceConfig("once", str(clip), interval_s=1.0))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def call_start():
        barrier.wait()
        try:
            src.start()
            outcomes.append("started")
        except SourceError as exc:
            outcomes.append(str(exc))

    callers = [threading.Thread(target=call_start) for _ in range(8)]
    for th in callers:
        th.start()
    for th in callers:
        th.join(30)
    assert outcomes.count("started") == 1, outcomes
    assert all("already started" in o for o in outcomes if o != "started")
    frames = drain(src)
    src.stop()
    assert [f.seq for f in frames] == list(range(6))  # one reader: each sampled frame once
    assert src.counters["frames_read"] == 60


def test_request_stop_does_not_wait_for_the_reader(clip):
    entered, release = threading.Event(), threading.Event()

    def blocking_callback(status):
        if status.kind == "source_up":
            entered.set()
            release.wait(30)  # the reader thread is busy (as in a slow open or read) until released

    srcs = [Source(SourceConfig(f"busy{i}", str(clip)), on_status=blocking_callback).start() for i in range(3)]
    try:
        assert entered.wait(10)
        returned = threading.Event()

        def stop_all():
            for s in srcs:
                s.request_stop()
            returned.set()

        threading.Thread(target=stop_all, daemon=True).start()
        assert returned.wait(10), "request_stop() waited for a busy reader"
        assert any(s.join(timeout=0) is False for s in srcs)  # at least the blocked one still runs
    finally:
        release.set()
    assert all(s.join(timeout=15) for s in srcs)
    assert all(s.state is S.STOPPED for s in srcs) and not source_threads()
    never = Source(SourceConfig("never", str(clip)))
    assert never.join(timeout=0)  # nothing to wait for


def test_callback_failure_is_logged_with_its_masked_message(caplog):
    # Regression (issue 11, bug 9): only the exception type was logged ("on_status callback raised ValueError").
    caplog.set_level(logging.WARNING, logger="edgecap")
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/x"

    called = threading.Event()

    def explode(status):
        called.set()
        raise ValueError(f"consumer bug 42 while posting {url}\nsecond line")

    with Source(SourceConfig("cbm", url, **FAST), on_status=explode):
        assert called.wait(20)
    # stop() joined the reader, so the failed call was logged
    lines = [r.getMessage() for r in caplog.records if "callback raised" in r.getMessage()]
    assert lines and all("ValueError: consumer bug 42 while posting rtsp://admin:***@127.0.0.1" in ln for ln in lines)
    assert not any("hunter2" in ln or "\n" in ln for ln in lines)


def test_callback_exception_does_not_kill_reader(clip):
    def explode(status):
        raise ValueError("consumer bug")

    with Source(SourceConfig("cb", str(clip), interval_s=1.0), on_status=explode) as src:
        assert len(drain(src)) == 6
    assert src.state is S.STOPPED


def test_open_sources_all_or_nothing(clip, tmp_path):
    with pytest.raises(SourceError, match="duplicate camera name"):
        open_sources([SourceConfig("a", str(clip)), SourceConfig("a", str(clip))])
    before = {t.ident for t in source_threads()}
    with pytest.raises(SourceError, match="not found"):
        open_sources([SourceConfig("ok", str(clip)), SourceConfig("missing", str(tmp_path / "nope.mp4"))])
    assert {t.ident for t in source_threads()} <= before  # the started one was stopped (and joined)
    srcs = open_sources([SourceConfig("one", str(clip), interval_s=3.0), SourceConfig("two", str(clip),
                                                                                       interval_s=3.0)])
    assert [len(drain(s)) for s in srcs] == [2, 2]
    for s in srcs:
        s.stop()


# --------------------------------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, masked", [
    ("rtsp://user:pass@cam.local/s1", "rtsp://user:***@cam.local/s1"),  # plain password
    ("rtsp://user:p%40ss@10.0.0.5:554/s1", "rtsp://user:***@10.0.0.5:554/s1"),  # %-encoded '@'
    ("rtsp://user:p@ss@host/s1", "rtsp://user:***@host/s1"),  # raw '@' in the password: last '@' before the host
    ("rtsp://user:pa:ss@host/s1", "rtsp://user:***@host/s1"),  # ':' in the password
    ("rtsp://user:pa/ss@host/s1", "rtsp://user:***@host/s1"),  # raw '/' in the password ends the authority early
    ("rtsps://host:322/s1", "rtsps://host:322/s1"),  # no credentials
    ("rtsp://admin@host/s1", "rtsp://admin@host/s1"),  # user without password is not a secret
    ("rtsp://me@mail.org:pw@host/s1", "rtsp://me@mail.org:***@host/s1"),  # e-mail as user name
    ("rtsp://u:pw@[::1]:8554/s1", "rtsp://u:***@[::1]:8554/s1"),  # IPv6 host
    ("http://viewer:s3cret@cam/video.mjpg", "http://viewer:***@cam/video.mjpg"),  # HTTP basic auth
    ("http://cam/snap.cgi?user=a&password=s3cret&res=hd", "http://cam/snap.cgi?user=a&password=***&res=hd"),
    ("/data/cams/door.mp4", "/data/cams/door.mp4"),  # a path is not a URL
    ("weird text: not a url", "weird text: not a url"),
    (0, "0"),  # webcam index
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize("url, kind", [
    ("rtsp://cam/s1", "rtsp"),
    ("rtsps://cam/s1", "rtsp"),
    ("RTSP://cam/s1", "rtsp"),  # schemes are case-insensitive
    ("http://cam/video.mjpg", "http"),
    ("https://cam/live.m3u8", "http"),
    ("/dev/video0", "webcam"),
    (1, "webcam"),
    ("2", "webcam"),  # digit string from a command line
    ("\xb2", "file"),  # a superscript two is a digit to str.isdigit, not a webcam index (it reconnected forever)
    ("clip.mp4", "file"),  # existence is start()'s business
    ("2024-05-01.mp4", "file"),
    ("./odd:name.mp4", "file"),  # a ':' after a '/' is not a protocol
])
def test_classify_source(url, kind):
    assert classify_source(url) == kind


def test_classify_folder(tmp_path):
    assert classify_source(str(tmp_path)) == "folder"


@pytest.mark.parametrize("url, reason", [
    ("ftp://cam/x.mp4", "unsupported"),
    ("gopher://cam/x", "unsupported"),
    ("rtmp://cam/live", "unsupported"),
    ("file:/etc/passwd", "refused"),  # local file behind a camera entry
    ("file:///etc/passwd", "refused"),
    ("concat:/a.mp4|/b.mp4", "refused"),
    ("pipe:0", "refused"),
    ("subfile,,start,0,end,9,,:/etc/passwd", "refused"),  # FFmpeg's ',options,:' protocol syntax
    ("data:video/mp4;base64,AAAA", "refused"),
    ("crypto:http://cam/x", "refused"),
    ("tcp://127.0.0.1:554", "refused"),
    ("udp://0.0.0.0:1234", "refused"),
    ("hls+http://cam/x.m3u8", "refused"),  # nested protocol
    ("ftp://admin:hunter2@cam/x", "unsupported"),  # and the message stays masked
])
def test_classify_refuses(url, reason):
    with pytest.raises(SourceError, match=reason) as info:
        classify_source(url)
    message = str(info.value)
    assert "\n" not in message and "hunter2" not in message and "expected" in message


# --------------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------------

def test_start_fails_fast_for_missing_path_and_bad_scheme(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match="not found") as info:
        Source(SourceConfig("m", str(missing))).start()
    assert "\n" not in str(info.value) and str(missing) in str(info.value)
    with pytest.raises(SourceError, match="refused"):
        Source(SourceConfig("p", "pipe:0")).start()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        Source(SourceConfig("e", str(tmp_path / "empty"))).start()
    os.mkfifo(tmp_path / "fifo.mp4")  # opening a FIFO would block the reader forever
    with pytest.raises(SourceError, match="not a regular file"):
        Source(SourceConfig("f", str(tmp_path / "fifo.mp4"))).start()
    assert not source_threads()


def _corrupt(kind: str, clip: Path, clip_ts: bytes, tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    data = clip.read_bytes()
    if kind == "random":
        body = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    elif kind == "empty":
        body = b""
    elif kind == "truncated_mp4":  # moov at the end: nothing to index
        body = data[: len(data) // 2]
    elif kind == "truncated_ts":
        body = clip_ts[: len(clip_ts) // 3 + 101]
    elif kind == "flipped_mp4":
        arr = bytearray(data)
        for i in rng.integers(2000, len(arr) - 4000, 300):
            arr[i] ^= 0xFF
        body = bytes(arr)
    else:  # wrong extension: MPEG-TS called .png
        body = clip_ts
    path = tmp_path / f"{kind}.{'png' if kind == 'wrong_ext' else 'mp4'}"
    path.write_bytes(body)
    return path


@pytest.mark.parametrize("kind", ["random", "empty", "truncated_mp4", "truncated_ts", "flipped_mp4", "wrong_ext"])
def test_corrupt_file_gives_frames_or_one_typed_error(clip, clip_ts, tmp_path, kind):
    path = _corrupt(kind, clip, clip_ts, tmp_path)
    rec = Recorder()
    with Source(SourceConfig("bad", str(path), interval_s=0.5), on_status=rec) as src:
        frames = drain(src, limit_s=30)  # a guard against a hang, not a speed bound
    assert src.state in (S.STOPPED, S.FAILED)
    assert_legal_history(rec)
    if src.state is S.FAILED:
        last = rec.statuses[-1]
        assert last.kind == "source_error" and last.state is S.FAILED and path.name in last.message
    else:
        assert frames and rec.statuses[-1].kind == "finished"
    assert not any(t.is_alive() for t in source_threads())


def test_unexpected_exception_in_reader_becomes_status(clip, monkeypatch):
    def broken_open(*args, **kwargs):  # PyAV raised UnicodeDecodeError on a corrupt faststart mp4 (RELIABILITY 10)
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(av, "open", broken_open)
    rec = Recorder()
    with Source(SourceConfig("u", str(clip)), on_status=rec) as src:
        drain(src, limit_s=5)
    assert src.state is S.FAILED
    assert rec.statuses[-1].kind == "source_error" and "UnicodeDecodeError" in rec.statuses[-1].message


# --------------------------------------------------------------------------------------------------------------------
# live sources against loopback servers
# --------------------------------------------------------------------------------------------------------------------

def test_refused_port_reconnects_with_backoff(caplog):
    caplog.set_level(logging.INFO, logger="edgecap")
    rec = Recorder()
    port = free_port()
    src = Source(SourceConfig("refused", f"rtsp://127.0.0.1:{port}/x", **FAST), on_status=rec)
    began = time.monotonic()
    src.start()
    assert src.is_live
    assert rec.wait_for("reconnecting", count=2, timeout=30) is not None
    src.stop(timeout=30)
    elapsed = time.monotonic() - began
    assert not any(t.is_alive() for t in source_threads())
    attempts = src.counters["reconnects"]
    # backoff 0.05 -> 0.1 -> 0.2 (x [0.75, 1] jitter) under the global cap of 2/s: never a tight loop
    assert 1 < attempts <= GLOBAL_RECONNECT_BURST + GLOBAL_RECONNECTS_PER_S * elapsed + 1
    kinds = rec.kinds()
    assert kinds.count("source_down") == 1 and kinds.count("reconnecting") == attempts
    assert kinds[-1] == "finished" and src.state is S.STOPPED
    assert "Connection refused" in rec.statuses[0].message
    assert_legal_history(rec)
    # statuses are logged at their kind's severity: the outage once at ERROR, its further attempts at INFO
    levels = {(r.getMessage().split("] ", 1)[1].split(":", 1)[0], r.levelno) for r in caplog.records
              if r.getMessage().startswith("[refused] ")}
    assert levels == {("source_down", logging.ERROR), ("reconnecting", logging.INFO), ("finished", logging.INFO)}
    # an outage is ended by the finish, not by the attempts inside it
    assert [s.kind.ends_outage for s in rec.statuses] == [True] + [False] * attempts + [True]


def test_global_reconnect_rate_cap_across_sources():
    port = free_port()
    cfg = dict(open_timeout_s=0.5, read_timeout_s=0.5, reconnect_min_s=0.01, reconnect_max_s=0.02)
    srcs = [Source(SourceConfig(f"herd{i}", f"rtsp://127.0.0.1:{port}/{i}", **cfg)) for i in range(6)]
    began = time.monotonic()
    for s in srcs:
        s.start()
    time.sleep(1.5)
    for s in srcs:
        s.stop()
    elapsed = time.monotonic() - began
    total = sum(s.counters["reconnects"] for s in srcs)
    # uncapped, 6 sources with 10-20 ms backoff would try ~500 times
    assert 1 <= total <= GLOBAL_RECONNECT_BURST + GLOBAL_RECONNECTS_PER_S * elapsed + 1
    assert not any(t.is_alive() for t in source_threads())


def test_silent_server_open_times_out(serve):
    srv = serve(silent)
    rec = Recorder()
    cfg = SourceConfig("silent", f"rtsp://127.0.0.1:{srv.port}/x", **FAST)
    with Source(cfg, on_status=rec):
        assert rec.wait_for("source_down", timeout=30) is not None  # without the open timeout: never
    assert srv.accepted >= 1
    assert "no answer within 0.5 s" in rec.statuses[0].message


def test_stop_interrupts_a_blocked_read(serve, clip_ts):
    srv = serve(http_stream(clip_ts[: len(clip_ts) // 2], stall=True))
    rec = Recorder()
    src = Source(SourceConfig("blocked", f"http://127.0.0.1:{srv.port}/live.ts", interval_s=0.1,
                              open_timeout_s=10, read_timeout_s=30), on_status=rec).start()
    assert rec.wait_for("source_up", timeout=10) is not None
    time.sleep(0.5)  # the buffered half is consumed; the reader now waits in av_read_frame for up to 30 s
    assert src.state is S.STREAMING
    assert src.join(timeout=0.2) is False  # blocked, as a stalled camera blocks it
    src.request_stop()
    assert src.join(timeout=15), "stop did not interrupt the blocked read (it would end by the 30 s read timeout)"
    assert not any(t.is_alive() for t in source_threads())
    assert src.state is S.STOPPED and rec.kinds()[-1] == "finished"


def test_stall_detected_by_the_read_watchdog(serve, clip_ts):
    # The 2x-read-timeout bound is measured against a real server in test_rtsp.py; here: the watchdog fires.
    srv = serve(http_stream(clip_ts[: len(clip_ts) // 2], stall=True))
    rec = Recorder()
    cfg = SourceConfig("stall", f"http://127.0.0.1:{srv.port}/live.ts", interval_s=0.1, open_timeout_s=5,
                       read_timeout_s=0.5, reconnect_min_s=5, reconnect_max_s=5)
    with Source(cfg, on_status=rec):
        assert rec.wait_for("source_up", timeout=10) is not None
        assert rec.wait_for("source_down", timeout=20) is not None  # the server holds the socket open for 10 s
    message = [s for s in rec.statuses if s.kind == "source_down"][0].message
    assert "no frame within 0.5 s" in message


def test_gracefully_ended_live_stream_counts_as_disconnect(serve, clip_ts):
    srv = serve(http_stream(clip_ts, stall=False))
    rec = Recorder()
    cfg = SourceConfig("ended", f"http://127.0.0.1:{srv.port}/live.ts", interval_s=1.0, **FAST)
    with Source(cfg, on_status=rec) as src:
        assert rec.wait_for("source_up", count=2, timeout=5) is not None  # up, ended, reconnected, up again
        kinds = rec.kinds()
        counters = src.counters
    assert kinds[:3] == ["source_up", "source_down", "source_up"]
    assert "the stream ended" in rec.statuses[1].message
    assert counters["reconnects"] >= 1 and counters["frames_read"] >= 60
    # a burst of 60 frames arriving in far less than interval_s: sampled by the clock, one per connection
    assert counters["frames_sampled"] <= counters["reconnects"] + 1
    assert_legal_history(rec)


def test_live_stream_with_wait_policy_is_not_down_while_the_consumer_is_slow(serve, clip_ts):
    # A reader waiting for a slow consumer (BufferPolicy.WAIT) receives no frame meanwhile; that is not a silent
    # camera, so the read watchdog must not count the wait.
    srv = serve(http_stream(clip_ts, stall=False))
    rec = Recorder()
    cfg = SourceConfig("patient", f"http://127.0.0.1:{srv.port}/live.ts", interval_s=0.001, queue_size=1,
                       buffer="wait", open_timeout_s=5, read_timeout_s=0.3, reconnect_min_s=5, reconnect_max_s=5)
    with Source(cfg, on_status=rec) as src:
        frames = []
        for _ in range(3):
            sample = src.read(timeout=10)
            assert sample is not None
            frames.append(sample)
            time.sleep(1.0)  # over three times the read timeout
        src.request_stop()
    assert src.counters["dropped"] == 0 and [f.seq for f in frames] == [0, 1, 2]
    assert "source_down" not in rec.kinds(), [s.message for s in rec.statuses]


def test_auth_failure_backs_off_longer(serve):
    srv = serve(rtsp_401)
    rec = Recorder()
    cfg = SourceConfig("auth", f"rtsp://admin:Wr0ng%40pw@127.0.0.1:{srv.port}/x", auth_backoff_s=30, **FAST)
    with Source(cfg, on_status=rec) as src:
        assert rec.wait_for("source_down", timeout=10) is not None
        time.sleep(0.5)  # a refused port would have been retried several times by now
        assert src.counters["reconnects"] == 0 and src.state is S.RECONNECTING
    message = rec.statuses[0].message
    assert "authentication failed" in message and "401" in message
    assert "Wr0ng" not in message and "admin:***@" in message
    assert float(message.rsplit("in ", 1)[1].split(" s")[0]) >= 0.75 * 30


def test_max_reconnects_then_failed():
    rec = Recorder()
    cfg = SourceConfig("giveup", f"rtsp://127.0.0.1:{free_port()}/x", max_reconnects=1, open_timeout_s=0.5,
                       read_timeout_s=0.5, reconnect_min_s=0.02, reconnect_max_s=0.05)
    with Source(cfg, on_status=rec) as src:
        drain(src, limit_s=20)
    assert src.state is S.FAILED and src.counters["reconnects"] == 1
    assert rec.kinds() == ["source_down", "source_error"] and "giving up" in rec.statuses[-1].message


def test_hls_playlist_cannot_reach_local_files(serve, tmp_path, clip):
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6.0,\nfile:{clip}\n#EXT-X-ENDLIST\n".encode()

    def handler(conn, closed):
        read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n\r\n" + playlist)

    srv = serve(handler)
    rec = Recorder()
    with Source(SourceConfig("hls", f"http://127.0.0.1:{srv.port}/p.m3u8", **FAST), on_status=rec) as src:
        assert rec.wait_for("source_down", timeout=10) is not None
        assert src.counters["frames_read"] == 0


def test_secrets_never_leak(serve, clip, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="edgecap")
    raw, decoded = "S3cr%40t%2Fpw", "S3cr@t/pw"
    auth_srv, silent_srv = serve(rtsp_401), serve(silent)
    urls = [f"rtsp://admin:{raw}@127.0.0.1:{free_port()}/refused",
            f"rtsp://admin:{raw}@127.0.0.1:{auth_srv.port}/auth",
            f"rtsp://admin:{raw}@127.0.0.1:{silent_srv.port}/timeout",
            f"http://admin:{raw}@127.0.0.1:{free_port()}/x.mjpg?password={raw}"]
    rec = Recorder()
    srcs = [Source(SourceConfig(f"s{i}", url, **FAST), on_status=rec).start() for i, url in enumerate(urls)]
    rec.wait_for("source_down", count=len(urls), timeout=10)
    texts = [repr(s) for s in srcs] + [repr(s.cfg) for s in srcs]
    for s in srcs:
        s.stop()
    for bad in (f"ftp://admin:{raw}@cam/x", f"concat:rtsp://admin:{raw}@cam/x"):
        with pytest.raises(SourceError) as info:
            Source(SourceConfig("x", bad)).start()
        texts.append(str(info.value))
    out, err = capfd.readouterr()
    texts += [s.message for s in rec.statuses] + [r.getMessage() for r in caplog.records] + [out, err]
    assert len(rec.statuses) >= len(urls)
    for text in texts:
        assert raw not in text and decoded not in text and "S3cr" not in text, text


# --------------------------------------------------------------------------------------------------------------------
# webcams without a camera: the OpenCV fallback
# --------------------------------------------------------------------------------------------------------------------

class FakeCapture:
    """cv2.VideoCapture stand-in: five BGR frames (blue 10, red 200), then the device goes away."""

    def __init__(self, device):
        self.device, self.n, self.released = device, 0, False

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        self.n += 1
        time.sleep(0.01)
        if self.n > 5:
            return False, None
        bgr = np.zeros((4, 6, 3), np.uint8)
        bgr[..., 0], bgr[..., 2] = 10, 200
        return True, bgr

    def release(self):
        self.released = True


def test_webcam_falls_back_to_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(VideoCapture=FakeCapture))
    monkeypatch.setattr(decoding, "webcam_input", lambda url: None)  # as on a PyAV build without v4l2
    rec = Recorder()
    cfg = SourceConfig("usb", "0", interval_s=0.001, **FAST)
    with Source(cfg, on_status=rec) as src:
        sample = src.read(timeout=10)
        assert rec.wait_for("source_down", timeout=10) is not None  # the device went away: reconnect
    assert sample is not None and sample.pts_s is None
    assert tuple(sample.image[0, 0]) == (200, 0, 10)  # RGB
    assert "the stream ended" in [s for s in rec.statuses if s.kind == "source_down"][0].message


def test_webcam_without_any_backend_fails_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    monkeypatch.setattr(decoding, "webcam_input", lambda url: None)
    rec = Recorder()
    with Source(SourceConfig("usb", 0, **FAST), on_status=rec) as src:
        drain(src, limit_s=3)
    assert src.state is S.FAILED and "opencv-python-headless" in rec.statuses[-1].message


# --------------------------------------------------------------------------------------------------------------------
# soak-lite: threads and file descriptors return to baseline
# --------------------------------------------------------------------------------------------------------------------

def test_no_leaked_threads_or_fds(clip, serve, clip_ts):
    srv = serve(http_stream(clip_ts[: len(clip_ts) // 2], stall=True))
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("needs /proc")
    refused = f"rtsp://127.0.0.1:{free_port()}/x"
    for warmup in (True, False):
        baseline = len(os.listdir(fd_dir))
        for i in range(1 if warmup else 12):
            for url in (str(clip), f"http://127.0.0.1:{srv.port}/x.ts", refused):
                src = Source(SourceConfig(f"cycle{i}", url, interval_s=0.5, **FAST)).start()
                if url == refused:
                    time.sleep(0.01)
                else:
                    assert src.read(timeout=10) is not None
                src.stop(timeout=2)
        assert not any(t.is_alive() for t in source_threads())
    deadline = time.monotonic() + 2  # the server closes its side when it notices the client left
    while len(os.listdir(fd_dir)) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir(fd_dir)) <= baseline


@pytest.mark.slow
def test_first_pyav_import_is_not_raced_by_reader_threads(clip, tmp_path):
    # Regression: PyAV imported for the first time by several threads at once can expose a partially initialised
    # module ("module 'av' has no attribute 'open'", "cannot import name ... partially initialized module"),
    # failing good cameras at start-up. Seen with `edgecap run good.mp4 bad.mp4 rtsp://...`: in 5 of 20 fresh
    # interpreters before the fix. Ten fresh interpreters that have not imported av start two good files, a corrupt
    # file and a network source; both good files must deliver frames in every one.
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    script = tmp_path / "race.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from edgecap.sources import Source, SourceConfig
        assert "av" not in sys.modules
        srcs = [Source(SourceConfig(name=f"c{{i}}", url={str(clip)!r}, interval_s=1.0)).start() for i in range(2)]
        srcs.append(Source(SourceConfig(name="bad", url={str(bad)!r}, interval_s=1.0)).start())
        srcs.append(Source(SourceConfig(name="net", url="rtsp://127.0.0.1:9/x", interval_s=1.0)).start())
        got = [s.read(timeout=20) is not None for s in srcs[:2]]
        for s in srcs:
            s.stop()
        print(got)
        sys.exit(0 if all(got) else 1)
    """))
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(10)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    failed = [out[-1500:] for p, out in zip(procs, outputs) if p.returncode != 0]
    assert not failed, f"{len(failed)} of 10 start-ups lost a good camera:\n{failed[0]}"


# --------------------------------------------------------------------------------------------------------------------
# edgecap.video: batch sampling through a Source
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interval", [0.5, 1.0, 0.35])
def test_sample_frames_yields_what_a_source_yields(clip, interval):
    with Source(SourceConfig("ref", str(clip), interval_s=interval)) as src:
        expected = drain(src)
    got = list(sample_frames(clip, interval))
    assert [f.pts_s for f in got] == [f.pts_s for f in expected]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, expected))
    assert len(got) == len(expected) > 0


def test_sample_frames_raises_one_line_for_bad_input(clip, tmp_path, caplog):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for path, fragment in ((tmp_path / "missing.mp4", "not found"), (bad, "noise.mp4")):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="edgecap"), pytest.raises(SourceError, match=fragment) as info:
            list(sample_frames(path, 1.0))
        assert "\n" not in str(info.value)
        # the exception is the one report: the reader's statuses stay at DEBUG (quantize printed them as ERROR lines
        # before its own one-line error)
        assert [r.getMessage() for r in caplog.records if r.levelno > logging.INFO] == []
    assert any("noise.mp4" in r.getMessage() for r in caplog.records)  # still there for --verbose
    with pytest.raises(SourceError, match="interval_s"):
        list(sample_frames(clip, 0))
    stream = sample_frames(clip, 0.1)
    next(stream)
    stream.close()  # leaving early stops the reader
    assert not any(t.is_alive() for t in source_threads())
