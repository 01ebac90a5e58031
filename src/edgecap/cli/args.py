"""Argument helpers shared by the command modules: one-line parse errors and checked numeric types."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, NoReturn

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, where to look), like every other user error."""

    def error(self, message: str) -> NoReturn:
        print(f"edgecap: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def silence_stdout() -> None:
    """After a BrokenPipeError (`edgecap ... | head`): point stdout at /dev/null, so the flush Python does at exit
    has nowhere to fail and the command ends quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _number(kind: type, low: float, *, inclusive: bool) -> Callable[[str], float]:
    expected = f"{'an integer' if kind is int else 'a number'} {'>=' if inclusive else '>'} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # argparse names the type in some messages
    return parse


positive_int = _number(int, 1, inclusive=True)
non_negative_int = _number(int, 0, inclusive=True)
positive_float = _number(float, 0, inclusive=False)
non_negative_float = _number(float, 0, inclusive=True)


def duration(text: str):
    """An age such as 30d, 12h, 90m (see `edgecap.units.parse_duration`)."""
    from ..errors import InputError
    from ..units import parse_duration

    try:
        return parse_duration(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="graph precision (default fp32; int8 needs `edgecap quantize`)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_threads(p: argparse.ArgumentParser, what: str = "intra-op threads") -> None:
    p.add_argument("--threads", type=positive_int, default=None, help=f"{what} (default: all cores)")
