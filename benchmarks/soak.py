"""Soak the streaming runtime against real RTSP servers with a fault every few seconds (RELIABILITY.md 19, issue 6).

N loopback gst-rtsp-servers (tests/rtsp_server.py under the system Python; install with .ci/rtsp-deps) feed the real
:class:`edgecap.runtime.Runtime` with the bundled demo model and a real SQLite event store. Every few seconds one
server, in turn, is killed and restarted, restarted at once, or frozen with SIGSTOP past twice the read timeout and
continued. At the end every source must be streaming again, and the script reports

* faults injected (by kind) vs outages (source_down events), recoveries (source_up) and reconnect attempts;
* RSS over time (slope of a least-squares line after the first quarter of the run, MB/min);
* threads and file descriptors before the runtime started, at the peak and after it stopped;
* events acknowledged by the store vs present in the database afterwards (lost must be 0), and integrity_check.

    python benchmarks/soak.py --minutes 10 --json runs/soak.json

Exit status 0 when every invariant holds, 1 otherwise, 2 when the RTSP server cannot run here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rtsp import RtspServer, established_to, rtsp_available  # noqa: E402

from edgecap import Captioner, demo_model_dir  # noqa: E402
from edgecap.events import Ack, Event, EventStore, thumbnail_dir  # noqa: E402
from edgecap.runtime import CameraSpec, GateConfig, RunOptions, Runtime  # noqa: E402
from edgecap.sources import SourceConfig, SourceState  # noqa: E402

log = logging.getLogger("edgecap.soak")
FAULT_KINDS = ("kill_restart", "stall", "quick_restart")


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def snapshot() -> dict[str, float]:
    """RSS (MB), OS threads, Python threads and open file descriptors of this process."""
    return {"rss_mb": _proc_status("VmRSS") / 1024, "os_threads": _proc_status("Threads"),
            "py_threads": threading.active_count(), "fds": len(os.listdir("/proc/self/fd"))}


class AckingStore(EventStore):
    """An EventStore that records which events were acknowledged, to check afterwards that they are all in the
    database. Resolved acks are reduced to their uid by :meth:`settle` so that the soak's own bookkeeping does not
    show up as a slope in the RSS it measures."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pending: list[tuple[str, Ack]] = []
        self.acked: set[str] = set()
        self.dropped = 0
        self._acks_lock = threading.Lock()

    def put(self, event: Event) -> Ack:
        ack = super().put(event)
        with self._acks_lock:
            self.pending.append((event.uid, ack))
        return ack

    def settle(self, final: bool = False) -> None:
        """Move resolved acks into ``acked`` / ``dropped``; with ``final``, unresolved ones count as dropped."""
        with self._acks_lock:
            pending, self.pending = self.pending, []
        keep = []
        for uid, ack in pending:
            if not ack.done() and not final:
                keep.append((uid, ack))
                continue
            try:
                ack.wait(0)
                self.acked.add(uid)
            except Exception:  # noqa: BLE001 - TimeoutError (never resolved) or EventStoreError (dropped)
                self.dropped += 1
        with self._acks_lock:
            self.pending[:0] = keep


def rss_slope_mb_per_min(samples: list[tuple[float, float]], skip_share: float = 0.25) -> float | None:
    """Least-squares slope of (seconds, MB) samples after the first ``skip_share`` of the run (warm-up)."""
    if len(samples) < 4:
        return None
    t0, t1 = samples[0][0], samples[-1][0]
    kept = [(t, m) for t, m in samples if t >= t0 + skip_share * (t1 - t0)]
    if len(kept) < 3:
        return None
    t, m = np.array(kept).T
    return float(np.polyfit(t / 60.0, m, 1)[0])


def run_soak(minutes: float = 10.0, *, sources: int = 4, fault_every_s: float = 4.0, read_timeout_s: float = 1.5,
             open_timeout_s: float = 4.0, interval_s: float = 0.5, seed: int = 0, progress: bool = True,
             max_faults: int | None = None, workdir: str | os.PathLike | None = None,
             say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the soak and return the report (see :func:`checks` for the pass criteria).

    Faults are injected for ``minutes``, or until ``max_faults`` faults were injected if that comes first.

    Raises:
        RuntimeError: the RTSP server cannot run on this machine.
    """
    ok, why = rtsp_available()
    if not ok:
        raise RuntimeError(why)
    rng = random.Random(seed)
    own_dir = None if workdir is not None else tempfile.TemporaryDirectory(prefix="edgecap-soak-")
    out = Path(workdir if workdir is not None else own_dir.name)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "soak.sqlite"
    servers = [RtspServer(path=f"/cam{i}") for i in range(sources)]
    bar = None
    try:
        for srv in servers:
            srv.start()
        cap = Captioner(demo_model_dir(), threads=1)
        cameras = [CameraSpec(SourceConfig(f"cam{i}", srv.url(), interval_s=interval_s, open_timeout_s=open_timeout_s,
                                           read_timeout_s=read_timeout_s), GateConfig(max_interval_s=5.0))
                   for i, srv in enumerate(servers)]
        baseline = snapshot()
        samples: list[tuple[float, dict[str, float]]] = []
        faults: Counter = Counter()
        skipped = 0
        stop = threading.Event()
        with AckingStore(db) as store:
            rt = Runtime(cap, cameras, store, options=RunOptions(max_batch=sources, thumbnail_dir=thumbnail_dir(db)))
            runner = threading.Thread(target=rt.run, args=(stop,), name="soak-runtime", daemon=True)
            began = time.monotonic()
            runner.start()

            def streaming(i: int) -> bool:
                return rt.cameras[i].source.state is SourceState.STREAMING

            def wait_streaming(indices: list[int], timeout: float) -> bool:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if all(streaming(i) for i in indices):
                        return True
                    time.sleep(0.1)
                return all(streaming(i) for i in indices)

            def sample() -> None:
                store.settle()
                samples.append((time.monotonic() - began, snapshot()))

            def sleep_sampling(seconds: float) -> None:
                end = time.monotonic() + seconds
                while (left := end - time.monotonic()) > 0:
                    time.sleep(min(1.0, left))
                    sample()
                    if bar is not None:
                        bar.n = min(bar.total, int(time.monotonic() - began))
                        bar.set_postfix(faults=sum(faults.values()), rss=f"{samples[-1][1]['rss_mb']:.0f}MB",
                                        refresh=False)
                        bar.refresh()

            all_up_at_start = wait_streaming(list(range(sources)), 30.0)
            started = snapshot()
            duration = minutes * 60.0
            if progress and sys.stderr.isatty():
                from tqdm import tqdm

                tqdm.monitor_interval = 0  # no monitor thread: it would count as a leaked thread
                bar = tqdm(total=int(duration), unit="s", desc="soak", dynamic_ncols=True, file=sys.stderr)
            emit = say or (bar.write if bar is not None else _stderr_line if progress else log.info)
            turn = 0
            while time.monotonic() - began < duration and (max_faults is None
                                                           or sum(faults.values()) < max_faults):
                fault_start = time.monotonic()
                i = turn % sources
                kind = FAULT_KINDS[(turn // sources) % len(FAULT_KINDS)]
                turn += 1
                srv = servers[i]
                if not wait_streaming([i], 10.0):  # a fault on a source that is still down would merge outages
                    skipped += 1
                    emit(f"{time.monotonic() - began:7.1f} s  cam{i} not streaming, fault skipped")
                else:
                    if kind == "kill_restart":
                        srv.kill()
                        sleep_sampling(rng.uniform(0.5, 2.0))
                        srv.start()
                    elif kind == "quick_restart":
                        srv.restart()
                    else:
                        srv.pause()
                        sleep_sampling(2 * read_timeout_s + rng.uniform(0.5, 1.5))
                        srv.resume()
                    faults[kind] += 1
                    emit(f"{time.monotonic() - began:7.1f} s  cam{i} {kind:13} "
                         f"(faults {sum(faults.values())}, outages so far "
                         f"{sum(rt.stats.camera(c.name)['status_source_down'] for c in cameras)})")
                sleep_sampling(max(0.0, min(fault_every_s - (time.monotonic() - fault_start),
                                            duration - (time.monotonic() - began))))
            recovered = wait_streaming(list(range(sources)), 30.0)
            sessions = [established_to(srv.port) for srv in servers]
            peak = {k: max(s[k] for _, s in samples) for k in baseline} if samples else dict(started)
            stop.set()
            runner.join(30.0)
            runtime_stopped = not runner.is_alive()
            store.settle(final=True)
        if bar is not None:
            bar.close()
            bar = None
        time.sleep(0.5)  # let the kernel finish closing sockets of the last sessions
        end = snapshot()
        elapsed = time.monotonic() - began

        acked, dropped = store.acked, store.dropped
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            present = {row[0] for row in conn.execute("SELECT uid FROM events")}
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
        per_cam = {c.name: rt.stats.camera(c.name) for c in cameras}
        report: dict[str, Any] = {
            "minutes": round(elapsed / 60.0, 2), "sources": sources, "fault_every_s": fault_every_s,
            "read_timeout_s": read_timeout_s, "seed": seed,
            "faults": dict(faults), "faults_total": sum(faults.values()), "faults_skipped": skipped,
            "outages": sum(c["status_source_down"] for c in per_cam.values()),
            "recoveries": sum(c["status_source_up"] for c in per_cam.values()) - sources,
            "reconnect_attempts": sum(c["reconnects"] for c in per_cam.values()),
            "captioned": sum(c["captioned"] for c in per_cam.values()),
            "frames_read": sum(c["frames_read"] for c in per_cam.values()),
            "all_streaming_at_start": all_up_at_start, "all_streaming_at_end": recovered,
            "client_sessions_per_server_at_end": sessions, "runtime_stopped": runtime_stopped,
            "rss_mb": {"start": round(started["rss_mb"], 1), "peak": round(peak["rss_mb"], 1),
                       "end": round(end["rss_mb"], 1)},
            "rss_slope_mb_per_min": _round(rss_slope_mb_per_min([(t, s["rss_mb"]) for t, s in samples])),
            "rss_series": _series(samples, every_s=10.0),
            "threads": {"baseline": baseline["py_threads"], "running": started["py_threads"],
                        "peak": peak["py_threads"], "end": end["py_threads"]},
            "os_threads": {"baseline": baseline["os_threads"], "running": started["os_threads"],
                           "peak": peak["os_threads"], "end": end["os_threads"]},
            "fds": {"baseline": baseline["fds"], "running": started["fds"], "peak": peak["fds"], "end": end["fds"]},
            "events": {"acknowledged": len(acked), "present": len(acked & present), "lost": len(acked - present),
                       "not_acknowledged": dropped, "rows": len(present), "by_kind": kinds,
                       "integrity_check": integrity},
            "per_camera": {name: {k: int(v) for k, v in sorted(c.items())} for name, c in per_cam.items()},
        }
        report["checks"] = checks(report)
        return report
    finally:
        if bar is not None:
            bar.close()
        for srv in servers:
            srv.close()
        if own_dir is not None:
            own_dir.cleanup()


def _series(samples: list[tuple[float, dict[str, float]]], every_s: float) -> list[list[float]]:
    """[seconds, RSS MB] about every ``every_s`` seconds, for plotting the trend."""
    out: list[list[float]] = []
    for t, snap in samples:
        if not out or t - out[-1][0] >= every_s:
            out.append([round(t, 1), round(snap["rss_mb"], 1)])
    return out


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def checks(r: dict[str, Any]) -> dict[str, bool]:
    """The invariants: nothing lost, every fault noticed and recovered, no leaked threads or fds, one session."""
    return {
        "no_event_lost": r["events"]["lost"] == 0 and r["events"]["not_acknowledged"] == 0,
        "integrity_ok": r["events"]["integrity_check"] == "ok",
        "every_fault_noticed": r["outages"] >= r["faults_total"],
        "reconnects_cover_faults": r["reconnect_attempts"] >= r["faults_total"],
        "all_recovered": r["all_streaming_at_end"] and r["recoveries"] >= r["outages"],
        "one_session_per_server": all(n == 1 for n in r["client_sessions_per_server_at_end"]),
        "runtime_stopped": r["runtime_stopped"],
        "threads_back_to_baseline": r["threads"]["end"] <= r["threads"]["baseline"]
        and r["os_threads"]["end"] <= r["os_threads"]["baseline"],
        "fds_back_to_baseline": r["fds"]["end"] <= r["fds"]["baseline"],
    }


def format_table(r: dict[str, Any]) -> str:
    rows = [
        ("duration", f"{r['minutes']} min, {r['sources']} sources, a fault every {r['fault_every_s']:g} s"),
        ("faults injected", f"{r['faults_total']} {r['faults']}" + (f", {r['faults_skipped']} skipped"
                                                                     if r["faults_skipped"] else "")),
        ("outages (source_down)", r["outages"]),
        ("recoveries (source_up)", r["recoveries"]),
        ("reconnect attempts", r["reconnect_attempts"]),
        ("frames read / captioned", f"{r['frames_read']} / {r['captioned']}"),
        ("RSS MB start / peak / end", "{start} / {peak} / {end}".format(**r["rss_mb"])),
        ("RSS slope (MB/min)", r["rss_slope_mb_per_min"]),
        ("py threads base / run / end", "{baseline} / {running} / {end}".format(**r["threads"])),
        ("OS threads base / run / end", "{baseline} / {running} / {end}".format(**r["os_threads"])),
        ("fds base / run / peak / end", "{baseline} / {running} / {peak} / {end}".format(**r["fds"])),
        ("events acked / present / lost", "{acknowledged} / {present} / {lost}".format(**r["events"])),
        ("integrity_check", r["events"]["integrity_check"]),
        ("client sessions per server", r["client_sessions_per_server_at_end"]),
    ]
    rows += [(f"check: {k}", "ok" if v else "FAILED") for k, v in r["checks"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to inject faults (default 10)")
    p.add_argument("--sources", type=int, default=4, help="RTSP servers and cameras (default 4)")
    p.add_argument("--fault-every", type=float, default=4.0, help="seconds between faults (default 4)")
    p.add_argument("--read-timeout", type=float, default=1.5, help="camera read timeout in seconds (default 1.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--keep", metavar="DIR", help="keep the event database in DIR")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (default: a bar on a terminal, else one line per fault on stderr)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run_soak(args.minutes, sources=args.sources, fault_every_s=args.fault_every,
                          read_timeout_s=args.read_timeout, seed=args.seed, progress=not args.quiet,
                          workdir=args.keep)
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
