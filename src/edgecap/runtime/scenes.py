"""Scene tracking: consecutive captions of a camera that say the same thing extend one scene event.

"The same thing" is decided on content words: captions are lower-cased, punctuation is dropped, and function
words (articles, prepositions, conjunctions) are removed; two captions describe the same scene when the remaining
multisets of words are equal. So a paraphrase ("a parking lot at night with a red car on the left" vs "a red car
on the left in a parking lot at night") extends the scene, while any change of kind, colour, count, position,
place or time of day -- one word in a surveillance caption -- opens a new one. Exact-word equality is the right
bar here: "red car" and "blue car" are different events however similar the strings are.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_FUNCTION_WORDS = frozenset(
    "a an the on in at of with and or to is are there by from into onto near its it this that view".split())
_TOKEN = re.compile(r"[a-z0-9]+")


def content_words(caption: str) -> Counter:
    return Counter(t for t in _TOKEN.findall(caption.lower()) if t not in _FUNCTION_WORDS)


def same_scene(a: str, b: str) -> bool:
    """True when two captions carry the same content words (see the module docstring)."""
    return content_words(a) == content_words(b)


@dataclass
class OpenScene:
    """The scene event being extended for one camera."""

    uid: str
    caption: str
    start: datetime
    end: datetime
    source_start_s: float | None
    source_end_s: float | None
    observations: int = 1
    confidence_sum: float = 0.0
    thumbnail: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        return self.confidence_sum / max(1, self.observations)


class SceneTracker:
    """Turns a camera's stream of captions into scene events (open -> extended -> closed)."""

    def __init__(self, camera: str):
        self.camera = camera
        self.current: OpenScene | None = None

    def observe(self, caption: str, when: datetime, pts_s: float | None, confidence: float,
                details: dict[str, Any], *, changed_at: tuple[datetime, float | None] | None = None
                ) -> tuple[OpenScene | None, OpenScene, bool]:
        """Record a new caption of a frame seen at ``when`` / ``pts_s``.

        Args:
            changed_at: (wall time, pts) of the first frame of the change, when the gate waited for the scene to
                settle before captioning; a new scene starts there. Defaults to the captioned frame.

        Returns:
            (the scene this caption closed or None, the scene it belongs to, whether that scene is new).
        """
        cur = self.current
        if cur is not None and same_scene(cur.caption, caption):
            cur.end, cur.source_end_s = when, pts_s if pts_s is not None else cur.source_end_s
            cur.observations += 1
            cur.confidence_sum += confidence
            return None, cur, False
        start, start_pts = changed_at if changed_at is not None else (when, pts_s)
        closed = None
        if cur is not None:
            # the previous scene lasted until the change began
            cur.end, cur.source_end_s = start, start_pts if start_pts is not None else cur.source_end_s
            closed = cur
        self.current = OpenScene(uuid.uuid4().hex, caption, start, when, start_pts, pts_s, 1, confidence,
                                 details=dict(details))
        return closed, self.current, True

    def touch(self, when: datetime, pts_s: float | None) -> OpenScene | None:
        """A frame that the gate found unchanged: the open scene lasts at least until then."""
        if self.current is not None:
            self.current.end = when
            if pts_s is not None:
                self.current.source_end_s = pts_s
        return self.current

    def close(self) -> OpenScene | None:
        """End the open scene (shutdown, end of file); returns it."""
        cur, self.current = self.current, None
        return cur
