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

**Engines.** A migration's parts are per engine. ``@migration(v, name)``
registers a SQLite part (the default); ``@migration(v, name,
engine="postgresql")`` registers the PostgreSQL DDL of the same version.
Every version is recorded on every engine, so version numbers agree: a
version without a part for an engine is recorded there without a change
(the PostgreSQL parts of the early versions create the current tables, so
later versions that only altered SQLite tables have nothing to do there).
On PostgreSQL, :func:`migrate_backend` runs the pending versions, each with
its ``schema_version`` row in one transaction, under the advisory lock
:data:`MIGRATION_LOCK`, so machines opening a fresh database at the same
moment apply each version once.

Every file is stamped with ``PRAGMA application_id`` = :data:`APPLICATION_ID`
(the ASCII bytes of ``"CyDB"``) in the transaction of its first migration.
A file from before the stamp is recognised by the exact shape of its
``schema_version`` table and by holding nothing but cyllama-db's tables, and
is stamped when next opened writable; any other non-empty SQLite file is
another application's and :func:`check_ours` refuses it
(:class:`~cyllama_db.errors.ForeignDatabaseError`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ForeignDatabaseError, MigrationError, SchemaVersionError

__all__ = [
    "APPLICATION_ID",
    "Migration",
    "applied_versions",
    "check_ours",
    "execute_script",
    "latest_version",
    "migrate",
    "migrate_backend",
    "migration",
    "pending_versions",
    "read_versions",
    "registered_migrations",
    "schema_version",
]

logger = logging.getLogger("cyllama_db.migrations")

MigrationFunc = Callable[[Any], None]

#: The engines a migration can have a part for.
ENGINES = ("sqlite", "postgresql")

#: The advisory lock (PostgreSQL) that serialises migrations across machines.
MIGRATION_LOCK = "cyllama-db migrations"

#: ``PRAGMA application_id`` of every cyllama-db file: ``"CyDB"`` in ASCII, 0x43794442.
APPLICATION_ID = int.from_bytes(b"CyDB", "big")

# ``PRAGMA table_info(schema_version)`` of our table: (name, declared type, pk).
_VERSION_TABLE_SHAPE = [("version", "INTEGER", 1), ("applied_at", "TIMESTAMP", 0), ("name", "TEXT", 0)]
_VERSION_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,"
    " name TEXT)"
)
# The same table on PostgreSQL; applied_at is text in SQLite's CURRENT_TIMESTAMP format.
_PG_VERSION_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied_at TEXT DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),"
    " name TEXT)"
)


@dataclass(frozen=True)
class Migration:
    """One schema version: its name and the steps that make it, run in one transaction.

    ``parts`` are the SQLite steps; ``engine_parts`` holds the steps of the
    other engines, as ``((engine, steps), ...)``.
    """

    version: int
    name: str
    parts: tuple[MigrationFunc, ...]
    engine_parts: tuple[tuple[str, tuple[MigrationFunc, ...]], ...] = ()

    def parts_for(self, engine: str) -> tuple[MigrationFunc, ...]:
        """The steps of this version on ``engine`` (``()``: recorded without a change)."""
        if engine == "sqlite":
            return self.parts
        return dict(self.engine_parts).get(engine, ())

    def apply(self, conn: Any, engine: str = "sqlite") -> None:
        """Run every part for ``engine``, in registration order (inside the caller's transaction)."""
        for part in self.parts_for(engine):
            part(conn)


_MIGRATIONS: dict[int, Migration] = {}


def migration(version: int, name: str, engine: str = "sqlite") -> Callable[[MigrationFunc], MigrationFunc]:
    """Register ``fn(conn)`` as schema migration number ``version`` on ``engine``.

    Each store registers the steps that create or change its own tables.
    When one version changed the tables of several stores (version 1 made
    ``config`` and ``metadata``), each store registers its part under the
    same number and name; the parts run together, in one transaction, and
    the version is recorded once. ``engine="postgresql"`` registers the
    PostgreSQL part of the version (the default is SQLite's).
    """
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"migration version must be a positive int, got {version!r}")
    if engine not in ENGINES:
        raise ValueError(f"migration engine must be one of {ENGINES}, got {engine!r}")

    def register(fn: MigrationFunc) -> MigrationFunc:
        existing = _MIGRATIONS.get(version)
        if existing is None:
            existing = Migration(version, name, ())
        elif existing.name != name:
            raise ValueError(f"migration {version} is already registered as {existing.name!r}")
        # Re-importing a module (e.g. importlib.reload) registers the same
        # function again: it replaces itself rather than running twice.
        parts = tuple(
            part
            for part in existing.parts_for(engine)
            if part.__qualname__ != fn.__qualname__ or part.__module__ != fn.__module__
        )
        if engine == "sqlite":
            _MIGRATIONS[version] = Migration(version, name, (*parts, fn), existing.engine_parts)
        else:
            others = tuple((e, p) for e, p in existing.engine_parts if e != engine)
            _MIGRATIONS[version] = Migration(version, name, existing.parts, (*others, (engine, (*parts, fn))))
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


def _engine_backend(conn: Any) -> Any:
    """The backend of a non-SQLite connection (a PostgreSQL one), else None."""
    if isinstance(conn, sqlite3.Connection):
        return None
    return getattr(conn, "backend", None)


def _has_version_table(conn: Any) -> bool:
    backend = _engine_backend(conn)
    if backend is not None:
        return bool(backend.has_table(conn, "schema_version"))
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
    ).fetchone()
    return row is not None


def applied_versions(conn: Any) -> list[int]:
    """The versions recorded in ``schema_version`` (empty for a fresh file)."""
    if not _has_version_table(conn):
        return []
    return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def schema_version(conn: Any) -> int:
    """The highest applied version (0 for a fresh file)."""
    versions = applied_versions(conn)
    return versions[-1] if versions else 0


def pending_versions(conn: Any) -> list[int]:
    """Registered migrations not yet applied to this database."""
    applied = set(applied_versions(conn))
    return [m.version for m in registered_migrations() if m.version not in applied]


_known_names: tuple[tuple[int, ...], frozenset[str]] | None = None


def _our_schema_names() -> frozenset[str]:
    """Every table, index, trigger and view name the registered migrations create."""
    global _known_names
    versions = tuple(sorted(_MIGRATIONS))
    if _known_names is None or _known_names[0] != versions:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            conn.execute(_VERSION_TABLE_SQL)
            for mig in registered_migrations():
                mig.apply(conn)
            names = frozenset(
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            )
        finally:
            conn.close()
        _known_names = (versions, names)
    return _known_names[1]


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def check_ours(conn: sqlite3.Connection, path: str) -> bool:
    """Raise :class:`ForeignDatabaseError` unless ``conn`` is a cyllama-db file (or empty).

    Returns whether the file already carries our ``application_id``; an
    empty file (no schema at all) and a cyllama-db file from before the
    stamp return False and are stamped by :func:`migrate`. Only reads.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id == APPLICATION_ID:
        return True
    if app_id != 0:
        raise ForeignDatabaseError(
            path, f"its PRAGMA application_id is {app_id & 0xFFFFFFFF:#010x}, cyllama-db's is {APPLICATION_ID:#010x}"
        )
    objects = [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    if not objects:
        return False  # an empty database: ours to fill
    tables = [name for kind, name in objects if kind == "table"]
    if "schema_version" not in tables:
        raise ForeignDatabaseError(
            path, f"it has no cyllama-db schema_version table; its tables: {_listing(tables) or 'none'}"
        )
    shape = [
        (row[1], str(row[2]).upper(), int(row[5]))
        for row in conn.execute("PRAGMA table_info(schema_version)")
    ]
    if shape != _VERSION_TABLE_SHAPE:
        columns = ", ".join(f"{n} {t}".strip() for n, t, _ in shape)
        raise ForeignDatabaseError(
            path,
            f"its schema_version table has the columns ({columns}), not cyllama-db's "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP, name TEXT)",
        )
    # A cyllama-db newer than this one may have added tables: say so instead.
    check_not_newer(conn, path)
    unknown = sorted(name for _, name in objects if name not in _our_schema_names())
    if unknown:
        raise ForeignDatabaseError(path, f"it holds tables or indexes cyllama-db never made: {_listing(unknown)}")
    return False


def _stamp(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def check_not_newer(conn: Any, path: str) -> None:
    """Raise :class:`SchemaVersionError` if the file comes from a newer cyllama-db."""
    found = schema_version(conn)
    if found > latest_version():
        raise SchemaVersionError(path, found, latest_version())


def migrate(conn: sqlite3.Connection, path: str = "database") -> list[int]:
    """Apply every pending migration; return the versions applied by this call.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Refuses
    another application's file (:func:`check_ours`) before writing anything,
    and stamps ours with :data:`APPLICATION_ID`.
    """
    stamped = check_ours(conn, path)
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
            conn.execute(_VERSION_TABLE_SQL)
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
                if not stamped:
                    _stamp(conn)  # in the same transaction as the first migration
                    stamped = True
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
    if not stamped:
        # A file from before the stamp, already up to date: one tiny write, once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                _stamp(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return applied_now


def migrate_backend(backend: Any) -> list[int]:
    """Apply every pending migration's parts for ``backend``'s engine (PostgreSQL); returns the versions applied.

    One runner for every machine: each pending version runs with its
    ``schema_version`` row in one transaction that first takes the advisory
    lock :data:`MIGRATION_LOCK` (waiting at most the busy timeout), and
    re-reads the applied versions under it, so machines opening at the same
    moment apply each version once. A database whose schema is newer than
    this code is refused (:class:`SchemaVersionError`) before anything is
    written. SQLite files use :func:`migrate`.
    """
    engine = backend.name
    where = backend.location
    with backend.read() as conn:
        check_not_newer(conn, where)
        pending = set(pending_versions(conn))
    applied_now: list[int] = []
    for mig in registered_migrations():
        if mig.version not in pending:
            continue
        with backend.transaction() as conn:
            backend.advisory_lock(conn, MIGRATION_LOCK)
            conn.execute(_PG_VERSION_TABLE_SQL)
            # Re-read under the lock: another machine may have applied it.
            if schema_version(conn) > latest_version():
                raise SchemaVersionError(where, schema_version(conn), latest_version())
            done = conn.execute("SELECT 1 FROM schema_version WHERE version = ?", (mig.version,)).fetchone()
            if done is not None:
                continue
            started = time.perf_counter()
            try:
                mig.apply(conn, engine)
            except Exception as exc:
                raise MigrationError(
                    f"migration {mig.version} ({mig.name}) failed on {where}: {exc}; "
                    "the database was left at the previous version"
                ) from exc
            conn.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", (mig.version, mig.name))
            applied_now.append(mig.version)
            logger.info(
                "applied migration %d (%s) to %s in %.1f ms",
                mig.version, mig.name, where, (time.perf_counter() - started) * 1000,
            )
    return applied_now


def read_versions(path: str, busy_timeout: float) -> dict[int, tuple[str | None, str | None]]:
    """``{version: (name, applied_at)}`` of the file at ``path``, read without migrating or creating it.

    Opens the file read-only (``mode=ro``), waiting at most ``busy_timeout``
    seconds for a lock. ``{}`` for ``":memory:"``, a path where no file
    exists and a file without a ``schema_version`` table; ``name`` is None
    for a file from before migrations had names. Raises
    :class:`~cyllama_db.errors.DatabaseFileError` if ``path`` is not a
    regular file or not an SQLite database (``sqlite_error`` says which),
    and the library's error for any other SQLite failure (see
    :func:`~cyllama_db.db.store.library_error`).
    """
    import os
    import urllib.parse

    from ..errors import DatabaseFileError
    from .store import library_error

    if path == ":memory:" or not os.path.exists(path):
        return {}
    if not os.path.isfile(path):
        raise DatabaseFileError(
            path, "not a regular file", "Give the path of a cyllama-db database file."
        )
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=busy_timeout)
        try:
            if not _has_version_table(conn):
                return {}
            cols = {r[1] for r in conn.execute("PRAGMA table_info(schema_version)")}
            name_col = "name" if "name" in cols else "NULL"
            return {
                int(v): (n, a)
                for v, n, a in conn.execute(f"SELECT version, {name_col}, applied_at FROM schema_version")
            }
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise library_error(exc, path, busy_timeout) from exc
