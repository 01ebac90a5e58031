"""MQTT against a real mosquitto on a loopback port: `edgecap run` on a generated clip with a colour-word rule
publishes exactly one alert per matching scene; a broker outage in the middle of a run and a SIGKILL of edgecap
lose nothing; availability, retained captions and Home Assistant discovery."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time

import pytest

from mosquitto import Mosquitto, Recorder, edgecap_process, free_port, mqtt_skip_or_fail, wait_until

from edgecap import synth
from edgecap.cli import main
from edgecap.events import search

SEED = synth.HELD_OUT_SEED_START + 11  # 10 scenes; "yellow" is in 5 of them
WORD = "yellow"


@pytest.fixture(autouse=True)
def _needs_mqtt():
    mqtt_skip_or_fail()


def write_config(tmp_path, clip, port, *, realtime=False, extra=""):
    cfg = tmp_path / "cameras.toml"
    cfg.write_text(f"""
[[camera]]
name = "gate"
url = "{clip}"
realtime = {str(realtime).lower()}

[[alert]]
name = "yellow thing"
match = "{WORD}"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
topic_prefix = "edgecap"
node = "node-a"
{extra}
""")
    return cfg


def clip_of(tmp_path, duration_s, name="clip.mp4"):
    clip = tmp_path / name
    synth.render_clip(clip, seed=SEED, duration_s=duration_s)
    return clip


def alerts_of(rec):
    return [json.loads(p) for p in rec.on("edgecap/alerts")]


def matching_scenes(db):
    return {e.uid: e for e in search(db, WORD, kinds="scene", limit=1000)}


def test_run_publishes_exactly_one_alert_per_matching_scene(tmp_path):
    clip = clip_of(tmp_path, 40)
    db = tmp_path / "e.sqlite"
    with Mosquitto() as broker, Recorder(broker.port, "#") as rec:
        cfg = write_config(tmp_path, clip, broker.port, extra="home_assistant = true")
        assert main(["run", "--config", str(cfg), "--db", str(db)]) == 0
        matching = matching_scenes(db)
        scenes = search(db, kinds="scene", limit=1000)
        assert matching and len(matching) < len(scenes)  # the clip has scenes of both sorts
        # "offline" is published after delivery drained: every alert is in before it
        assert rec.wait_for(lambda m: rec.on("edgecap/available")[-1:] == ["offline"], timeout=60)
        alerts = alerts_of(rec)
    assert sorted(a["scene_uid"] for a in alerts) == sorted(matching)  # one each, none for the others
    for a in alerts:
        s = matching[a["scene_uid"]]
        assert (a["camera"], a["rule"], a["scene_id"], a["caption"], a["thumbnail_url"]) == \
            ("gate", "yellow thing", s.id, s.caption, None)
        assert a["start"] and a["id"] and WORD in a["caption"]
    stored = {e.uid for e in search(db, kinds="alert", limit=1000)}
    assert {a["id"] for a in alerts} == stored
    # Frigate-style scene changes: every scene ends with an "end"; the last caption is on the camera's topic
    changes = [json.loads(p) for p in rec.on("edgecap/events")]
    ends = {c["after"]["uid"] for c in changes if c["type"] == "end"}
    assert ends == {s.uid for s in scenes} and all(c["node"] == "node-a" for c in changes)
    assert rec.on("edgecap/gate/caption")[-1] == max(scenes, key=lambda e: e.start).caption
    assert rec.on("edgecap/available")[0] == "online"
    discovery = [json.loads(p) for t, p, _ in rec.messages if t.startswith("homeassistant/")]
    assert {d["state_topic"] for d in discovery} == {"edgecap/gate/caption", "edgecap/gate/yellow thing/alert"}
    assert rec.on("edgecap/gate/yellow thing/alert") == ["ON"] * len(matching)


def test_retained_caption_and_status_reach_a_late_subscriber(tmp_path):
    clip = clip_of(tmp_path, 8)
    with Mosquitto() as broker:
        cfg = write_config(tmp_path, clip, broker.port)
        assert main(["run", "--config", str(cfg), "--db", str(tmp_path / "e.sqlite")]) == 0
        with Recorder(broker.port, "edgecap/gate/#") as late:
            assert late.wait_for(lambda m: {t for t, _, _ in m} >= {"edgecap/gate/caption", "edgecap/gate/status"})
            status = json.loads(late.on("edgecap/gate/status")[-1])
    assert all(retain for _, _, retain in late.messages) and status["status"] == "finished"


def run_edgecap(cfg, db) -> subprocess.Popen:
    return edgecap_process("run", "--config", str(cfg), "--db", str(db), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)


@pytest.mark.slow
def test_a_broker_outage_mid_run_loses_no_alert(tmp_path):
    clip = clip_of(tmp_path, 40)
    db = tmp_path / "e.sqlite"
    with Mosquitto() as broker, Recorder(broker.port, "edgecap/#") as rec:
        cfg = write_config(tmp_path, clip, broker.port, realtime=True)  # paced: the run lasts ~40 s
        proc = run_edgecap(cfg, db)
        try:
            assert rec.wait_for(lambda m: len(alerts_of(rec)) >= 1, timeout=120)
            assert wait_until(broker.saved)  # the recorder's session is on disk: it survives the kill
            broker.kill()
            time.sleep(10)  # the outage itself (nothing is asserted on time)
            broker.start()
            assert proc.wait(timeout=300) == 0, proc.stderr.read()
        finally:
            proc.kill()
        matching = matching_scenes(db)
        assert len(matching) >= 3
        assert rec.wait_for(lambda m: {a["scene_uid"] for a in alerts_of(rec)} >= set(matching), timeout=60), \
            (sorted(matching), alerts_of(rec))
    assert _count(db, "SELECT COUNT(*) FROM outbox") == 0


@pytest.mark.slow
def test_alerts_left_by_a_sigkill_are_delivered_at_the_next_start(tmp_path):
    clip = clip_of(tmp_path, 40)
    db = tmp_path / "e.sqlite"
    port = free_port()  # no broker yet: every message waits in the outbox
    proc = run_edgecap(write_config(tmp_path, clip, port, realtime=True), db)
    try:
        # search, not a raw query: the file may exist before its schema does
        assert wait_until(lambda: db.exists() and len(search(db, kinds="alert")) >= 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    stored = {e.uid for e in search(db, kinds="alert", limit=1000)}
    assert stored and _count(db, "SELECT COUNT(*) FROM outbox") > 0
    with Mosquitto(port) as broker, Recorder(broker.port, "edgecap/#") as rec:
        short = tmp_path / "short.mp4"
        synth.render_clip(short, seed=SEED + 1, duration_s=3)
        cfg = write_config(tmp_path, short, port)
        assert main(["run", "--config", str(cfg), "--db", str(db)]) == 0
        assert rec.wait_for(lambda m: {a["id"] for a in alerts_of(rec)} >= stored, timeout=60)
        ids = [a["id"] for a in alerts_of(rec)]
    assert ids[:len(stored)] == sorted(stored, key=ids.index)  # the old ones first, in order
    assert _count(db, "SELECT COUNT(*) FROM outbox") == 0


@pytest.mark.slow
def test_a_killed_edgecap_is_announced_offline_by_its_last_will(tmp_path):
    clip = clip_of(tmp_path, 40)
    with Mosquitto() as broker, Recorder(broker.port, "edgecap/available") as rec:
        proc = run_edgecap(write_config(tmp_path, clip, broker.port, realtime=True), tmp_path / "e.sqlite")
        try:
            assert rec.wait_for(lambda m: rec.on("edgecap/available")[-1:] == ["online"], timeout=120)
            proc.send_signal(signal.SIGKILL)
            assert rec.wait_for(lambda m: rec.on("edgecap/available")[-1:] == ["offline"], timeout=120)
        finally:
            proc.kill()
            proc.wait(30)


def _count(db, sql):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchone()[0]
