"""The `edgecap` command line. User errors exit non-zero with one line on stderr, never a traceback.

One module per command group; each registers its sub-commands, and a command imports what it needs only when it
runs, so `edgecap --help` and the runtime commands work without the export extra (torch, transformers, onnx).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .._version import __version__
from ..errors import EdgecapError, RunFailedError
from . import ask, caption, events, ingest, model, run, serve
from .args import EXIT_USER_ERROR, OneLineParser

GROUPS = (caption.register_demo, run.register, events.register, serve.register, caption.register, ask.register,
          model.register, ingest.register)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="edgecap",
        description="Optimized edge and real-time video captioning: export Hugging Face captioners to KV-cached "
                    "ONNX, caption images and camera streams, and search the event log.",
        epilog="Start with `edgecap demo` (bundled model, generated clip). `edgecap COMMAND --help` for details.")
    parser.add_argument("--version", action="version", version=f"edgecap {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except RunFailedError as exc:  # not the user's input: the run itself could not go on
        print(f"edgecap: error: {exc}", file=sys.stderr)
        return 1
    except EdgecapError as exc:
        print(f"edgecap: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("edgecap: interrupted", file=sys.stderr)
        return 130
