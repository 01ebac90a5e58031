"""`edgecap ingest`: many edge nodes' events, from an MQTT broker, into one event log."""

from __future__ import annotations

import argparse
import os



def _settings(args: argparse.Namespace):
    from ..alerts.settings import parse_mqtt

    table = {"url": args.url, "topic_prefix": args.prefix}
    for key in ("username_env", "password_env", "client_id", "ca_file"):
        if getattr(args, key):
            table[key] = getattr(args, key)
    return parse_mqtt(table, "edgecap ingest", os.environ)


def cmd_ingest(args: argparse.Namespace) -> int:
    from ..alerts.ingest import Ingestor
    from .signals import stop_on_signals

    settings = _settings(args)
    stop = stop_on_signals()  # not a threading.Event: see edgecap.cli.signals
    ingestor = Ingestor(settings, args.db)
    print(f"ingesting {settings.topic_prefix}/events and {settings.topic_prefix}/system from "
          f"{settings.host}:{settings.port} into {args.db}; Ctrl-C to stop", flush=True)
    stats = ingestor.run(stop)
    print(f"{stats.applied} event writes applied from {len(stats.nodes)} nodes ({', '.join(sorted(stats.nodes))}); "
          f"{stats.duplicates} duplicates or older copies skipped, {stats.malformed} malformed", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="consume the events of many edgecap nodes from an MQTT broker into one log",
                       description="Subscribe to PREFIX/events and PREFIX/system on the broker (a persistent QoS 1 "
                                   "session) and write every node's events into one database, idempotently (by "
                                   "event id and the node's update counter), the node's name kept in "
                                   "details.node. Review the site with `edgecap events search --db DB`. Runs until "
                                   "Ctrl-C or SIGTERM. Needs the mqtt extra.")
    p.add_argument("url", help="broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    p.add_argument("--prefix", default="edgecap", help="the nodes' [mqtt] topic_prefix (default: edgecap)")
    p.add_argument("--db", default="central.sqlite", help="the central event database (default: ./central.sqlite)")
    p.add_argument("--client-id", dest="client_id", default=None,
                   help="MQTT client id; keep it across restarts so the broker queues messages while ingest is down "
                        "(default: edgecap-ingest-PREFIX)")
    p.add_argument("--username-env", dest="username_env", default=None, metavar="VAR",
                   help="environment variable holding the broker user name")
    p.add_argument("--password-env", dest="password_env", default=None, metavar="VAR",
                   help="environment variable holding the broker password")
    p.add_argument("--ca-file", dest="ca_file", default=None, help="CA certificates for mqtts:// (default: system)")
    p.set_defaults(func=cmd_ingest)
