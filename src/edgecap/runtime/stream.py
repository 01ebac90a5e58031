"""`edgecap.stream`: the runtime as a generator of events, with no storage."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import InputError
from ..events import Ack, Event
from .backend import CaptionBackend
from .config import CameraSpec, check_source, specs_for_sources
from .pipeline import RunOptions, Runtime

_DONE = object()


class _QueueSink:
    """An event sink that hands events to the generator's thread (bounded: a slow consumer slows the runtime,
    whose live sources then drop old frames, rather than memory growing)."""

    def __init__(self, maxsize: int):
        self.queue: queue.Queue[Any] = queue.Queue(maxsize)

    def put(self, event: Event) -> Ack:
        self.queue.put(event)
        ack = Ack()
        ack.resolve(0)
        return ack

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        pass


def _cameras(cameras: Sequence[str | int | CameraSpec] | str | int | CameraSpec,
             options: dict[str, Any]) -> list[CameraSpec]:
    if isinstance(cameras, (str, int, CameraSpec, os.PathLike)):
        cameras = [cameras]
    given = [c for c in cameras if isinstance(c, CameraSpec)]
    out = given + specs_for_sources([c for c in cameras if not isinstance(c, CameraSpec)], options,
                                    taken={c.name for c in given})
    if not out:
        raise InputError("stream() needs at least one camera: a file, folder, stream URL, webcam or CameraSpec")
    for cam in out:
        check_source(cam)
    return out


def stream(cameras: Sequence[str | int | CameraSpec] | str | int | CameraSpec, model: str | os.PathLike |
           CaptionBackend = "demo", *, precision: str = "fp32", threads: int | None = None,
           updates: bool = False, stop: threading.Event | None = None, run_options: RunOptions | None = None,
           queue_size: int = 256, **camera_options: Any) -> Iterator[Event]:
    """Caption cameras and yield their events as they happen; nothing is stored.

    Work starts at the first ``next()``: sources open, frames are gated and captioned in batches across cameras on
    a background thread, and each event is yielded as soon as it is written. The generator ends when every file
    source is done, when ``stop`` is set, or when it is closed (``break`` out of the loop): the sources stop and
    open scenes are closed (their final events are yielded unless the generator was closed).

    Args:
        cameras: files, folders, stream URLs, webcams or `CameraSpec`s (one or a list).
        model: "demo", an exported model directory, or a caption backend (e.g. a loaded `Captioner`).
        precision: "fp32" or "int8" (when ``model`` is a directory).
        threads: ONNX Runtime intra-op threads (when ``model`` is a directory).
        updates: also yield a scene each time it opens or is extended (``closed`` False), not only when it
            closes; open outages likewise.
        stop: set it (from any thread) to end the stream cleanly.
        run_options: batching and failure options (`RunOptions`).
        queue_size: events held for a slow consumer before the runtime waits for it.
        **camera_options: cameras.toml option keys for cameras given as strings (interval, read_timeout, ...).

    Yields:
        `Event`s: scenes (with caption, confidence, timings in ``details``) and source status events.

    Raises:
        InputError: bad cameras or options (before any work); RunFailedError: captioning kept failing.

    Example:
        >>> for ev in edgecap.stream("clip.mp4", interval=1.0):
        ...     print(ev.camera, ev.source_start_s, ev.caption)
    """
    from ..captioner import Captioner

    specs = _cameras(cameras, camera_options)
    backend = Captioner(model, precision=precision, threads=threads) if isinstance(model, (str, os.PathLike)) \
        else model
    sink = _QueueSink(queue_size)
    rt = Runtime(backend, specs, sink, options=run_options)
    stop = stop or threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            rt.run(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the consumer's thread
            failure.append(exc)
        finally:
            sink.queue.put(_DONE)

    thread = threading.Thread(target=work, name="edgecap-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = sink.queue.get()
            if item is _DONE:
                break
            if updates or item.closed:
                yield item
    finally:
        stop.set()
        while thread.is_alive():  # keep draining so a runtime blocked on a full queue can finish its shutdown
            try:
                sink.queue.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
    if failure:
        raise failure[0]
