"""The alert tables of cameras.toml: ``[[alert]]`` rules, ``[mqtt]``, ``[[webhook]]`` and ``[outbox]``, read into
frozen records, each mistake one InputError line that names the table and key.

    [[alert]]
    name = "person at the door"
    cameras = ["front-*"]      # globs; default: every camera
    match = "person"           # words that must all appear (stemmed as in search); or regex = "..."; or objects = [...]
    exclude = ["cat"]          # words that veto
    min_confidence = -1.5      # caption mean log-prob
    min_duration_s = 2         # the scene must last this long
    cooldown_s = 60            # per camera and rule
    active = "22:00-06:00"     # local-time windows ("08:00-12:00, 14:00-18:00" or a list)

    [mqtt]
    url = "mqtt://127.0.0.1:1883"   # or mqtts://
    topic_prefix = "edgecap"
    username_env = "MQTT_USER"      # credentials from the environment, never from the file
    password_env = "MQTT_PASS"
    client_id = "edgecap-gate"
    node = "gate-box"               # this node's name in the messages (default: the host name)
    home_assistant = true           # Home Assistant MQTT discovery
    thumbnail_base_url = "http://edge:8080/thumbnails"

    [[webhook]]
    url = "https://hooks.example.com/edgecap"
    rules = ["person at the door"]  # default: every rule
    secret_env = "HOOK_SECRET"
    timeout_s = 5

    [outbox]
    max_age_days = 7
    max_messages = 100000
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import Any
from urllib.parse import urlsplit

from ..errors import InputError

ALERT_KEYS = ("name", "cameras", "match", "regex", "objects", "exclude", "min_confidence", "min_duration_s",
              "cooldown_s", "active")
MQTT_KEYS = ("url", "topic_prefix", "username_env", "password_env", "client_id", "node", "home_assistant",
             "thumbnail_base_url", "ca_file")
WEBHOOK_KEYS = ("url", "rules", "secret_env", "timeout_s", "name")
OUTBOX_KEYS = ("max_age_days", "max_messages")
TABLES = ("alert", "mqtt", "webhook", "outbox")

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_TOPIC_BAD = re.compile(r"[#+\x00]")


@dataclass(frozen=True)
class Window:
    """A local-time window; ``start > end`` wraps past midnight ("22:00-06:00")."""

    start: time
    end: time

    def contains(self, t: time) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


@dataclass(frozen=True)
class AlertRule:
    """One ``[[alert]]`` table. A scene matches when every condition given holds (see ``edgecap.alerts.rules``)."""

    name: str
    cameras: tuple[str, ...] = ()
    match: tuple[str, ...] = ()
    regex: str | None = None
    objects: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_confidence: float | None = None
    min_duration_s: float = 0.0
    cooldown_s: float = 0.0
    active: tuple[Window, ...] = ()


@dataclass(frozen=True)
class MqttSettings:
    """The ``[mqtt]`` table; ``username``/``password`` come from the environment (never print them)."""

    url: str
    topic_prefix: str = "edgecap"
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    node: str = field(default_factory=socket.gethostname)
    home_assistant: bool = False
    thumbnail_base_url: str | None = None
    ca_file: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


@dataclass(frozen=True)
class WebhookSettings:
    """One ``[[webhook]]`` table; ``secret`` comes from the environment."""

    name: str
    url: str = field(repr=False)  # webhook URLs often carry a token in their path
    rules: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0


@dataclass(frozen=True)
class OutboxSettings:
    """Bounds of the undelivered messages kept per destination; beyond them the oldest are dropped and counted."""

    max_age_s: float = 7 * 86400.0
    max_messages: int = 100_000


@dataclass(frozen=True)
class AlertSettings:
    """Everything cameras.toml says about alerts and where messages go."""

    rules: tuple[AlertRule, ...] = ()
    mqtt: MqttSettings | None = None
    webhooks: tuple[WebhookSettings, ...] = ()
    outbox: OutboxSettings = OutboxSettings()

    @property
    def delivers(self) -> bool:
        return self.mqtt is not None or bool(self.webhooks)


# -- parsing ------------------------------------------------------------------------------------------------

def _words(value: Any, key: str, where: str) -> tuple[str, ...]:
    """A string of words or a list of strings -> the words."""
    if isinstance(value, str):
        items = value.split()
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [w for v in value for w in v.split()]
    else:
        raise InputError(f"{where}: {key} must be a string or a list of strings, got {value!r}")
    if not items:
        raise InputError(f"{where}: {key} is empty; give at least one word or leave the key out")
    return tuple(items)


def _names(value: Any, key: str, where: str) -> tuple[str, ...]:
    """A string of one-word names or a list of names (each may have several words) -> the names."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = tuple(" ".join(v.split()) for v in value if v.strip())
        if not names:
            raise InputError(f"{where}: {key} is empty; give at least one word or leave the key out")
        return names
    return _words(value, key, where)


def _number(value: Any, key: str, where: str, *, minimum: float | None = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")):
        raise InputError(f"{where}: {key} must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{where}: {key} must be >= {minimum:g}, got {value!r}")
    return float(value)


def _string(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _windows(value: Any, where: str) -> tuple[Window, ...]:
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise InputError(f"{where}: active must be a string such as \"22:00-06:00\" or a list of them, got {value!r}")
    out = []
    for part in parts:
        m = _WINDOW.match(part)
        hours_minutes = [int(g) for g in m.groups()] if m else []
        if not m or hours_minutes[0] > 23 or hours_minutes[2] > 24 or hours_minutes[1] > 59 or hours_minutes[3] > 59:
            raise InputError(f"{where}: active window {part.strip()!r} must be HH:MM-HH:MM in local time, such as "
                             "\"22:00-06:00\"")
        h1, m1, h2, m2 = hours_minutes
        end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
        out.append(Window(time(h1, m1), end))
    return tuple(out)


def _check_keys(table: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InputError(f"{where}: must be a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(allowed)}")
    return table


def parse_rule(table: Any, where: str) -> AlertRule:
    """One ``[[alert]]`` table -> an AlertRule.

    Raises:
        InputError: unknown keys, wrong types or ranges, a regex that does not compile, no condition; one line.
    """
    t = _check_keys(table, ALERT_KEYS, where)
    name = _string(t.get("name"), "name", where)
    where = f"{where.rsplit(' #', 1)[0]} {name!r}"
    regex = t.get("regex")
    if regex is not None:
        _string(regex, "regex", where)
        try:
            re.compile(regex)
        except re.error as exc:
            raise InputError(f"{where}: regex {regex!r} does not compile ({exc})") from None
    rule = AlertRule(
        name=name,
        cameras=_words(t["cameras"], "cameras", where) if "cameras" in t else (),
        match=_words(t["match"], "match", where) if "match" in t else (),
        regex=regex,
        # each list entry is one object name ("traffic light"), matched as a whole
        objects=_names(t["objects"], "objects", where) if "objects" in t else (),
        exclude=_words(t["exclude"], "exclude", where) if "exclude" in t else (),
        min_confidence=_number(t["min_confidence"], "min_confidence", where, minimum=None)
        if "min_confidence" in t else None,
        min_duration_s=_number(t.get("min_duration_s", 0), "min_duration_s", where),
        cooldown_s=_number(t.get("cooldown_s", 0), "cooldown_s", where),
        active=_windows(t["active"], where) if "active" in t else (),
    )
    if not (rule.match or rule.regex or rule.objects):
        raise InputError(f"{where}: give match (words), regex or objects: a rule without one would alert on "
                         "every scene")
    return rule


def _env(table: dict[str, Any], key: str, env: Mapping[str, str], where: str) -> str | None:
    var = table.get(key)
    if var is None:
        return None
    if not isinstance(var, str) or var not in env:
        raise InputError(f"{where}: environment variable {var} ({key}) is not set")
    return env[var]


def parse_mqtt(table: Any, where: str, env: Mapping[str, str]) -> MqttSettings:
    """The ``[mqtt]`` table -> MqttSettings (credentials read from ``env``)."""
    t = _check_keys(table, MQTT_KEYS, where)
    url = _string(t.get("url"), "url", where)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise InputError(f"{where}: url must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {url!r}")
    if parts.password or parts.username:
        raise InputError(f"{where}: the url holds credentials; remove them and name environment variables with "
                         "username_env / password_env instead")
    try:
        parts.port
    except ValueError:
        raise InputError(f"{where}: url has an invalid port; expected mqtt://HOST:PORT") from None
    prefix = _string(t.get("topic_prefix", "edgecap"), "topic_prefix", where).strip("/")
    if _TOPIC_BAD.search(prefix):
        raise InputError(f"{where}: topic_prefix {prefix!r} must not contain MQTT wildcards (# or +)")
    home_assistant = t.get("home_assistant", False)
    if not isinstance(home_assistant, bool):
        raise InputError(f"{where}: home_assistant must be true or false, got {home_assistant!r}")
    extra = {k: _string(t[k], k, where) for k in ("client_id", "node", "thumbnail_base_url", "ca_file") if k in t}
    if "ca_file" in extra and not os.path.isfile(extra["ca_file"]):
        raise InputError(f"{where}: ca_file {extra['ca_file']} not found; give a PEM file of CA certificates or leave "
                         "the key out to use the system's")
    return MqttSettings(url=url, topic_prefix=prefix, username=_env(t, "username_env", env, where),
                        password=_env(t, "password_env", env, where), home_assistant=home_assistant, **extra)


def parse_webhook(table: Any, where: str, env: Mapping[str, str], rules: tuple[AlertRule, ...]) -> WebhookSettings:
    """One ``[[webhook]]`` table -> WebhookSettings; its ``rules`` must name ``[[alert]]`` rules."""
    t = _check_keys(table, WEBHOOK_KEYS, where)
    url = _string(t.get("url"), "url", where)
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise InputError(f"{where}: url must be http(s)://HOST/PATH, got a {urlsplit(url).scheme or 'schemeless'} "
                         "url")
    names = t.get("rules", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{where}: rules must be a list of [[alert]] names, got {names!r}")
    known = {r.name for r in rules}
    missing = [n for n in names if n not in known]
    if missing:
        raise InputError(f"{where}: rules {missing} are not [[alert]] names; expected some of {sorted(known)}")
    name = _string(t.get("name", urlsplit(url).hostname), "name", where)
    return WebhookSettings(name=name, url=url, rules=tuple(names), secret=_env(t, "secret_env", env, where),
                           timeout_s=_number(t.get("timeout_s", 5.0), "timeout_s", where, minimum=0.1))


def parse_outbox(table: Any, where: str) -> OutboxSettings:
    t = _check_keys(table, OUTBOX_KEYS, where)
    days = _number(t.get("max_age_days", 7), "max_age_days", where, minimum=0.001)
    count = t.get("max_messages", 100_000)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"{where}: max_messages must be an integer >= 1, got {count!r}")
    return OutboxSettings(max_age_s=days * 86400.0, max_messages=count)


def parse_alert_settings(data: Mapping[str, Any], where: str, env: Mapping[str, str]) -> AlertSettings:
    """The alert tables of a parsed cameras.toml (``data``: the whole document) -> AlertSettings.

    Args:
        data: the TOML document.
        where: the file, for messages.
        env: environment for ``*_env`` keys.

    Raises:
        InputError: one line naming the table and key.
    """
    alerts = data.get("alert", [])
    if not isinstance(alerts, list):
        raise InputError(f"{where}: alerts are [[alert]] tables (an array of tables)")
    rules = tuple(parse_rule(t, f"{where}: alert #{i}") for i, t in enumerate(alerts, 1))
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{where}: duplicate alert name(s) {dupes}")
    mqtt = parse_mqtt(data["mqtt"], f"{where}: [mqtt]", env) if "mqtt" in data else None
    hooks = data.get("webhook", [])
    if not isinstance(hooks, list):
        raise InputError(f"{where}: webhooks are [[webhook]] tables (an array of tables)")
    webhooks = tuple(parse_webhook(t, f"{where}: webhook #{i}", env, rules) for i, t in enumerate(hooks, 1))
    hook_names = [w.name for w in webhooks]
    if len(set(hook_names)) != len(hook_names):
        raise InputError(f"{where}: two [[webhook]] tables share a name; give each a distinct name")
    outbox = parse_outbox(data["outbox"], f"{where}: [outbox]") if "outbox" in data else OutboxSettings()
    return AlertSettings(rules=rules, mqtt=mqtt, webhooks=webhooks, outbox=outbox)
