"""Alerts and integrations: caption rules, a durable outbox delivered to MQTT and signed webhooks, and ingest of
many nodes' events from a broker into one log.

Modules, by job (arrows are imports; none points back):
    settings   [[alert]], [mqtt], [[webhook]], [outbox] -> frozen records       -> errors
    rules      RuleEngine, Alerter (the sink that stores alert events)          -> events, settings
    router     the store's outbox hook: the messages of each event write        -> events, settings
    outbox     Outbox (the table), DeliveryWorker (one thread per destination)  -> events, settings
    mqtt       MqttTransport (paho-mqtt 2.x, QoS 1), Home Assistant discovery   -> outbox, router, settings
    webhook    WebhookTransport (HMAC-SHA256 signed POSTs), sign, verify        -> outbox, settings
    delivery   Delivery: the workers a configuration asks for                   -> outbox, router, mqtt, webhook
    ingest     Ingestor: PREFIX/events and PREFIX/system of many nodes -> one store  -> events, mqtt
"""

from .delivery import Delivery
from .outbox import DeliveryWorker, Outbox, Pending
from .router import Router, alert_payload
from .rules import Alerter, RuleEngine, alert_event
from .settings import (AlertRule, AlertSettings, MqttSettings, OutboxSettings, WebhookSettings, Window,
                       parse_alert_settings)
from .webhook import sign, verify

__all__ = [
    "AlertRule", "AlertSettings", "Alerter", "Delivery", "DeliveryWorker", "MqttSettings", "Outbox",
    "OutboxSettings", "Pending", "Router", "RuleEngine", "WebhookSettings", "Window", "alert_event", "alert_payload",
    "parse_alert_settings", "sign", "verify",
]
