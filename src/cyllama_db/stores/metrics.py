"""The dashboard design's ``metrics_history`` table and a sampler that keeps it filled.

One row per sample: CPU, memory and disk use (psutil), the first GPU's
utilisation, temperature, memory and power (NVML, through ``nvidia-ml-py``),
every GPU's readings as JSON, three figures of this library (models
active, uptime and requests per minute) and the host that took the sample
(``socket.gethostname()``, schema 11), so the samples of several machines
sharing one database (PostgreSQL) can be told apart.  Rows older than the retention window
(``CYLLAMA_METRICS_RETENTION``, 10 minutes by default) are removed by every
insert with one indexed range delete, so the table stays a few hundred rows.

The store is :class:`MetricsStore`, reached as ``db.metrics``
(``db.metrics.record(sample)``, ``db.metrics.history("1h")``,
``db.metrics.start_sampler()``); the flat ``db.save_metrics`` /
``get_metrics_history`` / ``start_metrics_sampler`` are the same methods.

psutil and pynvml are imported only when a sample is taken.  Without psutil,
sampling raises :class:`~cyllama_db.errors.MissingDependencyError` naming the
``[metrics]`` extra; without NVML, a GPU or a working NVML call, the GPU
fields are ``None`` (logged once at DEBUG), never an error.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._time import from_timestamp, parse_duration, time_arg
from .._validate import check_path
from ..db import policy as _policy
from ..db.migrations import execute_script, migration
from ..db.store import Store, db_op
from ..errors import DatabaseClosedError, MissingDependencyError

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = [
    "EXPORT_POLICY",
    "MAX_HISTORY_MINUTES",
    "MAX_SAMPLER_INTERVAL",
    "METRICS_FIELDS",
    "MIN_SAMPLER_INTERVAL",
    "PROCESS_FIELDS",
    "MetricsSampler",
    "MetricsStore",
    "sample_metrics",
]


#: How ``metrics_history`` is exported and imported (``db/policy.py``): samples
#: are appended; their times are Unix milliseconds.
EXPORT_POLICY: tuple[_policy.TablePolicy, ...] = (
    _policy.TablePolicy(
        "metrics_history",
        merge="append",
        ms_time_columns=("timestamp", "created_at"),
        json_columns=("gpus_json",),
    ),
)

logger = logging.getLogger("cyllama_db.metrics")

#: The seed design's value columns, in its order (``timestamp`` and ``gpus`` come besides).
METRICS_FIELDS = (
    "cpu_usage",
    "memory_usage",
    "disk_usage",
    "gpu_usage",
    "gpu_temperature",
    "gpu_memory_used",
    "gpu_memory_total",
    "gpu_power_usage",
    "active_models",
    "uptime",
    "requests_per_minute",
)
#: The sampled inference process's own figures (schema 8), stored beside the host's.
PROCESS_FIELDS = ("process_rss_bytes", "process_cpu_usage", "process_pid")
_STORED_FIELDS = METRICS_FIELDS + PROCESS_FIELDS
_INTEGER_FIELDS = frozenset({"active_models", "uptime", "process_rss_bytes", "process_pid"})
_GPU_FIELDS = (
    "gpu_usage",
    "gpu_temperature",
    "gpu_memory_used",
    "gpu_memory_total",
    "gpu_power_usage",
)
_ACCEPTED_KEYS = frozenset(_STORED_FIELDS) | {"timestamp", "gpus", "host"}
#: Longest ``host`` a sample may carry (a DNS name is at most 253 characters).
MAX_HOST_LENGTH = 255

_MIB = 1024 * 1024
# Unix milliseconds below this (1973-03-03) are almost surely Unix seconds
# passed by mistake; such a row would be stored in 1970 and dropped at once.
_MIN_TIMESTAMP_MS = 100_000_000_000
# How far ahead of the clock a sample may be stamped (clock skew between
# machines); later ones are mistakes that no retention delete would ever reach.
_MAX_FUTURE_MS = 86_400_000

#: Shortest sampler interval, seconds: a tighter loop would only hammer the database.
MIN_SAMPLER_INTERVAL = 0.1
#: Longest sampler interval, seconds (one day).
MAX_SAMPLER_INTERVAL = 86_400.0
#: Longest window :meth:`MetricsStore.history` accepts, minutes (about 1000 years).
MAX_HISTORY_MINUTES = 365_250 * 24 * 60

_INSERT_SQL = (
    "INSERT INTO metrics_history (timestamp, "
    + ", ".join(_STORED_FIELDS)
    + ", gpus_json, created_at, host) VALUES ("
    + ", ".join("?" * (len(_STORED_FIELDS) + 4))
    + ")"
)
#: The retention delete run by every insert: two ranges on ``idx_metrics_timestamp``
#: (older than the window, or stamped more than a day ahead, e.g. by an import).
RETENTION_SQL = "DELETE FROM metrics_history WHERE timestamp < ? OR timestamp > ?"
_COLUMNS_SQL = "SELECT id, timestamp, " + ", ".join(_STORED_FIELDS) + ", gpus_json, created_at, host FROM metrics_history"
_HISTORY_SQL = _COLUMNS_SQL + " WHERE timestamp >= ? AND timestamp <= ? ORDER BY timestamp, id"
_HOST_HISTORY_SQL = _COLUMNS_SQL + " WHERE timestamp >= ? AND timestamp <= ? AND host = ? ORDER BY timestamp, id"
_LATEST_SQL = _COLUMNS_SQL + " ORDER BY timestamp DESC, id DESC LIMIT 1"


def _history_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A stored row (``_HISTORY_SQL``'s columns) as the dict :meth:`MetricsStore.history` returns."""
    record: dict[str, Any] = {"id": row[0], "timestamp": _datetime_or_none(row[1]), "timestamp_ms": row[1]}
    record.update(zip(_STORED_FIELDS, row[2:-3], strict=True))
    try:
        record["gpus"] = json.loads(row[-3]) if row[-3] else []
    except ValueError:
        record["gpus"] = []
    record["created_at"] = _datetime_or_none(row[-2])
    record["host"] = row[-1]
    return record


def _check_host(host: Any, what: str) -> str:
    if not isinstance(host, str):
        raise TypeError(f"{what} must be a host name (str), got {type(host).__name__}")
    if not host or len(host) > MAX_HOST_LENGTH or not host.isprintable():
        raise ValueError(
            f"{what} must be 1 to {MAX_HOST_LENGTH} printable characters (a host name), got {host!r}"
        )
    return host


@migration(6, "metrics history")
def _create_metrics_history(conn: sqlite3.Connection) -> None:
    # The seed's columns plus gpus_json (every GPU's readings). The seed's
    # index on created_at is left out: nothing queries by it (retention is a
    # range on timestamp) and each index costs every 1 Hz insert a b-tree write.
    execute_script(
        conn,
        """
        CREATE TABLE IF NOT EXISTS metrics_history (
            id INTEGER PRIMARY KEY,
            timestamp INTEGER NOT NULL,
            cpu_usage REAL,
            memory_usage REAL,
            disk_usage REAL,
            gpu_usage REAL,
            gpu_temperature REAL,
            gpu_memory_used REAL,
            gpu_memory_total REAL,
            gpu_power_usage REAL,
            active_models INTEGER,
            uptime INTEGER,
            requests_per_minute REAL,
            gpus_json TEXT,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_metrics_timestamp ON metrics_history(timestamp);
        """,
    )


@migration(8, "observability: stats totals, rollup latency histogram, cache evictions, process metrics")
def _add_process_columns(conn: sqlite3.Connection) -> None:
    # The sampled process's own memory and CPU, next to the host's (this
    # store's part of version 8; the statistics' part is in stats.py).
    for statement in (
        "ALTER TABLE metrics_history ADD COLUMN process_rss_bytes INTEGER",
        "ALTER TABLE metrics_history ADD COLUMN process_cpu_usage REAL",
        "ALTER TABLE metrics_history ADD COLUMN process_pid INTEGER",
    ):
        conn.execute(statement)


# The PostgreSQL part of version 6: the table in its current shape (version 8's
# process columns included), BIGINT millisecond times and identity id.
@migration(6, "metrics history", engine="postgresql")
def _create_metrics_history_pg(conn: Any) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS metrics_history (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            timestamp BIGINT NOT NULL,
            cpu_usage DOUBLE PRECISION,
            memory_usage DOUBLE PRECISION,
            disk_usage DOUBLE PRECISION,
            gpu_usage DOUBLE PRECISION,
            gpu_temperature DOUBLE PRECISION,
            gpu_memory_used DOUBLE PRECISION,
            gpu_memory_total DOUBLE PRECISION,
            gpu_power_usage DOUBLE PRECISION,
            active_models BIGINT,
            uptime BIGINT,
            requests_per_minute DOUBLE PRECISION,
            gpus_json TEXT,
            created_at BIGINT NOT NULL,
            process_rss_bytes BIGINT,
            process_cpu_usage DOUBLE PRECISION,
            process_pid BIGINT
        );
        CREATE INDEX IF NOT EXISTS idx_metrics_timestamp ON metrics_history(timestamp);
        """
    )


@migration(11, "metrics host")
def _add_host_column(conn: sqlite3.Connection) -> None:
    # The host that took each sample, so several machines' samples can be told
    # apart (NULL in rows from before: one machine's). The readable view shows it.
    from .views import recreate_metrics_view

    conn.execute("ALTER TABLE metrics_history ADD COLUMN host TEXT")
    recreate_metrics_view(conn)


@migration(11, "metrics host", engine="postgresql")
def _add_host_column_pg(conn: Any) -> None:
    # Version 6's table (below) has no host column, as SQLite's had none then.
    conn.execute("ALTER TABLE metrics_history ADD COLUMN IF NOT EXISTS host TEXT")


# -- validation ----------------------------------------------------------------------------


def _real(value: Any, name: str, expected: str) -> float:
    """``value`` as a float; TypeError naming ``name`` unless it is a real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # an int too big for a C double: every range check rejects inf
        return math.inf


def _number(key: str, value: Any) -> float | int | None:
    if value is None:
        return None
    number = _real(value, f"metrics value for {key!r}", "a number or None")
    if not math.isfinite(number):
        raise ValueError(f"metrics value for {key!r} must be finite, got {value!r}")
    if key not in _INTEGER_FIELDS:
        return number
    # INTEGER columns (counts, whole seconds) get a rounded int, so 3599.8 s
    # of uptime reads back as 3600 rather than failing; ints stay exact.
    result = int(value) if isinstance(value, numbers.Integral) else round(number)
    if not -(2**63) <= result < 2**63:
        raise ValueError(f"metrics value for {key!r} is out of SQLite's integer range: {value!r}")
    return result


def _timestamp_ms(value: Any, now_ms: int) -> int:
    if isinstance(value, datetime):
        ms = round(value.timestamp() * 1000)
    else:
        number = _real(value, "metrics 'timestamp'", "Unix milliseconds (int) or a datetime")
        if not math.isfinite(number) or value < _MIN_TIMESTAMP_MS:
            raise ValueError(
                f"metrics 'timestamp' {value!r} is not Unix milliseconds (looks like seconds or "
                "is out of range); pass int(time.time() * 1000) or a datetime"
            )
        ms = int(value) if isinstance(value, numbers.Integral) else round(number)
    if ms > now_ms + _MAX_FUTURE_MS:
        raise ValueError(
            f"metrics 'timestamp' {value!r} is more than a day in the future; pass "
            "int(time.time() * 1000), a datetime, or leave it out for now"
        )
    return ms


def _datetime_or_none(ms: Any) -> datetime | None:
    """Stored Unix ms as a datetime; None for a value no datetime can hold."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    try:
        return from_timestamp(ms / 1000)
    except (ValueError, OverflowError, OSError):
        return None


def _gpus_json(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(g, Mapping) for g in value):
        raise TypeError(
            "metrics value for 'gpus' must be a list of dicts (one per GPU), "
            f"got {type(value).__name__}"
        )
    if not value:
        return None
    try:
        return json.dumps([dict(g) for g in value], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metrics value for 'gpus' is not JSON-serialisable: {exc}") from exc


def _check_sample(sample: Any) -> Mapping[str, Any]:
    if not isinstance(sample, Mapping):
        raise TypeError(
            f"save_metrics(sample) takes a dict of metrics, got {type(sample).__name__}"
        )
    unknown = sorted(str(k) for k in sample if k not in _ACCEPTED_KEYS)
    if unknown:
        raise ValueError(
            f"unknown metrics key(s) {', '.join(map(repr, unknown))}; "
            f"accepted keys: timestamp, gpus, host, {', '.join(_STORED_FIELDS)}"
        )
    return sample


def _check_process(process: Any) -> int | str | None:
    if process is not None and process != "self" and (
        isinstance(process, bool) or not isinstance(process, int) or process <= 0
    ):
        raise TypeError(f"process must be a pid (a positive int), 'self' or None, got {process!r}")
    return process


def _check_interval(interval: Any) -> float:
    value = _real(interval, "interval", "a number of seconds")
    if not MIN_SAMPLER_INTERVAL <= value <= MAX_SAMPLER_INTERVAL:
        raise ValueError(
            f"interval must be {MIN_SAMPLER_INTERVAL:g} to {MAX_SAMPLER_INTERVAL:g} seconds, "
            f"got {interval!r}"
        )
    return value


def _ms(seconds: float) -> int:
    """Unix seconds as the table's milliseconds, clamped to SQLite's 64-bit integers."""
    return int(max(min(seconds * 1000, 2.0**62), -(2.0**62)))


def _check_minutes(minutes: Any) -> float:
    if isinstance(minutes, timedelta):
        minutes = minutes.total_seconds() / 60
    elif isinstance(minutes, str):
        # A duration with its unit ("1h", "90m", "7d"); a bare number of
        # minutes as text would read as seconds elsewhere, so it is refused.
        text = minutes.strip()
        if not text or text[-1].isdigit():
            raise TypeError(
                f"minutes must be a number of minutes, a timedelta or text with a unit such as "
                f"'90m', '1h' or '7d', got the str {minutes!r}"
            )
        try:
            minutes = parse_duration(text).total_seconds() / 60
        except ValueError as exc:
            raise ValueError(f"minutes={minutes!r} is not a duration: {exc}") from None
    value = _real(minutes, "minutes", "a number, a timedelta or text such as '1h'")
    if not 0 < value <= MAX_HISTORY_MINUTES:  # also False for nan
        raise ValueError(
            f"minutes must be a positive number up to {MAX_HISTORY_MINUTES} (about 1000 years), "
            f"got {minutes!r}"
        )
    return value


# -- the store -----------------------------------------------------------------------------


_host: str | None = None


def _this_host() -> str:
    """This machine's name, asked once per process (a system call per sample otherwise)."""
    global _host
    if _host is None:
        _host = socket.gethostname()
    return _host


class MetricsStore(Store):
    """Host and process samples: ``db.metrics.record``, ``history``, ``start_sampler``.

    The flat ``db.save_metrics`` / ``get_metrics_history`` /
    ``start_metrics_sampler`` are the same methods.
    """

    name = "metrics"
    tables = ("metrics_history",)
    export_policy = EXPORT_POLICY

    def __init__(self, db: CyllamaDB) -> None:
        super().__init__(db)
        self._samplers: set[MetricsSampler] = set()
        self._lock = threading.Lock()
        # PostgreSQL: the new id comes from RETURNING, not lastrowid (chosen at open()).
        self._returning = False

    def open(self) -> None:
        self._returning = self.backend.name != "sqlite"

    def counts(self, conn: sqlite3.Connection) -> dict[str, Any]:
        return {"metrics_samples": conn.execute("SELECT COUNT(*) FROM metrics_history").fetchone()[0]}

    def close(self) -> None:
        # Stop samplers before the connections close, so none is cut off in
        # the middle of a write (a sampler that outlives its join timeout
        # exits on its next DatabaseClosedError).
        with self._lock:
            samplers = list(self._samplers)
        for sampler in samplers:
            sampler.stop()

    def register_sampler(self, sampler: MetricsSampler, running: bool) -> None:
        """Note that ``sampler`` started (``running``) or stopped: ``close()`` stops the running ones."""
        with self._lock:
            if running:
                self._samplers.add(sampler)
            else:
                self._samplers.discard(sampler)

    @db_op()
    def record(self, sample: Mapping[str, Any]) -> int | None:
        """Store one sample; return its row id (``None`` when the database is disabled).

        ``sample`` is a dict with any of :data:`METRICS_FIELDS` and
        :data:`PROCESS_FIELDS` (missing ones are
        stored as NULL), optionally ``timestamp`` (Unix milliseconds or a
        datetime; default now), ``gpus`` (a list of per-GPU dicts, stored
        as JSON) and ``host`` (the machine that took it; default this one's
        ``socket.gethostname()``).  :func:`sample_metrics` returns exactly
        such a dict.  Rows older than ``settings.metrics_retention`` are
        deleted in the same transaction (an indexed range delete); on a
        database several machines share, that is every machine's rows.

        Raises:
            TypeError: ``sample`` is not a dict, or a value is not a number/None.
            ValueError: an unknown key, a non-finite value, a timestamp that
                is not Unix milliseconds or is more than a day in the future,
                or an empty or unprintable ``host``.
        """
        _check_sample(sample)
        raw_host = sample.get("host")
        host = _this_host() if raw_host is None else _check_host(raw_host, "metrics 'host'")
        values = [_number(key, sample.get(key)) for key in _STORED_FIELDS]
        gpus_json = _gpus_json(sample.get("gpus"))
        now_ms = round(self.clock() * 1000)
        raw_ts = sample.get("timestamp")
        timestamp = now_ms if raw_ts is None else _timestamp_ms(raw_ts, now_ms)
        cutoff = now_ms - round(self.settings.metrics_retention.total_seconds() * 1000)
        with self.pool.transaction() as conn:
            params = (timestamp, *values, gpus_json, now_ms, host)
            if self._returning:
                row_id = int(conn.execute(_INSERT_SQL + " RETURNING id", params).fetchone()[0])
            else:
                row_id = int(conn.execute(_INSERT_SQL, params).lastrowid or 0)
            conn.execute(RETENTION_SQL, (cutoff, now_ms + _MAX_FUTURE_MS))
        return row_id

    @db_op(empty=list)
    def history(
        self,
        minutes: float | timedelta | str = 10,
        *,
        since: datetime | timedelta | float | str | None = None,
        until: datetime | timedelta | float | str | None = None,
        host: str | None = None,
    ) -> list[dict[str, Any]]:
        """The samples of the last ``minutes`` minutes, oldest first.

        ``minutes`` is a number of minutes, a timedelta or duration text with
        its unit (``"1h"``, ``"90m"``, ``"7d"``). ``since`` (which then
        replaces ``minutes``) and ``until`` take what every ``since`` of the
        API takes: a datetime, Unix seconds, a timedelta or duration text
        meaning "that long ago" (``since="2h"``), or ISO-8601 text.
        ``host`` keeps only the samples that machine took (its
        ``socket.gethostname()``); by default every machine's come back.

        Each row is a plain dict: ``id``, ``timestamp`` (aware UTC datetime),
        ``timestamp_ms`` (the stored Unix milliseconds, for JSON), the
        :data:`METRICS_FIELDS` and :data:`PROCESS_FIELDS` (``None`` where not
        measured), ``gpus`` (list of
        per-GPU dicts, ``[]`` if none), ``created_at`` (datetime, ``None``
        if the stored value is not a usable time) and ``host`` (the machine
        that took it; ``None`` for samples stored before schema 11).  Rows stamped more than a
        day ahead of the clock are left out (the next insert deletes them).

        Raises:
            TypeError: ``minutes`` is not a number, or ``host`` not a str.
            ValueError: ``minutes`` is not positive, not finite or more than
                :data:`MAX_HISTORY_MINUTES` (about 1000 years).
        """
        window = _check_minutes(minutes)
        if host is not None:
            _check_host(host, "host")
        now = self.clock()
        now_ms = round(now * 1000)
        if since is None:
            since_ms = now_ms - round(window * 60_000)
        else:
            since_ms = _ms(time_arg(since, "since", now))
        end_ms = now_ms + _MAX_FUTURE_MS
        if until is not None:
            end_ms = min(end_ms, _ms(time_arg(until, "until", now)) - 1)  # until is excluded
        with self.pool.read() as conn:
            if host is None:
                rows = conn.execute(_HISTORY_SQL, (since_ms, end_ms)).fetchall()
            else:
                rows = conn.execute(_HOST_HISTORY_SQL, (since_ms, end_ms, host)).fetchall()
        history = []
        for row in rows:
            record = _history_row(row)
            # Rows come from other processes and imports too: one that no
            # datetime can hold is skipped rather than failing the whole history.
            if record["timestamp"] is None:
                logger.debug("metrics_history row %s has an unusable timestamp %r", row[0], row[1])
                continue
            history.append(record)
        return history

    @db_op()
    def latest(self) -> dict[str, Any] | None:
        """The newest sample (by its ``timestamp``), or ``None`` if there is none.

        The same dict as a :meth:`history` row (``timestamp`` is ``None`` if
        the stored value is not a usable time; ``timestamp_ms`` is what is
        stored). One indexed read, for scrapes (:mod:`cyllama_db.prometheus`).
        """
        with self.pool.read() as conn:
            row = conn.execute(_LATEST_SQL).fetchone()
        return None if row is None else _history_row(row)

    def start_sampler(
        self,
        interval: float = 1.0,
        *,
        nvml: Any = None,
        disk_path: str | os.PathLike[str] | None = None,
        process: int | str | None = None,
    ) -> MetricsSampler:
        """Start a :class:`MetricsSampler` saving one sample every ``interval`` seconds.

        ``process``: whose RSS and CPU are sampled (a pid, ``"self"``, or
        None for the inference process; see :func:`sample_metrics`).

        The sampler stops with ``stop()``, at the end of a ``with`` block, or
        when this database is closed.  On a disabled database it is returned
        without starting (no thread, no cost).
        """
        return MetricsSampler(self.db, interval, nvml=nvml, disk_path=disk_path, process=process).start()


# -- sampling ------------------------------------------------------------------------------


def _import_psutil() -> Any:
    try:
        import psutil
    except ImportError as exc:
        raise MissingDependencyError(
            "sampling metrics needs psutil, which is not installed: "
            "pip install 'cyllama-db[metrics]' (or pip install psutil)"
        ) from exc
    return psutil


_cpu_state = threading.local()


def _prime_cpu(psutil: Any) -> None:
    """Start this thread's CPU-percent window (psutil's first reading is meaningless)."""
    psutil.cpu_percent(interval=None)
    _cpu_state.primed = True


def _cpu_percent(psutil: Any) -> float:
    if getattr(_cpu_state, "primed", False):
        return float(psutil.cpu_percent(interval=None))
    # A one-off sample in a fresh thread: measure over a short blocking
    # window, which also primes the non-blocking reading for next time.
    value = float(psutil.cpu_percent(interval=0.1))
    _cpu_state.primed = True
    return value


class _GPUReader:
    """Reads every GPU through one NVML module; initialised once, failures logged once."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self._lock = threading.Lock()
        self._handles: list[Any] | None = None
        self._unavailable = nvml is None
        self._logged: set[str] = set()
        if nvml is None:
            self._debug_once("import", "pynvml (nvidia-ml-py) is not installed; GPU metrics are None")

    def _debug_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.debug(message, *args)

    def _init(self) -> None:
        nvml = self.nvml
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            self._unavailable = True
            self._debug_once("init", "NVML unavailable (%s: %s); GPU metrics are None", type(exc).__name__, exc)
            return
        if not self._handles:
            self._debug_once("none", "NVML found no GPU; GPU metrics are None")

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            self._debug_once(
                f"call:{what}", "NVML %s failed (%s: %s); that reading is None", what, type(exc).__name__, exc
            )
            return None

    def read(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._handles is None and not self._unavailable:
                self._init()
            handles = [] if self._unavailable else list(self._handles or ())
        return [self._read_one(index, handle) for index, handle in enumerate(handles)]

    def _read_one(self, index: int, handle: Any) -> dict[str, Any]:
        nvml = self.nvml
        name = self._call("nvmlDeviceGetName", nvml.nvmlDeviceGetName, handle)
        if isinstance(name, bytes):  # nvidia-ml-py < 11.515 returns bytes
            name = name.decode("utf-8", "replace")
        util = self._call("nvmlDeviceGetUtilizationRates", nvml.nvmlDeviceGetUtilizationRates, handle)
        temp = self._call(
            "nvmlDeviceGetTemperature",
            nvml.nvmlDeviceGetTemperature,
            handle,
            getattr(nvml, "NVML_TEMPERATURE_GPU", 0),
        )
        memory = self._call("nvmlDeviceGetMemoryInfo", nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._call("nvmlDeviceGetPowerUsage", nvml.nvmlDeviceGetPowerUsage, handle)
        return {
            "index": index,
            "name": name if isinstance(name, str) else None,
            "gpu_usage": _as_float(getattr(util, "gpu", None)),
            "gpu_temperature": _as_float(temp),
            "gpu_memory_used": _scaled(getattr(memory, "used", None), _MIB),
            "gpu_memory_total": _scaled(getattr(memory, "total", None), _MIB),
            "gpu_power_usage": _scaled(power_mw, 1000),
        }


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _scaled(value: Any, divisor: float) -> float | None:
    number = _as_float(value)
    return None if number is None else number / divisor


_DEFAULT_NVML = object()
_readers: dict[int, tuple[Any, _GPUReader]] = {}
_readers_lock = threading.Lock()


def _reader_for(nvml: Any) -> _GPUReader:
    """The shared reader of ``nvml`` (``_DEFAULT_NVML``: pynvml, imported on first use)."""
    key = id(nvml)
    with _readers_lock:
        entry = _readers.get(key)
        if entry is not None and entry[0] is nvml:
            return entry[1]
        module = nvml
        if nvml is _DEFAULT_NVML:
            try:
                import pynvml
            except ImportError:
                module = None
            else:
                module = pynvml
        reader = _GPUReader(module)
        # The key object is kept alive in the entry, so its id is not reused.
        _readers[key] = (nvml, reader)
        return reader


def _loaded_model_paths() -> list[str]:
    # A model loaded through cyllama_db.llm means cyllama_db.llm.shared was
    # imported; if it was not, nothing was loaded and importing it now
    # (with whatever it pulls in) would be wasted.
    module = sys.modules.get("cyllama_db.llm.shared")
    fn = getattr(module, "loaded_model_paths", None)
    if fn is None:
        return []
    try:
        paths: Iterable[Any] = fn()
        return [os.fspath(p) for p in paths]
    except Exception as exc:
        logger.debug("loaded_model_paths() failed: %s", exc)
        return []


# psutil.Process objects by pid, per sampling thread: cpu_percent() measures
# since the previous call on the same object.
_process_state = threading.local()

#: The metadata key under which the statistics store notes the process that
#: recorded the latest real generation ("<pid> <unix seconds>").
INFERENCE_PROCESS_KEY = "inference_process"


def _inference_pid(db: CyllamaDB | None, psutil: Any) -> int | None:
    """The process to report RSS/CPU for: this one if it loaded a model through
    cyllama_db, else the one that recorded the latest real generation (if alive)."""
    if _loaded_model_paths():
        return os.getpid()
    if db is None:
        return None
    value = db.metadata.get(INFERENCE_PROCESS_KEY)
    if value is None:
        return None
    try:
        pid_text, noted_text = str(value).split()
        pid, noted = int(pid_text), float(noted_text)
        # A process started after the note cannot be the one that wrote it (pid reuse).
        if psutil.Process(pid).create_time() > noted + 1:
            return None
    except Exception as exc:  # gone, unreadable, or malformed
        logger.debug("inference process %r not available: %s", value, exc)
        return None
    return pid


def _process_figures(psutil: Any, pid: int | None) -> dict[str, Any]:
    """RSS bytes and CPU percent (of one core; may exceed 100) of ``pid``."""
    empty = {"process_rss_bytes": None, "process_cpu_usage": None, "process_pid": None}
    if pid is None:
        return empty
    cache: dict[int, Any] = getattr(_process_state, "processes", None) or {}
    _process_state.processes = cache
    try:
        proc: Any = cache.get(pid)
        first = proc is None
        if first:
            cache.clear()  # one inference process at a time
            proc = cache[pid] = psutil.Process(pid)
            proc.cpu_percent(interval=None)  # the first reading is meaningless
        with proc.oneshot():
            rss = int(proc.memory_info().rss)
            cpu = None if first else float(proc.cpu_percent(interval=None))
    except Exception as exc:
        cache.pop(pid, None)
        logger.debug("cannot read process %s: %s", pid, exc)
        return empty
    return {"process_rss_bytes": rss, "process_cpu_usage": cpu, "process_pid": pid}


def _norm_path(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def _running_models(db: CyllamaDB) -> list[str | None]:
    """The ``model_path`` of every registry model whose status is ``running``."""
    return list(db.models.running_paths())


def _library_figures(db: CyllamaDB | None, now: float) -> tuple[list[str | None], int | None, float | None]:
    """Registry models running, uptime seconds and requests in the last minute, from the database."""
    if db is None:
        return [], None, None
    running: list[str | None] = []
    uptime = None
    rpm = None
    start = db.metadata.get("server_start_time")
    if start is not None:
        try:
            uptime = max(0, round(now - int(start) / 1000))
        except ValueError:
            logger.debug("server_start_time metadata is not Unix ms: %r", start)
    # Opening a CyllamaDB migrates every store's tables into the file, so
    # these only fail on a file edited by hand: then the figure is left out
    # (no per-sample schema check: this runs every second).
    try:
        running = _running_models(db)
    except DatabaseClosedError:
        raise
    except Exception as exc:
        logger.debug("no running models from the registry: %s", exc)
    try:
        rpm = float(db.stats.count(since=now - 60))
    except DatabaseClosedError:
        raise
    except Exception as exc:
        logger.debug("no requests per minute from the statistics: %s", exc)
    return running, uptime, rpm


def sample_metrics(
    db: CyllamaDB | None = None,
    *,
    nvml: Any = None,
    disk_path: str | os.PathLike[str] | None = None,
    process: int | str | None = None,
) -> dict[str, Any]:
    """Take one sample of this machine, ready for :meth:`MetricsStore.record` (``db.save_metrics``).

    Args:
        db: the database whose ``uptime`` (since its ``server_start_time``),
            running registry models and ``requests_per_minute`` (rows of its
            ``stats`` table in the last 60 s) are included. ``None``: those
            come from this process only (``uptime`` and
            ``requests_per_minute`` are ``None``).
        nvml: an NVML module to read GPUs with (default: ``pynvml`` from
            ``nvidia-ml-py``, imported here); tests pass a fake.
        disk_path: the filesystem whose use is ``disk_usage`` (default: the
            database file's, else (in memory, or on a PostgreSQL server) the
            root of the current drive).
        process: whose RSS and CPU are ``process_rss_bytes`` and
            ``process_cpu_usage``: a pid, ``"self"``, or ``None`` (default)
            for the inference process: this one if it has loaded a model
            through cyllama-db, else the live process that recorded the
            database's latest real generation (none: the fields are None).

    Returns:
        ``timestamp`` (Unix ms), every :data:`METRICS_FIELDS` value (GPU
        fields from the first GPU, ``None`` without one) and ``gpus``, a list
        with every GPU's readings (``index``, ``name`` and the five GPU fields).

    ``cpu_usage`` covers the time since this thread's previous sample; the
    first call in a thread measures over 0.1 s instead (it blocks that long).

    Raises:
        MissingDependencyError: psutil is not installed (``pip install 'cyllama-db[metrics]'``).
        DatabaseClosedError: ``db`` is closed.
    """
    psutil = _import_psutil()
    _check_process(process)
    if db is not None and not isinstance(getattr(db, "metrics", None), MetricsStore):
        raise TypeError(f"db must be a CyllamaDB or None, got {type(db).__name__}")
    if disk_path is not None:
        disk_path = check_path(disk_path, "disk_path")
    clock = db.clock if db is not None else time.time
    source = None  # the database the library's figures come from
    if db is not None and db.enabled:
        db.pool  # noqa: B018 - raises DatabaseClosedError if closed
        source = db
    if disk_path is None:
        # A server's database (PostgreSQL) has no file here: this machine's root drive.
        if db is not None and db.enabled and db.path != ":memory:" and db.backend.name == "sqlite":
            disk_path = os.path.dirname(db.path)
        else:
            disk_path = os.path.abspath(os.sep)

    sample: dict[str, Any] = {
        "cpu_usage": _cpu_percent(psutil),
        "memory_usage": float(psutil.virtual_memory().percent),
        "disk_usage": float(psutil.disk_usage(os.fspath(disk_path)).percent),
    }

    gpus = _reader_for(_DEFAULT_NVML if nvml is None else nvml).read()
    first = gpus[0] if gpus else {}
    for field in _GPU_FIELDS:
        sample[field] = first.get(field)

    now = clock()
    running, uptime, rpm = _library_figures(source, now)
    loaded = {_norm_path(p) for p in _loaded_model_paths()}
    # A registry entry for a model this process also loaded counts once.
    extra = [p for p in running if p is None or _norm_path(p) not in loaded]
    sample["active_models"] = len(loaded) + len(extra)
    sample["uptime"] = uptime
    sample["requests_per_minute"] = rpm
    pid = os.getpid() if process == "self" else process if isinstance(process, int) else None
    if process is None:
        try:
            pid = _inference_pid(source, psutil)
        except DatabaseClosedError:
            raise
        except Exception as exc:
            logger.debug("no inference process from the database: %s", exc)
    sample.update(_process_figures(psutil, pid))
    sample["gpus"] = gpus
    return {"timestamp": round(now * 1000), **sample}


# -- the sampler thread --------------------------------------------------------------------


def _next_deadline(previous: float, now: float, interval: float) -> float:
    """The first tick of the grid ``previous + k * interval`` (k >= 1) that is after ``now``.

    Deadlines are computed from the grid rather than from when the last
    sample finished, so the time a sample takes does not accumulate as drift;
    ticks missed while the machine was busy are skipped, not made up in a burst.
    """
    deadline = previous + interval
    if deadline <= now:
        deadline = previous + (math.floor((now - previous) / interval) + 1) * interval
    return deadline


class MetricsSampler:
    """A daemon thread that saves :func:`sample_metrics` every ``interval`` seconds.

    ::

        with MetricsSampler(db, interval=1.0):
            serve()                      # samples are saved in the background

    ``start()`` returns the sampler; the first sample is saved one interval
    after it (psutil's CPU reading needs a window).  A sample that fails is
    logged (WARNING the first time a given error occurs, DEBUG after) and the
    sampler goes on; it stops by itself when the database is closed, and
    ``db.close()`` stops it.

    Attributes:
        samples_taken: samples saved so far.
        errors: samples that failed.
        last_error: the latest failure, or None.
    """

    def __init__(
        self,
        db: CyllamaDB,
        interval: float = 1.0,
        *,
        nvml: Any = None,
        disk_path: str | os.PathLike[str] | None = None,
        process: int | str | None = None,
    ) -> None:
        if not isinstance(getattr(db, "metrics", None), MetricsStore):
            raise TypeError(f"db must be a CyllamaDB, got {type(db).__name__}")
        self.db = db
        self.interval = _check_interval(interval)
        self.nvml = nvml
        self.disk_path = None if disk_path is None else check_path(disk_path, "disk_path")
        self.process = _check_process(process)  # see sample_metrics(process=...)
        self.samples_taken = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._progress = threading.Condition()
        self._lock = threading.Lock()
        self._cpu_seconds = 0.0
        self._reported: set[str] = set()

    # -- control ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def cpu_seconds(self) -> float:
        """CPU time the sampling thread has used so far (its own thread clock)."""
        return self._cpu_seconds

    def start(self) -> MetricsSampler:
        """Start sampling (a no-op if running, or if the database is disabled); return self.

        Raises:
            MissingDependencyError: psutil is not installed.
            DatabaseClosedError: the database is closed.
        """
        with self._lock:
            if self.running:
                return self
            if not self.db.enabled:
                logger.debug("database disabled: metrics sampler not started")
                return self
            self.db.pool  # noqa: B018 - raises DatabaseClosedError when closed
            _import_psutil()  # fail here, in the caller, not once per tick
            self._stop_event = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stop_event,),
                name="cyllama-metrics-sampler",
                daemon=True,
            )
            self.db.metrics.register_sampler(self, True)
            # The sampling process is the "server" whose uptime is reported.
            self.db.metadata.mark_server_start()
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop sampling and wait (up to ``timeout`` seconds) for the thread to end.

        Calling it twice, or on a sampler never started, is harmless.
        """
        with self._lock:
            thread = self._thread
            self._stop_event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("metrics sampler did not stop within %s s", timeout)
        self.db.metrics.register_sampler(self, False)

    def wait_for_samples(self, count: int, timeout: float | None = None) -> bool:
        """Block until ``samples_taken >= count`` (or the sampler stopped); return whether reached."""
        with self._progress:
            self._progress.wait_for(
                lambda: self.samples_taken >= count or not self.running, timeout
            )
            return self.samples_taken >= count

    def __enter__(self) -> MetricsSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"MetricsSampler(interval={self.interval}, {state}, samples_taken={self.samples_taken})"

    # -- the thread ------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        cpu_start = time.thread_time()
        try:
            _prime_cpu(_import_psutil())
            deadline = time.monotonic()
            while True:
                deadline = _next_deadline(deadline, time.monotonic(), self.interval)
                if stop.wait(max(0.0, deadline - time.monotonic())):
                    break
                if not self._tick():
                    break
                self._cpu_seconds = time.thread_time() - cpu_start
        finally:
            self._cpu_seconds = time.thread_time() - cpu_start
            with self._progress:
                self._progress.notify_all()

    def _tick(self) -> bool:
        """Take and save one sample; False when the sampler should end (database closed)."""
        try:
            # Looked up at call time so tests can replace the module's function.
            sample = sample_metrics(self.db, nvml=self.nvml, disk_path=self.disk_path, process=self.process)
            self.db.metrics.record(sample)
        except DatabaseClosedError:
            logger.debug("database closed: metrics sampler stops")
            return False
        except Exception as exc:
            if getattr(self.db, "closed", False):
                # Closed between our check and the write (e.g. sqlite3's
                # "Cannot operate on a closed database").
                logger.debug("database closed under the metrics sampler: %s", exc)
                return False
            self.errors += 1
            self.last_error = exc
            key = f"{type(exc).__name__}: {exc}"
            if key in self._reported:
                logger.debug("metrics sample failed again: %s", key)
            else:
                self._reported.add(key)
                logger.warning("metrics sample failed (sampler goes on): %s", key, exc_info=True)
        else:
            self.samples_taken += 1
        with self._progress:
            self._progress.notify_all()
        return True
