"""The event record: fields, kinds, the limits on stored text, cleaning any producer's values into storable ones,
and the JSON form (``json_line``) shared by the JSONL mirror, export and the CLI."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from ..errors import EdgecapError, InputError
from ..sources.records import StatusKind
from ..units import parse_duration

SCENE = "scene"
ERROR = "error"  # a caption batch failed for a camera (one event per failure streak)
PRUNE = "prune"  # retention deleted events
ALERT = "alert"  # an alert rule matched a scene (details: rule, scene_uid)
OUTBOX_DROP = "outbox_drop"  # the outbox was over its age or size bound and dropped undelivered messages
SYSTEM_KINDS = (*(str(k) for k in StatusKind), ERROR, PRUNE, OUTBOX_DROP)
KINDS = (SCENE, ALERT, *SYSTEM_KINDS)

MAX_CAPTION_CHARS = 2000
MAX_NAME_CHARS = 200  # uid, kind, camera, keys of details
MAX_PATH_CHARS = 4096
MAX_DETAIL_TEXT_CHARS = 4000
MAX_DETAILS_BYTES = 64 * 1024
MAX_SEARCH_TERMS = 32


class EventStoreError(EdgecapError):
    """The event database cannot be opened or written, is of another schema version, or an event was dropped."""


# -- records ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """One event of the log: a scene (a caption that held from ``start`` to ``end``) or a system event.

    Args:
        uid: stable id chosen by the producer (e.g. ``uuid.uuid4().hex``); writing the same uid again updates the
            row, which is how a scene is extended and closed.
        kind: ``"scene"`` or a system kind (``SYSTEM_KINDS``: source_up, source_down, reconnecting, ...).
        camera: camera name.
        start: wall-clock start, timezone-aware UTC (a naive datetime is taken as UTC).
        end: wall-clock end (None for a point event).
        source_start_s: position in the file or stream, seconds.
        source_end_s: position in the file or stream, seconds.
        caption: the caption (scenes).
        confidence: mean token log-probability of the caption.
        observations: how many sampled frames said the same thing.
        thumbnail: path of a JPEG (see ``save_jpeg``).
        details: JSON-able provenance (model, precision, per-stage ms), error messages, drop counts.
        closed: False while a scene may still be extended.
        id: row id, assigned by the store.

    Example:
        >>> Event(uuid.uuid4().hex, "scene", "gate", datetime.now(timezone.utc), caption="a red car")
    """

    uid: str
    kind: str
    camera: str
    start: datetime
    end: datetime | None = None
    source_start_s: float | None = None
    source_end_s: float | None = None
    caption: str | None = None
    confidence: float | None = None
    observations: int = 1
    thumbnail: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    closed: bool = True
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; times are UTC ISO 8601 strings ending in 'Z'."""
        return {"id": self.id, "uid": self.uid, "kind": self.kind, "camera": self.camera,
                "start": _iso(self.start), "end": _iso(self.end), "source_start_s": self.source_start_s,
                "source_end_s": self.source_end_s, "caption": self.caption, "confidence": self.confidence,
                "observations": self.observations, "thumbnail": self.thumbnail, "details": self.details,
                "closed": self.closed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        """The inverse of ``to_json`` (extra keys such as the JSONL ``seq`` are ignored)."""
        return cls(uid=data["uid"], kind=data["kind"], camera=data["camera"], start=parse_iso(data["start"]),
                   end=parse_iso(data["end"]) if data.get("end") else None,
                   source_start_s=data.get("source_start_s"), source_end_s=data.get("source_end_s"),
                   caption=data.get("caption"), confidence=data.get("confidence"),
                   observations=data.get("observations", 1), thumbnail=data.get("thumbnail"),
                   details=data.get("details") or {}, closed=data.get("closed", True), id=data.get("id"))


@dataclass(frozen=True)
class OutboxMessage:
    """A message to deliver, written to the outbox in the same transaction as the event it comes from.

    Args:
        dest: which delivery worker sends it ("mqtt", "webhook:<name>").
        topic: MQTT topic, or the webhook's label of the message.
        payload: the body (JSON text for most topics).
        retain: MQTT retained flag.
    """

    dest: str
    topic: str
    payload: str
    retain: bool = False


JSON_FIELDS = ("id", *(f.name for f in fields(Event) if f.name != "id"))  # the keys of Event.to_json(), in order


def json_line(record: dict[str, Any]) -> str:
    """One JSONL line (with its newline). U+2028/U+2029 are escaped too: str.splitlines() would split on them."""
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """ISO 8601 text -> a UTC datetime (naive means UTC; 'Z' accepted on every Python)."""
    s = text.strip()
    if s[-1:] in ("Z", "z"):  # fromisoformat reads 'Z' only from Python 3.11
        s = s[:-1] + "+00:00"
    return as_utc(datetime.fromisoformat(s), "time")


def as_utc(t: Any, name: str) -> datetime:
    """A datetime in UTC (naive means UTC); ``name`` says which field was not a datetime."""
    if not isinstance(t, datetime):
        raise InputError(f"event {name} must be a datetime, got {type(t).__name__}")
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """Read a time given by a user: ISO 8601 (naive means UTC) or an age such as 30s, 15m, 2h, 3d, 2w (now minus
    it).

    Returns:
        a timezone-aware UTC datetime.

    Raises:
        InputError: anything else.

    Example:
        >>> parse_time("2h", now=datetime(2024, 5, 1, 12, tzinfo=timezone.utc))
        datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc)
    """
    if not isinstance(text, str):
        raise InputError(f"time must be text, got {type(text).__name__}")
    try:
        age: timedelta | None = parse_duration(text, allow_zero=True)
    except InputError:
        age = None  # not an age (or an absurd one): read it as a time, which reports it with both forms
    try:
        if age is not None:
            return as_utc(now or datetime.now(timezone.utc), "now") - age
        return parse_iso(text)
    except (ValueError, OverflowError, IndexError):
        raise InputError(f"cannot read time {text!r}: expected ISO 8601 such as 2024-05-01T14:30:00Z (no zone "
                         "means UTC) or an age such as 30s, 15m, 2h, 3d") from None


# -- cleaning --------------------------------------------------------------------------------------------------

# control characters (tab and newline stay), and the bidirectional embeddings, overrides and isolates, with which a
# camera name or a caption could show other text than it holds ("\u202eevil" reads "live")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(value: Any, limit: int) -> str:
    """Any value -> valid UTF-8 text of at most ``limit`` characters (U+FFFD for undecodable bytes and lone
    surrogates, control characters and bidirectional overrides removed)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A UTF-16 round trip joins valid surrogate pairs and turns lone surrogates into U+FFFD.
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    value = _CONTROL.sub("", value)
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _clean_optional(value: Any, limit: int) -> str | None:
    return None if value is None else clean_text(value, limit)


def _clean_number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"event {name} must be a number or None, got {type(value).__name__}") from None
    return number if math.isfinite(number) else None


def _clean_count(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"event observations must be an integer, got {value!r}") from None


def _clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy: finite numbers, clean strings, bounded containers; anything else becomes its str()."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _clean_json(value.item(), depth)
    if isinstance(value, dict) and depth < 8:
        return {clean_text(k, MAX_NAME_CHARS): _clean_json(v, depth + 1) for k, v in list(value.items())[:256]}
    if isinstance(value, (list, tuple)) and depth < 8:
        return [_clean_json(v, depth + 1) for v in value[:1024]]
    return clean_text(value, MAX_DETAIL_TEXT_CHARS)


def _clean_details(details: Any) -> dict[str, Any]:
    if details is None:
        return {}
    if not isinstance(details, dict):
        raise InputError(f"event details must be a dict, got {type(details).__name__}")
    clean = _clean_json(details)
    size = len(json.dumps(clean, ensure_ascii=False).encode("utf-8"))
    return clean if size <= MAX_DETAILS_BYTES else {"truncated": True, "bytes": size}


def clean_event(ev: Event) -> Event:
    """The event as it will be stored; also a deep copy, so the producer may keep mutating its ``details``."""
    if not isinstance(ev, Event):
        raise InputError(f"expected an Event, got {type(ev).__name__}")
    uid = clean_text(ev.uid, MAX_NAME_CHARS)
    if not uid:
        raise InputError("event uid is empty: give every event a stable id such as uuid.uuid4().hex")
    return Event(uid=uid, kind=clean_text(ev.kind, MAX_NAME_CHARS), camera=clean_text(ev.camera, MAX_NAME_CHARS),
                 start=as_utc(ev.start, "start"), end=None if ev.end is None else as_utc(ev.end, "end"),
                 source_start_s=_clean_number(ev.source_start_s, "source_start_s"),
                 source_end_s=_clean_number(ev.source_end_s, "source_end_s"),
                 caption=_clean_optional(ev.caption, MAX_CAPTION_CHARS),
                 confidence=_clean_number(ev.confidence, "confidence"), observations=_clean_count(ev.observations),
                 thumbnail=_clean_optional(ev.thumbnail, MAX_PATH_CHARS), details=_clean_details(ev.details),
                 closed=bool(ev.closed))
