"""The MQTT transport of the outbox (paho-mqtt 2.x, the ``mqtt`` extra): QoS 1, a row confirmed on its PUBACK.

Rows are handed to paho, which keeps them in order and sends them again after a reconnect; the worker never
resubmits a row paho still holds, so an outage adds no duplicates of its own. ``PREFIX/available`` is ``online``
(retained) once connected and ``offline`` as the last will and on a clean stop. With ``home_assistant`` the
discovery configs (a sensor per camera for the last caption, a binary_sensor per camera and rule) are published,
retained, at each connect.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .._log import logger
from ..errors import InputError
from .outbox import Pending
from .router import slug, topic_part
from .settings import AlertRule, MqttSettings

_HA_OFF_DELAY_S = 60  # an alert's binary_sensor turns itself off after this long (Home Assistant's off_delay)


def load_paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise InputError("[mqtt] needs paho-mqtt 2.x: pip install 'edgecap[mqtt]' (or pip install 'paho-mqtt>=2')"
                         ) from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise InputError("[mqtt] needs paho-mqtt 2.x, found an older one: pip install -U 'paho-mqtt>=2'")
    return mqtt


def new_client(settings: MqttSettings, *, client_id: str, window: int, **options: Any) -> Any:
    """A paho 2.x client for ``settings``: credentials, TLS for mqtts://, reconnects every 1..5 s (a short outage
    ends within 5 s), at most ``window`` QoS 1 messages in flight. ``options`` go to ``paho.mqtt.client.Client``."""
    mqtt = load_paho()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id or client_id, **options)
    warned = threading.Event()  # one line, not one per reconnect attempt of a broker down for hours

    def connect_failed(client: Any, userdata: Any) -> None:
        if not warned.is_set():
            warned.set()
            logger.warning("MQTT broker %s:%d unreachable; retrying every few seconds", settings.host, settings.port)

    client.on_connect_fail = connect_failed
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(ca_certs=settings.ca_file)
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    client.max_inflight_messages_set(window)
    return client


def discovery_messages(settings: MqttSettings, cameras: list[str],
                       rules: tuple[AlertRule, ...]) -> list[tuple[str, str]]:
    """Home Assistant MQTT discovery configs: (topic, JSON) pairs, published retained."""
    prefix, node = settings.topic_prefix, slug(settings.node)
    device = {"identifiers": [f"edgecap_{node}"], "name": f"edgecap {settings.node}", "manufacturer": "edgecap"}
    available = {"availability_topic": f"{prefix}/available", "payload_available": "online",
                 "payload_not_available": "offline"}
    out = []
    for cam in cameras:
        object_id = f"edgecap_{node}_{slug(cam)}_caption"
        out.append((f"homeassistant/sensor/{object_id}/config", json.dumps({
            "name": f"{cam} caption", "unique_id": object_id, "state_topic": f"{prefix}/{topic_part(cam)}/caption",
            "icon": "mdi:text-box-outline", "device": device, **available})))
        for rule in rules:
            object_id = f"edgecap_{node}_{slug(cam)}_{slug(rule.name)}"
            out.append((f"homeassistant/binary_sensor/{object_id}/config", json.dumps({
                "name": f"{cam} {rule.name}", "unique_id": object_id,
                "state_topic": f"{prefix}/{topic_part(cam)}/{topic_part(rule.name)}/alert", "payload_on": "ON",
                "off_delay": max(_HA_OFF_DELAY_S, int(rule.cooldown_s)), "device": device, **available})))
    return out


class MqttTransport:
    """Publishes outbox rows to a broker with QoS 1; a row is confirmed when its PUBACK arrives.

    Args:
        settings: the ``[mqtt]`` table.
        discovery: retained (topic, payload) pairs to publish at every connect (Home Assistant discovery).
        window: most rows handed to paho and not yet acknowledged.
    """

    def __init__(self, settings: MqttSettings, *, discovery: list[tuple[str, str]] | None = None,
                 window: int = 200):
        self.settings = settings
        self._window = window
        self._discovery = discovery or []
        self._cond = threading.Condition()
        self._mid_row: dict[int, int] = {}  # paho message id -> outbox row id, for rows awaiting PUBACK
        self._acked_mids: set[int] = set()
        self._own_mids: set[int] = set()  # availability and discovery publishes: not rows, never confirm one
        self.connected = threading.Event()
        self._closing = False
        self._available = f"{settings.topic_prefix}/available"
        client = new_client(settings, client_id=f"edgecap-{slug(settings.node)}", window=window)
        client.will_set(self._available, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        # connect_async + loop_start: a broker that is down at start is retried, never fatal
        client.connect_async(settings.host, settings.port, keepalive=30)
        client.loop_start()

    # -- paho callbacks (network thread) ------------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            logger.warning("MQTT broker %s:%d refused the connection: %s", self.settings.host, self.settings.port,
                           reason_code)
            return
        logger.info("MQTT connected to %s:%d", self.settings.host, self.settings.port)
        # on the network thread, so each mid is recorded before its PUBACK can be read
        mids = [client.publish(t, p, qos=1, retain=True).mid
                for t, p in [(self._available, "online"), *self._discovery]]
        with self._cond:
            self._own_mids.update(mids)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self.connected.is_set() and not self._closing:
            logger.warning("MQTT connection to %s:%d lost (%s); reconnecting, messages wait in the outbox",
                           self.settings.host, self.settings.port, reason_code)
        self.connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            if mid in self._own_mids:
                self._own_mids.discard(mid)
                return
            self._acked_mids.add(mid)
            self._cond.notify_all()

    # -- Transport ----------------------------------------------------------------------------------------------
    def room(self) -> int:
        with self._cond:
            return max(0, self._window - len(self._mid_row))

    def submit(self, rows: list[Pending]) -> None:
        for row in rows:
            # not under self._cond: paho calls on_publish holding its own lock, which publish() takes too
            info = self._client.publish(row.topic, row.payload, qos=1, retain=row.retain)
            with self._cond:
                self._mid_row[info.mid] = row.id

    def take_confirmed(self, timeout: float) -> list[int]:
        with self._cond:
            if not self._acked_mids & self._mid_row.keys():
                self._cond.wait(timeout)
            done = self._acked_mids & self._mid_row.keys()
            self._acked_mids -= done
            return sorted(self._mid_row.pop(mid) for mid in done)

    def close(self, timeout: float) -> None:
        """Publish ``offline`` (retained), then disconnect."""
        self._closing = True
        if self.connected.is_set():
            info = self._client.publish(self._available, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
