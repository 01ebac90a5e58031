"""`edgecap run`: caption cameras and files into the event log."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InputError
from .args import add_precision, add_threads, duration, positive_float, positive_int, silence_stdout
from .serve import add_server_arguments


def _cli_options(args: argparse.Namespace) -> dict[str, Any]:
    """Source options given on the command line, as cameras.toml keys (absent flags are left to the defaults)."""
    given = {"interval": args.interval, "max_interval": args.max_interval, "realtime": args.realtime,
             "prompt": args.prompt}
    return {k: v for k, v in given.items() if v is not None}


def _site(args: argparse.Namespace):
    """Cameras and retention from the flags and --config, every source checked (before any model loads)."""
    from ..runtime import RetentionConfig, SiteConfig, check_source, load_config, specs_for_sources

    options = _cli_options(args)
    retention = RetentionConfig(older_than=args.retain)
    site = load_config(args.config, defaults=options, retention=retention) if args.config else SiteConfig([], retention)
    cameras = site.cameras
    if args.serve:
        from .. import web  # noqa: F401  (a missing web extra fails here, before any model loads)
    cameras += specs_for_sources(args.sources, options, taken={c.name for c in cameras})
    if not cameras:
        raise InputError("no sources: pass video files, URLs, webcams or image folders, or --config cameras.toml")
    for cam in cameras:  # a typo'd path or a refused scheme fails before the model loads
        check_source(cam)
    return site


class _Console:
    """Prints the timeline; a closed stdout (`edgecap run ... | head`) ends the run quietly instead of a traceback."""

    def __init__(self, stop) -> None:
        self.stop = stop
        self.closed = False

    def print(self, line: str) -> None:
        if self.closed:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:
            self.closed = True
            self.stop.set()
            silence_stdout()


def _start_server(prepared, console: _Console):
    """The review page prepared by `cmd_run`, served from this process once the store's schema exists (the page
    never sees a half-made log)."""
    from ..web import BackgroundServer

    app, sock, url = prepared
    console.print(f"edgecap run: review page at {url}")
    return BackgroundServer(app, sock).start()


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .serve import prepare

    site = _site(args)
    alerts = site.alerts
    if alerts.mqtt is not None:  # a missing paho fails before the model loads
        from ..alerts.mqtt import load_paho

        load_paho()

    # the review page's token, --no-auth check and listening socket, made before the model loads and the event log
    # exists: a taken port or a bad token file leaves nothing behind
    prepared = prepare(args, Path(args.db)) if args.serve else None
    try:
        return _run(args, site, alerts, prepared)
    finally:
        if prepared is not None:
            prepared[1].close()  # the server closed it already when it ran; a failure before then leaves it open


def _run(args: argparse.Namespace, site, alerts, prepared) -> int:
    from ..alerts import Alerter, Delivery, Router
    from ..captioner import Captioner
    from ..events import EventStore, thumbnail_dir
    from ..runtime import RunOptions, Runtime
    from ..runtime.retention import Pruner
    from ..units import format_ts
    from .signals import stop_on_signals

    cap = Captioner(args.model, precision=args.precision, threads=args.threads, streams=args.streams)
    stop = stop_on_signals()  # not a threading.Event: a handler calling its set() could deadlock the main loop
    console = _Console(stop)

    def show(ev) -> None:
        if ev.source_start_s is not None and ev.source_end_s is not None:
            span = f"{format_ts(ev.source_start_s)}-{format_ts(ev.source_end_s)}"
        else:
            span = f"{ev.start:%H:%M:%S}-{ev.end:%H:%M:%S}Z" if ev.end else f"{ev.start:%H:%M:%S}Z"
        console.print(f"[{ev.camera}] {span}  {ev.caption}  ({ev.observations} obs)")

    Runtime.check(cap, site.cameras)  # before the event log exists: a camera the model cannot serve leaves none
    thumbs = thumbnail_dir(args.db)
    options = RunOptions(max_batch=args.max_batch, thumbnail_dir=thumbs)
    with EventStore(args.db, jsonl=args.jsonl, outbox=Router(alerts) if alerts.delivers else None) as store:
        sink = Alerter(store, alerts.rules) if alerts.rules else store
        rt = Runtime(cap, site.cameras, sink, options=options, on_scene=show)
        pruner = Pruner(args.db, site.retention, thumbnails=thumbs, record=store.put) if site.retention.enabled \
            else None
        server = _start_server(prepared, console) if prepared is not None else None
        delivery = Delivery(args.db, alerts, cameras=[c.name for c in site.cameras], record=store.put) \
            if alerts.delivers else None
        try:
            if pruner:
                pruner.start()
            code = rt.run(stop)
        finally:
            if pruner:
                pruner.stop()
            if server:
                server.stop()
            if delivery:  # after the run flushed the store: its last messages are in the outbox
                delivery.stop()
    for name, c in rt.stats.per_camera.items():
        console.print(f"[{name}] sampled {c['sampled']}, gated out {c['gated_out']}, captioned {c['captioned']}, "
                      f"dropped {c['dropped']}, decode errors {c['decode_errors']}, reconnects {c['reconnects']}"
                      + (f", caption errors {c['caption_errors']}" if c["caption_errors"] else ""))
    if isinstance(sink, Alerter):
        console.print(f"{sink.alerts} alerts")
    console.print(f"{rt.stats.scenes} scene events, {rt.stats.batches} batches (largest {rt.stats.max_batch_seen}); "
                  f"events in {args.db}" + (f" and {args.jsonl}" if args.jsonl else ""))
    return code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="caption camera streams and files into a searchable event log",
                       description="Read every SOURCE (video file, rtsp://, http(s):// MJPEG/HLS, a webcam "
                                   "/dev/videoN or index, or an image folder), sample a frame every --interval "
                                   "seconds, skip frames where nothing changed, caption the rest in batches "
                                   "across cameras, and write scene events (and source up/down events) to an "
                                   "SQLite database with full-text search. Stops by itself when every source is a "
                                   "file and all are done; Ctrl-C or SIGTERM closes open scenes and exits 0. "
                                   "Review with `edgecap events search`.",
                       epilog="Camera options (--interval, --max-interval, --realtime, --prompt) are defaults: a "
                              "--config file's [defaults] table and each [[camera]] table override them, and can set "
                              "every "
                              "other source and gate option per camera (read_timeout, open_timeout, reconnect_min, "
                              "reconnect_max, auth_backoff, queue_size, max_reconnects, buffer, changed_share, "
                              "cell_delta, embedding_distance, settle_samples).")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="video files, stream URLs, webcams, image folders")
    p.add_argument("--model", default="demo", help="exported model directory (default: the bundled demo model)")
    p.add_argument("--config", help="cameras.toml with named cameras (credentials from environment variables), "
                                    "and optionally [[alert]] rules, [mqtt] and [[webhook]] (docs/ALERTS.md)")
    p.add_argument("--db", default="events.sqlite", help="event database (default: ./events.sqlite)")
    p.add_argument("--jsonl", help="also append every event to this JSONL file")
    p.add_argument("--interval", type=positive_float, default=None, help="seconds between sampled frames (default 1)")
    p.add_argument("--max-interval", type=positive_float, default=None,
                   help="re-caption an unchanged scene at least this often (default 30 s)")
    p.add_argument("--realtime", action="store_true", default=None,
                   help="pace files like live cameras (drop late frames)")
    p.add_argument("--prompt", default=None,
                   help="what the model is asked for every camera (a BLIP caption prefix, a Florence-2 task such as "
                        "\"<DETAILED_CAPTION>\"); recorded in each event; `prompt = \"...\"` per camera in "
                        "--config overrides it (default: the model's unconditional caption)")
    add_precision(p)
    p.add_argument("--max-batch", type=positive_int, default=8, help="most frames per captioner batch (default 8)")
    add_threads(p)
    p.add_argument("--streams", type=positive_int, default=None,
                   help="images of a batch the encoder runs at once, each on one core (default: --threads, else all "
                        "cores; 1 runs a batch as one multi-threaded run and saves a second copy of the encoder's "
                        "weights in memory)")
    p.add_argument("--serve", action="store_true",
                   help="also serve the review page of `edgecap serve` from this process (prints its URL)")
    add_server_arguments(p)
    p.add_argument("--retain", type=duration, default=None, metavar="AGE",
                   help="delete events (and thumbnails) older than AGE as the run goes, e.g. 30d, 12h (default: keep "
                        "everything; a --config file's [retention] table overrides it and can also cap the size)")
    p.set_defaults(func=cmd_run)
