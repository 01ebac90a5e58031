"""Similar scenes at scale: numpy over the stored vectors (edgecap.events.similar.SimilarIndex) against sqlite-vec.

Three steps, since the two engines need different Pythons: edgecap's venv has numpy, but its sqlite3 module may be
built without loadable extensions (pyenv's default), which sqlite-vec needs.

    python benchmarks/similar_scale.py build --events 1000000 --dim 768 --db /tmp/sim.sqlite    # venv (numpy)
    python benchmarks/similar_scale.py numpy --db /tmp/sim.sqlite --out benchmarks/results/similar_numpy_1m.json
    /usr/bin/python3 benchmarks/similar_scale.py sqlite-vec --db /tmp/sim.sqlite --vec-path DIR \\
        --against benchmarks/results/similar_numpy_1m.json --out benchmarks/results/similar_sqlite_vec_1m.json

``build`` writes an event log (schema of this checkout) with N scene events and their unit float16 embeddings
(clustered random vectors: 1,000 centres, so a scene has true neighbours), plus a side file of float32 copies
(what sqlite-vec reads). Each engine answers the same 20 queries (the nearest 20 of random events); the answers
are compared (recall of sqlite-vec's top 20 against numpy's), and load, first-query and warm-query times recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from pathlib import Path

QUERIES = 20
K = 20


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "unknown"


def host() -> dict:
    return {"cpu": cpu(), "load_average": os.getloadavg()[0], "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version}


def query_ids(conn: sqlite3.Connection) -> list[int]:
    n = conn.execute("SELECT MAX(id) FROM events").fetchone()[0]
    return [1 + (i * 7919 * 104729) % n for i in range(QUERIES)]  # spread over the log, the same in both engines


def build(args: argparse.Namespace) -> None:
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from edgecap.events.schema import open_writer

    db = Path(args.db)
    for p in (db, db.with_suffix(".f32.sqlite")):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)
    conn = open_writer(db)
    side = sqlite3.connect(db.with_suffix(".f32.sqlite"), isolation_level=None)
    side.execute("PRAGMA journal_mode = OFF")
    side.execute("CREATE TABLE emb32 (event_id INTEGER PRIMARY KEY, vec BLOB NOT NULL)")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim)).astype(np.float32)
    t0, chunk = time.perf_counter(), 20_000
    for start in range(0, args.events, chunk):
        n = min(chunk, args.events - start)
        vecs = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, args.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        ids = range(start + 1, start + n + 1)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events (id, uid, kind, camera, start_unix, end_unix, caption, updated) "
                         "VALUES (?, ?, 'scene', 'cam', ?, ?, 'a scene', ?)",
                         ((i, f"u{i}", 1.7e9 + i, 1.7e9 + i + 5, i) for i in ids))
        conn.executemany("INSERT INTO event_embeddings (event_id, vec) VALUES (?, ?)",
                         zip(ids, (v.tobytes() for v in vecs.astype(np.float16))))
        conn.execute("COMMIT")
        side.execute("BEGIN")
        side.executemany("INSERT INTO emb32 VALUES (?, ?)", zip(ids, (v.tobytes() for v in vecs)))
        side.execute("COMMIT")
    conn.close()
    side.close()
    print(f"built {args.events} events of {args.dim}-D in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def run_numpy(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from edgecap.events.schema import open_reader
    from edgecap.events.similar import SimilarIndex

    conn = open_reader(args.db)
    ids = query_ids(conn)
    conn.close()
    index = SimilarIndex(args.db)
    t = time.perf_counter()
    first = index.nearest(ids[0], limit=K)
    load_s = time.perf_counter() - t
    times, answers = [], {}
    for i in ids:
        t = time.perf_counter()
        found = index.nearest(i, limit=K)
        times.append((time.perf_counter() - t) * 1e3)
        answers[i] = [ev.id for ev, _ in found.events]
    assert len(first.events) == K
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) * 1024
    return {"engine": "numpy", "first_query_with_load_s": round(load_s, 2), "query_ms": summary(times),
            "rss_bytes": rss, "answers": answers}


def run_sqlite_vec(args: argparse.Namespace) -> dict:
    if args.vec_path:
        sys.path.insert(0, args.vec_path)
    import sqlite_vec

    conn = sqlite3.connect(str(Path(args.db).with_suffix(".f32.sqlite")), isolation_level=None)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    dim = len(conn.execute("SELECT vec FROM emb32 LIMIT 1").fetchone()[0]) // 4
    main = sqlite3.connect(args.db)
    ids = query_ids(main)
    main.close()
    conn.execute("DROP TABLE IF EXISTS vec_items")
    t = time.perf_counter()
    conn.execute(f"CREATE VIRTUAL TABLE vec_items USING vec0(embedding float[{dim}] distance_metric=cosine)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO vec_items (rowid, embedding) SELECT event_id, vec FROM emb32")
    conn.execute("COMMIT")
    index_s = time.perf_counter() - t
    out: dict = {"engine": "sqlite-vec", "version": conn.execute("SELECT vec_version()").fetchone()[0],
                 "vec0_insert_all_s": round(index_s, 1)}
    for name, sql in (
        ("vec0_knn", "SELECT rowid FROM vec_items WHERE embedding MATCH ? AND k = ? ORDER BY distance"),
        ("scalar_scan", "SELECT event_id FROM emb32 ORDER BY vec_distance_cosine(vec, ?) LIMIT ?"),
    ):
        times, answers = [], {}
        for i in ids:
            q = conn.execute("SELECT vec FROM emb32 WHERE event_id = ?", (i,)).fetchone()[0]
            t = time.perf_counter()
            rows = conn.execute(sql, (q, K + 1)).fetchall()
            times.append((time.perf_counter() - t) * 1e3)
            answers[i] = [r[0] for r in rows if r[0] != i][:K]
        out[name] = {"query_ms": summary(times), "answers": answers}
        if args.against:  # the share of numpy's top K that sqlite-vec also found
            exact = json.loads(Path(args.against).read_text())["answers"]
            out[name]["recall_vs_numpy"] = round(statistics.mean(
                len(set(exact[str(i)]) & set(answers[i])) / K for i in ids), 3)
    conn.close()
    return out


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median": round(statistics.median(ms), 1), "p95": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "n": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("build", "numpy", "sqlite-vec"))
    ap.add_argument("--db", required=True)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--vec-path", help="folder holding the sqlite_vec package (pip install --target)")
    ap.add_argument("--out", help="write the results here (JSON)")
    ap.add_argument("--against", help="sqlite-vec: the numpy step's JSON, to compare the answers")
    args = ap.parse_args()
    if args.step == "build":
        build(args)
        return
    result = run_numpy(args) if args.step == "numpy" else run_sqlite_vec(args)
    main_db = sqlite3.connect(args.db)
    events = main_db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    main_db.close()
    result = {"events": events, "k": K, "host": host(), **result}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "answers"}, default=str)[:2000])


if __name__ == "__main__":
    main()
