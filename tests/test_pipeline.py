"""The streaming runtime: scene events from a multi-scene clip, cross-camera batching, drops with a slow
consumer, search over the resulting log, and a clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgecap import synth
from datetime import datetime, timedelta, timezone

from edgecap.captioner import Caption
from edgecap.errors import InputError, RunFailedError
from edgecap.events import Ack, EventStore, search
from edgecap.runtime import CameraSpec, CaptionBackend, ChangeGate, GateConfig, RunOptions, Runtime, camera_spec
from edgecap.runtime.scenes import same_scene
from edgecap.sources import FrameSample, SourceConfig, SourceState, SourceStatus, StatusKind


class FakeCaptioner:
    """A caption backend that captions from the mean colour of the frame; optional delay to play a slow model."""

    provenance = {"model": "fake", "precision": "fp32"}

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []

    def caption_batch(self, images, **_):
        time.sleep(self.delay_s)
        self.batch_sizes.append(len(images))
        return [Caption(f"scene {int(np.asarray(img).mean()) // 16}", [1], {"total": 1.0}, -0.1) for img in images]


def test_fake_and_real_backends_satisfy_the_protocol(tiny_export):
    from edgecap import Captioner

    assert isinstance(FakeCaptioner(), CaptionBackend) and isinstance(Captioner(tiny_export), CaptionBackend)
    assert not isinstance(object(), CaptionBackend)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    timelines = {}
    for name, seed, dur in (("cam-a", 11, 30.0), ("cam-b", 12, 12.0), ("cam-c", 13, 12.0)):
        timelines[name] = synth.render_clip(d / f"{name}.mp4", seed=synth.HELD_OUT_SEED_START + seed, duration_s=dur)
    return d, timelines


def _spec(name: str, path: Path, interval: float = 1.0, **gate) -> CameraSpec:
    return CameraSpec(SourceConfig(name, str(path), interval_s=interval), GateConfig(**gate))


def test_multi_scene_clip_gives_one_scene_event_per_scene(clips, tmp_path):
    from edgecap import Captioner

    d, timelines = clips
    interval = 1.0
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(Captioner("demo"), [_spec("cam-a", d / "cam-a.mp4", interval)], store,
                     options=RunOptions(thumbnail_dir=tmp_path / "thumbs"))
        assert rt.run() == 0
    scenes = sorted((e for e in search(tmp_path / "ev.sqlite", kinds=["scene"], limit=100)),
                    key=lambda e: e.source_start_s)
    truth = timelines["cam-a"]
    assert len(scenes) == len(truth), [e.caption for e in scenes]
    for ev, seg in zip(scenes, truth):
        assert all(synth.attribute_scores(seg.spec, ev.caption).values()), (ev.caption, seg.spec.caption())
        assert abs(ev.source_start_s - seg.start_s) <= interval + 1e-6
        assert ev.closed and ev.thumbnail and Path(ev.thumbnail).is_file()
    # unchanged frames after the last caption extend the last scene to the end of the file
    assert scenes[-1].source_end_s >= truth[-1].end_s - interval - 1e-6
    c = rt.stats.camera("cam-a")
    assert c["sampled"] == c["gated_out"] + c["captioned"] and c["gated_out"] > c["captioned"]


def test_several_file_sources_are_batched_across_cameras(clips, tmp_path):
    d, _ = clips
    fake = FakeCaptioner()
    # max_interval 0: every sampled frame is captioned, so batching is the only variable
    cams = [_spec(n, d / f"{n}.mp4", 0.5, max_interval_s=0.0, settle_samples=0) for n in ("cam-a", "cam-b", "cam-c")]
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(fake, cams, store, options=RunOptions(max_batch=8, max_wait_s=0.2))
        assert rt.run() == 0
    assert rt.stats.max_batch_seen >= 2 and rt.stats.batches < rt.stats.batched_frames
    assert sum(fake.batch_sizes) == sum(rt.stats.camera(n)["captioned"] for n in ("cam-a", "cam-b", "cam-c"))
    assert rt.stats.camera("cam-a")["dropped"] == 0  # files: every sampled frame, no drops


@pytest.mark.slow
def test_live_source_with_slow_consumer_drops_and_stays_bounded(clips, tmp_path):
    d, _ = clips
    fake = FakeCaptioner(delay_s=0.3)  # slower than the 0.1 s sampling interval
    cam = CameraSpec(SourceConfig("live", str(d / "cam-b.mp4"), interval_s=0.1, realtime=True),
                     GateConfig(max_interval_s=0.0, settle_samples=0))
    depths = []
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(fake, [cam], store)
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                depths.append(rt.cameras[0].source.queue_depth)
                time.sleep(0.05)

        w = threading.Thread(target=watch)
        w.start()
        try:
            rt.run()
        finally:
            stop.set()
            w.join()
    c = rt.stats.camera("live")
    assert c["dropped"] > 0 and max(depths) <= 2
    assert c["captioned"] < c["frames_read"]


def test_search_cli_finds_events_by_text_camera_and_time(clips, tmp_path):
    d, timelines = clips
    db = tmp_path / "ev.sqlite"
    proc = subprocess.run([sys.executable, "-m", "edgecap.cli", "run", str(d / "cam-b.mp4"), str(d / "cam-c.mp4"),
                           "--db", str(db), "--interval", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    kind, colour = next((o.kind, o.colour) for s in timelines["cam-b"] for o in s.spec.objects)
    word = "persons" if kind == "person" else kind

    def run_search(*args):
        out = subprocess.run([sys.executable, "-m", "edgecap.cli", "events", "search", *args, "--db", str(db),
                              "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    hits = run_search(f"{colour} {word}", "--camera", "cam-b")
    assert hits and all(h["camera"] == "cam-b" and colour in h["caption"] for h in hits)
    assert {"id", "kind", "camera", "start", "end", "source_start_s", "source_end_s", "caption", "confidence",
            "thumbnail"} <= set(hits[0])
    assert run_search("--camera", "cam-c", "--since", "1h") and not run_search("--until", "2000-01-01T00:00:00")
    assert not run_search("zebra giraffe")


@pytest.mark.slow
def test_sigterm_closes_open_scenes_flushes_and_exits_zero(clips, tmp_path):
    d, _ = clips
    db = tmp_path / "ev.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "edgecap.cli", "run", str(d / "cam-a.mp4"), "--realtime",
                             "--db", str(db), "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (db.exists() and search(db, kinds=["scene"])):
        time.sleep(0.2)
    time.sleep(1.0)  # mid-scene: the open scene must be closed by the shutdown
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)  # a guard against a hang, not a speed check
    assert proc.returncode == 0, err
    scenes = search(db, kinds=["scene"], limit=100)
    assert scenes and all(e.closed for e in scenes)
    import sqlite3

    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# (frames of scene b after 4.0 s of scene a at 10 fps, where the b scene must end)
@pytest.mark.parametrize("b_frames,b_end", [
    (10, 4.0),  # the file ends while the cut is still settling: its last frame is captioned anyway
    (30, 6.0),  # frames after the caption extend the new scene, not the one it replaced
])
def test_hard_cut_scene_boundaries(b_frames, b_end, tmp_path):
    import av

    from edgecap import Captioner

    a, _ = synth.render_scene(synth.HELD_OUT_SEED_START + 21)
    b, spec_b = synth.render_scene(synth.HELD_OUT_SEED_START + 22)
    path = tmp_path / "cut.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = a.shape[1], a.shape[0], "yuv420p"
        for i in range(40 + b_frames):
            frame = av.VideoFrame.from_ndarray(a if i < 40 else b, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(Captioner("demo"), [_spec("cut", path, 1.0)], store)
        rt.run()
    scenes = sorted(search(tmp_path / "ev.sqlite", kinds=["scene"]), key=lambda e: e.source_start_s)
    assert len(scenes) == 2
    assert all(synth.attribute_scores(spec_b, scenes[1].caption).values())
    assert abs(scenes[1].source_start_s - 4.0) <= 1.0
    assert scenes[0].source_end_s == scenes[1].source_start_s
    assert scenes[1].source_end_s == pytest.approx(b_end)


# -- units ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,same", [
    ("a red car on the left in a parking lot at night", "a parking lot at night with a red car on the left", True),
    ("a red car on the left in a parking lot at night", "a blue car on the left in a parking lot at night", False),
    ("a red car on the left on a street during the day", "a red car on the right on a street during the day", False),
    ("an empty hallway at night", "at night, an empty hallway", True),
    ("a red car on the left", "a red car on the left and a person in red on the right", False),
])
def test_scene_similarity(a, b, same):
    assert same_scene(a, b) is same


def test_gate_ignores_noise_and_brightness_but_sees_an_object_enter():
    base, spec = synth.render_scene(synth.HELD_OUT_SEED_START + 1, count=0)
    gate = ChangeGate(GateConfig(max_interval_s=None))
    assert gate.check(base, 0.0).reason == "first"
    gate.accept(base, 0.0)
    noisy = np.clip(base.astype(int) + np.random.default_rng(0).integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    assert not gate.check(noisy, 1.0).changed
    brighter = np.clip(base.astype(int) + 20, 0, 255).astype(np.uint8)
    assert not gate.check(brighter, 2.0).changed
    dog = synth.render_spec(synth.SceneSpec((synth.SceneObject("dog", "black", "right"),), spec.background,
                                            spec.time_of_day), seed=synth.HELD_OUT_SEED_START + 1)
    # the dog just appeared: still moving compared with the previous sample, so the gate lets it settle ...
    assert gate.check(dog, 3.0).reason == "moving"
    # ... and captions it once it stays in place
    assert gate.check(dog, 4.0).reason == "pixels"


def test_gate_captions_continuous_motion_after_settle_samples():
    gate = ChangeGate(GateConfig(max_interval_s=None, settle_samples=2))
    frames = [synth.render_scene(synth.HELD_OUT_SEED_START + i)[0] for i in range(5)]  # every sample differs
    gate.accept(frames[0], 0.0)
    gate.check(frames[0], 0.0)
    reasons = [gate.check(f, float(t)).reason for t, f in enumerate(frames[1:], 1)]
    assert reasons[:3] == ["moving", "moving", "settled_timeout"]


def test_gate_rechecks_a_static_scene_after_max_interval():
    img, _ = synth.render_scene(5)
    gate = ChangeGate(GateConfig(max_interval_s=10.0))
    gate.accept(img, 0.0)
    assert not gate.check(img, 9.0).changed
    assert gate.check(img, 10.5).reason == "max_interval"


@pytest.mark.parametrize("distance,expect_skips", [(None, False), (2.5, True)])
def test_embedding_gate_stage_skips_decoding_when_content_is_unchanged(distance, expect_skips, clips, tmp_path,
                                                                        tiny_export):
    # cosine distance is at most 2: with a threshold of 2.5 only the first frame is decoded
    from edgecap import Captioner

    d, _ = clips
    cam = _spec("cam-b", d / "cam-b.mp4", 1.0, max_interval_s=0.0, embedding_distance=distance, settle_samples=0)
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(Captioner(tiny_export), [cam], store)
        rt.run()
    c = rt.stats.camera("cam-b")
    if expect_skips:
        assert c["captioned"] == 1 and c["gated_out_embedding"] == c["sampled"] - 1
    else:
        assert c["captioned"] == c["sampled"] and c["gated_out_embedding"] == 0


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class ScriptedSource:
    """A source stand-in for `Runtime(source_factory=...)`: delivers fixed frames instantly (as a fast file
    reader would) and reports scripted statuses from its own thread, as a real reader does, then finishes."""

    def __init__(self, config, *, on_status, frames=(), statuses=(), log=None):
        self.name, self.on_status, self.log = config.name, on_status, log if log is not None else []
        self._frames = [FrameSample(self.name, i, float(i), T0 + timedelta(seconds=i), float(i), img)
                        for i, img in enumerate(frames)]
        self._statuses = list(statuses)
        self.state, self.counters = SourceState.STREAMING, {}
        self._thread = threading.Thread(target=self._report)
        self._reported = threading.Event()

    def _report(self):
        for kind, seconds, message in self._statuses:
            self.on_status(SourceStatus(self.name, SourceState.STREAMING, None, T0 + timedelta(seconds=seconds),
                                        message, StatusKind(kind)))
        self._reported.set()

    @property
    def finished(self):
        return not self._frames and self._reported.is_set()

    def start(self):
        self._thread.start()
        return self

    def read(self, timeout=None):
        return self._frames.pop(0) if self._frames else None

    def request_stop(self):
        self.log.append(("request_stop", self.name))

    def join(self, timeout=None):
        self.log.append(("join", self.name))
        self._thread.join(timeout)
        return not self._thread.is_alive()


def scripted(frames=(), statuses=(), log=None):
    """A source factory giving every camera the same script."""
    return lambda config, *, on_status: ScriptedSource(config, on_status=on_status, frames=frames,
                                                       statuses=statuses, log=log)


class RecordingSink:
    """An event sink that keeps every write (and the thread it came from)."""

    def __init__(self):
        self.events, self.threads = [], set()

    def put(self, event):
        self.events.append(event)
        self.threads.add(threading.current_thread().name)
        ack = Ack()
        ack.resolve(len(self.events))
        return ack

    def flush(self, timeout=None):
        return True

    def close(self, timeout=None):
        pass

    def latest(self):
        """uid -> the last version written."""
        return {ev.uid: ev for ev in self.events}


def test_frames_read_while_a_caption_is_pending_extend_the_new_scene(tmp_path):
    # Frames of one camera must be applied in order even when several are ready at once: the unchanged frames
    # after a cut belong to the scene the cut opens, not the one it closes.
    a = np.full((48, 64, 3), 40, np.uint8)
    b = a.copy()
    b[:, 32:] = 250  # something appears in the right half (a uniform change would read as a lighting change)
    frames = [a] * 4 + [b] * 4  # cut at t=4; the gate lets t=4 settle and captions t=5
    sink = RecordingSink()
    Runtime(FakeCaptioner(), [_spec("cam", tmp_path / "unused.mp4")], sink, source_factory=scripted(frames)).run()
    scenes = sorted((e for e in sink.latest().values() if e.kind == "scene"), key=lambda e: e.source_start_s)
    assert [(e.source_start_s, e.source_end_s) for e in scenes] == [(0.0, 4.0), (4.0, 7.0)]
    assert all(e.closed for e in scenes)


@pytest.mark.slow
def test_one_bad_camera_among_many_does_not_stop_the_others(clips, tmp_path):
    d, _ = clips
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(3).integers(0, 256, 30000, dtype=np.uint8).tobytes())
    db = tmp_path / "events.sqlite"
    proc = subprocess.run([sys.executable, "-m", "edgecap.cli", "run", str(d / "cam-b.mp4"), str(bad),
                           "--db", str(db)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # a camera failed: the run says so in its exit status
    assert "Traceback" not in proc.stderr
    assert any("[bad] source_error" in line and "bad.mp4" in line for line in proc.stderr.splitlines())
    events = search(db, limit=1000)
    assert [e.kind for e in events if e.camera == "bad"] == ["source_error"]
    assert sum(e.kind == "scene" for e in events if e.camera == "cam-b") >= 2  # the good camera was captioned


def test_an_outage_is_one_source_down_event_updated_per_attempt(tmp_path):
    """A camera down for a long time is one event (start = first failure, end = recovery, attempts counted), not
    one row per reconnect attempt; it is open while the camera is down."""
    script = [("source_up", 0, "up"), ("source_down", 10, "door down: timeout"),
              *[("reconnecting", 10 + 30 * k, f"attempt {k + 1} failed: refused") for k in range(1, 4)],
              ("source_up", 200, "up again"), ("source_down", 300, "door down: 401"),
              ("drops", 310, "3 frames dropped"),  # not the end of the outage
              ("reconnecting", 330, "attempt 2 failed: 401"), ("finished", 340, "stopped")]
    db = tmp_path / "ev.sqlite"
    sink = RecordingSink()
    with EventStore(db) as store:
        rt = Runtime(FakeCaptioner(), [_spec("door", tmp_path / "unused.mp4")], [store, sink],
                     source_factory=scripted(statuses=script))
        assert rt.run() == 0
    events = sorted(search(db, limit=100), key=lambda e: e.id)
    assert [e.kind for e in events] == ["source_up", "source_down", "source_up", "source_down", "drops", "finished"]
    first, second = events[1], events[3]
    # while it lasted, the outage was written open, with the attempts so far
    assert [(w.closed, w.details["attempts"]) for w in sink.events if w.uid == first.uid] == \
        [(False, 1), (False, 2), (False, 3), (False, 4), (True, 4)]
    assert (first.start, first.end) == (T0 + timedelta(seconds=10), T0 + timedelta(seconds=200))
    assert first.closed and first.details["attempts"] == 4 and first.details["ended_by"] == "source_up"
    assert first.details["message"] == "door down: timeout"
    assert first.details["last_error"] == "attempt 4 failed: refused"
    assert second.closed and second.details["attempts"] == 2 and second.details["ended_by"] == "finished"
    assert second.end == T0 + timedelta(seconds=340)
    assert rt.stats.camera("door")["status_reconnecting"] == 4  # still counted in the run's statistics


# -- review bugs (issue 11) -------------------------------------------------------------------------------------
BUSY_SCRIPT = [("source_up", 0, "up"), *[("drops", k, f"{k} frames dropped") for k in range(1, 40)],
               ("source_down", 50, "down"), *[("reconnecting", 50 + k, "refused") for k in range(1, 40)],
               ("finished", 100, "stopped")]


def test_statuses_from_reader_threads_reach_the_sinks_on_the_run_thread_only(tmp_path):
    # bug 8: status callbacks used to mutate counters and outage state (and call the sinks) on N reader threads
    sink = RecordingSink()
    cams = [_spec(f"cam{i}", tmp_path / "unused.mp4") for i in range(6)]
    rt = Runtime(FakeCaptioner(), cams, sink, source_factory=scripted(statuses=BUSY_SCRIPT))
    runner = threading.Thread(target=rt.run, name="the-run-thread")
    runner.start()
    runner.join(60)
    assert not runner.is_alive()
    assert sink.threads == {"the-run-thread"}
    for i in range(6):
        c = rt.stats.camera(f"cam{i}")
        assert (c["status_drops"], c["status_reconnecting"], c["status_finished"]) == (39, 39, 1)
    outages = [e for e in sink.latest().values() if e.kind == "source_down"]
    assert len(outages) == 6 and all(e.closed and e.details["attempts"] == 40 for e in outages)


def test_shutdown_asks_every_source_to_stop_before_waiting_for_any(tmp_path):
    # bug 8: sources were stopped one after another, up to 2 s each, so N stuck cameras took 2N s to shut down
    log: list = []
    cams = [_spec(f"cam{i}", tmp_path / "unused.mp4") for i in range(4)]
    Runtime(FakeCaptioner(), cams, RecordingSink(), source_factory=scripted(log=log)).run()
    calls = [what for what, _ in log]
    assert calls == ["request_stop"] * 4 + ["join"] * 4


def test_status_event_ids_stay_unique_for_long_camera_names(tmp_path):
    # bug 2: ids were "camera-kind-monotonic_ns" cut to 200 characters, so a long camera name made every status
    # event of that camera share one id and each write replaced the last
    name = "c" * 199
    script = [("source_up", 0, "up"), ("drops", 1, "a"), ("drops", 2, "b"), ("drops", 3, "c"), ("finished", 4, "x")]
    db = tmp_path / "ev.sqlite"
    with EventStore(db) as store:
        Runtime(FakeCaptioner(), [_spec(name, tmp_path / "unused.mp4")], store,
                source_factory=scripted(statuses=script)).run()
    events = search(db, camera=name, limit=100)
    assert sorted(e.kind for e in events) == ["drops", "drops", "drops", "finished", "source_up"]
    assert len({e.uid for e in events}) == 5


class FlakyCaptioner(FakeCaptioner):
    """Raises on the batches whose number (0-based) is in ``fail``, or on every batch."""

    def __init__(self, fail=None):
        super().__init__()
        self.fail, self.calls = fail, 0

    def caption_batch(self, images, **kw):
        self.calls += 1
        if self.fail is None or self.calls - 1 in self.fail:
            raise RuntimeError(f"model exploded on call {self.calls}")
        return super().caption_batch(images, **kw)


def _two_scene_frames():
    a = np.full((48, 64, 3), 40, np.uint8)
    b = a.copy()
    b[:, 32:] = 250
    return [a] * 6 + [b] * 6


def test_a_failed_batch_gives_its_cameras_an_error_event_and_the_run_goes_on(tmp_path):
    # bug 3: one failing caption batch escaped run() and stopped every camera
    sink = RecordingSink()
    backend = FlakyCaptioner(fail={0})
    cams = [_spec("a", tmp_path / "unused.mp4", settle_samples=0), _spec("b", tmp_path / "unused.mp4",
                                                                          settle_samples=0)]
    rt = Runtime(backend, cams, sink, source_factory=scripted(_two_scene_frames()))
    assert rt.run() == 0
    latest = sink.latest().values()
    errors = [e for e in latest if e.kind == "error"]
    assert sorted(e.camera for e in errors) == ["a", "b"]
    assert all(e.closed and e.details["ended_by"] == "recovered" and "model exploded on call 1" in
               e.details["message"] for e in errors)
    scenes = [e for e in latest if e.kind == "scene"]
    assert {e.camera for e in scenes} == {"a", "b"} and all(e.closed for e in scenes)
    assert rt.stats.failed_batches == 1 and rt.stats.camera("a")["caption_errors"] == 1


def test_a_model_that_fails_every_batch_ends_the_run_with_a_clear_error(tmp_path):
    sink = RecordingSink()
    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(20)]  # every frame changed
    rt = Runtime(FlakyCaptioner(), [_spec("a", tmp_path / "unused.mp4", settle_samples=0)], sink,
                 options=RunOptions(fail_after_s=0.0, fail_after_batches=3), source_factory=scripted(frames))
    with pytest.raises(RunFailedError, match="captioning failed 3 batches in a row.*model exploded on call 3"):
        rt.run()
    [error] = [e for e in sink.latest().values() if e.kind == "error"]
    assert error.closed and error.details["failures"] == 3 and error.details["ended_by"] == "stopped"


def test_a_raising_sink_or_scene_callback_does_not_stop_the_cameras(tmp_path, caplog):
    class BrokenSink(RecordingSink):
        def put(self, event):
            raise OSError("disk on fire")

    def on_scene(ev):
        raise ValueError("display gone")

    good = RecordingSink()
    rt = Runtime(FakeCaptioner(), [_spec("a", tmp_path / "unused.mp4", settle_samples=0)], [BrokenSink(), good],
                 on_scene=on_scene, source_factory=scripted(_two_scene_frames()))
    with caplog.at_level(logging.ERROR, logger="edgecap"):
        assert rt.run() == 0
    assert sum(e.kind == "scene" and e.closed for e in good.latest().values()) == 2
    assert rt.stats.sink_errors == len(good.events)
    assert "disk on fire" in caplog.text and "display gone" in caplog.text


def test_a_thumbnail_failure_logs_its_cause(tmp_path, caplog):
    # bug 9: only the exception type was logged
    blocker = tmp_path / "thumbs"
    blocker.write_text("a file where the thumbnail folder should be")
    rt = Runtime(FakeCaptioner(), [_spec("a", tmp_path / "unused.mp4")], RecordingSink(),
                 options=RunOptions(thumbnail_dir=blocker), source_factory=scripted(_two_scene_frames()[:3]))
    with caplog.at_level(logging.WARNING, logger="edgecap"):
        rt.run()
    [record] = [r for r in caplog.records if "thumbnail" in r.getMessage()]
    assert str(blocker) in record.getMessage() or "exists" in record.getMessage().lower() \
        or "directory" in record.getMessage().lower()


def test_bad_run_options_fail_with_one_line():
    # bug 1: max_batch 0 made the loop wait forever for a batch that can never fill
    for bad in ({"max_batch": 0}, {"max_batch": -3}, {"max_batch": 2.5}, {"max_wait_s": -1.0},
                {"fail_after_batches": 0}):
        with pytest.raises(InputError) as exc:
            RunOptions(**bad)
        assert "\n" not in str(exc.value) and next(iter(bad)) in str(exc.value)


def test_stream_yields_the_events_a_store_would_hold(clips, tmp_path):
    import edgecap

    d, _ = clips
    streamed = list(edgecap.stream(str(d / "cam-b.mp4"), FakeCaptioner(), interval=1.0))
    with EventStore(tmp_path / "ev.sqlite") as store:
        Runtime(FakeCaptioner(), [camera_spec("cam-b", str(d / "cam-b.mp4"), {"interval": 1.0})], store).run()
    stored = search(tmp_path / "ev.sqlite", limit=1000)
    key = lambda e: (e.kind, e.caption, e.source_start_s, e.source_end_s)  # noqa: E731
    assert sorted(map(key, streamed)) == sorted(map(key, stored))
    assert all(e.closed for e in streamed) and any(e.kind == "scene" for e in streamed)


def test_closing_the_stream_stops_the_runtime(clips):
    import edgecap

    d, _ = clips
    events = edgecap.stream(str(d / "cam-a.mp4"), FakeCaptioner(), realtime=True, interval=0.5, updates=True)
    first = next(events)
    events.close()
    assert first.camera == "cam-a"
    assert not [t for t in threading.enumerate() if t.name == "edgecap-stream"]


class PromptedCaptioner(FakeCaptioner):
    """A backend that takes prompts: records them and refuses one it does not know."""

    def __init__(self):
        super().__init__()
        self.prompts = []

    def check_prompt(self, prompt):
        if prompt == "<NOPE>":
            raise InputError("fake takes no <NOPE> prompt")

    def caption_batch(self, images, prompt=None, **kw):
        self.prompts.append(prompt)
        return [Caption(f"{p} scene", [1], {"total": 1.0}, -0.1, p) for p in prompt]


def test_each_camera_is_captioned_with_its_prompt_and_events_record_it(tmp_path):
    backend, sink = PromptedCaptioner(), RecordingSink()
    cams = [CameraSpec(SourceConfig("door", "unused.mp4"), GateConfig(settle_samples=0), prompt="a photo of"),
            _spec("yard", tmp_path / "unused.mp4", settle_samples=0)]
    Runtime(backend, cams, sink, source_factory=scripted(_two_scene_frames()[:2])).run()
    assert ["a photo of", None] in backend.prompts
    scenes = {e.camera: e for e in sink.latest().values() if e.kind == "scene"}
    assert scenes["door"].details["prompt"] == "a photo of" and "prompt" not in scenes["yard"].details


def test_a_prompt_the_model_cannot_take_fails_before_the_run(tmp_path):
    cam = CameraSpec(SourceConfig("door", "unused.mp4"), prompt="<NOPE>")
    ok = CameraSpec(SourceConfig("yard", "unused.mp4"), prompt="a photo of")
    with pytest.raises(InputError, match="^camera 'door': fake takes no <NOPE> prompt$"):  # names the camera
        Runtime(PromptedCaptioner(), [ok, cam], RecordingSink(), source_factory=scripted())
    with pytest.raises(InputError, match="takes none"):
        Runtime(FakeCaptioner(), [cam], RecordingSink(), source_factory=scripted())


class DetectingCaptioner(FakeCaptioner):
    """An encode-first backend answering a detection prompt: labels as the caption, boxes as objects."""

    def __init__(self):
        super().__init__()
        self.encoded_prompts = []

    def check_prompt(self, prompt):
        pass

    def encode_images(self, images, prompt=None, *, timings=None):
        from edgecap.captioner import EncoderOutput

        self.encoded_prompts.append(prompt)
        return EncoderOutput([np.zeros((len(images), 1, 1, 1), np.float32)], [np.zeros((len(images), 1, 1, 1),
                                                                                        np.float32)], None)

    def caption_encoded(self, enc, prompt=None, *, timings=None, **kw):
        from edgecap.tasks import DetectedObject

        if prompt == "<OD>":
            return [Caption("car, person", [1], {"total": 1.0}, -0.1, prompt,
                            [DetectedObject("car", 1, 2, 30, 40), DetectedObject("person", 5, 6, 7, 8)])
                    for _ in range(enc.batch)]
        if prompt == "<OD> (nothing)":  # a detection answer that found nothing
            return [Caption("", [1], {"total": 1.0}, -0.1, prompt, []) for _ in range(enc.batch)]
        return [Caption("a scene", [1], {"total": 1.0}, -0.1, prompt) for _ in range(enc.batch)]


def test_cameras_with_different_prompts_are_encoded_per_prompt_and_objects_land_in_details(tmp_path):
    # a model such as Florence-2 reads the prompt in its encoder: a batch mixing prompts is encoded per prompt
    backend, sink = DetectingCaptioner(), RecordingSink()
    cams = [CameraSpec(SourceConfig("door", "unused.mp4"), GateConfig(settle_samples=0), prompt="<OD>"),
            _spec("yard", tmp_path / "unused.mp4", settle_samples=0)]
    rt = Runtime(backend, cams, sink, source_factory=scripted(_two_scene_frames()[:2]))
    assert rt.run() == 0 and rt.stats.failed_batches == 0
    assert {"<OD>", None} <= set(backend.encoded_prompts)
    scenes = {e.camera: e for e in sink.latest().values() if e.kind == "scene"}
    assert scenes["door"].caption == "car, person" and scenes["door"].details["objects"] == [
        {"label": "car", "x0": 1, "y0": 2, "x1": 30, "y1": 40}, {"label": "person", "x0": 5, "y0": 6, "x1": 7, "y1": 8}]
    assert "objects" not in scenes["yard"].details


def test_a_detection_that_found_nothing_records_no_objects_not_no_detection(tmp_path):
    # objects: [] says the task ran and found nothing; a missing key read as a camera that does no detection
    sink = RecordingSink()
    cams = [CameraSpec(SourceConfig("door", "unused.mp4"), GateConfig(settle_samples=0), prompt="<OD> (nothing)")]
    rt = Runtime(DetectingCaptioner(), cams, sink, source_factory=scripted(_two_scene_frames()[:2]))
    assert rt.run() == 0
    (door,) = [e for e in sink.latest().values() if e.kind == "scene"]
    assert door.caption == "" and door.details["objects"] == []


@pytest.mark.slow
def test_a_florence2_camera_with_a_detection_prompt_runs_without_failed_batches(exported_factory, tmp_path):
    from edgecap import Captioner

    cap = Captioner(exported_factory("florence2"))
    sink = RecordingSink()
    cams = [CameraSpec(SourceConfig("door", "unused.mp4"), GateConfig(settle_samples=0), prompt="<OD>"),
            CameraSpec(SourceConfig("yard", "unused.mp4"), GateConfig(settle_samples=0))]
    rt = Runtime(cap, cams, sink, source_factory=scripted(_two_scene_frames()[:2]))
    assert rt.run() == 0 and rt.stats.failed_batches == 0
    scenes = {e.camera: e for e in sink.latest().values() if e.kind == "scene"}
    assert scenes["door"].details["prompt"] == "<OD>" and "prompt" not in scenes["yard"].details


@pytest.mark.slow
def test_a_smolvlm_camera_is_asked_its_question_and_events_record_it(exported_factory, tmp_path):
    # a decoder-only model reads the prompt in its prefill: cameras with different questions are prefilled per
    # question, and a camera without one gets the model's default prompt
    from edgecap import Captioner

    cap = Captioner(exported_factory("smol"))
    sink = RecordingSink()
    question = "Is the gate open?"
    cams = [CameraSpec(SourceConfig("door", "unused.mp4"), GateConfig(settle_samples=0), prompt=question),
            CameraSpec(SourceConfig("yard", "unused.mp4"), GateConfig(settle_samples=0))]
    rt = Runtime(cap, cams, sink, source_factory=scripted(_two_scene_frames()[:2]))
    assert rt.run() == 0 and rt.stats.failed_batches == 0
    scenes = {e.camera: e for e in sink.latest().values() if e.kind == "scene"}
    assert scenes["door"].details["prompt"] == question and "prompt" not in scenes["yard"].details
    frame = _two_scene_frames()[0]
    assert scenes["door"].caption == cap.caption(frame, prompt=question).text
    assert scenes["yard"].caption == cap.caption(frame).text
