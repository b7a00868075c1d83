"""Readable SQL views: the stable way to query the file from ``sqlite3`` or Datasette.

The tables are laid out for the library (Unix seconds as REAL, milliseconds
in ``metrics_history``, 0/1 flags, absolute paths); these views show the
same rows as people read them, and keep their columns when the tables
change:

=================  ====================  =====================================
view               rows of               spelled out
=================  ====================  =====================================
``generations``    ``stats``             ISO-8601 UTC times, ``model`` (GGUF
                                         name, else the file name),
                                         ``model_file``, ``registry_name``,
                                         ``cache`` = ``'hit'``/``'miss'``
``cache_entries``  ``cache``             ISO-8601 times, ``model_file``,
                                         ``registry_name``, ``status`` =
                                         ``'live'``/``'expired'``
``log_entries``    ``logs``              ISO-8601 times
``metrics``        ``metrics_history``   ISO-8601 times (from milliseconds),
                                         ``host`` (schema 11)
=================  ====================  =====================================

Times are UTC with milliseconds, ``2024-05-31T16:08:37.123Z``, so they sort
as text; a stored time no date can hold shows as NULL. ``registry_name`` is
the name under which the model registry (``models``) holds the same path,
else NULL. The views are created by migration 10 and use only SQL every
SQLite of the last decade has (no JSON, no ``unixepoch()``).
"""

from __future__ import annotations

import sqlite3

from ..db.migrations import execute_script, migration

__all__ = ["VIEWS"]

#: The view names, each with the table it reads.
VIEWS = {
    "generations": "stats",
    "cache_entries": "cache",
    "log_entries": "logs",
    "metrics": "metrics_history",
}


def _iso(seconds: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {seconds}, 'unixepoch')"


def _basename(path: str) -> str:
    # What follows the last '/' or '\': rtrim() keeps everything up to it.
    prefix = f"rtrim({path}, replace(replace({path}, '/', ''), '\\', ''))"
    return f"substr({path}, length({prefix}) + 1)"


def _registry_name(path: str) -> str:
    return f"(SELECT m.name FROM models AS m WHERE m.model_path = {path} ORDER BY m.id LIMIT 1)"


_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

_VIEWS_SQL = f"""
CREATE VIEW IF NOT EXISTS generations AS
SELECT
    s.id,
    {_iso("s.created_at")} AS created_at,
    COALESCE(s.model_name, {_basename("s.model_path")}) AS model,
    {_basename("s.model_path")} AS model_file,
    {_registry_name("s.model_path")} AS registry_name,
    s.model_path,
    CASE s.cache_hit WHEN 1 THEN 'hit' ELSE 'miss' END AS cache,
    s.prompt_tokens,
    s.generated_tokens,
    s.total_tokens,
    s.prompt_time_ms,
    s.generation_time_ms,
    s.total_time_ms,
    s.tokens_per_second,
    s.temperature,
    s.max_tokens,
    s.finish_reason,
    s.session_id
FROM stats AS s;

CREATE VIEW IF NOT EXISTS cache_entries AS
SELECT
    c.id,
    c.cache_key,
    c.kind,
    NULLIF(c.namespace, '') AS namespace,
    c.model_name AS model_file,
    {_registry_name("c.model_path")} AS registry_name,
    c.model_path,
    c.prompt,
    c.response_text,
    c.finish_reason,
    c.prompt_tokens,
    c.tokens_generated,
    c.tokens_per_second,
    c.generation_time_ms,
    c.size_bytes,
    c.hit_count,
    {_iso("c.created_at")} AS created_at,
    {_iso("c.expires_at")} AS expires_at,
    {_iso("c.last_hit_at")} AS last_hit_at,
    {_iso("c.last_used_at")} AS last_used_at,
    CASE WHEN c.expires_at IS NOT NULL AND c.expires_at <= {_NOW} THEN 'expired' ELSE 'live' END AS status
FROM cache AS c;

CREATE VIEW IF NOT EXISTS log_entries AS
SELECT
    l.id,
    {_iso("l.created_at")} AS created_at,
    l.level,
    l.category,
    l.message,
    l.model_path,
    l.prompt_preview,
    l.error_type,
    l.error_message,
    l.stack_trace,
    l.context_json
FROM logs AS l;

CREATE VIEW IF NOT EXISTS metrics AS
SELECT
    h.id,
    {_iso("h.timestamp / 1000.0")} AS time,
    h.cpu_usage,
    h.memory_usage,
    h.disk_usage,
    h.gpu_usage,
    h.gpu_temperature,
    h.gpu_memory_used,
    h.gpu_memory_total,
    h.gpu_power_usage,
    h.active_models,
    h.uptime,
    h.requests_per_minute,
    h.gpus_json
FROM metrics_history AS h;
"""


@migration(10, "readable views")
def _create_views(conn: sqlite3.Connection) -> None:
    execute_script(conn, _VIEWS_SQL)


# Schema 11: the metrics view as above, with the host that took each sample at the end.
_METRICS_VIEW_V11 = f"""
DROP VIEW IF EXISTS metrics;
CREATE VIEW metrics AS
SELECT
    h.id,
    {_iso("h.timestamp / 1000.0")} AS time,
    h.cpu_usage,
    h.memory_usage,
    h.disk_usage,
    h.gpu_usage,
    h.gpu_temperature,
    h.gpu_memory_used,
    h.gpu_memory_total,
    h.gpu_power_usage,
    h.active_models,
    h.uptime,
    h.requests_per_minute,
    h.gpus_json,
    h.host
FROM metrics_history AS h;
"""


def recreate_metrics_view(conn: sqlite3.Connection) -> None:
    """Migration 11's part (run from ``stores/metrics.py`` after it adds the column): the ``metrics`` view with ``host``."""
    execute_script(conn, _METRICS_VIEW_V11)
