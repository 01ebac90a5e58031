"""The :class:`Source`: one camera, stream, video file or image folder read by its own daemon thread.

Work happens on the reader thread after :meth:`Source.start`; the constructor only stores the configuration. What
happens when the consumer falls behind is the source's :class:`~edgecap.sources.BufferPolicy` (roboflow
inference's video_source is the model): WAIT blocks the reader on a full queue and drops nothing; LATEST keeps the
newest ``queue_size`` frames, discards the oldest and reports the discards in rate-limited ``drops`` statuses.

Live sources reconnect forever (or ``max_reconnects`` times) with capped exponential backoff and jitter, a longer
wait after 401/403, and a process-wide cap on reconnect attempts (:data:`~edgecap.sources.clock.RECONNECTS`) so
that a hundred cameras failing together do not hammer the network. Nothing that goes wrong in a reader thread
escapes it: failures become :class:`SourceStatus` events (``on_status``) and log lines, and camera passwords never
appear in either (see :func:`~edgecap.sources.mask_url`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import stat
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .._log import logger
from ..errors import DependencyError, SourceError
from . import decoding
from .clock import INTERRUPTS, RECONNECTS
from .records import IMAGE_EXTENSIONS, BufferPolicy, FrameSample, SourceConfig, SourceStatus, StatusKind
from .state import TERMINAL_STATES, SourceState, check_transition
from .urls import PROTOCOL_WHITELIST, RTSP_ANALYZE_US, SUPPORTED_SOURCES, Scrubber, classify_source, mask_url

__all__ = ["Source", "open_sources"]

_DROP_REPORT_S = 5.0  # at most one "drops" status per source this often
_PTS_EPS = 1e-6
_MAX_MESSAGE = 300
_LIVE_KINDS = frozenset({"rtsp", "http", "webcam"})


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 3] + "..."


class Source:
    """A camera, stream, video file or image folder read by one daemon thread (``edgecap-source-<name>``).

    Args:
        cfg: what to read and how.
        on_status: called with every :class:`SourceStatus`, on the reader thread (its exceptions are logged, never
            raised into the reader).
        log_statuses: log every status at its severity (the default); False logs them at DEBUG only, for a caller
            that reports them itself (a batch job that raises the failure).

    Attributes:
        cfg: the configuration.
        kind: ``classify_source(cfg.url)``, or None if the URL is not usable (then :meth:`start` raises).
    """

    COUNTER_KEYS: tuple[str, ...] = ("frames_read", "frames_sampled", "dropped", "reconnects", "decode_errors")

    def __init__(self, cfg: SourceConfig, *, on_status: Callable[[SourceStatus], None] | None = None,
                 log_statuses: bool = True):
        if not isinstance(cfg, SourceConfig):
            raise SourceError(f"Source needs a SourceConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self._on_status = on_status
        self._log_statuses = log_statuses
        try:
            self.kind: str | None = classify_source(cfg.url)
        except SourceError:
            self.kind = None
        self._masked = mask_url(cfg.url)
        self._scrub = Scrubber(cfg.url)
        self._cond = threading.Condition()
        self._queue: deque[FrameSample] = deque()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()  # start() and request_stop() are atomic with respect to each other
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
        """True for RTSP/HTTP/webcam sources and realtime files: frames come at the source's pace, not the
        consumer's."""
        return self.kind in _LIVE_KINDS or self.cfg.realtime

    @property
    def buffer_policy(self) -> BufferPolicy:
        """``cfg.buffer``, or by kind when unset: LATEST for live sources, WAIT for files and folders."""
        if self.cfg.buffer is not None:
            return self.cfg.buffer
        return BufferPolicy.LATEST if self.is_live else BufferPolicy.WAIT

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

        Thread-safe: of several threads calling start() at once, exactly one starts the reader; the others raise.

        Returns:
            self.

        Raises:
            SourceError: unsupported scheme or refused protocol, missing or unreadable file, folder without images,
                or the source was already started or stopped.
        """
        # One lock over the whole check-and-start: of N threads calling start() at once, exactly one starts the
        # reader; the others see it started. A failed check leaves the source unstarted (start() may be retried).
        with self._start_lock:
            if self._started or self._stop.is_set() or self._state in TERMINAL_STATES:
                raise SourceError(f"source {self.cfg.name!r} was already started; create a new Source to restart it")
            kind = classify_source(self.cfg.url)
            decoding.preload_av()  # every kind reads through PyAV (image folders too)
            if kind == "file":
                self._check_file(os.path.abspath(str(self.cfg.url)))
            elif kind == "folder":
                folder = os.path.abspath(str(self.cfg.url))
                self._images = decoding.list_images(folder)
                if not self._images:
                    raise SourceError(f"no images in folder {folder}; expected files ending in "
                                      f"{', '.join(IMAGE_EXTENSIONS)}")
            else:
                INTERRUPTS.install()
            self.kind = kind
            thread = threading.Thread(target=self._run, name=f"edgecap-source-{self.cfg.name}", daemon=True)
            with self._cond:
                self._started = True
                self._thread = thread
            thread.start()
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

    def request_stop(self) -> None:
        """Tell the reader to stop and discard queued frames, without waiting for it; safe to call twice.

        A PyAV open or read blocked on the network is interrupted (see :class:`~edgecap.sources.clock.
        InterruptHook`), so the reader of a network source ends within about 0.1 s; it closes its own container
        before it exits. Stop many sources at once with ``request_stop()`` on each, then :meth:`join` on each.
        """
        with self._start_lock:  # a start() in progress completes first, so its reader thread is the one stopped
            self._stop.set()
            with self._cond:
                self._queue.clear()
                self._cond.notify_all()
                never_started = self._thread is None and not self._done
                if self._thread is None:
                    self._done = True
        if never_started and self._state not in TERMINAL_STATES:
            self._transition(SourceState.STOPPED, StatusKind.FINISHED, "stopped before start")

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the reader thread to end.

        Args:
            timeout: seconds to wait; None waits for as long as it takes.

        Returns:
            True when no reader thread runs any more (or none was ever started); False on timeout, or when called
            on the reader thread itself (from an ``on_status`` callback), which cannot wait for itself.
        """
        thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """:meth:`request_stop`, then :meth:`join`: stop reading and wait for the reader thread; safe to call twice.

        Args:
            timeout: seconds to wait for the reader thread (a warning is logged if it is still running then).
        """
        self.request_stop()
        if not self.join(timeout) and self._thread is not threading.current_thread():
            logger.warning("[%s] reader thread did not stop within %.1f s", self.cfg.name, timeout)

    def __enter__(self) -> Source:
        return self if self._started else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Source(name={self.cfg.name!r}, url={self._masked!r}, state={self._state.name})"

    # -- state and status ------------------------------------------------------------------------------------------
    def _transition(self, new: SourceState, kind: StatusKind | None, message: str) -> None:
        with self._cond:
            old = self._state
            check_transition(old, new)
            self._state = new
        if kind is None:
            logger.debug("[%s] %s -> %s: %s", self.cfg.name, old.name, new.name, self._scrub(message))
        else:
            self._emit(kind, message, previous=old)

    def _emit(self, kind: StatusKind, message: str, *, previous: SourceState | None = None) -> None:
        state = self._state
        status = SourceStatus(camera=self.cfg.name, state=state, previous=state if previous is None else previous,
                              wall_utc=datetime.now(timezone.utc), message=_one_line(self._scrub(message)), kind=kind)
        level = status.kind.severity if self._log_statuses else logging.DEBUG
        logger.log(level, "[%s] %s: %s", status.camera, status.kind.value, status.message)
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception as exc:  # noqa: BLE001 - a consumer's callback must not kill the reader
                logger.warning("[%s] on_status callback raised %s", self.cfg.name, self._describe(exc))

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
            if self._state not in TERMINAL_STATES:
                self._transition(SourceState.FAILED, StatusKind.SOURCE_ERROR, f"reader error: {self._describe(exc)}")
        finally:
            if self._state not in TERMINAL_STATES:
                self._transition(SourceState.STOPPED, StatusKind.FINISHED, f"stopped ({self._summary()})")
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _run_finite(self) -> None:
        where = os.path.abspath(str(self.cfg.url))
        try:
            with self._local_frames(where) as frames:
                self._pump(frames, by_clock=False, paced=self.cfg.realtime)
        except Exception as exc:  # noqa: BLE001 - open and demux failures of every kind (even UnicodeDecodeError)
            logger.debug("[%s] %s", self.cfg.name, self._scrub(traceback.format_exc()))
            verb = "cannot open" if self._counters["frames_read"] == 0 else "reading failed in"
            self._transition(SourceState.FAILED, StatusKind.SOURCE_ERROR,
                             f"{verb} {where}: {self._describe(exc)}; expected a video file PyAV can decode")
            return
        if self._stop.is_set():
            return
        if self._counters["frames_sampled"] == 0:
            what = "images" if self.kind == "folder" else "video frames"
            self._transition(SourceState.FAILED, StatusKind.SOURCE_ERROR, f"no decodable {what} in {where}")
            return
        self._transition(SourceState.STOPPED, StatusKind.FINISHED, f"end of {where}: {self._summary()}")

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
                self._transition(SourceState.FAILED, StatusKind.SOURCE_ERROR,
                                 f"giving up on {self._masked} after {failures} failed attempts in a row: {reason}")
                return
            delay = self._backoff(failures, auth)
            hint = "authentication failed, check the camera user and password: " if auth else ""
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._transition(SourceState.RECONNECTING, StatusKind.SOURCE_DOWN,
                                 f"{self._masked} down: {hint}{reason}; reconnecting in {delay:.2f} s")
            else:
                self._transition(SourceState.RECONNECTING, StatusKind.RECONNECTING,
                                 f"attempt {failures} failed: {hint}{reason}; next in {delay:.2f} s")
            if self._stop.wait(delay) or not RECONNECTS.acquire(self._stop):
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
            with INTERRUPTS.watch(self._interrupt_requested), self._live_frames() as frames:
                opened_at = time.monotonic()
                self._deadline = opened_at + self.cfg.read_timeout_s
                self._pump(frames, by_clock=True, paced=False)
            reason, auth = "the stream ended", False
        except DependencyError as exc:
            self._transition(SourceState.FAILED, StatusKind.SOURCE_ERROR, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - every failure of a live source means reconnect
            logger.debug("[%s] %s", self.cfg.name, self._scrub(traceback.format_exc()))
            reason, auth = self._describe(exc), decoding.is_auth_failure(exc)
            # Timeouts surface as RuntimeError (our hook), ExitError (PyAV's, the only source of AVERROR_EXIT) or
            # InvalidDataError (RTSP open); the demuxer may even flush a last frame first. Say what happened.
            import av

            timed_out = self._timed_out or isinstance(exc, (decoding.Stalled, av.error.ExitError))
            if opened_at is not None and timed_out:
                reason = f"no frame within {self.cfg.read_timeout_s:g} s"
            elif opened_at is None and (timed_out or time.monotonic() - began >= self.cfg.open_timeout_s - 0.05):
                reason = f"no answer within {self.cfg.open_timeout_s:g} s"
        return None if self._stop.is_set() else (reason, auth)

    # -- frame producers -----------------------------------------------------------------------------------------
    @contextmanager
    def _local_frames(self, where: str) -> Iterator[decoding.Frames]:
        if self.kind == "folder":
            yield decoding.folder_frames(self._images, self.cfg.interval_s, self._stop, self._decode_error)
            return
        import av

        container = av.open(where, metadata_errors="replace",
                            container_options={"protocol_whitelist": PROTOCOL_WHITELIST["file"]})
        with self._closing(container) as frames:
            yield frames

    @contextmanager
    def _live_frames(self) -> Iterator[decoding.Frames]:
        import av

        url = self.cfg.url
        if self.kind == "webcam":
            target = decoding.webcam_input(url)
            if target is None:
                device = int(url) if str(url).isdigit() else str(url)
                with decoding.opencv_frames(device, self._stop) as frames:
                    yield frames
                return
            name, fmt = target
            options: dict[str, str] = {}
        else:
            name, fmt = str(url), None
            options = {"protocol_whitelist": PROTOCOL_WHITELIST[str(self.kind)]}
            if self.kind == "rtsp":
                options["rtsp_transport"] = "tcp"
                options["analyzeduration"] = str(RTSP_ANALYZE_US)
        container = av.open(name, format=fmt, timeout=(self.cfg.open_timeout_s, self.cfg.read_timeout_s),
                            metadata_errors="replace", container_options=options)
        with self._closing(container) as frames:
            yield frames

    @contextmanager
    def _closing(self, container: Any) -> Iterator[decoding.Frames]:
        frames = None
        try:
            if not container.streams.video:
                raise SourceError("no video stream")
            frames = decoding.av_frames(container, container.streams.video[0],
                                        live=self.is_live and self.kind != "file", stalled=self._stalled,
                                        on_decode_error=self._decode_error)
            yield frames
        finally:
            if frames is not None:
                frames.close()
            container.close()

    def _stalled(self) -> bool:
        return self._timed_out or time.monotonic() > self._deadline

    # -- sampling and the queue -----------------------------------------------------------------------------------
    def _pump(self, frames: decoding.Frames, *, by_clock: bool, paced: bool) -> None:
        """Sample ``frames`` into the queue until they end or stop() is called."""
        interval = self.cfg.interval_s
        wait = self.buffer_policy is BufferPolicy.WAIT
        next_pts = 0.0
        next_due: float | None = None
        origin: tuple[float, float] | None = None  # (monotonic, pts) of the first frame, for realtime pacing
        for pts, payload in frames:
            if self._stop.is_set():
                return
            if paced and pts is not None:
                origin = origin or (time.monotonic(), pts)
                ahead = origin[0] + (pts - origin[1]) - time.monotonic()
                if ahead > 0 and self._stop.wait(ahead):
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
                image = decoding.to_rgb(payload)
            except Exception as exc:  # noqa: BLE001 - an unconvertible frame is a decode error, not a crash
                self._decode_error(exc)
                continue
            sample = FrameSample(self.cfg.name, self._seq, pts, datetime.now(timezone.utc), now, image)
            self._seq += 1
            self._counters["frames_sampled"] += 1
            if wait:
                self._put_waiting(sample)
                # time spent waiting for the consumer is not a silent camera: the read watchdog starts afresh
                self._deadline = time.monotonic() + self.cfg.read_timeout_s
            else:
                self._put_latest(sample)

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
        self._transition(SourceState.STREAMING, StatusKind.SOURCE_UP, message)

    def _put_waiting(self, sample: FrameSample) -> None:
        """BufferPolicy.WAIT: wait for room (or stop); nothing is dropped."""
        with self._cond:
            while len(self._queue) >= self.cfg.queue_size and not self._stop.is_set():
                self._cond.wait()
            if not self._stop.is_set():
                self._queue.append(sample)
                self._cond.notify_all()

    def _put_latest(self, sample: FrameSample) -> None:
        """BufferPolicy.LATEST: a full queue discards its oldest frame; discards are reported, rate-limited."""
        with self._cond:
            if len(self._queue) >= self.cfg.queue_size:
                self._queue.popleft()
                self._counters["dropped"] += 1
                self._drops_unreported += 1
            self._queue.append(sample)
            self._cond.notify_all()
        now = time.monotonic()
        if self._drops_unreported and now - self._drops_reported_at >= _DROP_REPORT_S:
            self._emit(StatusKind.DROPS, f"reader is faster than the consumer: discarded {self._drops_unreported} old frames "
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
        self._emit(StatusKind.SOURCE_ERROR, f"decode error in {self._masked}: {what}{self._describe(exc)} (skipped; further "
                                   f"errors are counted in decode_errors)")

    def _check_file(self, path: str) -> None:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise SourceError(f"video file not found: {path}; expected {SUPPORTED_SOURCES}") from None
        except OSError as exc:
            raise SourceError(f"cannot access {path}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise SourceError(f"{path} is not a regular file (pipes and devices would block the reader); expected "
                              f"{SUPPORTED_SOURCES}")
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
