"""Scene ground truth and its caption grammar: the vocabulary, :class:`SceneSpec` and :func:`random_spec`.

Held-out seed rule: seeds ``>= HELD_OUT_SEED_START`` (10**9) are reserved for
held-out evaluation.  Training data must only use seeds below it; evaluation
scripts draw seeds from ``HELD_OUT_SEED_START`` upwards (see
:func:`is_held_out_seed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
KINDS: tuple[str, ...] = ("person", "car", "truck", "bicycle", "dog")
COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "white", "black")
POSITIONS: tuple[str, ...] = ("left", "centre", "right")
BACKGROUNDS: tuple[str, ...] = ("street", "parking lot", "hallway")
TIMES_OF_DAY: tuple[str, ...] = ("day", "night")

#: Seeds at or above this value are reserved for held-out evaluation; never
#: train on them.
HELD_OUT_SEED_START: int = 10**9

#: Attribute names graded by :func:`attribute_scores`.
ATTRIBUTES: tuple[str, ...] = ("kind", "colour", "count", "position", "background", "time_of_day")

#: Nominal RGB value of each colour word (objects get a small jitter and shading).
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "blue": (30, 60, 200),
    "green": (30, 160, 50),
    "yellow": (230, 200, 30),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
}

_COUNT_PROBS = (0.10, 0.30, 0.30, 0.30)

# Seed-sequence tags: every random stream is default_rng((TAG, *key)) so the
# streams for spec sampling, background, each object slot and noise are
# independent.  Tags are non-zero (SeedSequence pads short entropy with zeros).
TAG_SPEC = 0x5EC
TAG_BG = 0xB6
TAG_OBJ = 0x0B1
TAG_NOISE = 0x401
TAG_CLIP = 0xC11
CLIP_MARK = 0xC1C


def is_held_out_seed(seed: int) -> bool:
    """Tell whether ``seed`` is reserved for held-out evaluation.

    Args:
        seed: a scene seed.

    Returns:
        True iff ``seed >= HELD_OUT_SEED_START``.
    """
    return int(seed) >= HELD_OUT_SEED_START


_POS_PHRASE = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
_BG_PHRASE = {"street": "on a street", "parking lot": "in a parking lot", "hallway": "in a hallway"}
_TIME_PHRASE = {"day": "during the day", "night": "at night"}

#: Number of wording variants produced by :meth:`SceneSpec.caption`.
N_CAPTION_VARIANTS: int = 4


@dataclass(frozen=True)
class SceneObject:
    """One object in a scene.

    Attributes:
        kind: one of :data:`KINDS`.
        colour: one of :data:`COLOURS` (for a person: the clothing colour).
        position: one of :data:`POSITIONS` (horizontal third of the frame).
    """

    kind: str
    colour: str
    position: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.colour not in COLOURS:
            raise InputError(f"unknown colour {self.colour!r}; expected one of {COLOURS}")
        if self.position not in POSITIONS:
            raise InputError(f"unknown position {self.position!r}; expected one of {POSITIONS}")

    def phrase(self) -> str:
        """Return the noun phrase, e.g. ``"a red car"`` or ``"a person in blue"``."""
        if self.kind == "person":
            # Clothing phrasing: never "a black person" / "a white person".
            return f"a person in {self.colour}"
        return f"a {self.colour} {self.kind}"


@dataclass(frozen=True)
class SceneSpec:
    """Ground truth of one scene.

    Objects are kept sorted left -> centre -> right with at most one object per
    position slot, so the count is 0..3 and positions are unambiguous.

    Attributes:
        objects: the objects, ordered by position.
        background: one of :data:`BACKGROUNDS`.
        time_of_day: one of :data:`TIMES_OF_DAY`.
    """

    objects: tuple[SceneObject, ...]
    background: str
    time_of_day: str

    def __post_init__(self) -> None:
        objs = tuple(self.objects)
        for o in objs:
            if not isinstance(o, SceneObject):
                raise TypeError(f"objects must be SceneObject instances, got {type(o).__name__}")
        objs = tuple(sorted(objs, key=lambda o: POSITIONS.index(o.position)))
        positions = [o.position for o in objs]
        if len(set(positions)) != len(positions):
            raise InputError(f"at most one object per position slot, got positions {positions}")
        if self.background not in BACKGROUNDS:
            raise InputError(f"unknown background {self.background!r}; expected one of {BACKGROUNDS}")
        if self.time_of_day not in TIMES_OF_DAY:
            raise InputError(f"unknown time of day {self.time_of_day!r}; expected one of {TIMES_OF_DAY}")
        object.__setattr__(self, "objects", objs)

    @property
    def count(self) -> int:
        """Number of objects (0..3)."""
        return len(self.objects)

    def caption(self, variant: int = 0) -> str:
        """Return the caption in one of the wording variants.

        Variant 0 is canonical, e.g. ``"a red car on the left and a person in
        blue on the right in a parking lot at night"``; variants 1..3 change the
        sentence structure only, never the kind/colour/position words.

        Args:
            variant: 0 <= variant < :data:`N_CAPTION_VARIANTS`.

        Returns:
            The caption (lower case, no final full stop).
        """
        if not isinstance(variant, (int, np.integer)) or not 0 <= int(variant) < N_CAPTION_VARIANTS:
            raise InputError(f"variant must be an int in [0, {N_CAPTION_VARIANTS}), got {variant!r}")
        variant = int(variant)
        bg_noun = self.background
        bg_loc = _BG_PHRASE[self.background]
        tod = _TIME_PHRASE[self.time_of_day]
        if not self.objects:
            return (
                f"an empty {bg_noun} {tod}",
                f"a {bg_noun} {tod} with nothing in view",
                f"{tod}, an empty {bg_noun}",
                f"a {bg_noun} {tod}: empty",
            )[variant]
        obj_pos = _join([f"{o.phrase()} {_POS_PHRASE[o.position]}" for o in self.objects])
        if variant == 0:
            return f"{obj_pos} {bg_loc} {tod}"
        if variant == 1:
            return f"a {bg_noun} {tod} with {obj_pos}"
        if variant == 2:
            return f"{tod}, {obj_pos} {bg_loc}"
        pos_obj = _join([f"{_POS_PHRASE[o.position]} {o.phrase()}" for o in self.objects])
        return f"a {bg_noun} {tod}: {pos_obj}"

    def captions(self) -> list[str]:
        """Return all wording variants, canonical first.

        Returns:
            ``[self.caption(v) for v in range(N_CAPTION_VARIANTS)]``.
        """
        return [self.caption(v) for v in range(N_CAPTION_VARIANTS)]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        return {
            "objects": [{"kind": o.kind, "colour": o.colour, "position": o.position} for o in self.objects],
            "background": self.background,
            "time_of_day": self.time_of_day,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Build a spec from :meth:`to_dict` output.

        Args:
            data: dict with keys ``objects``, ``background``, ``time_of_day``.

        Returns:
            The spec.
        """
        objs = tuple(SceneObject(o["kind"], o["colour"], o["position"]) for o in data["objects"])
        return cls(objs, data["background"], data["time_of_day"])


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_SPEC_OVERRIDES = frozenset({"objects", "background", "time_of_day", "count"})


def sample_spec(rng: np.random.Generator, overrides: dict[str, Any]) -> SceneSpec:
    unknown = set(overrides) - _SPEC_OVERRIDES
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)}; allowed: {sorted(_SPEC_OVERRIDES)}")
    # Always draw every value in the same order so that overriding one
    # attribute leaves the others unchanged.
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    tod = TIMES_OF_DAY[int(rng.integers(len(TIMES_OF_DAY)))]
    count = int(rng.choice(4, p=_COUNT_PROBS))
    slot_order = rng.permutation(3)
    kinds = rng.integers(len(KINDS), size=3)
    colours = rng.integers(len(COLOURS), size=3)

    if overrides.get("background") is not None:
        bg = overrides["background"]
    if overrides.get("time_of_day") is not None:
        tod = overrides["time_of_day"]
    if overrides.get("objects") is not None:
        objs = tuple(overrides["objects"])
        if overrides.get("count") is not None and int(overrides["count"]) != len(objs):
            raise InputError("count override disagrees with the number of objects given")
        return SceneSpec(objs, bg, tod)
    if overrides.get("count") is not None:
        count = int(overrides["count"])
        if not 0 <= count <= 3:
            raise InputError(f"count must be in 0..3, got {count}")
    slots = sorted(int(s) for s in slot_order[:count])
    objs = tuple(SceneObject(KINDS[int(kinds[s])], COLOURS[int(colours[s])], POSITIONS[s]) for s in slots)
    return SceneSpec(objs, bg, tod)


def random_spec(seed: int, **overrides: Any) -> SceneSpec:
    """Sample a scene spec.

    The count is 0 with probability 0.1 and 1, 2 or 3 with probability 0.3
    each; slots, kinds, colours, background and time of day are uniform.

    Args:
        seed: non-negative int (seeds >= HELD_OUT_SEED_START are for held-out
            evaluation only).
        **overrides: any of ``objects`` (sequence of SceneObject),
            ``background``, ``time_of_day``, ``count`` (0..3: that many random
            distinct slots).  Overriding one attribute leaves the randomly
            drawn others unchanged.

    Returns:
        The spec.
    """
    rng = np.random.default_rng((TAG_SPEC, check_seed(seed)))
    return sample_spec(rng, overrides)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < 16 or w < 16:
        raise InputError(f"size must be at least (16, 16), got {size!r}")
    return h, w
