"""Human-facing units: clip positions as MM:SS.s."""

from __future__ import annotations


def format_ts(seconds: float) -> str:
    """Seconds -> MM:SS.s"""
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:04.1f}"
