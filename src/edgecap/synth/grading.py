"""Reading captions back (:func:`parse_caption`) and grading them per attribute against the ground truth."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InputError
from .spec import ATTRIBUTES, COLOURS, KINDS, SceneSpec


@dataclass(frozen=True)
class ParsedObject:
    """An object mention read from a caption; fields the caption did not state are None."""

    kind: str | None
    colour: str | None
    position: str | None


@dataclass(frozen=True)
class ParsedCaption:
    """What :func:`parse_caption` read from a caption.

    Attributes:
        objects: object mentions in reading order.
        background: background word, or None if none was found.
        time_of_day: "day"/"night", or None.
        count: number of object mentions.
    """

    objects: tuple[ParsedObject, ...]
    background: str | None
    time_of_day: str | None
    count: int


_TOKEN_RE = re.compile(r"[a-z]+|[,;:.!?]")
_SEPARATORS = frozenset({",", ";", ":", ".", "!", "?", "and", "with", "while", "plus"})
_KIND_WORDS = {k: k for k in KINDS} | {"bike": "bicycle", "pedestrian": "person"}
_COLOUR_WORDS = {c: c for c in COLOURS}
_POS_WORDS = {"left": "left", "right": "right", "centre": "centre", "center": "centre", "middle": "centre"}
_BG_WORDS = {
    "street": "street",
    "road": "street",
    "parking": "parking lot",
    "hallway": "hallway",
    "corridor": "hallway",
}
_TIME_WORDS = {"day": "day", "daytime": "day", "daylight": "day", "night": "night", "nighttime": "night"}
_MAX_CAPTION_CHARS = 4000


def parse_caption(text: str) -> ParsedCaption:
    """Read objects, background and time of day from a caption.

    Accepts every variant of the caption grammar and is tolerant of broken
    model output: unknown words are ignored and nothing raises on garbage.

    Args:
        text: the caption (any object is converted with ``str``; None is empty).

    Returns:
        The parsed caption; ``count`` is the number of object mentions.
    """
    if text is None:
        text = ""
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:  # noqa: BLE001 - never raise on garbage
            text = ""
    tokens = _TOKEN_RE.findall(text[:_MAX_CAPTION_CHARS].lower())
    background = next((_BG_WORDS[t] for t in tokens if t in _BG_WORDS), None)
    tod = next((_TIME_WORDS[t] for t in tokens if t in _TIME_WORDS), None)

    chunks: list[list[str]] = [[]]
    for t in tokens:
        if t in _SEPARATORS:
            chunks.append([])
        else:
            chunks[-1].append(t)

    objects: list[ParsedObject] = []
    for chunk in chunks:
        kind_idx = [i for i, t in enumerate(chunk) if t in _KIND_WORDS]
        used_pos: set[int] = set()
        for j, ki in enumerate(kind_idx):
            kind = _KIND_WORDS[chunk[ki]]
            lo = kind_idx[j - 1] + 1 if j > 0 else 0
            hi = kind_idx[j + 1] if j + 1 < len(kind_idx) else len(chunk)
            colour = None
            after = ki + 2 < hi and chunk[ki + 1] in ("in", "wearing") and chunk[ki + 2] in _COLOUR_WORDS
            if kind == "person" and after:
                colour = chunk[ki + 2]
            else:
                for i in range(ki - 1, max(lo, ki - 2) - 1, -1):
                    if chunk[i] in _COLOUR_WORDS:
                        colour = chunk[i]
                        break
                if colour is None and after:
                    colour = chunk[ki + 2]
            position = None
            for i in range(ki + 1, hi):
                if chunk[i] in _POS_WORDS:
                    position = _POS_WORDS[chunk[i]]
                    used_pos.add(i)
                    break
            if position is None:
                for i in range(ki - 1, lo - 1, -1):
                    if chunk[i] in _POS_WORDS and i not in used_pos:
                        position = _POS_WORDS[chunk[i]]
                        used_pos.add(i)
                        break
            objects.append(ParsedObject(kind, colour, position))
    return ParsedCaption(tuple(objects), background, tod, len(objects))


def attribute_scores(spec: SceneSpec, caption: str) -> dict[str, bool]:
    """Grade a caption against the ground truth, attribute by attribute.

    kind: the multiset of kinds matches; colour: the multiset of (kind,
    colour) matches; position: the multiset of (kind, position) matches;
    count: the number of mentions matches; background and time_of_day: equal.
    For an empty scene kind/colour/position are correct iff no object is
    mentioned.

    Args:
        spec: ground truth.
        caption: caption to grade (e.g. model output).

    Returns:
        Dict with keys :data:`ATTRIBUTES` mapped to bools.
    """
    parsed = parse_caption(caption)
    got = parsed.objects
    want = spec.objects
    return {
        "kind": Counter(o.kind for o in got) == Counter(o.kind for o in want),
        "colour": Counter((o.kind, o.colour) for o in got) == Counter((o.kind, o.colour) for o in want),
        "count": parsed.count == spec.count,
        "position": Counter((o.kind, o.position) for o in got) == Counter((o.kind, o.position) for o in want),
        "background": parsed.background == spec.background,
        "time_of_day": parsed.time_of_day == spec.time_of_day,
    }


def attribute_accuracy(pairs: Iterable[tuple[SceneSpec, str]]) -> dict[str, float]:
    """Average :func:`attribute_scores` over (spec, caption) pairs.

    Args:
        pairs: iterable of (ground-truth spec, caption).

    Returns:
        Dict with keys :data:`ATTRIBUTES` mapped to accuracies in [0, 1].

    Raises:
        InputError: if ``pairs`` is empty.
    """
    totals = dict.fromkeys(ATTRIBUTES, 0)
    n = 0
    for spec, caption in pairs:
        for k, v in attribute_scores(spec, caption).items():
            totals[k] += int(v)
        n += 1
    if n == 0:
        raise InputError("attribute_accuracy needs at least one (spec, caption) pair")
    return {k: totals[k] / n for k in ATTRIBUTES}
