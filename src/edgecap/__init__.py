"""edgecap: optimized edge and real-time video captioning.

The runtime imports numpy, onnxruntime, av and tokenizers only; the export step (torch + transformers) lives in
the ``export`` extra and is reached through ``edgecap export``.
"""

from ._version import __version__
from .captioner import Caption, Captioner, EncoderOutput
from .demo import demo_model_dir
from .errors import (DependencyError, EdgecapError, ExportError, InputError, ManifestError, ModelError, ParityError,
                     SourceError, UnsupportedModelError)
from .generation import GenerationOptions

__all__ = [
    "Caption", "Captioner", "DependencyError", "EdgecapError", "EncoderOutput", "ExportError", "GenerationOptions",
    "InputError", "ManifestError", "ModelError", "ParityError", "SourceError", "UnsupportedModelError",
    "__version__", "demo_model_dir",
]
