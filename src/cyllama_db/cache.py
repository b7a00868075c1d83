"""The persistent response cache (the seed design's ``cache`` table).

Keys (:func:`generate_cache_key`) are SHA-256 over canonical JSON of the
prompt, the model's identity and the output-deciding part of the
:class:`~cyllama_db.inference.GenerationConfig` (everything but ``seed``).
The model identity is the file's basename plus a fingerprint of its size and
GGUF header (:func:`model_identity`): the same file at another path shares
entries, a different file under the same name does not.

Two things keep a hit about as cheap as a plain indexed ``SELECT``:

* hit bookkeeping (``hit_count``, ``last_hit_at``) is buffered in memory and
  written in batches (when the buffer grows, every few seconds, before
  cleanup, on ``get_db_stats()``/``vacuum()`` and on close), so a hit is never
  a write transaction;
* the total size is kept by triggers in a one-row ``cache_totals`` table, so
  the size limit is checked after each insert with a single-row read and
  enforced by evicting least-recently-used entries, without the user ever
  calling :meth:`CacheMixin.cleanup_cache`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from ._base import StoreBase, db_op, db_stats_provider
from ._cacheutil import (
    canonical_messages,
    chat_key,
    clear_identity_cache,
    completion_key,
    model_identity,
    sha256_text,
)
from ._time import from_timestamp, parse_duration, to_timestamp
from .errors import DatabaseClosedError
from .inference import GenerationConfig, Response, _hit_response, _hit_stats_fast
from .migrations import execute_script, migration

__all__ = [
    "CacheMixin",
    "clear_identity_cache",
    "generate_cache_key",
    "model_identity",
]

logger = logging.getLogger("cyllama_db.cache")
_DEBUG: Final = logging.DEBUG

#: Automatic eviction (after an insert pushes the cache over its limit)
#: goes down to this fraction of the limit, so a full cache does not evict
#: on every single insert; batches are cheaper per row (neighbouring pages)
#: while a small fraction keeps each pause short (~40 ms for 100 MB).
EVICT_TO_FRACTION: Final = 0.98

# Hit bookkeeping is flushed when this many distinct entries have pending
# hits, or this many seconds after the oldest pending hit.
_FLUSH_ENTRIES: Final = 256
_FLUSH_SECONDS: Final = 5.0

# Rough per-row overhead (rowid, numbers, index entries) added to the text
# sizes so that many tiny entries still count for something.
_ROW_OVERHEAD: Final = 160

KINDS: Final = ("completion", "chat", "function")

_ROW_SQL: Final = (
    "SELECT response_text, finish_reason, prompt_tokens, tokens_generated, expires_at"
    " FROM cache WHERE cache_key = ?"
)


@migration(2, "response cache")
def _create_cache(conn: sqlite3.Connection) -> None:
    execute_script(
        conn,
        """
        CREATE TABLE IF NOT EXISTS cache (
            id INTEGER PRIMARY KEY,
            cache_key TEXT UNIQUE NOT NULL,
            kind TEXT NOT NULL DEFAULT 'completion'
                CHECK (kind IN ('completion', 'chat', 'function')),
            prompt TEXT NOT NULL,
            prompt_hash TEXT NOT NULL,
            model_path TEXT NOT NULL,
            model_name TEXT NOT NULL,
            model_identity TEXT NOT NULL,
            config_json TEXT NOT NULL,
            response_text TEXT NOT NULL,
            response_json TEXT,
            finish_reason TEXT,
            prompt_tokens INTEGER,
            tokens_generated INTEGER,
            tokens_per_second REAL,
            generation_time_ms REAL,
            size_bytes INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            hit_count INTEGER NOT NULL DEFAULT 0,
            last_hit_at REAL,
            last_used_at REAL NOT NULL
        );
        -- One secondary index only: each is one more page written per insert
        -- (~6-10 us measured). LRU eviction needs this one (without it a full
        -- 100 MB cache spends ~300 ms scanning per eviction, ~50 us per insert
        -- amortised); invalidation and expiry cleanup are rare and scan.
        CREATE INDEX IF NOT EXISTS idx_cache_lru ON cache(last_used_at);

        CREATE TABLE IF NOT EXISTS cache_totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            entries INTEGER NOT NULL,
            bytes INTEGER NOT NULL
        );
        INSERT OR IGNORE INTO cache_totals (id, entries, bytes)
            SELECT 1, COUNT(*), COALESCE(SUM(size_bytes), 0) FROM cache;

        CREATE TRIGGER IF NOT EXISTS cache_totals_insert AFTER INSERT ON cache BEGIN
            UPDATE cache_totals SET entries = entries + 1, bytes = bytes + NEW.size_bytes WHERE id = 1;
        END;
        CREATE TRIGGER IF NOT EXISTS cache_totals_delete AFTER DELETE ON cache BEGIN
            UPDATE cache_totals SET entries = entries - 1, bytes = bytes - OLD.size_bytes WHERE id = 1;
        END;
        CREATE TRIGGER IF NOT EXISTS cache_totals_update AFTER UPDATE OF size_bytes ON cache BEGIN
            UPDATE cache_totals SET bytes = bytes - OLD.size_bytes + NEW.size_bytes WHERE id = 1;
        END;
        """,
    )


@db_stats_provider
def _cache_counts(conn: sqlite3.Connection) -> dict[str, Any]:
    row = conn.execute("SELECT entries, bytes FROM cache_totals WHERE id = 1").fetchone()
    entries, size = (row[0], row[1]) if row else (0, 0)
    return {"cache_entries": entries, "cache_size_mb": round(size / 1_048_576, 4)}


def generate_cache_key(
    prompt: str | Sequence[Mapping[str, Any]],
    model_path: str | os.PathLike[str],
    config: GenerationConfig | Mapping[str, Any] | None = None,
) -> str:
    """The cache key of ``prompt`` (a str, or chat messages) on ``model_path`` with ``config``.

    Hex SHA-256 of the canonical JSON ``{"config": ..., "model": <identity>,
    "prompt": ...}`` (chat: ``{"config", "kind": "chat", "messages", "model"}``).
    ``seed`` is not part of it, nor are load options such as ``n_ctx``,
    ``n_gpu_layers`` or ``verbose``, which are not in the config at all.
    """
    cfg = GenerationConfig.coerce(config)
    identity = model_identity(model_path)
    if isinstance(prompt, str):
        return completion_key(prompt, identity, cfg.cache_json())
    return chat_key(canonical_messages(prompt), identity, cfg.cache_json())


def _prompt_of(prompt: Any) -> tuple[str, str]:
    """(kind, stored prompt text) of a public-API ``prompt`` argument."""
    if isinstance(prompt, str):
        return "completion", prompt
    if isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        return "chat", canonical_messages(prompt)
    raise TypeError(
        f"prompt must be a str or a list of chat messages, got {type(prompt).__name__}"
    )


def _ttl_seconds(ttl: Any, default: timedelta | None, what: str = "ttl") -> float | None:
    if ttl is None:
        return None if default is None else default.total_seconds()
    try:
        seconds = parse_duration(ttl).total_seconds()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}={ttl!r} is not a duration: use a timedelta, seconds or '24h'") from exc
    if seconds <= 0:
        raise ValueError(f"{what}={ttl!r} must be positive")
    return seconds


# Databases with buffered hits, flushed once more at interpreter exit.
_pending_dbs: weakref.WeakSet[CacheMixin] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    for db in list(_pending_dbs):
        with contextlib.suppress(Exception):
            db._cache_flush_hits()


class CacheMixin(StoreBase):
    """``get_cached_response`` / ``cache_response`` / ``invalidate_cache`` / ``cleanup_cache`` / ``get_cache_stats``."""

    _cache_hits: dict[str, list[float]]
    _cache_hits_lock: threading.Lock
    _cache_hits_since: float

    def _store_init(self) -> None:
        self._cache_hits = {}
        self._cache_hits_lock = threading.Lock()
        self._cache_hits_since = 0.0

    def _store_flush(self) -> None:
        self._cache_flush_hits()

    def _store_close(self) -> None:
        try:
            self._cache_flush_hits()
        except Exception as exc:  # closing must not fail over bookkeeping
            logger.warning("could not write buffered cache hit counts: %s", exc)

    # -- public API --------------------------------------------------------------------------

    @db_op()
    def get_cached_response(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        model_path: str | os.PathLike[str],
        config: GenerationConfig | Mapping[str, Any] | None = None,
    ) -> Response | None:
        """The cached :class:`Response` (``cache_hit=True``) for this call, or None if absent or expired.

        ``prompt`` is the completion prompt, or the chat messages of a chat
        request. The hit's ``stats`` carry the original token counts and the
        lookup's own time.
        """
        started = time.perf_counter()
        cfg = GenerationConfig.coerce(config)
        identity = model_identity(model_path)
        if isinstance(prompt, str):
            key = completion_key(prompt, identity, cfg.cache_json())
        else:
            key = chat_key(_prompt_of(prompt)[1], identity, cfg.cache_json())
        return self._cache_lookup(key, os.fspath(model_path), started)

    @db_op()
    def cache_response(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        model_path: str | os.PathLike[str],
        config: GenerationConfig | Mapping[str, Any] | None,
        response: Response | str,
        ttl: timedelta | float | str | None = None,
    ) -> None:
        """Store ``response`` for this call; ``ttl`` None = the database's ``cache_ttl``.

        Values are stored as JSON. An entry larger than the whole size limit
        is not stored (logged at DEBUG).
        """
        cfg = GenerationConfig.coerce(config)
        if isinstance(response, str):
            response = Response(text=response, model_path=os.fspath(model_path))
        if not isinstance(response, Response):
            raise TypeError(f"response must be a Response or a str, got {type(response).__name__}")
        kind, prompt_text = _prompt_of(prompt)
        identity = model_identity(model_path)
        if kind == "completion":
            key = completion_key(prompt_text, identity, cfg.cache_json())
        else:
            key = chat_key(prompt_text, identity, cfg.cache_json())
        self._cache_store_response(
            key=key,
            kind=kind,
            prompt=prompt_text,
            model_path=os.path.abspath(os.fspath(model_path)),
            identity=identity,
            config=cfg,
            response=response,
            ttl=ttl,
        )

    @db_op(empty=int)
    def invalidate_cache(
        self,
        prompt: str | Sequence[Mapping[str, Any]] | None = None,
        model_path: str | os.PathLike[str] | None = None,
        older_than: datetime | timedelta | float | None = None,
    ) -> int:
        """Remove the entries matching every given criterion (none given: all); returns how many.

        * ``prompt``: entries for this prompt (a str, or chat messages), on any model;
        * ``model_path``: entries for this model file: those whose identity
          matches the file's current one, and those stored under this path
          (older versions of the file). For a path that does not exist, a bare
          file name (``"model.gguf"``) matches entries of any file with that name;
        * ``older_than``: entries created before this datetime, before this
          long ago (timedelta), or before these Unix seconds.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if prompt is not None:
            _kind, text = _prompt_of(prompt)
            clauses.append("prompt_hash = ?")
            params.append(sha256_text(text))
        if model_path is not None:
            path = os.fspath(model_path)
            absolute = os.path.abspath(path)
            options = ["model_identity = ?", "model_path = ?"]
            params += [model_identity(path), absolute]
            if not os.path.exists(path) and os.path.basename(path) == path:
                options.append("model_name = ?")
                params.append(path)
            clauses.append("(" + " OR ".join(options) + ")")
        if older_than is not None:
            clauses.append("created_at < ?")
            params.append(to_timestamp(older_than, now=self.clock()))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self.pool.transaction() as conn:
            removed = conn.execute(f"DELETE FROM cache{where}", params).rowcount
        logger.debug("invalidated %d cache entries", removed)
        return int(removed)

    @db_op(empty=int)
    def cleanup_cache(self) -> int:
        """Remove expired entries, then least-recently-used ones until the size limit holds; returns how many."""
        self._cache_flush_hits()
        limit = self._cache_limit_bytes()
        with self.pool.transaction() as conn:
            removed = conn.execute(
                "DELETE FROM cache WHERE expires_at IS NOT NULL AND expires_at <= ?", (self.clock(),)
            ).rowcount
            removed += self._cache_evict(conn, target=limit, keep_key=None)
        if removed:
            logger.info("cache cleanup removed %d entries", removed)
        return int(removed)

    @db_op(empty=dict)
    def get_cache_stats(self) -> dict[str, Any]:
        """Entries, size, limit, hits, expired entries and a count per kind."""
        self._cache_flush_hits()
        now = self.clock()
        with self.pool.read() as conn:
            entries, size = conn.execute("SELECT entries, bytes FROM cache_totals WHERE id = 1").fetchone()
            hits, expired, oldest = conn.execute(
                "SELECT COALESCE(SUM(hit_count), 0),"
                " COALESCE(SUM(expires_at IS NOT NULL AND expires_at <= ?), 0),"
                " MIN(created_at) FROM cache",
                (now,),
            ).fetchone()
            by_kind = dict(conn.execute("SELECT kind, COUNT(*) FROM cache GROUP BY kind").fetchall())
        return {
            "entries": int(entries),
            "size_bytes": int(size),
            "size_mb": round(size / 1_048_576, 4),
            "max_size_mb": self.settings.max_cache_size_mb,
            "hits": int(hits),
            "expired": int(expired),
            "oldest": from_timestamp(oldest),
            "by_kind": {kind: int(by_kind.get(kind, 0)) for kind in KINDS},
            "default_ttl_seconds": (
                None if self.settings.cache_ttl is None else self.settings.cache_ttl.total_seconds()
            ),
        }

    # -- the hot paths (also used by inference.py and decorators.py) ---------------------------

    def _cache_row(self, key: str) -> tuple[Any, ...] | None:
        """The live row for ``key`` (response_text, finish_reason, prompt_tokens,
        tokens_generated), counting a hit; None if absent or expired."""
        if not self.settings.enabled:
            return None
        pool = self._pool
        if pool is None or pool.closed:
            raise DatabaseClosedError(self.path)
        try:
            if pool.memory:
                with pool.read() as conn:
                    row = conn.execute(_ROW_SQL, (key,)).fetchone()
            else:
                # The pool's per-thread connection directly: the context
                # manager costs about as much as the SELECT itself.
                row = pool._thread_connection().execute(_ROW_SQL, (key,)).fetchone()
        except sqlite3.Error as exc:
            logger.warning("cache lookup failed, treating it as a miss: %s", exc)
            return None
        if row is None:
            if logger.isEnabledFor(_DEBUG):
                logger.debug("cache miss %s", key[:16])
            return None
        now = self.clock()
        expires = row[4]
        if expires is not None and expires <= now:
            if logger.isEnabledFor(_DEBUG):
                logger.debug("cache miss %s (expired)", key[:16])
            return None
        self._cache_count_hit(key, now)
        if logger.isEnabledFor(_DEBUG):
            logger.debug("cache hit %s", key[:16])
        return row

    def _cache_lookup(self, key: str, model_path: str, started: float) -> Response | None:
        row = self._cache_row(key)
        if row is None:
            return None
        prompt_tokens, generated = row[2], row[3]
        total = prompt_tokens + generated if prompt_tokens is not None and generated is not None else None
        stats = _hit_stats_fast(prompt_tokens, generated, total, (time.perf_counter() - started) * 1000.0)
        return _hit_response(row[0], row[1], model_path, stats)

    def _cache_store_response(
        self,
        *,
        key: str,
        kind: str,
        prompt: str,
        model_path: str,
        identity: str,
        config: GenerationConfig,
        response: Response,
        ttl: Any,
    ) -> None:
        stats = response.stats
        self._cache_put(
            key=key,
            kind=kind,
            prompt=prompt,
            model_path=model_path,
            identity=identity,
            config_json=config.to_json(),
            response_text=response.text,
            # The Response without its text (that is response_text): finish
            # reason, original model path and the full original stats.
            response_json=json.dumps(
                {
                    "finish_reason": response.finish_reason,
                    "model_path": response.model_path,
                    "stats": stats.to_dict(),
                },
                allow_nan=False,
            ),
            finish_reason=response.finish_reason,
            prompt_tokens=stats.prompt_tokens,
            tokens_generated=stats.generated_tokens,
            tokens_per_second=stats.tokens_per_second,
            generation_time_ms=stats.generation_time_ms,
            ttl=ttl,
        )

    def _cache_put(
        self,
        *,
        key: str,
        kind: str,
        prompt: str,
        model_path: str,
        identity: str,
        config_json: str,
        response_text: str,
        response_json: str | None,
        finish_reason: str | None = None,
        prompt_tokens: int | None = None,
        tokens_generated: int | None = None,
        tokens_per_second: float | None = None,
        generation_time_ms: float | None = None,
        ttl: Any = None,
    ) -> None:
        if not self.enabled:
            return
        ttl_s = _ttl_seconds(ttl, self.settings.cache_ttl)
        size = (
            len(prompt.encode("utf-8", "surrogatepass"))
            + len(response_text.encode("utf-8", "surrogatepass"))
            + (len(response_json.encode("utf-8", "surrogatepass")) if response_json else 0)
            + len(config_json)
            + len(model_path)
            + len(identity)
            + _ROW_OVERHEAD
        )
        limit = self._cache_limit_bytes()
        if size > limit:
            logger.debug("not caching a %d-byte entry: larger than the %d-byte cache limit", size, limit)
            return
        now = self.clock()
        expires = None if ttl_s is None else now + ttl_s
        with self.pool.transaction() as conn:
            conn.execute(
                "INSERT INTO cache (cache_key, kind, prompt, prompt_hash, model_path, model_name,"
                " model_identity, config_json, response_text, response_json, finish_reason,"
                " prompt_tokens, tokens_generated, tokens_per_second, generation_time_ms, size_bytes,"
                " created_at, expires_at, hit_count, last_hit_at, last_used_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?)"
                " ON CONFLICT(cache_key) DO UPDATE SET kind = excluded.kind, prompt = excluded.prompt,"
                " prompt_hash = excluded.prompt_hash, model_path = excluded.model_path,"
                " model_name = excluded.model_name, model_identity = excluded.model_identity,"
                " config_json = excluded.config_json, response_text = excluded.response_text,"
                " response_json = excluded.response_json, finish_reason = excluded.finish_reason,"
                " prompt_tokens = excluded.prompt_tokens, tokens_generated = excluded.tokens_generated,"
                " tokens_per_second = excluded.tokens_per_second,"
                " generation_time_ms = excluded.generation_time_ms, size_bytes = excluded.size_bytes,"
                " created_at = excluded.created_at, expires_at = excluded.expires_at,"
                " last_used_at = excluded.last_used_at",
                (
                    key, kind, prompt, sha256_text(prompt), model_path, os.path.basename(model_path),
                    identity, config_json, response_text, response_json, finish_reason,
                    prompt_tokens, tokens_generated, tokens_per_second, generation_time_ms, size,
                    now, expires, now,
                ),
            )
            total = conn.execute("SELECT bytes FROM cache_totals WHERE id = 1").fetchone()[0]
            if total > limit:
                # LRU order must include the hits still in the buffer.
                self._cache_flush_hits()
                evicted = self._cache_evict(conn, target=int(limit * EVICT_TO_FRACTION), keep_key=key)
                logger.debug("cache over its %d-byte limit: evicted %d entries", limit, evicted)

    def _cache_get_value(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` for a live ``@cached`` entry (a stored None is a hit), else ``(False, None)``."""
        row = self._cache_row(key)
        if row is None:
            return False, None
        return True, json.loads(row[0])

    def _cache_delete(self, *, key: str | None = None, identity: str | None = None) -> int:
        if not self.enabled:
            return 0
        column, value = ("cache_key", key) if key is not None else ("model_identity", identity)
        with self.pool.transaction() as conn:
            return int(conn.execute(f"DELETE FROM cache WHERE {column} = ?", (value,)).rowcount)

    # -- size limit ----------------------------------------------------------------------------

    def _cache_limit_bytes(self) -> int:
        return int(self.settings.max_cache_size_mb * 1_048_576)

    def _cache_evict(self, conn: sqlite3.Connection, *, target: int, keep_key: str | None) -> int:
        """Delete least-recently-used entries (inside the caller's transaction) until at most ``target`` bytes remain.

        Expired entries are not searched for first (that is a full scan);
        they are normally the least recently used anyway, and
        :meth:`cleanup_cache` removes them explicitly.
        """
        removed = 0
        total = conn.execute("SELECT bytes FROM cache_totals WHERE id = 1").fetchone()[0]
        if total <= target:
            return int(removed)
        # Walks idx_cache_lru from the oldest end and stops once enough is freed.
        ids: list[int] = []
        freed = 0
        cursor = conn.execute(
            "SELECT id, size_bytes FROM cache WHERE cache_key IS NOT ? ORDER BY last_used_at, id",
            (keep_key,),
        )
        for row_id, size in cursor:
            ids.append(row_id)
            freed += size
            if total - freed <= target:
                break
        cursor.close()
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            conn.execute(f"DELETE FROM cache WHERE id IN ({','.join('?' * len(batch))})", batch)
        return int(removed + len(ids))

    # -- hit bookkeeping -----------------------------------------------------------------------

    def _cache_count_hit(self, key: str, now: float) -> None:
        with self._cache_hits_lock:
            pending = self._cache_hits.get(key)
            if pending is None:
                if not self._cache_hits:
                    self._cache_hits_since = time.monotonic()
                    _pending_dbs.add(self)
                self._cache_hits[key] = [1, now]
            else:
                pending[0] += 1
                if now > pending[1]:
                    pending[1] = now
            due = (
                len(self._cache_hits) >= _FLUSH_ENTRIES
                or time.monotonic() - self._cache_hits_since >= _FLUSH_SECONDS
            )
        if due:
            try:
                self._cache_flush_hits()
            except Exception as exc:
                # Bookkeeping only: a locked or read-only file must not turn a hit into an error.
                logger.warning("could not write cache hit counts: %s", exc)

    def _cache_flush_hits(self) -> int:
        """Write the buffered hit counts; returns how many entries were updated."""
        if not self.enabled or not getattr(self, "_cache_hits", None):
            return 0
        with self._cache_hits_lock:
            pending, self._cache_hits = self._cache_hits, {}
        if not pending:
            return 0
        rows = [(int(count), last, last, key) for key, (count, last) in pending.items()]
        try:
            with self.pool.transaction() as conn:
                conn.executemany(
                    "UPDATE cache SET hit_count = hit_count + ?,"
                    " last_hit_at = MAX(COALESCE(last_hit_at, 0), ?),"
                    " last_used_at = MAX(last_used_at, ?) WHERE cache_key = ?",
                    rows,
                )
        except Exception:
            # Keep the counts for the next attempt, merged with any new ones.
            with self._cache_hits_lock:
                for key, (count, last) in pending.items():
                    current = self._cache_hits.get(key)
                    if current is None:
                        self._cache_hits[key] = [count, last]
                    else:
                        current[0] += count
                        current[1] = max(current[1], last)
                # Start the flush interval again rather than retrying on every hit.
                self._cache_hits_since = time.monotonic()
                if len(self._cache_hits) > 16 * _FLUSH_ENTRIES:
                    self._cache_hits.clear()  # give up: it is bookkeeping, not data
            raise
        return len(rows)
