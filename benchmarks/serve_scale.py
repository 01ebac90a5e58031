"""How fast `edgecap serve` answers over a large log: builds a database of N events (default 1,000,000: scenes with
generated captions on 8 cameras over 30 days, 5% system events), starts `edgecap serve` on a loopback port and
times the requests the page makes (first page, full-text searches, a later page by cursor, cameras, one event)
end to end over HTTP. Writes benchmarks/results/serve_scale.json.

    PYTHONPATH=src python benchmarks/serve_scale.py [--events 1000000] [--db /tmp/big.sqlite]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from edgecap.events.schema import COLUMNS, open_writer
from edgecap.synth import BACKGROUNDS, COLOURS, KINDS, POSITIONS, TIMES_OF_DAY

ROOT = Path(__file__).resolve().parent.parent
CAMERAS = [f"cam-{i}" for i in range(8)]
SYSTEM = ("source_up", "source_down", "reconnecting", "drops", "finished")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def build(db: Path, n: int, seed: int = 0) -> float:
    """Write n events straight into a fresh log (the schema of `edgecap run`); returns seconds taken."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    conn = open_writer(db, synchronous="OFF")
    start = time.time() - 30 * 86400
    step = 30 * 86400 / n
    sql = f"INSERT INTO events ({', '.join(COLUMNS)}, updated) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
    batch = []
    for i in range(n):
        t = start + i * step
        camera = rng.choice(CAMERAS)
        if rng.random() < 0.05:
            row = (f"s{i}", rng.choice(SYSTEM), camera, t, t, None, None, None, None, 1, None,
                   json.dumps({"message": "status"}), 1)
        else:
            objects = " and ".join(f"a {rng.choice(COLOURS)} {rng.choice(KINDS)} on the {rng.choice(POSITIONS)}"
                                   for _ in range(rng.randint(1, 3)))
            caption = f"{objects} in a {rng.choice(BACKGROUNDS)} during the {rng.choice(TIMES_OF_DAY)}"
            row = (f"e{i}", "scene", camera, t, t + step * 0.9, None, None, caption, -0.02, 2,
                   f"/nonexistent/{i}.jpg", json.dumps({"model": "demo", "precision": "fp32"}), 1)
        batch.append((*row, i + 1))
        if len(batch) == 50_000:
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
            batch.clear()
            print(f"  {i + 1:,} events", file=sys.stderr, flush=True)
    if batch:
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


def timed(conn: http.client.HTTPConnection, token: str, path: str, repeat: int) -> dict:
    times, body = [], b""
    for _ in range(repeat):
        t = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        times.append(1000 * (time.perf_counter() - t))
        if resp.status != 200:
            raise SystemExit(f"{path}: HTTP {resp.status}: {body[:200]!r}")
    data = json.loads(body)
    found = len(data["events"]) if isinstance(data, dict) and "events" in data else None
    return {"path": path, "ms_median": round(statistics.median(times), 1),
            "ms_p95": round(sorted(times)[max(0, int(0.95 * len(times)) - 1)], 1),
            "ms_max": round(max(times), 1), "events_returned": found}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--db", help="database to build (or reuse when it exists); default: a temporary one")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_scale.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db or Path(tmp) / "big.sqlite")
        build_s = None if db.exists() else build(db, args.events)
        server = subprocess.Popen([sys.executable, "-m", "edgecap.cli", "serve", "--db", str(db), "--port", "0"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            found = next(m for line in server.stdout if (m := re.search(r"http://([\d.]+):(\d+)/\?token=(\S+)", line)))
            host, port, token = found.group(1), int(found.group(2)), found.group(3)
            conn = http.client.HTTPConnection(host, port, timeout=120)
            first = json.loads((conn.request("GET", "/api/events?limit=100", headers={
                "Authorization": f"Bearer {token}"}), conn.getresponse().read())[1])
            paths = [
                "/api/events?limit=100",                                  # the first page, any kind
                "/api/events?limit=500&kind=scene",                       # the page's first page
                "/api/events?limit=100&kind=scene&q=red",                 # one common word
                "/api/events?limit=500&kind=scene&q=red",                 # the same, as the page asks
                f"/api/events?limit=100&kind=scene&q={quote('red dog')}",  # two words
                f"/api/events?limit=100&q={quote('yellow truck camera:cam-3')}",  # words + camera
                "/api/events?limit=100&q=zebra",                          # no match
                f"/api/events?limit=100&cursor={quote(first['next_cursor'])}",  # the next page
                f"/api/events/{first['events'][0]['id']}",
                "/api/cameras",
                "/healthz",
            ]
            rows = [timed(conn, token, path, args.repeat) for path in paths]
        finally:
            server.terminate()
            server.wait(timeout=30)
        with contextlib.closing(sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)) as conn:
            count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        report = {"events": count, "db_bytes": db.stat().st_size, "build_s": build_s and round(build_s, 1),
                  "repeat": args.repeat,
                  "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]},
                  "requests": rows}
    for row in rows:
        print(f"{row['ms_median']:8.1f} ms median {row['ms_p95']:8.1f} ms p95  {row['path']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
