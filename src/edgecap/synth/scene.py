"""One still scene: background, objects and sensor noise composed into an HxWx3 uint8 image."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backgrounds import render_background
from .painter import DESIGN_H, DESIGN_W
from .spec import POSITIONS, TAG_NOISE, SceneSpec, check_seed, check_size, random_spec
from .sprites import composite, make_sprite, object_rng


def finish(img: np.ndarray, noise_rng: np.random.Generator, sigma: float) -> np.ndarray:
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
    seed = check_seed(seed)
    h, w = check_size(size)
    key = (seed,)
    img, ground, sigma = render_background(spec.background, spec.time_of_day, key, h, w)
    sx, sy = w / DESIGN_W, h / DESIGN_H
    for obj in spec.objects:
        slot = POSITIONS.index(obj.position)
        composite(img, make_sprite(obj, object_rng(key, slot), ground, spec.time_of_day, sx, sy))
    return finish(img, np.random.default_rng((TAG_NOISE, *key)), sigma)


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
