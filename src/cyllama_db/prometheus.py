"""Prometheus exposition of what the database knows: ``GET /metrics`` and :func:`prometheus_text`.

The text exposition format (version 0.0.4) is written by hand, so no
dependency is needed; ``prometheus_client``'s parser reads it (the tests use
it). Every figure comes from small tables, so a scrape costs about the same
at a million generations as at ten:

* counters (generations, tokens, generation time, the duration histogram)
  come from ``db.stats.totals()``, running totals kept by a trigger on the
  ``stats`` table and never decremented: pruning old rows
  (``prune_stats``, ``stats_max_age``) does not make them go down, as
  Prometheus's ``rate()`` requires;
* cache gauges from ``db.cache.totals()`` (entries, size, evictions);
* host and process gauges from the latest metrics sample,
  ``db.metrics.latest()`` (the dashboard's sampler, or
  ``db.start_metrics_sampler()`` in the inference process).

Serve it from your own web server::

    from cyllama_db.prometheus import CONTENT_TYPE, prometheus_text

    def metrics_view(request):
        return Response(prometheus_text(db), content_type=CONTENT_TYPE)

``cyllama-db dashboard`` serves it at ``/metrics``. Metric names and
labels are listed in ``docs/observability.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import DatabaseFileError
from .stores.stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from .db.facade import CyllamaDB

__all__ = ["CONTENT_TYPE", "prometheus_text"]

#: The Content-Type of :func:`prometheus_text`'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_MIB = 1024 * 1024


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class _Writer:
    """Collects families: one HELP/TYPE header, then every sample of it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Iterable[tuple[str, str]], value: float | int) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def gauge(self, name: str, help_text: str, value: Any, labels: Iterable[tuple[str, str]] = ()) -> None:
        if value is None:
            return
        self.family(name, "gauge", help_text)
        self.sample(name, labels, value)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _model_label(path: str, name: str | None) -> str:
    return name or os.path.basename(path.rstrip("/\\")) or path


def _write_stats(out: _Writer, totals: list[dict[str, Any]]) -> None:
    # The rows of db.stats.totals(), as tuples in its column order (then the buckets).
    rows = [
        (t["model_path"], t["model_name"], t["cache_hit"], t["generations"], t["prompt_tokens"],
         t["generated_tokens"], t["gen_tokens"], t["gen_time_ms"], t["duration_count"], t["duration_sum_ms"],
         *t["buckets"])
        for t in totals
    ]

    def model(row: tuple[Any, ...]) -> list[tuple[str, str]]:
        return [("model", _model_label(row[0], row[1])), ("model_path", row[0])]

    def cache(row: tuple[Any, ...]) -> tuple[str, str]:
        return ("cache", "hit" if row[2] else "miss")

    out.family(
        "cyllama_generations_total",
        "counter",
        "Generations recorded, cache hits included, by model and cache outcome.",
    )
    for row in rows:
        out.sample("cyllama_generations_total", [*model(row), cache(row)], row[3])

    out.family(
        "cyllama_tokens_total",
        "counter",
        "Tokens of the recorded generations by kind (prompt or generated); a hit counts the"
        " tokens of the answer it replayed.",
    )
    for row in rows:
        for kind, value in (("prompt", row[4]), ("generated", row[5])):
            out.sample("cyllama_tokens_total", [*model(row), cache(row), ("kind", kind)], value)

    misses = [row for row in rows if not row[2]]
    out.family(
        "cyllama_tokens_predicted_total",
        "counter",
        "Generated tokens of real generations that measured their generation time"
        " (divide its rate by cyllama_tokens_predicted_seconds_total's for tokens/s).",
    )
    for row in misses:
        out.sample("cyllama_tokens_predicted_total", model(row), row[6])
    out.family(
        "cyllama_tokens_predicted_seconds_total",
        "counter",
        "Time spent generating those tokens (prompt processing and model loading excluded).",
    )
    for row in misses:
        out.sample("cyllama_tokens_predicted_seconds_total", model(row), row[7] / 1000.0)

    out.family(
        "cyllama_generation_duration_seconds",
        "histogram",
        "Wall time of each generation (model loading excluded); a hit's is its lookup.",
    )
    for row in rows:
        labels = [*model(row), cache(row)]
        for le, count in zip(LATENCY_BUCKETS, row[10:], strict=True):
            out.sample("cyllama_generation_duration_seconds_bucket", [*labels, ("le", repr(le))], count)
        out.sample("cyllama_generation_duration_seconds_bucket", [*labels, ("le", "+Inf")], row[8])
        out.sample("cyllama_generation_duration_seconds_sum", labels, row[9] / 1000.0)
        out.sample("cyllama_generation_duration_seconds_count", labels, row[8])


def _write_cache(out: _Writer, totals: dict[str, int] | None, limit_bytes: int) -> None:
    if totals is None:
        return
    entries, size, evictions = totals["entries"], totals["size_bytes"], totals["evictions"]
    out.gauge("cyllama_cache_entries", "Entries in the response cache (expired ones until removed).", entries)
    out.gauge("cyllama_cache_size_bytes", "Size of the response cache as counted against its limit.", size)
    out.gauge("cyllama_cache_max_size_bytes", "The response cache's size limit.", limit_bytes)
    out.family(
        "cyllama_cache_evictions_total",
        "counter",
        "Cache entries evicted (least recently used first) to keep the cache under its limit.",
    )
    out.sample("cyllama_cache_evictions_total", (), evictions)


def _ratio(value: Any) -> float | None:
    return None if value is None else float(value) / 100.0


def _write_sample(out: _Writer, sample: dict[str, Any] | None) -> None:
    if sample is None:
        return
    timestamp = sample["timestamp_ms"]
    cpu, memory, disk = sample["cpu_usage"], sample["memory_usage"], sample["disk_usage"]
    gpu, temp, power = sample["gpu_usage"], sample["gpu_temperature"], sample["gpu_power_usage"]
    mem_used, mem_total = sample["gpu_memory_used"], sample["gpu_memory_total"]
    models, rpm = sample["active_models"], sample["requests_per_minute"]
    rss, proc_cpu, pid = sample["process_rss_bytes"], sample["process_cpu_usage"], sample["process_pid"]
    out.gauge(
        "cyllama_metrics_sample_timestamp_seconds",
        "When the host and process gauges below were sampled (Unix seconds).",
        timestamp / 1000.0,
    )
    out.gauge("cyllama_cpu_usage_ratio", "Host CPU utilisation (0-1), latest sample.", _ratio(cpu))
    out.gauge("cyllama_memory_usage_ratio", "Host memory in use (0-1), latest sample.", _ratio(memory))
    out.gauge("cyllama_disk_usage_ratio", "Use of the database's filesystem (0-1), latest sample.", _ratio(disk))
    out.gauge("cyllama_models_loaded", "Models loaded or running, latest sample.", models)
    out.gauge("cyllama_requests_per_minute", "Generations recorded in the minute before the latest sample.", rpm)
    if pid is not None:
        labels = [("pid", str(pid))]
        out.gauge(
            "cyllama_process_resident_memory_bytes",
            "Resident memory of the inference process, latest sample.",
            rss,
            labels,
        )
        out.gauge(
            "cyllama_process_cpu_usage_ratio",
            "CPU used by the inference process, in cores (1 = one core busy), latest sample.",
            _ratio(proc_cpu),
            labels,
        )
    gpus = sample["gpus"]
    if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
        gpus = []
    if not gpus and any(v is not None for v in (gpu, temp, mem_used, mem_total, power)):
        gpus = [{"index": 0, "name": None, "gpu_usage": gpu, "gpu_temperature": temp,
                 "gpu_memory_used": mem_used, "gpu_memory_total": mem_total, "gpu_power_usage": power}]
    families = (
        ("cyllama_gpu_utilization_ratio", "GPU utilisation (0-1), latest sample.", "gpu_usage", 0.01),
        ("cyllama_gpu_memory_used_bytes", "GPU memory in use, latest sample.", "gpu_memory_used", _MIB),
        ("cyllama_gpu_memory_total_bytes", "GPU memory in total.", "gpu_memory_total", _MIB),
        ("cyllama_gpu_temperature_celsius", "GPU temperature, latest sample.", "gpu_temperature", 1),
        ("cyllama_gpu_power_watts", "GPU power draw, latest sample.", "gpu_power_usage", 1),
    )
    for name, help_text, key, scale in families:
        values = []
        for i, g in enumerate(gpus):
            value = g.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                labels = [("gpu", str(g.get("index", i)))]
                if isinstance(g.get("name"), str):
                    labels.append(("name", g["name"]))
                values.append((labels, value * scale))
        if values:
            out.family(name, "gauge", help_text)
            for labels, value in values:
                out.sample(name, labels, value)


def prometheus_text(db: CyllamaDB | None = None) -> str:
    """Every cyllama-db metric in Prometheus's text exposition format (version 0.0.4).

    ``db``: the database to read (default: the global one, :func:`get_db`).
    Serve the result with :data:`CONTENT_TYPE`. Buffered cache-hit rows are
    written first, so the counters include every hit recorded so far. A
    disabled database gives an empty exposition; a store whose table is
    missing (a file edited by hand) leaves its metrics out.
    """
    if db is None:
        from .db.facade import get_db

        db = get_db()
    if not db.enabled:
        return ""
    out = _Writer()
    try:
        totals = db.stats.totals()  # writes the buffered hit rows first
    except DatabaseFileError:  # the table is missing (a file edited by hand)
        totals = []
    try:
        cache_totals = db.cache.totals()
    except DatabaseFileError:
        cache_totals = None
    try:
        sample = db.metrics.latest()
    except DatabaseFileError:
        sample = None
    _write_stats(out, totals)
    _write_cache(out, cache_totals, int(db.settings.max_cache_size_mb * _MIB))
    _write_sample(out, sample)
    return out.text()
