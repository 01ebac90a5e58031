"""Procedural surveillance-camera scenes for training and evaluating edgecap's captioner.

No pretrained captioner can be downloaded where edgecap is built, so the project
trains its own small captioner on synthetic scenes.  This module is the
generator.  A scene has a background (street, parking lot or hallway), a time
of day (day or night) and zero to three objects (person, car, truck, bicycle,
dog), each with one of six colours and at most one object per horizontal slot
(left, centre or right third of the frame).  Everything is drawn with numpy
only (no OpenCV, PIL or torch), so rendering is cheap enough to pre-render tens
of thousands of training images.

Main entry points:

* :func:`random_spec` samples a :class:`SceneSpec` (the ground truth);
* :func:`render_spec` draws a spec, the ``seed`` controlling only nuisance
  variation (jitter, scale, clutter, lighting, sensor noise);
* :func:`render_scene` is ``render_spec(random_spec(seed), seed=seed)``;
* :meth:`SceneSpec.caption` writes the caption from a small fixed grammar,
  :func:`parse_caption` reads any caption variant (or a model's approximation
  of one) back, and :func:`attribute_scores` / :func:`attribute_accuracy` grade
  captions per attribute;
* :func:`render_clip` writes a video (several camera cuts plus objects entering
  and leaving) together with its ground-truth timeline.

Held-out seed rule: seeds ``>= HELD_OUT_SEED_START`` (10**9) are reserved for
held-out evaluation.  Training data must only use seeds below it; evaluation
scripts draw seeds from ``HELD_OUT_SEED_START`` upwards (see
:func:`is_held_out_seed`).  Every random choice is made with
``numpy.random.default_rng`` seeded from the caller's seed (never the global
RNG), so the same seed and overrides always give byte-identical images and
identical specs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from os import PathLike
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "COLOURS",
    "POSITIONS",
    "BACKGROUNDS",
    "TIMES_OF_DAY",
    "HELD_OUT_SEED_START",
    "N_CAPTION_VARIANTS",
    "COLOUR_RGB",
    "SceneObject",
    "SceneSpec",
    "ClipSegment",
    "ParsedObject",
    "ParsedCaption",
    "is_held_out_seed",
    "random_spec",
    "render_spec",
    "render_scene",
    "render_clip",
    "pick_video_codec",
    "parse_caption",
    "attribute_scores",
    "attribute_accuracy",
    "ATTRIBUTES",
]

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

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
_TAG_SPEC = 0x5EC
_TAG_BG = 0xB6
_TAG_OBJ = 0x0B1
_TAG_NOISE = 0x401
_TAG_CLIP = 0xC11
_CLIP_MARK = 0xC1C

# Design coordinate system: everything is laid out for a 320x240 frame and
# scaled to the requested size (x by W/320, y by H/240).
_DW = 320.0
_DH = 240.0


def is_held_out_seed(seed: int) -> bool:
    """Tell whether ``seed`` is reserved for held-out evaluation.

    Args:
        seed: a scene seed.

    Returns:
        True iff ``seed >= HELD_OUT_SEED_START``.
    """
    return int(seed) >= HELD_OUT_SEED_START


# ---------------------------------------------------------------------------
# Specs and captions
# ---------------------------------------------------------------------------

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
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {COLOURS}")
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; expected one of {POSITIONS}")

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
            raise ValueError(f"at most one object per position slot, got positions {positions}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {BACKGROUNDS}")
        if self.time_of_day not in TIMES_OF_DAY:
            raise ValueError(f"unknown time of day {self.time_of_day!r}; expected one of {TIMES_OF_DAY}")
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
            raise ValueError(f"variant must be an int in [0, {N_CAPTION_VARIANTS}), got {variant!r}")
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


def _sample_spec(rng: np.random.Generator, overrides: dict[str, Any]) -> SceneSpec:
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
            raise ValueError("count override disagrees with the number of objects given")
        return SceneSpec(objs, bg, tod)
    if overrides.get("count") is not None:
        count = int(overrides["count"])
        if not 0 <= count <= 3:
            raise ValueError(f"count must be in 0..3, got {count}")
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
    rng = np.random.default_rng((_TAG_SPEC, _check_seed(seed)))
    return _sample_spec(rng, overrides)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least (16, 16), got {size!r}")
    return h, w


# ---------------------------------------------------------------------------
# Drawing primitives (numpy masks over the primitive's bounding box)
# ---------------------------------------------------------------------------


class _Painter:
    """Draws primitives given in design units into a planar (3, h, w) float32 buffer.

    Planar layout keeps numpy's inner loops long (masked writes into an
    interleaved HxWx3 array are an order of magnitude slower).  The buffer
    covers frame pixels [oy, oy+h) x [ox, ox+w); if ``keep_alpha``, every drawn
    pixel also gets an opacity value.
    """

    __slots__ = ("rgb", "alpha", "sx", "sy", "ox", "oy", "h", "w")

    def __init__(
        self, rgb: np.ndarray, sx: float, sy: float, ox: int = 0, oy: int = 0, keep_alpha: bool = False
    ) -> None:
        self.rgb = rgb
        self.h, self.w = rgb.shape[1:]
        self.alpha = np.zeros((self.h, self.w), np.float32) if keep_alpha else None
        self.sx, self.sy, self.ox, self.oy = sx, sy, ox, oy

    def region(self, x0: float, y0: float, x1: float, y1: float):
        sx, sy = self.sx, self.sy
        px0 = max(math.floor(x0 * sx) - self.ox, 0)
        px1 = min(math.ceil(x1 * sx) - self.ox + 1, self.w)
        py0 = max(math.floor(y0 * sy) - self.oy, 0)
        py1 = min(math.ceil(y1 * sy) - self.oy + 1, self.h)
        if px0 >= px1 or py0 >= py1:
            return None
        xs = (np.arange(px0 + self.ox, px1 + self.ox, dtype=np.float32) + 0.5) / sx
        ys = (np.arange(py0 + self.oy, py1 + self.oy, dtype=np.float32) + 0.5) / sy
        return py0, py1, px0, px1, xs[None, :], ys[:, None]

    def put(self, reg, mask: np.ndarray, colour, alpha: float = 1.0, grad=None) -> None:
        py0, py1, px0, px1, _xs, ys = reg
        mask = np.broadcast_to(mask, (py1 - py0, px1 - px0))
        sub = self.rgb[:, py0:py1, px0:px1]
        col = np.asarray(colour, np.float32).reshape(3, 1, 1)
        if grad is not None:
            top, bottom, gy0, gy1 = grad
            t = np.clip((ys - gy0) / max(gy1 - gy0, 1e-3), 0.0, 1.0)
            col = col * (top + (bottom - top) * t)
        np.copyto(sub, col, where=mask)
        if self.alpha is not None:
            self.alpha[py0:py1, px0:px1][mask] = alpha

    def rect(self, x0, y0, x1, y1, colour, alpha=1.0, grad=None) -> None:
        if grad is None:
            # fast path: pixel centres (p + 0.5) / s in [x0, x1) <=> p in [ceil(x0*s - .5), ceil(x1*s - .5))
            px0 = max(math.ceil(x0 * self.sx - 0.5) - self.ox, 0)
            px1 = min(math.ceil(x1 * self.sx - 0.5) - self.ox, self.w)
            py0 = max(math.ceil(y0 * self.sy - 0.5) - self.oy, 0)
            py1 = min(math.ceil(y1 * self.sy - 0.5) - self.oy, self.h)
            if px0 < px1 and py0 < py1:
                self.rgb[:, py0:py1, px0:px1] = np.asarray(colour, np.float32).reshape(3, 1, 1)
                if self.alpha is not None:
                    self.alpha[py0:py1, px0:px1] = alpha
            return
        reg = self.region(x0, y0, x1, y1)
        if reg is None:
            return
        xs, ys = reg[4], reg[5]
        mask = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        self.put(reg, mask, colour, alpha, grad)

    def ellipse(self, cx, cy, rx, ry, colour, alpha=1.0, grad=None) -> None:
        reg = self.region(cx - rx, cy - ry, cx + rx, cy + ry)
        if reg is None:
            return
        xs, ys = reg[4], reg[5]
        mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        self.put(reg, mask, colour, alpha, grad)

    def ring(self, cx, cy, r, width, colour) -> None:
        ro = r + width / 2
        reg = self.region(cx - ro, cy - ro, cx + ro, cy + ro)
        if reg is None:
            return
        xs, ys = reg[4], reg[5]
        d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        self.put(reg, np.abs(d - r) <= width / 2, colour)

    def line(self, x0, y0, x1, y1, width, colour, alpha=1.0) -> None:
        hw = width / 2
        reg = self.region(min(x0, x1) - hw, min(y0, y1) - hw, max(x0, x1) + hw, max(y0, y1) + hw)
        if reg is None:
            return
        xs, ys = reg[4], reg[5]
        dx, dy = x1 - x0, y1 - y0
        l2 = dx * dx + dy * dy
        if l2 < 1e-9:
            mask = (xs - x0) ** 2 + (ys - y0) ** 2 <= hw * hw
        else:
            t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / l2, 0.0, 1.0)
            mask = (xs - x0 - t * dx) ** 2 + (ys - y0 - t * dy) ** 2 <= hw * hw
        self.put(reg, mask, colour, alpha)

    def polygon(self, pts: Sequence[tuple[float, float]], colour, alpha=1.0, grad=None) -> None:
        px = [p[0] for p in pts]
        py = [p[1] for p in pts]
        reg = self.region(min(px), min(py), max(px), max(py))
        if reg is None:
            return
        xs, ys = reg[4], reg[5]
        inside = np.zeros((ys.shape[0], xs.shape[1]), bool)
        n = len(pts)
        for i in range(n):
            xi, yi = pts[i]
            xj, yj = pts[i - 1]
            if yi == yj:
                continue
            cond = (yi > ys) != (yj > ys)  # (h, 1)
            xint = (xj - xi) * (ys - yi) / (yj - yi) + xi  # (h, 1)
            inside ^= cond & (xs < xint)
        self.put(reg, inside, colour, alpha, grad)


def _tf(cx: float, gy: float, u: float, f: int, pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Map object-local points (x along facing, height above ground, in units of u)."""
    return [(cx + f * lx * u, gy - ly * u) for lx, ly in pts]


@lru_cache(maxsize=64)
def _interp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    return i0, (pos - i0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, ny: int, nx: int) -> np.ndarray:
    """Low-frequency noise field (h, w), unit-ish std, bilinear from an ny x nx grid."""
    g = rng.standard_normal((ny, nx)).astype(np.float32)
    iy, fy = _interp_index(h, ny)
    ix, fx = _interp_index(w, nx)
    rows = g[iy] * (1.0 - fy)[:, None] + g[iy + 1] * fy[:, None]  # (h, nx)
    return rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx


def _jit(rng: np.random.Generator, base: Sequence[float], amount: float, grey: bool = True) -> np.ndarray:
    """Jitter a colour: a shared brightness shift plus small per-channel noise."""
    shift = rng.uniform(-amount, amount)
    ch = rng.uniform(-amount / 3, amount / 3, 3) if grey else rng.uniform(-amount, amount, 3)
    return np.clip(np.asarray(base, np.float32) + shift + ch, 0, 255).astype(np.float32)


# ---------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------


@dataclass
class _BgInfo:
    ground: float  # base ground line (design y) for objects
    glows: list[tuple[float, float, float]]  # (x, y, radius) in design units, lit at night
    emissive: list[Callable[[_Painter], None]]  # drawn after lighting, at night only


def _lamp_post(p: _Painter, rng: np.random.Generator, base_y: float, info: _BgInfo) -> None:
    x = rng.uniform(15, 305)
    top = rng.uniform(6, 16)
    arm = 14.0 if x < 160 else -14.0
    pole = _jit(rng, (78, 80, 84), 8)
    p.rect(x - 1.6, top, x + 1.6, base_y, pole)
    p.line(x, top, x + arm, top + 2, 2.5, pole)
    hx, hy = x + arm, top + 4.5
    p.ellipse(hx, hy, 5, 2.6, (110, 110, 105))
    info.glows.append((hx, hy + 20, 70.0))
    info.emissive.append(lambda q, hx=hx, hy=hy: q.ellipse(hx, hy, 5, 2.6, (255, 244, 210)))


def _bg_street(p: _Painter, rng: np.random.Generator) -> _BgInfo:
    info = _BgInfo(ground=rng.uniform(198, 222), glows=[], emissive=[])
    yb = rng.uniform(60, 74)  # bottom of building band
    ys = yb + rng.uniform(20, 28)  # kerb
    p.rect(0, 0, _DW, yb, _jit(rng, (150, 182, 212), 12))  # sky
    x = rng.uniform(-40, 0)
    palette = ((150, 90, 70), (160, 155, 145), (175, 160, 130), (120, 120, 125), (185, 175, 160))
    b = 0
    while x < _DW:
        bw = rng.uniform(45, 95)
        top = rng.uniform(0, 28)
        col = _jit(rng, palette[int(rng.integers(len(palette)))], 12)
        p.rect(x, top, x + bw, yb, col)
        # windows: one vectorised mask per building
        wx, wy = rng.uniform(12, 16), rng.uniform(12, 15)
        reg = p.region(x + 5, top + 5, x + bw - 5, yb - 8)
        glass = _jit(rng, (62, 72, 88), 10)
        if reg is not None:
            xs, ys_ = reg[4], reg[5]
            inb = (xs >= x + 5) & (xs < x + bw - 5) & (ys_ >= top + 5) & (ys_ < yb - 8)
            win = ((xs - x - 5) % wx < wx * 0.5) & ((ys_ - top - 5) % wy < wy * 0.55) & inb
            p.put(reg, win, glass)
            seed_b = b

            def lit(q: _Painter, x=x, top=top, bw=bw, wx=wx, wy=wy, seed_b=seed_b) -> None:
                r = q.region(x + 5, top + 5, x + bw - 5, yb - 8)
                if r is None:
                    return
                qx, qy = r[4], r[5]
                ix = np.floor((qx - x - 5) / wx)
                iy = np.floor((qy - top - 5) / wy)
                on = ((ix * 7 + iy * 13 + seed_b * 3) % 5) < 2
                m = ((qx - x - 5) % wx < wx * 0.5) & ((qy - top - 5) % wy < wy * 0.55) & on
                m &= (qx >= x + 5) & (qx < x + bw - 5) & (qy >= top + 5) & (qy < yb - 8)
                q.put(r, m, (215, 185, 110))

            info.emissive.append(lit)
        x += bw + rng.uniform(0, 6)
        b += 1
    # sidewalk with paving joints
    walk = _jit(rng, (162, 160, 152), 10)
    p.rect(0, yb, _DW, ys, walk)
    reg = p.region(0, yb, _DW, ys)
    if reg is not None:
        pitch, off = rng.uniform(20, 28), rng.uniform(0, 20)
        p.put(reg, ((reg[4] - off) % pitch) < 1.4, walk * 0.8)
    p.rect(0, ys, _DW, ys + 4, _jit(rng, (196, 196, 190), 8))  # kerb
    road_top = ys + 4
    asphalt = _jit(rng, (94, 94, 98), 10)
    p.rect(0, road_top, _DW, _DH, asphalt)
    ry0 = math.floor(road_top * p.sy)
    tex = _smooth_noise(rng, p.h - ry0, p.w, 6, 9) * rng.uniform(4, 8)
    p.rgb[:, ry0:] += tex
    # dashed lane line and a solid edge line
    yl = rng.uniform(150, 172)
    reg = p.region(0, yl - 2.5, _DW, yl + 2.5)
    if reg is not None:
        dash, gap, ph = rng.uniform(22, 30), rng.uniform(16, 24), rng.uniform(0, 40)
        m = ((reg[4] - ph) % (dash + gap) < dash) & (np.abs(reg[5] - yl) < 2.2)
        p.put(reg, m, _jit(rng, (222, 222, 212), 8))
    ye = rng.uniform(road_top + 8, road_top + 14)
    p.rect(0, ye, _DW, ye + 2, _jit(rng, (200, 200, 190), 10))
    # clutter: manhole cover, drain
    mx, my = rng.uniform(20, 300), rng.uniform(178, 236)
    p.ellipse(mx, my, 11, 4, asphalt * 0.7)
    p.ellipse(mx, my, 8, 2.8, asphalt * 0.85)
    _lamp_post(p, rng, ys + 2, info)
    return info


def _bg_parking(p: _Painter, rng: np.random.Generator) -> _BgInfo:
    info = _BgInfo(ground=rng.uniform(196, 224), glows=[], emissive=[])
    yw = rng.uniform(36, 50)
    yf = yw * rng.uniform(0.35, 0.5)
    p.rect(0, 0, _DW, yf, _jit(rng, (140, 174, 206), 12))  # sky
    wall = _jit(rng, (150, 146, 136), 12)
    p.rect(0, yf, _DW, yw, wall)
    reg = p.region(0, yf, _DW, yw)
    if reg is not None:  # block joints
        bh, bwid = rng.uniform(5, 8), rng.uniform(14, 20)
        row = np.floor((reg[5] - yf) / bh)
        m = ((reg[5] - yf) % bh < 0.9) | (((reg[4] + row * bwid / 2) % bwid) < 0.9)
        p.put(reg, m, wall * 0.82)
    p.rect(0, yw, _DW, yw + 5, _jit(rng, (186, 186, 180), 8))  # kerb
    top = yw + 5
    asphalt = _jit(rng, (60, 61, 65), 8)
    p.rect(0, top, _DW, _DH, asphalt)
    ry0 = math.floor(top * p.sy)
    tex = _smooth_noise(rng, p.h - ry0, p.w, 6, 9) * rng.uniform(3, 6)
    p.rgb[:, ry0:] += tex
    # oil stains
    for _ in range(3):
        ox, oy = rng.uniform(10, 310), rng.uniform(top + 10, 235)
        p.ellipse(ox, oy, rng.uniform(6, 14), rng.uniform(2, 5), asphalt * 0.72)
    paint = _jit(rng, (218, 218, 206), 8)
    bay = rng.uniform(46, 60)
    off = rng.uniform(0, bay)
    slant = rng.uniform(-8, 8)
    yu = top + rng.uniform(55, 70)
    yl = rng.uniform(174, 190)
    p.line(0, yu, _DW, yu, 2.6, paint)
    p.line(0, yl, _DW, yl, 2.6, paint)
    x = off - bay
    while x < _DW + bay:
        p.line(x + slant, top + 2, x, yu, 2.8, paint)
        p.line(x, yl, x - slant, _DH + 2, 2.8, paint)
        if rng.random() < 0.5:  # wheel stop
            p.rect(x + bay * 0.25, top + 8, x + bay * 0.75, top + 12, _jit(rng, (170, 168, 160), 10))
        x += bay
    _lamp_post(p, rng, top + 2, info)
    return info


def _bg_hallway(p: _Painter, rng: np.random.Generator) -> _BgInfo:
    info = _BgInfo(ground=rng.uniform(204, 226), glows=[], emissive=[])
    vx = _DW / 2 + rng.uniform(-28, 28)
    vy = rng.uniform(84, 104)
    bw = rng.uniform(36, 50)
    by0 = vy - rng.uniform(34, 46)
    by1 = vy + rng.uniform(24, 34)
    bx0, bx1 = vx - bw, vx + bw
    far = 14.0

    def ray(px: float, py: float, t: float = far) -> tuple[float, float]:
        return (vx + t * (px - vx), vy + t * (py - vy))

    ceiling = _jit(rng, (226, 224, 214), 8)
    wall = _jit(rng, (206, 190, 154), 14, grey=False)
    floor = _jit(rng, (172, 170, 162), 14)
    p.rect(0, 0, _DW, _DH, ceiling)
    p.polygon([(bx0, by0), (bx0, by1), ray(bx0, by1), ray(bx0, by0)], wall * 0.9)
    p.polygon([(bx1, by0), (bx1, by1), ray(bx1, by1), ray(bx1, by0)], wall)
    # floor tiles: checkerboard in perspective, one vectorised pass
    fy0 = by1
    reg = p.region(0, fy0, _DW, _DH)
    if reg is not None:
        xs, ys_ = reg[4], reg[5]
        depth = np.maximum(ys_ - vy, 1e-3)
        u = (xs - vx) / depth  # constant along rays through the vanishing point
        v = (by1 - vy) / depth  # 1 at the back wall, decreasing towards the camera
        in_floor = (ys_ >= by1) & (np.abs(u) <= bw / (by1 - vy))
        tu = rng.uniform(0.9, 1.4) * (by1 - vy) / bw
        tv = rng.uniform(5, 8)
        cu = np.floor(u * tu * 2)
        cv = np.floor(v * tv)
        checker = ((cu + cv) % 2) == 0
        p.put(reg, in_floor, floor)
        p.put(reg, in_floor & checker, floor * rng.uniform(0.82, 0.9))
        grout = in_floor & ((((u * tu * 2) % 1.0) < 0.05) | (((v * tv) % 1.0) < 0.06))
        p.put(reg, grout, floor * 0.7)
    p.rect(bx0, by0, bx1, by1, wall * 0.8)
    # doors on the back wall and side walls
    door = _jit(rng, (122, 88, 58), 14, grey=False)
    dw = bw * rng.uniform(0.35, 0.55)
    dxc = vx + rng.uniform(-bw + dw, bw - dw)
    p.rect(dxc - dw / 2, by1 - (by1 - by0) * 0.72, dxc + dw / 2, by1, door)

    def side_door(side: int, ta: float, tb: float) -> None:
        cx_ = bx0 if side < 0 else bx1
        fa, fb = ray(cx_, by1, ta), ray(cx_, by1, tb)
        ca, cb = ray(cx_, by0, ta), ray(cx_, by0, tb)
        h = 0.7
        pts = [fa, fb, (fb[0], fb[1] + h * (cb[1] - fb[1])), (fa[0], fa[1] + h * (ca[1] - fa[1]))]
        p.polygon(pts, door)
        p.line(pts[0][0], pts[0][1], pts[3][0], pts[3][1], 1.5, door * 0.65)
        p.line(pts[1][0], pts[1][1], pts[2][0], pts[2][1], 1.5, door * 0.65)
        p.line(pts[2][0], pts[2][1], pts[3][0], pts[3][1], 1.5, door * 0.65)
        hx = fa[0] + 0.8 * (fb[0] - fa[0])
        hy = fa[1] + 0.8 * (fb[1] - fa[1]) + 0.35 * (ca[1] - fa[1])
        p.ellipse(hx, hy, 1.6, 1.6, (200, 190, 120))

    for side in (-1, 1):
        t = rng.uniform(1.15, 1.5)
        for _ in range(int(rng.integers(1, 3))):
            width = rng.uniform(0.3, 0.45) * t
            if t + width > 3.2:
                break
            side_door(side, t, t + width)
            t += width + rng.uniform(0.5, 0.9) * t
    # skirting along wall/floor edges
    skirt = wall * 0.55
    p.line(bx0, by1, *ray(bx0, by1, 4.0), 2.2, skirt)
    p.line(bx1, by1, *ray(bx1, by1, 4.0), 2.2, skirt)
    p.line(bx0, by1, bx1, by1, 1.6, skirt)
    # ceiling light panels along the centre
    panels = []
    for t in (1.5, 2.6):
        a, b = ray(vx - bw * 0.3, by0, t), ray(vx + bw * 0.3, by0, t)
        a2, b2 = ray(vx - bw * 0.3, by0, t + 0.35), ray(vx + bw * 0.3, by0, t + 0.35)
        pts = [a, b, b2, a2]
        if min(q[1] for q in pts) > -40:
            p.polygon(pts, (238, 238, 232))
            panels.append(pts)
            cxp = sum(q[0] for q in pts) / 4
            cyp = sum(q[1] for q in pts) / 4
            info.glows.append((cxp, max(cyp, 0.0) + 20, 55.0))
    for pts in panels:
        info.emissive.append(lambda q, pts=pts: q.polygon(pts, (250, 248, 235)))
    # clutter: a bin against a wall
    side = -1 if rng.random() < 0.5 else 1
    t = rng.uniform(1.6, 2.6)
    fx, fy = ray(bx0 if side < 0 else bx1, by1, t)
    fx = min(max(fx, 8.0), _DW - 8.0)
    hb = 10 * t
    p.rect(fx - 0.35 * hb, fy - hb, fx + 0.35 * hb, fy, _jit(rng, (105, 110, 112), 12))
    return info


_BG_DRAW = {"street": _bg_street, "parking lot": _bg_parking, "hallway": _bg_hallway}


def _render_background(
    background: str, time_of_day: str, key: tuple[int, ...], h: int, w: int
) -> tuple[np.ndarray, float, float]:
    """Return (lit background, planar float32 (3, H, W), ground design y, noise sigma)."""
    rng = np.random.default_rng((_TAG_BG, *key))
    sx, sy = w / _DW, h / _DH
    img = np.empty((3, h, w), np.float32)
    p = _Painter(img, sx, sy)
    info = _BG_DRAW[background](p, rng)
    # Lighting parameters: all drawn regardless of the time of day.
    day_gain = rng.uniform(0.92, 1.08)
    warm = rng.uniform(0.0, 0.05)
    night_gain = rng.uniform(0.26, 0.34)
    night_blue = rng.uniform(1.15, 1.3)
    glow_amp = rng.uniform(0.8, 1.2)
    vig = rng.uniform(0.12, 0.3)
    sigma = rng.uniform(2.0, 3.0)
    vx = ((np.arange(w, dtype=np.float32) + 0.5) / w - 0.5) * 2
    vy = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5) * 2
    vignette = np.float32(1.0) - np.float32(vig * 0.5) * (vy[:, None] ** 2 + vx[None, :] ** 2)
    if time_of_day == "day":
        tint = np.asarray((day_gain * (1 + warm), day_gain, day_gain * (1 - warm)), np.float32)
        img *= vignette
        img *= tint.reshape(3, 1, 1)
    else:
        tint = np.asarray((0.72 * night_gain, 0.82 * night_gain, night_blue * night_gain), np.float32)
        img *= vignette
        img *= tint.reshape(3, 1, 1)
        xs = (np.arange(w, dtype=np.float32) + 0.5) / sx
        ys = (np.arange(h, dtype=np.float32) + 0.5) / sy
        glow = np.zeros((h, w), np.float32)
        for gx, gy, r in info.glows:
            glow += np.exp(-(((ys - gy) / r) ** 2))[:, None] * np.exp(-(((xs - gx) / (r * 1.2)) ** 2))[None, :]
        glow *= vignette
        img += glow * (np.float32(glow_amp) * np.asarray((60, 55, 45), np.float32)).reshape(3, 1, 1)
        for draw in info.emissive:
            draw(p)
    return img, info.ground, sigma


# ---------------------------------------------------------------------------
# Objects (sprites: RGB + alpha over a bounding box, composited onto the frame)
# ---------------------------------------------------------------------------

_SKIN = ((236, 188, 150), (214, 160, 118), (176, 122, 86), (128, 84, 56), (92, 60, 40))
_HAIR = ((30, 24, 20), (70, 45, 25), (120, 90, 50), (160, 150, 140))

# per kind: (size unit in design px at scale 1, half width / unit, height / unit)
_KIND_GEOM = {
    "person": (96.0, 0.21, 0.99),
    "car": (84.0, 0.53, 0.43),
    "truck": (94.0, 0.53, 0.67),
    "bicycle": (64.0, 0.52, 0.64),
    "dog": (48.0, 0.58, 0.87),
}


@dataclass
class _Sprite:
    """An object drawn at its in-place position: planar rgb (3, h, w), alpha (h, w)."""

    y0: int
    x0: int
    rgb: np.ndarray
    alpha: np.ndarray


def _draw_person(p, cx, gy, u, f, col, light, rng) -> None:
    skin = light(_SKIN[int(rng.integers(len(_SKIN)))])
    hair = light(_HAIR[int(rng.integers(len(_HAIR)))])
    trousers = col * 0.8
    shoe = light((35, 33, 32))
    stride = rng.uniform(0.02, 0.11)
    arm_swing = rng.uniform(0.0, 0.05)
    hip = gy - 0.48 * u
    for side in (-1, 1):
        fx = cx + side * stride * u
        p.line(cx + side * 0.045 * u, hip, fx, gy - 0.035 * u, 0.09 * u, trousers)
        p.ellipse(fx + f * 0.02 * u, gy - 0.02 * u, 0.05 * u, 0.024 * u, shoe)
    p.line(cx, hip, cx, hip + 0.06 * u, 0.17 * u, trousers)
    for side in (-1, 1):
        sx_ = cx + side * 0.125 * u
        hx = cx + side * 0.16 * u + f * side * arm_swing * u
        p.line(sx_, gy - 0.765 * u, hx, gy - 0.53 * u, 0.07 * u, col * 0.9)
        p.ellipse(hx, gy - 0.51 * u, 0.032 * u, 0.032 * u, skin)
    torso = [
        (cx - 0.125 * u, gy - 0.8 * u),
        (cx + 0.125 * u, gy - 0.8 * u),
        (cx + 0.105 * u, gy - 0.46 * u),
        (cx - 0.105 * u, gy - 0.46 * u),
    ]
    p.polygon(torso, col, grad=(1.1, 0.86, gy - 0.8 * u, gy - 0.46 * u))
    for side in (-1, 1):
        p.ellipse(cx + side * 0.11 * u, gy - 0.775 * u, 0.04 * u, 0.03 * u, col * 1.05)
    p.rect(cx - 0.028 * u, gy - 0.845 * u, cx + 0.028 * u, gy - 0.795 * u, skin)
    p.ellipse(cx, gy - 0.895 * u, 0.068 * u, 0.082 * u, skin)
    p.ellipse(cx - f * 0.012 * u, gy - 0.935 * u, 0.072 * u, 0.052 * u, hair)


def _draw_car(p, cx, gy, u, f, col, light, rng, night) -> None:
    t = lambda pts: _tf(cx, gy, u, f, pts)  # noqa: E731
    body = [(-0.5, 0.08), (0.5, 0.08), (0.5, 0.2), (0.46, 0.26), (0.2, 0.285), (-0.46, 0.295), (-0.5, 0.25)]
    roof = rng.uniform(0.4, 0.44)
    cabin = [(-0.39, 0.28), (0.2, 0.28), (0.06, roof), (-0.29, roof)]
    p.polygon(t(body), col, grad=(1.12, 0.8, gy - 0.3 * u, gy - 0.08 * u))
    p.polygon(t(cabin), col * 1.04)
    glass = light((72, 92, 112))
    w = roof - 0.025
    p.polygon(t([(-0.34, 0.3), (-0.11, 0.3), (-0.11, w), (-0.27, w)]), glass)
    p.polygon(t([(-0.07, 0.3), (0.15, 0.3), (0.05, w), (-0.07, w)]), glass)
    p.rect(cx - 0.51 * u, gy - 0.125 * u, cx + 0.51 * u, gy - 0.08 * u, light((48, 48, 50)))
    (ax, ay), (bx, by) = t([(-0.1, 0.13), (-0.1, 0.27)])
    p.line(ax, ay, bx, by, 0.012 * u, col * 0.6)
    for lx in (-0.3, 0.3):
        wx = cx + f * lx * u
        p.ellipse(wx, gy - 0.095 * u, 0.1 * u, 0.1 * u, light((24, 24, 26)))
        p.ellipse(wx, gy - 0.095 * u, 0.045 * u, 0.045 * u, light((135, 135, 140)))
    hx, hy = t([(0.475, 0.205)])[0]
    p.ellipse(hx, hy, 0.03 * u, 0.024 * u, (255, 250, 215) if night else light((225, 222, 200)))


def _draw_truck(p, cx, gy, u, f, col, light, rng, night) -> None:
    t = lambda pts: _tf(cx, gy, u, f, pts)  # noqa: E731
    p.polygon(t([(-0.5, 0.085), (0.5, 0.085), (0.5, 0.15), (-0.5, 0.15)]), light((46, 46, 50)))
    box_top = rng.uniform(0.62, 0.67)
    box = [(-0.5, 0.14), (0.17, 0.14), (0.17, box_top), (-0.5, box_top)]
    p.polygon(t(box), col, grad=(1.1, 0.86, gy - box_top * u, gy - 0.14 * u))
    for lx in (-0.33, -0.16, 0.0):
        a, b = t([(lx, 0.17), (lx, box_top - 0.03)])
        p.line(a[0], a[1], b[0], b[1], 0.012 * u, col * 0.78)
    cab = [(0.2, 0.12), (0.5, 0.12), (0.5, 0.3), (0.45, 0.46), (0.2, 0.46)]
    p.polygon(t(cab), col * 1.03, grad=(1.1, 0.86, gy - 0.46 * u, gy - 0.12 * u))
    p.polygon(t([(0.3, 0.31), (0.46, 0.31), (0.42, 0.42), (0.3, 0.42)]), light((72, 92, 112)))
    for lx in (-0.38, -0.2, 0.36):
        wx = cx + f * lx * u
        p.ellipse(wx, gy - 0.085 * u, 0.085 * u, 0.085 * u, light((24, 24, 26)))
        p.ellipse(wx, gy - 0.085 * u, 0.038 * u, 0.038 * u, light((135, 135, 140)))
    hx, hy = t([(0.485, 0.19)])[0]
    p.ellipse(hx, hy, 0.022 * u, 0.02 * u, (255, 250, 215) if night else light((225, 222, 200)))


def _draw_bicycle(p, cx, gy, u, f, col, light, rng) -> None:
    t = lambda pts: _tf(cx, gy, u, f, pts)  # noqa: E731
    r = 0.19
    tyre = light((30, 30, 32))
    dark = light((34, 34, 36))
    R, F, BB, S, HT, HB = t([(-0.3, r), (0.3, r), (-0.03, r - 0.03), (-0.12, 0.56), (0.2, 0.54), (0.23, 0.42)])
    for c in (R, F):
        p.ring(c[0], c[1], (r - 0.015) * u, 0.05 * u, tyre)
        p.ellipse(c[0], c[1], 0.025 * u, 0.025 * u, light((150, 150, 150)))
    fw = max(0.075 * u, 4.6)
    for a, b in ((R, BB), (R, S), (BB, S), (S, HT), (BB, HB), (HT, HB), (HB, F)):
        p.line(a[0], a[1], b[0], b[1], fw, col)
    s_top = t([(-0.13, 0.6)])[0]
    p.ellipse(s_top[0], s_top[1], 0.075 * u, 0.026 * u, dark)
    hb_top = t([(0.17, 0.62)])[0]
    p.line(HT[0], HT[1], hb_top[0], hb_top[1], 0.04 * u, dark)
    grip = t([(0.25, 0.63)])[0]
    p.line(hb_top[0], hb_top[1], grip[0], grip[1], 0.04 * u, dark)
    ang = rng.uniform(0, 2 * math.pi)
    dx, dy = 0.08 * u * math.cos(ang), 0.08 * u * math.sin(ang)
    p.line(BB[0] - dx, BB[1] - dy, BB[0] + dx, BB[1] + dy, 0.03 * u, dark)


def _draw_dog(p, cx, gy, u, f, col, light, rng) -> None:
    t = lambda pts: _tf(cx, gy, u, f, pts)  # noqa: E731
    legcol = col * 0.88
    tail_up = rng.uniform(0.66, 0.8)
    a, b = t([(-0.35, 0.55), (-0.52, tail_up)])
    p.line(a[0], a[1], b[0], b[1], 0.065 * u, col)
    for lx, dx in ((-0.28, -0.03), (-0.18, 0.02), (0.14, -0.02), (0.24, 0.03)):
        a, b = t([(lx, 0.45), (lx + dx, 0.04)])
        p.line(a[0], a[1], b[0], b[1], 0.08 * u, legcol)
        p.ellipse(b[0] + f * 0.02 * u, b[1], 0.04 * u, 0.025 * u, col * 0.7)
    bx, by = t([(-0.04, 0.5)])[0]
    p.ellipse(bx, by, 0.34 * u, 0.15 * u, col, grad=(1.1, 0.85, by - 0.15 * u, by + 0.15 * u))
    c = t([(0.22, 0.53)])[0]
    p.ellipse(c[0], c[1], 0.13 * u, 0.14 * u, col)
    a, b = t([(0.22, 0.56), (0.33, 0.7)])
    p.line(a[0], a[1], b[0], b[1], 0.13 * u, col)
    hx, hy = t([(0.36, 0.74)])[0]
    p.ellipse(hx, hy, 0.12 * u, 0.1 * u, col * 1.04)
    sx_, sy_ = t([(0.47, 0.7)])[0]
    p.ellipse(sx_, sy_, 0.085 * u, 0.05 * u, col * 1.04)
    nx_, ny_ = t([(0.545, 0.715)])[0]
    p.ellipse(nx_, ny_, 0.025 * u, 0.022 * u, light((20, 20, 20)))
    ex, ey = t([(0.38, 0.77)])[0]
    p.ellipse(ex, ey, 0.018 * u, 0.018 * u, light((20, 20, 20)))
    p.polygon(t([(0.27, 0.81), (0.34, 0.84), (0.3, 0.63)]), col * 0.72)


def _make_sprite(
    obj: SceneObject, rng: np.random.Generator, ground: float, time_of_day: str, sx: float, sy: float
) -> _Sprite:
    """Draw one object (at its in-place position) into its own RGBA buffer."""
    unit0, hwf, hf = _KIND_GEOM[obj.kind]
    # scale jitter, capped so that no object is wider than its third of the frame
    scale = min(rng.uniform(0.86, 1.15), (_DW / 6 - 2.0) / (hwf * unit0))
    u = unit0 * scale
    f = 1 if rng.random() < 0.5 else -1
    gy = min(ground + rng.uniform(-5, 5), 232.0)
    hw = hwf * u
    slot = POSITIONS.index(obj.position)
    centre = (slot + 0.5) * _DW / 3
    # horizontal jitter keeps the object inside its third, with a gap to the
    # neighbouring thirds so that the position word is never ambiguous
    dev = 0.6 * max(0.0, _DW / 6 - hw) + 1.0
    cx = centre + rng.uniform(-dev, dev)
    cx = min(max(cx, hw + 3), _DW - hw - 3)
    base = np.clip(np.asarray(COLOUR_RGB[obj.colour], np.float32) + rng.uniform(-10, 10, 3), 0, 255)
    night = time_of_day == "night"
    day_gain = rng.uniform(0.92, 1.06)
    if night:
        tint = np.asarray((0.74, 0.77, 0.86), np.float32)

        def light(c: Sequence[float]) -> np.ndarray:
            return np.asarray(c, np.float32) * tint + 9.0

        # a lit rim keeps black objects visible against the dark background,
        # while staying well below the brightness of white/yellow objects
        outline = np.asarray((120, 125, 146), np.float32)
    else:

        def light(c: Sequence[float]) -> np.ndarray:
            return np.asarray(c, np.float32) * day_gain

        outline = np.asarray((34, 34, 38), np.float32)
    col = light(base)

    margin = 5.0
    x0d, x1d = cx - hw - margin, cx + hw + margin
    y0d, y1d = gy - hf * u - margin, gy + margin
    px0, px1 = math.floor(x0d * sx), math.ceil(x1d * sx) + 1
    py0, py1 = math.floor(y0d * sy), math.ceil(y1d * sy) + 1
    buf = np.zeros((3, py1 - py0, px1 - px0), np.float32)
    p = _Painter(buf, sx, sy, ox=px0, oy=py0, keep_alpha=True)
    p.ellipse(cx, gy + 0.5, hw * 0.95, max(2.5, 0.05 * u), (0, 0, 0), alpha=0.32)  # shadow
    if obj.kind == "person":
        _draw_person(p, cx, gy, u, f, col, light, rng)
    elif obj.kind == "car":
        _draw_car(p, cx, gy, u, f, col, light, rng, night)
    elif obj.kind == "truck":
        _draw_truck(p, cx, gy, u, f, col, light, rng, night)
    elif obj.kind == "bicycle":
        _draw_bicycle(p, cx, gy, u, f, col, light, rng)
    else:
        _draw_dog(p, cx, gy, u, f, col, light, rng)
    # outline: dilate the opaque mask and paint the rim
    alpha = p.alpha
    opaque = alpha >= 0.999
    grown = opaque.copy()
    rim_px = 1.6 * min(sx, sy) * (0.6 if obj.kind == "bicycle" else 1.0)
    for _ in range(max(1, round(rim_px))):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    rim = grown & ~opaque
    buf[:, rim] = outline[:, None]
    alpha[rim] = 0.85
    np.clip(buf, 0, 255, out=buf)
    return _Sprite(py0, px0, buf, alpha)


def _composite(img: np.ndarray, sp: _Sprite, dx: int = 0) -> None:
    h, w = sp.alpha.shape
    y0, x0 = sp.y0, sp.x0 + dx
    fy0, fy1 = max(y0, 0), min(y0 + h, img.shape[1])
    fx0, fx1 = max(x0, 0), min(x0 + w, img.shape[2])
    if fy0 >= fy1 or fx0 >= fx1:
        return
    a = sp.alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    src = sp.rgb[:, fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    dst = img[:, fy0:fy1, fx0:fx1]
    dst += (src - dst) * a


def _obj_rng(key: tuple[int, ...], slot: int, extra: tuple[int, ...] = ()) -> np.random.Generator:
    return np.random.default_rng((_TAG_OBJ, *key, slot + 1, *extra))


def _finish(img: np.ndarray, noise_rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add sensor noise and quantise to uint8.

    The noise is triangular (sum of two uniform bytes), a cheap stand-in for
    Gaussian noise with standard deviation ``sigma`` grey levels.
    """
    n = img.size
    b = np.frombuffer(noise_rng.bytes(2 * n), np.uint8)
    tri = b[:n].astype(np.int16)
    tri += b[n:]
    tri -= 255
    img += np.multiply(tri.reshape(img.shape), np.float32(sigma / 104.5), dtype=np.float32)
    np.clip(img, 0.0, 255.0, out=img)
    img += 0.5
    planar = img.astype(np.uint8)
    out = np.empty((img.shape[1], img.shape[2], 3), np.uint8)
    for c in range(3):  # per-channel copies are ~3x faster than one transposed copy
        out[..., c] = planar[c]
    return out


def render_spec(spec: SceneSpec, *, seed: int, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """Draw a scene spec.

    The background, each object slot and the sensor noise use independent
    random streams derived from ``seed``, so rendering the same seed with and
    without an object changes only that object's pixels.

    Args:
        spec: what to draw.
        seed: non-negative int controlling nuisance variation only (jitter,
            scale, clutter, lighting, noise).
        size: (height, width) in pixels.

    Returns:
        HxWx3 uint8 RGB image.
    """
    seed = _check_seed(seed)
    h, w = _check_size(size)
    key = (seed,)
    img, ground, sigma = _render_background(spec.background, spec.time_of_day, key, h, w)
    sx, sy = w / _DW, h / _DH
    for obj in spec.objects:
        slot = POSITIONS.index(obj.position)
        _composite(img, _make_sprite(obj, _obj_rng(key, slot), ground, spec.time_of_day, sx, sy))
    return _finish(img, np.random.default_rng((_TAG_NOISE, *key)), sigma)


def render_scene(
    seed: int, *, size: tuple[int, int] = (240, 320), **overrides: Any
) -> tuple[np.ndarray, SceneSpec]:
    """Sample a spec and draw it: ``render_spec(random_spec(seed, **overrides), seed=seed)``.

    Args:
        seed: non-negative int; seeds >= HELD_OUT_SEED_START are for held-out
            evaluation only.
        size: (height, width) in pixels.
        **overrides: see :func:`random_spec`.

    Returns:
        (HxWx3 uint8 RGB image, spec).
    """
    spec = random_spec(seed, **overrides)
    return render_spec(spec, seed=seed, size=size), spec


# ---------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSegment:
    """A stretch of a clip with constant ground truth.

    Attributes:
        start_s: start time in seconds (inclusive).
        end_s: end time in seconds (exclusive).
        spec: the scene during the segment.  When an object enters or leaves,
            the segment before the change covers the ~1 s transition; the new
            segment starts when the object is fully in place / fully gone.
    """

    start_s: float
    end_s: float
    spec: SceneSpec


@dataclass
class _Actor:
    obj: SceneObject
    sprite: _Sprite
    edge: int  # -1: enters/leaves through the left edge, +1: right edge
    in_start: int | None = None
    in_end: int | None = None
    out_start: int | None = None
    out_end: int | None = None

    def present_at(self, f: int) -> bool:
        """Whether the object counts as present (fully entered, not yet gone) at frame f."""
        if self.in_end is not None and f < self.in_end:
            return False
        return not (self.out_end is not None and f >= self.out_end)

    def offset(self, f: int, w: int) -> int | None:
        """Horizontal pixel offset at frame f, or None when not visible."""
        sp = self.sprite
        dist = -(sp.x0 + sp.alpha.shape[1]) if self.edge < 0 else w - sp.x0
        if self.in_start is not None and f < self.in_end:
            if f < self.in_start:
                return None
            prog = (f - self.in_start) / (self.in_end - self.in_start)
            return round((1.0 - _ease(prog)) * dist)
        if self.out_start is not None and f >= self.out_start:
            if f >= self.out_end:
                return None
            prog = (f - self.out_start) / (self.out_end - self.out_start)
            return round(_ease(prog) * dist)
        return 0


def _ease(p: float) -> float:
    p = min(max(p, 0.0), 1.0)
    return p * p * (3 - 2 * p)


@dataclass
class _ScenePlan:
    start: int
    end: int
    background: str
    time_of_day: str
    image: np.ndarray  # lit background, float32
    sigma: float
    actors: list[_Actor]
    boundaries: list[int]


def _edge_for(position: str, rng: np.random.Generator) -> int:
    if position == "left":
        return -1
    if position == "right":
        return 1
    return -1 if rng.random() < 0.5 else 1


def _plan_clip(
    seed: int, n_frames: int, fps: int, min_scene_s: float, max_scene_s: float, h: int, w: int
) -> list[_ScenePlan]:
    rng = np.random.default_rng((_TAG_CLIP, seed))
    sx, sy = w / _DW, h / _DH
    combos = [(b, t) for b in BACKGROUNDS for t in TIMES_OF_DAY]
    min_f = max(1, round(min_scene_s * fps))
    trans = max(1, round(fps * 1.0))
    margin = max(1, round(fps * 1.5))
    recent: list[tuple[str, str]] = []
    scenes: list[_ScenePlan] = []
    start = 0
    idx = 0
    while start < n_frames:
        length = max(1, round(rng.uniform(min_scene_s, max_scene_s) * fps))
        if n_frames - (start + length) < min_f:
            length = n_frames - start
        end = start + length
        choices = [c for c in combos if c not in recent[-2:]]
        bg, tod = choices[int(rng.integers(len(choices)))]
        recent.append((bg, tod))
        key = (seed, _CLIP_MARK, idx + 1)
        spec = _sample_spec(rng, {"background": bg, "time_of_day": tod})
        bg_img, ground, sigma = _render_background(bg, tod, key, h, w)
        actors = [
            _Actor(
                o,
                _make_sprite(o, _obj_rng(key, POSITIONS.index(o.position)), ground, tod, sx, sy),
                _edge_for(o.position, rng),
            )
            for o in spec.objects
        ]
        boundaries = [start]
        lo, hi = start + margin, end - margin - trans
        if hi >= lo:
            window = hi - lo
            n_ev = 1 + int(window >= 2 * trans + margin and rng.random() < 0.6)
            part = window / n_ev
            for k in range(n_ev):
                a = lo + round(k * part)
                b = lo + round((k + 1) * part) - (trans if k < n_ev - 1 else 0)
                t0 = int(rng.integers(a, max(a, b) + 1))
                present = [ac for ac in actors if ac.present_at(t0) and ac.out_start is None]
                used = {ac.obj.position for ac in present}
                free = [pos for pos in POSITIONS if pos not in used]
                enter = not present or (bool(free) and rng.random() < 0.5)
                if enter:
                    pos = free[int(rng.integers(len(free)))]
                    kind = KINDS[int(rng.integers(len(KINDS)))]
                    obj = SceneObject(kind, COLOURS[int(rng.integers(len(COLOURS)))], pos)
                    sprite = _make_sprite(obj, _obj_rng(key, POSITIONS.index(pos), (k + 1,)), ground, tod, sx, sy)
                    actors.append(_Actor(obj, sprite, _edge_for(pos, rng), in_start=t0, in_end=t0 + trans))
                else:
                    ac = present[int(rng.integers(len(present)))]
                    ac.out_start, ac.out_end = t0, t0 + trans
                boundaries.append(t0 + trans)
        scenes.append(_ScenePlan(start, end, bg, tod, bg_img, sigma, actors, boundaries))
        start = end
        idx += 1
    return scenes


def pick_video_codec(preferred: str | None = None) -> str:
    """Choose the encoder for :func:`render_clip`.

    Args:
        preferred: codec name to use; None picks the default.

    Returns:
        ``preferred`` if given, else ``"libx264"`` if this PyAV build can encode
        with it, else ``"mpeg4"``.

    Raises:
        ValueError: if ``preferred`` is not an encoder of this PyAV build.
    """
    import av

    def usable(name: str) -> bool:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - unknown or decoder-only codec
            return False
        return True

    if preferred:
        if not usable(preferred):
            raise ValueError(f"this PyAV build cannot encode with {preferred!r}")
        return preferred
    for name in ("libx264", "mpeg4"):
        if usable(name):
            return name
    raise RuntimeError("no usable video encoder (tried libx264, mpeg4)")


def render_clip(
    path: str | PathLike[str],
    *,
    seed: int = 0,
    duration_s: float = 60.0,
    fps: int = 10,
    size: tuple[int, int] = (240, 320),
    min_scene_s: float = 6,
    max_scene_s: float = 12,
    codec: str | None = None,
) -> list[ClipSegment]:
    """Write a synthetic surveillance clip and return its ground-truth timeline.

    The clip is a sequence of scenes of ``min_scene_s``..``max_scene_s``
    seconds (camera cuts: each new scene has a background/time-of-day combo
    different from the previous two).  Inside a scene, objects slide in from or
    out to the frame edge over ~1 s; the segment boundary for such a change is
    the moment the object is fully in place / fully gone.  Sensor noise differs
    per frame.  Frame i is encoded with pts i in a 1/fps time base (a muxer
    such as MP4 may rescale the stream time base, e.g. to 1/10240, but
    ``pts * time_base`` is still i / fps).

    Args:
        path: output file (container chosen from the extension, e.g. ``.mp4``).
        seed: non-negative int; the whole clip is deterministic given it.
        duration_s: clip length in seconds.
        fps: frames per second.
        size: (height, width), both even.
        min_scene_s: minimum scene length in seconds.
        max_scene_s: maximum scene length in seconds.
        codec: encoder name; default libx264 (yuv420p) if available, else mpeg4.

    Returns:
        Contiguous segments covering [0, duration_s].
    """
    import av

    seed = _check_seed(seed)
    h, w = _check_size(size)
    if h % 2 or w % 2:
        raise ValueError(f"clip size must be even for yuv420p, got {size!r}")
    fps = int(fps)
    if fps <= 0 or duration_s <= 0:
        raise ValueError("fps and duration_s must be positive")
    if not 0 < min_scene_s <= max_scene_s:
        raise ValueError("need 0 < min_scene_s <= max_scene_s")
    codec_name = pick_video_codec(codec)
    n_frames = max(1, round(duration_s * fps))
    scenes = _plan_clip(seed, n_frames, fps, float(min_scene_s), float(max_scene_s), h, w)

    segments: list[ClipSegment] = []
    for sc in scenes:
        bounds = sc.boundaries + [sc.end]
        for b0, b1 in zip(bounds[:-1], bounds[1:]):
            objs = tuple(a.obj for a in sc.actors if a.present_at(b0))
            segments.append(ClipSegment(b0 / fps, b1 / fps, SceneSpec(objs, sc.background, sc.time_of_day)))
    segments[-1] = ClipSegment(segments[-1].start_s, float(duration_s), segments[-1].spec)

    tb = Fraction(1, fps)
    noise_rng = np.random.default_rng((_TAG_NOISE, _CLIP_MARK, seed))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec_name, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        if codec_name == "libx264":
            stream.options = {"preset": "veryfast", "crf": "20"}
        else:
            stream.bit_rate = 2_000_000
        for sc in scenes:
            for fi in range(sc.start, sc.end):
                img = sc.image.copy()
                for ac in sc.actors:
                    dx = ac.offset(fi, w)
                    if dx is not None:
                        _composite(img, ac.sprite, dx)
                frame = av.VideoFrame.from_ndarray(_finish(img, noise_rng, sc.sigma), format="rgb24")
                frame.pts = fi
                frame.time_base = tb
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return segments


# ---------------------------------------------------------------------------
# Parsing and grading captions
# ---------------------------------------------------------------------------


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
        ValueError: if ``pairs`` is empty.
    """
    totals = dict.fromkeys(ATTRIBUTES, 0)
    n = 0
    for spec, caption in pairs:
        for k, v in attribute_scores(spec, caption).items():
            totals[k] += int(v)
        n += 1
    if n == 0:
        raise ValueError("attribute_accuracy needs at least one (spec, caption) pair")
    return {k: totals[k] / n for k in ATTRIBUTES}
