"""edgecap: optimized edge and real-time video captioning.

The runtime imports numpy, onnxruntime, av and tokenizers only; the export step (torch + transformers) lives in
the ``export`` extra and is reached through ``edgecap export``. The public names below load on first use, so
``import edgecap.cli`` (and ``edgecap --help``) does not pay for ONNX Runtime.

Example:
    >>> import edgecap
    >>> cap = edgecap.Captioner("demo")
    >>> for event in edgecap.stream("clip.mp4", cap):
    ...     print(event.camera, event.caption)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (DependencyError, EdgecapError, ExportError, InputError, ManifestError, ModelError, ParityError,
                     RunFailedError, SourceError, UnsupportedModelError)

if TYPE_CHECKING:
    from .captioner import Caption, Captioner, EncoderOutput
    from .events import Event
    from .generation import GenerationOptions
    from .models import demo_model_dir
    from .runtime.stream import stream

_LAZY = {"Caption": "captioner", "Captioner": "captioner", "EncoderOutput": "captioner", "Event": "events",
         "GenerationOptions": "generation", "demo_model_dir": "models", "stream": "runtime.stream"}

__all__ = [
    "Caption", "Captioner", "DependencyError", "EdgecapError", "EncoderOutput", "Event", "ExportError",
    "GenerationOptions", "InputError", "ManifestError", "ModelError", "ParityError", "RunFailedError", "SourceError",
    "UnsupportedModelError", "__version__", "demo_model_dir", "stream",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgecap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
