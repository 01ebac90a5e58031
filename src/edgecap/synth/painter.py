"""Drawing primitives (numpy masks over each primitive's bounding box) and the noise helpers of the renderer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# Design coordinate system: everything is laid out for a 320x240 frame and
# scaled to the requested size (x by W/320, y by H/240).
DESIGN_W = 320.0
DESIGN_H = 240.0


class Painter:
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


@lru_cache(maxsize=64)
def _interp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    return i0, (pos - i0).astype(np.float32)


def smooth_noise(rng: np.random.Generator, h: int, w: int, ny: int, nx: int) -> np.ndarray:
    """Low-frequency noise field (h, w), unit-ish std, bilinear from an ny x nx grid."""
    g = rng.standard_normal((ny, nx)).astype(np.float32)
    iy, fy = _interp_index(h, ny)
    ix, fx = _interp_index(w, nx)
    rows = g[iy] * (1.0 - fy)[:, None] + g[iy + 1] * fy[:, None]  # (h, nx)
    return rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx


def jitter(rng: np.random.Generator, base: Sequence[float], amount: float, grey: bool = True) -> np.ndarray:
    """Jitter a colour: a shared brightness shift plus small per-channel noise."""
    shift = rng.uniform(-amount, amount)
    ch = rng.uniform(-amount / 3, amount / 3, 3) if grey else rng.uniform(-amount, amount, 3)
    return np.clip(np.asarray(base, np.float32) + shift + ch, 0, 255).astype(np.float32)
