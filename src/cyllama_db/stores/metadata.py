"""The dashboard design's ``metadata`` table: string values under string keys.

The library keeps two keys itself: ``db_version`` (the schema version) and
``server_start_time`` (Unix milliseconds; the metrics store derives ``uptime``
from it). ``server_start_time`` is set when the file is created and reset by
:meth:`MetadataStore.mark_server_start`, which a metrics sampler calls when it
starts: the process that samples is the "server" whose uptime the dashboard
shows. Merely opening the database (a CLI command, a script) leaves it alone.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .._validate import check_text
from ..db import policy as _policy
from ..db.migrations import migration
from ..db.store import Store, db_op

__all__ = ["EXPORT_POLICY", "RESERVED_METADATA_KEYS", "MetadataStore"]


#: How the ``metadata`` table is exported and imported (``db/policy.py``): the
#: reserved keys (:data:`RESERVED_METADATA_KEYS`) are this database's own.
EXPORT_POLICY: tuple[_policy.TablePolicy, ...] = (
    _policy.TablePolicy(
        "metadata",
        key=("key",),
        newer_by="updated_at",
        bookkeeping=("updated_at",),
        local_keys=("db_version", "server_start_time"),
        ms_time_columns=("updated_at",),
    ),
)

RESERVED_METADATA_KEYS = ("db_version", "server_start_time")


@migration(1, "config and metadata tables")
def _create_metadata_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS metadata (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        )
        """
    )


@migration(1, "config and metadata tables", engine="postgresql")
def _create_metadata_table_pg(conn: Any) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS metadata (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL,
            updated_at BIGINT NOT NULL
        )
        """
    )


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"metadata key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("metadata key must not be empty")
    check_text(key, "metadata key")
    return key


class MetadataStore(Store):
    """Text values under string keys: ``db.metadata.get/set/delete/all``, ``mark_server_start``.

    The flat ``db.get_metadata`` / ``set_metadata`` / ``get_all_metadata`` /
    ``delete_metadata`` are the same methods.
    """

    name = "metadata"
    tables = ("metadata",)
    export_policy = EXPORT_POLICY

    def counts(self, conn: sqlite3.Connection) -> dict[str, Any]:
        return {"metadata_entries": conn.execute("SELECT COUNT(*) FROM metadata").fetchone()[0]}

    @db_op()
    def set(self, key: str, value: str | int | float) -> None:
        """Store ``value`` under ``key``; numbers are stored as their text, like the design's."""
        _check_key(key)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(
                f"metadata value for {key!r} must be a str (or a number, stored as text), "
                f"got {type(value).__name__}; use set_config() for typed values"
            )
        check_text(str(value), f"metadata value for {key!r}")
        with self.pool.transaction() as conn:
            conn.execute(
                "INSERT INTO metadata (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, str(value), int(self.clock() * 1000)),
            )

    @db_op()
    def get(self, key: str) -> str | None:
        """The text stored under ``key``, or None when absent."""
        _check_key(key)
        with self.pool.read() as conn:
            row = conn.execute("SELECT value FROM metadata WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @db_op(empty=dict)
    def all(self) -> dict[str, str]:
        """Every metadata entry as ``{key: value}``."""
        with self.pool.read() as conn:
            return dict(conn.execute("SELECT key, value FROM metadata ORDER BY key").fetchall())

    @db_op()
    def mark_server_start(self) -> None:
        """Set ``server_start_time`` to now (Unix ms): uptime counts from here."""
        self.set("server_start_time", str(int(self.clock() * 1000)))

    @db_op(empty=lambda: False)
    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        _check_key(key)
        with self.pool.transaction() as conn:
            cursor = conn.execute("DELETE FROM metadata WHERE key = ?", (key,))
        return cursor.rowcount > 0
