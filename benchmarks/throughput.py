"""Streaming-runtime throughput: 1, 4 and 8 concurrent camera sources of the demo clip, paced like live cameras.

    python benchmarks/throughput.py [--sources 1 4 8] [--duration 20] [--interval 0.25] [--model demo]

Every source plays the same generated clip in real time (`realtime`: latest frame wins, drops counted) and the
gate is opened fully (every sampled frame is captioned), so the offered load is sources / interval frames per
second. Reports captions/s, frame age at caption time (read -> caption done, p50/p99), dropped frames, CPU share
(process CPU time / wall time, 100% = one core) and RSS; writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "export"))

from edgecap_export.bench import cpu_model, rss_mb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--duration", type=float, default=20.0, help="clip length in seconds")
    p.add_argument("--interval", type=float, default=0.25, help="sampling interval per source")
    p.add_argument("--model", default="demo")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput.json"))
    args = p.parse_args(argv)

    from edgecap import Captioner, synth
    from edgecap.events import EventStore
    from edgecap.runtime import CameraSpec, GateConfig, RunOptions, Runtime
    from edgecap.sources import SourceConfig

    work = Path(tempfile.mkdtemp(prefix="edgecap-throughput-"))
    clip = work / "clip.mp4"
    synth.render_clip(clip, seed=synth.HELD_OUT_SEED_START + 7, duration_s=args.duration)
    cap = Captioner(args.model)
    rows = []
    for n in args.sources:
        cams = [CameraSpec(SourceConfig(f"cam{i}", str(clip), interval_s=args.interval, realtime=True),
                           GateConfig(max_interval_s=0.0, settle_samples=0)) for i in range(n)]
        with EventStore(work / f"events-{n}.sqlite") as store:
            rt = Runtime(cap, cams, store, options=RunOptions(max_batch=8))
            cpu0, t0 = os.times(), time.monotonic()
            rt.run()
            wall = time.monotonic() - t0
            cpu1 = os.times()
        captioned = sum(c["captioned"] for c in rt.stats.per_camera.values())
        sampled = sum(c["sampled"] for c in rt.stats.per_camera.values())
        dropped = sum(c["dropped"] for c in rt.stats.per_camera.values())
        ages = np.asarray(rt.stats.frame_age_ms)
        row = {
            "sources": n, "offered_frames_per_s": n / args.interval, "wall_s": round(wall, 2),
            "captions_per_s": round(captioned / wall, 2), "captioned": captioned, "sampled": sampled,
            "dropped": dropped, "batches": rt.stats.batches, "largest_batch": rt.stats.max_batch_seen,
            "frame_age_ms_p50": round(float(np.percentile(ages, 50)), 1) if ages.size else None,
            "frame_age_ms_p99": round(float(np.percentile(ages, 99)), 1) if ages.size else None,
            "cpu_share_percent": round(100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall, 1),
            "rss_mb": round(rss_mb(), 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"model": str(cap.manifest.directory.name), "clip_s": args.duration, "interval_s": args.interval,
              "cpu": cpu_model(),
              "cores": os.cpu_count(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
