"""The persistent response cache (the seed design's ``cache`` table).

Keys (:func:`generate_cache_key`) are SHA-256 over canonical JSON of the
prompt, the model's identity, the output-deciding part of the
:class:`~cyllama_db.types.GenerationConfig` (everything but ``seed``) and
the ``llama_cpp.Llama`` load options that change the output
(:data:`OUTPUT_LOAD_OPTIONS`).
The model identity is the file's basename plus a fingerprint of its size and
GGUF header (:func:`model_identity`): the same file at another path shares
entries, a different file under the same name does not.

A hit costs about as much as a plain indexed ``SELECT`` and an insert about
as much as a plain ``INSERT``, because neither writes anything else:

* hit bookkeeping (``hit_count``, ``last_hit_at``) is buffered in memory and
  written in batches (when the buffer grows, every few seconds, before
  cleanup, on ``get_db_stats()``/``vacuum()`` and on close), so a hit is never
  a write transaction;
* no index is written by an insert but the key's own. Least-recently-used
  order is the merge of two orders: entries never hit are in insertion
  (rowid) order, a re-stored entry moving to the end; entries with hits are
  in a partial index on ``last_used_at`` that only hit batches write to;
* the total size lives in the one-row ``cache_totals`` table, as the total
  of the rows up to ``counted_id``. A plain INSERT does not touch it: rows
  above ``counted_id`` are folded in later, with a range scan of just those
  rows. Deletes (eviction, invalidation, expiry) subtract what they remove,
  once per statement, and a trigger covers UPDATEs of ``size_bytes`` or
  ``id`` (re-stores, imports). So the exact total is always one short read
  away, for every process. (Per-row DELETE triggers would cost ~15 us per
  evicted row, more than the eviction itself; writes to the table by other
  tools are repaired by :meth:`CacheStore.cleanup`, which recounts.)
* each database object keeps a running estimate of the total
  (:class:`_SizeEstimate`) and only folds, compares with the limit and
  evicts in the insert's transaction after it has inserted 1% of the limit
  (:data:`SYNC_FRACTION`) since it last looked, or when the estimate would
  pass the limit. The user never needs to call
  :meth:`CacheStore.cleanup`. With several processes writing, each
  one cannot see the others' inserts since its last look, so the total can
  pass the limit by at most 1% of it per additional writing process.

Against a trigger-kept total (a page written per insert) and an index on
``last_used_at`` for every entry (another), this takes the SQL of an insert
from ~1.4x to ~1.2x a bare ``INSERT`` of the same key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import heapq
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from .._time import from_timestamp, parse_duration, time_arg
from .._validate import check_path
from ..db import policy as _policy
from ..db.deferred import Channel
from ..db.migrations import execute_script, migration
from ..db.store import Store, db_op, library_error
from ..errors import DatabaseClosedError, DatabaseError, SearchUnavailableError
from ..types import GenerationConfig, GenerationStats, Response
from .keys import (
    OUTPUT_LOAD_OPTIONS,
    canonical_messages,
    chat_key,
    check_text,
    clear_identity_cache,
    completion_key,
    load_options_json,
    model_identity,
    recent_model_identity,
    sha256_text,
)
from .search import (
    CACHE_FTS,
    CACHE_INDEX,
    create_cache_index,
    fts_query,
    refresh,
    require_index,
    sync_index,
)

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB
    from ..db.pool import ConnectionPool

__all__ = [
    "EXPORT_POLICY",
    "OUTPUT_LOAD_OPTIONS",
    "CacheStore",
    "clear_identity_cache",
    "generate_cache_key",
    "model_identity",
]


def _cache_entry_size(
    prompt: Any, response_text: Any, response_json: Any, config_json: Any, model_path: Any, identity: Any
) -> int:
    """An imported cache entry's ``size_bytes``, recomputed, never taken from the file.

    The formula of ``_cache_write`` (kept equal by test_export.py's test that
    compares the two on a real entry).
    """
    return (
        len(str(prompt).encode("utf-8", "surrogatepass"))
        + _utf8_len(str(response_text))
        + (_utf8_len(response_json) if isinstance(response_json, str) and response_json else 0)
        + len(str(config_json))
        + len(str(model_path))
        + len(str(identity))
        + _ROW_OVERHEAD
    )


def _prompt_hash(prompt: Any) -> str:
    """An imported cache entry's ``prompt_hash``, recomputed (lookups and invalidation use it)."""
    return sha256_text(str(prompt))


#: How the cache's tables are exported and imported (``db/policy.py``): entries
#: match by key, and only a different response is a conflict (the same key on
#: two machines may come with another path to the same file). Sizes drive the
#: size limit and eviction, so they are recomputed, never trusted.
EXPORT_POLICY: tuple[_policy.TablePolicy, ...] = (
    _policy.TablePolicy(
        "cache",
        key=("cache_key",),
        content=("response_text", "response_json", "finish_reason"),
        newer_by="created_at",
        time_columns=("created_at", "expires_at", "last_hit_at", "last_used_at"),
        json_columns=("config_json", "response_json"),
        recomputed=(
            _policy.Recompute(
                "size_bytes",
                _cache_entry_size,
                ("prompt", "response_text", "response_json", "config_json", "model_path", "model_identity"),
            ),
            _policy.Recompute("prompt_hash", _prompt_hash, ("prompt",)),
        ),
    ),
    _policy.TablePolicy("cache_totals", merge="derived"),
)

logger = logging.getLogger("cyllama_db.cache")
_DEBUG: Final = logging.DEBUG

#: Automatic eviction (after an insert pushes the cache over its limit)
#: goes down to this fraction of the limit, so a full cache does not evict
#: on every single insert; batches are cheaper per row (neighbouring pages)
#: while a small fraction keeps each pause short (for a 100 MB cache ~20 ms
#: of eviction, and about 60 ms for the insert that does it, commit included).
EVICT_TO_FRACTION: Final = 0.98

#: A database object reads the exact total size (and evicts if needed) after
#: inserting this fraction of the size limit since it last looked, so with N
#: processes writing the cache passes its limit by at most (N - 1) *
#: SYNC_FRACTION of it. A look folds the rows inserted since the last fold
#: by anyone into ``cache_totals`` (a range scan of those rows only).
SYNC_FRACTION: Final = 0.01


# Rough per-row overhead (rowid, numbers, index entries) added to the text
# sizes so that many tiny entries still count for something.
_ROW_OVERHEAD: Final = 160

KINDS: Final = ("completion", "chat", "function")

_ROW_SQL: Final = (
    "SELECT response_text, finish_reason, prompt_tokens, tokens_generated, expires_at, response_json"
    " FROM cache WHERE cache_key = ?"
)
# The exact total size without writing: the counted rows plus the not yet
# counted ones (a range scan of the rows inserted since the last fold).
_TOTAL_SQL: Final = (
    "SELECT bytes + (SELECT COALESCE(SUM(size_bytes), 0) FROM cache WHERE id > counted_id)"
    " FROM cache_totals WHERE id = 1"
)
# Count the rows inserted since the last fold (inside a write transaction).
_FOLD_SQL: Final = (
    "UPDATE cache_totals SET"
    " bytes = bytes + (SELECT COALESCE(SUM(size_bytes), 0) FROM cache WHERE id > counted_id),"
    " counted_id = (SELECT COALESCE(MAX(id), 0) FROM cache) WHERE id = 1"
)
_COUNTED_SQL: Final = "SELECT bytes FROM cache_totals WHERE id = 1"
# The gauges of totals(): entries, the exact size, evictions so far.
_GAUGES_SQL: Final = (
    "SELECT (SELECT COUNT(*) FROM cache),"
    " bytes + (SELECT COALESCE(SUM(size_bytes), 0) FROM cache WHERE id > counted_id),"
    " evictions FROM cache_totals WHERE id = 1"
)
# After a delete: subtract what it removed below counted_id, and keep
# counted_id <= MAX(id) (an insert may take a freed top rowid again).
# The engine's two-argument minimum goes where {least} is (Backend.least).
_SUBTRACT_TEMPLATE: Final = (
    "UPDATE cache_totals SET bytes = bytes - ?,"
    " counted_id = {least} WHERE id = 1"
)
_SUBTRACT_SQL: Final = _SUBTRACT_TEMPLATE.format(least="MIN(counted_id, (SELECT COALESCE(MAX(id), 0) FROM cache))")
_RECOUNT_SQL: Final = (
    "UPDATE cache_totals SET bytes = (SELECT COALESCE(SUM(size_bytes), 0) FROM cache),"
    " counted_id = (SELECT COALESCE(MAX(id), 0) FROM cache) WHERE id = 1"
)
_PUT_TEMPLATE: Final = (
    "INSERT INTO cache (cache_key, kind, prompt, prompt_hash, model_path, model_name,"
    " model_identity, config_json, response_text, response_json, finish_reason,"
    " prompt_tokens, tokens_generated, tokens_per_second, generation_time_ms, size_bytes,"
    " created_at, expires_at, hit_count, last_hit_at, last_used_at, namespace)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, ?)"
    # A re-stored entry moves to the end of the LRU (rowid) order.
    " ON CONFLICT(cache_key) DO UPDATE SET id = {next_id},"
    " kind = excluded.kind, prompt = excluded.prompt,"
    " prompt_hash = excluded.prompt_hash, model_path = excluded.model_path,"
    " model_name = excluded.model_name, model_identity = excluded.model_identity,"
    " config_json = excluded.config_json, response_text = excluded.response_text,"
    " response_json = excluded.response_json, finish_reason = excluded.finish_reason,"
    " prompt_tokens = excluded.prompt_tokens, tokens_generated = excluded.tokens_generated,"
    " tokens_per_second = excluded.tokens_per_second,"
    " generation_time_ms = excluded.generation_time_ms, size_bytes = excluded.size_bytes,"
    " created_at = excluded.created_at, expires_at = excluded.expires_at,"
    " last_used_at = excluded.last_used_at, namespace = excluded.namespace"
)
_PUT_SQL: Final = _PUT_TEMPLATE.format(next_id="(SELECT MAX(id) FROM cache) + 1")
# Hit batches; {last_hit} and {last_used} are the engine's two-argument maximum (Backend.greatest).
_HITS_TEMPLATE: Final = (
    "UPDATE cache SET hit_count = hit_count + ?,"
    " last_hit_at = {last_hit},"
    " last_used_at = {last_used} WHERE cache_key = ?"
)
_HITS_SQL: Final = _HITS_TEMPLATE.format(
    last_hit="MAX(COALESCE(last_hit_at, 0), ?)", last_used="MAX(last_used_at, ?)"
)


def _engine_statements(backend: Any) -> tuple[str, str, str]:
    """``(put, subtract, hits)`` SQL in ``backend``'s dialect (SQLite's are the constants above)."""
    if backend.name == "sqlite":
        return _PUT_SQL, _SUBTRACT_SQL, _HITS_SQL
    return (
        _PUT_TEMPLATE.format(next_id=backend.next_id_sql("cache")),
        _SUBTRACT_TEMPLATE.format(least=backend.least("counted_id", "(SELECT COALESCE(MAX(id), 0) FROM cache)")),
        _HITS_TEMPLATE.format(
            last_hit=backend.greatest("COALESCE(last_hit_at, 0)", "?"),
            last_used=backend.greatest("last_used_at", "?"),
        ),
    )

# json.dumps(..., allow_nan=False) builds a new encoder per call; this one is
# reused (same output).
_encode_json = json.JSONEncoder(allow_nan=False).encode


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
        -- An insert writes no index but the key's: each would be one more
        -- page per insert (~4 us measured, against ~20 us for a bare insert).
        -- Entries never hit are in LRU order by rowid; this partial index,
        -- written by hit batches only, orders the others, and covers what
        -- eviction reads. Invalidation and expiry cleanup are rare and scan.
        CREATE INDEX IF NOT EXISTS idx_cache_hit_lru
            ON cache(last_used_at, id, size_bytes, hit_count) WHERE hit_count > 0;

        -- bytes = the total size_bytes of the rows with id <= counted_id.
        -- Rows above counted_id (inserted since) are added by the next fold.
        CREATE TABLE IF NOT EXISTS cache_totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            bytes INTEGER NOT NULL,
            counted_id INTEGER NOT NULL
        );
        INSERT OR IGNORE INTO cache_totals (id, bytes, counted_id)
            SELECT 1, COALESCE(SUM(size_bytes), 0), COALESCE(MAX(id), 0) FROM cache;

        -- No INSERT or DELETE trigger (each would cost more than the write):
        -- an insert writes only its own row, and the store's deletes adjust
        -- the total themselves (CacheStore._delete_where). The MIN(...)
        -- keeps counted_id <= MAX(id), so that a rowid freed at the top and
        -- taken again by an insert is above counted_id and gets counted.
        -- One UPDATE: every expression sees the old counted_id.
        CREATE TRIGGER IF NOT EXISTS cache_totals_update AFTER UPDATE OF id, size_bytes ON cache BEGIN
            UPDATE cache_totals SET
                bytes = bytes - CASE WHEN OLD.id <= counted_id THEN OLD.size_bytes ELSE 0 END
                              + CASE WHEN NEW.id <= counted_id THEN NEW.size_bytes ELSE 0 END,
                counted_id = MIN(counted_id, COALESCE((SELECT MAX(id) FROM cache), 0))
            WHERE id = 1;
        END;
        """,
    )


# PostgreSQL: version 2 creates the current tables (with version 7's
# namespace and version 8's evictions); the trigger is a plpgsql function.
# An id is BIGINT from an identity sequence: a re-stored entry takes the
# sequence's next value (Backend.next_id_sql), never MAX(id) + 1, which the
# sequence would hand out again.
@migration(2, "response cache", engine="postgresql")
def _create_cache_pg(conn: Any) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS cache (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
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
            prompt_tokens BIGINT,
            tokens_generated BIGINT,
            tokens_per_second DOUBLE PRECISION,
            generation_time_ms DOUBLE PRECISION,
            size_bytes BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            hit_count BIGINT NOT NULL DEFAULT 0,
            last_hit_at DOUBLE PRECISION,
            last_used_at DOUBLE PRECISION NOT NULL,
            namespace TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX IF NOT EXISTS idx_cache_hit_lru
            ON cache(last_used_at, id, size_bytes, hit_count) WHERE hit_count > 0;
        CREATE INDEX IF NOT EXISTS idx_cache_namespace ON cache(namespace) WHERE namespace != '';
        CREATE TABLE IF NOT EXISTS cache_totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            bytes BIGINT NOT NULL,
            counted_id BIGINT NOT NULL,
            evictions BIGINT NOT NULL DEFAULT 0
        );
        INSERT INTO cache_totals (id, bytes, counted_id)
            SELECT 1, COALESCE(SUM(size_bytes), 0), COALESCE(MAX(id), 0) FROM cache
            ON CONFLICT (id) DO NOTHING;
        CREATE OR REPLACE FUNCTION cache_totals_update() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            UPDATE cache_totals SET
                bytes = bytes - CASE WHEN OLD.id <= counted_id THEN OLD.size_bytes ELSE 0 END
                              + CASE WHEN NEW.id <= counted_id THEN NEW.size_bytes ELSE 0 END,
                counted_id = LEAST(counted_id, COALESCE((SELECT MAX(id) FROM cache), 0))
            WHERE id = 1;
            RETURN NULL;
        END
        $body$;
        DROP TRIGGER IF EXISTS cache_totals_update ON cache;
        CREATE TRIGGER cache_totals_update AFTER UPDATE OF id, size_bytes ON cache
            FOR EACH ROW EXECUTE FUNCTION cache_totals_update();
        """
    )


@migration(7, "cache namespaces")
def _add_cache_namespace(conn: sqlite3.Connection) -> None:
    # '' is the default namespace: every entry made before namespaces existed.
    execute_script(
        conn,
        """
        ALTER TABLE cache ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
        CREATE INDEX IF NOT EXISTS idx_cache_namespace ON cache(namespace) WHERE namespace != '';
        """,
    )


@migration(8, "observability: stats totals, rollup latency histogram, cache evictions, process metrics")
def _add_cache_evictions(conn: sqlite3.Connection) -> None:
    # Evictions, counted where the cache evicts (a counter, never decremented).
    conn.execute("ALTER TABLE cache_totals ADD COLUMN evictions INTEGER NOT NULL DEFAULT 0")


@migration(9, "full-text search")
def _create_cache_index(conn: sqlite3.Connection) -> None:
    # The cache's part of version 9 (the logs' index is search.py's part).
    create_cache_index(conn)


def _selection_sql(selection: Any) -> tuple[str, list[Any]]:
    """SQL matching the cache rows of a model selection (its paths or identities)."""
    paths, ids = sorted(selection.paths), sorted(selection.identities)
    parts, args = [], []
    if paths:
        parts.append(f"model_path IN ({', '.join('?' * len(paths))})")
        args += paths
    if ids:
        parts.append(f"model_identity IN ({', '.join('?' * len(ids))})")
        args += ids
    return "(" + (" OR ".join(parts) or "1 = 0") + ")", args


def check_namespace(namespace: Any) -> str:
    """``namespace`` as stored: ``''`` for None (the default namespace); TypeError/ValueError otherwise."""
    if namespace is None:
        return ""
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str or None, got {type(namespace).__name__}")
    if not namespace or namespace != namespace.strip() or len(namespace) > 200:
        raise ValueError(
            f"namespace={namespace!r} must be 1-200 characters without surrounding spaces "
            "(None = the default namespace)"
        )
    check_text(namespace, "namespace")
    return namespace


def generate_cache_key(
    prompt: str | Sequence[Mapping[str, Any]],
    model_path: str | os.PathLike[str],
    config: GenerationConfig | Mapping[str, Any] | None = None,
    load_options: Mapping[str, Any] | None = None,
    *,
    namespace: str | None = None,
) -> str:
    """The cache key of ``prompt`` (a str, or chat messages) on ``model_path`` with ``config``.

    Hex SHA-256 of the canonical JSON ``{"config": ..., "model": <identity>,
    "prompt": ...}`` (chat: ``{"config", "kind": "chat", "messages", "model"}``),
    plus ``"load"``: the ``llama_cpp.Llama`` ``load_options`` that change the
    output (:data:`OUTPUT_LOAD_OPTIONS`: ``chat_format``, LoRA, RoPE,
    ``kv_overrides``...; left out when there are none). ``seed`` is not part
    of it, nor are load options such as ``n_ctx``, ``n_gpu_layers`` or
    ``n_threads``, which change where and how fast the same tokens are
    computed, not which. A ``namespace`` adds ``"namespace"`` to the JSON.
    """
    cfg = GenerationConfig.coerce(config)
    identity = model_identity(model_path)
    space = check_namespace(namespace)
    if isinstance(prompt, str):
        check_text(prompt, "prompt")
        return completion_key(prompt, identity, cfg.cache_json(), _load_json(load_options, "completion"), space)
    return chat_key(
        canonical_messages(prompt), identity, cfg.cache_json(), _load_json(load_options, "chat"), space
    )


def _load_json(load_options: Mapping[str, Any] | None, kind: str) -> str:
    if not load_options:
        return ""
    if not isinstance(load_options, Mapping):
        raise TypeError(f"load_options must be a dict of llama_cpp.Llama options, got {type(load_options).__name__}")
    return load_options_json(load_options, kind)


def _prompt_of(prompt: Any) -> tuple[str, str]:
    """(kind, stored prompt text) of a public-API ``prompt`` argument."""
    if isinstance(prompt, str):
        return "completion", prompt
    if isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        return "chat", canonical_messages(prompt)
    raise TypeError(
        f"prompt must be a str or a list of chat messages, got {type(prompt).__name__}"
    )


def _ttl_seconds(ttl: Any) -> float:
    """A given (not None) ``ttl`` in seconds; ValueError unless it is a positive duration."""
    try:
        seconds = parse_duration(ttl).total_seconds()
    except TypeError as exc:
        raise TypeError(f"ttl {exc}") from None
    except (ValueError, OverflowError) as exc:
        raise ValueError(
            f"ttl={ttl!r} is not a usable duration ({exc}): use a timedelta, seconds or '24h'"
        ) from exc
    if seconds <= 0:
        raise ValueError(f"ttl={ttl!r} must be positive")
    return seconds


# Remembered results of os.path.abspath() and os.path.basename(): both are
# on every write's path. Only absolute paths are remembered (a relative
# path's meaning changes with the working directory).
_absolute_paths: dict[str, str] = {}
_basename: Final = functools.lru_cache(maxsize=256)(os.path.basename)


def _absolute(path: str) -> str:
    """``os.path.abspath(path)``."""
    known = _absolute_paths.get(path)
    if known is not None:
        return known
    absolute = os.path.abspath(path)
    if os.path.isabs(path):
        if len(_absolute_paths) >= 256:
            _absolute_paths.clear()
        _absolute_paths[path] = absolute
    return absolute


def _utf8_len(text: str) -> int:
    # isascii() is O(1) in CPython (a flag on the string): no copy for the common case.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


_new_object = object.__new__


def _hit(row: tuple[Any, ...], model_path: str, started: float) -> Response:
    """The Response of a hit on ``row`` (from ``_ROW_SQL``), timed from ``started``.

    Built without ``__init__``: the values come from our own table, and
    validating them again costs as much as the lookup's Python part.
    """
    prompt_tokens, generated = row[2], row[3]
    stats = _new_object(GenerationStats)
    stats.__dict__ = {
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated,
        "total_tokens": (
            prompt_tokens + generated if prompt_tokens is not None and generated is not None else None
        ),
        "prompt_time_ms": 0.0,
        "generation_time_ms": 0.0,
        "total_time_ms": (time.perf_counter() - started) * 1000.0,
        "tokens_per_second": None,
    }
    response = _new_object(Response)
    response.__dict__ = {
        "text": row[0], "finish_reason": row[1], "model_path": model_path, "cache_hit": True, "stats": stats,
        "kind": "completion", "_source": None, "_stored": row[5], "_key": None,
    }
    return response


_RESPONSE_JSON: Final = (
    '{"finish_reason": %s, "model_path": %s, "stats": {"prompt_tokens": %s, "generated_tokens": %s,'
    ' "total_tokens": %s, "prompt_time_ms": %s, "generation_time_ms": %s, "total_time_ms": %s,'
    ' "tokens_per_second": %s}}'
)

# The formatted fast path is only right while GenerationStats has exactly these fields.
_STATS_AS_FORMATTED: Final = tuple(f.name for f in dataclasses.fields(GenerationStats)) == (
    "prompt_tokens", "generated_tokens", "total_tokens", "prompt_time_ms",
    "generation_time_ms", "total_time_ms", "tokens_per_second",
)


def _json_scalar(value: Any) -> str:
    # int.__repr__/float.__repr__ are exactly what json writes for them; a
    # non-finite float (v - v is NaN) or anything else goes through json
    # itself, which raises for NaN and infinities.
    kind = type(value)
    if value is None:
        return "null"
    if kind is int or (kind is float and value - value == 0.0):
        return repr(value)
    return _encode_json(value)


def _response_json(response: Response) -> str:
    """The ``response_json`` column: the Response without its text (that is ``response_text``).

    Exactly ``json.dumps({"finish_reason", "model_path", "stats": stats.to_dict()},
    allow_nan=False)``, formatted directly: this is on every write's path and
    takes a third of the time.
    """
    stats = response.stats
    finish = response.finish_reason
    source = response._source
    if source is not None or not _STATS_AS_FORMATTED:
        data: dict[str, Any] = {
            "finish_reason": finish, "model_path": response.model_path, "stats": stats.to_dict()
        }
        if source is not None:
            # llama-cpp-python's dict without its text (that is response_text): tool
            # calls, log-probabilities and usage come back with a hit (to_openai()).
            from ..llm.openai import skeleton  # stores never import llm at module level

            data["openai"] = skeleton(source, response.kind)
        return _encode_json(data)
    if not _STATS_AS_FORMATTED:
        return _encode_json(
            {"finish_reason": finish, "model_path": response.model_path, "stats": stats.to_dict()}
        )
    return _RESPONSE_JSON % (
        "null" if finish is None else _encode_json(finish),
        _encode_json(response.model_path),
        _json_scalar(stats.prompt_tokens),
        _json_scalar(stats.generated_tokens),
        _json_scalar(stats.total_tokens),
        _json_scalar(stats.prompt_time_ms),
        _json_scalar(stats.generation_time_ms),
        _json_scalar(stats.total_time_ms),
        _json_scalar(stats.tokens_per_second),
    )


class _SizeEstimate:
    """One database object's running estimate of the cache's total size, in bytes.

    Exact after each *sync* (a fold and read of ``cache_totals`` inside a
    write transaction, followed by eviction if over the limit). Between
    syncs an insert that keeps the estimate within the limit and within
    ``sync_every`` bytes of the last sync is *reserved* here and needs no
    extra SQL. The estimate
    never goes down between syncs: a replaced, invalidated or evicted entry
    leaves it too high, which only brings the next sync sooner. What it
    misses are other processes' inserts since this object's last sync;
    since each of them syncs after ``sync_every`` bytes of its own, the real
    total exceeds the limit by at most ``sync_every`` per other writer.

    Thread-safe without holding a lock across SQL. A sync also counts the
    inserts of this object's other threads that its read may have missed:
    every reservation still in flight when the sync looked
    (:meth:`sync_start`, inside the sync's write transaction, so none of
    them can commit before it does), and every one made since.
    """

    __slots__ = ("_lock", "_pending", "_reserved", "total", "unsynced")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total: int | None = None  # None: not read yet (or a sync failed)
        self.unsynced = 0  # bytes reserved since the last sync
        self._pending = 0  # reserved by inserts that have not finished yet
        self._reserved = 0  # every byte ever reserved (a clock for sync_start/sync_end)

    def reserve(self, size: int, limit: int, sync_every: int) -> bool:
        """Count an insert of ``size`` bytes if it needs no sync; False when a sync is due."""
        with self._lock:
            total = self.total
            if total is None or total + size > limit or self.unsynced + size > sync_every:
                return False
            self.total = total + size
            self.unsynced += size
            self._pending += size
            self._reserved += size
            return True

    def release(self, size: int) -> None:
        """A reserved insert has finished (committed or not)."""
        with self._lock:
            self._pending -= size

    def sync_start(self) -> tuple[int, int]:
        """Mark a sync; call it inside the sync's write transaction, before or after its ``SUM``."""
        with self._lock:
            return self._pending, self._reserved

    def sync_end(self, mark: tuple[int, int], exact: int) -> None:
        """The sync committed with ``exact`` bytes in the table."""
        pending, reserved = mark
        with self._lock:
            missed = pending + (self._reserved - reserved)
            self.total = exact + missed
            self.unsynced = missed

    def forget(self) -> None:
        """Read the total again before the next insert (a sync failed)."""
        with self._lock:
            self.total = None


_HIT_COUNT_SQL: Final = _HITS_SQL  # SQLite's; other engines' from _engine_statements


def _write_hit_counts(conn: sqlite3.Connection, hits: list[tuple[str, float]]) -> None:
    """The ``cache.hits`` channel's flush: one UPDATE per entry hit, with its count and latest time.

    A hit only buffers ``(key, time)`` (``db.deferred``, the one write-behind
    of the database); counting per key here makes a batch of hits on a few
    hot entries a few UPDATEs.
    """
    tally: dict[str, list[Any]] = {}
    for key, when in hits:
        pending = tally.get(key)
        if pending is None:
            tally[key] = [1, when]
        else:
            pending[0] += 1
            if when > pending[1]:
                pending[1] = when
    sql = _HIT_COUNT_SQL if isinstance(conn, sqlite3.Connection) else _engine_statements(conn.backend)[2]
    # In key order: processes flushing the same entries at once (several
    # machines on one PostgreSQL server) then lock their rows in the same
    # order, so they wait for each other instead of deadlocking.
    conn.executemany(sql, [(count, last, last, key) for key, (count, last) in sorted(tally.items())])


_ENTRY_COLUMNS: Final = (
    "cache_key", "kind", "namespace", "model_name", "model_path", "prompt", "finish_reason",
    "tokens_generated", "size_bytes", "hit_count", "created_at", "expires_at", "last_hit_at",
    "last_used_at",
)
_TIMES: Final = ("created_at", "expires_at", "last_hit_at", "last_used_at")


def _check_limit(limit: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


class CacheStore(Store):
    """The response cache: ``db.cache.get/put/invalidate/cleanup/stats/entries/search/find``.

    The flat ``db.get_cached_response`` / ``cache_response`` /
    ``invalidate_cache`` / ``cleanup_cache`` / ``get_cache_stats`` /
    ``list_cache_entries`` / ``search_cache`` / ``cached_models`` are the
    same methods. ``lookup``, ``store_response``, ``get_value``,
    ``put_value`` and ``delete`` are the ways in for ``LLM``/``complete()``
    and ``@cached``, which have their key already.
    """

    name = "cache"
    tables = ("cache", "cache_totals")
    export_policy = EXPORT_POLICY

    def __init__(self, db: CyllamaDB) -> None:
        super().__init__(db)
        # Bound once: the hot paths read them on every call (the settings
        # never change; the pool is bound when the database opens).
        self._settings = db.settings
        self._conn_pool: ConnectionPool | None = None
        #: the hits waiting to be counted (``db.deferred``'s channel "cache.hits"), from open()
        self._hits: Channel | None = None
        self._size = _SizeEstimate()
        self._put_sql, self._subtract_sql = _PUT_SQL, _SUBTRACT_SQL

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        self._conn_pool = self.pool
        self._put_sql, self._subtract_sql, _ = _engine_statements(self.backend)
        self._hits = self.db.deferred.channel(
            "cache.hits", _write_hit_counts, logger=logger, what="cache hit counts"
        )

    def flush(self) -> None:
        """Write the buffered hit counts and index the entries stored since the last sync for search."""
        self._flush_hits()
        self._refresh_index()

    def close(self) -> None:
        if self._hits is not None:
            self._hits.close()  # writes what is waiting; never raises
        try:
            self._refresh_index()
        except Exception as exc:
            logger.debug("cache search index not brought up to date: %s", exc)

    def counts(self, conn: sqlite3.Connection) -> dict[str, Any]:
        entries = conn.execute("SELECT COUNT(*) FROM cache").fetchone()[0]
        size = conn.execute(_TOTAL_SQL).fetchone()[0]
        return {"cache_entries": int(entries), "cache_size_mb": round(size / 1_048_576, 4)}

    def _refresh_index(self) -> None:
        """Index the entries stored since the last sync (full-text search); a no-op if none."""
        pool = self._conn_pool
        if pool is not None and not pool.closed and not pool.readonly:
            refresh(pool, CACHE_INDEX)

    def _check_open(self) -> ConnectionPool | None:
        """The pool, None when disabled; raises once closed (what ``db_op`` checks, without its wrapper)."""
        if not self._settings.enabled:
            return None
        pool = self._conn_pool
        if pool is None or pool.closed:
            raise DatabaseClosedError(self.path)
        return pool

    # -- public API --------------------------------------------------------------------------

    def get(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        model_path: str | os.PathLike[str],
        config: GenerationConfig | Mapping[str, Any] | None = None,
        *,
        load_options: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> Response | None:
        """The cached :class:`Response` (``cache_hit=True``) for this call, or None if absent or expired.

        ``prompt`` is the completion prompt, or the chat messages of a chat
        request; ``load_options`` the model's ``llama_cpp.Llama`` options (as
        given to ``LLM``; only those that change the output count, see
        :func:`generate_cache_key`). The hit's ``stats`` carry the original
        token counts and the lookup's own time. ``namespace`` looks in that
        namespace only (None: the default one).
        """
        # Not @db_op: a hit's path (its checks are _check_open; a failed read is a miss).
        if self._check_open() is None:
            return None
        started = time.perf_counter()
        cfg = config if type(config) is GenerationConfig else GenerationConfig.coerce(config)
        path = check_path(model_path, "model_path")
        space = "" if namespace is None else check_namespace(namespace)
        identity = recent_model_identity(path)
        if isinstance(prompt, str):
            if not prompt.isascii():
                check_text(prompt, "prompt")
            load = _load_json(load_options, "completion") if load_options else ""
            key = completion_key(prompt, identity, cfg.cache_json(), load, space)
            kind = "completion"
        else:
            load = _load_json(load_options, "chat") if load_options else ""
            key = chat_key(_prompt_of(prompt)[1], identity, cfg.cache_json(), load, space)
            kind = "chat"
        row = self._row(key)
        if row is None:
            return None
        response = _hit(row, path, started)
        response.kind = kind
        response._key = key
        return response

    def put(
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
        """Store ``response`` for this call; ``ttl`` None = the database's ``cache_ttl``.

        ``load_options`` as for :meth:`get`. Values are stored as JSON. An
        entry larger than the whole size limit is not stored (logged at
        DEBUG). Text with a lone surrogate (no UTF-8 form) raises
        ``ValueError`` naming the argument.
        """
        # Not @db_op (a write's path): the same checks and error mapping, inline.
        if self._check_open() is None:
            return
        cfg = config if type(config) is GenerationConfig else GenerationConfig.coerce(config)
        path = check_path(model_path, "model_path")
        if isinstance(response, str):
            response = Response(text=response, model_path=path)
        elif not isinstance(response, Response):
            raise TypeError(f"response must be a Response or a str, got {type(response).__name__}")
        if not response.text.isascii():
            check_text(response.text, "response.text")
        space = "" if namespace is None else check_namespace(namespace)
        identity = recent_model_identity(path)
        if isinstance(prompt, str):
            if not prompt.isascii():
                check_text(prompt, "prompt")
            kind, prompt_text = "completion", prompt
            load = _load_json(load_options, "completion") if load_options else ""
            key = completion_key(prompt, identity, cfg.cache_json(), load, space)
        else:
            kind, prompt_text = _prompt_of(prompt)
            load = _load_json(load_options, "chat") if load_options else ""
            key = chat_key(prompt_text, identity, cfg.cache_json(), load, space)
        stats = response.stats
        try:
            self._write(
                key, kind, prompt_text, _absolute(path), identity, cfg.to_json(), response.text,
                _response_json(response), response.finish_reason, stats.prompt_tokens,
                stats.generated_tokens, stats.tokens_per_second, stats.generation_time_ms, ttl, space,
            )
        except (sqlite3.Error, OverflowError) as exc:  # the error contract, as db_op maps it
            raise library_error(exc, self.path, self._settings.busy_timeout) from exc

    @db_op(empty=int)
    def invalidate(
        self,
        prompt: str | Sequence[Mapping[str, Any]] | None = None,
        model_path: str | os.PathLike[str] | None = None,
        older_than: datetime | timedelta | float | str | None = None,
        *,
        namespace: str | None = None,
    ) -> int:
        """Remove the entries matching every given criterion (none given: all); returns how many.

        * ``prompt``: entries for this prompt (a str, or chat messages), on any model;
        * ``model_path``: entries for this model file: those whose identity
          matches the file's current one, and those stored under this path
          (older versions of the file). For a path that does not exist, a bare
          file name (``"model.gguf"``) matches entries of any file with that name;
        * ``older_than``: entries created before this datetime, before this
          long ago (a timedelta or duration text: ``older_than="7d"``), before
          these Unix seconds, or before this ISO-8601 date/time text;
        * ``namespace``: entries of this namespace only (given per call as
          ``complete(..., namespace=...)``). Without it every namespace matches.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if namespace is not None:
            clauses.append("namespace = ?")
            params.append(check_namespace(namespace))
        if prompt is not None:
            _kind, text = _prompt_of(prompt)
            clauses.append("prompt_hash = ?")
            params.append(sha256_text(text))
        if model_path is not None:
            path = check_path(model_path, "model_path")
            absolute = os.path.abspath(path)
            options = ["model_identity = ?", "model_path = ?"]
            params += [model_identity(path), absolute]
            if not os.path.exists(path) and os.path.basename(path) == path:
                options.append("model_name = ?")
                params.append(path)
            # ...and whatever else the name means (a registry name, a GGUF general.name).
            extra_clause, extra_args = _selection_sql(self._select_model(path))
            options.append(extra_clause)
            params += extra_args
            clauses.append("(" + " OR ".join(options) + ")")
        if older_than is not None:
            clauses.append("created_at < ?")
            params.append(time_arg(older_than, "older_than", self.clock()))
        with self.pool.transaction() as conn:
            removed = self._delete_where(conn, " AND ".join(clauses) or "1 = 1", params)
            if removed:
                sync_index(conn, CACHE_INDEX)  # drop them from the search index now
                self._reclaim(conn)
        logger.debug("invalidated %d cache entries", removed)
        return int(removed)

    @db_op(empty=list)
    def entries(
        self,
        limit: int = 20,
        order: str = "newest",
        model_path: str | os.PathLike[str] | None = None,
        *,
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        """Cache entries without their response text, newest (or most hit, ``order="hits"``) first.

        Each is a dict of ``cache_key``, ``kind``, ``namespace``, ``model_name``,
        ``model_path``, ``prompt``, ``finish_reason``, ``tokens_generated``,
        ``size_bytes``, ``hit_count`` and the times as datetimes.
        ``model_path`` selects one model (a path, or a bare file name);
        ``namespace`` one namespace (``""`` is the default one).
        """
        _check_limit(limit)
        if order not in ("newest", "hits"):
            raise ValueError(f"order must be 'newest' or 'hits', got {order!r}")
        self._flush_hits_quietly()
        clauses: list[str] = []
        params: list[Any] = []
        if model_path is not None:
            selection = self._select_model(model_path)
            clause, args = _selection_sql(selection)
            clauses.append(clause)
            params += args
        if namespace is not None:
            clauses.append("namespace = ?")
            params.append("" if namespace == "" else check_namespace(namespace))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        by = "created_at DESC" if order == "newest" else "hit_count DESC, last_used_at DESC"
        with self.pool.read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM cache{where} ORDER BY {by}, id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        entries = []
        for row in rows:
            entry = dict(zip(_ENTRY_COLUMNS, row, strict=True))
            for name in _TIMES:
                entry[name] = from_timestamp(entry[name])
            entries.append(entry)
        return entries

    @db_op(empty=list)
    def find(self, key_prefix: str, limit: int = 2) -> list[dict[str, Any]]:
        """The entries whose key starts with ``key_prefix`` (at most ``limit``), in key order, in full.

        Each is a dict of every column of the entry but its row id: what
        :meth:`entries` gives, plus ``prompt_hash``, ``model_identity``,
        ``response_text``, the token counts and timings, and the entry's
        ``config`` and ``response`` metadata parsed from their JSON (a
        ``@cached`` entry has ``response_json`` None). Times are datetimes.
        Keys are lowercase hex, so the prefix is matched in any case; the
        default ``limit=2`` tells a unique prefix from an ambiguous one.
        """
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        prefix = key_prefix.strip().lower()
        if not prefix:
            raise ValueError("key_prefix must not be empty: give the first characters of a cache key")
        check_text(prefix, "key_prefix")
        _check_limit(limit)
        self._flush_hits_quietly()
        with self.pool.read() as conn:
            # A key prefix is an index range on the unique cache_key index.
            cursor = conn.execute(
                "SELECT * FROM cache WHERE cache_key >= ? AND cache_key < ? ORDER BY cache_key LIMIT ?",
                (prefix, prefix + "\U0010ffff", min(limit, 2**63 - 1)),
            )
            names = [column[0] for column in cursor.description]
            rows = cursor.fetchall()
        found = []
        for row in rows:
            entry = dict(zip(names, row, strict=True))
            entry.pop("id", None)
            for name in _TIMES:
                if isinstance(entry.get(name), int | float):
                    entry[name] = from_timestamp(entry[name])
            for name in ("config_json", "response_json"):
                text = entry.get(name)
                if isinstance(text, str):
                    with contextlib.suppress(ValueError):  # not JSON: the raw column stays
                        entry[name[: -len("_json")]] = json.loads(text)
                        del entry[name]
            found.append(entry)
        return found

    @db_op(empty=list)
    def models(self) -> list[tuple[str, str, str]]:
        """Every model with cache entries: ``(model_path, model_name, model_identity)``."""
        with self.pool.read() as conn:
            return [
                (str(p), str(n), str(i))
                for p, n, i in conn.execute(
                    "SELECT DISTINCT model_path, model_name, model_identity FROM cache WHERE kind != 'function'"
                )
            ]

    def _select_model(self, model: Any) -> Any:
        from .modelref import select_model

        check_path(model, "model_path")
        return select_model(self.db, model)

    @db_op(empty=list)
    def search(
        self,
        query: str,
        limit: int = 20,
        *,
        model_path: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        include_expired: bool = False,
    ) -> list[dict[str, Any]]:
        """Cache entries whose prompt or response matches ``query``, best match first.

        A full-text search (SQLite FTS5, ranked by BM25): every word must
        appear, in any case and with or without accents (``cafe`` finds
        ``Café``); ``"a phrase"`` in double quotes matches those words in
        that order; ``word*`` matches any word starting with ``word``.
        Nothing else is query syntax (``OR``, ``NEAR``, ``-`` are plain
        text). The prompt of a chat entry is its messages as JSON, so role
        names (``user``) match too.

        Each result is a dict as :meth:`entries` gives, plus
        ``response_text`` and ``snippet`` (the best matching part, the
        matched words in ``[`` ``]``). ``model_path`` and ``namespace``
        filter as there; expired entries are left out unless
        ``include_expired``. Raises
        :class:`~cyllama_db.errors.SearchUnavailableError` if this SQLite
        has no FTS5.
        """
        match = fts_query(query, "query")
        _check_limit(limit)
        if self.backend.name != "sqlite" and not self.backend.search_available():
            raise SearchUnavailableError(
                f"full-text search of the cache is not available on {self.backend.name} yet (it is "
                "built on SQLite's FTS5); list entries with db.cache.entries() or db.cache.find(), "
                "or export the cache to a SQLite file (cyllama-db export) and search there"
            )
        if not isinstance(include_expired, bool):
            raise TypeError(f"include_expired must be True or False, got {include_expired!r}")
        self._flush_hits_quietly()
        # Entries whose indexed text is pending removal (changed or gone) are
        # left out: that matters only where the index could not be synced first.
        clauses = [f"c.id NOT IN (SELECT id FROM {CACHE_FTS}_pending)"]
        params: list[Any] = []
        if model_path is not None:
            clause, args = _selection_sql(self._select_model(model_path))
            clauses.append(clause.replace("model_path IN", "c.model_path IN").replace("model_identity IN", "c.model_identity IN"))
            params += args
        if namespace is not None:
            clauses.append("c.namespace = ?")
            params.append("" if namespace == "" else check_namespace(namespace))
        if not include_expired:
            clauses.append("(c.expires_at IS NULL OR c.expires_at > ?)")
            params.append(self.clock())
        names = (
            "cache_key", "kind", "namespace", "model_name", "model_path", "prompt", "response_text",
            "finish_reason", "tokens_generated", "size_bytes", "hit_count", "created_at", "expires_at",
            "last_hit_at", "last_used_at",
        )
        # Best effort, as every read's bookkeeping: a read never waits on a write.
        self._flush_for_read(self._refresh_index)
        with self.pool.read() as conn:
            require_index(conn, CACHE_FTS)
            rows = conn.execute(
                f"SELECT {', '.join('c.' + n for n in names)},"
                f" snippet({CACHE_FTS}, -1, '[', ']', '…', 16)"
                f" FROM {CACHE_FTS} JOIN cache AS c ON c.id = {CACHE_FTS}.rowid"
                f" WHERE {CACHE_FTS} MATCH ? AND {' AND '.join(clauses)}"
                f" ORDER BY {CACHE_FTS}.rank, c.id DESC LIMIT ?",
                (match, *params, min(limit, 2**63 - 1)),
            ).fetchall()
        entries = []
        for row in rows:
            entry = dict(zip(names, row[:-1], strict=True))
            entry["snippet"] = row[-1]
            for name in _TIMES:
                entry[name] = from_timestamp(entry[name])
            entries.append(entry)
        return entries

    def _flush_hits_quietly(self) -> None:
        # A listing must not fail (or wait) because hit counts cannot be written now.
        try:
            self._flush_hits()
        except Exception as exc:
            logger.debug("hit counts not written before a listing: %s", exc)

    @db_op(empty=int)
    def cleanup(self) -> int:
        """Remove expired entries, then least-recently-used ones until the size limit holds; returns how many."""
        self._flush_hits()
        limit = self._limit_bytes()
        estimate = self._size
        try:
            with self.pool.transaction() as conn:
                mark = estimate.sync_start()
                removed = self._delete_where(
                    conn, "expires_at IS NOT NULL AND expires_at <= ?", [self.clock()]
                )
                # Maintenance may scan: recount from scratch, which also repairs
                # cache_totals after writes to the table by other tools.
                conn.execute(_RECOUNT_SQL)
                evicted, total = self._settle(conn, limit=limit, target=limit, keep_key=None)
                removed += evicted
                if removed:
                    self._reclaim(conn)
        except BaseException:
            estimate.forget()
            raise
        estimate.sync_end(mark, total)
        if removed:
            logger.info("cache cleanup removed %d entries", removed)
        return int(removed)

    @db_op(empty=dict)
    def stats(self) -> dict[str, Any]:
        """Entries, size, limit, hits, expired entries and a count per kind."""
        self._flush_for_read(self._flush_hits)  # best effort: a read never waits on a write
        now = self.clock()
        with self.pool.read() as conn:
            entries, size, hits, expired, oldest = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0), COALESCE(SUM(hit_count), 0),"
                " COALESCE(SUM(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 1 ELSE 0 END), 0),"
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

    @db_op()
    def totals(self) -> dict[str, int] | None:
        """The cache's gauges for monitoring: ``entries``, ``size_bytes`` (exact, as counted
        against the limit) and ``evictions`` (entries evicted so far, a counter); None where
        a read-only file from an older cyllama-db lacks them. Cheap: no scan of the table."""
        with self.pool.read() as conn:
            try:
                row = conn.execute(_GAUGES_SQL).fetchone()
            except sqlite3.OperationalError:
                return None
        if row is None:
            return None
        entries, size, evictions = row
        return {"entries": int(entries), "size_bytes": int(size), "evictions": int(evictions)}

    # -- the hot paths (the ways in for llm/ and cached.py, which have their key) --------------

    def _row(self, key: str) -> tuple[Any, ...] | None:
        """The live row for ``key`` (response_text, finish_reason, prompt_tokens,
        tokens_generated), counting a hit; None if absent or expired."""
        if not self._settings.enabled:
            return None
        pool = self._conn_pool
        if pool is None:
            raise DatabaseClosedError(self.path)
        try:
            if pool.memory:
                with pool.read() as conn:
                    row = conn.execute(_ROW_SQL, (key,)).fetchone()
            else:
                # No context manager: it costs about as much as the SELECT
                # itself. connection() raises once the pool is closed.
                row = pool.fetchone(_ROW_SQL, (key,))  # fork() waits for it (issue 13)
        except (sqlite3.Error, DatabaseError) as exc:  # DatabaseError: another engine's, mapped
            logger.warning("cache lookup failed, treating it as a miss: %s", exc)
            return None
        if row is None:
            if logger.isEnabledFor(_DEBUG):
                logger.debug("cache miss %s", key[:16])
            return None
        now = self.db.clock()
        expires = row[4]
        if expires is not None and expires <= now:
            if logger.isEnabledFor(_DEBUG):
                logger.debug("cache miss %s (expired)", key[:16])
            return None
        self._count_hit(key, now)
        if logger.isEnabledFor(_DEBUG):
            logger.debug("cache hit %s", key[:16])
        return row

    def lookup(self, key: str, model_path: str, started: float) -> Response | None:
        """The hit for ``key`` (a key of :func:`generate_cache_key`), or None; for ``LLM``/``complete()``.

        ``model_path`` goes into the Response, and its ``total_time_ms``
        counts from ``started`` (a ``time.perf_counter()`` value). A hit is
        counted (buffered); a failed read is logged and is a miss.
        """
        row = self._row(key)
        return None if row is None else _hit(row, model_path, started)

    def store_response(
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
        namespace: str = "",
    ) -> None:
        """Store ``response`` under ``key``, already computed by the caller (``LLM``/``complete()``).

        ``prompt`` is the stored prompt text (chat: canonical messages JSON),
        ``identity`` the model's :func:`model_identity`, ``ttl`` None for the
        database's default. An entry over the whole size limit is skipped.
        """
        stats = response.stats
        self._write(
            key, kind, prompt, model_path, identity, config.to_json(), response.text,
            _response_json(response), response.finish_reason, stats.prompt_tokens,
            stats.generated_tokens, stats.tokens_per_second, stats.generation_time_ms, ttl, namespace,
        )

    def put_value(
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
        namespace: str = "",
    ) -> None:
        """Store one entry as given, under ``key`` (``@cached``'s way in); an entry over the whole limit is skipped."""
        self._write(
            key, kind, prompt, model_path, identity, config_json, response_text, response_json,
            finish_reason, prompt_tokens, tokens_generated, tokens_per_second, generation_time_ms, ttl,
            namespace,
        )

    def _write(
        self,
        key: str,
        kind: str,
        prompt: str,
        model_path: str,
        identity: str,
        config_json: str,
        response_text: str,
        response_json: str | None,
        finish_reason: str | None,
        prompt_tokens: int | None,
        tokens_generated: int | None,
        tokens_per_second: float | None,
        generation_time_ms: float | None,
        ttl: Any,
        namespace: str = "",
    ) -> None:
        # Positional on purpose: this is every write's path, and keyword
        # passing of 14 arguments costs about a microsecond.
        settings = self._settings
        if not settings.enabled:
            return
        pool = self._conn_pool
        if pool is None:
            raise DatabaseClosedError(self.path)
        if ttl is None:
            default = settings.cache_ttl
            ttl_s = None if default is None else default.total_seconds()
        else:
            ttl_s = _ttl_seconds(ttl)
        prompt_bytes = prompt.encode("utf-8", "surrogatepass")
        size = (
            len(prompt_bytes)
            + _utf8_len(response_text)
            + (_utf8_len(response_json) if response_json else 0)
            + len(config_json)
            + len(model_path)
            + len(identity)
            + len(namespace)
            + _ROW_OVERHEAD
        )
        limit = int(settings.max_cache_size_mb * 1_048_576)
        if size > limit:
            logger.debug("not caching a %d-byte entry: larger than the %d-byte cache limit", size, limit)
            return
        now = self.db.clock()
        params = (
            key, kind, prompt, hashlib.sha256(prompt_bytes).hexdigest(), model_path,
            _basename(model_path), identity, config_json, response_text, response_json,
            finish_reason, prompt_tokens, tokens_generated, tokens_per_second, generation_time_ms,
            size, now, None if ttl_s is None else now + ttl_s, now, namespace,
        )
        estimate = self._size
        if estimate.reserve(size, limit, max(1, int(limit * SYNC_FRACTION))):
            # The common case, well within the limit: the upsert is the whole
            # transaction (execute_write: autocommit, as safe as BEGIN IMMEDIATE).
            try:
                pool.execute_write(self._put_sql, params)
            finally:
                estimate.release(size)
            return
        try:
            with pool.transaction() as conn:
                conn.execute(self._put_sql, params)
                mark = estimate.sync_start()
                evicted, total = self._settle(
                    conn, limit=limit, target=int(limit * EVICT_TO_FRACTION), keep_key=key
                )
        except BaseException:
            estimate.forget()
            raise
        estimate.sync_end(mark, total)
        if evicted:
            logger.debug("cache over its %d-byte limit: evicted %d entries", limit, evicted)

    def get_value(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` for a live ``@cached`` entry under ``key`` (a stored None is a hit), else ``(False, None)``."""
        row = self._row(key)
        if row is None:
            return False, None
        return True, json.loads(row[0])

    @db_op(empty=int)
    def delete(self, *, key: str | None = None, identity: str | None = None) -> int:
        """Remove the entry under ``key``, or every entry of the model ``identity`` (``@cached``:
        ``"fn:<function name>"``); returns how many went."""
        if key is None and identity is None:
            raise TypeError("delete() needs key= or identity=")
        column, value = ("cache_key", key) if key is not None else ("model_identity", identity)
        with self.pool.transaction() as conn:
            return self._delete_where(conn, f"{column} = ?", [value])

    def _delete_where(self, conn: sqlite3.Connection, where: str, params: list[Any]) -> int:
        """``DELETE FROM cache WHERE <where>`` inside the caller's transaction, keeping
        ``cache_totals`` exact; returns how many rows went."""
        counted = conn.execute("SELECT counted_id FROM cache_totals WHERE id = 1").fetchone()[0]
        gone = conn.execute(
            f"SELECT COALESCE(SUM(size_bytes), 0) FROM cache WHERE ({where}) AND id <= ?",
            [*params, counted],
        ).fetchone()[0]
        removed = int(conn.execute(f"DELETE FROM cache WHERE {where}", params).rowcount)
        if removed:
            conn.execute(self._subtract_sql, (gone,))
        return removed

    # -- size limit ----------------------------------------------------------------------------

    def _limit_bytes(self) -> int:
        return int(self._settings.max_cache_size_mb * 1_048_576)

    def _settle(
        self, conn: sqlite3.Connection, *, limit: int, target: int, keep_key: str | None
    ) -> tuple[int, int]:
        """Inside a write transaction: fold the uncounted rows into ``cache_totals``; if the
        total is over ``limit``, evict down to ``target``. Returns ``(evicted, exact total)``."""
        conn.execute(_FOLD_SQL)
        # The same periodic sync indexes the entries stored since the last one
        # for full-text search: in a batch (an FTS5 write per insert would
        # double an insert's cost), and about 1% of the cache at a time.
        sync_index(conn, CACHE_INDEX)
        total = int(conn.execute(_COUNTED_SQL).fetchone()[0])
        if total <= limit:
            return 0, total
        # The LRU order must include the hits still waiting, written in this
        # transaction (a flush of its own would wait for this very write lock).
        if self._hits is not None:
            self._hits.flush_in(conn)
        evicted, freed = self._evict(conn, total=total, target=target, keep_key=keep_key)
        if evicted:
            sync_index(conn, CACHE_INDEX)
            # A no-op unless the eviction left an eighth of the file free (e.g.
            # after the limit was lowered): pages freed by the usual small
            # evictions are reused by the next inserts.
            self._reclaim(conn)
        return evicted, total - freed

    def _evict(
        self, conn: sqlite3.Connection, *, total: int, target: int, keep_key: str | None
    ) -> tuple[int, int]:
        """Delete least-recently-used entries (inside the caller's transaction) until at most
        ``target`` of ``total`` bytes remain; returns ``(entries, bytes)`` removed.

        Expired entries are not searched for first (that is a full scan);
        they are normally the least recently used anyway, and
        :meth:`cleanup` removes them explicitly.
        """
        if total <= target:
            return 0, 0
        keep = None
        if keep_key is not None:
            row = conn.execute("SELECT id FROM cache WHERE cache_key = ?", (keep_key,)).fetchone()
            keep = row[0] if row else None
        # Least recently used first: entries never hit in rowid (insertion)
        # order, merged with the hit ones from idx_cache_hit_lru; both walks
        # stop as soon as enough is freed.
        never_hit = conn.execute(
            "SELECT last_used_at, id, size_bytes FROM cache WHERE hit_count = 0 ORDER BY id"
        )
        hit = conn.execute(
            "SELECT last_used_at, id, size_bytes FROM cache WHERE hit_count > 0 ORDER BY last_used_at, id"
        )
        counted_id = conn.execute("SELECT counted_id FROM cache_totals WHERE id = 1").fetchone()[0]
        ids: list[int] = []
        freed = counted = 0
        for _used, row_id, size in heapq.merge(never_hit, hit):
            if row_id == keep:
                continue
            ids.append(row_id)
            freed += size
            if row_id <= counted_id:
                counted += size
            if total - freed <= target:
                break
        never_hit.close()
        hit.close()
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            conn.execute(f"DELETE FROM cache WHERE id IN ({','.join('?' * len(batch))})", batch)
        if ids:
            conn.execute(self._subtract_sql, (counted,))
            # A counter for Prometheus (cyllama_cache_evictions_total): never decremented.
            conn.execute("UPDATE cache_totals SET evictions = evictions + ? WHERE id = 1", (len(ids),))
        return len(ids), freed

    # -- hit bookkeeping (a write-behind buffer) -------------------------------------------------

    def _count_hit(self, key: str, now: float) -> None:
        hits = self._hits
        if hits is not None:
            hits.add((key, now))  # never a write here: db.deferred's thread writes it

    def _flush_hits(self) -> None:
        """Write the waiting hit counts now (waiting the busy timeout); raises on failure."""
        if self._hits is not None and self._settings.enabled:
            self._hits.flush()
