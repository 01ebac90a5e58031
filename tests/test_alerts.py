"""Alert rules, their cameras.toml tables, the outbox (same transaction as the event, bounds, order, restarts) and
signed webhooks against a loopback receiver. MQTT against a real broker is in test_mqtt.py."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgecap.alerts import (Alerter, AlertSettings, DeliveryWorker, Outbox, OutboxSettings, Pending, Router,
                            RuleEngine, WebhookSettings, parse_alert_settings, sign, verify)
from edgecap.alerts.settings import parse_rule
from edgecap.alerts.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookTransport
from edgecap.errors import InputError
from edgecap.events import Event, EventStore, search
from edgecap.runtime import load_config

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def scene(caption, *, uid="s1", camera="front-door", start=T0, seconds=5.0, confidence=-0.5, closed=True):
    return Event(uid=uid, kind="scene", camera=camera, start=start, end=start + timedelta(seconds=seconds),
                 source_start_s=0.0, source_end_s=seconds, caption=caption, confidence=confidence, closed=closed)


def od_scene(*labels):
    """A Florence-2 <OD> scene: the caption is its labels, the boxes are in the details."""
    ev = scene(" ".join(labels))
    ev.details["objects"] = [{"label": label, "x0": 1.0, "y0": 2.0, "x1": 30.0, "y1": 40.0} for label in labels]
    return ev


def rule(**table):
    return parse_rule({"name": "r", **table}, "cameras.toml: alert #1")


# -- rules ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("table, event, fires", [
    ({"match": "person"}, scene("a person at the door"), True),
    ({"match": "persons"}, scene("a person at the door"), True),  # stemmed as search stems: persons ~ person
    ({"match": "cars"}, scene("a red car"), True),
    ({"match": "person door"}, scene("a person in the yard"), False),  # every word must appear
    ({"match": "red"}, scene("a reddish glow"), False),  # words, not substrings
    ({"match": "person", "exclude": ["cat"]}, scene("a person with a cat"), False),
    ({"match": "person", "exclude": "cats dog"}, scene("a person with a cat"), False),  # exclude is stemmed too
    ({"regex": r"\b(red|blue) car\b"}, scene("a blue car on the left"), True),
    ({"regex": r"\bred car\b"}, scene("a blue car on the left"), False),
    ({"objects": ["person", "truck"]}, scene("a white truck"), True),  # any one of the objects
    ({"objects": ["person", "truck"]}, scene("a white car"), False),
    # an object name is matched whole: in one detected label when the scene has <OD> objects, else in the caption
    ({"objects": ["traffic light"]}, scene("heavy traffic on the road"), False),
    ({"objects": ["traffic light"]}, scene("a traffic light at the corner"), True),
    ({"objects": ["traffic light"]}, od_scene("light", "traffic cone"), False),
    ({"objects": ["traffic light"]}, od_scene("car", "traffic light"), True),
    ({"objects": "person dog"}, od_scene("dog"), True),  # a string: one-word names
    ({"match": "person", "cameras": ["front-*"]}, scene("a person", camera="front-door"), True),
    ({"match": "person", "cameras": ["front-*"]}, scene("a person", camera="yard"), False),
    ({"match": "person", "cameras": ["yard", "gate?"]}, scene("a person", camera="gate2"), True),
    ({"match": "person", "min_confidence": -1.0}, scene("a person", confidence=-0.4), True),
    ({"match": "person", "min_confidence": -1.0}, scene("a person", confidence=-1.5), False),
    ({"match": "person", "min_duration_s": 2}, scene("a person", seconds=1.0), False),
    ({"match": "person", "min_duration_s": 2}, scene("a person", seconds=3.0), True),
    # windows in the rules' time zone (UTC here); 22:00-06:00 wraps past midnight
    ({"match": "person", "active": "22:00-06:00"}, scene("a person", start=T0.replace(hour=23)), True),
    ({"match": "person", "active": "22:00-06:00"}, scene("a person", start=T0.replace(hour=5, minute=59)), True),
    ({"match": "person", "active": "22:00-06:00"}, scene("a person", start=T0.replace(hour=6)), False),
    ({"match": "person", "active": "08:00-09:00, 11:30-12:30"}, scene("a person"), True),
    ({"match": "person", "active": ["08:00-09:00", "13:00-24:00"]}, scene("a person"), False),
])
def test_a_rule_matches_what_its_conditions_say(table, event, fires):
    r = rule(**table)
    assert RuleEngine([r], tz=timezone.utc).matches(r, event) is fires


def test_active_windows_are_local_time():
    r = rule(match="person", active="22:00-23:00")
    plus2 = timezone(timedelta(hours=2))
    evening_utc = scene("a person", start=T0.replace(hour=20, minute=30))  # 22:30 at UTC+2
    assert RuleEngine([r], tz=plus2).matches(r, evening_utc)
    assert not RuleEngine([r], tz=timezone.utc).matches(r, evening_utc)


def test_a_rule_fires_once_per_scene_however_often_the_scene_is_written():
    engine = RuleEngine([rule(match="person")])
    writes = [scene("a person", closed=False, seconds=s) for s in (0, 5, 10)] + [scene("a person", seconds=12)]
    assert [len(engine.fire(w)) for w in writes] == [1, 0, 0, 0]
    assert len(engine.fire(scene("a person", uid="s2", start=T0 + timedelta(minutes=1)))) == 1


def test_min_duration_fires_when_the_open_scene_gets_long_enough():
    engine = RuleEngine([rule(match="person", min_duration_s=4)])
    assert [len(engine.fire(scene("a person", closed=False, seconds=s))) for s in (0, 2, 4, 6)] == [0, 0, 1, 0]


def test_cooldown_is_per_camera_and_rule():
    a, b = parse_rule({"name": "a", "match": "person", "cooldown_s": 60}, "x"), \
        parse_rule({"name": "b", "match": "person"}, "x")
    engine = RuleEngine([a, b])

    def fired(uid, camera, minutes):
        return [r.name for r in engine.fire(scene("a person", uid=uid, camera=camera,
                                                  start=T0 + timedelta(minutes=minutes)))]

    assert fired("1", "door", 0) == ["a", "b"]
    assert fired("2", "door", 0.5) == ["b"]  # a is cooling down on this camera
    assert fired("3", "yard", 0.5) == ["a", "b"]  # not on another camera
    assert fired("4", "door", 1.0) == ["a", "b"]  # 60 s after the last alert: again


@pytest.mark.parametrize("toml, fragment", [
    ('[[alert]]\nname = "x"\n', "give match (words), regex or objects"),
    ('[[alert]]\nname = "x"\nmatch = "a"\ncolour = "red"\n', "unknown key(s) colour"),
    ('[[alert]]\nname = "x"\nregex = "(unclosed"\n', "regex '(unclosed' does not compile"),
    ('[[alert]]\nname = "x"\nmatch = "a"\nactive = "25:00-06:00"\n', "must be HH:MM-HH:MM"),
    ('[[alert]]\nname = "x"\nmatch = "a"\ncooldown_s = -1\n', "cooldown_s must be >= 0"),
    ('[[alert]]\nname = "x"\nmatch = "a"\nmin_confidence = "high"\n', "min_confidence must be a number"),
    ('[[alert]]\nname = "x"\nmatch = 3\n', "match must be a string or a list of strings"),
    ('[[alert]]\nname = "x"\nmatch = "a"\n[[alert]]\nname = "x"\nmatch = "b"\n', "duplicate alert name(s) ['x']"),
    ('[mqtt]\nurl = "http://broker"\n', "url must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
    ('[mqtt]\nurl = "mqtt://u:secret@broker"\n', "the url holds credentials"),
    ('[mqtt]\nurl = "mqtt://broker"\npassword_env = "NOPE_UNSET"\n', "environment variable NOPE_UNSET"),
    ('[mqtt]\nurl = "mqtt://broker"\ntopic_prefix = "a/#"\n', "must not contain MQTT wildcards"),
    ('[mqtt]\nurl = "mqtt://broker"\nqos = 2\n', "unknown key(s) qos"),
    ('[mqtt]\nurl = "mqtts://broker"\nca_file = "/nonexistent/ca.pem"\n', "ca_file /nonexistent/ca.pem not found"),
    ('[[webhook]]\nurl = "ftp://x"\n', "url must be http(s)://HOST/PATH"),
    ('[[webhook]]\nurl = "http://x/h"\nrules = ["ghost"]\n', "rules ['ghost'] are not [[alert]] names"),
    ('[outbox]\nmax_messages = 0\n', "max_messages must be an integer >= 1"),
])
def test_bad_alert_tables_fail_with_one_line(tmp_path, toml, fragment):
    p = tmp_path / "cameras.toml"
    p.write_text('[[camera]]\nname = "door"\nurl = "door.mp4"\n' + toml)
    with pytest.raises(InputError) as exc:
        load_config(p, env={})
    message = str(exc.value)
    assert fragment in message and "\n" not in message and "secret" not in message


def test_the_issue_example_loads(tmp_path):
    p = tmp_path / "cameras.toml"
    p.write_text("""
[[camera]]
name = "front-door"
url = "door.mp4"

[[alert]]
name = "person at the door"
cameras = ["front-*"]
match = "person"
exclude = ["cat"]
min_confidence = -1.5
min_duration_s = 2
cooldown_s = 60
active = "22:00-06:00"

[mqtt]
url = "mqtts://broker.example:8883"
topic_prefix = "edgecap"
username_env = "MQ_USER"
password_env = "MQ_PASS"
client_id = "edge-1"

[[webhook]]
url = "https://hooks.example/edgecap/T0KEN"
rules = ["person at the door"]
secret_env = "HOOK_SECRET"
""")
    alerts = load_config(p, env={"MQ_USER": "u", "MQ_PASS": "hunter2", "HOOK_SECRET": "s3"}).alerts
    (r,) = alerts.rules
    assert (r.cameras, r.match, r.exclude, r.cooldown_s, len(r.active)) == (("front-*",), ("person",), ("cat",), 60, 1)
    assert alerts.mqtt.tls and alerts.mqtt.port == 8883 and alerts.mqtt.password == "hunter2"
    for secret in ("hunter2", "s3", "T0KEN"):  # credentials (and a webhook's token path) stay out of reprs and logs
        assert secret not in repr(alerts)


# -- alert events in the store ---------------------------------------------------------------------------------

def test_a_matching_scene_stores_one_alert_linked_to_it_and_searchable(tmp_path):
    db = tmp_path / "e.sqlite"
    with EventStore(db) as store:
        alerter = Alerter(store, [rule(match="red")])
        alerter.put(scene("a red car", uid="car", closed=False))
        alerter.put(scene("a red car", uid="car"))
        alerter.put(scene("a blue van", uid="van", start=T0 + timedelta(seconds=10)))
    (alert,) = search(db, kinds="alert")
    assert (alert.camera, alert.caption, alert.details) == \
        ("front-door", "a red car", {"rule": "r", "scene_uid": "car"})
    assert [e.uid for e in search(db, "red", kinds="alert")] == [alert.uid]


def test_a_detection_alert_carries_the_prompt_and_the_boxes(tmp_path):
    # an <OD> camera's alert says where the object is: its event and its MQTT/webhook payload hold prompt and boxes
    db = tmp_path / "e.sqlite"
    person = od_scene("person", "car")
    person.details["prompt"] = "<OD>"
    with EventStore(db, outbox=Router(hook_settings())) as store:
        Alerter(store, [rule(objects=["person"])]).put(person)
    (alert,) = search(db, kinds="alert")
    assert alert.details["prompt"] == "<OD>" and alert.details["objects"] == person.details["objects"]
    (payload,) = [json.loads(p) for _, t, p in outbox_rows(db) if t == "edgecap/alerts"]
    assert payload["prompt"] == "<OD>" and [o["label"] for o in payload["objects"]] == ["person", "car"]
    assert payload["objects"][0] == {"label": "person", "x0": 1.0, "y0": 2.0, "x1": 30.0, "y1": 40.0}


# -- outbox: the same transaction as the event ----------------------------------------------------------------

def outbox_rows(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT dest, topic, payload FROM outbox ORDER BY id").fetchall()


def hook_settings(**mqtt):
    return parse_alert_settings({"alert": [{"name": "r", "match": "red"}],
                                 "mqtt": {"url": "mqtt://127.0.0.1:1", "node": "n1", **mqtt},
                                 "webhook": [{"url": "http://127.0.0.1:1/h", "name": "h"}]}, "x", {})


def test_messages_are_committed_with_their_event_and_only_then(tmp_path):
    db = tmp_path / "e.sqlite"
    settings = hook_settings()
    boom = {"on": False}

    def hook(conn, before, after, updated):
        if boom["on"]:
            raise RuntimeError("disk gone mid-transaction")
        return Router(settings)(conn, before, after, updated)

    with EventStore(db, outbox=hook) as store:
        alerter = Alerter(store, settings.rules)
        alerter.put(scene("a red car", uid="car"))
        store.flush(10)
        boom["on"] = True
        ack = store.put(scene("a blue van", uid="van"))
        assert ack.settled(30) and ack.error  # the poison write was isolated and dropped ...
    assert {e.uid for e in search(db)} >= {"car"} and "van" not in {e.uid for e in search(db)}
    rows = outbox_rows(db)  # ... and left no message behind
    topics = [(d, t) for d, t, _ in rows]
    assert ("mqtt", "edgecap/events") in topics and ("mqtt", "edgecap/alerts") in topics
    assert ("webhook:h", "alert") in topics and not any("van" in p for _, _, p in rows)
    (alert,) = [json.loads(p) for d, t, p in rows if t == "edgecap/alerts"]
    car = search(db, kinds="scene")[0]
    assert (alert["scene_id"], alert["scene_uid"], alert["rule"], alert["camera"]) == (car.id, "car", "r",
                                                                                      "front-door")


def test_events_messages_follow_frigate_new_update_end(tmp_path):
    db = tmp_path / "e.sqlite"
    with EventStore(db, outbox=Router(hook_settings())) as store:
        for s, closed in ((0, False), (5, False), (9, True)):
            store.put(scene("a cat", uid="cat", seconds=s, closed=closed)).wait(10)
    changes = [json.loads(p) for _, t, p in outbox_rows(db) if t == "edgecap/events"]
    assert [c["type"] for c in changes] == ["new", "update", "end"]
    assert changes[1]["before"]["source_end_s"] == 0 and changes[1]["after"]["source_end_s"] == 5
    assert len({c["id"] for c in changes}) == 3 and all(c["node"] == "n1" for c in changes)
    retained = [(t, p) for _, t, p in outbox_rows(db) if t.endswith("/caption")]
    assert retained == [("edgecap/front-door/caption", "a cat")]  # once per new caption, not per update


def test_an_empty_answer_clears_the_retained_caption(tmp_path):
    # an <OD> answer with no objects is an empty caption: the retained topic must not keep the last objects seen
    db = tmp_path / "e.sqlite"
    with EventStore(db, outbox=Router(hook_settings())) as store:
        store.put(scene("person", uid="a")).wait(10)
        store.put(scene("", uid="b", start=T0 + timedelta(seconds=10))).wait(10)
    retained = [(t, p) for _, t, p in outbox_rows(db) if t.endswith("/caption")]
    assert retained == [("edgecap/front-door/caption", "person"), ("edgecap/front-door/caption", "")]


# -- delivery worker --------------------------------------------------------------------------------------------

class FlakyTransport:
    """Confirms rows only while ``up`` is set; records every submission in order."""

    def __init__(self, window=3):
        self.up = threading.Event()
        self.window = window
        self.held: list[Pending] = []
        self.sent: list[int] = []
        self.cond = threading.Condition()

    def room(self):
        return self.window - len(self.held)

    def submit(self, rows):
        self.held += rows

    def take_confirmed(self, timeout):
        if not self.up.wait(timeout) or not self.held:
            return []
        done, self.held = [r.id for r in self.held], []
        with self.cond:
            self.sent += done
            self.cond.notify_all()
        return done

    def wait_sent(self, n, timeout=60):
        with self.cond:
            return self.cond.wait_for(lambda: len(self.sent) >= n, timeout)

    def close(self, timeout):
        pass


def fill_outbox(db, n, dest="mqtt"):
    with EventStore(db, outbox=lambda conn, b, a, u: [_message(dest, a.uid)]) as store:
        for i in range(n):
            store.put(scene("a car", uid=f"e{i:03d}", start=T0 + timedelta(seconds=i)))


def _message(dest, uid):
    from edgecap.events.model import OutboxMessage

    return OutboxMessage(dest, "t", uid)


def test_delivery_waits_while_down_then_sends_everything_in_order_and_empties_the_outbox(tmp_path):
    db = tmp_path / "e.sqlite"
    fill_outbox(db, 10)
    transport = FlakyTransport()
    worker = DeliveryWorker(db, "mqtt", transport, poll_s=0.01).start()
    try:
        assert not transport.wait_sent(1, timeout=0.3)  # down: nothing confirmed, nothing deleted
        assert len(outbox_rows(db)) == 10
        transport.up.set()
        assert transport.wait_sent(10)
    finally:
        worker.stop(5)
    assert transport.sent == sorted(transport.sent) and len(set(transport.sent)) == 10
    assert outbox_rows(db) == [] and worker.delivered == 10


def test_undelivered_messages_wait_for_the_next_worker(tmp_path):
    db = tmp_path / "e.sqlite"
    fill_outbox(db, 4)
    DeliveryWorker(db, "mqtt", FlakyTransport(), poll_s=0.01).start().stop(0.2)  # a run with the broker down
    assert len(outbox_rows(db)) == 4
    second = FlakyTransport()
    second.up.set()
    worker = DeliveryWorker(db, "mqtt", second, poll_s=0.01).start()
    try:
        assert second.wait_sent(4)
    finally:
        worker.stop(5)
    assert [p for _, _, p in outbox_rows(db)] == []


def test_the_outbox_bound_drops_the_oldest_counts_them_and_records_a_system_event(tmp_path):
    db = tmp_path / "e.sqlite"
    fill_outbox(db, 8)
    recorded: list[Event] = []
    worker = DeliveryWorker(db, "mqtt", FlakyTransport(), bounds=OutboxSettings(max_messages=5),
                            record=recorded.append, poll_s=0.01)
    worker._enforce()  # the worker's periodic check, run once here instead of waiting for its timer
    assert [p for _, _, p in outbox_rows(db)] == ["e003", "e004", "e005", "e006", "e007"]
    assert worker.dropped == 3 and recorded[0].kind == "outbox_drop" and recorded[0].details["dropped"] == 3
    with sqlite3.connect(db) as conn:  # the age bound: the 5 rows left become 100 s old
        conn.execute("UPDATE outbox SET created_unix = created_unix - 100")
    assert Outbox(db).enforce("mqtt", OutboxSettings(max_age_s=50), time.time()) == 5


# -- webhooks ---------------------------------------------------------------------------------------------------

class Receiver:
    """A loopback HTTP receiver that verifies signatures; answers ``fail_first`` requests with 500."""

    def __init__(self, secret, fail_first=0):
        self.secret = secret
        self.fail_first = fail_first
        self.bodies: list[dict] = []
        self.bad_signatures = 0
        self.requests = 0
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.cond:
                    outer.requests += 1
                    failing = outer.requests <= outer.fail_first
                    ok = verify(outer.secret, self.headers[TIMESTAMP_HEADER], body, self.headers[SIGNATURE_HEADER])
                    if ok and not failing:
                        outer.bodies.append(json.loads(body))
                    outer.bad_signatures += not ok
                    outer.cond.notify_all()
                self.send_response(500 if failing else (204 if ok else 401))
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n, timeout=60):
        with self.cond:
            return self.cond.wait_for(lambda: len(self.bodies) >= n, timeout)


def test_signature_round_trip_and_tampering():
    body, stamp = b'{"id": "a"}', "1700000000"
    good = sign("k", stamp, body)
    assert verify("k", stamp, body, good, now=1700000010)
    assert not verify("k", stamp, body + b" ", good, now=1700000010)
    assert not verify("other", stamp, body, good, now=1700000010)
    assert not verify("k", stamp, body, good, now=1700009999)  # a replay long after


def test_webhook_alerts_are_signed_retried_and_delivered_in_order(tmp_path):
    receiver = Receiver("s3cret", fail_first=2)
    settings = AlertSettings(rules=(rule(match="red"),),
                             webhooks=(WebhookSettings(name="h", url=receiver.url, secret="s3cret", timeout_s=5),))
    db = tmp_path / "e.sqlite"
    with EventStore(db, outbox=Router(settings)) as store:
        alerter = Alerter(store, settings.rules)
        for i in range(3):
            alerter.put(scene(f"a red car number {i}", uid=f"car{i}", start=T0 + timedelta(seconds=i)))
        alerter.put(scene("a blue van", uid="van"))
    transport = WebhookTransport(settings.webhooks[0], backoff_s=0.05)
    worker = DeliveryWorker(db, "webhook:h", transport, poll_s=0.01).start()
    try:
        assert receiver.wait(3)
    finally:
        worker.stop(5)
        receiver.server.shutdown()
    assert [b["scene_uid"] for b in receiver.bodies] == ["car0", "car1", "car2"]
    assert receiver.bad_signatures == 0 and transport.attempts == 5 and outbox_rows(db) == []


def test_a_wrong_secret_is_refused_by_the_receiver_and_the_alert_not_retried_forever(tmp_path):
    receiver = Receiver("right")
    hook = WebhookSettings(name="h", url=receiver.url, secret="wrong", timeout_s=5)
    transport = WebhookTransport(hook, backoff_s=0.05)
    transport.submit([Pending(1, "alert", '{"id": "x"}', False, 0.0)])
    assert transport.take_confirmed(1.0) == [1]  # 401: dropped with an error line, the queue moves on
    receiver.server.shutdown()
    assert receiver.bad_signatures == 1 and receiver.bodies == []
