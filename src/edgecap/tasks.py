"""Florence-2 task answers -> objects, as ``Florence2Processor.post_process_generation`` parses them.

A detection-style answer is a run of ``label<loc_x0><loc_y0><loc_x1><loc_y1>`` (more boxes may follow a label);
each bin is a thousandth of the original image's width or height. The regular expressions, the bin centre
(``(bin + 0.5) * size / 1000`` in float32, truncated to an integer) and the ASCII-only labels are the processor's,
so the objects equal what transformers returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# How each task's answer is read (the processor's post-processing types that edgecap implements).
TASK_POST_PROCESSING = ("pure_text", "description_with_bboxes", "phrase_grounding")

_PHRASE = re.compile(r"([^<]+(?:<loc_\d+>){4,})")
_LABEL = re.compile(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)")
_BOX = re.compile(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")


@dataclass(frozen=True)
class DetectedObject:
    """One labelled box, in pixels of the original image.

    Attributes:
        label: the object's label (or the grounded phrase).
        x0, y0, x1, y1: the box's corners (left, top, right, bottom).
    """

    label: str
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


def pure_text(text: str) -> str:
    """A text task's answer: the decoded text without ``<s>``/``</s>``."""
    return text.replace("<s>", "").replace("</s>", "").strip()


def _dequantize(bins: Sequence[int], width: int, height: int, quantize_bins: Sequence[int]) -> tuple[int, ...]:
    per_bin = np.asarray([width / quantize_bins[0], height / quantize_bins[1]] * 2, dtype=np.float32)
    return tuple(int(v) for v in ((np.asarray(bins, dtype=np.float32) + np.float32(0.5)) * per_bin).astype(np.int32))


def parse_objects(text: str, kind: str, image_size: tuple[int, int], *, banned: Sequence[str] = (),
                  quantize_bins: Sequence[int] = (1000, 1000)) -> list[DetectedObject]:
    """Labelled boxes from a detection-style answer.

    Args:
        text: the decoded answer with special tokens kept (``<s>``, ``<loc_N>`` ...).
        kind: "description_with_bboxes" (``<OD>``) or "phrase_grounding" (phrases in ``banned`` dropped).
        image_size: the original image's (width, height).
        banned: phrases phrase grounding drops (the processor's banned_grounding_tokens).
        quantize_bins: location bins along x and y.

    Returns:
        The objects in the order of the answer, one per box.
    """
    width, height = image_size
    text = text.replace("<s>", "").replace("</s>", "").replace("<pad>", "")
    objects = []
    for phrase_text in _PHRASE.findall(text):
        phrase_text = phrase_text.replace("<ground>", "", 1).replace("<obj>", "", 1)
        match = _LABEL.search(phrase_text) if phrase_text else None
        if not match:
            continue
        label = match.group().strip()
        if kind == "phrase_grounding" and label in banned:
            continue
        boxes = [[int(m.group(j)) for j in range(1, 5)] for m in _BOX.finditer(phrase_text)]
        label = label.encode("ascii", "ignore").decode("ascii")
        objects += [DetectedObject(label, *_dequantize(b, width, height, quantize_bins)) for b in boxes]
    return objects
