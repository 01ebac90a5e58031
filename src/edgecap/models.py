"""Where models come from: the bundled demo model, or a directory written by ``edgecap export``."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelError

_DEMO_DIR = Path(__file__).resolve().parent / "models" / "demo"
DEMO = "demo"


def demo_model_dir() -> Path:
    """Return the directory of the bundled demo model (manifest + ONNX graphs + tokenizer).

    Raises:
        ModelError: the package was installed without the bundled model.
    """
    if not (_DEMO_DIR / "manifest.json").is_file():
        raise ModelError(f"the bundled demo model is missing from {_DEMO_DIR}; reinstall edgecap from a full checkout")
    return _DEMO_DIR


def resolve_model(model: str | os.PathLike) -> Path:
    """``"demo"`` -> the bundled model's directory; anything else is taken as an exported model directory.

    The directory's contents are checked when the manifest is loaded (`edgecap.manifest.load_manifest`).
    """
    return demo_model_dir() if str(model) == DEMO else Path(model)
