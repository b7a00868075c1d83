"""Time conversions shared by every store.

Timestamps are stored as Unix seconds (REAL, UTC) rather than SQLite's
``CURRENT_TIMESTAMP`` text: range queries on them are plain numeric index
scans, and sub-second precision matters for TTLs and latency statistics.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timedelta, timezone

__all__ = [
    "MAX_DURATION",
    "MAX_TIMESTAMP",
    "MIN_TIMESTAMP",
    "from_timestamp",
    "parse_duration",
    "parse_when",
    "time_arg",
    "to_timestamp",
]

#: The Unix seconds a datetime can stand for (years 1 to 9999, UTC): a stored or
#: given time outside them cannot be shown, compared as a datetime or bucketed.
MIN_TIMESTAMP = -62_135_596_800.0
MAX_TIMESTAMP = 253_402_300_799.0

#: The longest duration :func:`parse_duration` accepts (about 1000 years): longer
#: ones are typing mistakes, and would overflow ``timedelta`` and datetimes anyway.
MAX_DURATION = timedelta(days=365_250)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | float | int | timedelta) -> timedelta:
    """Parse ``"90"``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``, ``"2w"`` into a timedelta.

    A bare number means seconds. Raises ``TypeError`` for other types and
    ``ValueError`` for text that is not a duration, and for negative,
    non-finite and absurdly long durations (more than :data:`MAX_DURATION`,
    about 1000 years).
    """
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise TypeError(
            f"not a duration: {_shown(text)} ({type(text).__name__}); "
            "expected a timedelta, a number of seconds or e.g. '30s', '15m', '24h', '7d'"
        )
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return _checked(text, text)
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(
            f"not a duration: {_shown(text)} "
            "(expected a number of seconds or e.g. 30s, 15m, 24h, 7d)"
        )
    number, unit = match.groups()
    return _checked(float(number) * _UNIT_SECONDS[(unit or "s").lower()], text)


def _shown(text: object) -> str:
    """``repr(text)``, cut short: error messages stay one readable line."""
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _checked(seconds: float | int, text: object) -> timedelta:
    # Checked before timedelta() sees it: an int too big for a C double, inf
    # or nan would otherwise escape as OverflowError or a confusing ValueError.
    shown = _shown(text)
    if isinstance(seconds, float) and math.isnan(seconds):
        raise ValueError(f"not a duration: {shown}")
    try:
        too_long = not seconds <= MAX_DURATION.total_seconds()
    except OverflowError:
        too_long = True
    if too_long:
        raise ValueError(f"duration {shown} is too long (at most {MAX_DURATION.days} days)")
    return timedelta(seconds=seconds)


def parse_when(text: str) -> timedelta | datetime:
    """A moment written as text: a duration meaning "that long ago", or an ISO-8601 date/time.

    ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``, ``"2w"`` (and a bare number of
    seconds, ``"3600"``) come back as a :class:`~datetime.timedelta`, read by
    :func:`parse_duration`; ``"2024-05-01"``, ``"2024-05-01T12:30"`` or
    ``"2024-05-01T12:30:00+02:00"`` / ``"...Z"`` as a :class:`~datetime.datetime`
    (without an offset it is local time, as for naive datetimes). This one
    function reads every ``since``/``until``/``older_than`` given as text,
    in the Python API and on the command line alike. Raises ``TypeError``
    for a non-str and ``ValueError`` for text that is neither.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected text such as '7d' or '2024-05-01', got {type(text).__name__}")
    stripped = text.strip()
    if _DURATION_RE.match(stripped):
        return parse_duration(stripped)
    if stripped.endswith(("z", "Z")):
        stripped = stripped[:-1] + "+00:00"  # fromisoformat reads "Z" only from Python 3.11 on
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"not a duration or a date: {_shown(text)} (expected e.g. 90m, 24h, 7d, "
            "or an ISO-8601 date such as 2024-05-01 or 2024-05-01T12:30:00Z)"
        ) from None
    return moment


def to_timestamp(
    value: datetime | timedelta | float | int | str, *, now: float | None = None, name: str = "time"
) -> float:
    """Turn a datetime, a timedelta or duration text (meaning "that long before now"),
    ISO-8601 text or a number into Unix seconds.

    Text is read by :func:`parse_when` (``"7d"``, ``"90m"``, ``"2024-05-01"``).
    Naive datetimes are taken as local time, as ``datetime.timestamp()`` does.
    A wrong type raises ``TypeError`` naming the argument ``name``; text that
    is neither a duration nor a date raises ``ValueError``; a number (or a
    timedelta) that is not finite or lands outside the years 1 to 9999 raises
    :class:`~cyllama_db.errors.OutOfRangeError` (a ``ValueError``).
    """
    if isinstance(value, str):
        value = parse_when(value)
    if isinstance(value, datetime):
        try:
            return value.timestamp()
        except (OverflowError, ValueError, OSError) as exc:  # datetime.min in local time, say
            raise _out_of_range(name, value) from exc
    if isinstance(value, timedelta):
        ts = (time.time() if now is None else now) - value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a datetime, a timedelta, Unix seconds or text such as '7d' or "
            f"'2024-05-01', got {type(value).__name__}"
        )
    else:
        try:
            ts = float(value)
        except OverflowError:
            raise _out_of_range(name, value) from None
    if not MIN_TIMESTAMP <= ts <= MAX_TIMESTAMP:  # also NaN
        raise _out_of_range(name, value)
    return ts


def _out_of_range(name: str, value: object) -> ValueError:
    from .errors import OutOfRangeError

    return OutOfRangeError(
        f"{name}={_shown(value)} is out of range: a time must lie between the years 1 and 9999 "
        f"(Unix seconds {MIN_TIMESTAMP:.0f} to {MAX_TIMESTAMP:.0f}); pass a datetime, a timedelta or Unix seconds in it"
    )


def time_arg(value: object, name: str, now: float) -> float:
    """``to_timestamp(value)`` for the argument ``name``, with errors that name it.

    Every ``since``/``until``/``older_than`` of the public API goes through
    here: a datetime, Unix seconds, a timedelta or duration text (``"7d"``:
    that long before ``now``), or ISO-8601 text.
    """
    try:
        ts = to_timestamp(value, now=now)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be a datetime, a timedelta, Unix seconds or text such as '7d', '90m' "
            f"or '2024-05-01', got {type(value).__name__}"
        ) from None
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"{name}={_shown(value)} is not a usable time: {exc}") from None
    if math.isnan(ts):
        raise ValueError(f"{name} must not be NaN")
    return ts


def from_timestamp(value: float | None) -> datetime | None:
    """Unix seconds to an aware UTC datetime (None stays None)."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=timezone.utc)
