"""Start, stop and break real RTSP servers (tests/rtsp_server.py under the system Python) for tests and the soak.

    if not rtsp_available()[0]: ...
    with RtspServer(user="op", password="p@ss") as srv:
        url = srv.url(password="p@ss")      # credentials %-encoded into the URL
        srv.pause(); srv.resume()            # SIGSTOP / SIGCONT: a stalled camera with its socket open
        srv.kill(); srv.start()              # SIGKILL, then the same port again

Every server binds 127.0.0.1 only and is killed at interpreter exit at the latest. EDGECAP_RTSP_PYTHON names
another interpreter than /usr/bin/python3 (one with python3-gi and the GstRtspServer typelib).
"""

from __future__ import annotations

import atexit
import functools
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

SYSTEM_PYTHON = os.environ.get("EDGECAP_RTSP_PYTHON", "/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
REQUIRE_ENV = "EDGECAP_REQUIRE_RTSP"
_CHECK = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [n for n in ("videotestsrc", "x264enc", "rtph264pay") if Gst.ElementFactory.find(n) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
"""
_LIVE: set[RtspServer] = set()


@functools.lru_cache(maxsize=1)
def rtsp_available() -> tuple[bool, str]:
    """(True, "") when the system Python can run the server, else (False, why); checked once per process."""
    hint = "real RTSP tests need GStreamer's RTSP server for the system Python; run .ci/rtsp-deps as root"
    if not os.path.exists(SYSTEM_PYTHON):
        return False, f"{hint} ({SYSTEM_PYTHON} not found)"
    try:
        proc = subprocess.run([SYSTEM_PYTHON, "-c", _CHECK], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{hint} ({SYSTEM_PYTHON} failed: {exc})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        return False, f"{hint} ({SYSTEM_PYTHON}: {last})"
    return True, ""


def rtsp_required() -> bool:
    """True when EDGECAP_REQUIRE_RTSP=1: a missing server must fail the tests instead of skipping them."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def free_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def established_to(port: int) -> int:
    """Client-side TCP connections (any process on this host) to 127.0.0.1:port in state ESTABLISHED."""
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and remote == f"0100007F:{port:04X}":
                count += 1
    return count


class RtspServer:
    """One gst-rtsp-server process serving a live H.264 test pattern on 127.0.0.1:port/path.

    Args:
        path: mount point.
        user, password: require Basic auth with these (plain, not %-encoded) credentials.
        fps: frame rate.
        gop: frames between key frames (default fps / 2).
        port: fixed port; default a free one, kept across restarts.
        ready_timeout_s: how long start() waits for the READY line.
    """

    def __init__(self, path: str = "/cam", *, user: str | None = None, password: str | None = None, fps: int = 30,
                 port: int | None = None, ready_timeout_s: float = 20.0, pattern: str = "ball",
                 gop: int | None = None):
        self.path = path
        self.gop = gop
        self.user = user
        self.password = password
        self.fps = fps
        self.pattern = pattern
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.starts = 0
        fd, log = tempfile.mkstemp(prefix="rtsp-server-", suffix=".log")  # the server's stderr, for errors
        os.close(fd)
        self._log = Path(log)

    # -- life cycle --------------------------------------------------------------------------------------------
    def start(self) -> RtspServer:
        """Start (or restart) on the same port and wait for READY; retries briefly if the port is still taken."""
        if self.alive:
            raise RuntimeError(f"RTSP server on port {self.port} is already running")
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            code = self._start_once(deadline)
            if code is None:
                self.starts += 1
                return self
            if code != 4 or time.monotonic() > deadline:  # 4: bind failed (a previous instance lingering)
                tail = self._log.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"RTSP server on port {self.port} did not start (exit {code}): {' | '.join(tail)}")
            time.sleep(0.1)

    def _start_once(self, deadline: float) -> int | None:
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--path", self.path, "--fps",
               str(self.fps), "--pattern", self.pattern]
        if self.gop is not None:
            cmd += ["--gop", str(self.gop)]
        if self.user is not None:
            cmd += ["--user", self.user, "--password", str(self.password)]
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                         start_new_session=True)  # Ctrl-C in a terminal reaches the test only
        _LIVE.add(self)
        self.paused = False
        line = b""
        while b"\n" not in line:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._reap(signal.SIGKILL)
                return -1
            ready, _, _ = select.select([self.proc.stdout], [], [], min(remaining, 0.2))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:  # exited before READY
                    code = self.proc.wait()
                    self._reap(signal.SIGKILL)
                    return code or -1
                line += chunk
        if not line.startswith(b"READY"):
            self._reap(signal.SIGKILL)
            return -1
        return None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the camera vanishes without a goodbye (the kernel resets its connections)."""
        self._reap(signal.SIGKILL)

    def restart(self) -> RtspServer:
        self.kill()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: sockets stay open, nothing is sent or answered (a frozen camera)."""
        assert self.proc is not None and self.alive
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def close(self) -> None:
        """Stop for good (SIGTERM, then SIGKILL after 3 s); safe to call twice."""
        self._reap(signal.SIGTERM)
        self._log.unlink(missing_ok=True)

    def _reap(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                if self.paused and sig != signal.SIGKILL:
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process only handles SIGTERM once continued
            except ProcessLookupError:
                pass
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)
        self.paused = False
        if proc.stdout is not None:
            proc.stdout.close()
        _LIVE.discard(self)

    def __enter__(self) -> RtspServer:
        return self if self.alive else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses ---------------------------------------------------------------------------------------------
    def url(self, user: str | None = None, password: str | None = None) -> str:
        """rtsp://127.0.0.1:port/path with the given credentials (default: the server's) %-encoded."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        cred = "" if user is None else quote(user, safe="") + ("" if password is None
                                                                 else ":" + quote(password, safe="")) + "@"
        return f"rtsp://{cred}127.0.0.1:{self.port}{self.path}"

    def log_text(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def __repr__(self) -> str:  # never the password
        return f"RtspServer(port={self.port}, path={self.path!r}, alive={self.alive}, paused={self.paused})"


@atexit.register
def _kill_leftovers() -> None:
    for srv in list(_LIVE):
        srv.kill()
