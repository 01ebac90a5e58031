"""Change gate: caption a sampled frame only when the scene changed (or a static scene is due a re-check).

Stage 1 is cheap: the frame is reduced to a 32x24 grey grid of block means, global brightness drift (auto
exposure, dusk) is removed, and the score is the share of grid cells whose brightness moved by more than a noise
margin, compared with the last frame that was captioned (not the previous frame, so slow drifts add up). An
object entering a corner moves a few cells; sensor noise, averaged over each block, moves none. Stage 2
(optional) compares the encoder's pooled embedding by cosine distance, for scenes where pixels change but the
content does not (rain, leaves). A static scene is re-checked every ``max_interval_s``.

A changed frame that is still moving (it also differs from the previous sampled frame) is deferred for up to
``settle_samples`` samples: an object sliding into view is captioned once it is in place, not half-way, which
would otherwise open a one-frame scene ("a dog on the right" for the front of a car entering). Continuous motion
is captioned anyway once the deferral runs out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

GRID_W, GRID_H = 32, 24


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the change gate.

    Attributes:
        cell_delta: a grid cell changed if its mean grey level moved by more than this (0..255 scale).
        changed_share: the frame changed if more than this share of grid cells changed.
        max_interval_s: caption anyway when the last caption is older than this (None: never).
        embedding_distance: optional stage 2: cosine distance of pooled embeddings above which the content
            changed (None disables the stage).
        settle_samples: defer a changed frame that is still moving for at most this many samples (0: never).
    """

    cell_delta: float = 10.0
    changed_share: float = 0.005
    max_interval_s: float | None = 30.0
    embedding_distance: float | None = None
    settle_samples: int = 2

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> InputError:
            return InputError(f"gate {name} must be {expected}, got {getattr(self, name)!r}")

        if not _number(self.cell_delta) or not 0 <= self.cell_delta <= 255:
            raise bad("cell_delta", "a number from 0 to 255")
        if not _number(self.changed_share) or not 0 <= self.changed_share <= 1:
            raise bad("changed_share", "a number from 0 to 1")
        if self.max_interval_s is not None and (not _number(self.max_interval_s) or self.max_interval_s < 0):
            raise bad("max_interval_s", "a number of seconds >= 0 (0: caption every sampled frame) or None")
        if self.embedding_distance is not None and (not _number(self.embedding_distance)
                                                    or self.embedding_distance <= 0):
            raise bad("embedding_distance", "a positive cosine distance (at most 2 can be reached) or None")
        if isinstance(self.settle_samples, bool) or not isinstance(self.settle_samples, int) or self.settle_samples < 0:
            raise bad("settle_samples", "an integer >= 0")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GateDecision:
    changed: bool
    score: float
    reason: str  # "first", "pixels", "settled_timeout", "max_interval", "moving" or "static"


def grey_grid(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> [GRID_H, GRID_W] float32 block means of luma (crops the remainder rows/columns)."""
    h, w = image.shape[:2]
    bh, bw = max(1, h // GRID_H), max(1, w // GRID_W)
    gh, gw = min(GRID_H, h), min(GRID_W, w)
    crop = image[: gh * bh, : gw * bw].astype(np.float32)
    luma = crop[..., 0] * 0.299 + crop[..., 1] * 0.587 + crop[..., 2] * 0.114
    return luma.reshape(gh, bh, gw, bw).mean(axis=(1, 3))


class ChangeGate:
    """Per-camera gate state. Not thread-safe: one gate per camera, used by one thread."""

    def __init__(self, cfg: GateConfig | None = None):
        self.cfg = cfg or GateConfig()
        self._ref: np.ndarray | None = None
        self._ref_time: float | None = None
        self._ref_embedding: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._deferred = 0

    def _score(self, grid: np.ndarray, other: np.ndarray) -> float:
        diff = grid - other
        diff -= np.median(diff)  # global brightness drift is not a scene change
        return float(np.mean(np.abs(diff) > self.cfg.cell_delta))

    def check(self, image: np.ndarray, mono: float) -> GateDecision:
        """Decide whether ``image`` (seen at monotonic time ``mono``) should be captioned."""
        grid = grey_grid(image)
        prev, self._prev = self._prev, grid
        if self._ref is None or self._ref.shape != grid.shape:
            return GateDecision(True, 1.0, "first")
        score = self._score(grid, self._ref)
        if score > self.cfg.changed_share:
            moving = prev is not None and prev.shape == grid.shape and self._score(grid, prev) > self.cfg.changed_share
            if moving and self._deferred < self.cfg.settle_samples:
                self._deferred += 1
                return GateDecision(False, score, "moving")
            return GateDecision(True, score, "settled_timeout" if moving else "pixels")
        due = self._ref_time is not None and mono - self._ref_time >= (self.cfg.max_interval_s or 0.0)
        if self.cfg.max_interval_s is not None and due:
            return GateDecision(True, score, "max_interval")
        return GateDecision(False, score, "static")

    def embedding_changed(self, pooled: np.ndarray | None) -> bool:
        """Stage 2: True if the pooled embedding moved more than the configured cosine distance (or no stage)."""
        if self.cfg.embedding_distance is None or pooled is None or self._ref_embedding is None:
            return True
        a, b = pooled.astype(np.float64), self._ref_embedding.astype(np.float64)
        cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        return 1.0 - cos > self.cfg.embedding_distance

    def accept(self, image: np.ndarray, mono: float, pooled: np.ndarray | None = None) -> None:
        """Make ``image`` the reference: call after captioning it."""
        self._ref = grey_grid(image)
        self._ref_time = mono
        self._deferred = 0
        if pooled is not None:
            self._ref_embedding = pooled
