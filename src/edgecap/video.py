"""Reading frames from video files with PyAV (the file source; live sources come with the streaming runtime)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import SourceError


@dataclass(frozen=True)
class Frame:
    """A decoded frame: position in the source (seconds, from pts) and the HxWx3 uint8 RGB image."""

    pts_s: float
    image: np.ndarray


def sample_frames(path: str | os.PathLike, interval_s: float) -> Iterator[Frame]:
    """Yield the first frame at or after every multiple of ``interval_s`` seconds of a video file.

    Args:
        path: a video file PyAV can open.
        interval_s: sampling interval in seconds (> 0).

    Raises:
        SourceError: the file is missing or cannot be decoded.
    """
    if interval_s <= 0:
        raise SourceError(f"sampling interval must be > 0 s, got {interval_s}")
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SourceError(f"video file not found: {path}")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as exc:
        raise SourceError(f"cannot open {path}: {type(exc).__name__}; expected a video file") from None
    with container:
        if not container.streams.video:
            raise SourceError(f"{path} has no video stream")
        stream = container.streams.video[0]
        next_t = 0.0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if t + 1e-6 < next_t:
                    continue
                yield Frame(t, frame.to_ndarray(format="rgb24"))
                while next_t <= t + 1e-6:
                    next_t += interval_s
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            raise SourceError(f"decoding {path} failed: {type(exc).__name__}") from None
