"""Generation statistics: one row per generation, summaries, history and retention.

The ``stats`` table is the seed design's, with ``created_at`` as REAL Unix
seconds.  Summaries over a million rows must stay fast, so an
``AFTER INSERT``/``AFTER DELETE`` trigger keeps ``stats_rollup`` up to date:
per model and per 15-minute UTC bucket it holds the counts and sums every
summary is made of.  A summary reads the rollup for the buckets that lie
wholly inside ``[since, until)`` and the raw rows only for the two partial
buckets at the edges, so its cost grows with the number of buckets, not of
generations.  Fifteen minutes divides every UTC offset in use, so each bucket
falls within one local calendar day and ``by_day`` stays exact in any time
zone.  Latency percentiles are read from an index ordered by
``total_time_ms`` (one ``LIMIT 2 OFFSET k`` walk per percentile).

A cache hit must stay about as cheap as the lookup that found it, so its
row is buffered in memory and written in batches by the database's
write-behind (:mod:`cyllama_db.db.deferred`, the ``stats.hits`` channel);
model paths are stored and filtered in absolute form, as ``complete()`` and
``LLM`` record them.

The store is :class:`StatsStore`, reached as ``db.stats``
(``db.stats.record(...)``, ``db.stats.summary()``, ...); the flat
``db.record_generation`` / ``get_stats_summary`` / ... are the same methods.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from .._time import from_timestamp, parse_duration, time_arg
from .._validate import check_count
from ..db import policy as _policy
from ..db.migrations import execute_script, migration
from ..db.store import Store, db_op
from .keys import recent_model_identity

if TYPE_CHECKING:
    from ..db.deferred import Channel
    from ..db.facade import CyllamaDB

__all__ = [
    "BUCKET_SECONDS",
    "EXPORT_POLICY",
    "LATENCY_BUCKETS",
    "STATS_COLUMNS",
    "StatsStore",
    "model_name_for",
    "process_session_id",
]


#: How the stats tables are exported and imported (``db/policy.py``): rows are
#: appended; the rollup and the totals are rebuilt by triggers from them.
EXPORT_POLICY: tuple[_policy.TablePolicy, ...] = (
    _policy.TablePolicy("stats", merge="append", time_columns=("created_at",)),
    _policy.TablePolicy("stats_rollup", merge="derived"),
    _policy.TablePolicy("stats_totals", merge="derived"),
)

logger = logging.getLogger("cyllama_db.stats")

#: Width of a rollup bucket. Every UTC offset in use is a multiple of 15 minutes.
BUCKET_SECONDS = 900

#: Upper bounds (seconds) of the latency histogram kept per rollup bucket (real
#: generations) and in the running totals (every generation, for Prometheus's
#: ``cyllama_generation_duration_seconds``). Cumulative, as Prometheus's ``le``.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 128.0, 300.0,
)
_HIST_COLUMNS = tuple(f"h{i:02d}" for i in range(len(LATENCY_BUCKETS)))
# A real generation whose speed counts: generated tokens over generation time.
_GEN_OK = "cache_hit = 0 AND generated_tokens IS NOT NULL AND generation_time_ms > 0"

#: The columns of a history row, in table order.
STATS_COLUMNS = (
    "id",
    "session_id",
    "model_path",
    "model_name",
    "prompt_tokens",
    "generated_tokens",
    "total_tokens",
    "prompt_time_ms",
    "generation_time_ms",
    "total_time_ms",
    "tokens_per_second",
    "temperature",
    "max_tokens",
    "finish_reason",
    "cache_hit",
    "created_at",
)

_MAX_AGE_KEY = "cyllama.stats_max_age_seconds"
_PRUNE_EVERY_SECONDS = 3600.0

_TOTALS_COLUMNS = (
    "model_path", "model_name", "cache_hit", "generations", "prompt_tokens", "generated_tokens",
    "gen_tokens", "gen_time_ms", "duration_count", "duration_sum_ms",
)
_TOTALS_SQL = (
    f"SELECT {', '.join(_TOTALS_COLUMNS)}, {', '.join(_HIST_COLUMNS)}"
    " FROM stats_totals ORDER BY model_path, cache_hit"
)

_INSERT_SQL = (
    "INSERT INTO stats (session_id, model_path, model_name, prompt_tokens,"
    " generated_tokens, total_tokens, prompt_time_ms, generation_time_ms,"
    " total_time_ms, tokens_per_second, temperature, max_tokens, finish_reason,"
    " cache_hit, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One generation's row, with its id (``cursor.lastrowid`` does not exist on PostgreSQL).


# metrics.INFERENCE_PROCESS_KEY: the metadata key naming the process that
# recorded the latest real generation ("<pid> <unix seconds>").
_INFERENCE_PROCESS_KEY = "inference_process"


@migration(3, "generation statistics")
def _create_stats_tables(conn: sqlite3.Connection) -> None:
    # idx_stats_model is (model_path, created_at) so a model's history reads
    # newest-first in index order; idx_stats_latency lets the percentiles walk
    # one model's real generations in total_time_ms order without touching
    # the table.
    execute_script(
        conn,
        f"""
        CREATE TABLE IF NOT EXISTS stats (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT,
            model_path TEXT NOT NULL,
            model_name TEXT,
            prompt_tokens INTEGER,
            generated_tokens INTEGER,
            total_tokens INTEGER,
            prompt_time_ms REAL,
            generation_time_ms REAL,
            total_time_ms REAL,
            tokens_per_second REAL,
            temperature REAL,
            max_tokens INTEGER,
            finish_reason TEXT,
            cache_hit INTEGER NOT NULL DEFAULT 0 CHECK (cache_hit IN (0, 1)),
            created_at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_stats_model ON stats(model_path, created_at);
        CREATE INDEX IF NOT EXISTS idx_stats_latency
            ON stats(model_path, cache_hit, total_time_ms, created_at);
        CREATE INDEX IF NOT EXISTS idx_stats_session ON stats(session_id);
        CREATE INDEX IF NOT EXISTS idx_stats_created ON stats(created_at);

        CREATE TABLE IF NOT EXISTS stats_rollup (
            bucket INTEGER NOT NULL,
            model_path TEXT NOT NULL,
            model_name TEXT,
            generations INTEGER NOT NULL,
            cache_hits INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            tps_sum REAL NOT NULL,
            tps_count INTEGER NOT NULL,
            latency_count INTEGER NOT NULL,
            PRIMARY KEY (model_path, bucket)
        ) WITHOUT ROWID;

        CREATE TRIGGER IF NOT EXISTS stats_rollup_insert AFTER INSERT ON stats
        BEGIN
            INSERT INTO stats_rollup
                (bucket, model_path, model_name, generations, cache_hits, tokens, tps_sum,
                 tps_count, latency_count)
            VALUES (
                CAST(NEW.created_at / {BUCKET_SECONDS} AS INTEGER),
                NEW.model_path,
                NEW.model_name,
                1,
                NEW.cache_hit,
                COALESCE(NEW.total_tokens, 0),
                CASE WHEN NEW.cache_hit = 0 THEN COALESCE(NEW.tokens_per_second, 0) ELSE 0 END,
                CASE WHEN NEW.cache_hit = 0 AND NEW.tokens_per_second IS NOT NULL
                     THEN 1 ELSE 0 END,
                CASE WHEN NEW.cache_hit = 0 AND NEW.total_time_ms IS NOT NULL
                     THEN 1 ELSE 0 END
            )
            ON CONFLICT (model_path, bucket) DO UPDATE SET
                model_name = COALESCE(excluded.model_name, model_name),
                generations = generations + excluded.generations,
                cache_hits = cache_hits + excluded.cache_hits,
                tokens = tokens + excluded.tokens,
                tps_sum = tps_sum + excluded.tps_sum,
                tps_count = tps_count + excluded.tps_count,
                latency_count = latency_count + excluded.latency_count;
        END;

        CREATE TRIGGER IF NOT EXISTS stats_rollup_delete AFTER DELETE ON stats
        BEGIN
            UPDATE stats_rollup SET
                generations = generations - 1,
                cache_hits = cache_hits - OLD.cache_hit,
                tokens = tokens - COALESCE(OLD.total_tokens, 0),
                tps_sum = tps_sum - CASE WHEN OLD.cache_hit = 0
                                         THEN COALESCE(OLD.tokens_per_second, 0) ELSE 0 END,
                tps_count = tps_count - CASE WHEN OLD.cache_hit = 0
                                             AND OLD.tokens_per_second IS NOT NULL
                                             THEN 1 ELSE 0 END,
                latency_count = latency_count - CASE WHEN OLD.cache_hit = 0
                                                     AND OLD.total_time_ms IS NOT NULL
                                                     THEN 1 ELSE 0 END
            WHERE bucket = CAST(OLD.created_at / {BUCKET_SECONDS} AS INTEGER)
              AND model_path = OLD.model_path;
            DELETE FROM stats_rollup
            WHERE bucket = CAST(OLD.created_at / {BUCKET_SECONDS} AS INTEGER)
              AND model_path = OLD.model_path AND generations <= 0;
        END;

        CREATE TRIGGER IF NOT EXISTS stats_no_update BEFORE UPDATE ON stats
        BEGIN
            SELECT RAISE(ABORT, 'stats rows are immutable: delete and re-insert instead');
        END;
        """,
    )


# -- migration 8: observability --------------------------------------------------------------
#
# stats_rollup gains what a token-weighted speed and latency percentiles over
# time need (generated tokens and generation time of real generations, the
# sum of their latencies and a cumulative latency histogram), and
# stats_totals keeps running totals per (model, hit) that are never
# decremented: Prometheus counters must not go down when old rows are
# pruned. The triggers are rebuilt with the new columns and the new columns
# are filled from the rows already there.


def _hist_terms(value: str) -> list[str]:
    """One cumulative-bucket term per bound: 1 if ``value`` (ms, may be NULL) is within it."""
    return [f"COALESCE({value} <= {le * 1000!r}, 0)" for le in LATENCY_BUCKETS]


def _miss(expr: str, *, timed: str = "NEW.total_time_ms") -> str:
    return f"CASE WHEN NEW.cache_hit = 0 AND {timed} IS NOT NULL THEN {expr} ELSE 0 END"


def _rollup_triggers() -> str:
    hist = ", ".join(_HIST_COLUMNS)
    miss_hist = ", ".join(
        f"CASE WHEN NEW.cache_hit = 0 THEN {term} ELSE 0 END" for term in _hist_terms("NEW.total_time_ms")
    )
    hist_update = ",\n                ".join(f"{c} = {c} + excluded.{c}" for c in _HIST_COLUMNS)
    old_hist = ",\n                ".join(
        f"{c} = {c} - CASE WHEN OLD.cache_hit = 0 THEN {term} ELSE 0 END"
        for c, term in zip(_HIST_COLUMNS, _hist_terms("OLD.total_time_ms"), strict=True)
    )
    gen_ok = "NEW.cache_hit = 0 AND NEW.generated_tokens IS NOT NULL AND NEW.generation_time_ms > 0"
    old_gen_ok = gen_ok.replace("NEW.", "OLD.")
    return f"""
        CREATE TRIGGER stats_rollup_insert AFTER INSERT ON stats
        BEGIN
            INSERT INTO stats_rollup
                (bucket, model_path, model_name, generations, cache_hits, tokens, tps_sum,
                 tps_count, latency_count, gen_tokens, gen_time_ms, latency_sum_ms, {hist})
            VALUES (
                CAST(NEW.created_at / {BUCKET_SECONDS} AS INTEGER),
                NEW.model_path,
                NEW.model_name,
                1,
                NEW.cache_hit,
                COALESCE(NEW.total_tokens, 0),
                CASE WHEN NEW.cache_hit = 0 THEN COALESCE(NEW.tokens_per_second, 0) ELSE 0 END,
                CASE WHEN NEW.cache_hit = 0 AND NEW.tokens_per_second IS NOT NULL
                     THEN 1 ELSE 0 END,
                CASE WHEN NEW.cache_hit = 0 AND NEW.total_time_ms IS NOT NULL
                     THEN 1 ELSE 0 END,
                CASE WHEN {gen_ok} THEN NEW.generated_tokens ELSE 0 END,
                CASE WHEN {gen_ok} THEN NEW.generation_time_ms ELSE 0 END,
                {_miss("NEW.total_time_ms")},
                {miss_hist}
            )
            ON CONFLICT (model_path, bucket) DO UPDATE SET
                model_name = COALESCE(excluded.model_name, model_name),
                generations = generations + excluded.generations,
                cache_hits = cache_hits + excluded.cache_hits,
                tokens = tokens + excluded.tokens,
                tps_sum = tps_sum + excluded.tps_sum,
                tps_count = tps_count + excluded.tps_count,
                latency_count = latency_count + excluded.latency_count,
                gen_tokens = gen_tokens + excluded.gen_tokens,
                gen_time_ms = gen_time_ms + excluded.gen_time_ms,
                latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
                {hist_update};
        END;

        CREATE TRIGGER stats_rollup_delete AFTER DELETE ON stats
        BEGIN
            UPDATE stats_rollup SET
                generations = generations - 1,
                cache_hits = cache_hits - OLD.cache_hit,
                tokens = tokens - COALESCE(OLD.total_tokens, 0),
                tps_sum = tps_sum - CASE WHEN OLD.cache_hit = 0
                                         THEN COALESCE(OLD.tokens_per_second, 0) ELSE 0 END,
                tps_count = tps_count - CASE WHEN OLD.cache_hit = 0
                                             AND OLD.tokens_per_second IS NOT NULL
                                             THEN 1 ELSE 0 END,
                latency_count = latency_count - CASE WHEN OLD.cache_hit = 0
                                                     AND OLD.total_time_ms IS NOT NULL
                                                     THEN 1 ELSE 0 END,
                gen_tokens = gen_tokens - CASE WHEN {old_gen_ok} THEN OLD.generated_tokens ELSE 0 END,
                gen_time_ms = gen_time_ms - CASE WHEN {old_gen_ok} THEN OLD.generation_time_ms ELSE 0 END,
                latency_sum_ms = latency_sum_ms - CASE WHEN OLD.cache_hit = 0
                                                       THEN COALESCE(OLD.total_time_ms, 0) ELSE 0 END,
                {old_hist}
            WHERE bucket = CAST(OLD.created_at / {BUCKET_SECONDS} AS INTEGER)
              AND model_path = OLD.model_path;
            DELETE FROM stats_rollup
            WHERE bucket = CAST(OLD.created_at / {BUCKET_SECONDS} AS INTEGER)
              AND model_path = OLD.model_path AND generations <= 0;
        END;
    """


def _totals_trigger() -> str:
    hist = ", ".join(_HIST_COLUMNS)
    hist_values = ", ".join(_hist_terms("NEW.total_time_ms"))
    hist_update = ",\n                ".join(f"{c} = {c} + excluded.{c}" for c in _HIST_COLUMNS)
    gen_ok = "NEW.cache_hit = 0 AND NEW.generated_tokens IS NOT NULL AND NEW.generation_time_ms > 0"
    return f"""
        CREATE TRIGGER stats_totals_insert AFTER INSERT ON stats
        BEGIN
            INSERT INTO stats_totals
                (model_path, cache_hit, model_name, generations, prompt_tokens, generated_tokens,
                 gen_tokens, gen_time_ms, duration_count, duration_sum_ms, {hist})
            VALUES (
                NEW.model_path, NEW.cache_hit, NEW.model_name, 1,
                COALESCE(NEW.prompt_tokens, 0), COALESCE(NEW.generated_tokens, 0),
                CASE WHEN {gen_ok} THEN NEW.generated_tokens ELSE 0 END,
                CASE WHEN {gen_ok} THEN NEW.generation_time_ms ELSE 0 END,
                NEW.total_time_ms IS NOT NULL, COALESCE(NEW.total_time_ms, 0),
                {hist_values}
            )
            ON CONFLICT (model_path, cache_hit) DO UPDATE SET
                model_name = COALESCE(excluded.model_name, model_name),
                generations = generations + 1,
                prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                generated_tokens = generated_tokens + excluded.generated_tokens,
                gen_tokens = gen_tokens + excluded.gen_tokens,
                gen_time_ms = gen_time_ms + excluded.gen_time_ms,
                duration_count = duration_count + excluded.duration_count,
                duration_sum_ms = duration_sum_ms + excluded.duration_sum_ms,
                {hist_update};
        END;
    """


def _aggregate_select(group: str, *, misses_only_hist: bool) -> str:
    """SELECT list over ``stats`` rows rebuilding the rollup/totals columns (migration backfill)."""
    gen_ok = "cache_hit = 0 AND generated_tokens IS NOT NULL AND generation_time_ms > 0"
    if misses_only_hist:
        hist = ", ".join(
            f"SUM(CASE WHEN cache_hit = 0 THEN COALESCE(total_time_ms <= {le * 1000!r}, 0) ELSE 0 END)"
            for le in LATENCY_BUCKETS
        )
    else:
        hist = ", ".join(f"SUM(COALESCE(total_time_ms <= {le * 1000!r}, 0))" for le in LATENCY_BUCKETS)
    return (
        f"SELECT {group},"
        f" SUM(CASE WHEN {gen_ok} THEN generated_tokens ELSE 0 END),"
        f" SUM(CASE WHEN {gen_ok} THEN generation_time_ms ELSE 0 END),"
        + (
            " SUM(CASE WHEN cache_hit = 0 THEN COALESCE(total_time_ms, 0) ELSE 0 END),"
            if misses_only_hist
            else " SUM(total_time_ms IS NOT NULL), SUM(COALESCE(total_time_ms, 0)),"
        )
        + f" {hist} FROM stats"
    )


@migration(8, "observability: stats totals, rollup latency histogram, cache evictions, process metrics")
def _add_observability(conn: sqlite3.Connection) -> None:
    hist_defs = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _HIST_COLUMNS)
    hist = ", ".join(_HIST_COLUMNS)
    statements = [
        "ALTER TABLE stats_rollup ADD COLUMN gen_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE stats_rollup ADD COLUMN gen_time_ms REAL NOT NULL DEFAULT 0",
        "ALTER TABLE stats_rollup ADD COLUMN latency_sum_ms REAL NOT NULL DEFAULT 0",
        *(f"ALTER TABLE stats_rollup ADD COLUMN {c} INTEGER NOT NULL DEFAULT 0" for c in _HIST_COLUMNS),
        f"""CREATE TABLE IF NOT EXISTS stats_totals (
            model_path TEXT NOT NULL,
            cache_hit INTEGER NOT NULL,
            model_name TEXT,
            generations INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            generated_tokens INTEGER NOT NULL DEFAULT 0,
            gen_tokens INTEGER NOT NULL DEFAULT 0,
            gen_time_ms REAL NOT NULL DEFAULT 0,
            duration_count INTEGER NOT NULL DEFAULT 0,
            duration_sum_ms REAL NOT NULL DEFAULT 0,
            {hist_defs},
            PRIMARY KEY (model_path, cache_hit)
        ) WITHOUT ROWID""",
        "DROP TRIGGER IF EXISTS stats_rollup_insert",
        "DROP TRIGGER IF EXISTS stats_rollup_delete",
        # Backfill the rollup's new columns from the rows already recorded.
        f"""CREATE TEMP TABLE _rollup_fill (
            bucket INTEGER NOT NULL, model_path TEXT NOT NULL, gen_tokens, gen_time_ms,
            latency_sum_ms, {hist}, PRIMARY KEY (model_path, bucket)) WITHOUT ROWID""",
        "INSERT INTO _rollup_fill "
        + _aggregate_select(
            f"CAST(created_at / {BUCKET_SECONDS} AS INTEGER), model_path", misses_only_hist=True
        )
        + " GROUP BY 1, 2",
        f"""UPDATE stats_rollup SET (gen_tokens, gen_time_ms, latency_sum_ms, {hist}) = (
            SELECT gen_tokens, gen_time_ms, latency_sum_ms, {hist} FROM _rollup_fill f
            WHERE f.model_path = stats_rollup.model_path AND f.bucket = stats_rollup.bucket)
            WHERE EXISTS (SELECT 1 FROM _rollup_fill f
                          WHERE f.model_path = stats_rollup.model_path AND f.bucket = stats_rollup.bucket)""",
        "DROP TABLE _rollup_fill",
        # The running totals start from what is recorded now.
        f"""INSERT INTO stats_totals (model_path, cache_hit, model_name, generations, prompt_tokens,
            generated_tokens, gen_tokens, gen_time_ms, duration_count, duration_sum_ms, {hist}) """
        + _aggregate_select(
            "model_path, cache_hit, MAX(model_name), COUNT(*), SUM(COALESCE(prompt_tokens, 0)),"
            " SUM(COALESCE(generated_tokens, 0))",
            misses_only_hist=False,
        )
        + " GROUP BY model_path, cache_hit",
    ]
    # The cache's part of this version (evictions) is in cache.py, the metrics
    # store's (process columns) in metrics.py.
    for statement in statements:
        conn.execute(statement)
    execute_script(conn, _rollup_triggers())
    execute_script(conn, _totals_trigger())


# -- PostgreSQL ------------------------------------------------------------------------------
#
# The PostgreSQL part of version 3 creates the tables in their current shape
# (version 8's columns and stats_totals included; version 8 has nothing to do
# there): DOUBLE PRECISION times, a BIGINT identity id, and the rollup and
# totals upkeep as plpgsql trigger functions doing what the SQLite triggers
# do. ``trunc(x)::bigint`` is SQLite's ``CAST(x AS INTEGER)`` (a cast to an
# integer rounds on PostgreSQL).


def _pg_bucket(row: str) -> str:
    return f"trunc({row}.created_at / {BUCKET_SECONDS})::bigint"


def _pg_hist_terms(value: str) -> list[str]:
    """:func:`_hist_terms` for PostgreSQL (no boolean-as-integer)."""
    return [f"CASE WHEN {value} <= {le * 1000!r} THEN 1 ELSE 0 END" for le in LATENCY_BUCKETS]


def _pg_trigger_functions() -> str:
    hist = ", ".join(_HIST_COLUMNS)
    gen_ok = "NEW.cache_hit = 0 AND NEW.generated_tokens IS NOT NULL AND NEW.generation_time_ms > 0"
    old_gen_ok = gen_ok.replace("NEW.", "OLD.")
    miss_hist = ", ".join(
        f"CASE WHEN NEW.cache_hit = 0 THEN {term} ELSE 0 END" for term in _pg_hist_terms("NEW.total_time_ms")
    )
    rollup_hist_update = ", ".join(f"{c} = r.{c} + excluded.{c}" for c in _HIST_COLUMNS)
    totals_hist_update = ", ".join(f"{c} = t.{c} + excluded.{c}" for c in _HIST_COLUMNS)
    old_hist = ", ".join(
        f"{c} = {c} - CASE WHEN OLD.cache_hit = 0 THEN {term} ELSE 0 END"
        for c, term in zip(_HIST_COLUMNS, _pg_hist_terms("OLD.total_time_ms"), strict=True)
    )
    return f"""
        CREATE OR REPLACE FUNCTION stats_after_insert() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            INSERT INTO stats_rollup AS r
                (bucket, model_path, model_name, generations, cache_hits, tokens, tps_sum,
                 tps_count, latency_count, gen_tokens, gen_time_ms, latency_sum_ms, {hist})
            VALUES (
                {_pg_bucket("NEW")},
                NEW.model_path,
                NEW.model_name,
                1,
                NEW.cache_hit,
                COALESCE(NEW.total_tokens, 0),
                CASE WHEN NEW.cache_hit = 0 THEN COALESCE(NEW.tokens_per_second, 0) ELSE 0 END,
                CASE WHEN NEW.cache_hit = 0 AND NEW.tokens_per_second IS NOT NULL THEN 1 ELSE 0 END,
                CASE WHEN NEW.cache_hit = 0 AND NEW.total_time_ms IS NOT NULL THEN 1 ELSE 0 END,
                CASE WHEN {gen_ok} THEN NEW.generated_tokens ELSE 0 END,
                CASE WHEN {gen_ok} THEN NEW.generation_time_ms ELSE 0 END,
                {_miss("NEW.total_time_ms")},
                {miss_hist}
            )
            ON CONFLICT (model_path, bucket) DO UPDATE SET
                model_name = COALESCE(excluded.model_name, r.model_name),
                generations = r.generations + excluded.generations,
                cache_hits = r.cache_hits + excluded.cache_hits,
                tokens = r.tokens + excluded.tokens,
                tps_sum = r.tps_sum + excluded.tps_sum,
                tps_count = r.tps_count + excluded.tps_count,
                latency_count = r.latency_count + excluded.latency_count,
                gen_tokens = r.gen_tokens + excluded.gen_tokens,
                gen_time_ms = r.gen_time_ms + excluded.gen_time_ms,
                latency_sum_ms = r.latency_sum_ms + excluded.latency_sum_ms,
                {rollup_hist_update};
            INSERT INTO stats_totals AS t
                (model_path, cache_hit, model_name, generations, prompt_tokens, generated_tokens,
                 gen_tokens, gen_time_ms, duration_count, duration_sum_ms, {hist})
            VALUES (
                NEW.model_path, NEW.cache_hit, NEW.model_name, 1,
                COALESCE(NEW.prompt_tokens, 0), COALESCE(NEW.generated_tokens, 0),
                CASE WHEN {gen_ok} THEN NEW.generated_tokens ELSE 0 END,
                CASE WHEN {gen_ok} THEN NEW.generation_time_ms ELSE 0 END,
                CASE WHEN NEW.total_time_ms IS NOT NULL THEN 1 ELSE 0 END, COALESCE(NEW.total_time_ms, 0),
                {", ".join(_pg_hist_terms("NEW.total_time_ms"))}
            )
            ON CONFLICT (model_path, cache_hit) DO UPDATE SET
                model_name = COALESCE(excluded.model_name, t.model_name),
                generations = t.generations + 1,
                prompt_tokens = t.prompt_tokens + excluded.prompt_tokens,
                generated_tokens = t.generated_tokens + excluded.generated_tokens,
                gen_tokens = t.gen_tokens + excluded.gen_tokens,
                gen_time_ms = t.gen_time_ms + excluded.gen_time_ms,
                duration_count = t.duration_count + excluded.duration_count,
                duration_sum_ms = t.duration_sum_ms + excluded.duration_sum_ms,
                {totals_hist_update};
            RETURN NULL;
        END
        $body$;

        CREATE OR REPLACE FUNCTION stats_after_delete() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            UPDATE stats_rollup SET
                generations = generations - 1,
                cache_hits = cache_hits - OLD.cache_hit,
                tokens = tokens - COALESCE(OLD.total_tokens, 0),
                tps_sum = tps_sum - CASE WHEN OLD.cache_hit = 0
                                         THEN COALESCE(OLD.tokens_per_second, 0) ELSE 0 END,
                tps_count = tps_count - CASE WHEN OLD.cache_hit = 0
                                             AND OLD.tokens_per_second IS NOT NULL THEN 1 ELSE 0 END,
                latency_count = latency_count - CASE WHEN OLD.cache_hit = 0
                                                     AND OLD.total_time_ms IS NOT NULL THEN 1 ELSE 0 END,
                gen_tokens = gen_tokens - CASE WHEN {old_gen_ok} THEN OLD.generated_tokens ELSE 0 END,
                gen_time_ms = gen_time_ms - CASE WHEN {old_gen_ok} THEN OLD.generation_time_ms ELSE 0 END,
                latency_sum_ms = latency_sum_ms - CASE WHEN OLD.cache_hit = 0
                                                       THEN COALESCE(OLD.total_time_ms, 0) ELSE 0 END,
                {old_hist}
            WHERE bucket = {_pg_bucket("OLD")} AND model_path = OLD.model_path;
            DELETE FROM stats_rollup
            WHERE bucket = {_pg_bucket("OLD")} AND model_path = OLD.model_path AND generations <= 0;
            RETURN NULL;
        END
        $body$;

        CREATE OR REPLACE FUNCTION stats_no_update() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            RAISE EXCEPTION 'stats rows are immutable: delete and re-insert instead'
                USING ERRCODE = 'integrity_constraint_violation';
        END
        $body$;

        DROP TRIGGER IF EXISTS stats_rollup_insert ON stats;
        CREATE TRIGGER stats_rollup_insert AFTER INSERT ON stats
            FOR EACH ROW EXECUTE FUNCTION stats_after_insert();
        DROP TRIGGER IF EXISTS stats_rollup_delete ON stats;
        CREATE TRIGGER stats_rollup_delete AFTER DELETE ON stats
            FOR EACH ROW EXECUTE FUNCTION stats_after_delete();
        DROP TRIGGER IF EXISTS stats_no_update ON stats;
        CREATE TRIGGER stats_no_update BEFORE UPDATE ON stats
            FOR EACH ROW EXECUTE FUNCTION stats_no_update();
    """


@migration(3, "generation statistics", engine="postgresql")
def _create_stats_tables_pg(conn: Any) -> None:
    hist_defs = ", ".join(f"{c} BIGINT NOT NULL DEFAULT 0" for c in _HIST_COLUMNS)
    conn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS stats (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            session_id TEXT,
            model_path TEXT NOT NULL,
            model_name TEXT,
            prompt_tokens BIGINT,
            generated_tokens BIGINT,
            total_tokens BIGINT,
            prompt_time_ms DOUBLE PRECISION,
            generation_time_ms DOUBLE PRECISION,
            total_time_ms DOUBLE PRECISION,
            tokens_per_second DOUBLE PRECISION,
            temperature DOUBLE PRECISION,
            max_tokens BIGINT,
            finish_reason TEXT,
            cache_hit BIGINT NOT NULL DEFAULT 0 CHECK (cache_hit IN (0, 1)),
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_stats_model ON stats(model_path, created_at);
        CREATE INDEX IF NOT EXISTS idx_stats_latency
            ON stats(model_path, cache_hit, total_time_ms, created_at);
        CREATE INDEX IF NOT EXISTS idx_stats_session ON stats(session_id);
        CREATE INDEX IF NOT EXISTS idx_stats_created ON stats(created_at);

        CREATE TABLE IF NOT EXISTS stats_rollup (
            bucket BIGINT NOT NULL,
            model_path TEXT NOT NULL,
            model_name TEXT,
            generations BIGINT NOT NULL,
            cache_hits BIGINT NOT NULL,
            tokens BIGINT NOT NULL,
            tps_sum DOUBLE PRECISION NOT NULL,
            tps_count BIGINT NOT NULL,
            latency_count BIGINT NOT NULL,
            gen_tokens BIGINT NOT NULL DEFAULT 0,
            gen_time_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            latency_sum_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            {hist_defs},
            PRIMARY KEY (model_path, bucket)
        );

        CREATE TABLE IF NOT EXISTS stats_totals (
            model_path TEXT NOT NULL,
            cache_hit BIGINT NOT NULL,
            model_name TEXT,
            generations BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            generated_tokens BIGINT NOT NULL DEFAULT 0,
            gen_tokens BIGINT NOT NULL DEFAULT 0,
            gen_time_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            duration_count BIGINT NOT NULL DEFAULT 0,
            duration_sum_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            {hist_defs},
            PRIMARY KEY (model_path, cache_hit)
        );
        """
        + _pg_trigger_functions()
    )


# -- session ids -----------------------------------------------------------------------------

_process_session = os.urandom(16).hex()


def _new_process_session() -> None:
    global _process_session
    _process_session = os.urandom(16).hex()


# A forked worker is a different process: it gets its own session.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process_session)


def process_session_id() -> str:
    """The session id this process's generations are recorded under by default."""
    return _process_session


# -- buffered cache hits ---------------------------------------------------------------------
#
# A cache hit must cost about as much as the SELECT that found it, so its
# stats row is not written by the caller: it waits in the database's
# write-behind channel "stats.hits" (db/deferred.py: one background thread
# writes waiting rows in batches, one transaction per batch, and waits only
# briefly for another connection's write lock). Real generations (misses)
# take seconds anyway: they write their row at once, together with any
# waiting hits.


_NO_HITS: contextlib.nullcontext[list[Any]] = contextlib.nullcontext([])


def _write_hit_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """The ``stats.hits`` channel's flush: insert the buffered rows (inside its transaction)."""
    conn.executemany(_INSERT_SQL, rows)


# -- model names -----------------------------------------------------------------------------

_name_cache: dict[tuple[str, str], str] = {}
_name_lock = threading.Lock()
_NAME_CACHE_MAX = 256


def model_name_for(model_path: str | os.PathLike[str]) -> str:
    """``general.name`` from the model's GGUF metadata, else the file's basename.

    Never raises: a missing, unreadable or malformed file gives the basename.
    Cached per (path, model identity): the identity fingerprints the GGUF
    header that holds the name, so a changed file is re-read, and the
    identity's ``stat()`` is shared with the cache lookup just made for the
    same generation.
    """
    path = os.fspath(model_path)
    fallback = os.path.basename(path.rstrip("/\\")) or path
    identity = recent_model_identity(path)
    if "@" not in identity:  # no such file
        return fallback
    key = (path, identity)
    with _name_lock:
        cached = _name_cache.get(key)
    if cached is not None:
        return cached
    name = fallback
    try:
        from .gguf import read_gguf_header

        value = read_gguf_header(path).kv.get("general.name")
        if isinstance(value, str) and value.strip():
            name = value.strip()
    except Exception as exc:  # any unreadable file: the basename will do
        logger.debug("no GGUF name for %s (%s); using the file name", path, exc)
    with _name_lock:
        if len(_name_cache) >= _NAME_CACHE_MAX:
            _name_cache.clear()
        _name_cache[key] = name
    return name


# -- reading Response / GenerationConfig duck-types ------------------------------------------


# Whether each type seen is a Mapping: the ABC check costs more than the
# lookup, and record_generation reads a dozen fields per call.
_IS_MAPPING: dict[type, bool] = {dict: True}


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    kind = type(obj)
    is_mapping = _IS_MAPPING.get(kind)
    if is_mapping is None:
        is_mapping = isinstance(obj, Mapping)
        if len(_IS_MAPPING) < 1024:
            _IS_MAPPING[kind] = is_mapping
    return obj.get(name) if is_mapping else getattr(obj, name, None)


def _is_mapping(obj: Any) -> bool:
    kind = type(obj)
    is_mapping = _IS_MAPPING.get(kind)
    if is_mapping is None:
        is_mapping = isinstance(obj, Mapping)
        if len(_IS_MAPPING) < 1024:
            _IS_MAPPING[kind] = is_mapping
    return is_mapping


# What record_generation reads from a Response (or a mapping / object like one) ...
_RESPONSE_FIELDS = ("stats", "finish_reason", "cache_hit", "text", "model_path")
# ... and what marks llama-cpp-python's (OpenAI-shaped) completion and chat-completion dicts.
_OPENAI_FIELDS = ("usage", "choices", "object")
_OPENAI_OBJECTS = ("text_completion", "chat.completion")


def _is_openai(response: Any) -> bool:
    """Whether ``response`` is an OpenAI-shaped completion (True) or Response-like (False).

    ``TypeError`` for something that is neither, which would otherwise be
    stored as a row of NULLs.
    """
    if _is_mapping(response):
        if "stats" in response:
            return False
        if any(name in response for name in _OPENAI_FIELDS):
            return True
        if any(name in response for name in _RESPONSE_FIELDS):
            return False
        found = ", ".join(repr(k) for k in list(response)[:8]) or "none"
        what = f"a mapping with keys {found}"
    else:
        if hasattr(response, "stats"):
            return False
        if hasattr(response, "usage") or hasattr(response, "choices"):
            return True
        if any(hasattr(response, name) for name in _RESPONSE_FIELDS):
            return False
        what = f"a {type(response).__name__} with none of those attributes"
    raise TypeError(
        "record_generation: response must be a Response (or a mapping or object with its "
        "fields: stats, finish_reason, cache_hit) or a completion / chat-completion dict as "
        "llama-cpp-python's create_completion() and create_chat_completion() return it (with "
        f"'usage' and 'choices'); got {what}"
    )


def _token_count(value: Any, field: str) -> int:
    """A token count from an OpenAI-shaped ``usage``: a non-negative int."""
    if value is None:
        raise ValueError(
            f"record_generation: {field} is missing; the usage of a completion dict needs "
            "prompt_tokens and completion_tokens (a stream chunk has none: record the result "
            "of the whole call)"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"record_generation: {field} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"record_generation: {field} must not be negative, got {value}")
    return int(value)


def _read_openai(response: Any) -> tuple[int, int, int, str | None, str | None, bool]:
    """``(prompt, completion, total tokens, finish_reason, model, cache_hit)`` of an
    OpenAI-shaped completion or chat-completion (a dict, or an object with those attributes)."""
    kind = _field(response, "object")
    if kind is not None and kind not in _OPENAI_OBJECTS:
        if isinstance(kind, str) and kind.endswith(".chunk"):
            raise ValueError(
                f"record_generation: response is a stream chunk (object {kind!r}), which has no "
                "token counts: record the whole generation once the stream ends"
            )
        raise ValueError(
            f"record_generation: response['object'] is {kind!r}; expected 'text_completion' or "
            "'chat.completion' (llama-cpp-python's completion and chat-completion dicts)"
        )
    usage = _field(response, "usage")
    if usage is None:
        raise ValueError(
            "record_generation: the completion dict has no 'usage' (its token counts): pass what "
            "create_completion() / create_chat_completion() returned without stream=True"
        )
    _check_record_object(usage, "response['usage']", optional=False)
    prompt = _token_count(_field(usage, "prompt_tokens"), "usage.prompt_tokens")
    completion = _token_count(_field(usage, "completion_tokens"), "usage.completion_tokens")
    total_value = _field(usage, "total_tokens")
    total = prompt + completion if total_value is None else _token_count(total_value, "usage.total_tokens")
    choices = _field(response, "choices")
    if isinstance(choices, (str, bytes)) or not isinstance(choices, (list, tuple)) or not choices:
        raise ValueError(
            "record_generation: response['choices'] must be a non-empty list (its first "
            f"choice's finish_reason is recorded), got {choices!r:.60}"
        )
    _check_record_object(choices[0], "response['choices'][0]", optional=False)
    finish = _field(choices[0], "finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise TypeError(
            f"record_generation: choices[0].finish_reason must be a str or None, got {type(finish).__name__}"
        )
    model = _field(response, "model")
    if model is not None and not isinstance(model, str):
        raise TypeError(f"record_generation: response['model'] must be a str, got {type(model).__name__}")
    hit = False
    marker = _field(response, "cyllama_db")
    if marker is not None:
        if not _is_mapping(marker):
            raise TypeError(
                f"record_generation: response['cyllama_db'] must be a dict like {{'cache_hit': True}}, "
                f"got {type(marker).__name__}"
            )
        hit = _check_flag(marker.get("cache_hit", False), "response['cyllama_db']['cache_hit']")
    return prompt, completion, total, finish, model, hit


def _number(value: Any, field: str, *, integer: bool = False) -> float | int | None:
    """A finite number (or None); ``TypeError`` naming ``field`` for anything else.

    numpy scalars and other ``numbers.Real`` are accepted; NaN and infinity
    become None, since one of them would poison every average.
    """
    if value is None:
        return None
    kind = type(value)
    if kind is int:  # the common cases, without the ABC checks below
        return value if integer else float(value)
    if kind is float and math.isfinite(value):
        return int(value) if integer else value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"record_generation: {field} must be a number or None, got {type(value).__name__}"
        )
    if integer and isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        return None
    return int(number) if integer else number


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    # Enums (e.g. a FinishReason) and the like: their value, else their text.
    inner = getattr(value, "value", None)
    return inner if isinstance(inner, str) else str(value)


# os.path.abspath() of absolute paths (a relative one depends on the working
# directory, so it is not remembered): it is on every record's path.
_absolute_paths: dict[str, str] = {}


def _check_model_path(model_path: Any) -> str:
    """The absolute form of ``model_path`` (``~`` expanded), as rows store it.

    ``complete()`` and ``LLM`` record absolute paths, so a relative path or
    ``~`` given to a filter must be made absolute to match them.
    """
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a str or os.PathLike, got {type(model_path).__name__}")
    path = os.fspath(model_path)
    if not isinstance(path, str) or not path:
        raise ValueError("model_path must be a non-empty path")
    known = _absolute_paths.get(path)
    if known is not None:
        return known
    absolute = os.path.abspath(os.path.expanduser(path))
    if os.path.isabs(path):
        if len(_absolute_paths) >= 256:
            _absolute_paths.clear()
        _absolute_paths[path] = absolute
    return absolute


def _check_flag(value: Any, name: str) -> bool:
    # bool(x) would count any non-empty string ("no"!) as a hit.
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):
        return bool(value)  # numpy's bool is not a numbers.Integral
    raise TypeError(f"record_generation: {name} must be a bool, got {type(value).__name__}")


def _check_record_object(value: Any, name: str, *, optional: bool) -> None:
    """``response``/``stats``/``config`` are mappings or objects with attributes."""
    if value is None:
        if optional:
            return
    elif type(value) is dict or not isinstance(
        value, (str, bytes, bytearray, numbers.Number, list, tuple, set, frozenset)
    ):
        return
    allowed = "a mapping, an object with its attributes" + (" or None" if optional else "")
    raise TypeError(f"record_generation: {name} must be {allowed}, got {type(value).__name__}")


def _percentile_index(n: int, q: float) -> tuple[int, float]:
    """Position of quantile ``q`` among ``n`` sorted values: (lower index, fraction)."""
    pos = q * (n - 1)
    low = math.floor(pos)
    return low, pos - low


def _exact_percentile(values: list[float], q: float) -> float | None:
    """Quantile ``q`` of sorted ``values`` (linear interpolation); None if empty."""
    if not values:
        return None
    index, frac = _percentile_index(len(values), q)
    upper = values[min(index + 1, len(values) - 1)]
    return values[index] + (upper - values[index]) * frac


def _histogram_percentile(count: int, cumulative: list[int], q: float) -> float | None:
    """Quantile ``q`` (ms) from cumulative counts at :data:`LATENCY_BUCKETS`, interpolated
    linearly inside the bucket that holds it (Prometheus's ``histogram_quantile``)."""
    if not count:
        return None
    rank = q * count
    lower_bound, lower_count = 0.0, 0
    for le, cum in zip(LATENCY_BUCKETS, cumulative, strict=True):
        if cum >= rank and cum > lower_count:
            return (lower_bound + (le - lower_bound) * (rank - lower_count) / (cum - lower_count)) * 1000.0
        lower_bound, lower_count = le, cum
    return LATENCY_BUCKETS[-1] * 1000.0  # beyond the last bound: its value, as Prometheus does


def _empty_summary() -> dict[str, Any]:
    return {
        "total_generations": 0,
        "total_tokens": 0,
        "cache_hits": 0,
        "cache_hit_rate": 0.0,
        "avg_tokens_per_second": 0.0,
        "tokens_per_second": 0.0,
        "by_model": {},
        "by_day": [],
    }


class _Agg:
    """Running totals of one group (a model, a day, or everything)."""

    __slots__ = (
        "gen_time_ms", "gen_tokens", "generations", "hits", "latency_count", "tokens", "tps_count", "tps_sum",
    )

    def __init__(self) -> None:
        self.generations = 0
        self.hits = 0
        self.tokens = 0
        self.tps_sum = 0.0
        self.tps_count = 0
        self.latency_count = 0
        self.gen_tokens = 0
        self.gen_time_ms = 0.0

    def add(
        self,
        generations: int,
        hits: int,
        tokens: int,
        tps_sum: float,
        tps_count: int,
        latency_count: int = 0,
        gen_tokens: int | None = 0,
        gen_time_ms: float | None = 0.0,
    ) -> None:
        self.generations += generations
        self.hits += hits
        self.tokens += tokens
        self.tps_sum += tps_sum
        self.tps_count += tps_count
        self.latency_count += latency_count
        self.gen_tokens += gen_tokens or 0
        self.gen_time_ms += gen_time_ms or 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "generations": self.generations,
            "tokens": self.tokens,
            "cache_hits": self.hits,
            "cache_hit_rate": self.hits / self.generations if self.generations else 0.0,
            "avg_tokens_per_second": self.tps_sum / self.tps_count if self.tps_count else 0.0,
            "tokens_per_second": (
                self.gen_tokens / (self.gen_time_ms / 1000.0) if self.gen_time_ms > 0 else 0.0
            ),
        }


class StatsStore(Store):
    """Generation statistics: ``db.stats.record``, ``summary``, ``series``, ``history``, ``prune``.

    Also ``models`` and ``usage`` (what is recorded per model),
    :attr:`session_id`, :attr:`max_age` (retention) and :meth:`flush` (write
    the buffered cache-hit rows). The flat ``db.record_generation`` /
    ``get_stats_summary`` / ``get_stats_series`` / ``get_generation_history``
    / ``prune_stats`` / ``recorded_models`` / ``model_usage`` and the
    ``db.session_id`` / ``db.stats_max_age`` properties are the same.
    """

    name = "stats"
    tables = ("stats", "stats_rollup", "stats_totals")
    export_policy = EXPORT_POLICY

    def __init__(self, db: CyllamaDB) -> None:
        super().__init__(db)
        self._session_override: str | None = None
        self._next_prune = 0.0
        self._prune_due = False  # retention is due: applied after the next background write
        self._hits: Channel | None = None
        self._process_noted = 0
        # The engine's statements where they differ from SQLite's (chosen at open()).
        self._record_sql = _INSERT_SQL
        self._returning = False  # PostgreSQL: the new id comes from RETURNING, not lastrowid
        self._latency_table = "stats INDEXED BY idx_stats_latency"

    def counts(self, conn: sqlite3.Connection) -> dict[str, Any]:
        return {"stats_entries": conn.execute("SELECT COUNT(*) FROM stats").fetchone()[0]}

    # -- lifecycle hooks -------------------------------------------------------------------

    def open(self) -> None:
        if self.backend.name != "sqlite":
            self._record_sql = _INSERT_SQL + " RETURNING id"
            self._returning = True
            self._latency_table = "stats"  # INDEXED BY is SQLite's; the planner picks the index
        self._hits = self.db.deferred.channel(
            "stats.hits",
            _write_hit_rows,
            logger=logger,
            what="cache-hit statistics rows",
            after_write=self._after_hits_written,
        )

    def close(self) -> None:
        """Write the buffered hit rows (waiting the busy timeout) and take no more; never raises."""
        if self._hits is not None:
            self._hits.close()

    def _after_hits_written(self) -> None:
        """After the background thread wrote hit rows: the retention pass, if one is due."""
        if self._prune_due:
            self._prune_due = False
            try:
                self._apply_max_age()
            except Exception as exc:  # housekeeping: never fatal to the writer
                logger.warning("could not prune old generation records: %s", exc)

    def flush(self) -> None:
        """Write the buffered cache-hit rows (before a read that must see them, a vacuum...).

        Waits up to the busy timeout for the write lock, as any write does;
        if the rows still cannot be written they stay buffered (a WARNING)
        and the read goes on without them. Inside ``pool.no_wait()`` (a
        read's best-effort flush) it neither waits nor warns, and raises.
        """
        hits = self._hits
        if hits is None or not self.enabled:
            return
        if not self.pool.waits():  # a read's best-effort flush: no wait, no warning
            hits.flush(None, lock_timeout=0)
            return
        # Even with no rows waiting: the writer thread may hold some it is
        # writing right now, and the flush lock waits for that write.
        try:
            done = hits.flush(None, lock_timeout=self.pool.busy_timeout)
        except Exception as exc:
            logger.warning("could not write buffered cache-hit statistics yet: %s", exc)
            return
        if not done:
            logger.warning("could not write buffered cache-hit statistics yet: another write is slow")

    # -- session ---------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The session new generations are recorded under.

        Defaults to one random id per process (a forked child gets a new
        one). Assign a string to group generations your own way; assign
        ``None`` to go back to the process's id.
        """
        return self._session_override or process_session_id()

    @session_id.setter
    def session_id(self, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            raise TypeError(f"session_id must be a non-empty str or None, got {value!r}")
        self._session_override = value

    # -- retention -------------------------------------------------------------------------

    @property
    def max_age(self) -> timedelta | None:
        """How long generation rows are kept (``None``: forever, the default).

        Stored in the database's config (``db.config``, key
        ``cyllama.stats_max_age_seconds``), so it applies to every process
        using the file. Set it to a ``timedelta``, a number of seconds or a
        duration such as ``"90d"``; older rows are pruned at once and then
        at most once an hour while generations are being recorded.
        """
        if not self.enabled:
            return None
        value = self.db.config.get(_MAX_AGE_KEY)
        if value is None or isinstance(value, bool):
            return None
        try:
            return timedelta(seconds=float(value))
        except (TypeError, ValueError, OverflowError):
            return None

    @max_age.setter
    def max_age(self, value: timedelta | float | str | None) -> None:
        # The setting and the prune are separate writes, as before: the
        # setting is one upsert (db.config.set), and the prune reads it back
        # like every later retention pass does.
        if value is None:
            if self.enabled:
                self.db.config.delete(_MAX_AGE_KEY)
            return
        try:
            age = parse_duration(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"stats_max_age={value!r} is not a duration: use a timedelta, seconds or e.g. '90d'"
            ) from exc
        if age.total_seconds() <= 0:
            raise ValueError(f"stats_max_age={value!r} must be positive (or None to keep forever)")
        if not self.enabled:
            return
        self.db.config.set(_MAX_AGE_KEY, float(age.total_seconds()))
        self._next_prune = 0.0
        self._apply_max_age()

    def _apply_max_age(self) -> None:
        now = self.clock()
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_EVERY_SECONDS
        age = self.max_age
        if age is not None:
            removed = self.prune(older_than=age)
            if removed:
                logger.info("pruned %d generation records older than %s", removed, age)

    # -- writing ---------------------------------------------------------------------------

    @db_op()
    def record(
        self,
        model_path: str | os.PathLike[str] | None,
        response: Any,
        config: Any = None,
        cache_hit: bool = False,
        *,
        session_id: str | None = None,
    ) -> int | None:
        """Record one generation (or cache hit); return the row id of a real generation.

        Args:
            model_path: the model that produced the response (stored as an
                absolute path, ``~`` expanded, as ``complete()`` and ``LLM``
                pass it). ``None`` with an OpenAI-shaped dict: its ``model``
                (llama-cpp-python puts the ``Llama``'s ``model_path`` there).
            response: a ``Response`` (or a mapping / any object with the same
                attributes): ``finish_reason``, ``cache_hit`` and ``stats``
                (``prompt_tokens``, ``generated_tokens``, ``total_tokens``,
                ``prompt_time_ms``, ``generation_time_ms``, ``total_time_ms``,
                ``tokens_per_second``; ``stats`` may be ``None``). Or what
                llama-cpp-python's ``create_completion()`` /
                ``create_chat_completion()`` return (an OpenAI-shaped dict,
                object ``text_completion`` / ``chat.completion``): its
                ``usage`` token counts, ``choices[0].finish_reason`` and
                ``model`` are read (the times it does not have stay NULL),
                and a top-level ``"cyllama_db": {"cache_hit": True}`` marks a
                cache hit. Anything else, a stream chunk, or usage without
                int ``prompt_tokens``/``completion_tokens``, is a
                ``TypeError``/``ValueError`` naming what was expected.
            config: the ``GenerationConfig`` (or a mapping) whose
                ``temperature`` and ``max_tokens`` are stored; may be ``None``.
            cache_hit: a bool: the response came from the cache (its times
                are the hit's own). ``response.cache_hit`` being true counts too.
            session_id: group under this session instead of :attr:`session_id`.

        ``model_name`` is the model's GGUF ``general.name`` (the file name if
        it cannot be read).

        A cache hit is not written at once: its row is buffered and written
        in a batch (every :data:`~cyllama_db.db.deferred.FLUSH_ITEMS` rows or
        :data:`~cyllama_db.db.deferred.FLUSH_SECONDS` seconds, by a background thread; before
        this database reads or prunes the table; on ``close()``; at exit),
        so a hit costs no write transaction and never waits for another
        connection's lock. For a hit the result is therefore ``None``; for a
        real generation it is the new row's id. ``None`` as well when the
        database is disabled.
        """
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise TypeError(f"session_id must be a non-empty str or None, got {session_id!r}")
        _check_record_object(response, "response", optional=False)
        _check_record_object(config, "config", optional=True)
        hit = _check_flag(cache_hit, "cache_hit")
        timings: tuple[float | int | None, ...]
        prompt_tokens: float | int | None
        generated: float | int | None
        total_tokens: float | int | None
        if _is_openai(response):
            prompt_tokens, generated, total_tokens, finish, model, marked = _read_openai(response)
            hit = marked or hit
            if model_path is None and model:
                model_path = model
            timings = (None, None, None, None)  # llama-cpp-python's dicts have none
        else:
            stats = _field(response, "stats")
            _check_record_object(stats, "response.stats", optional=True)
            response_hit = _field(response, "cache_hit")
            if response_hit is not None:
                hit = _check_flag(response_hit, "response.cache_hit") or hit
            total_tokens = _number(_field(stats, "total_tokens"), "stats.total_tokens", integer=True)
            prompt_tokens = _number(_field(stats, "prompt_tokens"), "stats.prompt_tokens", integer=True)
            generated = _number(
                _field(stats, "generated_tokens"), "stats.generated_tokens", integer=True
            )
            if total_tokens is None and prompt_tokens is not None and generated is not None:
                total_tokens = prompt_tokens + generated
            timings = (
                _number(_field(stats, "prompt_time_ms"), "stats.prompt_time_ms"),
                _number(_field(stats, "generation_time_ms"), "stats.generation_time_ms"),
                _number(_field(stats, "total_time_ms"), "stats.total_time_ms"),
                _number(_field(stats, "tokens_per_second"), "stats.tokens_per_second"),
            )
            finish = _text(_field(response, "finish_reason"))
        if model_path is None:
            raise TypeError(
                "record_generation: model_path must be a str or os.PathLike (None only for a "
                "completion dict that names its 'model')"
            )
        path = _check_model_path(model_path)
        row = (
            session_id or self.session_id,
            path,
            model_name_for(path),
            prompt_tokens,
            generated,
            total_tokens,
            *timings,
            _number(_field(config, "temperature"), "config.temperature"),
            _number(_field(config, "max_tokens"), "config.max_tokens", integer=True),
            finish,
            1 if hit else 0,
            float(self.clock()),
        )
        if self.settings.opentelemetry:
            from ..otel import emit_generation

            emit_generation(
                model_path=path, model_name=row[2], kind=_field(response, "kind") or _field(response, "object"),
                input_tokens=prompt_tokens, output_tokens=generated, finish_reason=finish,
                cache_hit=hit, duration_ms=timings[2], config=config,
            )
        prune_due = row[-1] >= self._next_prune
        hits = self._hits
        if hit and hits is not None:
            if prune_due:
                self._prune_due = True  # applied after the next background write
            hits.add(row)
            return None

        # A real generation: write it now, with any hits waiting (unless a
        # flush already has them; the writer will get them then).
        note = self._process_noted != os.getpid()
        with hits.taking() if hits is not None else _NO_HITS as pending, self.pool.transaction() as conn:
            if pending and hits is not None:
                hits.write_in(conn, pending)
            cursor = conn.execute(self._record_sql, row)
            row_id = cursor.fetchone()[0] if self._returning else cursor.lastrowid
            if note:
                # Which process generates: the metrics sampler (maybe in
                # another process) reports its RSS and CPU. Joins this
                # transaction (a nested transaction joins the outer one).
                self.db.metadata.set(_INFERENCE_PROCESS_KEY, f"{os.getpid()} {row[-1]!r}")
        if note:
            self._process_noted = os.getpid()
        if prune_due:
            try:
                self._apply_max_age()
            except Exception as exc:  # retention is housekeeping; never fail a record for it
                logger.warning("could not prune old generation records: %s", exc)
        return row_id

    # -- reading ---------------------------------------------------------------------------

    def _window(self, since: Any, until: Any) -> tuple[float, float]:
        now = self.clock()
        low = 0.0 if since is None else max(0.0, time_arg(since, "since", now))
        high = math.inf if until is None else time_arg(until, "until", now)
        return low, high

    @db_op(empty=list)
    def models(self) -> list[tuple[str, str | None]]:
        """Every model with recorded generations: ``(model_path, model_name)`` pairs."""
        self._flush_quietly()
        with self.pool.read() as conn:
            return [
                (str(path), name)
                for path, name in conn.execute(
                    "SELECT model_path, MAX(model_name) FROM stats_rollup GROUP BY model_path"
                )
            ]

    @db_op(empty=lambda: (0, None))
    def usage(self, model_paths: Iterable[str]) -> tuple[int, float | None]:
        """``(generations, last one's Unix time)`` recorded for these model paths (hits included)."""
        if isinstance(model_paths, (str, bytes, os.PathLike)) or not hasattr(model_paths, "__iter__"):
            raise TypeError(f"model_paths must be an iterable of paths, got {type(model_paths).__name__}")
        paths = sorted({_check_model_path(p) for p in model_paths})
        if not paths:
            return 0, None
        self._flush_quietly()
        marks = ", ".join("?" * len(paths))
        with self.pool.read() as conn:
            count = conn.execute(
                f"SELECT COALESCE(SUM(generations), 0) FROM stats_rollup WHERE model_path IN ({marks})", paths
            ).fetchone()[0]
            last = conn.execute(f"SELECT MAX(created_at) FROM stats WHERE model_path IN ({marks})", paths).fetchone()[0]
        return int(count), None if last is None else float(last)

    @db_op(empty=int)
    def count(self, since: datetime | timedelta | float | str | None = None) -> int:
        """Generation rows recorded at or after ``since`` (every row: ``None``), hits included.

        A cheap indexed count that writes nothing: cache-hit rows still
        buffered (for up to :data:`~cyllama_db.db.deferred.FLUSH_SECONDS`)
        are not counted yet. The metrics sampler's ``requests_per_minute``.
        """
        if since is None:
            with self.pool.read() as conn:
                return int(conn.execute("SELECT COUNT(*) FROM stats").fetchone()[0])
        low = time_arg(since, "since", self.clock())
        with self.pool.read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM stats WHERE created_at >= ?", (low,)).fetchone()[0])

    @db_op(empty=list)
    def totals(self) -> list[dict[str, Any]]:
        """Running totals per ``(model_path, cache_hit)`` since the file was made (buffered hits written first).

        Kept by a trigger on every insert and never decremented, so pruning
        old rows does not make them go down (what Prometheus counters need;
        :mod:`cyllama_db.prometheus` exposes them). Each dict: ``model_path``,
        ``model_name``, ``cache_hit`` (bool), ``generations``,
        ``prompt_tokens``, ``generated_tokens``, ``gen_tokens`` and
        ``gen_time_ms`` (generated tokens and generation time of real
        generations that measured it), ``duration_count``,
        ``duration_sum_ms`` and ``buckets`` (cumulative counts of durations
        within each of :data:`LATENCY_BUCKETS`); ordered by model path, misses
        first.
        """
        self.flush()
        with self.pool.read() as conn:
            rows = conn.execute(_TOTALS_SQL).fetchall()
        return [
            {**dict(zip(_TOTALS_COLUMNS, row[:10], strict=True)), "cache_hit": bool(row[2]), "buckets": list(row[10:])}
            for row in rows
        ]

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # a read must not fail over buffered bookkeeping
            logger.debug("buffered hit rows not written before a read: %s", exc)

    def _model_paths(self, model: Any) -> list[str]:
        """The recorded paths a model filter selects: its registry name, GGUF
        ``general.name``, file name or path, resolved to the file's identity."""
        from .modelref import select_model

        _check_model_path(model)  # the type and emptiness checks
        return sorted(select_model(self.db, model).paths)

    @db_op(empty=_empty_summary)
    def summary(
        self,
        model_path: str | os.PathLike[str] | None = None,
        since: datetime | timedelta | float | str | None = None,
        until: datetime | timedelta | float | str | None = None,
        *,
        tz: tzinfo | None = None,
    ) -> dict[str, Any]:
        """Aggregated statistics of the generations in ``[since, until)``.

        Args:
            model_path: only this model: a path, its file name, its GGUF
                ``general.name`` or its registry name; every recorded path of
                the same file (its fingerprint) counts. An ambiguous name
                raises :class:`~cyllama_db.AmbiguousModelError`.
            since: first moment included: a datetime, Unix seconds, a
                timedelta or duration text meaning "that long ago"
                (``since="7d"``), or ISO-8601 text (``"2024-05-01"``);
                default: the beginning.
            until: first moment excluded (the same forms); default: no end.
            tz: the time zone whose calendar days ``by_day`` counts in;
                default: this machine's local time zone.

        Returns a dict: ``total_generations``, ``total_tokens`` (hits
        included), ``cache_hits``, ``cache_hit_rate``,
        ``tokens_per_second`` (weighted by tokens: generated tokens over
        generation time, summed over real generations; what a dashboard
        should show), ``avg_tokens_per_second`` (the mean of each real
        generation's own speed, which a few very short generations can
        inflate), ``by_model`` (``{model_path: {model_name, generations,
        tokens, cache_hits, cache_hit_rate, tokens_per_second,
        avg_tokens_per_second, p50_latency_ms, p95_latency_ms}}``;
        latencies are of ``total_time_ms`` over real generations (model
        loading is not part of it), ``None`` if there are none) and
        ``by_day`` (``[{date, generations, tokens, cache_hits,
        cache_hit_rate, tokens_per_second, avg_tokens_per_second}]``,
        oldest first, days without generations left out).
        """
        paths = None if model_path is None else self._model_paths(model_path)
        if tz is not None and not isinstance(tz, tzinfo):
            raise TypeError(f"tz must be a datetime.tzinfo or None, got {type(tz).__name__}")
        low, high = self._window(since, until)
        summary = _empty_summary()
        if high <= low:
            return summary
        self.flush()

        # Buckets wholly inside [low, high) come from the rollup, the rest
        # (at most one partial bucket per edge) from the raw rows; SQLite
        # then folds the parts per model and per bucket.
        first_full = math.ceil(low / BUCKET_SECONDS)
        end_full = math.inf if high == math.inf else math.floor(high / BUCKET_SECONDS)
        model_sql = "" if paths is None else f" AND model_path IN ({', '.join('?' * len(paths))})"
        model_arg: list[Any] = [] if paths is None else list(paths)
        raw_sql = (
            f"SELECT {self.backend.trunc_int(f'created_at / {BUCKET_SECONDS}')}, model_path, COUNT(*),"
            " SUM(cache_hit), SUM(COALESCE(total_tokens, 0)),"
            " SUM(CASE WHEN cache_hit = 0 THEN COALESCE(tokens_per_second, 0) ELSE 0 END),"
            " SUM(CASE WHEN cache_hit = 0 AND tokens_per_second IS NOT NULL THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN cache_hit = 0 AND total_time_ms IS NOT NULL THEN 1 ELSE 0 END),"
            f" SUM(CASE WHEN {_GEN_OK} THEN generated_tokens ELSE 0 END),"
            f" SUM(CASE WHEN {_GEN_OK} THEN generation_time_ms ELSE 0 END)"
            f" FROM stats WHERE created_at >= ? AND created_at < ?{model_sql}"
            " GROUP BY 1, 2"
        )
        parts: list[str] = []
        args: list[Any] = []
        if end_full <= first_full:
            parts.append(raw_sql)
            args += [low, high, *model_arg]
        else:
            parts.append(raw_sql)
            args += [low, first_full * BUCKET_SECONDS, *model_arg]
            rollup_sql = (
                "SELECT bucket, model_path, generations, cache_hits, tokens, tps_sum, tps_count,"
                " latency_count, gen_tokens, gen_time_ms"
                " FROM stats_rollup WHERE bucket >= ?"
            )
            args.append(first_full)
            if end_full != math.inf:
                rollup_sql += " AND bucket < ?"
                args.append(int(end_full))
            parts.append(rollup_sql + model_sql)
            args += model_arg
            if end_full != math.inf:
                parts.append(raw_sql)
                args += [max(low, end_full * BUCKET_SECONDS), high, *model_arg]
        cte = (
            "WITH parts(bucket, model_path, generations, cache_hits, tokens, tps_sum, tps_count,"
            " latency_count, gen_tokens, gen_time_ms)"
            f" AS ({' UNION ALL '.join(parts)}) SELECT {{key}}, SUM(generations), SUM(cache_hits),"
            " SUM(tokens), SUM(tps_sum), SUM(tps_count), SUM(latency_count), SUM(gen_tokens),"
            " SUM(gen_time_ms)"
            " FROM parts GROUP BY 1 ORDER BY 1"
        )
        with self.pool.read() as conn:
            model_rows = conn.execute(cte.format(key="model_path"), args).fetchall()
            bucket_rows = conn.execute(cte.format(key="bucket"), args).fetchall()
            total = _Agg()
            by_model: dict[str, dict[str, Any]] = {}
            for mpath, *sums in model_rows:
                agg = _Agg()
                agg.add(*sums)
                total.add(*sums)
                p50, p95 = self._latency_percentiles(
                    conn, mpath, low, high, agg.latency_count, (0.5, 0.95), self._latency_table
                )
                name_row = conn.execute(
                    "SELECT model_name FROM stats_rollup WHERE model_path = ?"
                    " ORDER BY bucket DESC LIMIT 1",
                    (mpath,),
                ).fetchone()
                by_model[mpath] = {
                    "model_name": None if name_row is None else name_row[0],
                    **agg.figures(),
                    "p50_latency_ms": p50,
                    "p95_latency_ms": p95,
                }

        overall = total.figures()
        summary.update(
            total_generations=overall["generations"],
            total_tokens=overall["tokens"],
            cache_hits=overall["cache_hits"],
            cache_hit_rate=overall["cache_hit_rate"],
            avg_tokens_per_second=overall["avg_tokens_per_second"],
            tokens_per_second=overall["tokens_per_second"],
            by_model=by_model,
            by_day=_by_day(bucket_rows, tz),
        )
        return summary

    @staticmethod
    def _latency_percentiles(
        conn: sqlite3.Connection,
        model_path: str,
        low: float,
        high: float,
        n: int,
        qs: tuple[float, ...],
        table: str = "stats INDEXED BY idx_stats_latency",
    ) -> list[float | None]:
        """Exact percentiles (linear interpolation) of total_time_ms of real generations."""
        where = (
            "model_path = ? AND cache_hit = 0 AND total_time_ms IS NOT NULL"
            " AND created_at >= ? AND created_at < ?"
        )
        args = (model_path, low, high)
        out: list[float | None] = []
        for q in qs:
            if n == 0:
                out.append(None)
                continue
            index, frac = _percentile_index(n, q)
            # Walk from the nearer end of the index: p95 reads 5% of it, not 95%.
            if index <= n // 2:
                values = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT total_time_ms FROM {table} WHERE {where}"
                        " ORDER BY total_time_ms LIMIT 2 OFFSET ?",
                        (*args, index),
                    )
                ]
            else:
                upper = min(index + 1, n - 1)
                values = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT total_time_ms FROM {table} WHERE {where}"
                        " ORDER BY total_time_ms DESC LIMIT 2 OFFSET ?",
                        (*args, n - 1 - upper),
                    )
                ][::-1]
                if upper == index:  # index is the last value: only it matters
                    values = values[-1:]
            if not values:  # the rollup disagrees with the rows (edited by hand?)
                out.append(None)
                continue
            lower_value = values[0]
            upper_value = values[1] if len(values) > 1 else lower_value
            out.append(lower_value + (upper_value - lower_value) * frac)
        return out

    @db_op(empty=lambda: {"step_seconds": 0, "start": 0.0, "end": 0.0, "exact": True, "models": [], "overall": []})
    def series(
        self,
        since: datetime | timedelta | float,
        step: timedelta | float,
        *,
        until: datetime | timedelta | float | None = None,
    ) -> dict[str, Any]:
        """Generations, speed and latency over time, per model and overall (for charts).

        Args:
            since: first moment (datetime, Unix seconds, or a timedelta
                meaning "that long ago").
            step: width of each point (timedelta or seconds). Steps shorter
                than 15 minutes read the raw rows (exact percentiles); steps
                of 15 minutes or more read the rollup, aligned to its
                15-minute buckets, with latency percentiles interpolated in
                its latency histogram (:data:`LATENCY_BUCKETS`), as
                Prometheus's ``histogram_quantile`` does.
            until: end (default: now).

        Returns ``{"step_seconds", "start", "end" (Unix seconds), "exact"
        (whether percentiles are exact), "models": [{"model_path",
        "model_name", "points"}], "overall": points}``; each point is
        ``{"t" (start, Unix seconds), "generations", "cache_hits", "tokens",
        "tokens_per_second" (generated tokens over generation time of real
        generations; None without any), "p50_latency_ms", "p95_latency_ms"
        (of real generations; None without any)}``, only for steps that
        have generations, oldest first.
        """
        now = self.clock()
        low = max(0.0, time_arg(since, "since", now))
        high = now if until is None else time_arg(until, "until", now)
        if isinstance(step, bool) or not isinstance(step, (int, float, timedelta, str)):
            raise TypeError(f"step must be a timedelta or seconds, got {type(step).__name__}")
        step_s = parse_duration(step).total_seconds() if not isinstance(step, (int, float)) else float(step)
        if not math.isfinite(step_s) or step_s <= 0:
            raise ValueError(f"step must be a positive duration, got {step!r}")
        if (high - low) / step_s > 10_000:
            raise ValueError(f"step={step!r} gives more than 10000 points over this range; use a longer step")
        self.flush()
        exact = step_s < BUCKET_SECONDS
        if not exact:
            step_s = max(BUCKET_SECONDS, round(step_s / BUCKET_SECONDS) * BUCKET_SECONDS)
        start = math.floor(low / step_s) * step_s
        # (model, index) -> [generations, hits, tokens, gen_tokens, gen_time_ms, latencies or histogram]
        cells: dict[tuple[str, int], list[Any]] = {}
        names: dict[str, str | None] = {}
        step_index = self.backend.trunc_int("(created_at - ?) / ?")
        with self.pool.read() as conn:
            if exact:
                for mpath, i, n, hits, tokens, gtok, gtime in conn.execute(
                    f"SELECT model_path, {step_index}, COUNT(*), SUM(cache_hit),"
                    f" SUM(COALESCE(total_tokens, 0)), SUM(CASE WHEN {_GEN_OK} THEN generated_tokens ELSE 0 END),"
                    f" SUM(CASE WHEN {_GEN_OK} THEN generation_time_ms ELSE 0 END)"
                    " FROM stats WHERE created_at >= ? AND created_at < ? GROUP BY 1, 2",
                    (start, step_s, low, high),
                ):
                    cells[(mpath, i)] = [n, hits, tokens, gtok, gtime, []]
                for mpath, i, ms in conn.execute(
                    f"SELECT model_path, {step_index}, total_time_ms FROM stats"
                    " WHERE created_at >= ? AND created_at < ? AND cache_hit = 0 AND total_time_ms IS NOT NULL",
                    (start, step_s, low, high),
                ):
                    cells[(mpath, i)][5].append(ms)
            else:
                hist_sums = ", ".join(f"SUM({c})" for c in _HIST_COLUMNS)
                for mpath, i, n, hits, tokens, gtok, gtime, lat_n, *hist in conn.execute(
                    f"SELECT model_path, {self.backend.trunc_int(f'(bucket * {BUCKET_SECONDS} - ?) / ?')},"
                    " SUM(generations),"
                    " SUM(cache_hits), SUM(tokens), SUM(gen_tokens), SUM(gen_time_ms), SUM(latency_count),"
                    f" {hist_sums} FROM stats_rollup WHERE bucket >= ? AND bucket < ? GROUP BY 1, 2",
                    (start, step_s, int(start // BUCKET_SECONDS), math.ceil(high / BUCKET_SECONDS)),
                ):
                    cells[(mpath, i)] = [n, hits, tokens, gtok, gtime, [lat_n, *hist]]
            for mpath in {m for m, _ in cells}:
                row = conn.execute(
                    "SELECT model_name FROM stats_rollup WHERE model_path = ? ORDER BY bucket DESC LIMIT 1",
                    (mpath,),
                ).fetchone()
                names[mpath] = None if row is None else row[0]

        def point(i: int, parts: list[list[Any]]) -> dict[str, Any]:
            n = sum(p[0] for p in parts)
            gtok = sum(p[3] or 0 for p in parts)
            gtime = sum(p[4] or 0.0 for p in parts)
            if exact:
                values = sorted(v for p in parts for v in p[5])
                p50, p95 = (_exact_percentile(values, q) for q in (0.5, 0.95))
            else:
                merged = [sum(col) for col in zip(*(p[5] for p in parts), strict=True)]
                p50, p95 = (_histogram_percentile(merged[0], merged[1:], q) for q in (0.5, 0.95))
            return {
                "t": start + i * step_s,
                "generations": n,
                "cache_hits": sum(p[1] for p in parts),
                "tokens": sum(p[2] for p in parts),
                "tokens_per_second": gtok / (gtime / 1000.0) if gtime > 0 else None,
                "p50_latency_ms": p50,
                "p95_latency_ms": p95,
            }

        models = []
        for mpath in sorted(names, key=lambda m: -sum(c[0] for (mm, _), c in cells.items() if mm == m)):
            indexes = sorted(i for m, i in cells if m == mpath)
            models.append({
                "model_path": mpath,
                "model_name": names[mpath],
                "points": [point(i, [cells[(mpath, i)]]) for i in indexes],
            })
        overall = [
            point(i, [c for (_, j), c in cells.items() if j == i]) for i in sorted({i for _, i in cells})
        ]
        return {"step_seconds": step_s, "start": start, "end": high, "exact": exact,
                "models": models, "overall": overall}

    @db_op(empty=list)
    def history(
        self,
        limit: int = 100,
        offset: int = 0,
        model_path: str | os.PathLike[str] | None = None,
        *,
        session_id: str | None = None,
        since: datetime | timedelta | float | str | None = None,
        until: datetime | timedelta | float | str | None = None,
    ) -> list[dict[str, Any]]:
        """Recorded generations, newest first, as plain dicts (``pandas.DataFrame`` takes them).

        Each dict has every column of the ``stats`` table (see
        :data:`STATS_COLUMNS`); ``cache_hit`` is a bool and ``created_at`` an
        aware UTC datetime. ``limit``/``offset`` page through the history
        (non-negative ints; beyond 2**63 - 1 they mean "no limit");
        ``model_path`` (made absolute, like the recorded paths),
        ``session_id`` and the window ``[since, until)`` filter it (as for
        :meth:`summary`: ``since="24h"``, a datetime, ...).
        """
        limit = check_count(limit, "limit")
        offset = check_count(offset, "offset")
        clauses: list[str] = []
        args: list[Any] = []
        if model_path is not None:
            paths = self._model_paths(model_path)
            clauses.append(f"model_path IN ({', '.join('?' * len(paths))})")
            args.extend(paths)
        if session_id is not None:
            if not isinstance(session_id, str):
                raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
            clauses.append("session_id = ?")
            args.append(session_id)
        now = self.clock()
        if since is not None:
            clauses.append("created_at >= ?")
            args.append(time_arg(since, "since", now))
        if until is not None:
            clauses.append("created_at < ?")
            args.append(time_arg(until, "until", now))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        self.flush()
        with self.pool.read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(STATS_COLUMNS)} FROM stats{where}"
                " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        out = []
        for row in rows:
            record = dict(zip(STATS_COLUMNS, row, strict=True))
            record["cache_hit"] = bool(record["cache_hit"])
            record["created_at"] = from_timestamp(record["created_at"])
            out.append(record)
        return out

    # -- retention -------------------------------------------------------------------------

    @db_op(empty=int)
    def prune(
        self,
        older_than: datetime | timedelta | float | str,
        *,
        model_path: str | os.PathLike[str] | None = None,
    ) -> int:
        """Delete generation rows recorded before ``older_than``; return how many.

        ``older_than`` is a datetime, Unix seconds, ISO-8601 text, or a
        timedelta or duration text meaning "that long ago"
        (``prune_stats(older_than="90d")``).
        ``model_path`` limits it to one model (made absolute, like the
        recorded paths).
        """
        if older_than is None:
            raise TypeError(
                "prune_stats() needs older_than (a datetime, timedelta or Unix seconds)"
            )
        cutoff = time_arg(older_than, "older_than", self.clock())
        clause = "created_at < ?"
        args: list[Any] = [cutoff]
        if model_path is not None:
            paths = self._model_paths(model_path)
            clause += f" AND model_path IN ({', '.join('?' * len(paths))})"
            args.extend(paths)
        self.flush()
        with self.pool.transaction() as conn:
            cursor = conn.execute(f"DELETE FROM stats WHERE {clause}", args)
            if cursor.rowcount > 0:
                self._reclaim(conn)
        return max(cursor.rowcount, 0)


def _by_day(bucket_rows: list[tuple[Any, ...]], tz: tzinfo | None) -> list[dict[str, Any]]:
    """Fold ``(bucket, *sums)`` rows, oldest first, into calendar days of ``tz``.

    ``tz`` None means the machine's local time zone.
    """
    days: dict[date, _Agg] = {}
    day_start = day_end = -math.inf
    agg = _Agg()
    for bucket, *sums in bucket_rows:
        start = bucket * BUCKET_SECONDS
        if not (day_start <= start < day_end):
            # One time-zone conversion per day, not per bucket.
            current = _local_date(start, tz)
            day_start, day_end = _day_bounds(current, tz)
            if not (day_start <= start < day_end):
                day_start, day_end = start, start + 1  # an odd zone: convert each bucket
            agg = days.setdefault(current, _Agg())
        agg.add(*sums)
    return [{"date": day, **days[day].figures()} for day in sorted(days)]


def _local_date(ts: float, tz: tzinfo | None) -> date:
    if tz is None:
        return datetime.fromtimestamp(ts).date()  # the machine's local time zone
    return datetime.fromtimestamp(ts, tz).date()


def _day_bounds(day: date, tz: tzinfo | None) -> tuple[float, float]:
    """``[start, end)`` in Unix seconds of ``day`` in ``tz``, or an empty range if unsure.

    Midnight can fall in a DST gap or fold; the bounds are verified by
    converting back, and an empty range makes the caller convert per bucket.
    """
    bounds = []
    for d in (day, day + timedelta(days=1)):
        naive = datetime(d.year, d.month, d.day)
        bounds.append(naive.timestamp() if tz is None else naive.replace(tzinfo=tz).timestamp())
    start, end = bounds
    ok = (
        _local_date(start, tz) == day
        and _local_date(end - 1, tz) == day
        and _local_date(end, tz) != day
        and _local_date(start - 1, tz) != day
    )
    return (start, end) if ok else (0.0, 0.0)
