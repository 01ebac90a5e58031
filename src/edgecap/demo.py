"""The bundled demo captioner, trained by the project on synthetic camera scenes (see docs/DEMO_MODEL.md)."""

from __future__ import annotations

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
