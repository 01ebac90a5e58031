"""Make the screenshots of the review page in docs/ (the README and docs/REVIEW.md show them).

Two generated clips are captioned by `edgecap run` into a fresh log; a third, live-looking camera gets scenes
captioned by the demo model and two outages (one still open), so every element of the page is on screen. Then
`edgecap serve` runs on a free loopback port and headless Chromium takes the pictures.

    PYTHONPATH=src python docs/screenshots.py    # needs the web and dev extras, chromium and chromium-driver
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edgecap import Captioner, synth
from edgecap.events import Event, EventStore, save_jpeg, thumbnail_dir
from edgecap.models import demo_model_dir

DOCS = Path(__file__).resolve().parent
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1440,960",
         "--force-device-scale-factor=1")


def make_log(folder: Path) -> Path:
    db = folder / "events.sqlite"
    clips = []
    for name, seed in (("gate", 12), ("yard", 21)):
        clips.append(folder / f"{name}.mp4")
        synth.render_clip(clips[-1], seed=synth.HELD_OUT_SEED_START + seed, duration_s=30.0)
    subprocess.run([sys.executable, "-m", "edgecap.cli", "run", *map(str, clips), "--db", str(db), "--interval", "1"],
                   check=True, capture_output=True)
    captioner = Captioner(demo_model_dir())
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with EventStore(db) as store:
        spans = ((-55, -50), (-49, -41), (-34, -22), (-21, -12), (-11, -3))  # minutes from now
        for i, (seed, (a, b)) in enumerate(zip((5, 17, 23, 42, 61), spans)):
            image, _ = synth.render_scene(seed)
            caption = captioner.caption_batch([image])[0]
            thumb = save_jpeg(thumbnail_dir(db) / f"lobby-{i}.jpg", image)
            store.put(Event(f"lobby-{i}", "scene", "lobby", now + timedelta(minutes=a), now + timedelta(minutes=b),
                            caption=caption.text, confidence=caption.confidence, observations=3 + i,
                            thumbnail=str(thumb),
                            details={"model": "demo", "precision": "fp32", "ms": caption.timings}))
        store.put(Event("lobby-down-1", "source_down", "lobby", now - timedelta(minutes=40),
                        now - timedelta(minutes=35), details={"attempts": 4, "last_error": "connection refused"}))
        store.put(Event("lobby-down-2", "source_down", "lobby", now - timedelta(minutes=2), closed=False,
                        details={"attempts": 2, "last_error": "rtsp://lobby.local/stream: timed out"}))
    return db


def main() -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as tmp:
        db = make_log(Path(tmp))
        server = subprocess.Popen([sys.executable, "-m", "edgecap.cli", "serve", "--db", str(db), "--port", "0"],
                                  stdout=subprocess.PIPE, text=True)
        url = next(m.group(0) for line in server.stdout if (m := re.search(r"http://\S+", line)))
        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*FLAGS, f"--user-data-dir={tmp}/profile"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(url)
            time.sleep(2)  # a picture, not a test: let thumbnails and the stream settle
            driver.save_screenshot(str(DOCS / "review.png"))
            driver.find_element("css selector", "body").send_keys("j")
            time.sleep(1)
            driver.save_screenshot(str(DOCS / "review-detail.png"))
            box = driver.find_element("css selector", "input[name=q]")
            box.send_keys("yellow")
            time.sleep(1.5)
            driver.find_element("css selector", "body").send_keys("j")
            time.sleep(1)
            driver.save_screenshot(str(DOCS / "review-search.png"))
        finally:
            driver.quit()
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
