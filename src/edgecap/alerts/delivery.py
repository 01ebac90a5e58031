"""Starting and stopping the delivery workers a configuration asks for: one for MQTT, one per webhook."""

from __future__ import annotations

import os
from typing import Callable

from ..events.model import Event
from .outbox import DeliveryWorker
from .router import MQTT, webhook_dest
from .settings import AlertSettings


class Delivery:
    """The running delivery workers of one event database.

    Args:
        db_path: the event database (opened by an ``EventStore`` with ``outbox=Router(settings)`` first).
        settings: the alert tables of cameras.toml.
        cameras: camera names (Home Assistant discovery).
        record: where system events go (``outbox_drop``): the store's ``put``.
    """

    def __init__(self, db_path: str | os.PathLike, settings: AlertSettings, *, cameras: list[str] | None = None,
                 record: Callable[[Event], object] | None = None):
        self.workers: list[DeliveryWorker] = []
        try:
            if settings.mqtt is not None:
                from .mqtt import MqttTransport, discovery_messages

                discovery = (discovery_messages(settings.mqtt, cameras or [], settings.rules)
                             if settings.mqtt.home_assistant else None)
                self._add(db_path, MQTT, MqttTransport(settings.mqtt, discovery=discovery), settings, record)
            for hook in settings.webhooks:
                from .webhook import WebhookTransport

                self._add(db_path, webhook_dest(hook.name), WebhookTransport(hook), settings, record)
        except BaseException:
            self.stop(0.0)
            raise

    def _add(self, db_path, dest, transport, settings, record) -> None:
        self.workers.append(DeliveryWorker(db_path, dest, transport, bounds=settings.outbox, record=record).start())

    def stop(self, drain_s: float = 10.0) -> None:
        """Deliver what is left for up to ``drain_s`` s (all workers together), then stop; the rest waits in the
        outbox for the next start."""
        for worker in self.workers:
            worker.stop(drain_s)
