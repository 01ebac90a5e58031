"""The source state machine: the states a :class:`~edgecap.sources.Source` moves through and the legal moves."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

__all__ = ["ALLOWED_TRANSITIONS", "SourceState", "TERMINAL_STATES", "check_transition"]


class SourceState(Enum):
    """Where a source is in its life; see :data:`ALLOWED_TRANSITIONS`."""

    CONNECTING = "connecting"  # opening the file/stream, or waiting for its first frame
    STREAMING = "streaming"  # frames flow
    RECONNECTING = "reconnecting"  # live source down, waiting out the backoff
    STOPPED = "stopped"  # end of file, or stop() (terminal)
    FAILED = "failed"  # cannot be read, or gave up after max_reconnects (terminal)


#: Every legal state change. STOPPED and FAILED are terminal; a stopped source is not restarted (make a new one).
ALLOWED_TRANSITIONS: Mapping[SourceState, frozenset[SourceState]] = {
    SourceState.CONNECTING: frozenset({SourceState.STREAMING, SourceState.RECONNECTING, SourceState.STOPPED,
                                       SourceState.FAILED}),
    SourceState.STREAMING: frozenset({SourceState.RECONNECTING, SourceState.STOPPED, SourceState.FAILED}),
    SourceState.RECONNECTING: frozenset({SourceState.CONNECTING, SourceState.STOPPED, SourceState.FAILED}),
    SourceState.STOPPED: frozenset(),
    SourceState.FAILED: frozenset(),
}

#: States a source never leaves.
TERMINAL_STATES = frozenset(s for s, allowed in ALLOWED_TRANSITIONS.items() if not allowed)


def check_transition(old: SourceState, new: SourceState) -> None:
    """Raise if ``old -> new`` is not in :data:`ALLOWED_TRANSITIONS` (that is a bug in the reader, not bad input).

    Args:
        old: the current state.
        new: the state the reader wants to move to.

    Raises:
        RuntimeError: the transition is illegal.
    """
    if new not in ALLOWED_TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.name for s in ALLOWED_TRANSITIONS[old])) or "none (terminal)"
        raise RuntimeError(f"illegal source state transition {old.name} -> {new.name}; allowed from {old.name}: "
                           f"{allowed}")
