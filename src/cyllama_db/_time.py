"""Time conversions shared by every store.

Timestamps are stored as Unix seconds (REAL, UTC) rather than SQLite's
``CURRENT_TIMESTAMP`` text: range queries on them are plain numeric index
scans, and sub-second precision matters for TTLs and latency statistics.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

__all__ = ["from_timestamp", "parse_duration", "to_timestamp"]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | float | int | timedelta) -> timedelta:
    """Parse ``"90"``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``, ``"2w"`` into a timedelta.

    A bare number means seconds. Raises ``ValueError`` for anything else.
    """
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return timedelta(seconds=text)
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(
            f"not a duration: {text!r} (expected a number of seconds or e.g. 30s, 15m, 24h, 7d)"
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNIT_SECONDS[(unit or "s").lower()])


def to_timestamp(value: datetime | timedelta | float | int, *, now: float | None = None) -> float:
    """Turn a datetime, a timedelta (meaning "that long before now") or a number into Unix seconds.

    Naive datetimes are taken as local time, as ``datetime.timestamp()`` does.
    """
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, timedelta):
        return (time.time() if now is None else now) - value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"expected a datetime, a timedelta or Unix seconds, got {type(value).__name__}"
        )
    return float(value)


def from_timestamp(value: float | None) -> datetime | None:
    """Unix seconds to an aware UTC datetime (None stays None)."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=timezone.utc)
