"""The registry of model families edgecap can export, one module per family.

Adding a family (Florence-2, ...) is a new module here implementing :class:`edgecap_export.specs.Family` and one
entry in :data:`FAMILIES`; the exporter and the parity check read everything family-specific through it, and the
runtime reads it from the manifest (special tokens, generation settings, the ``prompt`` section).
"""

from __future__ import annotations

from typing import Any

from edgecap.errors import UnsupportedModelError

from ..specs import Family
from .blip import BLIP
from .florence2 import FLORENCE2
from .smolvlm import SMOLVLM
from .vision_encoder_decoder import VISION_ENCODER_DECODER

FAMILIES: tuple[Family, ...] = (VISION_ENCODER_DECODER, BLIP, FLORENCE2, SMOLVLM)


def describe_supported() -> str:
    """Every exportable family, for one-line "unsupported" messages."""
    return "; ".join(f.describe() for f in FAMILIES)


def family_for(config: Any) -> Family:
    """The family that handles a checkpoint's config.

    Args:
        config: a transformers config (``AutoConfig.from_pretrained``).

    Returns:
        The family whose ``model_types`` hold ``config.model_type``.

    Raises:
        UnsupportedModelError: no family handles it; the message lists what is supported.
    """
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedModelError(f"unsupported model type {model_type!r}: edgecap exports {describe_supported()}")


__all__ = ["FAMILIES", "describe_supported", "family_for"]
