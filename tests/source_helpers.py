"""Helpers for tests that drive a Source: a status recorder, the state-machine invariant and the reader threads."""

from __future__ import annotations

import threading
import time

from edgecap.sources import ALLOWED_TRANSITIONS, SourceState, SourceStatus


class Recorder:
    """on_status callback: keeps (monotonic arrival, status) and lets a test wait for a kind."""

    def __init__(self) -> None:
        self.items: list[tuple[float, SourceStatus]] = []
        self._cond = threading.Condition()

    def __call__(self, status: SourceStatus) -> None:
        with self._cond:
            self.items.append((time.monotonic(), status))
            self._cond.notify_all()

    @property
    def statuses(self) -> list[SourceStatus]:
        with self._cond:
            return [s for _, s in self.items]

    def kinds(self) -> list[str]:
        return [s.kind for s in self.statuses]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> float | None:
        """Monotonic arrival time of the count-th status of this kind, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                times = [t for t, s in self.items if s.kind == kind]
                if len(times) >= count:
                    return times[count - 1]
                if not self._cond.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                    return None


def assert_legal_history(rec: Recorder) -> None:
    """Every reported transition is allowed, and statuses chain (RECONNECTING -> CONNECTING is the silent one)."""
    prev: SourceStatus | None = None
    for st in rec.statuses:
        if st.previous is not st.state:
            assert st.state in ALLOWED_TRANSITIONS[st.previous], (st.previous, st.state)
        if prev is not None:
            assert st.previous is prev.state or (prev.state is SourceState.RECONNECTING
                                                 and st.previous is SourceState.CONNECTING)
        assert "\n" not in st.message
        prev = st


def source_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edgecap-source-")]
