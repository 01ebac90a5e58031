"""Camera and file sources for the streaming runtime: one reader thread per source, an explicit state machine.

A :class:`Source` reads a video file, a folder of images, an RTSP/HTTP stream or a webcam on its own daemon thread
and hands sampled frames to the consumer through :meth:`Source.read`. Its :class:`BufferPolicy` says what happens
when the consumer falls behind (WAIT: files and folders by default; LATEST: live sources by default). Statuses
(:class:`SourceStatus`, of a :class:`StatusKind`) report every state change and problem; camera passwords never
appear in them (:func:`mask_url`).

Modules: ``records`` (configuration, samples, statuses, enums), ``state`` (the state machine), ``urls`` (masking,
classification, protocol policy), ``clock`` (reconnect rate cap, PyAV interrupt hook), ``decoding`` (frame
producers) and ``readers`` (:class:`Source`).

Example::

    with Source(SourceConfig(name="door", url="rtsp://user:pw@10.0.0.5/stream1", interval_s=1.0)) as src:
        while (sample := src.read(timeout=1.0)) is not None or not src.finished:
            ...
"""

from .clock import GLOBAL_RECONNECT_BURST, GLOBAL_RECONNECTS_PER_S
from .readers import Source, open_sources
from .records import IMAGE_EXTENSIONS, BufferPolicy, FrameSample, SourceConfig, SourceStatus, StatusKind
from .state import ALLOWED_TRANSITIONS, TERMINAL_STATES, SourceState, check_transition
from .urls import classify_source, mask_url

__all__ = [
    "ALLOWED_TRANSITIONS", "BufferPolicy", "FrameSample", "GLOBAL_RECONNECT_BURST", "GLOBAL_RECONNECTS_PER_S",
    "IMAGE_EXTENSIONS", "Source", "SourceConfig", "SourceState", "SourceStatus", "StatusKind", "TERMINAL_STATES",
    "check_transition", "classify_source", "mask_url", "open_sources",
]
