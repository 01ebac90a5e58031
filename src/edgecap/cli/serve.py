"""`edgecap serve`: the review page and JSON API over an event log, behind a token."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .args import positive_float
from .events import DEFAULT_DB

DEFAULT_PORT = 8971


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def prepare(args: argparse.Namespace, db: Path):
    """The application and its listening socket for ``args`` (serve's options), and the URL to print."""
    from .. import web

    if args.no_auth:
        if args.token_file:
            raise InputError("--no-auth and --token-file exclude each other; choose one")
        web.check_no_auth(args.host)
        token = None
    else:
        token = web.load_or_create_token(args.token_file) if args.token_file else web.new_token()
    sock = web.bind(args.host, args.port)
    port = sock.getsockname()[1]
    app = web.create_app(db, token=token, port=port, thumbnails=getattr(args, "thumbnails", None),
                         poll_s=getattr(args, "poll", 0.5))
    host = f"[{args.host}]" if ":" in args.host else args.host
    return app, sock, f"http://{host}:{port}/" + ("" if token is None else f"?token={token}")


def cmd_serve(args: argparse.Namespace) -> int:
    from .. import web

    db = Path(args.db)
    if not db.is_file():
        raise InputError(f"event database not found: {db}; run `edgecap run ... --db {db}` first or fix --db")
    app, sock, url = prepare(args, db)
    print(f"edgecap serve: reviewing {db} at\n    {url}\n(Ctrl-C stops)", flush=True)
    try:
        web.run(app, sock)
    finally:
        sock.close()
    return 0


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """Where and how the page listens (`edgecap serve`, `edgecap run --serve`)."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--token-file", metavar="FILE",
                   help="keep the token in FILE (created with mode 0600), so the URL survives restarts")
    p.add_argument("--no-auth", action="store_true", help="no token (accepted only on a loopback --host)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `edgecap serve` to the CLI's subparsers."""
    p = sub.add_parser("serve", help="review the event log in a browser (timeline, search, live updates)",
                       description="Serve a review page and a JSON API over an event log: per-camera timelines "
                                   "with thumbnails, full-text search with camera: and kind: filters, live updates "
                                   "while `edgecap run` writes. The database is only read. Every request needs the "
                                   "token printed at start (open the printed URL once; it sets a cookie), or "
                                   "Authorization: Bearer TOKEN for scripts.",
                       epilog="example: edgecap serve --db events.sqlite --token-file ~/.edgecap-token")
    p.add_argument("--db", default=DEFAULT_DB, help=f"event database (default: ./{DEFAULT_DB}, as `edgecap run`)")
    add_server_arguments(p)
    p.add_argument("--thumbnails", metavar="DIR",
                   help="the thumbnail folder (default: thumbnails/ next to the database, as `edgecap run`)")
    p.add_argument("--poll", type=positive_float, default=0.5, help="seconds between checks for live updates "
                                                                    "(default 0.5)")
    p.set_defaults(func=cmd_serve)
