"""Many nodes, one log: two `edgecap run` nodes publish through a real mosquitto, `edgecap ingest` writes both
into one database, idempotently (duplicates and older copies change nothing) and with the node's name kept."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from mosquitto import Mosquitto, edgecap_process, mqtt_skip_or_fail, wait_until

from edgecap import synth
from edgecap.alerts.ingest import Ingestor, parse_change
from edgecap.alerts.settings import parse_mqtt
from edgecap.cli import main
from edgecap.events import search

CLIENT_ID = "central-ingest"


@pytest.fixture(autouse=True)
def _needs_mqtt():
    mqtt_skip_or_fail()


def node_config(tmp_path, node, camera, port, seed):
    clip = tmp_path / f"{node}.mp4"
    synth.render_clip(clip, seed=seed, duration_s=20)
    cfg = tmp_path / f"{node}.toml"
    cfg.write_text(f'[[camera]]\nname = "{camera}"\nurl = "{clip}"\n\n[[alert]]\nname = "cars"\nmatch = "car"\n\n'
                   f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\nnode = "{node}"\n')
    return cfg


class IngestThread:
    """An in-process Ingestor on a thread (the persistent session is created at its first subscription)."""

    def __init__(self, port, db):
        self.ingestor = Ingestor(parse_mqtt({"url": f"mqtt://127.0.0.1:{port}", "client_id": CLIENT_ID}, "t", {}),
                                 db)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.ingestor.run, args=(self.stop,), daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.ingestor.subscribed.wait(30)
        return self.ingestor

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def rows(db):
    return {e.uid: e for e in search(db, limit=100_000)} if Path(db).exists() else {}


def test_two_nodes_through_one_broker_into_one_database(tmp_path):
    central = tmp_path / "central.sqlite"
    with Mosquitto() as broker:
        with IngestThread(broker.port, central):  # subscribe once: the broker keeps the session from now on
            pass
        # both nodes run while ingest is down: their messages wait in the broker for its session
        for node, camera, seed in (("node-a", "gate", synth.HELD_OUT_SEED_START + 21),
                                   ("node-b", "yard", synth.HELD_OUT_SEED_START + 22)):
            cfg = node_config(tmp_path, node, camera, broker.port, seed)
            assert main(["run", "--config", str(cfg), "--db", str(tmp_path / f"{node}.sqlite")]) == 0
        nodes = {n: rows(tmp_path / f"{n}.sqlite") for n in ("node-a", "node-b")}
        expected = {uid: (n, e) for n, evs in nodes.items() for uid, e in evs.items()}
        proc = edgecap_process("ingest", f"mqtt://127.0.0.1:{broker.port}", "--prefix", "edgecap", "--db",
                               str(central), "--client-id", CLIENT_ID, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            done = wait_until(lambda: _same(rows(central), expected))
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert done, err
    assert proc.returncode == 0 and "from 2 nodes (node-a, node-b)" in out, (out, err)
    got = rows(central)
    assert {e.camera for e in got.values()} == {"gate", "yard"}
    assert {e.details["node"] for e in got.values()} == {"node-a", "node-b"}
    assert {e.kind for e in got.values()} >= {"scene", "alert", "source_up"}


def _same(got, expected):
    """Every node event is in the central log in its final state, with its node."""
    if set(got) != set(expected):
        return False
    return all((g.caption, g.closed, g.end, g.kind, g.camera, g.details.get("node")) ==
               (e.caption, e.closed, e.end, e.kind, e.camera, n) for (n, e), g in
               ((expected[u], got[u]) for u in expected))


def change(uid, updated, caption, *, node="node-a", closed=False):
    after = {"uid": uid, "kind": "scene", "camera": "gate", "start": "2026-05-01T12:00:00Z", "end": None,
             "caption": caption, "closed": closed, "details": {}}
    return json.dumps({"id": f"{node}:{uid}:{updated}", "type": "update", "before": after, "after": after,
                       "node": node, "updated": updated}).encode()


def test_ingest_is_idempotent_by_event_id_and_update_counter(tmp_path):
    import paho.mqtt.client as mqtt

    central = tmp_path / "central.sqlite"
    with Mosquitto() as broker, IngestThread(broker.port, central) as ingestor:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            for payload in (change("s1", 1, "a car"), change("s1", 3, "a red car", closed=True),
                            change("s1", 2, "a stale copy"),  # older than what is stored: ignored
                            change("s1", 3, "a red car", closed=True),  # a duplicate: ignored
                            b"not json", change("s2", 1, "a dog", node="node-b")):
                pub.publish("edgecap/events", payload, qos=1).wait_for_publish(30)
            assert wait_until(lambda: ingestor.stats.received == 6)
        finally:
            pub.disconnect()
            pub.loop_stop()
    got = rows(central)
    assert (got["s1"].caption, got["s1"].closed, got["s1"].details) == \
        ("a red car", True, {"node": "node-a", "node_updated": 3})
    assert got["s2"].details["node"] == "node-b"
    s = ingestor.stats
    assert (s.applied, s.duplicates, s.malformed, s.nodes) == (3, 2, 1, {"node-a", "node-b"})


@pytest.mark.parametrize("payload", [b"[]", b'{"after": {}}', b'{"after": {"uid": "x"}, "node": "n"}',
                                     b'{"after": {"uid": "x"}, "node": "n", "updated": true}'])
def test_malformed_changes_are_refused(payload):
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_change(payload)
