"""Real RTSP servers on loopback (GStreamer's gst-rtsp-server, tests/rtsp_server.py): kill, freeze, restart, 401.

Issue 6 acceptance: a killed and restarted camera gives source_down then source_up and captions resume with the
process alive; a frozen camera (SIGSTOP) is reported within 2x the read timeout and recovers after SIGCONT; a real
401 is classified and backed off; the password appears in no output, event or database row; reconnect cycles leak
no threads or file descriptors; a short soak keeps its invariants.

Select with ``pytest -m rtsp``. Skipped when /usr/bin/python3 cannot run the server (install with .ci/rtsp-deps),
unless EDGECAP_REQUIRE_RTSP=1, which turns the skip into a failure.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

import rtsp
from rtsp import RtspServer, established_to, rtsp_required
from source_helpers import Recorder, assert_legal_history, source_threads

from edgecap.sources import Source, SourceConfig, SourceState

pytestmark = pytest.mark.rtsp

S = SourceState
OPEN_S = 4.0  # FFmpeg probes ~30 frames before an RTSP stream opens: ~1 s at the servers' 30 fps
READ_S = 1.5
LIVE = dict(interval_s=0.1, open_timeout_s=OPEN_S, read_timeout_s=READ_S, reconnect_min_s=0.2, reconnect_max_s=0.5)
USER = "op@cam"  # special characters in the user name too
PASSWORD = "p@ss:w/rd%21#x"  # '@', ':', '/', '#' and a literal "%21": every one must be %-encoded in the URL
WRONG = "p@ss:w/rd%21#y"
REPO = Path(__file__).resolve().parent.parent
FD_DIR = "/proc/self/fd"


def require_rtsp() -> None:
    """Skip (or, with EDGECAP_REQUIRE_RTSP=1, fail) when the RTSP server cannot run here."""
    ok, why = rtsp.rtsp_available()
    if ok:
        return
    if rtsp_required():
        pytest.fail(f"{rtsp.REQUIRE_ENV}=1 but the RTSP test server cannot run: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def rtsp_server():
    """Start RtspServer(**kwargs) processes; all are closed after the test."""
    require_rtsp()
    servers: list[RtspServer] = []

    def start(**kwargs) -> RtspServer:
        servers.append(RtspServer(**kwargs).start())
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


def secret_forms(user: str, password: str) -> list[str]:
    """Every way a password could leak: raw, %-encoded (both quote flavours), and inside a Basic auth header."""
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return sorted({password, quote(password, safe=""), quote(password), basic, "w/rd%21", "w%2Frd", "rd%2521"})


def assert_no_secret(texts, forbidden) -> None:
    for text in texts:
        for secret in forbidden:
            assert secret not in text, f"password form {secret!r} leaked in: {text[:300]!r}"


def fresh_frame(src: Source, after: float, timeout: float = 10.0):
    """The first frame read from ``src`` at or after monotonic time ``after`` (older queued frames are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = src.read(timeout=0.5)
        if sample is not None and sample.mono >= after:
            return sample
    return None


def wait_until(predicate, timeout: float, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    return predicate()


def fd_count() -> int:
    return len(os.listdir(FD_DIR))


# --------------------------------------------------------------------------------------------------------------------
# the skip/fail switch itself
# --------------------------------------------------------------------------------------------------------------------

def test_missing_server_skips_or_fails_as_ci_requires(monkeypatch):
    monkeypatch.setattr(rtsp, "rtsp_available", lambda: (False, "no gst here"))
    monkeypatch.delenv(rtsp.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no gst here"):
        require_rtsp()
    monkeypatch.setenv(rtsp.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="EDGECAP_REQUIRE_RTSP=1 but .*no gst here"):
        require_rtsp()


# --------------------------------------------------------------------------------------------------------------------
# Source against a real server
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_low_frame_rate_camera_opens_within_the_default_open_timeout(rtsp_server):
    """Surveillance substreams run at a few frames per second. FFmpeg's default probe (5 s of stream) made a 5 fps
    camera take longer to open than the default open timeout, so it never came up; it must open on the first
    attempt, with its real size."""
    srv = rtsp_server(fps=5)
    rec = Recorder()
    defaults = SourceConfig("substream", srv.url())
    with Source(SourceConfig("substream", srv.url(), interval_s=0.1), on_status=rec).start() as src:
        assert rec.wait_for("source_up", timeout=2 * defaults.open_timeout_s) is not None, rec.kinds()
        frame = src.read(timeout=5)
    assert rec.kinds()[0] == "source_up", rec.kinds()
    assert frame is not None and frame.image.shape == (240, 320, 3)


@pytest.mark.skipif(not os.path.isdir(FD_DIR), reason="needs /proc")
@pytest.mark.slow
def test_kill_and_restart_cycles_recover_with_one_session_and_no_leaks(rtsp_server):
    srv = rtsp_server()
    warm = Source(SourceConfig("warmup", srv.url(), **LIVE)).start()  # PyAV/FFmpeg network init opens lasting fds
    assert warm.read(timeout=10) is not None
    warm.stop()
    threads_before = {t.ident for t in source_threads()}
    fds_before = fd_count()

    rec = Recorder()
    src = Source(SourceConfig("door", srv.url(), **LIVE), on_status=rec).start()
    assert rec.wait_for("source_up", timeout=10) is not None
    last = src.read(timeout=5)
    assert last is not None and last.image.shape == (240, 320, 3)
    cycles = 3
    for cycle in range(1, cycles + 1):
        killed = time.monotonic()
        srv.kill()
        down = rec.wait_for("source_down", count=cycle, timeout=10)
        assert down is not None, rec.kinds()
        assert down - killed <= 2 * READ_S  # a reset connection is noticed at once; the bound is the watchdog's
        assert src.state in (S.RECONNECTING, S.CONNECTING)
        time.sleep(0.3)  # refused for a while: the source keeps retrying
        restarted = time.monotonic()
        srv.start()
        up = rec.wait_for("source_up", count=cycle + 1, timeout=15)
        assert up is not None and up >= restarted, rec.kinds()
        sample = fresh_frame(src, after=up)
        assert sample is not None, "frames did not resume after the restart"
        assert sample.seq > last.seq and sample.image.shape == (240, 320, 3)
        last = sample
        assert wait_until(lambda: established_to(srv.port) == 1, timeout=3), "ghost or missing RTSP session"
    assert src.counters["reconnects"] >= cycles
    src.stop()
    kinds = rec.kinds()
    assert kinds.count("source_up") == cycles + 1 and kinds.count("source_down") == cycles
    assert [k for k in kinds if k in ("source_up", "source_down")] == ["source_up", "source_down"] * cycles + [
        "source_up"]
    assert kinds[-1] == "finished" and src.state is S.STOPPED
    assert_legal_history(rec)
    assert {t.ident for t in source_threads() if t.is_alive()} <= threads_before
    assert wait_until(lambda: fd_count() <= fds_before, timeout=3), (fd_count(), fds_before)
    assert wait_until(lambda: established_to(srv.port) == 0, timeout=3)


@pytest.mark.slow
def test_sigstop_stall_reported_within_twice_the_read_timeout_and_recovers(rtsp_server):
    srv = rtsp_server()
    rec = Recorder()
    src = Source(SourceConfig("frozen", srv.url(), **LIVE), on_status=rec).start()
    try:
        assert rec.wait_for("source_up", timeout=10) is not None
        assert src.read(timeout=5) is not None
        time.sleep(0.3)  # steady streaming
        paused = time.monotonic()
        srv.pause()
        down = rec.wait_for("source_down", timeout=4 * READ_S)
        assert down is not None, rec.kinds()
        # the bound of the issue; measured from before SIGSTOP, so scheduler delays only make it stricter
        assert down - paused <= 2 * READ_S, f"stall noticed after {down - paused:.2f} s"
        message = [s for s in rec.statuses if s.kind == "source_down"][0].message
        assert f"no frame within {READ_S:g} s" in message
        time.sleep(1.0)  # still frozen: no recovery can be reported
        assert rec.kinds().count("source_up") == 1 and src.state in (S.RECONNECTING, S.CONNECTING)
        resumed = time.monotonic()
        srv.resume()
        up = rec.wait_for("source_up", count=2, timeout=OPEN_S + 10)
        assert up is not None and up >= resumed, rec.kinds()
        assert fresh_frame(src, after=up) is not None
        assert wait_until(lambda: established_to(srv.port) == 1, timeout=3)
        # frozen again: stop() must not hang on the blocked read (SIGTERM during a blocked read, RELIABILITY 7)
        srv.pause()
        time.sleep(0.5)
        src.request_stop()
        assert src.join(timeout=10), "stop() hung on the blocked read"
    finally:
        src.stop()
        srv.resume()
    assert not any(t.is_alive() for t in source_threads())
    assert src.state is S.STOPPED
    assert_legal_history(rec)


@pytest.mark.slow
def test_real_401_is_classified_backed_off_and_masked(rtsp_server, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="edgecap")
    srv = rtsp_server(user=USER, password=PASSWORD)
    assert "%40" in srv.url() and "%2F" in srv.url() and "%2521" in srv.url() and "%23" in srv.url()
    wrong, anonymous, good = Recorder(), Recorder(), Recorder()
    fast_retry = dict(LIVE, reconnect_min_s=0.05, reconnect_max_s=0.1, auth_backoff_s=30.0)
    srcs = [Source(SourceConfig("wrong", srv.url(password=WRONG), **fast_retry), on_status=wrong),
            Source(SourceConfig("anon", f"rtsp://127.0.0.1:{srv.port}/cam", **fast_retry), on_status=anonymous),
            Source(SourceConfig("good", srv.url(), **fast_retry), on_status=good)]
    try:
        for src in srcs:
            src.start()
        for rec in (wrong, anonymous):
            assert rec.wait_for("source_down", timeout=5) is not None
        assert good.wait_for("source_up", timeout=10) is not None
        frame = srcs[2].read(timeout=5)
        assert frame is not None and frame.image.shape == (240, 320, 3)  # the right password streams
        time.sleep(1.0)  # with 0.05-0.1 s backoff, a failure not classified as auth would be retried ~10 times
        for src, rec in zip(srcs[:2], (wrong, anonymous)):
            assert src.counters["reconnects"] == 0 and src.state is S.RECONNECTING, rec.kinds()
            message = rec.statuses[0].message
            assert "authentication failed" in message and "401" in message
            assert float(message.rsplit("reconnecting in ", 1)[1].split(" s")[0]) >= 0.75 * 30
        assert "op%40cam:***@127.0.0.1" in wrong.statuses[0].message  # masked, not dropped
        # the timeout path with the right password: freeze the server
        srv.pause()
        assert good.wait_for("source_down", timeout=4 * READ_S) is not None
        texts = [repr(s) for s in srcs] + [repr(s.cfg) for s in srcs]
    finally:
        for src in srcs:
            src.stop()
        srv.resume()
    formatter = logging.Formatter("%(name)s %(message)s")
    out, err = capfd.readouterr()
    texts += [s.message for rec in (wrong, anonymous, good) for s in rec.statuses]
    texts += [formatter.format(r) for r in caplog.records] + [out, err]
    assert any("Traceback" in t for t in texts)  # debug logs carry the (scrubbed) tracebacks PyAV raised
    assert_no_secret(texts, secret_forms(USER, PASSWORD) + secret_forms(USER, WRONG))


# --------------------------------------------------------------------------------------------------------------------
# the `edgecap run` process
# --------------------------------------------------------------------------------------------------------------------

def query(db: Path, sql: str, *args) -> list[tuple]:
    """Read the live database of another process (WAL: readers do not block the writer)."""
    for _ in range(50):
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # not created yet, or schema being written
            time.sleep(0.1)
    return []


def count_kind(db: Path, camera: str, kind: str) -> int:
    return query(db, "SELECT COUNT(*) FROM events WHERE camera = ? AND kind = ?", camera, kind)[0][0] if \
        db.exists() else 0


def observations(db: Path, camera: str) -> int:
    rows = query(db, "SELECT COALESCE(SUM(observations), 0) FROM events WHERE camera = ? AND kind = 'scene'", camera)
    return rows[0][0] if rows else 0


def run_cli(tmp_path: Path, cameras: str, *extra: str, env: dict[str, str] | None = None,
            verbose: str = "-v") -> subprocess.Popen:
    config = tmp_path / "cameras.toml"
    config.write_text("[defaults]\n"
                      f"read_timeout = {READ_S}\nopen_timeout = {OPEN_S}\ninterval = 0.5\nmax_interval = 2\n\n"
                      + cameras)
    cmd = [sys.executable, "-m", "edgecap.cli", verbose, "run", "--config", str(config), "--db",
           str(tmp_path / "ev.sqlite"), "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """SIGTERM the run and collect its exit status and output (it must exit on its own within 20 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"edgecap run did not exit within 20 s of SIGTERM; stderr: {err[-2000:]}")
    return proc.returncode, out, err


@pytest.mark.slow
def test_edgecap_run_survives_server_kill_and_captions_resume(rtsp_server, tmp_path):
    srv = rtsp_server()
    db = tmp_path / "ev.sqlite"
    proc = run_cli(tmp_path, f'[[camera]]\nname = "door"\nurl = "{srv.url()}"\n')
    try:
        assert wait_until(lambda: proc.poll() is not None or observations(db, "door") >= 1, timeout=30)
        assert proc.poll() is None, finish(proc)
        srv.kill()
        assert wait_until(lambda: count_kind(db, "door", "source_down") >= 1, timeout=10), "no source_down stored"
        time.sleep(0.5)
        assert proc.poll() is None
        srv.start()
        assert wait_until(lambda: count_kind(db, "door", "source_up") >= 2, timeout=20), "no second source_up"
        captions_at_up = observations(db, "door")
        assert wait_until(lambda: observations(db, "door") > captions_at_up, timeout=15), "captions did not resume"
        assert proc.poll() is None, "edgecap run died"
    finally:
        code, out, err = finish(proc)
    assert code == 0, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    status = [k for (k,) in query(db, "SELECT kind FROM events WHERE camera = 'door' AND kind IN "
                                      "('source_up', 'source_down') ORDER BY id")]
    assert status == ["source_up", "source_down", "source_up"]
    # the outage is one closed event from the first failure to the recovery, whatever the number of attempts
    [(details, closed)] = query(db, "SELECT details, closed FROM events WHERE kind = 'source_down'")
    details = json.loads(details)
    assert closed == 1 and details["ended_by"] == "source_up" and details["attempts"] >= 1
    assert not query(db, "SELECT id FROM events WHERE kind = 'reconnecting'")
    assert "[door] sampled" in out and "reconnects" in out


@pytest.mark.slow
def test_edgecap_run_never_shows_or_stores_the_password(rtsp_server, tmp_path):
    srv = rtsp_server(user=USER, password=PASSWORD)
    db, jsonl = tmp_path / "ev.sqlite", tmp_path / "ev.jsonl"
    cameras = (f'[[camera]]\nname = "good"\nurl = "rtsp://127.0.0.1:{srv.port}/cam"\n'
               'username_env = "CAM_USER"\npassword_env = "CAM_PASS"\n\n'
               f'[[camera]]\nname = "wrong"\nurl = "rtsp://127.0.0.1:{srv.port}/cam"\n'
               'username_env = "CAM_USER"\npassword_env = "CAM_WRONG"\n')
    positional = srv.url(password=WRONG)  # a password typed on the command line is masked as well
    proc = run_cli(tmp_path, cameras, "--jsonl", str(jsonl), positional, verbose="-vv",
                   env={"CAM_USER": USER, "CAM_PASS": PASSWORD, "CAM_WRONG": WRONG})
    try:
        assert wait_until(lambda: proc.poll() is not None or (
            observations(db, "good") >= 1 and count_kind(db, "wrong", "source_down") >= 1
            and count_kind(db, "127.0.0.1_cam", "source_down") >= 1), timeout=30)
        assert proc.poll() is None, finish(proc)
        srv.pause()  # the timeout path of the camera that had the right password
        assert wait_until(lambda: count_kind(db, "good", "source_down") >= 1, timeout=4 * READ_S)
    finally:
        code, out, err = finish(proc)
        srv.resume()
    assert code == 0, err[-2000:]
    rows = query(db, "SELECT * FROM events")
    wrong_down = [r for r in query(db, "SELECT details FROM events WHERE camera = 'wrong' AND kind = 'source_down'")]
    assert wrong_down and "authentication failed" in wrong_down[0][0] and "***" in wrong_down[0][0]
    assert "op%40cam:***@127.0.0.1" in err  # the -vv log shows the masked URL
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "cameras.toml"]
    raw = b"".join(p.read_bytes() for p in files)  # database, WAL, JSONL, thumbnails
    assert jsonl in files and db in files
    texts = [out, err, dump, repr(rows), raw.decode("latin-1")]
    assert_no_secret(texts, secret_forms(USER, PASSWORD) + secret_forms(USER, WRONG))


# --------------------------------------------------------------------------------------------------------------------
# soak, short
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_short_soak_keeps_every_invariant(rtsp_server, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import soak
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    lines: list[str] = []
    report = soak.run_soak(minutes=2.0, max_faults=6, sources=2, fault_every_s=3.0, read_timeout_s=READ_S,
                           progress=False, workdir=tmp_path, say=lines.append)
    assert report["faults_total"] == 6 and set(report["faults"]) == set(soak.FAULT_KINDS), lines
    assert report["events"]["lost"] == 0 and report["events"]["acknowledged"] > 0
    assert report["outages"] >= report["faults_total"] and report["reconnect_attempts"] >= report["faults_total"]
    assert report["threads"]["end"] <= report["threads"]["baseline"]
    assert report["fds"]["end"] <= report["fds"]["baseline"]
    assert report["captioned"] > 0
    failed = [k for k, v in report["checks"].items() if not v]
    assert not failed, (failed, soak.format_table(report))
