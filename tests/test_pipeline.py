"""The streaming runtime: scene events from a multi-scene clip, cross-camera batching, drops with a slow
consumer, search over the resulting log, and a clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgecap import synth
from edgecap.captioner import Caption
from edgecap.runtime.config import CameraSpec
from edgecap.events import EventStore, search
from edgecap.runtime import ChangeGate, GateConfig
from edgecap.runtime import RunOptions, Runtime
from edgecap.runtime.scenes import same_scene


class FakeCaptioner:
    """Captions from the mean colour of the frame; optional delay to play a slow model."""

    precision = "fp32"
    manifest = SimpleNamespace(data={"name": "fake", "graphs": {"fp32": {"encoder": {"sha256": "0" * 64}}}})

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []

    def caption(self, images, **_):
        time.sleep(self.delay_s)
        self.batch_sizes.append(len(images))
        return [Caption(f"scene {int(np.asarray(img).mean()) // 16}", [1], {"total": 1.0}, -0.1) for img in images]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    timelines = {}
    for name, seed, dur in (("cam-a", 11, 30.0), ("cam-b", 12, 12.0), ("cam-c", 13, 12.0)):
        timelines[name] = synth.render_clip(d / f"{name}.mp4", seed=synth.HELD_OUT_SEED_START + seed, duration_s=dur)
    return d, timelines


def _spec(name: str, path: Path, interval: float = 1.0) -> CameraSpec:
    return CameraSpec(name, str(path), interval, GateConfig())


def test_multi_scene_clip_gives_one_scene_event_per_scene(clips, tmp_path):
    from edgecap import Captioner

    d, timelines = clips
    interval = 1.0
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(Captioner("demo"), [_spec("cam-a", d / "cam-a.mp4", interval)], store)
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
    cams = [CameraSpec(n, str(d / f"{n}.mp4"), 0.5, GateConfig(max_interval_s=0.0, settle_samples=0))
            for n in ("cam-a", "cam-b", "cam-c")]
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(fake, cams, store, options=RunOptions(max_batch=8, max_wait_s=0.2, thumbnails=False))
        assert rt.run() == 0
    assert rt.stats.max_batch_seen >= 2 and rt.stats.batches < rt.stats.batched_frames
    assert sum(fake.batch_sizes) == sum(rt.stats.camera(n)["captioned"] for n in ("cam-a", "cam-b", "cam-c"))
    assert rt.stats.camera("cam-a")["dropped"] == 0  # files: every sampled frame, no drops


def test_live_source_with_slow_consumer_drops_and_stays_bounded(clips, tmp_path):
    d, _ = clips
    fake = FakeCaptioner(delay_s=0.3)  # slower than the 0.1 s sampling interval
    cam = CameraSpec("live", str(d / "cam-b.mp4"), 0.1, GateConfig(max_interval_s=0.0, settle_samples=0),
                     realtime=True)
    depths = []
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(fake, [cam], store, options=RunOptions(thumbnails=False))
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
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert time.monotonic() - t < 5.0
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
        rt = Runtime(Captioner("demo"), [_spec("cut", path, 1.0)], store, options=RunOptions(thumbnails=False))
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
    cam = CameraSpec("cam-b", str(d / "cam-b.mp4"), 1.0,
                     GateConfig(max_interval_s=0.0, embedding_distance=distance, settle_samples=0))
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(Captioner(tiny_export), [cam], store, options=RunOptions(thumbnails=False))
        rt.run()
    c = rt.stats.camera("cam-b")
    if expect_skips:
        assert c["captioned"] == 1 and c["gated_out_embedding"] == c["sampled"] - 1
    else:
        assert c["captioned"] == c["sampled"] and c["gated_out_embedding"] == 0


class ScriptedSource:
    """Delivers a fixed list of frames instantly (as a fast file reader would), then finishes."""

    def __init__(self, name, frames):
        from datetime import datetime, timedelta, timezone

        from edgecap.sources import FrameSample, SourceState

        t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._frames = [FrameSample(name, i, float(i), t0 + timedelta(seconds=i), float(i), img)
                        for i, img in enumerate(frames)]
        self.state, self.counters, self.queue_depth = SourceState.STREAMING, {}, 0

    @property
    def finished(self):
        return not self._frames

    def start(self):
        return self

    def read(self, timeout=None):
        return self._frames.pop(0) if self._frames else None

    def stop(self, timeout=5.0):
        pass


def test_frames_read_while_a_caption_is_pending_extend_the_new_scene(tmp_path):
    # Frames of one camera must be applied in order even when several are ready at once: the unchanged frames
    # after a cut belong to the scene the cut opens, not the one it closes.
    a = np.full((48, 64, 3), 40, np.uint8)
    b = a.copy()
    b[:, 32:] = 250  # something appears in the right half (a uniform change would read as a lighting change)
    frames = [a] * 4 + [b] * 4  # cut at t=4; the gate lets t=4 settle and captions t=5
    with EventStore(tmp_path / "ev.sqlite") as store:
        rt = Runtime(FakeCaptioner(), [_spec("cam", tmp_path / "unused.mp4")], store,
                     options=RunOptions(thumbnails=False))
        rt.cameras[0].source = ScriptedSource("cam", frames)
        rt.run()
    scenes = sorted(search(tmp_path / "ev.sqlite", kinds=["scene"]), key=lambda e: e.source_start_s)
    assert [(e.source_start_s, e.source_end_s) for e in scenes] == [(0.0, 4.0), (4.0, 7.0)]


def test_frame_age_window_is_bounded():
    # a run lasts months: the per-caption age samples must not grow without bound
    from edgecap.runtime import FRAME_AGE_WINDOW, RunStats

    stats = RunStats()
    for i in range(FRAME_AGE_WINDOW + 5):
        stats.frame_age_ms.append(float(i))
    assert len(stats.frame_age_ms) == FRAME_AGE_WINDOW and stats.frame_age_ms[0] == 5.0


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
    from datetime import datetime, timedelta, timezone

    from edgecap.sources import SourceState, SourceStatus

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    script = [("source_up", 0, "up"), ("source_down", 10, "door down: timeout"),
              *[("reconnecting", 10 + 30 * k, f"attempt {k + 1} failed: refused") for k in range(1, 4)],
              ("source_up", 200, "up again"), ("source_down", 300, "door down: 401"),
              ("drops", 310, "3 frames dropped"),  # not the end of the outage
              ("reconnecting", 330, "attempt 2 failed: 401"), ("finished", 340, "stopped")]
    db = tmp_path / "ev.sqlite"
    with EventStore(db) as store:
        rt = Runtime(FakeCaptioner(), [_spec("door", tmp_path / "unused.mp4")], store,
                     options=RunOptions(thumbnails=False))
        for i, (kind, s, message) in enumerate(script):
            rt._on_status(SourceStatus("door", SourceState.STREAMING, None, t0 + timedelta(seconds=s), message,
                                       kind))
            if i == 3:  # mid-outage: one open row with the attempts so far
                assert store.flush(10)
                [open_outage] = search(db, kinds=["source_down"])
                assert not open_outage.closed and open_outage.details["attempts"] == 3
    events = sorted(search(db, limit=100), key=lambda e: e.id)
    assert [e.kind for e in events] == ["source_up", "source_down", "source_up", "source_down", "drops", "finished"]
    first, second = events[1], events[3]
    assert (first.start, first.end) == (t0 + timedelta(seconds=10), t0 + timedelta(seconds=200))
    assert first.closed and first.details["attempts"] == 4 and first.details["ended_by"] == "source_up"
    assert first.details["message"] == "door down: timeout"
    assert first.details["last_error"] == "attempt 4 failed: refused"
    assert second.closed and second.details["attempts"] == 2 and second.details["ended_by"] == "finished"
    assert second.end == t0 + timedelta(seconds=340)
    assert rt.stats.camera("door")["status_reconnecting"] == 4  # still counted in the run's statistics
