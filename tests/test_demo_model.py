"""The bundled demo model: present, small, and right about held-out synthetic scenes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgecap import Captioner, demo_model_dir, synth
from edgecap.evaluation import evaluate_synth


@pytest.fixture(scope="module")
def demo_cap() -> Captioner:
    return Captioner("demo")


def test_bundled_model_is_small_and_validated():
    d = demo_model_dir()
    total = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert total <= 40 * 2**20, f"bundled model is {total / 2**20:.1f} MiB"
    m = json.loads((d / "manifest.json").read_text())
    assert m["validation"]["passed"]


def test_held_out_attribute_accuracy_at_least_90_percent(demo_cap):
    # A fast sample of docs/DEMO_MODEL.md's 500-scene evaluation (seeds never used in training).
    res = evaluate_synth(demo_cap, scenes=120, start_seed=synth.HELD_OUT_SEED_START + 50_000)
    low = {k: v for k, v in res["accuracy"].items() if v < 0.90}
    assert not low, f"attributes below 90%: {low}"


def test_captions_name_kind_and_colour_words(demo_cap):
    # What a person searching the log relies on: the canonical kind and colour words appear.
    seeds = range(synth.HELD_OUT_SEED_START + 90_000, synth.HELD_OUT_SEED_START + 90_040)
    hits = total = 0
    for seed in seeds:
        img, spec = synth.render_scene(seed)
        text = demo_cap.caption(img).text
        for obj in spec.objects:
            total += 1
            hits += obj.kind in text and obj.colour in text
    assert total and hits / total >= 0.9


def test_confidence_is_a_mean_log_prob(demo_cap):
    img, _ = synth.render_scene(synth.HELD_OUT_SEED_START + 7)
    c = demo_cap.caption(img)
    assert c.confidence is not None and -10.0 < c.confidence <= 0.0


def test_demo_command_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgecap.cli", "demo", "--out", str(tmp_path), "--duration", "30"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "scene events" in proc.stdout and "outputs:" in proc.stdout and "edgecap events search" in proc.stdout
    assert (tmp_path / "clip.mp4").is_file() and (tmp_path / "events.sqlite").is_file()
    from edgecap.events import search

    scenes = search(tmp_path / "events.sqlite", kinds=["scene"], limit=1000)
    assert len(scenes) >= 3
    marks = [line for line in proc.stdout.splitlines() if line.strip()[:1] in ("✓", "✗") or " ✓ " in line
             or " ✗ " in line]
    assert len(marks) == len(scenes)
    assert sum(" ✓ " in m for m in marks) / len(marks) >= 0.8


def test_bundled_int8_passes_its_quality_gate_and_agrees_with_fp32(demo_cap):
    m = json.loads((demo_model_dir() / "manifest.json").read_text())
    q = m["graphs"]["int8"]["quality"]
    assert q["passed"] and not q["accepted_quality_drop"]
    assert q["exact_match"] >= 0.95 and q["attribute_accuracy"]["max_drop"] <= 0.01
    int8 = Captioner("demo", precision="int8")
    seeds = range(synth.HELD_OUT_SEED_START + 70_000, synth.HELD_OUT_SEED_START + 70_040)
    images = [synth.render_scene(s)[0] for s in seeds]
    same = sum(a.text == b.text for a, b in zip(demo_cap.caption(images), int8.caption(images)))
    assert same / len(images) >= 0.95
