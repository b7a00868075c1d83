"""What the dashboard shows: each section of the page as JSON-ready data, read through store methods.

Each function takes the database and returns one section (``info``,
``metrics``, ``stats``, ``series``, ``recent``, ``cache``, ``models``);
:func:`section` runs one so that a failing store yields an error note
instead of a broken page, and :func:`dashboard_data` gathers them all
(``/api/summary``). Nothing here knows about HTTP (see ``server.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..cli.format import plain
from ..stores.metrics import METRICS_FIELDS, PROCESS_FIELDS

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = [
    "DEFAULT_RANGE",
    "RANGES",
    "cache",
    "dashboard_data",
    "error_text",
    "info",
    "metrics",
    "models",
    "recent",
    "section",
    "series",
    "stats",
]

logger = logging.getLogger("cyllama_db.dashboard")

_MODEL_FIELDS = (
    "id",
    "name",
    "type",
    "status",
    "model_path",
    "architecture",
    "quantization",
    "size_label",
    "parameter_count",
    "context_length",
    "ctx_size",
    "size_bytes",
    "last_used_at",
    "updated_at",
)


def error_text(exc: BaseException) -> str:
    """An exception's message on one line (its type's name if it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def section(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one data provider; a failing store yields an error note, not a broken page."""
    try:
        return {"available": True, **fn()}
    except _Unavailable:
        return {"available": False}
    except Exception as exc:  # one store's failure must not blank the whole page
        logger.warning("dashboard data failed: %s", exc, exc_info=True)
        return {"available": False, "error": error_text(exc)}


class _Unavailable(Exception):
    """The store behind a section does not exist in this cyllama-db."""


def _method(db: Any, name: str) -> Callable[..., Any]:
    fn = getattr(db, name, None)
    if not callable(fn):
        raise _Unavailable(name)
    return fn


def info(db: CyllamaDB) -> dict[str, Any]:
    """Path, bytes on disk, schema version and row counts (``/api/info``)."""
    db_stats = db.get_db_stats()
    file_bytes = db_stats["file_bytes"]
    counts = {
        k: v for k, v in db_stats.items()
        if isinstance(v, int) and not isinstance(v, bool) and k not in ("schema_version", "file_bytes")
    }
    return {
        "path": db.path,
        "file_bytes": file_bytes,
        "schema_version": db_stats.get("schema_version"),
        "counts": counts,
    }


def _window_minutes(db: CyllamaDB) -> float:
    return max(db.settings.metrics_retention.total_seconds() / 60.0, 1 / 60)


def metrics(db: CyllamaDB, minutes: float | None = None) -> dict[str, Any]:
    """Metrics samples of the last ``minutes`` (default: the retention window), as compact rows (``/api/metrics``)."""
    history = _method(db, "get_metrics_history")
    window = _window_minutes(db) if minutes is None else minutes
    rows = []
    for row in history(minutes=window):
        compact = {"t": row.get("timestamp_ms")}
        if compact["t"] is None and row.get("timestamp") is not None:
            compact["t"] = int(row["timestamp"].timestamp() * 1000)
        compact.update({k: row.get(k) for k in METRICS_FIELDS + PROCESS_FIELDS})
        rows.append(compact)
    return {"window_minutes": window, "rows": rows}


def stats(db: CyllamaDB, since: Any = None) -> dict[str, Any]:
    """The statistics summary, ``by_model`` as a list, most generations first (``/api/stats``)."""
    summary = dict(_method(db, "get_stats_summary")(since=since))
    by_model = summary.pop("by_model", {}) or {}
    summary["by_model"] = [
        {"model_path": path, **figures}
        for path, figures in sorted(
            by_model.items(), key=lambda item: -(item[1].get("generations") or 0)
        )
    ]
    return summary


def cache(db: CyllamaDB) -> dict[str, Any]:
    """Cache entries, size, size limit and hit rate (``/api/cache``)."""
    get_stats = getattr(db, "get_cache_stats", None)
    if callable(get_stats):
        data = dict(get_stats())
    elif callable(getattr(db, "get_cached_response", None)):
        counts = db.get_db_stats()
        data = {"entries": counts.get("cache_entries")}
    else:
        raise _Unavailable("cache")
    data.setdefault("max_size_bytes", int(db.settings.max_cache_size_mb * 1_048_576))
    if data.get("hit_rate") is None and callable(getattr(db, "get_stats_summary", None)):
        data["hit_rate"] = db.get_stats_summary().get("cache_hit_rate")
    return data


def models(db: CyllamaDB) -> dict[str, Any]:
    """Registered models, secrets redacted (``/api/models``)."""
    from ..stores.params import redact

    rows = []
    for model in _method(db, "get_models")():
        shown = redact(dict(model))  # secrets never leave the process through the dashboard
        rows.append({k: shown.get(k) for k in _MODEL_FIELDS})
    return {"rows": rows}


#: The time ranges of the page's picker: (seconds, step of a chart point in seconds).
#: Steps under 15 minutes read raw rows; the longer ones read the stats rollup.
RANGES: dict[str, tuple[int, int]] = {
    "10m": (600, 15),
    "1h": (3600, 60),
    "24h": (86_400, 900),
    "7d": (604_800, 3600),
}
DEFAULT_RANGE = "1h"

_LOAD_MESSAGE = re.compile(r"^loaded model (?P<path>.+) in (?P<ms>\d+(?:\.\d+)?) ms$")


def series(db: CyllamaDB, range_key: str = DEFAULT_RANGE) -> dict[str, Any]:
    """tok/s, p50/p95 latency and generations over ``range_key``, per model and overall (ms times)."""
    seconds, step = RANGES[range_key]
    data = _method(db, "get_stats_series")(timedelta(seconds=seconds), step)
    window = stats(db, since=timedelta(seconds=seconds))

    def points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**{k: v for k, v in r.items() if k != "t"}, "t": int(r["t"] * 1000)} for r in rows]

    return {
        "range": range_key,
        "range_seconds": seconds,
        "step_seconds": data["step_seconds"],
        "exact": data["exact"],
        "models": [
            {"model_path": m["model_path"], "model_name": m["model_name"], "points": points(m["points"])}
            for m in data["models"]
        ],
        "overall": points(data["overall"]),
        "window": {k: window.get(k) for k in (
            "total_generations", "total_tokens", "cache_hit_rate", "tokens_per_second", "by_model")},
    }


def recent(db: CyllamaDB, limit: int = 20) -> dict[str, Any]:
    """The latest generations, warnings/errors and model loads (from the logs store)."""
    generations = []
    for row in _method(db, "get_generation_history")(limit=limit):
        generations.append({
            "created_at": row["created_at"],
            "model_path": row["model_path"],
            "model_name": row["model_name"],
            "prompt_tokens": row["prompt_tokens"],
            "generated_tokens": row["generated_tokens"],
            "tokens_per_second": row["tokens_per_second"],
            "cache_hit": row["cache_hit"],
            "total_time_ms": row["total_time_ms"],
            "finish_reason": row["finish_reason"],
        })
    logs: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    get_logs = getattr(db, "get_logs", None)
    if callable(get_logs):
        for row in get_logs(level="WARNING", limit=limit):
            logs.append({k: row.get(k) for k in (
                "created_at", "level", "category", "message", "error_type", "model_path")})
        # Model loading is not part of any generation's latency: its own figure.
        for row in get_logs(category="cyllama_db.inference", limit=200):
            match = _LOAD_MESSAGE.match(str(row.get("message") or ""))
            if match and len(loads) < limit:
                loads.append({"created_at": row["created_at"], "model_path": match["path"],
                              "load_ms": float(match["ms"])})
    return {"generations": generations, "logs": logs, "model_loads": loads}


def dashboard_data(db: CyllamaDB, range_key: str = DEFAULT_RANGE) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (``/api/summary?range=1h``)."""
    if range_key not in RANGES:
        raise ValueError(f"range must be one of {', '.join(RANGES)}, got {range_key!r}")
    return plain(
        {
            "generated_at_ms": int(db.clock() * 1000),
            "database": section(lambda: info(db)),
            "metrics": section(lambda: metrics(db)),
            "stats": section(lambda: stats(db)),
            "series": section(lambda: series(db, range_key)),
            "recent": section(lambda: recent(db)),
            "cache": section(lambda: cache(db)),
            "models": section(lambda: models(db)),
        }
    )
