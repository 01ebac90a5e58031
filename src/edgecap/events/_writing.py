"""Small helpers of the writing side: is a path writable, and a log that a failing disk cannot flood."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .._log import logger
from .model import EventStoreError


def check_writable_location(path: Path, what: str) -> None:
    """Raise EventStoreError (one line) unless ``path`` can be created or written as a file.

    Args:
        path: the file to be written.
        what: what it is, for the message ("event database", "JSONL file").
    """
    parent = path.absolute().parent
    if not parent.exists():
        raise EventStoreError(f"cannot create {what} {path}: directory {parent} does not exist; create it or "
                              "choose another path")
    if not parent.is_dir():
        raise EventStoreError(f"cannot create {what} {path}: {parent} is not a directory; choose another path")
    if path.is_dir():
        raise EventStoreError(f"{what} {path} is a directory; give a file path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EventStoreError(f"cannot write {what} {path}: directory {parent} is read-only; make it writable or "
                              "choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise EventStoreError(f"cannot write {what} {path}: the file is read-only; make it writable or choose "
                              "another path")



class Throttled:
    """Log the first message at once, then at most one per ``interval_s`` with a count of those suppressed (a full
    disk must not flood the log it may be writing to)."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s = interval_s
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg, args = msg + " (%d similar messages suppressed)", (*args, self._suppressed)
        logger.log(level, msg, *args)
        self._suppressed, self._next = 0, now + self.interval_s

