"""Which messages each event write produces, for MQTT and webhooks: the store's outbox hook.

MQTT topics (PREFIX is ``[mqtt] topic_prefix``):
    PREFIX/available          online / offline (retained; offline is the last will)       -- mqtt.py
    PREFIX/events             {"type": new|update|end, "before", "after", ...} per scene write (as Frigate)
    PREFIX/system             the same shape for every other event (alerts, statuses, errors): what ingest reads
    PREFIX/alerts             one message per alert (``alert_payload``)
    PREFIX/<camera>/caption   the last caption, plain text (retained)
    PREFIX/<camera>/status    the last source status, JSON (retained)
    PREFIX/<camera>/<rule>/alert  "ON" per alert, for the Home Assistant binary_sensor (with home_assistant)

Every JSON message carries ``id``: the same message delivered twice has the same id (at-least-once delivery).
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from ..events.model import ALERT, SCENE, Event, OutboxMessage
from ..sources.records import StatusKind
from .rules import SCENE_CONTEXT
from .settings import AlertSettings, MqttSettings

MQTT = "mqtt"
_STATUS_KINDS = frozenset(str(k) for k in StatusKind)
_TOPIC_UNSAFE = re.compile(r"[#+/\x00]")


def topic_part(name: str) -> str:
    """A camera or rule name as one MQTT topic level (no wildcards, no level separators)."""
    return _TOPIC_UNSAFE.sub("_", name) or "_"


def slug(name: str) -> str:
    """A name as an identifier (Home Assistant object ids)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "x"


def webhook_dest(name: str) -> str:
    return f"webhook:{name}"


def thumbnail_url(ev: Event, base: str | None) -> str | None:
    if not base or not ev.thumbnail:
        return None
    return f"{base.rstrip('/')}/{ev.thumbnail.replace(chr(92), '/').rsplit('/', 1)[-1]}"


def alert_payload(alert: Event, *, node: str, scene_id: int | None, base_url: str | None) -> dict[str, Any]:
    """The JSON of one alert (PREFIX/alerts and webhooks)."""
    data = alert.to_json()
    return {"id": alert.uid, "rule": alert.details.get("rule"), "camera": alert.camera, "scene_id": scene_id,
            "scene_uid": alert.details.get("scene_uid"), "caption": alert.caption, "confidence": alert.confidence,
            "start": data["start"], "end": data["end"], "source_start_s": alert.source_start_s,
            "source_end_s": alert.source_end_s, "thumbnail_url": thumbnail_url(alert, base_url), "node": node,
            **{k: alert.details[k] for k in SCENE_CONTEXT if k in alert.details}}


def change_type(before: Event | None, after: Event) -> str:
    """Frigate's ``type``: new (first write), end (closed), update (anything between). A row both created and
    closed in one write gets a "new" and then an "end" message."""
    if before is None:
        return "new"
    return "end" if after.closed else "update"


class Router:
    """The outbox hook of the store (``EventStore(outbox=Router(settings))``): the messages of one write."""

    def __init__(self, settings: AlertSettings):
        self.settings = settings
        self.mqtt: MqttSettings | None = settings.mqtt

    def __call__(self, conn: sqlite3.Connection, before: Event | None, after: Event,
                 updated: int) -> list[OutboxMessage]:
        out: list[OutboxMessage] = []
        scene_id = None
        if after.kind == ALERT:
            row = conn.execute("SELECT id FROM events WHERE uid = ?", (after.details.get("scene_uid"),)).fetchone()
            scene_id = None if row is None else row[0]
        node = self.mqtt.node if self.mqtt else ""
        if self.mqtt is not None:
            out += self._mqtt(before, after, updated, scene_id)
        if after.kind == ALERT and before is None:
            rule = after.details.get("rule")
            body = None
            for hook in self.settings.webhooks:
                if hook.rules and rule not in hook.rules:
                    continue
                body = body or json.dumps(alert_payload(after, node=node, scene_id=scene_id,
                                                        base_url=self.mqtt.thumbnail_base_url if self.mqtt else None))
                out.append(OutboxMessage(webhook_dest(hook.name), "alert", body))
        return out

    def _mqtt(self, before: Event | None, after: Event, updated: int, scene_id: int | None) -> list[OutboxMessage]:
        m = self.mqtt
        assert m is not None
        prefix, cam = m.topic_prefix, topic_part(after.camera)
        change = {"id": f"{m.node}:{after.uid}:{updated}", "type": change_type(before, after),
                  "before": (before or after).to_json(), "after": after.to_json(), "node": m.node,
                  "updated": updated}
        topic = f"{prefix}/{'events' if after.kind == SCENE else 'system'}"
        out = [OutboxMessage(MQTT, topic, json.dumps(change))]
        if before is None and after.closed and after.kind == SCENE:
            # opened and closed within one commit: consumers that wait for "end" after "new" still get it
            out.append(OutboxMessage(MQTT, topic, json.dumps({**change, "id": change["id"] + ":end", "type": "end"})))
        if after.kind == SCENE and (before is None or before.caption != after.caption):
            # an empty caption too (an <OD> answer with no objects): else the retained topic keeps saying the last
            # objects seen long after they left; an empty retained payload clears the topic
            out.append(OutboxMessage(MQTT, f"{prefix}/{cam}/caption", after.caption or "", retain=True))
        elif after.kind == ALERT and before is None:
            payload = alert_payload(after, node=m.node, scene_id=scene_id, base_url=m.thumbnail_base_url)
            out.append(OutboxMessage(MQTT, f"{prefix}/alerts", json.dumps(payload)))
            if m.home_assistant:
                rule = topic_part(str(after.details.get("rule")))
                out.append(OutboxMessage(MQTT, f"{prefix}/{cam}/{rule}/alert", "ON"))
        elif after.kind in _STATUS_KINDS:
            when = change["after"]["end"] or change["after"]["start"]
            status = {"id": change["id"], "status": after.kind, "time": when, "closed": after.closed,
                      "details": after.details}
            out.append(OutboxMessage(MQTT, f"{prefix}/{cam}/status", json.dumps(status), retain=True))
        return out
