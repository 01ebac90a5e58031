"""The streaming runtime: sources -> change gate -> cross-camera batches -> caption backend -> scene events -> sinks.

One reader thread per source (see `edgecap.sources`) fills a bounded queue; this loop, on the calling thread, takes
the ready frames, gates them, and captions the admitted frames of all cameras as one batch (at most one frame per
camera, bounded by ``max_batch`` and ``max_wait_s``). Captions feed one SceneTracker per camera; scene events are
written to every sink when they open, as they are extended and when they close. Source status changes arrive on
the reader threads and are queued; this loop turns them into system events (an outage is one event, see
``Runtime._apply_status``), so every sink and every piece of runtime state is touched by one thread only. A backend
that can encode separately (a Captioner) encodes first: the gate's embedding stage uses the pooled vectors, and a new
scene's first write carries its vector to sinks that store it (`similar scenes` on the review page).

A batch that fails (a model exception) gives its cameras an ``error`` event and the run goes on; when captioning
has failed for ``fail_after_s`` and at least ``fail_after_batches`` batches in a row, the run ends with
:class:`~edgecap.errors.RunFailedError`. A sink or callback that raises is logged and counted, never fatal alone.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._log import logger
from ..errors import InputError, RunFailedError
from ..events import ERROR, Event, EventSink, save_jpeg
from ..sources import FrameSample, Source, SourceState, SourceStatus, StatusKind
from .backend import CaptionBackend, EmbeddingBackend
from .config import CameraSpec
from .gate import ChangeGate
from .scenes import OpenScene, SceneTracker

FRAME_AGE_WINDOW = 10_000  # captioned frames whose age RunStats keeps
STOP_TIMEOUT_S = 2.0  # how long shutdown waits for all reader threads together


@dataclass
class RunStats:
    """Counters of a run, per camera and overall."""

    per_camera: dict[str, Counter] = field(default_factory=dict)
    batches: int = 0
    failed_batches: int = 0
    batched_frames: int = 0
    max_batch_seen: int = 0
    scenes: int = 0
    sink_errors: int = 0
    # read -> caption done, for the most recent captioned frames (bounded: a run can last months)
    frame_age_ms: deque[float] = field(default_factory=lambda: deque(maxlen=FRAME_AGE_WINDOW))

    def camera(self, name: str) -> Counter:
        return self.per_camera.setdefault(name, Counter())


@dataclass(frozen=True)
class RunOptions:
    """How the runtime batches, writes and gives up.

    Attributes:
        max_batch: most frames per caption batch (>= 1).
        max_wait_s: longest a ready frame waits for others to join its batch.
        scene_update_s: how often an extended scene's end is rewritten while nothing changes.
        thumbnail_dir: where a JPEG of each scene's first frame goes (None: no thumbnails).
        generation: generation options passed to the backend (num_beams, max_new_tokens, ...).
        fail_after_s: give up when captioning (or every sink) has failed for this long ...
        fail_after_batches: ... and for at least this many batches (writes) in a row.
        embeddings: store each scene's pooled image embedding with its first write, for "find similar" (needs a
            backend that encodes separately; with any other backend no embedding is stored).
    """

    max_batch: int = 8
    max_wait_s: float = 0.05
    scene_update_s: float = 5.0
    thumbnail_dir: Path | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    fail_after_s: float = 60.0
    fail_after_batches: int = 5
    embeddings: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise InputError(f"max_batch must be an integer >= 1, got {self.max_batch!r}")
        if isinstance(self.fail_after_batches, bool) or not isinstance(self.fail_after_batches, int) \
                or self.fail_after_batches < 1:
            raise InputError(f"fail_after_batches must be an integer >= 1, got {self.fail_after_batches!r}")
        for name in ("max_wait_s", "scene_update_s", "fail_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise InputError(f"{name} must be a number of seconds >= 0, got {value!r}")


class SourceLike(Protocol):
    """What the runtime uses of a source (`edgecap.sources.Source`; tests pass scripted stand-ins)."""

    state: SourceState

    @property
    def finished(self) -> bool: ...

    @property
    def counters(self) -> dict[str, int]: ...

    def start(self) -> Any: ...

    def read(self, timeout: float | None = None) -> FrameSample | None: ...

    def request_stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> bool: ...


SourceFactory = Callable[..., SourceLike]  # (SourceConfig, *, on_status) -> SourceLike


@dataclass
class _Incident:
    """An event that stays open while a condition lasts (a source outage, failing captions), rewritten (same uid)
    as it goes on, so a camera down for a month is one event, not one per attempt."""

    uid: str
    kind: str
    camera: str
    start: datetime
    details: dict[str, Any]

    def event(self, now: datetime, *, closed: bool) -> Event:
        return Event(uid=self.uid, kind=self.kind, camera=self.camera, start=self.start, end=now,
                     details=dict(self.details), closed=closed)


class _Streak:
    """Consecutive failures: long enough to give up once both bounds are passed."""

    def __init__(self, min_count: int, min_seconds: float):
        self.min_count, self.min_seconds = min_count, min_seconds
        self.count, self.since = 0, 0.0

    def failed(self) -> bool:
        if self.count == 0:
            self.since = time.monotonic()
        self.count += 1
        return self.count >= self.min_count and time.monotonic() - self.since >= self.min_seconds

    def ok(self) -> None:
        self.count = 0


class _Camera:
    def __init__(self, spec: CameraSpec, source: SourceLike):
        self.spec = spec
        self.source = source
        self.gate = ChangeGate(spec.gate)
        self.tracker = SceneTracker(spec.name)
        self.last_write = 0.0
        self.change_start: FrameSample | None = None  # first frame of a change the gate is letting settle
        self.last_deferred: FrameSample | None = None  # newest frame of that change, captioned if the source ends


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class Runtime:
    """Run cameras until every file source is done, or until ``stop`` is set.

    Args:
        backend: the caption backend (an `edgecap.Captioner`, or anything with `CaptionBackend`'s methods).
        cameras: camera specs (from the CLI or cameras.toml).
        sinks: where events go (an `edgecap.events.EventStore`, a JSONL sink, a live feed, ...): one or several.
            Every sink is called from the thread that runs `run`.
        options: batching, writing and failure options.
        on_scene: called with every scene event that closes (for printing a timeline).
        source_factory: builds a source from its config (default `edgecap.sources.Source`).

    Raises:
        InputError: a camera needs the embedding gate but the backend cannot encode separately; duplicate names.
    """

    def __init__(self, backend: CaptionBackend, cameras: Sequence[CameraSpec], sinks: EventSink | Sequence[EventSink],
                 *, options: RunOptions | None = None, on_scene: Callable[[Event], None] | None = None,
                 source_factory: SourceFactory = Source):
        self.backend = backend
        self.sinks: list[EventSink] = list(sinks) if isinstance(sinks, (list, tuple)) else [sinks]
        self.opts = options or RunOptions()
        self.on_scene = on_scene
        self.stats = RunStats()
        self.check(backend, cameras)
        self._provenance = dict(backend.provenance)
        self._statuses: queue.SimpleQueue[SourceStatus] = queue.SimpleQueue()  # reader threads -> run thread
        self._incidents: dict[tuple[str, str], _Incident] = {}  # (camera, kind) -> its open event
        self._caption_streak = _Streak(self.opts.fail_after_batches, self.opts.fail_after_s)
        self._sink_streak = _Streak(self.opts.fail_after_batches, self.opts.fail_after_s)
        self.cameras = [_Camera(spec, source_factory(spec.source, on_status=self._statuses.put))
                        for spec in cameras]

    @staticmethod
    def check(backend: CaptionBackend, cameras: Sequence[CameraSpec]) -> None:
        """What the constructor refuses, checked with no side effect: a CLI calls it before it creates the event
        log, so a camera the model cannot serve leaves nothing behind.

        Raises:
            InputError: duplicate camera names; the embedding gate without a backend that encodes separately; a
                camera's prompt the model cannot take (the model's own line, said of the camera).
        """
        names = [spec.name for spec in cameras]
        if len(set(names)) != len(names):
            raise InputError(f"camera names must be unique, got {sorted(n for n in set(names) if names.count(n) > 1)}")
        if any(spec.gate.embedding_distance is not None for spec in cameras) and \
                not isinstance(backend, EmbeddingBackend):
            raise InputError("the gate's embedding stage (embedding_distance) needs a backend that encodes "
                             "separately (encode_images/caption_encoded); remove embedding_distance or use a "
                             "Captioner")
        for spec in cameras:  # a prompt the model cannot take fails here, in one line, not at the first batch
            if spec.prompt is not None:
                check = getattr(backend, "check_prompt", None)
                if check is None:
                    raise InputError(f"camera {spec.name!r} has a prompt, but the caption backend takes none")
                try:
                    check(spec.prompt)
                except InputError as exc:  # the model's own line, said of the camera whose prompt it is
                    raise InputError(f"camera {spec.name!r}: {exc}") from None

    # -- events -----------------------------------------------------------------------------------------------
    def _put(self, ev: Event, embedding: np.ndarray | None = None) -> None:
        """Hand an event to every sink (and its image embedding to the sinks that store one); a sink that raises
        is logged and counted, the others still get it."""
        failed = 0
        for sink in self.sinks:
            try:
                if embedding is not None and getattr(sink, "accepts_embeddings", False):
                    sink.put(ev, embedding=embedding)
                else:
                    sink.put(ev)
            except Exception as exc:  # noqa: BLE001 - one sink must not stop the cameras or the other sinks
                failed += 1
                self.stats.sink_errors += 1
                logger.error("event %s not written to %s: %s", ev.uid, type(sink).__name__, _one_line(exc))
        if failed < len(self.sinks):
            self._sink_streak.ok()
        elif self._sink_streak.failed():
            raise RunFailedError(f"no event could be written for {self.opts.fail_after_s:g} s "
                                 f"({self._sink_streak.count} writes in a row failed); see the log above")

    def _open_incident(self, camera: str, kind: str, when: datetime, details: dict[str, Any]) -> None:
        incident = _Incident(uuid.uuid4().hex, kind, camera, when, details)
        self._incidents[camera, kind] = incident
        self._put(incident.event(when, closed=False))

    def _close_incident(self, camera: str, kind: str, when: datetime, ended_by: str) -> None:
        incident = self._incidents.pop((camera, kind), None)
        if incident is not None:
            incident.details["ended_by"] = ended_by
            self._put(incident.event(when, closed=True))

    def _apply_status(self, st: SourceStatus) -> None:
        """A source status (queued by a reader thread) becomes a system event.

        An outage is one ``source_down`` event from the first failure to the recovery: each further failed attempt
        updates it (``end``, ``details.attempts``, ``details.last_error``) instead of adding a row. It is open
        (``closed`` False) until the source is up again, fails for good or stops.
        """
        self.stats.camera(st.camera)[f"status_{st.kind}"] += 1
        outage = self._incidents.get((st.camera, StatusKind.SOURCE_DOWN))
        if st.kind == StatusKind.RECONNECTING:
            if outage is not None:
                outage.details.update(attempts=outage.details["attempts"] + 1, last_error=st.message,
                                      state=st.state.name)
                self._put(outage.event(st.wall_utc, closed=False))
            return
        if st.kind.ends_outage:
            self._close_incident(st.camera, StatusKind.SOURCE_DOWN, st.wall_utc, str(st.kind))
        details = {"message": st.message, "state": st.state.name}
        if st.kind == StatusKind.SOURCE_DOWN:
            self._open_incident(st.camera, StatusKind.SOURCE_DOWN, st.wall_utc, {**details, "attempts": 1})
            return
        self._put(Event(uid=uuid.uuid4().hex, kind=str(st.kind), camera=st.camera, start=st.wall_utc,
                        end=st.wall_utc, details=details))

    def _drain_statuses(self) -> None:
        while True:
            try:
                st = self._statuses.get_nowait()
            except queue.Empty:
                return
            self._apply_status(st)

    def _scene_event(self, cam: _Camera, scene: OpenScene, closed: bool) -> Event:
        return Event(uid=scene.uid, kind="scene", camera=cam.spec.name, start=scene.start, end=scene.end,
                     source_start_s=scene.source_start_s, source_end_s=scene.source_end_s, caption=scene.caption,
                     confidence=round(scene.confidence, 4), observations=scene.observations,
                     thumbnail=scene.thumbnail, details=scene.details, closed=closed)

    def _write_scene(self, cam: _Camera, scene: OpenScene, closed: bool,
                     embedding: np.ndarray | None = None) -> None:
        ev = self._scene_event(cam, scene, closed)
        self._put(ev, embedding)
        cam.last_write = time.monotonic()
        if closed:
            self.stats.scenes += 1
            if self.on_scene:
                try:
                    self.on_scene(ev)
                except Exception as exc:  # noqa: BLE001 - a display callback must not stop the cameras
                    logger.error("on_scene callback failed for %s: %s", ev.uid, _one_line(exc))

    # -- main loop --------------------------------------------------------------------------------------------
    def _collect(self, pending: list[tuple[_Camera, FrameSample, FrameSample]]) -> bool:
        """Take ready frames (gated) into ``pending``, at most one per camera per batch: a camera's later frames
        wait until its caption is applied, so they extend the right scene. True if any frame was read."""
        got = False
        waiting = {id(cam) for cam, _, _ in pending}
        for cam in self.cameras:
            if id(cam) in waiting:
                continue
            while len(pending) < self.opts.max_batch:
                sample = cam.source.read(timeout=0)
                if sample is None:
                    if cam.source.finished and cam.last_deferred is not None:
                        # the source ended while a change was settling: caption its last frame
                        self._admit(cam, cam.last_deferred, pending)
                    break
                got = True
                c = self.stats.camera(cam.spec.name)
                c["sampled"] += 1
                decision = cam.gate.check(sample.image, sample.mono)
                if not decision.changed:
                    c["gated_out"] += 1
                    if decision.reason == "moving":
                        c["deferred_moving"] += 1
                        cam.change_start = cam.change_start or sample
                        cam.last_deferred = sample
                    else:
                        cam.change_start = cam.last_deferred = None
                    scene = cam.tracker.touch(sample.wall_utc, sample.pts_s)
                    if scene is not None and time.monotonic() - cam.last_write >= self.opts.scene_update_s:
                        self._write_scene(cam, scene, closed=False)
                    continue
                self._admit(cam, sample, pending)
                break
        return got

    @staticmethod
    def _admit(cam: _Camera, sample: FrameSample, pending: list) -> None:
        cam.gate.accept(sample.image, sample.mono)
        pending.append((cam, sample, cam.change_start or sample))
        cam.change_start = cam.last_deferred = None

    def _caption(self, pending: list[tuple[_Camera, FrameSample, FrameSample]]) -> None:
        """Caption admitted frames (camera, frame, first frame of the change) as one batch; a failed batch gives
        its cameras an ``error`` event (one per failure streak, updated) and leaves their gates ready to caption
        the next frame."""
        self.stats.batches += 1
        self.stats.batched_frames += len(pending)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(pending))
        pooled: list[np.ndarray | None] = [None] * len(pending)
        try:
            if self._encode_first(pending):
                pending, caps, pooled = self._caption_encoded(pending)
            else:
                caps = self.backend.caption_batch([s.image for _, s, _ in pending],
                                                  **self._options([cam for cam, _, _ in pending]))
            if len(caps) != len(pending):
                raise RuntimeError(f"the backend returned {len(caps)} captions for {len(pending)} frames")
        except Exception as exc:  # noqa: BLE001 - one bad batch must not stop every camera
            self._batch_failed(pending, exc)
            return
        self._caption_streak.ok()
        done = time.monotonic()
        for (cam, sample, since), c, vec in zip(pending, caps, pooled):
            self._close_incident(cam.spec.name, ERROR, sample.wall_utc, "recovered")
            self.stats.camera(cam.spec.name)["captioned"] += 1
            self.stats.frame_age_ms.append((done - sample.mono) * 1e3)
            details = {**self._provenance, "batch": len(pending),
                       "ms": {k: round(v, 1) for k, v in c.timings.items() if k != "decoder_steps"}}
            if cam.spec.prompt is not None:
                details["prompt"] = cam.spec.prompt
            if getattr(c, "objects", None) is not None:  # detection tasks: the caption is the labels, boxes here
                # (an empty list says the task ran and found nothing)
                details["objects"] = [dataclasses.asdict(o) for o in c.objects]
            closed, scene, is_new = cam.tracker.observe(c.text, sample.wall_utc, sample.pts_s,
                                                        c.confidence or 0.0, details,
                                                        changed_at=(since.wall_utc, since.pts_s))
            if closed is not None:
                self._write_scene(cam, closed, closed=True)
            if is_new and self.opts.thumbnail_dir is not None:
                try:
                    scene.thumbnail = str(save_jpeg(self.opts.thumbnail_dir / f"{scene.uid}.jpg", sample.image))
                except Exception as exc:  # noqa: BLE001 - a thumbnail must never stop captioning
                    logger.warning("thumbnail for %s not written: %s", cam.spec.name, _one_line(exc))
            self._write_scene(cam, scene, closed=False, embedding=vec if is_new else None)

    def _options(self, cameras: list[_Camera]) -> dict[str, Any]:
        """Generation options of a batch: the run's, plus one prompt per frame when any camera has a prompt (a
        backend without prompts is never asked for them)."""
        if all(cam.spec.prompt is None for cam in cameras):
            return self.opts.generation
        return {**self.opts.generation, "prompt": [cam.spec.prompt for cam in cameras]}

    def _batch_failed(self, pending: list[tuple[_Camera, FrameSample, FrameSample]], exc: Exception) -> None:
        self.stats.failed_batches += 1
        message = f"caption batch of {len(pending)} failed: {_one_line(exc)}"
        logger.error("%s (cameras: %s)", message, ", ".join(cam.spec.name for cam, _, _ in pending))
        for cam, sample, _ in pending:
            self.stats.camera(cam.spec.name)["caption_errors"] += 1
            cam.gate = ChangeGate(cam.spec.gate)  # the failed frame was never captioned: compare with nothing
            incident = self._incidents.get((cam.spec.name, ERROR))
            if incident is None:
                self._open_incident(cam.spec.name, ERROR, sample.wall_utc, {"message": message, "failures": 1})
            else:
                incident.details.update(failures=incident.details["failures"] + 1, last_error=message)
                self._put(incident.event(sample.wall_utc, closed=False))
        if self._caption_streak.failed():
            raise RunFailedError(f"captioning failed {self._caption_streak.count} batches in a row for "
                                 f"{time.monotonic() - self._caption_streak.since:.0f} s (last: {_one_line(exc)}); "
                                 "check the model and the log")

    def _encode_first(self, pending: list[tuple[_Camera, FrameSample, FrameSample]]) -> bool:
        """Whether a batch is encoded before decoding: for the gate's embedding stage, or to keep the pooled
        embeddings of new scenes (checked in __init__: the gate's stage implies an EmbeddingBackend)."""
        if any(cam.spec.gate.embedding_distance is not None for cam, _, _ in pending):
            return True
        return self.opts.embeddings and isinstance(self.backend, EmbeddingBackend)

    def _caption_encoded(self, pending):
        """Encode, then decode only the frames whose pooled embedding moved (stage 2 of the gate, for the cameras
        that have it; every frame of the others), one group per prompt (a model such as Florence-2 reads the prompt
        in its encoder). Returns the kept frames, their captions and their pooled embeddings (None where the model
        has none or embeddings are not stored)."""
        groups: dict[str | None, list[tuple[_Camera, FrameSample, FrameSample]]] = {}
        for item in pending:
            groups.setdefault(item[0].spec.prompt, []).append(item)
        kept, caps, vecs = [], [], []
        for prompt, items in groups.items():
            k, c, v = self._caption_encoded_group(items, {} if prompt is None else {"prompt": prompt})
            kept += k
            caps += c
            vecs += v
        return kept, caps, vecs

    def _caption_encoded_group(self, pending, prompt: dict[str, str]):
        timings: dict[str, float] = {}
        backend: EmbeddingBackend = self.backend  # type: ignore[assignment]  # checked in __init__
        enc = backend.encode_images([s.image for _, s, _ in pending], timings=timings, **prompt)
        keep = []
        for i, (cam, sample, _) in enumerate(pending):
            pooled = None if enc.pooled is None else enc.pooled[i]
            if cam.gate.embedding_changed(pooled):
                cam.gate.accept(sample.image, sample.mono, pooled)
                keep.append(i)
            else:
                self.stats.camera(cam.spec.name)["gated_out_embedding"] += 1
                cam.tracker.touch(sample.wall_utc, sample.pts_s)
        if not keep:
            return [], [], []
        caps = backend.caption_encoded(enc.select(keep), timings=timings, **prompt, **self.opts.generation)
        stored = self.opts.embeddings and enc.pooled is not None
        return [pending[i] for i in keep], caps, [enc.pooled[i] if stored else None for i in keep]

    def run(self, stop: threading.Event | None = None) -> int:
        """Run until all file sources finish (returns 0, or 1 if a source failed) or ``stop`` is set (0).

        ``stop`` is polled with ``is_set()`` and ``wait(0.005)``. Do not set a ``threading.Event`` from a signal
        handler: the handler runs on this thread and can find it holding the event's lock inside ``wait()``, and
        ``set()`` then deadlocks; use ``edgecap.cli.signals.SignalStop`` (lock-free ``set()``) there instead.

        Raises:
            RunFailedError: captioning or every sink kept failing (after closing scenes and stopping sources).
        """
        stop = stop or threading.Event()
        pending: list[tuple[_Camera, FrameSample, FrameSample]] = []
        first_pending = 0.0
        try:
            for cam in self.cameras:
                cam.source.start()
            while not stop.is_set():
                self._drain_statuses()
                got = self._collect(pending)
                if pending and not first_pending:
                    first_pending = time.monotonic()
                active = sum(1 for cam in self.cameras if not cam.source.finished)
                full = len(pending) >= min(self.opts.max_batch, max(1, active))
                if pending and (full or time.monotonic() - first_pending >= self.opts.max_wait_s or not got):
                    batch, pending, first_pending = pending, [], 0.0
                    self._caption(batch)
                    continue
                if not got:
                    if active == 0:
                        break
                    stop.wait(0.005)
        finally:
            self._shutdown()
        failed = [cam.spec.name for cam in self.cameras if cam.source.state is SourceState.FAILED]
        return 1 if failed else 0

    def _shutdown(self) -> None:
        """Stop every source at once (one shared deadline), then close scenes and incidents and flush the sinks.
        Runs after errors too, so it must not raise over the error that brought it here."""
        for cam in self.cameras:
            cam.source.request_stop()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for cam in self.cameras:
            if not cam.source.join(max(0.0, deadline - time.monotonic())):
                logger.warning("camera %s: reader thread did not stop within %.0f s", cam.spec.name, STOP_TIMEOUT_S)
        try:
            self._drain_statuses()
            for cam in self.cameras:
                c = self.stats.camera(cam.spec.name)
                for key in ("frames_read", "dropped", "decode_errors", "reconnects"):
                    c[key] = int(cam.source.counters.get(key, 0))
                scene = cam.tracker.close()
                if scene is not None:
                    self._write_scene(cam, scene, closed=True)
            for camera, kind in list(self._incidents):
                self._close_incident(camera, kind, _now(), "stopped")
        except RunFailedError as exc:
            logger.error("shutdown: %s", exc)
        for sink in self.sinks:
            try:
                sink.flush(timeout=3.0)
            except Exception as exc:  # noqa: BLE001
                logger.error("flushing %s failed: %s", type(sink).__name__, _one_line(exc))

