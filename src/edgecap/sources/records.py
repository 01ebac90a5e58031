"""Source records: a camera's configuration, sampled frames, status events and the enums they carry."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import numpy as np

from ..errors import SourceError
from .state import SourceState
from .urls import mask_url

__all__ = ["BufferPolicy", "FrameSample", "IMAGE_EXTENSIONS", "SourceConfig", "SourceStatus", "StatusKind"]

#: Image files a folder source reads, in name order (case-insensitive extensions).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class StatusKind(StrEnum):
    """What a :class:`SourceStatus` reports. A StrEnum, so ``status.kind == "source_up"`` holds."""

    SOURCE_UP = "source_up"  # frames flow (first frame, or first frame after an outage)
    SOURCE_DOWN = "source_down"  # a live source went down: once per outage
    RECONNECTING = "reconnecting"  # a further failed attempt during an outage
    SOURCE_ERROR = "source_error"  # FAILED, or a decode error (reported once per connection)
    DROPS = "drops"  # rate-limited count of frames discarded by the LATEST buffer policy
    FINISHED = "finished"  # end of file, or stopped

    @property
    def severity(self) -> int:
        """The logging level a status of this kind is logged at.

        ``reconnecting`` is INFO, not WARNING: ``source_down`` already reported the outage at ERROR, and a camera
        that stays down for a day would otherwise print a console line every backoff period.
        """
        return _SEVERITY[self]

    @property
    def ends_outage(self) -> bool:
        """True for kinds that close an open outage (up again, down anew, failed for good, stopped)."""
        return self in _ENDS_OUTAGE


_SEVERITY = {StatusKind.SOURCE_UP: logging.INFO, StatusKind.SOURCE_DOWN: logging.ERROR,
             StatusKind.RECONNECTING: logging.INFO, StatusKind.SOURCE_ERROR: logging.ERROR,
             StatusKind.DROPS: logging.WARNING, StatusKind.FINISHED: logging.INFO}
_ENDS_OUTAGE = frozenset({StatusKind.SOURCE_UP, StatusKind.SOURCE_DOWN, StatusKind.SOURCE_ERROR,
                          StatusKind.FINISHED})


class BufferPolicy(StrEnum):
    """What a reader does when the consumer is slower than the source.

    ``LATEST``: the newest frame wins; a full queue discards its oldest frame (counted in ``dropped`` and reported
    in rate-limited ``drops`` statuses). The default for live sources and realtime files, where a stale frame is
    worth less than the current one. ``WAIT``: the reader waits for room; nothing is dropped. The default for files
    and folders, which are read at the consumer's pace.
    """

    LATEST = "latest"
    WAIT = "wait"


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
        buffer: what the reader does when the consumer falls behind (a :class:`BufferPolicy` or its value
            ``"latest"``/``"wait"``); None picks by kind: LATEST for live sources and realtime files, WAIT for files
            and folders.
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
    buffer: BufferPolicy | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or any(ord(c) < 32 for c in self.name):
            raise SourceError(f"camera name must be a non-empty string without control characters, got "
                              f"{self.name!r}")
        if isinstance(self.url, bool) or not isinstance(self.url, (str, int)) or self.url == "":
            raise SourceError(f"camera {self.name!r}: url must be a path, a URL or a webcam index, got "
                              f"{type(self.url).__name__}")
        if not isinstance(self.realtime, bool):  # "false" from a config file is truthy
            raise SourceError(f"camera {self.name!r}: realtime must be true or false, got {self.realtime!r}")
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
        if self.buffer is not None:
            try:
                object.__setattr__(self, "buffer", BufferPolicy(self.buffer))
            except ValueError:
                raise SourceError(f"camera {self.name!r}: buffer must be one of "
                                  f"{', '.join(repr(p.value) for p in BufferPolicy)} or unset, got "
                                  f"{self.buffer!r}") from None

    def __repr__(self) -> str:  # the URL may hold a password
        return (f"SourceConfig(name={self.name!r}, url={mask_url(self.url)!r}, interval_s={self.interval_s}, "
                f"realtime={self.realtime}, buffer={self.buffer})")


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
        kind: what happened (a :class:`StatusKind`; its value as a string is accepted and converted).
    """

    camera: str
    state: SourceState
    previous: SourceState | None
    wall_utc: datetime
    message: str
    kind: StatusKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", StatusKind(self.kind))
