"""Argument checks shared by the stores: each error names the argument and says what fits."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["check_bool", "check_callable", "check_path", "check_text"]


def check_path(value: Any, name: str) -> str:
    """``value`` as a str path; ``TypeError`` naming ``name`` unless a str or ``os.PathLike``."""
    if type(value) is str and value:  # the hot path: a cache lookup pays one type() call
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike path, got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a text path, got a {type(path).__name__} path; use os.fsdecode()")
    if not path:
        raise ValueError(f"{name} must be a non-empty path")
    return path


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool; ``TypeError`` otherwise (``bool("no")`` is true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_callable(value: Any, name: str) -> None:
    """``TypeError`` naming ``name`` unless ``value`` is None or callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, got {type(value).__name__}")


def check_text(value: str, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``value`` holds a lone surrogate.

    Such a string (``"\\ud800"``, typically from decoding bytes with
    ``errors="surrogateescape"``, e.g. ``os.fsdecode`` of a bad file name) has
    no UTF-8 form, so neither SQLite nor llama.cpp can take it; without this
    check it surfaces as a bare ``UnicodeEncodeError`` from deep inside either.
    """
    if value.isascii():  # O(1) in CPython: the common case costs nothing
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} contains a lone surrogate ({value[exc.start]!r} at index {exc.start}), which has "
            "no UTF-8 form; decode the source text with errors='replace' or fix it"
        ) from None


#: The largest integer SQLite (and PostgreSQL's BIGINT) holds.
INT64_MAX = 2**63 - 1


def check_count(value: Any, name: str) -> int:
    """A non-negative int (a limit, an offset); values beyond 64-bit integers mean "no limit"."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return min(value, INT64_MAX)
