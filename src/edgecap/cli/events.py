"""`edgecap events`: search, export, follow, migrate and prune the event log that `edgecap run` writes."""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

from ..errors import InputError
from ..events import EXPORT_FORMATS, KINDS, Event, export, json_line, migrate, prune, search, tail
from ..units import parse_duration
from .args import non_negative_int, positive_float, positive_int, silence_stdout

DEFAULT_DB = "events.sqlite"  # what `edgecap run` writes by default


def _pipe_safe(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`edgecap events export | head` must end quietly, not with a BrokenPipeError traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except BrokenPipeError:
            silence_stdout()
            return 0

    return run


def _row(ev: Event) -> str:
    """One table line: UTC time range, camera, kind, observations, confidence, caption (or a system message)."""
    span = ev.start.strftime("%Y-%m-%d %H:%M:%S")
    if ev.end is not None and ev.end != ev.start:
        span += ev.end.strftime("-%H:%M:%S" if ev.end.date() == ev.start.date() else "-%m-%dT%H:%M")
    text = ev.caption if ev.caption is not None else str(ev.details.get("message") or "")
    attempts = ev.details.get("attempts")
    if isinstance(attempts, int) and attempts > 1:  # an outage: how often it was retried, and the latest failure
        text += f" [{attempts} attempts; last: {ev.details.get('last_error') or '?'}]"
    text = " ".join(text.split())
    conf = "-" if ev.confidence is None else f"{ev.confidence:.2f}"
    state = "" if ev.closed else " (open)"
    return f"{span + 'Z':<29}  {ev.camera:<14} {ev.kind:<12} {ev.observations:>4} {conf:>6}  {text}{state}"


_HEADER = f"{'TIME (UTC)':<29}  {'CAMERA':<14} {'KIND':<12} {'OBS':>4} {'CONF':>6}  CAPTION / MESSAGE"


def _print_events(events: Iterable[Event], as_json: bool, header: bool) -> int:
    count = 0
    for ev in events:
        if header and not as_json and count == 0:
            print(_HEADER)
        print(json_line(ev.to_json()) if as_json else _row(ev), end="" if as_json else "\n", flush=True)
        count += 1
    return count


@_pipe_safe
def cmd_search(args: argparse.Namespace) -> int:
    events = search(args.db, args.text, camera=args.camera, since=args.since, until=args.until, kinds=args.kind,
                    limit=args.limit)
    if not _print_events(events, args.json, header=True) and not args.json:
        print("no matching events", file=sys.stderr)
    return 0


@_pipe_safe
def cmd_export(args: argparse.Namespace) -> int:
    if args.out is None:
        export(args.db, args.format, sys.stdout)
        return 0
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            count = export(args.db, args.format, f)
        os.replace(tmp, out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {out}: {exc.strerror or exc}; choose another --out") from None
        raise
    print(f"exported {count} events to {out}", file=sys.stderr)
    return 0


@_pipe_safe
def cmd_tail(args: argparse.Namespace) -> int:
    events = tail(args.db, follow=not args.no_follow, poll_s=args.poll, last=args.last)
    try:
        _print_events(events, args.json, header=False)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    version = migrate(args.db)
    print(f"{args.db}: schema v{version}" if version else
          f"{args.db}: no events yet (`edgecap run` creates the schema when it opens the database)")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.max_gb is None:
        raise InputError("give a retention limit: --older-than (such as 30d), --max-gb, or both")
    older_than = None if args.older_than is None else parse_duration(args.older_than)
    report = prune(args.db, older_than=older_than, max_bytes=None if args.max_gb is None else _bytes(args.max_gb),
                   thumbnails=args.thumbnails)
    print(f"{args.db}: {report.summary()}")
    return 0


def _bytes(gigabytes: str) -> int:
    try:
        gb = float(gigabytes)
    except ValueError:
        gb = math.nan
    if not (math.isfinite(gb) and gb > 0):
        raise InputError(f"--max-gb must be a positive number of gigabytes (10^9 bytes) such as 20, got "
                         f"{gigabytes!r}")
    return max(1, round(gb * 1e9))


def _no_action(args: argparse.Namespace) -> int:
    raise InputError("choose an action: search, export, tail, migrate or prune (see `edgecap events --help`)")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=f"event database (default: ./{DEFAULT_DB}, as `edgecap run`)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `edgecap events` and its actions to the CLI's subparsers."""
    p = sub.add_parser("events", help="search, export or follow the event log",
                       description="Review the event log that `edgecap run` writes: full-text search of captions, "
                                   "export to JSONL or CSV, or follow new and updated events as they are committed. "
                                   "Reading never blocks the runtime. Times are UTC.")
    p.set_defaults(func=_no_action)
    actions = p.add_subparsers(dest="events_action", metavar="ACTION")

    s = actions.add_parser("search", help="find events by caption words, camera, time and kind, newest first",
                           description="Find events, newest first. TEXT: words that must all occur in the caption, "
                                       "matched by stem (\"cars\" finds \"car\"); quotes, * and other search syntax "
                                       "are read as plain words. --since/--until take ISO 8601 (no zone = UTC) or "
                                       "an age such as 30s, 15m, 2h, 3d, and select events overlapping the range.",
                           epilog="example: edgecap events search \"red car\" --camera gate --since 2h")
    s.add_argument("text", nargs="?", metavar="TEXT", help="caption words (all must match)")
    _add_db(s)
    s.add_argument("--camera", help="only this camera")
    s.add_argument("--since", metavar="T", help="events ending at or after T (ISO 8601 or age: 30s, 15m, 2h, 3d)")
    s.add_argument("--until", metavar="T", help="events starting at or before T")
    s.add_argument("--kind", action="append", metavar="K",
                   help=f"only this kind; repeat for several ({', '.join(KINDS)})")
    s.add_argument("--limit", type=positive_int, default=50, help="most events shown (default 50)")
    s.add_argument("--json", action="store_true",
                   help="one JSON object per line (id, uid, kind, camera, start, end, source_start_s, "
                        "source_end_s, caption, confidence, observations, thumbnail, details, closed)")
    s.set_defaults(func=cmd_search)

    e = actions.add_parser("export", help="write every event, oldest first, as JSONL or CSV",
                           description="Write every event, oldest first, as JSON lines or CSV (header row; details "
                                       "as a JSON string) to --out or stdout. The file appears only when complete.")
    _add_db(e)
    e.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="jsonl or csv")
    e.add_argument("--out", metavar="FILE", help="output file (default: stdout)")
    e.set_defaults(func=cmd_export)

    t = actions.add_parser("tail", help="print events as they are committed (Ctrl-C stops)",
                           description="Print the last --last events, then every new or updated event as the "
                                       "runtime commits it (a scene that is extended appears again with its new "
                                       "end and count), until Ctrl-C.")
    _add_db(t)
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--no-follow", action="store_true", help="print the backlog and exit")
    t.add_argument("--last", type=non_negative_int, default=10, help="events shown before following (default 10)")
    t.add_argument("--poll", type=positive_float, default=0.5, help="seconds between checks (default 0.5)")
    t.set_defaults(func=cmd_tail)

    m = actions.add_parser("migrate", help="upgrade an event database to this edgecap's schema",
                           description="Bring an event database written by an older edgecap to the current schema "
                                       "in one transaction (the runtime does this by itself when it opens one).")
    _add_db(m)
    m.set_defaults(func=cmd_migrate)

    r = actions.add_parser("prune", help="delete old events and their thumbnails (age and/or size limit)",
                           description="Delete closed events that ended more than --older-than ago and, while the "
                                       "log (live database pages + thumbnail files) is larger than --max-gb, the "
                                       "oldest further events, with their thumbnails. Open scenes are never deleted. "
                                       "Safe while `edgecap run` writes: small transactions that let it in between. "
                                       "Thumbnails left by an interrupted prune are swept by the next one. The "
                                       "database file keeps its size; freed pages are reused. Records one `prune` "
                                       "event with the counts.",
                           epilog="example: edgecap events prune --db events.sqlite --older-than 30d --max-gb 20")
    _add_db(r)
    r.add_argument("--older-than", metavar="AGE",
                   help="delete events that ended more than AGE ago: a number and s, m, h, d or w (30d, 12h, 2w)")
    r.add_argument("--max-gb", metavar="GB", help="keep the log under GB gigabytes (10^9 bytes), oldest go first")
    r.add_argument("--thumbnails", metavar="DIR",
                   help="the thumbnail folder (default: thumbnails/ next to the database, as `edgecap run`)")
    r.set_defaults(func=cmd_prune)

