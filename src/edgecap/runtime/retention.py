"""Retention while the runtime runs: prune the event log now and then, through the running store's writer."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from .._log import logger
from ..errors import EdgecapError
from ..events import Event, prune
from .config import RetentionConfig


class Pruner:
    """Prunes the log at start and every ``retention.every_s`` on a daemon thread until `stop`.

    Each prune runs in small transactions (see `edgecap.events.prune`), so the store's writer is never stalled for
    long; its ``prune`` event goes through ``record`` (the store's ``put``), like every other event.

    Args:
        db_path: the event database.
        retention: the limits.
        thumbnails: the thumbnail folder.
        record: where the prune's system event goes.
    """

    def __init__(self, db_path: str | os.PathLike, retention: RetentionConfig, *, thumbnails: Path | None,
                 record: Callable[[Event], object]):
        self.db_path, self.retention, self.thumbnails, self.record = Path(db_path), retention, thumbnails, record
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgecap-retention", daemon=True)

    def start(self) -> Pruner:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> Pruner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = prune(self.db_path, older_than=self.retention.older_than, max_bytes=self.retention.max_bytes,
                               thumbnails=self.thumbnails, record=self.record)
                logger.info("retention: %s", report.summary())
            except EdgecapError as exc:
                logger.error("retention: prune failed: %s", exc)
            except Exception as exc:  # noqa: BLE001 - retention must never stop the cameras
                logger.error("retention: prune failed: %s: %s", type(exc).__name__, exc)
            self.runs += 1
            self._stop.wait(self.retention.every_s)
