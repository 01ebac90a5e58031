"""The runtime never imports torch, transformers, onnx or the export package, and its commands work without them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

BLOCK = textwrap.dedent("""
    import sys
    BLOCKED = {blocked!r}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("blocked: " + name, name=name.split(".")[0])
    sys.meta_path.insert(0, Block())
""")


def _run(code: str, blocked=("torch", "transformers", "onnx", "edgecap_export"), cwd=None):
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=tuple(blocked)) + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_runtime_runs_with_torch_and_transformers_blocked(tiny_export):
    proc = _run(f"""
        import numpy as np
        import edgecap, edgecap.cli, edgecap.synth, edgecap.demo, edgecap.video, edgecap.evaluation
        import edgecap.runtime, edgecap.events, edgecap.sources
        from edgecap import Captioner
        cap = Captioner({str(tiny_export)!r})
        out = cap.caption(np.zeros((20, 20, 3), np.uint8), max_new_tokens=4, num_beams=2)
        assert isinstance(out.text, str)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
        assert not leaked, leaked
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.slow
def test_runtime_commands_work_without_the_export_side(tmp_path):
    # `edgecap --help` used to import the export side's benchmark module (and the POSIX-only `resource` module)
    proc = _run("""
        import numpy as np
        from PIL import Image
        from edgecap import synth
        from edgecap.cli import main
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0
        for sub in ("run", "events", "caption", "demo", "export"):
            try:
                main([sub, "--help"])
            except SystemExit as exc:
                assert exc.code == 0
        synth.render_clip("clip.mp4", seed=synth.HELD_OUT_SEED_START + 1, duration_s=6)
        Image.fromarray(synth.render_scene(synth.HELD_OUT_SEED_START + 2)[0]).save("frame.png")
        assert main(["run", "clip.mp4", "--db", "ev.sqlite"]) == 0
        assert main(["events", "search", "--db", "ev.sqlite", "--json"]) == 0
        assert main(["caption", "demo", "frame.png"]) == 0
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("ok")
    """, blocked=("torch", "transformers", "onnx", "edgecap_export", "resource"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok") and '"kind": "scene"' in proc.stdout


def test_export_without_extra_says_what_to_install():
    proc = _run("""
        from edgecap.cli import main
        sys.exit(main(["export", "some/model", "--out", "/tmp/never"]))
    """, blocked=("torch",))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "export extra" in proc.stderr and "torch" in proc.stderr


@pytest.mark.slow
def test_decoder_only_runtime_runs_with_torch_and_transformers_blocked(tmp_path):
    # SmolVLM's prefill + step loop, chat prompt rendering and left padding need none of the export side.
    pytest.importorskip("torch")
    from tiny_models import build_smolvlm

    from edgecap_export import export_model
    from edgecap_export.validate import reference_pixels

    ckpt = build_smolvlm(tmp_path / "ckpt", init_range=0.2, eos_like=153)
    out = export_model(str(ckpt), tmp_path / "out", progress=False, validate=False)
    images = [np.full((30 + 10 * i, 40, 3), 60 * i, np.uint8) for i in range(2)]
    np.save(tmp_path / "px.npy", reference_pixels(str(ckpt), images, one_tile=True))
    proc = _run(f"""
        import numpy as np
        from edgecap import Captioner
        cap = Captioner({str(out)!r})
        px = np.load({str(tmp_path / "px.npy")!r})
        ids = cap.generate(px, ["Is the gate open?", "How many people are at the door?"], num_beams=2)
        assert len(ids) == 2 and cap.accepts_questions
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
        assert not leaked, leaked
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
