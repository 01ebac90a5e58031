"""Alert rules applied to scene events, and ``Alerter``: the sink that stores one ``alert`` event per matching
scene and rule next to the scene itself.

Words are compared as ``edgecap events search`` compares them: through SQLite FTS5's porter tokenizer, so
``match = "cars"`` matches "a car", and a rule matches exactly the scenes a search for its words finds.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import sqlite3
import threading
from collections import OrderedDict
from datetime import datetime, tzinfo

from .._log import logger
from ..events.model import ALERT, SCENE, Event
from ..events.sink import Ack, EventSink
from .settings import AlertRule

_FIRED_MEMORY = 10_000  # scene uids remembered per rule while their scene is open


class Stemmer:
    """Text -> the set of FTS5 porter stems (one in-memory database; one thread at a time)."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._conn.execute("CREATE VIRTUAL TABLE t USING fts5 (c, tokenize='porter unicode61')")
        self._conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab (t, 'row')")
        self._lock = threading.Lock()

    def stems(self, text: str) -> frozenset[str]:
        with self._lock:
            self._conn.execute("INSERT INTO t (c) VALUES (?)", (text,))
            out = frozenset(term for (term,) in self._conn.execute("SELECT term FROM v"))
            self._conn.execute("DELETE FROM t")
        return out


class _Compiled:
    def __init__(self, rule: AlertRule, stemmer: Stemmer):
        self.rule = rule
        self.match = stemmer.stems(" ".join(rule.match))
        # one stem set per object name: "traffic light" needs both words, in one label
        self.objects = [stems for stems in (stemmer.stems(name) for name in rule.objects) if stems]
        self.exclude = stemmer.stems(" ".join(rule.exclude))
        self.regex = re.compile(rule.regex, re.IGNORECASE) if rule.regex else None
        self.last_fired: dict[str, datetime] = {}  # camera -> scene start of the last alert (cooldown)
        self.fired: OrderedDict[str, None] = OrderedDict()  # open scenes already alerted on

    def applies_to(self, camera: str) -> bool:
        return not self.rule.cameras or any(fnmatch.fnmatchcase(camera, g) for g in self.rule.cameras)


def scene_duration_s(ev: Event) -> float:
    """How long the scene has lasted: by its position in the source when known (files are read faster than real
    time), else by wall clock."""
    if ev.source_start_s is not None and ev.source_end_s is not None:
        return ev.source_end_s - ev.source_start_s
    return 0.0 if ev.end is None else (ev.end - ev.start).total_seconds()


class RuleEngine:
    """Decides which rules a scene event fires: each rule at most once per scene, and per camera not again
    within its cooldown.

    Args:
        rules: the ``[[alert]]`` rules.
        tz: time zone of the ``active`` windows (default: the machine's local zone).
    """

    def __init__(self, rules: tuple[AlertRule, ...] | list[AlertRule], *, tz: tzinfo | None = None):
        self._stemmer = Stemmer()
        self._rules = [_Compiled(r, self._stemmer) for r in rules]
        self._tz = tz

    def matches(self, rule: AlertRule, ev: Event) -> bool:
        """True when ``ev`` satisfies every condition of ``rule`` (cooldown aside)."""
        compiled = next(c for c in self._rules if c.rule is rule)
        return self._matches(compiled, ev, self._stemmer.stems(ev.caption or ""))

    def _matches(self, c: _Compiled, ev: Event, stems: frozenset[str]) -> bool:
        rule = c.rule
        if not c.applies_to(ev.camera) or not ev.caption:
            return False
        if not c.match <= stems or c.exclude & stems:
            return False
        if c.objects and not self._objects_match(c, ev, stems):
            return False
        if c.regex is not None and not c.regex.search(ev.caption):
            return False
        if rule.min_confidence is not None and (ev.confidence is None or ev.confidence < rule.min_confidence):
            return False
        if scene_duration_s(ev) < rule.min_duration_s:
            return False
        if rule.active:
            local = ev.start.astimezone(self._tz).time()
            if not any(w.contains(local) for w in rule.active):
                return False
        return True

    def _objects_match(self, c: _Compiled, ev: Event, stems: frozenset[str]) -> bool:
        """Any object name of the rule found whole: in one detected label when the scene has detected objects
        (``details.objects``, e.g. Florence-2's <OD>), else in the caption."""
        found = ev.details.get("objects") if isinstance(ev.details, dict) else None
        if isinstance(found, list) and found:
            labels = [self._stemmer.stems(str(o.get("label", ""))) for o in found if isinstance(o, dict)]
            return any(want <= label for want in c.objects for label in labels)
        return any(want <= stems for want in c.objects)

    def fire(self, ev: Event) -> list[AlertRule]:
        """The rules that fire for this write of a scene (updating cooldowns and the once-per-scene memory)."""
        if ev.kind != SCENE:
            return []
        stems = self._stemmer.stems(ev.caption or "")
        fired = []
        for c in self._rules:
            if ev.uid in c.fired:
                if ev.closed:
                    del c.fired[ev.uid]
                continue
            if not self._matches(c, ev, stems):
                continue
            last = c.last_fired.get(ev.camera)
            if last is not None and (ev.start - last).total_seconds() < c.rule.cooldown_s:
                continue
            c.last_fired[ev.camera] = ev.start
            if not ev.closed:
                c.fired[ev.uid] = None
                while len(c.fired) > _FIRED_MEMORY:
                    c.fired.popitem(last=False)
            fired.append(c.rule)
        return fired


def alert_uid(scene_uid: str, rule: str) -> str:
    """The alert's uid: the same for a scene and rule, so a replayed scene updates its alert instead of adding one."""
    return hashlib.sha1(f"{scene_uid}\0{rule}".encode()).hexdigest()[:32]


# the scene details an alert carries (its event's details, its MQTT/webhook payload): the prompt the camera was
# captioned with and the detected objects (label and box)
SCENE_CONTEXT = ("prompt", "objects")


def alert_event(scene: Event, rule: AlertRule) -> Event:
    """The ``alert`` event of ``rule`` matching ``scene``: the scene's camera, times, caption and thumbnail (so
    ``events search --kind alert`` finds it by its words), with the rule and the scene's uid in ``details``, and
    the scene's prompt and detected objects (label and box) when it has them."""
    details = {"rule": rule.name, "scene_uid": scene.uid,
               **{k: scene.details[k] for k in SCENE_CONTEXT if k in scene.details}}
    return Event(uid=alert_uid(scene.uid, rule.name), kind=ALERT, camera=scene.camera, start=scene.start,
                 end=scene.end, source_start_s=scene.source_start_s, source_end_s=scene.source_end_s,
                 caption=scene.caption, confidence=scene.confidence, observations=scene.observations,
                 thumbnail=scene.thumbnail, details=details, closed=True)


class Alerter:
    """An ``EventSink`` in front of another (the store): passes every event on, and after a scene event that fires
    a rule, puts that rule's ``alert`` event to the same sink, so the alert is stored whatever delivery does.

    Args:
        sink: where events and alerts go (an ``EventStore``).
        rules: the ``[[alert]]`` rules.
        tz: time zone of the ``active`` windows (default: local).
    """

    def __init__(self, sink: EventSink, rules: tuple[AlertRule, ...] | list[AlertRule], *, tz: tzinfo | None = None):
        self.sink = sink
        self.engine = RuleEngine(rules, tz=tz)
        self.alerts = 0

    def put(self, event: Event) -> Ack:
        ack = self.sink.put(event)
        for rule in self.engine.fire(event):
            self.sink.put(alert_event(event, rule))
            self.alerts += 1
            logger.info("alert %r on camera %s: %s", rule.name, event.camera, event.caption)
        return ack

    def flush(self, timeout: float | None = None) -> bool:
        return self.sink.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        self.sink.close(timeout)
