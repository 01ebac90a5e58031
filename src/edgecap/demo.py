"""The bundled demo captioner, trained by the project on synthetic camera scenes (see docs/DEMO_MODEL.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

_DEMO_DIR = Path(__file__).resolve().parent / "models" / "demo"


def demo_model_dir() -> Path:
    """Return the directory of the bundled demo model (manifest + ONNX graphs + tokenizer).

    Raises:
        ModelError: the package was installed without the bundled model.
    """
    if not (_DEMO_DIR / "manifest.json").is_file():
        raise ModelError(f"the bundled demo model is missing from {_DEMO_DIR}; reinstall edgecap from a full checkout")
    return _DEMO_DIR


@dataclass(frozen=True)
class DemoSegment:
    """Consecutive sampled frames with the same caption, and whether it states the ground truth correctly."""

    start_s: float
    end_s: float
    text: str
    truth: str
    correct: bool


@dataclass(frozen=True)
class DemoResult:
    clip: Path
    captions_jsonl: Path
    timeline_txt: Path
    segments: list[DemoSegment]
    frames: int
    frames_correct: int
    ms_per_caption: float


def _truth_at(timeline: list, t: float):
    for seg in timeline:
        if seg.start_s <= t < seg.end_s:
            return seg.spec
    return timeline[-1].spec


def run_demo(out_dir: str | os.PathLike = "edgecap-demo", *, model: str | os.PathLike = "demo",
             duration_s: float = 60.0, interval_s: float = 1.0, seed: int = 7, precision: str = "fp32",
             progress: bool = True) -> DemoResult:
    """Render a synthetic camera clip with scene changes, caption a frame every ``interval_s`` and group the
    captions into a timeline, graded against the clip's ground truth.

    Args:
        out_dir: where clip.mp4, captions.jsonl and timeline.txt are written.
        model: model directory ("demo": the bundled model).
        duration_s: clip length.
        interval_s: sampling interval.
        seed: clip seed (in the held-out range offset, so the scenes were never trained on).
        precision: "fp32" or "int8".
        progress: progress bar on stderr.
    """
    from tqdm import tqdm

    from . import synth
    from .captioner import Captioner
    from .video import sample_frames

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip = out / "clip.mp4"
    timeline = synth.render_clip(clip, seed=synth.HELD_OUT_SEED_START + seed, duration_s=duration_s)
    cap = Captioner(model, precision=precision)
    rows = []
    total_ms = 0.0
    with tqdm(total=int(duration_s / interval_s), desc="caption", unit="frame", disable=not progress) as bar:
        for frame in sample_frames(clip, interval_s):
            c = cap.caption(frame.image)
            spec = _truth_at(timeline, frame.pts_s)
            correct = all(synth.attribute_scores(spec, c.text).values())
            rows.append({"t": round(frame.pts_s, 3), "text": c.text, "truth": spec.caption(), "correct": correct,
                         "ms": round(c.timings["total"], 2)})
            total_ms += c.timings["total"]
            bar.update(1)
    captions_jsonl = out / "captions.jsonl"
    with captions_jsonl.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    segments: list[DemoSegment] = []
    for i, r in enumerate(rows):
        end = rows[i + 1]["t"] if i + 1 < len(rows) else duration_s
        if segments and segments[-1].text == r["text"] and segments[-1].truth == r["truth"]:
            last = segments[-1]
            segments[-1] = DemoSegment(last.start_s, end, last.text, last.truth, last.correct and r["correct"])
        else:
            segments.append(DemoSegment(r["t"], end, r["text"], r["truth"], r["correct"]))
    timeline_txt = out / "timeline.txt"
    timeline_txt.write_text("".join(f"{format_ts(s.start_s)}-{format_ts(s.end_s)}  {s.text}\n" for s in segments),
                            encoding="utf-8")
    return DemoResult(clip, captions_jsonl, timeline_txt, segments, len(rows), sum(r["correct"] for r in rows),
                      total_ms / max(1, len(rows)))


def format_ts(seconds: float) -> str:
    """Seconds -> MM:SS.s"""
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:04.1f}"
