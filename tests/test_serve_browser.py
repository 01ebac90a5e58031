"""The review page of `edgecap serve` in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): it loads with the token, shows every scene with a decoded thumbnail, narrows on search as the API does,
shows events another process writes without a reload, renders a hostile caption as text, and keeps its view in
the URL. Skipped without a browser unless EDGECAP_REQUIRE_BROWSER=1 (CI), which makes a missing browser a failure.

With EDGECAP_SCREENSHOTS=DIR the tests also save the screenshots shown in the README and docs/REVIEW.md.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")

from edgecap import synth  # noqa: E402
from edgecap.events import Event, EventStore, save_jpeg, search, thumbnail_dir  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRE_ENV = "EDGECAP_REQUIRE_BROWSER"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900")
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & "quotes"'
CARDS = "[data-event-id]"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = f"browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires them")
        pytest.skip(reason)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield browser
    browser.quit()


def wait(driver, condition, timeout: float = 30.0, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message)


@pytest.fixture(scope="module")
def log(tmp_path_factory, review_clips, write_log) -> Path:
    """A log written by `edgecap run` on the gate clip, plus one scene whose caption is HTML."""
    db = tmp_path_factory.mktemp("browser") / "events.sqlite"
    write_log(db, review_clips["gate"])
    thumb = save_jpeg(thumbnail_dir(db) / "hostile.jpg", np.full((60, 80, 3), (180, 40, 40), np.uint8))
    with EventStore(db) as store:
        store.put(Event(uuid.uuid4().hex, "scene", "gate", datetime.now(timezone.utc), caption=HOSTILE,
                        thumbnail=str(thumb), details={"model": "demo", "precision": "fp32", "prompt": "<OD>",
                                                       "objects": [{"label": HOSTILE, "x0": 1.4, "y0": 2.0,
                                                                    "x1": 30.6, "y1": 40.0},
                                                                   {"label": "car", "x0": 5, "y0": 6, "x1": 7,
                                                                    "y1": 8}]}))
    return db


@pytest.fixture(scope="module")
def server(log, start_server):
    return start_server(log)


@pytest.fixture
def page(driver, server, log):
    """The page opened with the printed token URL, once its list is shown."""
    driver.get(server.url)
    scenes = len(search(log, kinds="scene", limit=10_000))
    wait(driver, lambda d: len(d.find_elements("css selector", CARDS)) >= scenes, message="cards never listed")
    return driver


def api(server, path: str):
    req = urllib.request.Request(server.base.rstrip("/") + path, headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def shown_ids(driver) -> list[int]:
    return [int(v) for v in driver.execute_script(
        "return [...document.querySelectorAll('[data-event-id]')].map(n => n.dataset.eventId)")]


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("EDGECAP_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_the_page_lists_every_scene_with_a_decoded_thumbnail(page, server, log):
    assert "token" not in page.current_url  # the login redirect took it out of the address bar
    scenes = {ev.id for ev in search(log, kinds="scene", limit=10_000)}
    assert set(shown_ids(page)) == scenes and len(shown_ids(page)) == len(scenes)  # one card each
    decoded = ("return [...document.querySelectorAll('[data-event-id]')].every(c => { const i = c.querySelector('img');"
               " return i && i.complete && i.naturalWidth > 0; })")
    wait(page, lambda d: d.execute_script(decoded), message="a thumbnail was not decoded")
    assert page.find_elements("css selector", ".timeline .seg.scene")  # the camera's timeline
    screenshot(page, "review-list.png")


def test_typing_a_colour_narrows_the_list_and_the_api_agrees(page, server, log):
    captions = {ev.id: ev.caption for ev in search(log, kinds="scene", limit=10_000)}
    colour = next(c for c in synth.COLOURS if 0 < sum(c in t.split() for t in captions.values()) < len(captions))
    page.find_element("css selector", "input[name=q]").send_keys(colour)
    expected = {ev["id"] for ev in api(server, f"/api/events?q={colour}&kind=scene")["events"]}
    assert expected == {i for i, t in captions.items() if colour in t.split()}
    wait(page, lambda d: set(shown_ids(d)) == expected, message=f"list not narrowed to {colour}")
    assert f"q={colour}" in page.current_url  # the view's state is in the URL
    screenshot(page, "review-search.png")


def test_a_hostile_caption_renders_as_text(page, log):
    (hostile,) = [ev for ev in search(log, kinds="scene", limit=10_000) if ev.caption == HOSTILE]
    card = page.find_element("css selector", f'[data-event-id="{hostile.id}"]')
    assert card.find_element("css selector", ".caption").get_attribute("textContent") == HOSTILE
    assert len(card.find_elements("css selector", "img")) == 1  # the thumbnail only, no injected <img>
    card.click()
    wait(page, lambda d: d.find_element("css selector", ".detail-caption").text == HOSTILE)
    # the <OD> objects: each label (as text) with its box in the frame's pixels
    read = ("return Object.fromEntries([...document.querySelectorAll('#detail dt')]"
            ".map(dt => [dt.textContent, dt.nextElementSibling.textContent]))")  # one read: the panel re-renders
    rows = wait(page, lambda d: (r := d.execute_script(read)) and "Prompt" in r and r, message="no detail fields")
    assert rows["Objects (x0, y0, x1, y1 px)"] == f"{HOSTILE} (1, 2, 31, 40); car (5, 6, 7, 8)"
    assert rows["Prompt"] == "<OD>"
    assert page.execute_script("return window.__pwned") is None
    assert not page.find_elements("css selector", "#detail [data-event-id]")  # the hook marks cards only


def test_keyboard_selection_opens_the_detail_and_survives_a_reload(page, log):
    newest = shown_ids(page)[0]
    page.find_element("css selector", "body").send_keys("j")
    wait(page, lambda d: d.find_element("css selector", "#detail").is_displayed())
    assert f"event={newest}" in page.current_url
    expected = next(ev for ev in search(log, limit=10_000) if ev.id == newest)
    assert page.find_element("css selector", ".detail-caption").text == expected.caption
    page.find_element("css selector", "body").send_keys("j")
    second = shown_ids(page)[1]
    wait(page, lambda d: f"event={second}" in d.current_url)
    screenshot(page, "review-detail.png")
    page.refresh()
    wait(page, lambda d: d.find_element("css selector", "#detail").is_displayed()
         and "selected" in d.find_element("css selector", f'[data-event-id="{second}"]').get_attribute("class"))


def test_events_written_by_another_process_appear_without_a_reload(page, log, review_clips, write_log):
    page.execute_script("window.__same_page = true")
    before = set(shown_ids(page))
    write_log(log, review_clips["yard"])  # a second `edgecap run` into the same database
    new = {ev.id for ev in search(log, kinds="scene", camera="yard", limit=10_000)}
    assert new and not new & before
    # the acceptance bound: committed events are on the open page within 5 s
    wait(page, lambda d: new <= set(shown_ids(d)), timeout=5.0, message="new events did not appear within 5 s")
    assert page.execute_script("return window.__same_page") is True  # no reload happened
    screenshot(page, "review-live.png")


def test_the_page_without_the_token_gets_401(driver, server):
    driver.delete_all_cookies()
    driver.get(server.base)
    assert "authentication required" in driver.find_element("css selector", "body").text
    assert not driver.find_elements("css selector", CARDS)


def test_the_ci_script_installs_the_browser():
    script = Path(__file__).resolve().parent.parent / ".ci" / "browser-deps"
    assert script.is_file() and "chromium-driver" in script.read_text()
    assert "browser-deps" in (script.parent / "run").read_text()
