"""The manifest's ``image`` section for SmolVLM / Idefics3: what edgecap.idefics3_image reads, from the processor."""

from __future__ import annotations

from typing import Any

from edgecap.errors import UnsupportedModelError

# The settings preprocess_idefics3 reads, under the image processor's own names.
IDEFICS3_KEYS = ("do_convert_rgb", "do_resize", "size", "max_image_size", "resample", "do_rescale", "rescale_factor",
         "do_normalize", "image_mean", "image_std", "do_pad", "do_image_splitting")


def idefics3_settings(processor: Any) -> dict[str, Any]:
    """Read the single-tile preprocessing settings from a loaded Idefics3 image processor.

    Args:
        processor: an ``Idefics3ImageProcessor`` (or its Pillow variant), or a processor holding one as
            ``image_processor`` (``Idefics3Processor``).

    Returns:
        A JSON-ready dict: ``processor_type`` "Idefics3ImageProcessor" and the settings in ``IDEFICS3_KEYS``.

    Raises:
        UnsupportedModelError: the processor splits images into tiles, or its sizes are not ``longest_edge`` ones.
    """
    ip = getattr(processor, "image_processor", processor)
    if getattr(ip, "do_image_splitting", False):
        raise UnsupportedModelError(
            "the image processor has do_image_splitting true (several 512 px tiles per image); edgecap exports "
            "SmolVLM/Idefics3 with one tile: set \"do_image_splitting\": false in the checkpoint's processor config")
    out: dict[str, Any] = {"processor_type": "Idefics3ImageProcessor"}
    for key in IDEFICS3_KEYS:
        value = getattr(ip, key)
        if key in ("size", "max_image_size"):
            edge = dict(value or {}).get("longest_edge")
            if edge is None:
                raise UnsupportedModelError(f"image processor {key} {dict(value or {})} is not supported: expected "
                                            "a longest_edge (as SmolVLM's processors have)")
            value = {"longest_edge": int(edge)}
        elif key in ("image_mean", "image_std"):
            value = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3)]
        elif key == "rescale_factor":
            value = float(value)
        elif key == "resample":
            value = int(value)
        else:
            value = bool(value)
        out[key] = value
    return out
