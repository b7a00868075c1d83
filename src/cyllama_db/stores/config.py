"""Typed key/value configuration: preferences and model defaults.

Values come back with the type they were stored with: the seed design's
``value_type`` column records ``str``, ``int``, ``float``, ``bool`` or
``json`` (dicts and lists), and ``None`` is stored as JSON ``null``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from .._validate import check_text
from ..db import policy as _policy
from ..db.migrations import migration
from ..db.store import Store, db_op, library_error

__all__ = ["EXPORT_POLICY", "VALUE_TYPES", "ConfigStore", "decode_value", "encode_value"]


def _config_ok(text: Any, value_type: Any) -> int:
    """1 when an imported row's ``value`` reads back as its ``value_type``, else 0."""
    if not isinstance(text, str) or not isinstance(value_type, str):
        return 0
    try:
        decode_value(text, value_type)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return 0
    return 1


#: How the ``config`` table is exported and imported (``db/policy.py``).
EXPORT_POLICY: tuple[_policy.TablePolicy, ...] = (
    _policy.TablePolicy(
        "config",
        key=("key",),
        newer_by="updated_at",
        bookkeeping=("created_at", "updated_at"),
        time_columns=("created_at", "updated_at"),
        row_checks=(
            _policy.RowCheck(
                ("value", "value_type"), _config_ok, "value: does not match its value_type (e.g. invalid JSON)"
            ),
        ),
    ),
)

VALUE_TYPES = ("str", "int", "float", "bool", "json")


@migration(1, "config and metadata tables")
def _create_config_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS config (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            value_type TEXT NOT NULL CHECK (value_type IN ('str','int','float','bool','json')),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """
    )


@migration(1, "config and metadata tables", engine="postgresql")
def _create_config_table_pg(conn: Any) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS config (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            value_type TEXT NOT NULL CHECK (value_type IN ('str','int','float','bool','json')),
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )
        """
    )


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"config key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("config key must not be empty")
    check_text(key, "config key")
    return key


def encode_value(key: str, value: Any) -> tuple[str, str]:
    """``value`` as ``(text, value_type)``; ``TypeError`` naming ``key`` if unsupported."""
    # bool before int: bool is a subclass of int and must stay a bool.
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    # int()/float() first: a subclass (IntEnum, ...) may print itself otherwise,
    # e.g. "Color.RED", which would not parse back.
    if isinstance(value, int):
        return str(int(value)), "int"
    if isinstance(value, float):
        return repr(float(value)), "float"
    if isinstance(value, str):
        check_text(value, f"config value for {key!r}")
        return value, "str"
    if value is None or isinstance(value, (dict, list)):
        try:
            text = json.dumps(value, allow_nan=False, sort_keys=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"config value for {key!r} is not JSON-serialisable: {exc}. "
                "Store str, int, float, bool, None, or dicts/lists of those."
            ) from exc
        if json.loads(text) != value:
            # e.g. tuples or non-str dict keys: they would come back changed.
            raise TypeError(
                f"config value for {key!r} would not round-trip through JSON "
                "(use lists instead of tuples and str dict keys)"
            )
        return text, "json"
    raise TypeError(
        f"unsupported config value for {key!r}: {type(value).__name__}. "
        "Store str, int, float, bool, None, or a dict/list of JSON values."
    )


def decode_value(text: str, value_type: str) -> Any:
    """Inverse of :func:`encode_value`."""
    if value_type == "str":
        return text
    if value_type == "int":
        return int(text)
    if value_type == "float":
        return float(text)
    if value_type == "bool":
        return text == "true"
    if value_type == "json":
        return json.loads(text)
    raise ValueError(f"unknown config value_type {value_type!r}")


class ConfigStore(Store):
    """Typed settings under string keys: ``db.config.get/set/delete/all``.

    The flat ``db.get_config`` / ``set_config`` / ``get_all_config`` /
    ``delete_config`` are the same methods.
    """

    name = "config"
    tables = ("config",)
    export_policy = EXPORT_POLICY

    def counts(self, conn: sqlite3.Connection) -> dict[str, Any]:
        return {"config_entries": conn.execute("SELECT COUNT(*) FROM config").fetchone()[0]}

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, with its original type, or ``default``."""
        _check_key(key)
        if not self.enabled:
            return default
        try:
            with self.pool.read() as conn:
                row = conn.execute(
                    "SELECT value, value_type FROM config WHERE key = ?", (key,)
                ).fetchone()
        except sqlite3.Error as exc:  # the error contract (not db_op: this is a hot path)
            raise library_error(exc, self.path, self.settings.busy_timeout) from exc
        return default if row is None else decode_value(row[0], row[1])

    @db_op()
    def set(self, key: str, value: Any) -> None:
        """Store ``value`` (str, int, float, bool, None, dict or list) under ``key``."""
        _check_key(key)
        text, value_type = encode_value(key, value)
        if value_type == "float" and not math.isfinite(value):
            text = repr(value)  # 'inf', '-inf', 'nan' parse back with float()
        now = self.clock()
        with self.pool.transaction() as conn:
            conn.execute(
                "INSERT INTO config (key, value, value_type, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " value_type = excluded.value_type, updated_at = excluded.updated_at",
                (key, text, value_type, now, now),
            )

    @db_op(empty=dict)
    def all(self) -> dict[str, Any]:
        """Every config entry as ``{key: value}``, keys sorted."""
        with self.pool.read() as conn:
            rows = conn.execute("SELECT key, value, value_type FROM config ORDER BY key").fetchall()
        return {key: decode_value(text, vtype) for key, text, vtype in rows}

    @db_op(empty=lambda: False)
    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        _check_key(key)
        with self.pool.transaction() as conn:
            cursor = conn.execute("DELETE FROM config WHERE key = ?", (key,))
        return cursor.rowcount > 0
