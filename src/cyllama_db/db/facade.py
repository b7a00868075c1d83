"""The :class:`CyllamaDB` facade, and the process-wide database of :func:`get_db`.

``CyllamaDB`` owns the connection pool and the migration run; every store
(config, metadata, cache, stats, logs, registry, metrics) lives in its own
module as a mixin that the facade is composed of.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, cast

from ..errors import (
    DatabaseClosedError,
)
from ..stores import search as _search  # noqa: F401  (registers migration 9)
from ..stores import views as _views  # noqa: F401  (registers migration 10)
from ..stores.cache import CacheStore
from ..stores.config import ConfigStore
from ..stores.export import Exporter, ProgressCallback
from ..stores.importer import DEFAULT_IMPORT_TIMEOUT, Importer
from ..stores.logs import LogStore
from ..stores.metadata import MetadataStore
from ..stores.metrics import MetricsSampler, MetricsStore
from ..stores.registry import ModelRecord, ModelRef, ModelRegistry
from ..stores.stats import StatsStore
from . import migrations as _migrations
from .deferred import DeferredWrites
from .pool import ConnectionPool
from .settings import DEFAULT, Settings
from .sqlite import SQLiteBackend
from .store import Store, db_op, delegate

if TYPE_CHECKING:
    from ..aio import AsyncCyllamaDB
    from ..types import GenerationConfig, Response
    from .backend import Backend

__all__ = ["CyllamaDB", "configure_db", "get_db", "reset_db"]

logger = logging.getLogger("cyllama_db")

class CyllamaDB:
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
        opentelemetry: emit an OpenTelemetry span and the ``gen_ai.client.*``
            histograms for every generation recorded (through the global
            tracer and meter providers; see ``docs/observability.md``).
            Default: ``$CYLLAMA_OTEL`` or off.
        busy_timeout: seconds a writer waits for another writer (opening
            waits as long at most). Default: ``$CYLLAMA_DB_BUSY_TIMEOUT`` or 30.
        readonly: open an existing file read-only: every read works, every
            write raises :class:`~cyllama_db.ReadOnlyDatabaseError`, the file
            is never modified (nor migrated). For a file this user may read
            but not write. Default: False.
        fallback: what to do when the file cannot hold a database at all
            (not SQLite, corrupt, a directory, an unreadable or uncreatable
            path): ``"memory"`` logs a warning and runs on an in-memory
            database (:attr:`fallback_reason` says why); ``"raise"`` raises
            :class:`~cyllama_db.errors.DatabaseFileError`. Default:
            ``$CYLLAMA_DB_FALLBACK`` or ``"memory"``.
        url: a database URL instead of ``path`` (give one of them):
            ``postgresql://user:password@host:5432/database`` keeps every
            store on a PostgreSQL server that several machines share;
            ``sqlite:///path.db`` is the same as ``path="path.db"``.
            ``None``: ``$CYLLAMA_DB_URL``, else as ``path`` says. The
            password never appears in :attr:`path`, ``repr()``, errors or
            logs (``****``). A server that cannot be reached raises a
            :class:`~cyllama_db.DatabaseError` naming its host and port;
            there is no fallback to memory. Needs ``cyllama-db[postgres]``.
        auto_vacuum: keep the file from staying large after deletes. A new
            file is made with SQLite's incremental auto-vacuum, and when
            cleanup, eviction, invalidation or pruning leaves more than an
            eighth of it free, up to :data:`~cyllama_db.db.store.RECLAIM_MAX_PAGES`
            free pages are given back (``PRAGMA incremental_vacuum``) in the
            same transaction. A file made without it (older cyllama-db, or
            ``auto_vacuum=False``) is switched by one full :meth:`vacuum`.
            ``False``: new files are made without it and nothing is given
            back automatically (freed pages are reused by later writes).
            Default: ``$CYLLAMA_AUTO_VACUUM`` or True.

    Everything else raises and leaves the file as it was, since silently
    forgetting everything would be worse than stopping: another
    application's SQLite file :class:`~cyllama_db.errors.ForeignDatabaseError`,
    a file from a newer cyllama-db :class:`~cyllama_db.SchemaVersionError`, a
    valid file this user cannot write :class:`~cyllama_db.ReadOnlyDatabaseError`
    (unless ``readonly=True``), a full disk
    :class:`~cyllama_db.errors.DiskFullError` (a new file is not left
    behind), an I/O error :class:`~cyllama_db.errors.DatabaseFileError`, and a
    file locked past the busy timeout :class:`~cyllama_db.DatabaseBusyError`.
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
        opentelemetry: bool | None = None,
        readonly: bool = False,
        fallback: str | None = None,
        auto_vacuum: bool | None = None,
        url: str | None = None,
    ) -> None:
        self.settings = Settings.resolve(
            path=path,
            url=url,
            enabled=enabled,
            cache_ttl=cache_ttl,
            max_cache_size_mb=max_cache_size_mb,
            log_level=log_level,
            log_to_db=log_to_db,
            metrics_retention=metrics_retention,
            busy_timeout=busy_timeout,
            cache_sampled=cache_sampled,
            opentelemetry=opentelemetry,
            readonly=readonly,
            fallback=fallback,
            auto_vacuum=auto_vacuum,
        )
        self._pool = None
        self.fallback_reason: str | None = None
        #: The write-behind channels of the stores (db/deferred.py): one thread, one policy.
        self.deferred = DeferredWrites(self)
        self.config = ConfigStore(self)
        self.metadata = MetadataStore(self)
        self.models = ModelRegistry(self)
        self.cache = CacheStore(self)
        self.stats = StatsStore(self)
        self.logs = LogStore(self)
        self.metrics = MetricsStore(self)
        #: Every store, in the order they are opened, flushed and closed.
        self.stores: tuple[Store, ...] = (
            self.config,
            self.metadata,
            self.models,
            self.cache,
            self.stats,
            self.logs,
            self.metrics,
        )
        self._close_lock = threading.Lock()
        if not self.enabled:
            return
        if self.settings.engine == "postgresql":
            from .postgres import PostgresBackend  # psycopg only when a server URL is used

            backend = PostgresBackend.open(self.settings)
            self.backend: Backend = backend
            # The backend is its own pool: read/transaction/no_wait/closed/readonly.
            self._pool = cast("ConnectionPool", backend)
        else:
            sqlite = SQLiteBackend.open(self.settings)
            self.backend = sqlite
            self._pool = sqlite.pool
        self.fallback_reason = self.backend.fallback_reason
        for store in self.stores:
            store.open()
        if not self.settings.readonly:
            self._record_open()

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

    # -- what every store reads ---------------------------------------------------------

    #: Seconds since the epoch; tests replace it to move time (TTL, retention).
    clock: Callable[[], float] = staticmethod(time.time)

    @property
    def enabled(self) -> bool:
        """False when the database was disabled: every call is then a no-op."""
        return self.settings.enabled

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool (raises :class:`~cyllama_db.DatabaseClosedError` once closed)."""
        if self._pool is None or self._pool.closed:
            raise DatabaseClosedError(self.path)
        return self._pool

    def flush(self) -> None:
        """Write every store's buffered bookkeeping now (cache hit counts, hit statistics
        rows, search indexes); waits for the write lock up to the busy timeout.

        Reads that must see those rows (``get_cache_stats()``,
        ``get_stats_summary()``...) already write them first; call this
        before reading the file with another tool.
        """
        if not self.enabled:
            return
        pool = self.pool
        if pool.readonly:
            return
        for store in self.stores:
            store.flush()

    def _flush_for_read(self, *flushers: Callable[[], Any]) -> None:
        """Write buffered bookkeeping before a read, if that needs no wait; never raises.

        Runs ``flushers`` (default: every store's ``flush``) with this
        thread's connection set not to wait for another connection's write
        lock. Locked, full, read-only: the buffered rows stay buffered for a
        later write, and the read goes on without them (a read never waits
        on, or fails for, a write).
        """
        pool = self._pool
        if pool is None or pool.closed or pool.readonly:
            return
        for flush in flushers or tuple(store.flush for store in self.stores):
            try:
                with pool.no_wait():
                    flush()
            except Exception as exc:
                logger.debug("buffered bookkeeping not written before a read (%s); it stays buffered", exc)

    # -- config (the flat API of db.config) -----------------------------------------------

    @delegate(ConfigStore.get)
    def get_config(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    @delegate(ConfigStore.set)
    def set_config(self, key: str, value: Any) -> None:
        self.config.set(key, value)

    @delegate(ConfigStore.all)
    def get_all_config(self) -> dict[str, Any]:
        return self.config.all()

    @delegate(ConfigStore.delete)
    def delete_config(self, key: str) -> bool:
        return self.config.delete(key)

    # -- metadata (the flat API of db.metadata) -------------------------------------------

    @delegate(MetadataStore.set)
    def set_metadata(self, key: str, value: str | int | float) -> None:
        self.metadata.set(key, value)

    @delegate(MetadataStore.get)
    def get_metadata(self, key: str) -> str | None:
        return self.metadata.get(key)

    @delegate(MetadataStore.all)
    def get_all_metadata(self) -> dict[str, str]:
        return self.metadata.all()

    @delegate(MetadataStore.delete)
    def delete_metadata(self, key: str) -> bool:
        return self.metadata.delete(key)

    @delegate(MetadataStore.mark_server_start)
    def mark_server_start(self) -> None:
        self.metadata.mark_server_start()

    # -- models (the flat API of db.models) ----------------------------------------------

    @delegate(ModelRegistry.save)
    def save_model(
        self, name: str, type: str = "llama", status: str = "stopped", **params: Any
    ) -> int:
        return self.models.save(name, type, status, **params)

    @delegate(ModelRegistry.list)
    def get_models(self, **filters: Any) -> list[ModelRecord]:
        return self.models.list(**filters)

    @delegate(ModelRegistry.files)
    def registered_model_files(self) -> list[tuple[str, str | None, str | None]]:
        return self.models.files()

    @delegate(ModelRegistry.get)
    def get_model(self, id: int) -> ModelRecord | None:
        return self.models.get(id)

    @delegate(ModelRegistry.get_by_name)
    def get_model_by_name(self, name: str) -> ModelRecord | None:
        return self.models.get_by_name(name)

    @delegate(ModelRegistry.update)
    def update_model(self, model: ModelRef, **params: Any) -> ModelRecord:
        return self.models.update(model, **params)

    @delegate(ModelRegistry.delete)
    def delete_model(self, model: ModelRef) -> bool:
        return self.models.delete(model)

    @delegate(ModelRegistry.delete_all)
    def delete_all_models(self) -> int:
        return self.models.delete_all()

    @delegate(ModelRegistry.mark_loaded)
    def mark_model_loaded(self, model: ModelRef, status: str | None = "running") -> None:
        self.models.mark_loaded(model, status)

    @delegate(ModelRegistry.mark_unloaded)
    def mark_model_unloaded(self, model: ModelRef) -> bool:
        return self.models.mark_unloaded(model)

    @delegate(ModelRegistry.register)
    def register_model(
        self, path: str | os.PathLike[str], name: str | None = None, **params: Any
    ) -> int:
        return self.models.register(path, name, **params)

    @delegate(ModelRegistry.to_llama_kwargs)
    def to_llama_kwargs(self, model: ModelRef) -> dict[str, Any]:
        return self.models.to_llama_kwargs(model)

    @delegate(ModelRegistry.to_sampling_kwargs)
    def to_sampling_kwargs(self, model: ModelRef) -> dict[str, Any]:
        return self.models.to_sampling_kwargs(model)

    @delegate(ModelRegistry.to_server_args)
    def to_server_args(
        self,
        model: ModelRef,
        *,
        model_path_flag: str = "--model",
        legacy: bool = False,
        redact_secrets: bool = False,
    ) -> list[str]:
        return self.models.to_server_args(
            model, model_path_flag=model_path_flag, legacy=legacy, redact_secrets=redact_secrets
        )

    # -- cache (the flat API of db.cache) --------------------------------------------------

    @delegate(CacheStore.get)
    def get_cached_response(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        model_path: str | os.PathLike[str],
        config: GenerationConfig | Mapping[str, Any] | None = None,
        *,
        load_options: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> Response | None:
        return self.cache.get(prompt, model_path, config, load_options=load_options, namespace=namespace)

    @delegate(CacheStore.put)
    def cache_response(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        model_path: str | os.PathLike[str],
        config: GenerationConfig | Mapping[str, Any] | None,
        response: Response | str,
        ttl: timedelta | float | str | None = None,
        *,
        load_options: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> None:
        self.cache.put(prompt, model_path, config, response, ttl, load_options=load_options, namespace=namespace)

    @delegate(CacheStore.invalidate)
    def invalidate_cache(
        self,
        prompt: str | Sequence[Mapping[str, Any]] | None = None,
        model_path: str | os.PathLike[str] | None = None,
        older_than: datetime | timedelta | float | str | None = None,
        *,
        namespace: str | None = None,
    ) -> int:
        return self.cache.invalidate(prompt, model_path, older_than, namespace=namespace)

    @delegate(CacheStore.cleanup)
    def cleanup_cache(self) -> int:
        return self.cache.cleanup()

    @delegate(CacheStore.stats)
    def get_cache_stats(self) -> dict[str, Any]:
        return self.cache.stats()

    @delegate(CacheStore.entries)
    def list_cache_entries(
        self,
        limit: int = 20,
        order: str = "newest",
        model_path: str | os.PathLike[str] | None = None,
        *,
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        return self.cache.entries(limit, order, model_path, namespace=namespace)

    @delegate(CacheStore.models)
    def cached_models(self) -> list[tuple[str, str, str]]:
        return self.cache.models()

    @delegate(CacheStore.search)
    def search_cache(
        self,
        query: str,
        limit: int = 20,
        *,
        model_path: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        include_expired: bool = False,
    ) -> list[dict[str, Any]]:
        return self.cache.search(
            query, limit, model_path=model_path, namespace=namespace, include_expired=include_expired
        )
    # -- stats (the flat API of db.stats) -------------------------------------------------

    @delegate(StatsStore.record)
    def record_generation(
        self,
        model_path: str | os.PathLike[str] | None,
        response: Any,
        config: Any = None,
        cache_hit: bool = False,
        *,
        session_id: str | None = None,
    ) -> int | None:
        return self.stats.record(model_path, response, config, cache_hit, session_id=session_id)

    @delegate(StatsStore.summary)
    def get_stats_summary(
        self,
        model_path: str | os.PathLike[str] | None = None,
        since: datetime | timedelta | float | str | None = None,
        until: datetime | timedelta | float | str | None = None,
        *,
        tz: tzinfo | None = None,
    ) -> dict[str, Any]:
        return self.stats.summary(model_path, since, until, tz=tz)

    @delegate(StatsStore.series)
    def get_stats_series(
        self,
        since: datetime | timedelta | float,
        step: timedelta | float,
        *,
        until: datetime | timedelta | float | None = None,
    ) -> dict[str, Any]:
        return self.stats.series(since, step, until=until)

    @delegate(StatsStore.history)
    def get_generation_history(
        self,
        limit: int = 100,
        offset: int = 0,
        model_path: str | os.PathLike[str] | None = None,
        *,
        session_id: str | None = None,
        since: datetime | timedelta | float | str | None = None,
        until: datetime | timedelta | float | str | None = None,
    ) -> list[dict[str, Any]]:
        return self.stats.history(limit, offset, model_path, session_id=session_id, since=since, until=until)

    @delegate(StatsStore.prune)
    def prune_stats(
        self,
        older_than: datetime | timedelta | float | str,
        *,
        model_path: str | os.PathLike[str] | None = None,
    ) -> int:
        return self.stats.prune(older_than, model_path=model_path)

    @delegate(StatsStore.models)
    def recorded_models(self) -> list[tuple[str, str | None]]:
        return self.stats.models()

    @delegate(StatsStore.usage)
    def model_usage(self, model_paths: Iterable[str]) -> tuple[int, float | None]:
        return self.stats.usage(model_paths)

    @property
    def session_id(self) -> str:
        """The session new generations are recorded under (``db.stats.session_id``).

        Defaults to one random id per process (a forked child gets a new
        one). Assign a string to group generations your own way; assign
        ``None`` to go back to the process's id.
        """
        return self.stats.session_id

    @session_id.setter
    def session_id(self, value: str | None) -> None:
        self.stats.session_id = value

    @property
    def stats_max_age(self) -> timedelta | None:
        """How long generation rows are kept (``db.stats.max_age``; ``None``: forever, the default).

        Stored in the database's config, so it applies to every process
        using the file. Set it to a ``timedelta``, a number of seconds or a
        duration such as ``"90d"``; older rows are pruned at once and then
        at most once an hour while generations are being recorded.
        """
        return self.stats.max_age

    @stats_max_age.setter
    def stats_max_age(self, value: timedelta | float | str | None) -> None:
        self.stats.max_age = value

    # -- logs (the flat API of db.logs) ---------------------------------------------------

    @delegate(LogStore.log)
    def log(
        self,
        level: str | int,
        message: str,
        category: str | None = None,
        context: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> int | None:
        return self.logs.log(level, message, category, context, error)

    @delegate(LogStore.query)
    def get_logs(
        self,
        level: str | int | None = None,
        category: str | None = None,
        since: datetime | timedelta | float | str | None = None,
        limit: int = 100,
        *,
        until: datetime | timedelta | float | str | None = None,
        offset: int = 0,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        return self.logs.query(level, category, since, limit, until=until, offset=offset, search=search)

    @delegate(LogStore.prune)
    def prune_logs(
        self,
        older_than: datetime | timedelta | float | str | None = None,
        keep_last: int | None = None,
    ) -> int:
        return self.logs.prune(older_than, keep_last)

    @property
    def log_level(self) -> str:
        """The lowest level stored in the logs table (``db.logs.level``, ``settings.log_level``)."""
        return self.logs.level

    # -- metrics (the flat API of db.metrics) ---------------------------------------------

    @delegate(MetricsStore.record)
    def save_metrics(self, sample: Mapping[str, Any]) -> int | None:
        return self.metrics.record(sample)

    @delegate(MetricsStore.history)
    def get_metrics_history(
        self,
        minutes: float | timedelta | str = 10,
        *,
        since: datetime | timedelta | float | str | None = None,
        until: datetime | timedelta | float | str | None = None,
        host: str | None = None,
    ) -> list[dict[str, Any]]:
        return self.metrics.history(minutes, since=since, until=until, host=host)

    @delegate(MetricsStore.start_sampler)
    def start_metrics_sampler(
        self,
        interval: float = 1.0,
        *,
        nvml: Any = None,
        disk_path: str | os.PathLike[str] | None = None,
        process: int | str | None = None,
    ) -> MetricsSampler:
        return self.metrics.start_sampler(interval, nvml=nvml, disk_path=disk_path, process=process)

    # -- (sections for the other stores' flat APIs follow) --------------------------------

    # -- identity --------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The database in use: the file path, or ``":memory:"`` (also after a fallback)."""
        backend = self.__dict__.get("backend")
        return self.settings.path if backend is None else backend.location

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
        from ..aio import AsyncCyllamaDB

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
                for store in self.stores:
                    try:
                        store.close()
                    except Exception as exc:  # closing must not fail over one store's bookkeeping
                        logger.warning("closing the %s store: %s", store.name, exc)
                self.deferred.close()  # what a store left waiting; never raises
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

    @db_op()  # maps sqlite3 errors to the library's (issue 13)
    def vacuum(self) -> None:
        """Rebuild the file to reclaim free pages (``VACUUM``) and checkpoint the WAL.

        With ``auto_vacuum`` on (the default), a file made without
        incremental auto-vacuum (by an older cyllama-db, or with
        ``auto_vacuum=False``) is switched to it by this rebuild: SQLite can
        only change the mode of an existing file with a full ``VACUUM``.
        """
        if not self.enabled:
            return
        self.pool.check_writable()
        self.flush()
        self.backend.vacuum()

    @db_op(empty=int)  # maps sqlite3 errors to the library's (issue 13)
    def get_database_size(self) -> int:
        """Size of the database in bytes (pages in use times page size; 0 when disabled)."""
        if not self.enabled:
            return 0
        return self.backend.size_bytes()

    @db_op(empty=dict)  # maps sqlite3 errors to the library's (issue 13)
    def get_db_stats(self) -> dict[str, Any]:
        """Path, sizes, schema version, the file's auto-vacuum mode (``"incremental"``,
        ``"none"``) and free pages, and a row count per store (``{}`` when disabled)."""
        if not self.enabled:
            return {}
        self._flush_for_read()
        engine = self.backend.storage_stats()
        stats: dict[str, Any] = {
            "path": self.path,
            "engine": self.backend.name,
            "file_size_mb": engine.pop("file_size_mb"),
            "schema_version": self.schema_version(),
            **engine,
        }
        with self.pool.read() as conn:
            for store in self.stores:
                stats.update(store.counts(conn))
        return stats

    @db_op(empty=int)  # maps sqlite3 errors to the library's (issue 13)
    def schema_version(self) -> int:
        """The schema version of the open database (0 when disabled)."""
        if not self.enabled:
            return 0
        with self.pool.read() as conn:
            return _migrations.schema_version(conn)

    @db_op(empty=list)  # maps sqlite3 errors to the library's (issue 13)
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

    # -- export/import (Exporter and Importer apply the stores' EXPORT_POLICY) -------------

    @delegate(Exporter.export)
    def export_database(
        self,
        path: str | os.PathLike[str] | IO[str],
        *,
        format: str = "sqlite",
        table: str | None = None,
        overwrite: bool = False,
        include_secrets: bool = False,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        return Exporter(self).export(
            path,
            format=format,
            table=table,
            overwrite=overwrite,
            include_secrets=include_secrets,
            progress=progress,
        )

    @delegate(Importer.merge)
    def import_database(
        self,
        path: str | os.PathLike[str],
        *,
        on_conflict: str = "keep",
        progress: ProgressCallback | None = None,
        timeout: float | None = DEFAULT_IMPORT_TIMEOUT,
    ) -> dict[str, Any]:
        return Importer(self).merge(path, on_conflict=on_conflict, progress=progress, timeout=timeout)


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
