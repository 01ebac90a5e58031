"""Camera and file sources for the streaming runtime: one reader thread per source, an explicit state machine.

A :class:`Source` reads a video file, a folder of images, an RTSP/HTTP stream or a webcam on its own daemon thread
and hands sampled frames to the consumer through :meth:`Source.read`. The buffer policy depends on the kind of
source (roboflow inference's video_source is the model):

* files and image folders deliver every sampled frame, in order, at the consumer's pace: the reader blocks on a
  full queue, nothing is dropped;
* live sources (RTSP, HTTP, webcams, and files with ``realtime=True``) keep the newest frames: the queue holds
  ``queue_size`` frames and the oldest is discarded when it is full; discards are counted and reported in
  rate-limited ``"drops"`` status events.

Live sources reconnect forever (or ``max_reconnects`` times) with capped exponential backoff and jitter, a longer
wait after 401/403, and a process-wide cap on reconnect attempts so that a hundred cameras failing together do not
hammer the network. Nothing that goes wrong in a reader thread escapes it: failures become :class:`SourceStatus`
events (``on_status``) and log lines, and camera passwords never appear in either (see :func:`mask_url`).

Work happens on the reader thread after :meth:`Source.start`; the constructor only stores the configuration.

Example::

    with Source(SourceConfig(name="door", url="rtsp://user:pw@10.0.0.5/stream1", interval_s=1.0)) as src:
        while (sample := src.read(timeout=1.0)) is not None or not src.finished:
            ...
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import stat
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any
from urllib.parse import unquote

import numpy as np

from .._log import logger
from ..errors import DependencyError, SourceError

__all__ = [
    "ALLOWED_TRANSITIONS", "FrameSample", "IMAGE_EXTENSIONS", "Source", "SourceConfig", "SourceState",
    "SourceStatus", "check_transition", "classify_source", "mask_url", "open_sources",
]

#: Image files a folder source reads, in name order (case-insensitive extensions).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

#: Process-wide reconnect cap, DeepStream style: sustained attempts per second across all sources, and burst.
GLOBAL_RECONNECTS_PER_S = 2.0
GLOBAL_RECONNECT_BURST = 2

_DROP_REPORT_S = 5.0  # at most one "drops" status per source this often
_MAX_BAD_PACKETS = 50  # undecodable packets in a row before a stream counts as broken
_PTS_EPS = 1e-6
_MAX_MESSAGE = 300

# FFmpeg protocols that read local resources, raw sockets or wrap other URLs: never a camera URL (RELIABILITY 18).
_REFUSED_PROTOCOLS = frozenset({
    "android_content", "async", "bluray", "cache", "concat", "concatf", "crypto", "data", "fd", "ffrtmpcrypt",
    "ffrtmphttp", "file", "hls", "httpproxy", "md5", "pipe", "prompeg", "rtp", "sctp", "srtp", "subfile", "tcp",
    "tee", "tls", "udp", "udplite", "unix",
})
_SCHEME_KINDS = {"rtsp": "rtsp", "rtsps": "rtsp", "http": "http", "https": "http"}
_SUPPORTED = "rtsp://, rtsps://, http(s)://, a video file, a folder of images, /dev/videoN or a webcam index"
# Inner protocols a network source may use; HLS segments or redirects cannot reach file: or pipe: through them.
_WHITELIST = {"rtsp": "rtsp,rtsps,rtp,srtp,tcp,udp,tls", "http": "http,https,tcp,tls,crypto,httpproxy",
              "file": "file,crypto"}
# How much of an RTSP stream FFmpeg may read to find its parameters before it opens (microseconds). Its default,
# 5 s of stream (plus ~30 frames of probing), made a 5 fps camera take 5.4 s to open -- longer than the default
# open timeout, so it never opened -- and a 10 fps one 2.9 s. The SDP and the first key frame carry what the
# decoder needs; with 0.5 s, measured against gst-rtsp-server: 10 fps 0.74 s, 5 fps 1.05 s, 2 fps with a key frame
# every 4 s 2.05 s (was 6.0 s), same width, height and rate found.
RTSP_ANALYZE_US = 500_000
# FFmpeg treats a leading run of these characters followed by ':' (or ',' ... ':') as a protocol name.
_PROTOCOL_RE = re.compile(r"^([A-Za-z0-9+.-]+)(?::|,[^:]*:)")
_QUERY_SECRET_RE = re.compile(
    r"([?&;](?:password|passwd|pass|pwd|token|access_token|secret|key|apikey|api_key|auth|sig|signature)=)([^&#;]*)",
    re.IGNORECASE)
_AUTH_TEXT_RE = re.compile(r"\b40[13]\b|unauthori[sz]ed|forbidden", re.IGNORECASE)
_WEBCAM_RE = re.compile(r"^/dev/video\d+$")


# --------------------------------------------------------------------------------------------------------------------
# State machine
# --------------------------------------------------------------------------------------------------------------------

from enum import StrEnum


class StatusKind(StrEnum):  # TEMP shim until the sources slice lands
    SOURCE_UP = "source_up"
    SOURCE_DOWN = "source_down"
    RECONNECTING = "reconnecting"
    SOURCE_ERROR = "source_error"
    DROPS = "drops"
    FINISHED = "finished"

    @property
    def ends_outage(self) -> bool:
        return self in (StatusKind.SOURCE_UP, StatusKind.SOURCE_DOWN, StatusKind.SOURCE_ERROR, StatusKind.FINISHED)


class SourceState(Enum):
    """Where a source is in its life; see :data:`ALLOWED_TRANSITIONS`."""

    CONNECTING = "connecting"  # opening the file/stream, or waiting for its first frame
    STREAMING = "streaming"  # frames flow
    RECONNECTING = "reconnecting"  # live source down, waiting out the backoff
    STOPPED = "stopped"  # end of file, or stop() (terminal)
    FAILED = "failed"  # cannot be read, or gave up after max_reconnects (terminal)


#: Every legal state change. STOPPED and FAILED are terminal; a stopped source is not restarted (make a new one).
ALLOWED_TRANSITIONS: Mapping[SourceState, frozenset[SourceState]] = {
    SourceState.CONNECTING: frozenset({SourceState.STREAMING, SourceState.RECONNECTING, SourceState.STOPPED,
                                       SourceState.FAILED}),
    SourceState.STREAMING: frozenset({SourceState.RECONNECTING, SourceState.STOPPED, SourceState.FAILED}),
    SourceState.RECONNECTING: frozenset({SourceState.CONNECTING, SourceState.STOPPED, SourceState.FAILED}),
    SourceState.STOPPED: frozenset(),
    SourceState.FAILED: frozenset(),
}
_TERMINAL = frozenset({SourceState.STOPPED, SourceState.FAILED})


def check_transition(old: SourceState, new: SourceState) -> None:
    """Raise if ``old -> new`` is not in :data:`ALLOWED_TRANSITIONS` (that is a bug in the reader, not bad input).

    Raises:
        RuntimeError: the transition is illegal.
    """
    if new not in ALLOWED_TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.name for s in ALLOWED_TRANSITIONS[old])) or "none (terminal)"
        raise RuntimeError(f"illegal source state transition {old.name} -> {new.name}; allowed from {old.name}: "
                           f"{allowed}")


# --------------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------------

def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)


@dataclass(frozen=True, repr=False)
class SourceConfig:
    """One camera or file.

    Attributes:
        name: camera name (unique per process; used in thread names, statuses and samples).
        url: a video file path, ``rtsp://``, ``rtsps://``, ``http(s)://`` (MJPEG or HLS as PyAV opens them),
            ``/dev/videoN`` or an int (or digit string) webcam index, or a folder of images.
        interval_s: keep one frame per interval: by pts for files and folders, by the monotonic clock for live.
        realtime: pace a file by its pts against the clock and treat it as live (newest frame wins).
        open_timeout_s: give up opening a stream after this long.
        read_timeout_s: a live stream without a frame for this long is down.
        reconnect_min_s: first reconnect delay; doubles per failed attempt ...
        reconnect_max_s: ... up to this cap (each delay is drawn from [0.75, 1] x the capped value).
        auth_backoff_s: minimum delay after a 401/403 (a wrong password does not improve with hammering).
        queue_size: frames buffered between the reader and the consumer.
        max_reconnects: failed reconnect attempts in a row before a live source is FAILED; None retries forever.
    """

    name: str
    url: str | int
    interval_s: float = 1.0
    realtime: bool = False
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    auth_backoff_s: float = 60.0
    queue_size: int = 2
    max_reconnects: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or any(ord(c) < 32 for c in self.name):
            raise SourceError(f"camera name must be a non-empty string without control characters, got "
                              f"{self.name!r}")
        if isinstance(self.url, bool) or not isinstance(self.url, (str, int)) or self.url == "":
            raise SourceError(f"camera {self.name!r}: url must be a path, a URL or a webcam index, got "
                              f"{type(self.url).__name__}")
        for field_name in ("interval_s", "open_timeout_s", "read_timeout_s", "reconnect_min_s", "reconnect_max_s",
                           "auth_backoff_s"):
            if not _positive(getattr(self, field_name)):
                raise SourceError(f"camera {self.name!r}: {field_name} must be a positive number of seconds, got "
                                  f"{getattr(self, field_name)!r}")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise SourceError(f"camera {self.name!r}: reconnect_min_s ({self.reconnect_min_s}) must not exceed "
                              f"reconnect_max_s ({self.reconnect_max_s})")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise SourceError(f"camera {self.name!r}: queue_size must be an int >= 1, got {self.queue_size!r}")
        if self.max_reconnects is not None and (isinstance(self.max_reconnects, bool)
                                                or not isinstance(self.max_reconnects, int)
                                                or self.max_reconnects < 0):
            raise SourceError(f"camera {self.name!r}: max_reconnects must be None or an int >= 0, got "
                              f"{self.max_reconnects!r}")

    def __repr__(self) -> str:  # the URL may hold a password
        return (f"SourceConfig(name={self.name!r}, url={mask_url(self.url)!r}, interval_s={self.interval_s}, "
                f"realtime={self.realtime})")


@dataclass(frozen=True, eq=False)  # equality of images is not a question worth answering implicitly
class FrameSample:
    """A sampled frame.

    Attributes:
        camera: the source's name.
        seq: 0, 1, 2, ... per sampled frame; a gap means frames were dropped.
        pts_s: position in the source in seconds (from pts; files start at 0), None when the source has no pts.
        wall_utc: wall clock (UTC) when the frame was read: for records.
        mono: ``time.monotonic()`` when the frame was read: for durations and ages.
        image: HxWx3 uint8 RGB.
    """

    camera: str
    seq: int
    pts_s: float | None
    wall_utc: datetime
    mono: float
    image: np.ndarray

    def __repr__(self) -> str:
        shape = getattr(self.image, "shape", None)
        return (f"FrameSample(camera={self.camera!r}, seq={self.seq}, pts_s={self.pts_s}, "
                f"wall_utc={self.wall_utc.isoformat()}, image={shape})")


@dataclass(frozen=True)
class SourceStatus:
    """A status event from a source (called back on the reader thread; keep the callback short).

    Attributes:
        camera: the source's name.
        state: state after the event.
        previous: state before it (equal to ``state`` for events that are not transitions; None for none).
        wall_utc: when it happened (UTC).
        message: one line for people; camera passwords are masked.
        kind: ``"source_up"`` (frames flow), ``"source_down"`` (once per outage), ``"reconnecting"`` (a further
            failed attempt), ``"source_error"`` (FAILED, or a decode error reported once), ``"drops"``
            (rate-limited count of discarded frames) or ``"finished"`` (end of file, or stopped).
    """

    camera: str
    state: SourceState
    previous: SourceState | None
    wall_utc: datetime
    message: str
    kind: str


# --------------------------------------------------------------------------------------------------------------------
# URLs: masking and classification
# --------------------------------------------------------------------------------------------------------------------

def _mask_authority(rest: str) -> tuple[str, list[str]]:
    """Mask the password at the start of ``rest`` (the text after ``scheme://``); return it with the password."""
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            end = min(end, pos)
    at = rest.rfind("@", 0, end)  # FFmpeg's rule: the last '@' before the path
    if at == -1 and "@" in rest[end:] and ":" in rest[:end] and not rest.startswith("["):
        # An unencoded '/', '?' or '#' in a password ends the authority early ("user:pa/ss@host"); mask up to the
        # last '@' rather than risk leaking the tail of the password (an odd URL may be over-masked, never leaked).
        at = rest.rfind("@")
    user, colon, password = rest[:max(at, 0)].partition(":")
    if at == -1 or not colon:
        return rest, []
    return f"{user}:***@{rest[at + 1:]}", [password]


def _split_secrets(url: str | int) -> tuple[str, list[str]]:
    """Return (the masked text, the secrets it held: passwords and secret query values, raw and %-decoded).

    Every ``scheme://`` in the text is handled, so URLs nested in FFmpeg protocols (``concat:rtsp://...``) are too.
    """
    parts = re.split(r"(?<=://)", str(url))
    secrets: list[str] = []
    for i in range(1, len(parts)):
        parts[i], found = _mask_authority(parts[i])
        secrets += found
    text = "".join(parts)
    secrets += [m.group(2) for m in _QUERY_SECRET_RE.finditer(text)]
    text = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + ("***" if m.group(2) else ""), text)
    secrets = [s for s in secrets if s]
    return text, secrets + [unquote(s) for s in secrets if unquote(s) != s]


def mask_url(url: str | int) -> str:
    """Hide the password (and secret query values such as ``password=``) in a camera URL.

    Handles %-encoded passwords, an unencoded ``@`` in the password (the last ``@`` before the host counts, as in
    FFmpeg), URLs without a password (returned unchanged) and non-URLs such as file paths (returned unchanged).

    Args:
        url: a URL, path or webcam index.

    Returns:
        The URL with every password replaced by ``***``.

    Example:
        >>> mask_url("rtsp://admin:p%40ss@10.0.0.5:554/stream1")
        'rtsp://admin:***@10.0.0.5:554/stream1'
    """
    return _split_secrets(url)[0]


class _Scrubber:
    """Remove a URL's secrets from free text (PyAV's exception text and ``filename`` carry the full URL)."""

    def __init__(self, url: str | int):
        self._url = str(url)
        self._masked, secrets = _split_secrets(url)
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = text.replace(self._url, self._masked)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def classify_source(url: str | int) -> str:
    """Tell what kind of source a camera URL is, refusing what edgecap must not open.

    Args:
        url: a file path, a folder of images, ``rtsp://``/``rtsps://``/``http://``/``https://`` URL,
            ``/dev/videoN``, or a webcam index (int or digit string).

    Returns:
        ``"file"``, ``"folder"``, ``"rtsp"``, ``"http"`` or ``"webcam"``. Paths are not checked for existence
        (:meth:`Source.start` does that); anything else that is not a directory is a ``"file"``.

    Raises:
        SourceError: an unsupported scheme (``ftp://``, ``rtmp://``, ...), or an FFmpeg protocol refused for camera
            entries (``file:``, ``concat:``, ``pipe:``, ``subfile``, ``data:``, ``crypto:``, ``tcp:``, ``udp:``, ...).

    Example:
        >>> classify_source("rtsps://cam.local/live"), classify_source(0), classify_source("/dev/video2")
        ('rtsp', 'webcam', 'webcam')
    """
    if isinstance(url, bool) or not isinstance(url, (str, int)):
        raise SourceError(f"a source must be a path, URL or webcam index, got {type(url).__name__}; expected "
                          f"{_SUPPORTED}")
    if isinstance(url, int):
        if url < 0:
            raise SourceError(f"webcam index must be >= 0, got {url}")
        return "webcam"
    if url.isdigit() or _WEBCAM_RE.match(url):
        return "webcam"
    match = _PROTOCOL_RE.match(url)
    if match and len(match.group(1)) > 1:  # one letter is a Windows drive (C:\...)
        scheme = match.group(1).lower()
        if any(part in _REFUSED_PROTOCOLS for part in scheme.split("+")):
            raise SourceError(f"FFmpeg protocol '{scheme}:' is refused for camera sources (it reaches local files, "
                              f"pipes or raw sockets): {mask_url(url)}; expected {_SUPPORTED}")
        kind = _SCHEME_KINDS.get(scheme) if url[match.end(1):].startswith("://") else None
        if kind is None:
            raise SourceError(f"unsupported source scheme '{scheme}' in {mask_url(url)}; expected {_SUPPORTED} "
                              f"(a file whose name contains ':' can be given as ./name)")
        return kind
    return "folder" if os.path.isdir(url) else "file"


# --------------------------------------------------------------------------------------------------------------------
# Process-wide helpers: reconnect rate cap and the PyAV interrupt hook
# --------------------------------------------------------------------------------------------------------------------

class _TokenBucket:
    """A small shared token bucket: callers wait their turn; a cancelled wait gives its token back."""

    def __init__(self, rate_per_s: float, burst: int):
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, cancel: threading.Event) -> bool:
        """Wait for a token; False if ``cancel`` was set first."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate) - 1.0
            self._stamp = now
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        cancelled = cancel.wait(wait) if wait > 0 else cancel.is_set()
        if cancelled:
            with self._lock:
                self._tokens += 1.0
        return not cancelled


_RECONNECTS = _TokenBucket(GLOBAL_RECONNECTS_PER_S, GLOBAL_RECONNECT_BURST)


class _InterruptHook:
    """Interrupt a reader thread's blocked PyAV open or read from another thread.

    PyAV's FFmpeg interrupt callback (av/container/core.py ``interrupt_cb``) aborts the blocked call when
    ``time.monotonic()`` -- looked up on that module at every poll, about every 100 ms inside network waits -- is
    earlier than the call's start. The hook replaces that module's ``time`` with a proxy that returns the real clock,
    except on a watched thread whose predicate is true, where it returns a falling clock. FFmpeg then returns from
    av_read_frame on the reader thread, which closes its own container. Closing the container from the stopping
    thread instead would free the AVFormatContext under the blocked call (a use after free). If a PyAV version no
    longer looks the clock up this way, the hook stays uninstalled and a blocked call ends by PyAV's own timeouts.
    """

    def __init__(self) -> None:
        self._checks: dict[int, Callable[[], bool]] = {}
        self._ticks = itertools.count()
        self._lock = threading.Lock()
        self.installed = False

    def install(self) -> bool:
        with self._lock:
            if not self.installed:
                import av.container.core as core

                if getattr(core, "time", None) is time:
                    core.time = _HookedClock(self)
                    self.installed = True
                else:
                    logger.debug("PyAV interrupt hook unavailable; blocked reads end by PyAV's timeouts")
            return self.installed

    def monotonic(self) -> float:
        check = self._checks.get(threading.get_ident())
        if check is not None and check():
            return -1e12 - next(self._ticks)  # strictly falling: also interrupts a call started while interrupted
        return time.monotonic()

    @contextmanager
    def watch(self, check: Callable[[], bool]) -> Iterator[None]:
        ident = threading.get_ident()
        self._checks[ident] = check
        try:
            yield
        finally:
            self._checks.pop(ident, None)


class _HookedClock:
    """Stands in for the ``time`` module inside av.container.core."""

    def __init__(self, hook: _InterruptHook):
        self._hook = hook

    def monotonic(self) -> float:
        return self._hook.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_INTERRUPTS = _InterruptHook()


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------

def _preload_av() -> None:
    """Import PyAV on the calling thread, before any reader thread exists. PyAV's extension modules import each
    other; first imports racing on several threads can hand one of them a partially initialised module ("module
    'av' has no attribute 'open'"), which failed good cameras at start-up in 5 of 20 runs."""
    try:
        import av  # noqa: F401
        import av.container.core  # noqa: F401
    except ImportError:
        pass  # reported by the reader thread (DependencyError), or a webcam falls back to OpenCV


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 3] + "..."


def _is_auth_failure(exc: BaseException) -> bool:
    import av

    if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError, PermissionError)):
        return True
    return bool(_AUTH_TEXT_RE.search(str(getattr(exc, "strerror", None) or exc)))


def _to_rgb(payload: Any) -> np.ndarray:
    if isinstance(payload, np.ndarray):
        return payload
    return payload.to_ndarray(format="rgb24")


def _webcam_input(url: str | int) -> tuple[str, str] | None:
    """(PyAV input, format) for a webcam, or None when this PyAV build cannot capture it (then OpenCV is tried)."""
    import av

    index = int(url) if isinstance(url, int) or url.isdigit() else None
    if sys.platform.startswith("linux") and "v4l2" in av.formats_available:
        return (f"/dev/video{index}" if index is not None else str(url)), "v4l2"
    if sys.platform == "darwin" and index is not None and "avfoundation" in av.formats_available:
        return str(index), "avfoundation"
    return None


def _list_images(folder: str) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


class _Stalled(Exception):
    """No frame within read_timeout_s although the connection delivers data."""


# --------------------------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------------------------

class Source:
    """A camera, stream, video file or image folder read by one daemon thread (``edgecap-source-<name>``).

    Args:
        cfg: what to read and how.
        on_status: called with every :class:`SourceStatus`, on the reader thread (its exceptions are logged, never
            raised into the reader).

    Attributes:
        cfg: the configuration.
        kind: ``classify_source(cfg.url)``, or None if the URL is not usable (then :meth:`start` raises).
    """

    COUNTER_KEYS: tuple[str, ...] = ("frames_read", "frames_sampled", "dropped", "reconnects", "decode_errors")

    def __init__(self, cfg: SourceConfig, *, on_status: Callable[[SourceStatus], None] | None = None):
        if not isinstance(cfg, SourceConfig):
            raise SourceError(f"Source needs a SourceConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self._on_status = on_status
        try:
            self.kind: str | None = classify_source(cfg.url)
        except SourceError:
            self.kind = None
        self._masked = mask_url(cfg.url)
        self._scrub = _Scrubber(cfg.url)
        self._cond = threading.Condition()
        self._queue: deque[FrameSample] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = SourceState.CONNECTING
        self._started = False
        self._done = False
        self._counters = dict.fromkeys(self.COUNTER_KEYS, 0)
        self._seq = 0
        self._rng = random.Random()
        self._images: list[str] = []
        # reader-thread bookkeeping
        self._deadline = math.inf  # monotonic time after which the watched PyAV call is interrupted
        self._timed_out = False  # the deadline passed during this connection
        self._down_since: float | None = None  # monotonic start of the current outage
        self._decode_error_reported = False
        self._drops_unreported = 0
        self._drops_reported_at = -math.inf

    # -- public ------------------------------------------------------------------------------------------------------
    @property
    def state(self) -> SourceState:
        """The current state."""
        return self._state

    @property
    def is_live(self) -> bool:
        """True for RTSP/HTTP/webcam sources and realtime files: the newest frame wins, frames may be dropped."""
        return self.kind in ("rtsp", "http", "webcam") or self.cfg.realtime

    @property
    def finished(self) -> bool:
        """True when no frame will ever come again: the reader ended (end of file, FAILED or stopped) and the queue
        is drained."""
        with self._cond:
            return self._done and not self._queue

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of frames_read, frames_sampled, dropped, reconnects and decode_errors."""
        return dict(self._counters)

    @property
    def queue_depth(self) -> int:
        """Frames waiting for :meth:`read` (never more than ``cfg.queue_size``)."""
        with self._cond:
            return len(self._queue)

    def start(self) -> Source:
        """Check the source cheaply and start its reader thread.

        Returns:
            self.

        Raises:
            SourceError: unsupported scheme or refused protocol, missing or unreadable file, folder without images,
                or the source was already started or stopped.
        """
        with self._cond:
            if self._started or self._state in _TERMINAL:
                raise SourceError(f"source {self.cfg.name!r} was already started; create a new Source to restart it")
        kind = classify_source(self.cfg.url)
        _preload_av()  # every kind reads through PyAV (image folders too)
        if kind == "file":
            self._check_file(os.path.abspath(str(self.cfg.url)))
        elif kind == "folder":
            folder = os.path.abspath(str(self.cfg.url))
            self._images = _list_images(folder)
            if not self._images:
                raise SourceError(f"no images in folder {folder}; expected files ending in "
                                  f"{', '.join(IMAGE_EXTENSIONS)}")
        else:
            _INTERRUPTS.install()
        self.kind = kind
        with self._cond:
            self._started = True
            self._thread = threading.Thread(target=self._run, name=f"edgecap-source-{self.cfg.name}", daemon=True)
            self._thread.start()
        return self

    def read(self, timeout: float | None = None) -> FrameSample | None:
        """Take the oldest queued frame.

        Args:
            timeout: seconds to wait for a frame; None waits until one comes or the source is finished; 0 polls.

        Returns:
            The frame, or None on timeout or when the source is finished (check :attr:`finished`).

        Raises:
            SourceError: the source was never started.
        """
        if not self._started and not self._done:
            raise SourceError(f"source {self.cfg.name!r} is not started; call start() before read()")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._queue:
                if self._done or self._stop.is_set():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            sample = self._queue.popleft()
            self._cond.notify_all()  # a file reader may be waiting for room
            return sample

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, discard queued frames and join the reader thread; safe to call twice.

        A PyAV open or read blocked on the network is interrupted (see ``_InterruptHook``), so this returns within
        about 0.1 s for network sources; the reader thread closes its own container before it exits.

        Args:
            timeout: seconds to wait for the reader thread.
        """
        self._stop.set()
        with self._cond:
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            with self._cond:
                never_started = not self._done
                self._done = True
            if never_started and self._state not in _TERMINAL:
                self._transition(SourceState.STOPPED, "finished", "stopped before start")
            return
        if thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("[%s] reader thread did not stop within %.1f s", self.cfg.name, timeout)

    def request_stop(self) -> None:  # TEMP shim until the sources slice lands
        self.stop(timeout=0)

    def join(self, timeout: float | None = None) -> bool:  # TEMP shim
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            return not t.is_alive()
        return True

    def __enter__(self) -> Source:
        return self if self._started else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Source(name={self.cfg.name!r}, url={self._masked!r}, state={self._state.name})"

    # -- state and status ------------------------------------------------------------------------------------------
    def _transition(self, new: SourceState, kind: str | None, message: str) -> None:
        with self._cond:
            old = self._state
            check_transition(old, new)
            self._state = new
        if kind is None:
            logger.debug("[%s] %s -> %s: %s", self.cfg.name, old.name, new.name, self._scrub(message))
        else:
            self._emit(kind, message, previous=old)

    def _emit(self, kind: str, message: str, *, previous: SourceState | None = None) -> None:
        state = self._state
        status = SourceStatus(camera=self.cfg.name, state=state, previous=state if previous is None else previous,
                              wall_utc=datetime.now(timezone.utc), message=_one_line(self._scrub(message)), kind=StatusKind(kind))
        level = 30 if kind in ("source_down", "source_error", "drops") else 20
        logger.log(level, "[%s] %s: %s", status.camera, kind, status.message)
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception as exc:  # noqa: BLE001 - a consumer's callback must not kill the reader
                logger.warning("[%s] on_status callback raised %s", self.cfg.name, type(exc).__name__)

    def _describe(self, exc: BaseException) -> str:
        text = getattr(exc, "strerror", None) or str(exc)
        return _one_line(self._scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__))

    def _summary(self) -> str:
        c = self._counters
        return (f"{c['frames_read']} frames read, {c['frames_sampled']} sampled, {c['dropped']} dropped, "
                f"{c['decode_errors']} decode errors, {c['reconnects']} reconnects")

    # -- reader thread -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.kind in ("file", "folder"):
                self._run_finite()
            else:
                self._run_live()
        except Exception as exc:  # noqa: BLE001 - the source boundary: nothing escapes the reader thread
            logger.debug("[%s] reader crashed:\n%s", self.cfg.name, self._scrub(traceback.format_exc()))
            if self._state not in _TERMINAL:
                self._transition(SourceState.FAILED, "source_error", f"reader error: {self._describe(exc)}")
        finally:
            if self._state not in _TERMINAL:
                self._transition(SourceState.STOPPED, "finished", f"stopped ({self._summary()})")
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _run_finite(self) -> None:
        where = os.path.abspath(str(self.cfg.url))
        try:
            with self._local_frames(where) as frames:
                self._pump(frames, newest_wins=self.cfg.realtime, by_clock=False, paced=self.cfg.realtime)
        except Exception as exc:  # noqa: BLE001 - open and demux failures of every kind (even UnicodeDecodeError)
            logger.debug("[%s] %s", self.cfg.name, self._scrub(traceback.format_exc()))
            verb = "cannot open" if self._counters["frames_read"] == 0 else "reading failed in"
            self._transition(SourceState.FAILED, "source_error",
                             f"{verb} {where}: {self._describe(exc)}; expected a video file PyAV can decode")
            return
        if self._stop.is_set():
            return
        if self._counters["frames_sampled"] == 0:
            what = "images" if self.kind == "folder" else "video frames"
            self._transition(SourceState.FAILED, "source_error", f"no decodable {what} in {where}")
            return
        self._transition(SourceState.STOPPED, "finished", f"end of {where}: {self._summary()}")

    def _run_live(self) -> None:
        failures = 0
        while not self._stop.is_set():
            frames_before = self._counters["frames_read"]
            outcome = self._connect_once()
            if outcome is None:
                return
            reason, auth = outcome
            failures = 1 if self._counters["frames_read"] > frames_before else failures + 1
            if self.cfg.max_reconnects is not None and failures > self.cfg.max_reconnects:
                self._transition(SourceState.FAILED, "source_error",
                                 f"giving up on {self._masked} after {failures} failed attempts in a row: {reason}")
                return
            delay = self._backoff(failures, auth)
            hint = "authentication failed, check the camera user and password: " if auth else ""
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._transition(SourceState.RECONNECTING, "source_down",
                                 f"{self._masked} down: {hint}{reason}; reconnecting in {delay:.2f} s")
            else:
                self._transition(SourceState.RECONNECTING, "reconnecting",
                                 f"attempt {failures} failed: {hint}{reason}; next in {delay:.2f} s")
            if self._stop.wait(delay) or not _RECONNECTS.acquire(self._stop):
                return
            self._counters["reconnects"] += 1
            self._transition(SourceState.CONNECTING, None, f"reconnect attempt {self._counters['reconnects']}")

    def _backoff(self, failures: int, auth: bool) -> float:
        base = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2.0 ** min(failures - 1, 60))
        if auth:
            base = max(base, self.cfg.auth_backoff_s)
        return base * self._rng.uniform(0.75, 1.0)

    def _interrupt_requested(self) -> bool:
        if time.monotonic() > self._deadline:
            self._timed_out = True
        return self._timed_out or self._stop.is_set()

    def _connect_once(self) -> tuple[str, bool] | None:
        """Open the live source and pump frames until it ends; (reason, auth failure), or None when stopping."""
        opened_at: float | None = None
        began = time.monotonic()
        self._deadline = began + self.cfg.open_timeout_s  # open and probe together (PyAV alone allows each as much)
        self._timed_out = self._decode_error_reported = False
        try:
            with _INTERRUPTS.watch(self._interrupt_requested), self._live_frames() as frames:
                opened_at = time.monotonic()
                self._deadline = opened_at + self.cfg.read_timeout_s
                self._pump(frames, newest_wins=True, by_clock=True, paced=False)
            reason, auth = "the stream ended", False
        except DependencyError as exc:
            self._transition(SourceState.FAILED, "source_error", str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - every failure of a live source means reconnect
            logger.debug("[%s] %s", self.cfg.name, self._scrub(traceback.format_exc()))
            reason, auth = self._describe(exc), _is_auth_failure(exc)
            # Timeouts surface as RuntimeError (our hook), ExitError (PyAV's, the only source of AVERROR_EXIT) or
            # InvalidDataError (RTSP open); the demuxer may even flush a last frame first. Say what happened.
            import av

            timed_out = self._timed_out or isinstance(exc, (_Stalled, av.error.ExitError))
            if opened_at is not None and timed_out:
                reason = f"no frame within {self.cfg.read_timeout_s:g} s"
            elif opened_at is None and (timed_out or time.monotonic() - began >= self.cfg.open_timeout_s - 0.05):
                reason = f"no answer within {self.cfg.open_timeout_s:g} s"
        return None if self._stop.is_set() else (reason, auth)

    # -- frame producers -----------------------------------------------------------------------------------------
    @contextmanager
    def _local_frames(self, where: str) -> Iterator[Iterator[tuple[float | None, Any]]]:
        if self.kind == "folder":
            yield self._folder_frames()
            return
        import av

        container = av.open(where, metadata_errors="replace", container_options={"protocol_whitelist":
                                                                                     _WHITELIST["file"]})
        with self._closing(container) as frames:
            yield frames

    @contextmanager
    def _live_frames(self) -> Iterator[Iterator[tuple[float | None, Any]]]:
        import av

        url = self.cfg.url
        if self.kind == "webcam":
            target = _webcam_input(url)
            if target is None:
                with self._opencv_frames(int(url) if str(url).isdigit() else str(url)) as frames:
                    yield frames
                return
            name, fmt = target
            options: dict[str, str] = {}
        else:
            name, fmt = str(url), None
            options = {"protocol_whitelist": _WHITELIST[str(self.kind)]}
            if self.kind == "rtsp":
                options["rtsp_transport"] = "tcp"
                options["analyzeduration"] = str(RTSP_ANALYZE_US)
        container = av.open(name, format=fmt, timeout=(self.cfg.open_timeout_s, self.cfg.read_timeout_s),
                            metadata_errors="replace", container_options=options)
        with self._closing(container) as frames:
            yield frames

    @contextmanager
    def _closing(self, container: Any) -> Iterator[Iterator[tuple[float | None, Any]]]:
        frames = None
        try:
            if not container.streams.video:
                raise SourceError("no video stream")
            frames = self._av_frames(container, container.streams.video[0])
            yield frames
        finally:
            if frames is not None:
                frames.close()
            container.close()

    def _av_frames(self, container: Any, stream: Any) -> Iterator[tuple[float | None, Any]]:
        import av

        live = self.is_live and self.kind != "file"
        start = stream.start_time
        offset = float(start * stream.time_base) if (start is not None and not live) else 0.0
        rate = float(stream.average_rate) if stream.average_rate else None
        bad_in_a_row = decoded = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:  # one bad packet: count it and go on
                bad_in_a_row += 1
                self._decode_error(exc)
                if bad_in_a_row >= _MAX_BAD_PACKETS:
                    raise SourceError(f"{bad_in_a_row} undecodable packets in a row") from None
                continue
            bad_in_a_row = 0
            for frame in frames:
                t = frame.time
                if t is None and rate:
                    t = decoded / rate + offset
                decoded += 1
                yield (None if t is None else t - offset), frame
            if live and (self._timed_out or time.monotonic() > self._deadline):
                raise _Stalled()

    def _folder_frames(self) -> Iterator[tuple[float | None, Any]]:
        import av

        for index, path in enumerate(self._images):
            if self._stop.is_set():
                return
            try:
                with av.open(path, metadata_errors="replace") as container:
                    frame = next(container.decode(video=0), None)
                    if frame is None:
                        raise SourceError("no image data")
                    image = frame.to_ndarray(format="rgb24")
            except Exception as exc:  # noqa: BLE001 - a corrupt image is counted and skipped
                self._decode_error(exc, where=os.path.basename(path))
                continue
            yield index * self.cfg.interval_s, image

    @contextmanager
    def _opencv_frames(self, device: int | str) -> Iterator[Iterator[tuple[float | None, Any]]]:
        try:
            import cv2
        except ImportError:
            raise DependencyError(f"webcam {device}: this PyAV build has no capture input for this platform and "
                                  f"OpenCV is not installed; pip install opencv-python-headless") from None
        capture = cv2.VideoCapture(device)

        def frames() -> Iterator[tuple[float | None, Any]]:
            while not self._stop.is_set():
                ok, bgr = capture.read()
                if not ok or bgr is None:
                    return
                yield None, np.ascontiguousarray(bgr[:, :, ::-1])

        try:
            if not capture.isOpened():
                raise SourceError(f"OpenCV cannot open webcam {device}")
            yield frames()
        finally:
            capture.release()

    # -- sampling and the queue -----------------------------------------------------------------------------------
    def _pump(self, frames: Iterator[tuple[float | None, Any]], *, newest_wins: bool, by_clock: bool,
              paced: bool) -> None:
        """Sample ``frames`` into the queue until they end or stop() is called."""
        interval = self.cfg.interval_s
        next_pts = 0.0
        next_due: float | None = None
        origin: tuple[float, float] | None = None  # (monotonic, pts) of the first frame, for realtime pacing
        for pts, payload in frames:
            if self._stop.is_set():
                return
            if paced and pts is not None:
                origin = origin or (time.monotonic(), pts)
                wait = origin[0] + (pts - origin[1]) - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
            now = time.monotonic()
            self._frame_arrived(now, payload)
            if by_clock or pts is None:
                if next_due is not None and now < next_due:
                    continue
                next_due = now + interval if next_due is None or next_due + interval <= now else next_due + interval
            else:
                if pts + _PTS_EPS < next_pts:
                    continue
                next_pts = (math.floor((pts + _PTS_EPS) / interval) + 1) * interval
            try:
                image = _to_rgb(payload)
            except Exception as exc:  # noqa: BLE001 - an unconvertible frame is a decode error, not a crash
                self._decode_error(exc)
                continue
            sample = FrameSample(self.cfg.name, self._seq, pts, datetime.now(timezone.utc), now, image)
            self._seq += 1
            self._counters["frames_sampled"] += 1
            self._put(sample, newest_wins)

    def _frame_arrived(self, now: float, payload: Any) -> None:
        self._counters["frames_read"] += 1
        self._deadline = now + self.cfg.read_timeout_s
        if self._state is SourceState.STREAMING:
            return
        shape = payload.shape[1::-1] if isinstance(payload, np.ndarray) else (payload.width, payload.height)
        if self._down_since is not None:
            message = (f"{self._masked} up again after {now - self._down_since:.1f} s "
                       f"({self._counters['reconnects']} reconnects so far), {shape[0]}x{shape[1]}")
        else:
            message = f"{self._masked} streaming, {shape[0]}x{shape[1]}"
        self._down_since = None
        self._transition(SourceState.STREAMING, "source_up", message)

    def _put(self, sample: FrameSample, newest_wins: bool) -> None:
        with self._cond:
            if newest_wins:
                if len(self._queue) >= self.cfg.queue_size:
                    self._queue.popleft()
                    self._counters["dropped"] += 1
                    self._drops_unreported += 1
            else:
                while len(self._queue) >= self.cfg.queue_size and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
            self._queue.append(sample)
            self._cond.notify_all()
        now = time.monotonic()
        if self._drops_unreported and now - self._drops_reported_at >= _DROP_REPORT_S:
            self._emit("drops", f"reader is faster than the consumer: discarded {self._drops_unreported} old frames "
                                f"({self._counters['dropped']} in total); the queue keeps the newest "
                                f"{self.cfg.queue_size}")
            self._drops_unreported = 0
            self._drops_reported_at = now

    def _decode_error(self, exc: BaseException, where: str | None = None) -> None:
        self._counters["decode_errors"] += 1
        what = f"{where}: " if where else ""
        if self._decode_error_reported:
            logger.debug("[%s] decode error: %s%s", self.cfg.name, what, self._describe(exc))
            return
        self._decode_error_reported = True
        self._emit("source_error", f"decode error in {self._masked}: {what}{self._describe(exc)} (skipped; further "
                                   f"errors are counted in decode_errors)")

    def _check_file(self, path: str) -> None:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise SourceError(f"video file not found: {path}; expected {_SUPPORTED}") from None
        except OSError as exc:
            raise SourceError(f"cannot access {path}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise SourceError(f"{path} is not a regular file (pipes and devices would block the reader); expected "
                              f"{_SUPPORTED}")
        if not os.access(path, os.R_OK):
            raise SourceError(f"{path} is not readable; check its permissions")


def open_sources(configs: Iterable[SourceConfig], *,
                 on_status: Callable[[SourceStatus], None] | None = None) -> list[Source]:
    """Create and start one :class:`Source` per config; all or nothing.

    Args:
        configs: the cameras; names must be unique.
        on_status: passed to every source.

    Returns:
        The started sources, in order.

    Raises:
        SourceError: duplicate names, or a source that cannot start (the ones already started are stopped).
    """
    configs = list(configs)
    seen: set[str] = set()
    for cfg in configs:
        if cfg.name in seen:
            raise SourceError(f"duplicate camera name {cfg.name!r}; every source needs its own name")
        seen.add(cfg.name)
    started: list[Source] = []
    try:
        for cfg in configs:
            started.append(Source(cfg, on_status=on_status).start())
    except BaseException:
        for src in started:
            src.stop()
        raise
    return started
