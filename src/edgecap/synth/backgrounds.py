"""The three backgrounds (street, parking lot, hallway) and the day/night lighting applied to them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .painter import DESIGN_H, DESIGN_W, Painter, jitter, smooth_noise
from .spec import TAG_BG


@dataclass
class _BgInfo:
    ground: float  # base ground line (design y) for objects
    glows: list[tuple[float, float, float]]  # (x, y, radius) in design units, lit at night
    emissive: list[Callable[[Painter], None]]  # drawn after lighting, at night only


def _lamp_post(p: Painter, rng: np.random.Generator, base_y: float, info: _BgInfo) -> None:
    x = rng.uniform(15, 305)
    top = rng.uniform(6, 16)
    arm = 14.0 if x < 160 else -14.0
    pole = jitter(rng, (78, 80, 84), 8)
    p.rect(x - 1.6, top, x + 1.6, base_y, pole)
    p.line(x, top, x + arm, top + 2, 2.5, pole)
    hx, hy = x + arm, top + 4.5
    p.ellipse(hx, hy, 5, 2.6, (110, 110, 105))
    info.glows.append((hx, hy + 20, 70.0))
    info.emissive.append(lambda q, hx=hx, hy=hy: q.ellipse(hx, hy, 5, 2.6, (255, 244, 210)))


def _bg_street(p: Painter, rng: np.random.Generator) -> _BgInfo:
    info = _BgInfo(ground=rng.uniform(198, 222), glows=[], emissive=[])
    yb = rng.uniform(60, 74)  # bottom of building band
    ys = yb + rng.uniform(20, 28)  # kerb
    p.rect(0, 0, DESIGN_W, yb, jitter(rng, (150, 182, 212), 12))  # sky
    x = rng.uniform(-40, 0)
    palette = ((150, 90, 70), (160, 155, 145), (175, 160, 130), (120, 120, 125), (185, 175, 160))
    b = 0
    while x < DESIGN_W:
        bw = rng.uniform(45, 95)
        top = rng.uniform(0, 28)
        col = jitter(rng, palette[int(rng.integers(len(palette)))], 12)
        p.rect(x, top, x + bw, yb, col)
        # windows: one vectorised mask per building
        wx, wy = rng.uniform(12, 16), rng.uniform(12, 15)
        reg = p.region(x + 5, top + 5, x + bw - 5, yb - 8)
        glass = jitter(rng, (62, 72, 88), 10)
        if reg is not None:
            xs, ys_ = reg[4], reg[5]
            inb = (xs >= x + 5) & (xs < x + bw - 5) & (ys_ >= top + 5) & (ys_ < yb - 8)
            win = ((xs - x - 5) % wx < wx * 0.5) & ((ys_ - top - 5) % wy < wy * 0.55) & inb
            p.put(reg, win, glass)
            seed_b = b

            def lit(q: Painter, x=x, top=top, bw=bw, wx=wx, wy=wy, seed_b=seed_b) -> None:
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
    walk = jitter(rng, (162, 160, 152), 10)
    p.rect(0, yb, DESIGN_W, ys, walk)
    reg = p.region(0, yb, DESIGN_W, ys)
    if reg is not None:
        pitch, off = rng.uniform(20, 28), rng.uniform(0, 20)
        p.put(reg, ((reg[4] - off) % pitch) < 1.4, walk * 0.8)
    p.rect(0, ys, DESIGN_W, ys + 4, jitter(rng, (196, 196, 190), 8))  # kerb
    road_top = ys + 4
    asphalt = jitter(rng, (94, 94, 98), 10)
    p.rect(0, road_top, DESIGN_W, DESIGN_H, asphalt)
    ry0 = math.floor(road_top * p.sy)
    tex = smooth_noise(rng, p.h - ry0, p.w, 6, 9) * rng.uniform(4, 8)
    p.rgb[:, ry0:] += tex
    # dashed lane line and a solid edge line
    yl = rng.uniform(150, 172)
    reg = p.region(0, yl - 2.5, DESIGN_W, yl + 2.5)
    if reg is not None:
        dash, gap, ph = rng.uniform(22, 30), rng.uniform(16, 24), rng.uniform(0, 40)
        m = ((reg[4] - ph) % (dash + gap) < dash) & (np.abs(reg[5] - yl) < 2.2)
        p.put(reg, m, jitter(rng, (222, 222, 212), 8))
    ye = rng.uniform(road_top + 8, road_top + 14)
    p.rect(0, ye, DESIGN_W, ye + 2, jitter(rng, (200, 200, 190), 10))
    # clutter: manhole cover, drain
    mx, my = rng.uniform(20, 300), rng.uniform(178, 236)
    p.ellipse(mx, my, 11, 4, asphalt * 0.7)
    p.ellipse(mx, my, 8, 2.8, asphalt * 0.85)
    _lamp_post(p, rng, ys + 2, info)
    return info


def _bg_parking(p: Painter, rng: np.random.Generator) -> _BgInfo:
    info = _BgInfo(ground=rng.uniform(196, 224), glows=[], emissive=[])
    yw = rng.uniform(36, 50)
    yf = yw * rng.uniform(0.35, 0.5)
    p.rect(0, 0, DESIGN_W, yf, jitter(rng, (140, 174, 206), 12))  # sky
    wall = jitter(rng, (150, 146, 136), 12)
    p.rect(0, yf, DESIGN_W, yw, wall)
    reg = p.region(0, yf, DESIGN_W, yw)
    if reg is not None:  # block joints
        bh, bwid = rng.uniform(5, 8), rng.uniform(14, 20)
        row = np.floor((reg[5] - yf) / bh)
        m = ((reg[5] - yf) % bh < 0.9) | (((reg[4] + row * bwid / 2) % bwid) < 0.9)
        p.put(reg, m, wall * 0.82)
    p.rect(0, yw, DESIGN_W, yw + 5, jitter(rng, (186, 186, 180), 8))  # kerb
    top = yw + 5
    asphalt = jitter(rng, (60, 61, 65), 8)
    p.rect(0, top, DESIGN_W, DESIGN_H, asphalt)
    ry0 = math.floor(top * p.sy)
    tex = smooth_noise(rng, p.h - ry0, p.w, 6, 9) * rng.uniform(3, 6)
    p.rgb[:, ry0:] += tex
    # oil stains
    for _ in range(3):
        ox, oy = rng.uniform(10, 310), rng.uniform(top + 10, 235)
        p.ellipse(ox, oy, rng.uniform(6, 14), rng.uniform(2, 5), asphalt * 0.72)
    paint = jitter(rng, (218, 218, 206), 8)
    bay = rng.uniform(46, 60)
    off = rng.uniform(0, bay)
    slant = rng.uniform(-8, 8)
    yu = top + rng.uniform(55, 70)
    yl = rng.uniform(174, 190)
    p.line(0, yu, DESIGN_W, yu, 2.6, paint)
    p.line(0, yl, DESIGN_W, yl, 2.6, paint)
    x = off - bay
    while x < DESIGN_W + bay:
        p.line(x + slant, top + 2, x, yu, 2.8, paint)
        p.line(x, yl, x - slant, DESIGN_H + 2, 2.8, paint)
        if rng.random() < 0.5:  # wheel stop
            p.rect(x + bay * 0.25, top + 8, x + bay * 0.75, top + 12, jitter(rng, (170, 168, 160), 10))
        x += bay
    _lamp_post(p, rng, top + 2, info)
    return info


def _bg_hallway(p: Painter, rng: np.random.Generator) -> _BgInfo:
    info = _BgInfo(ground=rng.uniform(204, 226), glows=[], emissive=[])
    vx = DESIGN_W / 2 + rng.uniform(-28, 28)
    vy = rng.uniform(84, 104)
    bw = rng.uniform(36, 50)
    by0 = vy - rng.uniform(34, 46)
    by1 = vy + rng.uniform(24, 34)
    bx0, bx1 = vx - bw, vx + bw
    far = 14.0

    def ray(px: float, py: float, t: float = far) -> tuple[float, float]:
        return (vx + t * (px - vx), vy + t * (py - vy))

    ceiling = jitter(rng, (226, 224, 214), 8)
    wall = jitter(rng, (206, 190, 154), 14, grey=False)
    floor = jitter(rng, (172, 170, 162), 14)
    p.rect(0, 0, DESIGN_W, DESIGN_H, ceiling)
    p.polygon([(bx0, by0), (bx0, by1), ray(bx0, by1), ray(bx0, by0)], wall * 0.9)
    p.polygon([(bx1, by0), (bx1, by1), ray(bx1, by1), ray(bx1, by0)], wall)
    # floor tiles: checkerboard in perspective, one vectorised pass
    fy0 = by1
    reg = p.region(0, fy0, DESIGN_W, DESIGN_H)
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
    door = jitter(rng, (122, 88, 58), 14, grey=False)
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
    fx = min(max(fx, 8.0), DESIGN_W - 8.0)
    hb = 10 * t
    p.rect(fx - 0.35 * hb, fy - hb, fx + 0.35 * hb, fy, jitter(rng, (105, 110, 112), 12))
    return info


_BG_DRAW = {"street": _bg_street, "parking lot": _bg_parking, "hallway": _bg_hallway}


def render_background(
    background: str, time_of_day: str, key: tuple[int, ...], h: int, w: int
) -> tuple[np.ndarray, float, float]:
    """Return (lit background, planar float32 (3, H, W), ground design y, noise sigma)."""
    rng = np.random.default_rng((TAG_BG, *key))
    sx, sy = w / DESIGN_W, h / DESIGN_H
    img = np.empty((3, h, w), np.float32)
    p = Painter(img, sx, sy)
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
