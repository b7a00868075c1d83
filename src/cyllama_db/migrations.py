"""One migration runner shared by every store.

Each store module registers its schema changes with the :func:`migration`
decorator (after sqlite-utils' ``migrations``)::

    @migration(2, "cache table")
    def _create_cache(conn):
        conn.execute("CREATE TABLE cache (...)")

Versions form one global sequence recorded in the seed design's
``schema_version`` table.  Each migration runs together with the row that
records it in one ``BEGIN IMMEDIATE`` transaction, and the pending list is
re-read inside that transaction, so several processes opening a fresh file at
the same moment apply every migration exactly once.

Version numbers handed out so far (add new ones at the end, never reuse):

== ====================================
1  config and metadata tables (core)
2  response cache
3  generation statistics
4  structured logs
5  model registry
6  metrics history
== ====================================
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import MigrationError, SchemaVersionError

__all__ = [
    "Migration",
    "applied_versions",
    "execute_script",
    "latest_version",
    "migrate",
    "migration",
    "pending_versions",
    "registered_migrations",
    "schema_version",
]

logger = logging.getLogger("cyllama_db.migrations")

MigrationFunc = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: MigrationFunc


_MIGRATIONS: dict[int, Migration] = {}


def migration(version: int, name: str) -> Callable[[MigrationFunc], MigrationFunc]:
    """Register ``fn(conn)`` as schema migration number ``version``."""
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"migration version must be a positive int, got {version!r}")

    def register(fn: MigrationFunc) -> MigrationFunc:
        existing = _MIGRATIONS.get(version)
        # Re-importing a module (e.g. importlib.reload) re-registers the same
        # function name; a different one under the same number is a bug.
        if existing is not None and existing.apply.__qualname__ != fn.__qualname__:
            raise ValueError(
                f"migration {version} is already registered as {existing.name!r}"
            )
        _MIGRATIONS[version] = Migration(version, name, fn)
        return fn

    return register


def registered_migrations() -> list[Migration]:
    """Every known migration, in version order."""
    return [_MIGRATIONS[v] for v in sorted(_MIGRATIONS)]


def latest_version() -> int:
    """The newest schema version this code knows (0 if none is registered)."""
    return max(_MIGRATIONS, default=0)


def execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run several ``;``-separated statements inside the current transaction.

    ``sqlite3.Connection.executescript`` commits first, which would break the
    one-transaction-per-migration guarantee, so statements are split here.
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                conn.execute(statement)
            statement = ""
    if statement.strip():
        raise MigrationError(f"incomplete SQL statement in migration: {statement.strip()[:80]}")


def _has_version_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
    ).fetchone()
    return row is not None


def applied_versions(conn: sqlite3.Connection) -> list[int]:
    """The versions recorded in ``schema_version`` (empty for a fresh file)."""
    if not _has_version_table(conn):
        return []
    return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest applied version (0 for a fresh file)."""
    versions = applied_versions(conn)
    return versions[-1] if versions else 0


def pending_versions(conn: sqlite3.Connection) -> list[int]:
    """Registered migrations not yet applied to this database."""
    applied = set(applied_versions(conn))
    return [m.version for m in registered_migrations() if m.version not in applied]


def check_not_newer(conn: sqlite3.Connection, path: str) -> None:
    """Raise :class:`SchemaVersionError` if the file comes from a newer cyllama-db."""
    found = schema_version(conn)
    if found > latest_version():
        raise SchemaVersionError(path, found, latest_version())


def migrate(conn: sqlite3.Connection, path: str = "database") -> list[int]:
    """Apply every pending migration; return the versions applied by this call.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    check_not_newer(conn, path)
    applied_now: list[int] = []
    # The common case (an up-to-date file) must not take the write lock: a
    # long write in another process would otherwise stall every open.
    pending = set(pending_versions(conn))
    for mig in registered_migrations():
        if mig.version not in pending:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY,"
                " applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,"
                " name TEXT)"
            )
            # Re-read under the write lock: another process may have applied it.
            if schema_version(conn) > latest_version():
                raise SchemaVersionError(path, schema_version(conn), latest_version())
            done = conn.execute(
                "SELECT 1 FROM schema_version WHERE version = ?", (mig.version,)
            ).fetchone()
            if done is None:
                started = time.perf_counter()
                try:
                    mig.apply(conn)
                except Exception as exc:
                    raise MigrationError(
                        f"migration {mig.version} ({mig.name}) failed on {path}: {exc}; "
                        "the database was left at the previous version"
                    ) from exc
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (?, ?)",
                    (mig.version, mig.name),
                )
                applied_now.append(mig.version)
                logger.info(
                    "applied migration %d (%s) to %s in %.1f ms",
                    mig.version,
                    mig.name,
                    path,
                    (time.perf_counter() - started) * 1000,
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return applied_now
