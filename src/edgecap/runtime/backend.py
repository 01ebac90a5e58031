"""What the runtime needs from a model: the seam between the streaming loop and a caption backend.

:class:`edgecap.Captioner` satisfies both protocols; a test, a remote model or another engine can stand in for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..captioner import Caption, EncoderOutput


@runtime_checkable
class CaptionBackend(Protocol):
    """Captions a batch of frames.

    ``provenance`` is recorded in every scene event's details (model name, precision, graph hash, ...).
    """

    @property
    def provenance(self) -> dict[str, Any]: ...

    def caption_batch(self, images: Sequence[np.ndarray], **options: Any) -> list[Caption]:
        """One Caption per image, in order (``timings`` in ms, ``confidence`` the mean token log-prob).

        ``options`` holds ``prompt`` (one per image) only when a camera has a prompt; a backend that takes prompts
        also has ``check_prompt(prompt)``, which the runtime calls for each camera's prompt before it starts.
        """
        ...


@runtime_checkable
class EmbeddingBackend(CaptionBackend, Protocol):
    """A backend that can encode first and decode only some rows: what the gate's embedding stage needs."""

    def encode_images(self, images: Sequence[np.ndarray], *, timings: dict[str, float] | None = None
                      ) -> EncoderOutput: ...

    def caption_encoded(self, enc: EncoderOutput, *, timings: dict[str, float] | None = None,
                        **options: Any) -> list[Caption]: ...
