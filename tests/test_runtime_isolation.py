"""The runtime package never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_runtime_runs_with_torch_and_transformers_blocked(tiny_export):
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "edgecap_export"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import edgecap, edgecap.cli, edgecap.synth, edgecap.demo, edgecap.video, edgecap.evaluation
        from edgecap import Captioner
        cap = Captioner({str(tiny_export)!r})
        out = cap.caption(np.zeros((20, 20, 3), np.uint8), max_new_tokens=4, num_beams=2)
        assert isinstance(out.text, str)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        assert not leaked, leaked
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_export_without_extra_says_what_to_install():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("blocked", name="torch")
        sys.meta_path.insert(0, Block())
        from edgecap.cli import main
        sys.exit(main(["export", "some/model", "--out", "/tmp/never"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "export extra" in proc.stderr and "torch" in proc.stderr
