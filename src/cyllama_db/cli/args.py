"""Argument types and value readers of the ``cyllama-db`` command line.

Each ``type=`` function of the parser raises ``argparse.ArgumentTypeError``
on a malformed value (argparse turns it into a usage error, exit code 2);
:func:`parse_bool` and :func:`typed_value`, which read values after parsing,
raise :class:`~cyllama_db.errors.UsageError` instead.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .._time import _shown, parse_when
from ..errors import UsageError

__all__ = [
    "MAX_COUNT",
    "MAX_SECONDS",
    "PROG",
    "duration",
    "float_between",
    "int_at_least",
    "key_value",
    "non_negative_int",
    "parse_bool",
    "port",
    "positive_float",
    "positive_int",
    "typed_value",
]

#: The command's name, as usage and error messages show it.
PROG = "cyllama-db"


# Upper bounds of numeric options: far beyond any real use, well inside what
# SQLite (64-bit integers), time.sleep() and datetimes can take.
MAX_COUNT = 1_000_000_000
MAX_SECONDS = 86_400.0  # polling and sampling intervals: one day

# -- argument types ------------------------------------------------------------------------


def duration(text: str) -> timedelta | datetime:
    """``--since``/``--until``/``--older-than``: read by the API's own parser (``_time.parse_when``).

    A duration (``7d``, ``90m``: that long ago) or an ISO-8601 date/time.
    """
    try:
        value = parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type for an integer from ``minimum`` to :data:`MAX_COUNT`; ``what`` words the too-small error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {_shown(text)}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what}, got {value}")
        if value > MAX_COUNT:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT}, got {_shown(text)}")
        return value

    return parse


positive_int = int_at_least(1, "must be at least 1")
non_negative_int = int_at_least(0, "must not be negative")


def float_between(
    minimum: float, maximum: float, *, exclusive_min: bool = False
) -> Callable[[str], float]:
    """An argparse type for a finite float in [minimum, maximum] ((minimum, ...] if exclusive)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None
        low_ok = value > minimum if exclusive_min else value >= minimum
        if not (low_ok and value <= maximum):  # also rejects nan and inf
            low = f"more than {minimum:.10g}" if exclusive_min else f"at least {minimum:.10g}"
            raise argparse.ArgumentTypeError(
                f"must be {low} and at most {maximum:.10g}, got {_shown(text)}"
            )
        return value

    return parse


positive_float = float_between(0, MAX_SECONDS, exclusive_min=True)


def port(text: str) -> int:
    """``--port``: a TCP port number, 0-65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def key_value(text: str) -> tuple[str, str]:
    """``--param KEY=VALUE``: the pair, the key stripped; the value may be empty or hold ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str, what: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); UsageError naming ``what`` for anything else."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise UsageError(f"{what}: {text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def typed_value(text: str, type_name: str, what: str) -> Any:
    """``text`` converted to ``type_name`` (a config ``--type``); UsageError if it does not fit."""
    try:
        if type_name == "str":
            return text
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
        if type_name == "bool":
            return parse_bool(text, what)
        if type_name == "json":
            return json.loads(text)
    except (ValueError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what}: {text!r} is not a valid {type_name} ({exc})") from None
    raise UsageError(f"{what}: unknown type {type_name!r}")

