"""Shared fixtures: tiny random-weight checkpoints built from configs and exported once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Each case: one architecture the acceptance grid names (encoder kind, sizes, depth, width, heads, vocabulary).
ARCHS = {
    "vit-gpt2": dict(encoder="vit"),
    "deit-gpt2": dict(encoder="deit", image_size=48, patch_size=16, enc_layers=3, enc_hidden=48, enc_heads=4,
                      dec_layers=3, dec_hidden=48, dec_heads=4, vocab_size=400),
    # encoder wider than decoder: exercises enc_to_dec_proj; odd sizes everywhere
    "vit-proj-gpt2": dict(encoder="vit", image_size=40, patch_size=10, enc_layers=1, enc_hidden=40, enc_heads=5,
                          dec_layers=4, dec_hidden=24, dec_heads=3, vocab_size=350,
                          generation={"num_beams": 2, "no_repeat_ngram_size": 3, "max_length": 16}),
}


# BLIP checkpoints (tests/test_blip.py): the default tiny one, and one with other sizes everywhere.
BLIP_ARCHS = {
    "blip": dict(),
    "blip-wide": dict(image_size=48, patch_size=16, enc_layers=3, enc_hidden=48, enc_heads=4, dec_layers=3,
                      dec_hidden=36, dec_heads=3, vocab_size=140, seed=1),
}


# Florence-2 checkpoints (tests/test_florence2.py): the default tiny one (</s> boosted so that answers end before
# the length limit as well as at it), and one with a third DaViT stage, other widths and seed.
FLORENCE_ARCHS = {
    "florence2": dict(eos_boost=1.5),
    "florence2-deep": dict(image_size=64, embed_dim=(16, 24, 32), depths=(1, 1, 1), vision_heads=(2, 2, 4),
                           d_model=36, layers=3, heads=3, seed=1, eos_boost=1.5),
}

# SmolVLM checkpoints (tests/test_smolvlm.py, tests/test_ask.py): the default (Idefics3 head, 4 heads over 2 KV
# heads), and SmolVLM's own head with other sizes (6 heads over 3 KV heads, a 96 px tile of 16 px patches, pixel
# shuffle by 3). EOS scores as a token the random decoder often picks, so that some answers end before the limit.
SMOL_ARCHS = {
    "smol": dict(init_range=0.2, eos_like=153),
    "smolvlm-wide": dict(arch="smolvlm", image_size=96, patch_size=16, scale_factor=3, vision_hidden=24,
                         vision_heads=3, layers=3, hidden=48, heads=6, kv_heads=3, init_range=0.2, eos_like=153,
                         seed=1),
}


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """Build (and cache) a save_pretrained checkpoint for an ARCHS, BLIP_ARCHS, FLORENCE_ARCHS or SMOL_ARCHS key."""
    pytest.importorskip("torch")
    _quiet_transformers()
    from tiny_models import build_blip, build_florence2, build_model, build_smolvlm

    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            build, kwargs = ((build_blip, BLIP_ARCHS[name]) if name in BLIP_ARCHS else
                             (build_florence2, FLORENCE_ARCHS[name]) if name in FLORENCE_ARCHS else
                             (build_smolvlm, SMOL_ARCHS[name]) if name in SMOL_ARCHS else
                             (build_model, ARCHS[name]))
            cache[name] = build(tmp_path_factory.mktemp(f"ckpt-{name}"), **kwargs)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def exported_factory(tmp_path_factory, checkpoint_factory):
    """Export (with validation) and cache the edgecap directory of an ARCHS, BLIP_ARCHS, FLORENCE_ARCHS or
    SMOL_ARCHS key, with either attention lowering."""
    from edgecap_export import export_model

    cache: dict[tuple[str, str], Path] = {}

    def make(name: str, attention: str = "contrib") -> Path:
        if (name, attention) not in cache:
            cache[name, attention] = export_model(str(checkpoint_factory(name)),
                                                  tmp_path_factory.mktemp(f"out-{name}-{attention}"),
                                                  progress=False, attention=attention)
        return cache[name, attention]

    return make


@pytest.fixture(scope="session")
def tiny_export(exported_factory) -> Path:
    return exported_factory("vit-gpt2")


@pytest.fixture(scope="session")
def smolvlm_export(exported_factory) -> Path:
    return exported_factory("smol")


@pytest.fixture(scope="session")
def floor():
    """benchmarks/floor.py as a module (a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("floor", Path(__file__).resolve().parent.parent / "benchmarks" /
                                                  "floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- `edgecap serve`: logs written by `edgecap run` on generated clips, and servers on loopback ports -----------------

@pytest.fixture(scope="session")
def review_clips(tmp_path_factory) -> dict[str, Path]:
    """Two generated camera clips (named by camera) for the review server's tests."""
    from edgecap import synth

    d = tmp_path_factory.mktemp("review-clips")
    clips = {"gate": (12, 20.0), "yard": (21, 30.0)}
    for name, (seed, duration) in clips.items():
        synth.render_clip(d / f"{name}.mp4", seed=synth.HELD_OUT_SEED_START + seed, duration_s=duration)
    return {name: d / f"{name}.mp4" for name in clips}


@pytest.fixture(scope="session")
def write_log():
    """``write_log(db, *clips)``: `edgecap run` the clips into the database with the bundled demo model."""
    import subprocess

    def run(db: Path, *clips: Path) -> None:
        proc = subprocess.run([sys.executable, "-m", "edgecap.cli", "run", *map(str, clips), "--db", str(db),
                               "--interval", "1"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr

    return run


@pytest.fixture(scope="module")
def start_server():
    """``start_server(db, *options)`` -> the base URL (ending in /), the token (None with --no-auth) and the process
    of an `edgecap serve` on a free loopback port; every server is stopped when the module ends."""
    import queue
    import re
    import subprocess
    import threading
    from types import SimpleNamespace

    procs: list[subprocess.Popen] = []

    def start(db: Path, *options: str):
        proc = subprocess.Popen([sys.executable, "-m", "edgecap.cli", "serve", "--db", str(db), "--port", "0",
                                 "--poll", "0.2", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        for _ in range(120):  # at most 60 s
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    raise AssertionError(f"edgecap serve exited: {proc.stderr.read()}") from None
                continue
            found = re.search(r"(http://\S+/)(?:\?token=(\S+))?", line)
            if found:
                return SimpleNamespace(base=found.group(1), token=found.group(2), proc=proc,
                                       url=found.group(0))
        proc.kill()
        raise AssertionError("edgecap serve printed no URL within 60 s")

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
