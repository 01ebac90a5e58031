"""The bundled demo captioner, trained by the project on synthetic camera scenes (see docs/DEMO_MODEL.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .units import format_ts


@dataclass(frozen=True)
class DemoSegment:
    """One scene event of the demo and whether it states the generated scene correctly."""

    start_s: float
    end_s: float
    text: str
    observations: int
    truth: str
    correct: bool


@dataclass(frozen=True)
class DemoResult:
    clip: Path
    db: Path
    jsonl: Path
    timeline_txt: Path
    segments: list[DemoSegment]
    truth_scenes: int
    ms_per_caption: float
    counters: dict


def _truth_at(timeline: list, t: float):
    for seg in timeline:
        if seg.start_s <= t < seg.end_s:
            return seg.spec
    return timeline[-1].spec


def run_demo(out_dir: str | os.PathLike = "edgecap-demo", *, model: str | os.PathLike = "demo",
             duration_s: float = 60.0, interval_s: float = 1.0, seed: int = 7,
             precision: str = "fp32") -> DemoResult:
    """Render a synthetic camera clip with scene changes, run the streaming runtime on it (change gate, scene
    tracking, event database) and grade every scene event against the clip's ground truth.

    Args:
        out_dir: where clip.mp4, events.sqlite (+ thumbnails/), events.jsonl and timeline.txt are written.
        model: model directory ("demo": the bundled model).
        duration_s: clip length.
        interval_s: sampling interval.
        seed: clip seed, offset into the held-out range (scenes the bundled model never trained on).
        precision: "fp32" or "int8".
    """
    from . import synth
    from .captioner import Captioner
    from .events import EventStore, search, thumbnail_dir
    from .runtime import RunOptions, Runtime, camera_spec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip, db, jsonl = out / "clip.mp4", out / "events.sqlite", out / "events.jsonl"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), jsonl):
        stale.unlink(missing_ok=True)
    timeline = synth.render_clip(clip, seed=synth.HELD_OUT_SEED_START + seed, duration_s=duration_s)
    cap = Captioner(model, precision=precision)
    with EventStore(db, jsonl=jsonl) as store:
        rt = Runtime(cap, [camera_spec("demo-cam", str(clip), {"interval": interval_s})], store,
                     options=RunOptions(thumbnail_dir=thumbnail_dir(db)))
        rt.run()
    events = sorted(search(db, kinds=["scene"], limit=10_000), key=lambda e: e.source_start_s or 0.0)
    segments = []
    for ev in events:
        start, end = ev.source_start_s or 0.0, ev.source_end_s or 0.0
        spec = _truth_at(timeline, (start + end) / 2)
        segments.append(DemoSegment(start, end, ev.caption or "", ev.observations, spec.caption(),
                                    all(synth.attribute_scores(spec, ev.caption or "").values())))
    timeline_txt = out / "timeline.txt"
    timeline_txt.write_text("".join(f"{format_ts(s.start_s)}-{format_ts(s.end_s)}  {s.text}\n" for s in segments),
                            encoding="utf-8")
    ms = [e.details.get("ms", {}).get("total", 0.0) / max(1, e.details.get("batch", 1)) for e in events]
    return DemoResult(clip, db, jsonl, timeline_txt, segments, len(timeline), sum(ms) / max(1, len(ms)),
                      dict(rt.stats.camera("demo-cam")))

