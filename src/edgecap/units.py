"""Units as users write and read them: durations ("30d", "12h"), sizes ("20GB", "1.5GiB"), clip positions (MM:SS.s)."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .errors import InputError

_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)

# Decimal units as disks are sold (GB = 10**9), binary ones where asked for (GiB = 2**30); a bare number is bytes.
_BYTES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?", re.IGNORECASE)


def parse_duration(text: str, *, allow_zero: bool = False) -> timedelta:
    """Read a duration: a number and one unit, s (seconds), m (minutes), h, d or w (weeks): "30d", "1.5h".

    Args:
        text: the duration as written.
        allow_zero: accept "0s" (an age of nothing); a retention limit must be positive.

    Returns:
        the duration.

    Raises:
        InputError: other text, zero (unless allowed), or a duration too large to represent.

    Example:
        >>> parse_duration("2w")
        datetime.timedelta(days=14)
    """
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InputError(f"cannot read duration {text!r}: expected a number and a unit (s, m, h, d, w) such as "
                         "45s, 90m, 12h, 30d, 2w")
    seconds = float(match[1]) * _SECONDS[match[2].lower()]
    if seconds == 0 and not allow_zero:
        raise InputError(f"duration {text!r} is zero: give a positive duration such as 30d")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise InputError(f"duration {text!r} is too large: give at most {timedelta.max.days} days") from None


def parse_size(text: str) -> int:
    """Read a size in bytes: a number and an optional unit, B, KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB
    (powers of 1024): "20GB", "500MB", "1.5GiB"; a bare number is bytes.

    Returns:
        the size in whole bytes (at least 1).

    Raises:
        InputError: other text, or a size below one byte.

    Example:
        >>> parse_size("1.5GiB")
        1610612736
    """
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InputError(f"cannot read size {text!r}: expected a number and an optional unit (B, KB, MB, GB, TB, "
                         "KiB, MiB, GiB, TiB) such as 500MB or 20GB")
    size = float(match[1]) * _BYTES[(match[2] or "").lower()]
    if not math.isfinite(size) or size < 1:
        raise InputError(f"size {text!r} is {'zero' if size == 0 else 'out of range'}: give a positive size such "
                         "as 20GB")
    return int(size)


def format_ts(seconds: float) -> str:
    """Seconds -> MM:SS.s (a position in a clip)."""
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:04.1f}"
