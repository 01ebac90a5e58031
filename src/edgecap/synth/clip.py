"""Synthetic surveillance clips: a plan of camera cuts and objects entering/leaving, encoded with PyAV."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from os import PathLike

import numpy as np

from ..errors import DependencyError, InputError
from .backgrounds import render_background
from .painter import DESIGN_H, DESIGN_W
from .scene import finish
from .spec import (BACKGROUNDS, CLIP_MARK, COLOURS, KINDS, POSITIONS, TAG_CLIP, TAG_NOISE, TIMES_OF_DAY, SceneObject,
                   SceneSpec, check_seed, check_size, sample_spec)
from .sprites import Sprite, composite, make_sprite, object_rng


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
    sprite: Sprite
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
    rng = np.random.default_rng((TAG_CLIP, seed))
    sx, sy = w / DESIGN_W, h / DESIGN_H
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
        key = (seed, CLIP_MARK, idx + 1)
        spec = sample_spec(rng, {"background": bg, "time_of_day": tod})
        bg_img, ground, sigma = render_background(bg, tod, key, h, w)
        actors = [
            _Actor(
                o,
                make_sprite(o, object_rng(key, POSITIONS.index(o.position)), ground, tod, sx, sy),
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
                    sprite = make_sprite(obj, object_rng(key, POSITIONS.index(pos), (k + 1,)), ground, tod, sx, sy)
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
        InputError: if ``preferred`` is not an encoder of this PyAV build.
        DependencyError: if neither default encoder is available.
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
            raise InputError(f"this PyAV build cannot encode with {preferred!r}")
        return preferred
    for name in ("libx264", "mpeg4"):
        if usable(name):
            return name
    raise DependencyError("this PyAV build has no usable video encoder (tried libx264, mpeg4); install the PyAV "
                          "wheel from PyPI, which bundles FFmpeg with both")


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

    seed = check_seed(seed)
    h, w = check_size(size)
    if h % 2 or w % 2:
        raise InputError(f"clip size must be even for yuv420p, got {size!r}")
    fps = int(fps)
    if fps <= 0 or duration_s <= 0:
        raise InputError(f"fps and duration_s must be positive, got fps={fps}, duration_s={duration_s}")
    if not 0 < min_scene_s <= max_scene_s:
        raise InputError(f"need 0 < min_scene_s <= max_scene_s, got {min_scene_s} and {max_scene_s}")
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
    noise_rng = np.random.default_rng((TAG_NOISE, CLIP_MARK, seed))
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
                        composite(img, ac.sprite, dx)
                frame = av.VideoFrame.from_ndarray(finish(img, noise_rng, sc.sigma), format="rgb24")
                frame.pts = fi
                frame.time_base = tb
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return segments
