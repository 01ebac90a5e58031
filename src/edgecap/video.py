"""Frames of a video file at a fixed interval, for batch jobs (calibration, evaluation): a :class:`Source` read to
its end, so files are sampled exactly as the streaming runtime samples them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ._log import logger
from .errors import SourceError
from .sources import Source, SourceConfig, SourceState, SourceStatus


@dataclass(frozen=True)
class Frame:
    """A decoded frame: position in the source (seconds, from pts) and the HxWx3 uint8 RGB image."""

    pts_s: float
    image: np.ndarray


def sample_frames(path: str | os.PathLike, interval_s: float) -> Iterator[Frame]:
    """Yield the first frame at or after every multiple of ``interval_s`` seconds of a video file.

    Undecodable packets are skipped (as a camera source skips them) and logged once the file is read; a file that
    cannot be read at all raises, with nothing logged (the exception is the one report).

    Args:
        path: a video file PyAV can open.
        interval_s: sampling interval in seconds (> 0).

    Returns:
        An iterator of :class:`Frame`, in file order.

    Raises:
        SourceError: the interval is not positive, the file is missing, or it cannot be decoded.
    """
    path = os.fspath(path)
    cfg = SourceConfig(name="video", url=path, interval_s=interval_s)  # validates the interval
    if not os.path.isfile(path):
        raise SourceError(f"video file not found: {path}")
    statuses: list[SourceStatus] = []
    with Source(cfg, on_status=statuses.append, log_statuses=False) as src:
        while (sample := src.read()) is not None:
            if sample.pts_s is not None:
                yield Frame(sample.pts_s, sample.image)
    failures = [s.message for s in statuses if s.state is SourceState.FAILED]
    if failures:
        raise SourceError(failures[-1])
    for status in statuses:
        if status.kind.severity > logging.INFO:
            logger.log(status.kind.severity, "[%s] %s: %s", status.camera, status.kind.value, status.message)
