"""Similar scenes: embeddings stored with their events (schema v4), the nearest events by cosine, retention deleting
embeddings with their events, the runtime storing each new scene's pooled embedding, and the API route."""

from __future__ import annotations

import http.client
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from edgecap import synth
from edgecap.captioner import Caption, EncoderOutput
from edgecap.errors import InputError
from edgecap.events import Event, EventStore, migrate, prune, search
from edgecap.events.schema import MIGRATIONS, SCHEMA_VERSION
from edgecap.events.similar import SimilarIndex, embedding_blob
from edgecap.runtime import CameraSpec, GateConfig, RunOptions, Runtime
from edgecap.runtime.gate import grey_grid
from edgecap.sources import SourceConfig

try:  # the headless Chromium of the review page's browser tests (skips, or fails under CI, without a browser)
    from test_serve_browser import driver, wait  # noqa: F401 - a fixture, used by name
    BROWSER = True
except pytest.skip.Exception:  # no web extra: the API tests below skip too
    BROWSER = False

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & "quotes"'


def scene(uid: str, minute: float = 0.0, caption: str = "a car") -> Event:
    at = T0 + timedelta(minutes=minute)
    return Event(uid=uid, kind="scene", camera="gate", start=at, end=at + timedelta(seconds=30), caption=caption)


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float64)
    return v / np.linalg.norm(v)


def stored(db: Path) -> dict[str, np.ndarray]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT e.uid, v.vec FROM event_embeddings v JOIN events e ON e.id = v.event_id")
        return {uid: np.frombuffer(blob, dtype=np.float16) for uid, blob in rows}


# -- schema and store -------------------------------------------------------------------------------------------

def test_a_v3_log_migrates_to_v4_keeping_events_outbox_and_search(tmp_path):
    db = tmp_path / "v3.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for step in MIGRATIONS[:3]:
        step(conn)
    conn.execute("INSERT INTO schema_version (version) VALUES (3)")
    conn.execute("INSERT INTO events (uid, kind, camera, start_unix, caption, updated) "
                 "VALUES ('old', 'scene', 'gate', ?, 'a red car at the gate', 1)", (T0.timestamp(),))
    conn.execute("INSERT INTO outbox (dest, topic, payload, created_unix) VALUES ('mqtt', 't', '{}', 0)")
    conn.execute("COMMIT")
    conn.close()
    assert migrate(db) == SCHEMA_VERSION == 4
    (old,) = search(db, "cars")
    assert old.uid == "old" and old.caption == "a red car at the gate"
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT dest, topic FROM outbox").fetchall() == [("mqtt", "t")]
        assert raw.execute("SELECT COUNT(*) FROM event_embeddings").fetchone() == (0,)
    assert SimilarIndex(db).nearest(old.id).reason  # no embedding: a reason, not an error
    with EventStore(db) as store:  # the migrated log takes embeddings
        store.put(scene("new", 1), embedding=unit(1, 0, 0)).wait(5)
    assert set(stored(db)) == {"new"}


def test_the_store_writes_a_normalized_embedding_and_later_writes_keep_it(tmp_path):
    db = tmp_path / "ev.sqlite"
    with EventStore(db) as store:
        store.put(scene("a"), embedding=np.array([3.0, 4.0], dtype=np.float32))
        store.put(scene("a", caption="a car, later"))  # the scene extended: no embedding given, the first one stays
        store.put(scene("b")).wait(5)
        store.flush(5)
    vecs = stored(db)
    assert set(vecs) == {"a"}
    np.testing.assert_allclose(vecs["a"], [0.6, 0.8], atol=1e-3)


@pytest.mark.parametrize("bad", [np.zeros(4), np.array([1.0, np.nan]), np.ones((2, 2)), np.array([])])
def test_an_embedding_that_has_no_direction_is_refused_at_put(tmp_path, bad):
    with EventStore(tmp_path / "ev.sqlite") as store:
        with pytest.raises(InputError, match="embedding"):
            store.put(scene("a"), embedding=bad)
    with pytest.raises(InputError):
        embedding_blob(bad)


# -- nearest ------------------------------------------------------------------------------------------------------

@pytest.fixture
def vectors_log(tmp_path) -> Path:
    """Five scenes at known angles in the plane (0, 10, 40, 90, 180 degrees), one status event, one 3-D vector."""
    db = tmp_path / "ev.sqlite"
    with EventStore(db) as store:
        for i, deg in enumerate((0, 10, 40, 90, 180)):
            rad = np.radians(deg)
            store.put(scene(f"d{deg}", i, f"scene at {deg}"), embedding=np.array([np.cos(rad), np.sin(rad)]))
        store.put(Event(uid="up", kind="source_up", camera="gate", start=T0, end=T0))
        store.put(scene("other-model", 9), embedding=unit(1, 0, 0)).wait(5)
    return db


def ids_by_uid(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT uid, id FROM events"))


def test_nearest_orders_by_cosine_and_leaves_out_the_event_itself(vectors_log):
    ids = ids_by_uid(vectors_log)
    index = SimilarIndex(vectors_log)
    found = index.nearest(ids["d0"], limit=10)
    assert found.reason is None
    # the 3-D vector of another model is never compared with 2-D ones; the status event has no vector
    assert [ev.uid for ev, _ in found.events] == ["d10", "d40", "d90", "d180"]
    np.testing.assert_allclose([s for _, s in found.events], np.cos(np.radians([10, 40, 90, 180])), atol=2e-3)
    assert [ev.uid for ev, _ in index.nearest(ids["d90"], limit=2).events] == ["d40", "d10"]
    assert index.nearest(ids["other-model"]).events == []


def test_an_unknown_event_is_none_and_one_without_embedding_has_a_reason(vectors_log):
    index = SimilarIndex(vectors_log)
    assert index.nearest(10_000) is None
    found = index.nearest(ids_by_uid(vectors_log)["up"])
    assert found.events == [] and "no stored image embedding" in found.reason
    with pytest.raises(InputError):
        index.nearest(1, limit=0)


def test_the_index_sees_events_written_after_it_loaded(vectors_log):
    index = SimilarIndex(vectors_log)
    d0 = ids_by_uid(vectors_log)["d0"]
    assert index.nearest(d0, limit=1).events[0][0].uid == "d10"
    with EventStore(vectors_log) as store:
        store.put(scene("d1", 20), embedding=np.array([np.cos(np.radians(1)), np.sin(np.radians(1))])).wait(5)
    assert index.nearest(d0, limit=1).events[0][0].uid == "d1"


def test_retention_deletes_embeddings_with_their_events_and_the_index_forgets_them(vectors_log):
    index = SimilarIndex(vectors_log)
    d0 = ids_by_uid(vectors_log)["d0"]
    assert index.nearest(d0, limit=1).events[0][0].uid == "d10"  # loaded before the prune
    now = datetime.now(timezone.utc).timestamp()
    with sqlite3.connect(vectors_log) as conn:  # d10 and d40 a month old, the others new; then prune by age
        conn.execute("UPDATE events SET start_unix = ?, end_unix = ? WHERE uid IN ('d10', 'd40')",
                     (now - 86400 * 30, now - 86400 * 30))
        conn.execute("UPDATE events SET start_unix = ?, end_unix = ? WHERE uid NOT IN ('d10', 'd40')", (now, now))
    report = prune(vectors_log, older_than=timedelta(days=7))
    assert report.events_deleted == 2, report
    assert set(stored(vectors_log)) == {"d0", "d90", "d180", "other-model"}
    with sqlite3.connect(vectors_log) as conn:  # no embedding row is left without its event
        assert conn.execute("SELECT COUNT(*) FROM event_embeddings WHERE event_id NOT IN "
                            "(SELECT id FROM events)").fetchone() == (0,)
    assert [ev.uid for ev, _ in index.nearest(d0, limit=2).events] == ["d90", "d180"]


# -- the runtime --------------------------------------------------------------------------------------------------

class EncodingBackend:
    """A backend that encodes first: the pooled embedding is a 4x4 grid of mean brightness, the caption names its
    brightest and darkest cells (content words of letters, so that scenes differ)."""

    provenance = {"model": "fake-encoder", "precision": "fp32"}
    LETTERS = "abcdefghijklmnop"

    def __init__(self):
        self.encoded = 0

    def encode_images(self, images, *, timings=None):
        self.encoded += len(images)
        pooled = np.stack([grey_grid(np.asarray(img)).reshape(-1)[:16] + 1.0 for img in images]).astype(np.float32)
        return EncoderOutput([pooled[:, None, None, :]], [pooled[:, None, None, :]], pooled)

    def caption_encoded(self, enc, *, timings=None, **_):
        return [Caption(f"bright{self.LETTERS[int(p.argmax())]} dark{self.LETTERS[int(p.argmin())]}", [1],
                        {"total": 1.0}, -0.1) for p in enc.pooled]

    def caption_batch(self, images, **options):
        return self.caption_encoded(self.encode_images(images), **options)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "gate.mp4"
    synth.render_clip(path, seed=synth.HELD_OUT_SEED_START + 31, duration_s=12.0)
    return path


def run_clip(backend, clip: Path, db: Path, **options) -> None:
    spec = CameraSpec(SourceConfig("gate", str(clip), interval_s=1.0), GateConfig(max_interval_s=0.0, settle_samples=0))
    with EventStore(db) as store:
        assert Runtime(backend, [spec], store, options=RunOptions(**options)).run() == 0


def test_the_runtime_stores_the_pooled_embedding_of_every_scene(clip, tmp_path):
    db = tmp_path / "ev.sqlite"
    backend = EncodingBackend()
    run_clip(backend, clip, db)
    scenes = search(db, kinds="scene", limit=100)
    assert len(scenes) >= 2 and backend.encoded >= len(scenes)
    vecs = stored(db)
    assert set(vecs) == {ev.uid for ev in scenes}
    for v in vecs.values():
        assert v.shape == (16,) and abs(float(np.linalg.norm(v.astype(np.float64))) - 1.0) < 1e-3


def test_no_embeddings_are_stored_when_the_run_says_so_or_the_backend_cannot_encode(clip, tmp_path):
    run_clip(EncodingBackend(), clip, tmp_path / "off.sqlite", embeddings=False)
    assert search(tmp_path / "off.sqlite", kinds="scene") and stored(tmp_path / "off.sqlite") == {}

    class CaptionOnly:
        provenance = {"model": "caption-only"}

        def caption_batch(self, images, **_):
            return [Caption(f"scene {int(np.asarray(i).mean()) // 16}", [1], {}, -0.1) for i in images]

    run_clip(CaptionOnly(), clip, tmp_path / "plain.sqlite")
    assert search(tmp_path / "plain.sqlite", kinds="scene") and stored(tmp_path / "plain.sqlite") == {}


def test_the_runtime_stores_embeddings_with_the_bundled_demo_model(clip, tmp_path):
    from edgecap import Captioner

    db = tmp_path / "ev.sqlite"
    run_clip(Captioner("demo"), clip, db)
    scenes = search(db, kinds="scene", limit=100)
    vecs = stored(db)
    assert scenes and set(vecs) == {ev.uid for ev in scenes}
    index = SimilarIndex(db)
    found = index.nearest(scenes[0].id, limit=100)
    assert len(found.events) == len(scenes) - 1 and all(-1.01 <= s <= 1.01 for _, s in found.events)


# -- the API ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, review_clips, write_log, start_server):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    db = tmp_path_factory.mktemp("similar") / "events.sqlite"
    write_log(db, review_clips["gate"])
    with EventStore(db) as store:  # two hand-made scenes with known vectors, one a near copy of the other
        store.put(scene("near-a", caption="a plain car"), embedding=unit(1, 2, 3, 4))
        store.put(scene("near-b", caption=HOSTILE), embedding=unit(1, 2, 3, 4.1)).wait(5)
    srv = start_server(db)
    srv.db = db
    return srv


def api(server, path: str, *, token: bool = True) -> tuple[int, dict]:
    """GET with (or without) the server's token: the status and the JSON body."""
    parts = urlsplit(server.base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {server.token}"} if token else {})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(body) if body.startswith(b"{") else {}


def test_api_similar_answers_with_the_nearest_events_in_the_events_shape(server):
    ids = ids_by_uid(server.db)
    status, body = api(server, f"/api/events/{ids['near-a']}/similar?limit=5")
    assert status == 200 and body["reason"] is None and body["next_cursor"] is None
    assert body["events"][0]["uid"] == "near-b"  # the run's scenes have 192-D vectors: never compared with 4-D
    assert len(body["events"]) == 1
    _, listing = api(server, "/api/events?limit=1")
    assert set(listing["events"][0]) <= set(body["events"][0]) and "similarity" in body["events"][0]

    run = [ev for ev in search(server.db, kinds="scene", limit=100) if "model" in ev.details]  # by `edgecap run`
    assert len(run) >= 2
    status, body = api(server, f"/api/events/{run[0].id}/similar?limit=3")
    assert status == 200 and len(body["events"]) == min(3, len(run) - 1)
    assert {ev["id"] for ev in body["events"]} < {ev.id for ev in run} - {run[0].id}
    assert [e["similarity"] for e in body["events"]] == sorted((e["similarity"] for e in body["events"]), reverse=True)


def test_api_similar_404s_400s_reasons_and_401s(server):
    status_id = next(ev.id for ev in search(server.db, kinds=["source_up", "finished", "source_down"], limit=10))
    status, body = api(server, f"/api/events/{status_id}/similar")
    assert status == 200 and body["events"] == [] and "no stored image embedding" in body["reason"]
    assert api(server, "/api/events/999999/similar")[0] == 404
    assert api(server, "/api/events/1/similar?limit=0")[0] == 400
    assert api(server, "/api/events/1/similar", token=False)[0] == 401



@pytest.mark.skipif(not BROWSER, reason="the web extra is not installed")
def test_find_similar_in_the_page_is_keyboard_reachable_and_renders_captions_as_text(server, driver):
    from selenium.webdriver.common.keys import Keys

    ids = ids_by_uid(server.db)
    driver.get(f"{server.base}?event={ids['near-a']}&token={server.token}")
    wait(driver, lambda d: d.find_element("css selector", ".detail-caption").text == "a plain car")
    button = driver.find_element("css selector", "#find-similar")
    button.send_keys(Keys.ENTER)  # focusable and pressed from the keyboard (a <button>)
    wait(driver, lambda d: d.find_elements("css selector", ".similar-pick .similar-caption"))
    (pick,) = driver.find_elements("css selector", ".similar-pick")
    assert pick.find_element("css selector", ".similar-caption").get_attribute("textContent") == HOSTILE
    assert not pick.find_elements("css selector", "img")  # no thumbnail, and nothing injected
    assert driver.execute_script("return window.__pwned") is None
    assert not driver.find_elements("css selector", "#detail [data-event-id]")  # the hook marks list cards only
    pick.send_keys(Keys.ENTER)
    wait(driver, lambda d: f"event={ids['near-b']}" in d.current_url)
    wait(driver, lambda d: d.find_element("css selector", ".detail-caption").text == HOSTILE)
    assert not driver.find_elements("css selector", ".similar-pick")  # the list belongs to the event it was for
