"""Objects as sprites: RGB + alpha over a bounding box, drawn once at the in-place position and composited."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .painter import DESIGN_W, Painter
from .spec import COLOUR_RGB, POSITIONS, TAG_OBJ, SceneObject


def _tf(cx: float, gy: float, u: float, f: int, pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Map object-local points (x along facing, height above ground, in units of u)."""
    return [(cx + f * lx * u, gy - ly * u) for lx, ly in pts]


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
class Sprite:
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


def make_sprite(
    obj: SceneObject, rng: np.random.Generator, ground: float, time_of_day: str, sx: float, sy: float
) -> Sprite:
    """Draw one object (at its in-place position) into its own RGBA buffer."""
    unit0, hwf, hf = _KIND_GEOM[obj.kind]
    # scale jitter, capped so that no object is wider than its third of the frame
    scale = min(rng.uniform(0.86, 1.15), (DESIGN_W / 6 - 2.0) / (hwf * unit0))
    u = unit0 * scale
    f = 1 if rng.random() < 0.5 else -1
    gy = min(ground + rng.uniform(-5, 5), 232.0)
    hw = hwf * u
    slot = POSITIONS.index(obj.position)
    centre = (slot + 0.5) * DESIGN_W / 3
    # horizontal jitter keeps the object inside its third, with a gap to the
    # neighbouring thirds so that the position word is never ambiguous
    dev = 0.6 * max(0.0, DESIGN_W / 6 - hw) + 1.0
    cx = centre + rng.uniform(-dev, dev)
    cx = min(max(cx, hw + 3), DESIGN_W - hw - 3)
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
    p = Painter(buf, sx, sy, ox=px0, oy=py0, keep_alpha=True)
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
    return Sprite(py0, px0, buf, alpha)


def composite(img: np.ndarray, sp: Sprite, dx: int = 0) -> None:
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


def object_rng(key: tuple[int, ...], slot: int, extra: tuple[int, ...] = ()) -> np.random.Generator:
    return np.random.default_rng((TAG_OBJ, *key, slot + 1, *extra))
