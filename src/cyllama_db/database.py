"""The :class:`CyllamaDB` facade, and the process-wide database of :func:`get_db`.

``CyllamaDB`` owns the connection pool and the migration run; every store
(config, metadata, cache, stats, logs, registry, metrics) lives in its own
module as a mixin that the facade is composed of.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import urllib.parse
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _pool as _pool_module
from . import migrations as _migrations
from ._base import DB_STATS_PROVIDERS, StoreBase
from ._export import ExportMixin
from ._pool import ConnectionPool
from ._settings import DEFAULT, Settings
from .cache import CacheMixin
from .config import ConfigMixin
from .errors import DatabaseBusyError, DatabaseClosedError, SchemaVersionError
from .logs import LogsMixin
from .metadata import MetadataMixin
from .metrics import MetricsMixin
from .registry import RegistryMixin
from .stats import StatsMixin

if TYPE_CHECKING:
    from .aio import AsyncCyllamaDB

__all__ = ["CyllamaDB", "configure_db", "get_db", "reset_db"]

logger = logging.getLogger("cyllama_db")

_SQLITE_MAGIC = b"SQLite format 3\x00"


def _remove_new_side_files(path: str, existed: list[str]) -> None:
    """Delete the -wal/-shm that a failed read-only open just created beside ``path``."""
    wal = path + "-wal"
    if existed or (os.path.exists(wal) and os.path.getsize(wal) > 0):
        return  # another connection's (or a crashed writer's) files: not ours to delete
    for side in (wal, path + "-shm"):
        with contextlib.suppress(OSError):
            os.remove(side)


class CyllamaDB(CacheMixin, RegistryMixin, ExportMixin, MetricsMixin, LogsMixin, StatsMixin, MetadataMixin, ConfigMixin, StoreBase):
    """One SQLite file holding everything local llama.cpp inference should remember.

    Args:
        path: database file. ``None``: ``$CYLLAMA_DB_PATH``, else
            ``<user data dir>/cyllama/cyllama.db``. ``"~"`` is expanded and
            missing folders are created; a new file is created owner-only
            (0600). ``":memory:"`` gives a private in-memory database.
        enabled: ``False`` (or ``CYLLAMA_DB_ENABLED=0``) makes every call a
            no-op that returns the empty answer, and creates no file.
            Default: enabled.
        cache_ttl: default lifetime of cache entries (``timedelta``, seconds or
            ``"24h"``); ``None`` means entries never expire. Default:
            ``$CYLLAMA_CACHE_TTL`` or 7 days.
        max_cache_size_mb: size the response cache is kept under. Default:
            ``$CYLLAMA_CACHE_MAX_SIZE_MB`` or 100.
        log_level: lowest level written to the logs table. Default:
            ``$CYLLAMA_LOG_LEVEL`` or ``"INFO"``.
        log_to_db: attach the library's own logger to the logs table.
            Default: ``$CYLLAMA_LOG_TO_DB`` or off.
        metrics_retention: how long metrics samples are kept. Default:
            ``$CYLLAMA_METRICS_RETENTION`` or 10 minutes.
        busy_timeout: seconds a writer waits for another writer. Default:
            ``$CYLLAMA_DB_BUSY_TIMEOUT`` or 30.
        cache_sampled: whether ``LLM``/``complete()``/``wrap()`` cache sampled
            calls (temperature > 0 and no fixed seed). Default:
            ``$CYLLAMA_CACHE_SAMPLED`` or True: identical requests get the
            stored answer, as the design's keys say (the seed is not part of
            them); a call can still ask for a new one with ``cache="refresh"``.

    A file that cannot be opened (permissions, not a SQLite database) is left
    untouched: a warning is logged and the database falls back to memory
    (:attr:`fallback_reason` says why). A file written by a newer cyllama-db
    raises :class:`~cyllama_db.SchemaVersionError` instead, since silently
    forgetting everything would be worse than stopping.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        enabled: bool | None = None,
        cache_ttl: Any = DEFAULT,
        max_cache_size_mb: float | None = None,
        log_level: str | int | None = None,
        *,
        log_to_db: bool | None = None,
        metrics_retention: Any = None,
        busy_timeout: float | None = None,
        cache_sampled: bool | None = None,
    ) -> None:
        self.settings = Settings.resolve(
            path=path,
            enabled=enabled,
            cache_ttl=cache_ttl,
            max_cache_size_mb=max_cache_size_mb,
            log_level=log_level,
            log_to_db=log_to_db,
            metrics_retention=metrics_retention,
            busy_timeout=busy_timeout,
            cache_sampled=cache_sampled,
        )
        self._pool = None
        self.fallback_reason: str | None = None
        self._close_lock = threading.Lock()
        if not self.enabled:
            return
        if self.settings.path == ":memory:":
            self._pool = self._open_memory()
        else:
            try:
                self._pool = self._open_file(self.settings.path)
            except (SchemaVersionError, DatabaseBusyError):
                raise
            except sqlite3.OperationalError as exc:
                if _pool_module._is_busy(exc):
                    # Busy is not broken: falling back would silently split the
                    # process's data from everyone else's.
                    raise DatabaseBusyError(self.settings.path, self.settings.busy_timeout) from exc
                self._fall_back(exc)
            except (OSError, sqlite3.DatabaseError) as exc:
                self._fall_back(exc)
        self._run_hooks("_store_init")
        self._record_open()

    # -- opening ---------------------------------------------------------------------------

    def _fall_back(self, exc: BaseException) -> None:
        self.fallback_reason = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "cannot use database %s (%s); falling back to an in-memory database "
            "for this process. The file was left untouched.",
            self.settings.path,
            exc,
        )
        self._pool = self._open_memory()

    def _open_memory(self) -> ConnectionPool:
        pool = ConnectionPool(":memory:", busy_timeout=self.settings.busy_timeout, memory=True)
        with pool.read() as conn:
            _migrations.migrate(conn, ":memory:")
        return pool

    def _open_file(self, path: str) -> ConnectionPool:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        try:
            # O_EXCL + 0600: the file is owner-only from its first byte, with no
            # window in which another user could open it.
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        except FileExistsError:
            pass
        if not os.path.isfile(path):
            raise IsADirectoryError(f"{path} is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(f"{path} is not readable and writable by this user")
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise sqlite3.DatabaseError(f"{path} is not a SQLite database (header {head[:16]!r})")
        self._refuse_newer_schema(path)

        pool = ConnectionPool(path, busy_timeout=self.settings.busy_timeout)
        try:
            with pool.read() as conn:
                _migrations.migrate(conn, path)
        except BaseException:
            pool.close()
            raise
        return pool

    @staticmethod
    def _refuse_newer_schema(path: str) -> None:
        # Read-only check before the pool sets WAL mode, which would rewrite
        # the header of a file we must not touch.
        uri = f"file:{urllib.parse.quote(path)}?mode=ro"
        existed = [side for side in (path + "-wal", path + "-shm") if os.path.exists(side)]
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            try:
                _migrations.check_not_newer(conn, path)
                applied = _migrations.applied_versions(conn)
                tables = [] if applied else [
                    row[0]
                    for row in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                        " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                    )
                ]
            except sqlite3.DatabaseError as exc:
                if not _pool_module._is_busy(exc):
                    # Even a read-only connection creates -wal and -shm beside a
                    # file whose header says WAL mode; SQLite found this one
                    # unusable, so the fallback must not leave them behind.
                    conn.close()
                    _remove_new_side_files(path, existed)
                raise
            if tables:
                # Another application's database: migrating it would add our
                # tables to it (or fail halfway on a clashing name).
                raise sqlite3.DatabaseError(
                    f"{path} is a SQLite database of another application "
                    f"(tables: {', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}); "
                    "cyllama-db will not modify it"
                )
        finally:
            conn.close()

    def _record_open(self) -> None:
        # Only write what changed: opening (e.g. a CLI `info`) must neither wait
        # on another process's write lock nor reset the dashboard's uptime.
        try:
            if self.get_metadata("db_version") != str(_migrations.latest_version()):
                self.set_metadata("db_version", str(_migrations.latest_version()))
            if self.get_metadata("server_start_time") is None:
                self.mark_server_start()
        except Exception as exc:  # pragma: no cover - a read-only race; not worth failing for
            logger.debug("could not record open in metadata: %s", exc)

    def _run_hooks(self, name: str) -> None:
        """Call ``name`` on every store mixin that defines it (init and close hooks)."""
        for cls in reversed(type(self).__mro__):
            hook = cls.__dict__.get(name)
            if hook is not None:
                hook(self)

    # -- identity --------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The database in use: the file path, or ``":memory:"`` (also after a fallback)."""
        if self.fallback_reason is not None:
            return ":memory:"
        return self.settings.path

    @property
    def is_memory(self) -> bool:
        """Whether data lives in memory only (``":memory:"`` or after a fallback)."""
        return self.path == ":memory:"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a disabled database is never closed)."""
        return self._pool is not None and self._pool.closed

    @property
    def aio(self) -> AsyncCyllamaDB:
        """This database for asyncio code: every method as a coroutine run in a worker
        thread (``await db.aio.get_stats_summary()``); see :class:`~cyllama_db.AsyncCyllamaDB`."""
        from .aio import AsyncCyllamaDB

        return AsyncCyllamaDB(self)

    def __repr__(self) -> str:
        state = "disabled" if not self.enabled else ("closed" if self.closed else "open")
        return f"CyllamaDB({self.path!r}, {state})"

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Flush buffered bookkeeping and close every thread's connection.

        Calling it twice is harmless; any other use afterwards raises
        :class:`~cyllama_db.DatabaseClosedError`.
        """
        with self._close_lock:
            if self._pool is None or self._pool.closed:
                return
            try:
                self._run_hooks("_store_close")
            finally:
                self._pool.close()

    def __enter__(self) -> CyllamaDB:
        if self.closed:
            raise DatabaseClosedError(self.path)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- maintenance -----------------------------------------------------------------------

    def vacuum(self) -> None:
        """Rebuild the file to reclaim free pages (``VACUUM``) and checkpoint the WAL."""
        if not self.enabled:
            return
        self._run_hooks("_store_flush")
        with self.pool.read() as conn:
            conn.execute("VACUUM")
            if not self.is_memory:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def get_database_size(self) -> int:
        """Size of the database in bytes (pages in use times page size; 0 when disabled)."""
        if not self.enabled:
            return 0
        with self.pool.read() as conn:
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count * page_size)

    def get_db_stats(self) -> dict[str, Any]:
        """Path, sizes, schema version and a row count per store (``{}`` when disabled)."""
        if not self.enabled:
            return {}
        self._run_hooks("_store_flush")
        if self.is_memory:
            file_bytes = self.get_database_size()
        else:
            file_bytes = sum(
                os.path.getsize(p)
                for p in (self.path, self.path + "-wal")
                if os.path.exists(p)
            )
        stats: dict[str, Any] = {
            "path": self.path,
            "file_size_mb": round(file_bytes / 1_048_576, 4),
            "schema_version": self.schema_version(),
        }
        with self.pool.read() as conn:
            for provider in DB_STATS_PROVIDERS:
                stats.update(provider(conn))
        return stats

    def schema_version(self) -> int:
        """The schema version of the open database (0 when disabled)."""
        if not self.enabled:
            return 0
        with self.pool.read() as conn:
            return _migrations.schema_version(conn)

    def migration_status(self) -> list[dict[str, Any]]:
        """Every known migration with whether (and when) it was applied."""
        if not self.enabled:
            return []
        with self.pool.read() as conn:
            applied = {
                row[0]: row[1]
                for row in conn.execute("SELECT version, applied_at FROM schema_version")
            }
        return [
            {
                "version": mig.version,
                "name": mig.name,
                "applied": mig.version in applied,
                "applied_at": applied.get(mig.version),
            }
            for mig in _migrations.registered_migrations()
        ]


# -- the process-wide database -------------------------------------------------------------

_global_lock = threading.RLock()
_global_db: CyllamaDB | None = None
_global_options: dict[str, Any] = {}


def configure_db(**options: Any) -> CyllamaDB:
    """Set up the global database used by :func:`get_db` (and so by ``complete()``/``LLM``).

    Takes the same keyword arguments as :class:`CyllamaDB`. Call it once at
    startup; calling it again closes the previous global database.
    """
    global _global_db
    with _global_lock:
        new_db = CyllamaDB(**options)
        old, _global_db = _global_db, new_db
        _global_options.clear()
        _global_options.update(options)
    if old is not None:
        old.close()
    return new_db


def get_db() -> CyllamaDB:
    """The global database: the one :func:`configure_db` made, else one built from the environment.

    Thread-safe; a closed global database is replaced by a fresh one with
    the same options.
    """
    global _global_db
    db = _global_db
    if db is not None and not db.closed:
        return db
    with _global_lock:
        if _global_db is None or _global_db.closed:
            _global_db = CyllamaDB(**_global_options)
        return _global_db


def reset_db() -> None:
    """Close and forget the global database and its options (for tests)."""
    global _global_db
    with _global_lock:
        old, _global_db = _global_db, None
        _global_options.clear()
    if old is not None:
        old.close()
