"""The streaming runtime: sources -> change gate -> cross-camera batches -> captioner -> scene events -> store.

One reader thread per source (see sources.py) fills a bounded queue; this loop, on the calling thread, takes the
ready frames, gates them, and captions the admitted frames of all cameras as one batch (at most one frame per
camera, bounded by ``max_batch`` and ``max_wait_s``). Captions feed one SceneTracker per camera; scene events are
written when they open, as they are extended and when they close, and source status changes become system events
(an outage is one event, see ``Runtime._on_status``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .._log import logger
from ..captioner import Captioner
from .config import CameraSpec
from ..events import SYSTEM_KINDS, Event, EventStore, save_jpeg, thumbnail_dir
from .gate import ChangeGate
from .scenes import OpenScene, SceneTracker
from ..sources import FrameSample, Source, SourceConfig, SourceState, SourceStatus


FRAME_AGE_WINDOW = 10_000  # captioned frames whose age RunStats keeps


@dataclass
class RunStats:
    """Counters of a run, per camera and overall."""

    per_camera: dict[str, Counter] = field(default_factory=dict)
    batches: int = 0
    batched_frames: int = 0
    max_batch_seen: int = 0
    scenes: int = 0
    # read -> caption done, for the most recent captioned frames (bounded: a run can last months)
    frame_age_ms: deque[float] = field(default_factory=lambda: deque(maxlen=FRAME_AGE_WINDOW))

    def camera(self, name: str) -> Counter:
        return self.per_camera.setdefault(name, Counter())


@dataclass(frozen=True)
class RunOptions:
    max_batch: int = 8
    max_wait_s: float = 0.05
    scene_update_s: float = 5.0  # how often an extended scene's end is rewritten while nothing changes
    thumbnails: bool = True
    generation: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Outage:
    """The open ``source_down`` event of a camera, rewritten (same uid) at every failed attempt."""

    uid: str
    camera: str
    start: datetime
    details: dict[str, Any]

    def event(self, now: datetime, *, closed: bool) -> Event:
        return Event(uid=self.uid, kind="source_down", camera=self.camera, start=self.start, end=now,
                     details=dict(self.details), closed=closed)


class _Camera:
    def __init__(self, spec: CameraSpec, source: Source):
        self.spec = spec
        self.source = source
        self.gate = ChangeGate(spec.gate)
        self.tracker = SceneTracker(spec.name)
        self.last_write = 0.0
        self.change_start: FrameSample | None = None  # first frame of a change the gate is letting settle
        self.last_deferred: FrameSample | None = None  # newest frame of that change, captioned if the source ends


class Runtime:
    """Run cameras until every file source is done, or until ``stop`` is set.

    Args:
        captioner: the model.
        cameras: camera specs (from the CLI or cameras.toml).
        store: the event store (scene and system events go there).
        options: batching and scene-writing options.
        on_scene: called with every scene event that closes (for printing a timeline).
    """

    def __init__(self, captioner: Captioner, cameras: list[CameraSpec], store: EventStore, *,
                 options: RunOptions | None = None, on_scene: Callable[[Event], None] | None = None):
        self.cap = captioner
        self.store = store
        self.opts = options or RunOptions()
        self.on_scene = on_scene
        self.stats = RunStats()
        self._thumbs = thumbnail_dir(store.path) if self.opts.thumbnails else None
        m = captioner.manifest
        self._provenance = {"model": m.data.get("name"), "precision": captioner.precision,
                            "model_sha256": m.data["graphs"][captioner.precision]["encoder"].get("sha256", "")[:16]}
        self._outages: dict[str, _Outage] = {}  # camera -> its open source_down event (reader threads)
        self.cameras = [_Camera(spec, Source(SourceConfig(
            name=spec.name, url=spec.url, interval_s=spec.interval_s, realtime=spec.realtime,
            open_timeout_s=spec.open_timeout_s, read_timeout_s=spec.read_timeout_s), on_status=self._on_status))
            for spec in cameras]

    # -- events -----------------------------------------------------------------------------------------------
    def _on_status(self, st: SourceStatus) -> None:
        """Source status changes (reader threads) become system events.

        An outage is one ``source_down`` event from the first failure to the recovery: each further failed attempt
        updates it (``end``, ``details.attempts``, ``details.last_error``) instead of adding a row, so a camera
        that stays down for a month is one event, not one per backoff period. It is open (``closed`` False) until
        the source is up again, fails for good or stops.
        """
        self.stats.camera(st.camera)[f"status_{st.kind}"] += 1
        if st.kind not in SYSTEM_KINDS:
            return
        outage = self._outages.get(st.camera)
        if st.kind == "reconnecting" and outage is not None:
            outage.details.update(attempts=outage.details["attempts"] + 1, last_error=st.message,
                                  state=st.state.name)
            self.store.put(outage.event(st.wall_utc, closed=False))
            return
        if outage is not None and st.kind in ("source_up", "source_down", "source_error", "finished"):
            # up again, failed for good, stopped (or, defensively, a new outage reported): this one ends here
            del self._outages[st.camera]
            outage.details["ended_by"] = st.kind
            self.store.put(outage.event(st.wall_utc, closed=True))
        details = {"message": st.message, "state": st.state.name}
        uid = f"{st.camera}-{st.kind}-{time.monotonic_ns()}"
        if st.kind == "source_down":
            self._outages[st.camera] = outage = _Outage(uid, st.camera, st.wall_utc, {**details, "attempts": 1})
            self.store.put(outage.event(st.wall_utc, closed=False))
            return
        self.store.put(Event(uid=uid, kind=st.kind, camera=st.camera, start=st.wall_utc, end=st.wall_utc,
                             details=details))

    def _scene_event(self, cam: _Camera, scene: OpenScene, closed: bool) -> Event:
        return Event(uid=scene.uid, kind="scene", camera=cam.spec.name, start=scene.start, end=scene.end,
                     source_start_s=scene.source_start_s, source_end_s=scene.source_end_s, caption=scene.caption,
                     confidence=round(scene.confidence, 4), observations=scene.observations,
                     thumbnail=scene.thumbnail, details=scene.details, closed=closed)

    def _write_scene(self, cam: _Camera, scene: OpenScene, closed: bool) -> None:
        ev = self._scene_event(cam, scene, closed)
        self.store.put(ev)
        cam.last_write = time.monotonic()
        if closed:
            self.stats.scenes += 1
            if self.on_scene:
                self.on_scene(ev)

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
        """Caption admitted frames (camera, frame, first frame of the change) as one batch."""
        self.stats.batches += 1
        self.stats.batched_frames += len(pending)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(pending))
        if any(cam.spec.gate.embedding_distance is not None for cam, _, _ in pending):
            pending, caps = self._caption_with_embedding_gate(pending)
        else:
            caps = self.cap.caption([s.image for _, s, _ in pending], **self.opts.generation)
        done = time.monotonic()
        for (cam, sample, since), c in zip(pending, caps):
            self.stats.camera(cam.spec.name)["captioned"] += 1
            self.stats.frame_age_ms.append((done - sample.mono) * 1e3)
            details = {**self._provenance, "batch": len(pending),
                       "ms": {k: round(v, 1) for k, v in c.timings.items() if k != "decoder_steps"}}
            closed, scene, is_new = cam.tracker.observe(c.text, sample.wall_utc, sample.pts_s,
                                                        c.confidence or 0.0, details,
                                                        changed_at=(since.wall_utc, since.pts_s))
            if closed is not None:
                self._write_scene(cam, closed, closed=True)
            if is_new and self._thumbs is not None:
                try:
                    scene.thumbnail = str(save_jpeg(self._thumbs / f"{scene.uid}.jpg", sample.image))
                except Exception as exc:  # noqa: BLE001 - a thumbnail must never stop captioning
                    logger.warning("thumbnail for %s not written: %s", cam.spec.name, type(exc).__name__)
            self._write_scene(cam, scene, closed=False)

    def _caption_with_embedding_gate(self, pending):
        """Stage 2 of the gate: encode the batch, decode only frames whose pooled embedding moved."""
        timings: dict[str, float] = {}
        enc = self.cap.encode_images([s.image for _, s, _ in pending], timings=timings)
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
            return [], []
        caps = self.cap.caption_encoded(enc.select(keep), timings=timings, **self.opts.generation)
        return [pending[i] for i in keep], caps

    def run(self, stop: threading.Event | None = None) -> int:
        """Run until all file sources finish (returns 0, or 1 if a source failed) or ``stop`` is set (0)."""
        stop = stop or threading.Event()
        pending: list[tuple[_Camera, FrameSample, FrameSample]] = []
        first_pending = 0.0
        try:
            for cam in self.cameras:
                cam.source.start()
            while not stop.is_set():
                got = self._collect(pending)
                if pending and not first_pending:
                    first_pending = time.monotonic()
                active = sum(1 for cam in self.cameras if not cam.source.finished)
                full = len(pending) >= min(self.opts.max_batch, max(1, active))
                if pending and (full or time.monotonic() - first_pending >= self.opts.max_wait_s or not got):
                    self._caption(pending)
                    pending, first_pending = [], 0.0
                    continue
                if not got:
                    if active == 0:
                        break
                    stop.wait(0.005)
        finally:
            self._shutdown(pending)
        failed = [cam.spec.name for cam in self.cameras if cam.source.state is SourceState.FAILED]
        return 1 if failed else 0

    def _shutdown(self, pending: list) -> None:
        for cam in self.cameras:
            cam.source.stop(timeout=2.0)
            c = self.stats.camera(cam.spec.name)
            for key in ("frames_read", "dropped", "decode_errors", "reconnects"):
                c[key] = int(cam.source.counters.get(key, 0))
            scene = cam.tracker.close()
            if scene is not None:
                self._write_scene(cam, scene, closed=True)
        self.store.flush(timeout=3.0)


def default_camera_name(url: str, taken: set[str]) -> str:
    """A readable unique name for a positional SOURCE (file stem or host/path), never containing credentials."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme and parts.hostname:
        base = parts.hostname + (parts.path.rstrip("/").replace("/", "_") if parts.path else "")
    else:
        base = Path(url.rstrip("/")).stem or "camera"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name
