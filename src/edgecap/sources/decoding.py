"""Frame producers for the reader threads: PyAV containers, image folders and the OpenCV webcam fallback.

A producer yields ``(pts_s, payload)`` pairs: the position in seconds (None when the source has none) and a PyAV
frame or an RGB array (:func:`to_rgb` turns either into HxWx3 uint8). Producers know nothing of queues or states;
they report skipped bad input through an ``on_decode_error`` callback and stop when a ``stop`` event is set.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import DependencyError, SourceError
from .records import IMAGE_EXTENSIONS

__all__ = ["Frames", "Stalled", "av_frames", "folder_frames", "is_auth_failure", "list_images", "opencv_frames",
           "preload_av", "to_rgb", "webcam_input"]

#: What a producer yields: (position in seconds or None, a PyAV frame or an RGB array).
Frames = Iterator[tuple[float | None, Any]]

MAX_BAD_PACKETS = 50  # undecodable packets in a row before a stream counts as broken
_AUTH_TEXT_RE = re.compile(r"\b40[13]\b|unauthori[sz]ed|forbidden", re.IGNORECASE)


class Stalled(Exception):
    """No frame within read_timeout_s although the connection delivers data."""


def preload_av() -> None:
    """Import PyAV on the calling thread, before any reader thread exists. PyAV's extension modules import each
    other; first imports racing on several threads can hand one of them a partially initialised module ("module
    'av' has no attribute 'open'"), which failed good cameras at start-up in 5 of 20 runs."""
    try:
        import av  # noqa: F401
        import av.container.core  # noqa: F401
    except ImportError:
        pass  # reported by the reader thread (DependencyError), or a webcam falls back to OpenCV


def is_auth_failure(exc: BaseException) -> bool:
    """True when ``exc`` says the camera refused the credentials (HTTP/RTSP 401 or 403)."""
    import av

    if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError, PermissionError)):
        return True
    return bool(_AUTH_TEXT_RE.search(str(getattr(exc, "strerror", None) or exc)))


def to_rgb(payload: Any) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a producer's payload."""
    if isinstance(payload, np.ndarray):
        return payload
    return payload.to_ndarray(format="rgb24")


def webcam_input(url: str | int) -> tuple[str, str] | None:
    """(PyAV input, format) for a webcam, or None when this PyAV build cannot capture it (then OpenCV is tried)."""
    import av

    index = int(url) if isinstance(url, int) or url.isdigit() else None
    if sys.platform.startswith("linux") and "v4l2" in av.formats_available:
        return (f"/dev/video{index}" if index is not None else str(url)), "v4l2"
    if sys.platform == "darwin" and index is not None and "avfoundation" in av.formats_available:
        return str(index), "avfoundation"
    return None


def list_images(folder: str) -> list[str]:
    """The image files of ``folder`` (by :data:`IMAGE_EXTENSIONS`), in name order."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def av_frames(container: Any, stream: Any, *, live: bool, stalled: Callable[[], bool],
              on_decode_error: Callable[[BaseException], None]) -> Frames:
    """Decode ``stream`` of an open PyAV container.

    Args:
        container: the open container.
        stream: its video stream.
        live: positions count from the first frame received, not from the stream's start time; ``stalled`` is
            checked after every packet.
        stalled: True when the live source has delivered no frame for too long (raises :class:`Stalled`).
        on_decode_error: called for each undecodable packet (skipped).

    Raises:
        SourceError: :data:`MAX_BAD_PACKETS` undecodable packets in a row.
        Stalled: ``stalled()`` became true.
    """
    import av

    start = stream.start_time
    offset = float(start * stream.time_base) if (start is not None and not live) else 0.0
    rate = float(stream.average_rate) if stream.average_rate else None
    bad_in_a_row = decoded = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:  # one bad packet: count it and go on
            bad_in_a_row += 1
            on_decode_error(exc)
            if bad_in_a_row >= MAX_BAD_PACKETS:
                raise SourceError(f"{bad_in_a_row} undecodable packets in a row") from None
            continue
        bad_in_a_row = 0
        for frame in frames:
            t = frame.time
            if t is None and rate:
                t = decoded / rate + offset
            decoded += 1
            yield (None if t is None else t - offset), frame
        if live and stalled():
            raise Stalled()


def folder_frames(images: list[str], interval_s: float, stop: threading.Event,
                  on_decode_error: Callable[[BaseException, str], None]) -> Frames:
    """Decode ``images`` in order, image ``i`` at position ``i * interval_s``; a corrupt one is reported, skipped."""
    import av

    for index, path in enumerate(images):
        if stop.is_set():
            return
        try:
            with av.open(path, metadata_errors="replace") as container:
                frame = next(container.decode(video=0), None)
                if frame is None:
                    raise SourceError("no image data")
                image = frame.to_ndarray(format="rgb24")
        except Exception as exc:  # noqa: BLE001 - a corrupt image is counted and skipped
            on_decode_error(exc, os.path.basename(path))
            continue
        yield index * interval_s, image


@contextmanager
def opencv_frames(device: int | str, stop: threading.Event) -> Iterator[Frames]:
    """Webcam frames through OpenCV, for PyAV builds without a capture input on this platform.

    Raises:
        DependencyError: OpenCV is not installed.
        SourceError: OpenCV cannot open the device.
    """
    try:
        import cv2
    except ImportError:
        raise DependencyError(f"webcam {device}: this PyAV build has no capture input for this platform and "
                              f"OpenCV is not installed; pip install opencv-python-headless") from None
    capture = cv2.VideoCapture(device)

    def frames() -> Frames:
        while not stop.is_set():
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
