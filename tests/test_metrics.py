from __future__ import annotations

import logging
import math
import os
import sqlite3
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cyllama_db
from cyllama_db import CyllamaDB, DatabaseClosedError, MetricsSampler, MissingDependencyError
from cyllama_db.stores import metrics as metrics_mod
from cyllama_db.stores.metrics import (
    METRICS_FIELDS,
    PROCESS_FIELDS,
    RETENTION_SQL,
    _next_deadline,
    sample_metrics,
)

T = 1_700_000_000.0  # an arbitrary "now" for the injected clock
T_MS = int(T * 1000)
MINUTE_MS = 60_000
DAY_MS = 1440 * MINUTE_MS

SEED_COLUMNS = [
    "id",
    "timestamp",
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
    "created_at",
]


@pytest.fixture
def thread_errors() -> Iterator[list[BaseException]]:
    """Exceptions that escaped any thread during the test (must stay empty)."""
    errors: list[BaseException] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        errors.append(args.exc_value)  # type: ignore[arg-type]

    threading.excepthook = hook
    yield errors
    threading.excepthook = previous


def _row_count(db: CyllamaDB) -> int:
    with db.pool.read() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM metrics_history").fetchone()[0])


def _full_sample(**overrides: Any) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "cpu_usage": 75.5,
        "memory_usage": 62.3,
        "disk_usage": 40.0,
        "gpu_usage": 88.2,
        "gpu_temperature": 72.0,
        "gpu_memory_used": 1024.0,
        "gpu_memory_total": 8192.0,
        "gpu_power_usage": 150.5,
        "active_models": 3,
        "uptime": 3600,
        "requests_per_minute": 42.0,
    }
    sample.update(overrides)
    return sample


# -- schema --------------------------------------------------------------------------------


def test_table_has_the_seed_columns_plus_gpus_json(any_db: CyllamaDB) -> None:
    with any_db.pool.read() as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(metrics_history)")]
        indexes = {r[1]: r for r in conn.execute("PRAGMA index_list(metrics_history)")}
        indexed = [r[2] for r in conn.execute("PRAGMA index_info(idx_metrics_timestamp)")]
    # Schema 8 appends the inference process's own figures after the seed's columns,
    # schema 11 the host that took the sample.
    assert columns[-4:] == ["process_rss_bytes", "process_cpu_usage", "process_pid", "host"]
    columns = columns[:-4]
    assert [c for c in columns if c != "gpus_json"] == SEED_COLUMNS
    assert "gpus_json" in columns
    assert "idx_metrics_timestamp" in indexes
    assert indexed == ["timestamp"]
    assert list(METRICS_FIELDS) == SEED_COLUMNS[2:-1]


# -- save / history ------------------------------------------------------------------------


def test_save_and_read_back(any_db: CyllamaDB) -> None:
    any_db.clock = lambda: T
    row_id = any_db.save_metrics(_full_sample())
    assert isinstance(row_id, int)
    [row] = any_db.get_metrics_history()
    assert row["id"] == row_id
    assert row["timestamp"] == datetime.fromtimestamp(T, tz=timezone.utc)
    assert row["timestamp_ms"] == T_MS
    assert row["created_at"] == datetime.fromtimestamp(T, tz=timezone.utc)
    assert {k: row[k] for k in METRICS_FIELDS} == _full_sample()
    assert type(row["active_models"]) is int and type(row["uptime"]) is int
    assert row["gpus"] == []


def test_missing_fields_are_stored_as_null(memory_db: CyllamaDB) -> None:
    memory_db.save_metrics({"cpu_usage": 10, "memory_usage": 20.5})
    [row] = memory_db.get_metrics_history()
    assert row["cpu_usage"] == 10.0 and row["memory_usage"] == 20.5
    assert all(row[k] is None for k in METRICS_FIELDS[2:])


def test_given_timestamp_ms_or_datetime(memory_db: CyllamaDB) -> None:
    memory_db.clock = lambda: T
    memory_db.save_metrics({"timestamp": T_MS - 5000, "cpu_usage": 1})
    memory_db.save_metrics({"timestamp": datetime.fromtimestamp(T - 2, tz=timezone.utc), "cpu_usage": 2})
    rows = memory_db.get_metrics_history()
    assert [r["timestamp_ms"] for r in rows] == [T_MS - 5000, T_MS - 2000]
    # created_at is when the row was written, whatever its sample time
    assert all(r["created_at"].timestamp() == T for r in rows)


def test_integer_columns_round_floats(memory_db: CyllamaDB) -> None:
    memory_db.save_metrics({"uptime": 3599.8, "active_models": 2.0})
    [row] = memory_db.get_metrics_history()
    assert row["uptime"] == 3600 and type(row["uptime"]) is int
    assert row["active_models"] == 2 and type(row["active_models"]) is int


reals = st.none() | st.floats(allow_nan=False, allow_infinity=False)
ints = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(
    values=st.fixed_dictionaries(
        {k: (ints if k in ("active_models", "uptime") else reals) for k in METRICS_FIELDS}
    ),
    age_ms=st.integers(min_value=0, max_value=9 * MINUTE_MS),
)
@settings(max_examples=60, deadline=None)
def test_round_trip(values: dict[str, Any], age_ms: int) -> None:
    with CyllamaDB(":memory:") as db:
        db.clock = lambda: T
        db.save_metrics({**values, "timestamp": T_MS - age_ms})
        [row] = db.get_metrics_history()
    assert {k: row[k] for k in METRICS_FIELDS} == values
    assert row["timestamp_ms"] == T_MS - age_ms


def test_history_window_and_order(any_db: CyllamaDB) -> None:
    any_db.clock = lambda: T
    # inserted out of order; two rows share a timestamp (then id order)
    for age_min, cpu in [(3, 3), (12, 12), (0, 0), (7, 7), (3, 33), (5.5, 5.5)]:
        any_db.save_metrics({"timestamp": T_MS - int(age_min * MINUTE_MS), "cpu_usage": cpu})
    assert [r["cpu_usage"] for r in any_db.get_metrics_history()] == [7, 5.5, 3, 33, 0]
    assert [r["cpu_usage"] for r in any_db.get_metrics_history(minutes=5)] == [3, 33, 0]
    assert [r["cpu_usage"] for r in any_db.get_metrics_history(minutes=0.5)] == [0]
    times = [r["timestamp"] for r in any_db.get_metrics_history()]
    assert times == sorted(times)


# -- retention -----------------------------------------------------------------------------


def test_retention_removes_rows_older_than_the_window(any_db: CyllamaDB) -> None:
    # rows written 11, 9 and 0 minutes before "now": the last insert deletes the first
    for age_min in (11, 9, 0):
        any_db.clock = lambda age=age_min: T - age * 60  # type: ignore[misc]
        any_db.save_metrics({"cpu_usage": float(age_min)})
    assert _row_count(any_db) == 2  # physically gone, not just filtered out
    assert [r["cpu_usage"] for r in any_db.get_metrics_history(minutes=60)] == [9.0, 0.0]


def test_retention_with_injected_timestamps(any_db: CyllamaDB) -> None:
    any_db.clock = lambda: T
    for age_min in (11, 9, 0):
        any_db.save_metrics({"timestamp": T_MS - age_min * MINUTE_MS, "cpu_usage": float(age_min)})
    with any_db.pool.read() as conn:
        left = [r[0] for r in conn.execute("SELECT cpu_usage FROM metrics_history ORDER BY timestamp")]
    assert left == [9.0, 0.0]


def test_retention_boundary_is_exclusive(memory_db: CyllamaDB) -> None:
    memory_db.clock = lambda: T
    memory_db.save_metrics({"timestamp": T_MS - 10 * MINUTE_MS, "cpu_usage": 1})
    memory_db.save_metrics({"timestamp": T_MS - 10 * MINUTE_MS - 1, "cpu_usage": 2})
    with memory_db.pool.read() as conn:
        assert [r[0] for r in conn.execute("SELECT cpu_usage FROM metrics_history")] == [1.0]


def test_retention_setting_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with CyllamaDB(":memory:", metrics_retention="2m") as db:
        db.clock = lambda: T
        for age_min in (3, 1):
            db.save_metrics({"timestamp": T_MS - age_min * MINUTE_MS})
        assert _row_count(db) == 1
    monkeypatch.setenv("CYLLAMA_METRICS_RETENTION", "1h")
    with CyllamaDB(":memory:") as db:
        assert db.settings.metrics_retention == timedelta(hours=1)
        db.clock = lambda: T
        for age_min in (61, 59, 11):
            db.save_metrics({"timestamp": T_MS - age_min * MINUTE_MS})
        assert _row_count(db) == 2


def test_retention_delete_is_an_indexed_range(any_db: CyllamaDB) -> None:
    any_db.clock = lambda: T
    for i in range(50):
        any_db.save_metrics({"timestamp": T_MS - i * 1000})
    statements: list[str] = []
    with any_db.pool.read() as conn:
        conn.set_trace_callback(statements.append)
    try:
        any_db.save_metrics({"cpu_usage": 1})
    finally:
        with any_db.pool.read() as conn:
            conn.set_trace_callback(None)
    deletes = [s for s in statements if s.lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 1, statements  # retention runs as part of every insert
    # the statement actually executed (values may be expanded by the trace)
    executed = deletes[0]
    assert executed.split("<")[0] == RETENTION_SQL.split("<")[0]
    with any_db.pool.read() as conn:
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN " + RETENTION_SQL, (T_MS - 10 * MINUTE_MS, T_MS + DAY_MS)
            )
        )
        expanded_plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN " + executed,
                (T_MS, T_MS) if "?" in executed else (),
            )
        )
    for p in (plan, expanded_plan):
        assert "USING" in p and "INDEX idx_metrics_timestamp" in p, p
        assert "SCAN" not in p, p


def test_history_query_uses_the_index_without_sorting(memory_db: CyllamaDB) -> None:
    with memory_db.pool.read() as conn:
        plan = " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + metrics_mod._HISTORY_SQL, (0, T_MS)))
    assert "INDEX idx_metrics_timestamp" in plan and "TEMP B-TREE" not in plan, plan


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "error", "match"),
    [
        ({"cpu": 1}, ValueError, "'cpu'"),
        ({"cpu_usage": 1, "bogus": 2, "other": 3}, ValueError, "'bogus', 'other'"),
        ({"cpu_usage": "75"}, TypeError, "'cpu_usage'.*str"),
        ({"active_models": True}, TypeError, "'active_models'"),
        ({"memory_usage": [1]}, TypeError, "'memory_usage'"),
        ({"gpu_usage": math.nan}, ValueError, "'gpu_usage'.*finite"),
        ({"disk_usage": math.inf}, ValueError, "'disk_usage'"),
        ({"requests_per_minute": 10**400}, ValueError, "'requests_per_minute'"),
        ({"uptime": 2**63}, ValueError, "'uptime'.*range"),
        ({"timestamp": T}, ValueError, "milliseconds"),  # seconds by mistake
        ({"timestamp": "now"}, TypeError, "'timestamp'"),
        ({"gpus": {"gpu_usage": 1}}, TypeError, "'gpus'"),
        ({"gpus": [{"name": object()}]}, TypeError, "'gpus'.*JSON"),
    ],
)
def test_bad_samples_raise_naming_the_key(
    memory_db: CyllamaDB, sample: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        memory_db.save_metrics(sample)
    assert _row_count(memory_db) == 0


@pytest.mark.parametrize(
    "timestamp",
    [T_MS + 10**15, 10**15, T_MS + 2 * DAY_MS,
     datetime.fromtimestamp(T + 2 * 86_400, tz=timezone.utc), 10**400],
)
def test_far_future_timestamp_is_rejected(memory_db: CyllamaDB, timestamp: Any) -> None:
    memory_db.clock = lambda: T
    with pytest.raises(ValueError, match="'timestamp'"):
        memory_db.save_metrics({"timestamp": timestamp})
    assert _row_count(memory_db) == 0
    assert memory_db.get_metrics_history() == []


def test_timestamp_up_to_a_day_ahead_is_clock_skew(memory_db: CyllamaDB) -> None:
    memory_db.clock = lambda: T
    memory_db.save_metrics({"timestamp": T_MS + DAY_MS, "cpu_usage": 1.0})
    assert [r["cpu_usage"] for r in memory_db.get_metrics_history()] == [1.0]


def test_history_survives_rows_no_datetime_can_hold(any_db: CyllamaDB) -> None:
    # save_metrics({'timestamp': 10**15}) used to store a year-33658 row that broke
    # get_metrics_history() for good and that retention never deleted; such rows
    # can still arrive by import or from another writer.
    any_db.clock = lambda: T
    any_db.save_metrics({"timestamp": T_MS - 1000, "cpu_usage": 1.0})
    with any_db.pool.transaction() as conn:
        for stamp in (10**15, 2**62, T_MS + 2 * DAY_MS):
            conn.execute(
                "INSERT INTO metrics_history (timestamp, cpu_usage, created_at) VALUES (?, 2.0, ?)",
                (stamp, T_MS),
            )
        conn.execute(  # a usable timestamp; unusable created_at and gpus_json
            "INSERT INTO metrics_history (timestamp, cpu_usage, gpus_json, created_at)"
            " VALUES (?, 3.0, '{bad', ?)",
            (T_MS - 500, 10**18),
        )
    rows = any_db.get_metrics_history()
    assert [r["cpu_usage"] for r in rows] == [1.0, 3.0]
    assert rows[1]["created_at"] is None and rows[1]["gpus"] == []
    # the next insert's retention delete removes the far-future rows too
    any_db.save_metrics({"cpu_usage": 4.0})
    with any_db.pool.read() as conn:
        stamps = [r[0] for r in conn.execute("SELECT timestamp FROM metrics_history ORDER BY id")]
    assert stamps == [T_MS - 1000, T_MS - 500, T_MS]


def test_sample_must_be_a_mapping(memory_db: CyllamaDB) -> None:
    with pytest.raises(TypeError, match="dict"):
        memory_db.save_metrics([("cpu_usage", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cpu_usage"):
        memory_db.save_metrics(cpu_usage=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("minutes", "error"),
    [(0, ValueError), (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
     (1e300, ValueError), (10**400, ValueError), (metrics_mod.MAX_HISTORY_MINUTES + 1, ValueError),
     ("10", TypeError), (True, TypeError)],
)
def test_bad_history_window(memory_db: CyllamaDB, minutes: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="minutes"):
        memory_db.get_metrics_history(minutes)


def test_disabled_and_closed(tmp_path: Path) -> None:
    off = CyllamaDB(tmp_path / "off.db", enabled=False)
    assert off.save_metrics(_full_sample()) is None
    assert off.get_metrics_history() == []
    sampler = off.start_metrics_sampler(0.1)
    assert not sampler.running
    sampler.stop()
    assert not (tmp_path / "off.db").exists()

    db = CyllamaDB(":memory:")
    db.close()
    with pytest.raises(DatabaseClosedError):
        db.save_metrics(_full_sample())
    with pytest.raises(DatabaseClosedError):
        db.get_metrics_history()
    with pytest.raises(DatabaseClosedError):
        db.start_metrics_sampler(0.1)


def test_db_stats_count_metrics_rows(any_db: CyllamaDB) -> None:
    assert any_db.get_db_stats()["metrics_samples"] == 0
    for _ in range(3):
        any_db.save_metrics({"cpu_usage": 1})
    assert any_db.get_db_stats()["metrics_samples"] == 3


# -- sample_metrics on this machine --------------------------------------------------------


def test_sample_of_this_machine(file_db: CyllamaDB) -> None:
    import gc

    from cyllama_db.llm import unload_models

    # No model loaded: the shared ones released, and an LLM an earlier test
    # left in a reference cycle (an exception's traceback) collected.
    unload_models()
    gc.collect()
    sample = sample_metrics(file_db)
    assert set(sample) == {*METRICS_FIELDS, *PROCESS_FIELDS, "timestamp", "gpus"}
    if not metrics_mod._loaded_model_paths():  # earlier tests in this process may have loaded one
        # Nothing generated and no model loaded: no inference process to report.
        assert all(sample[k] is None for k in PROCESS_FIELDS)
    for key in ("cpu_usage", "memory_usage", "disk_usage"):
        assert isinstance(sample[key], float) and 0 <= sample[key] <= 100, (key, sample[key])
    if not sample["gpus"]:  # no NVIDIA GPU here (the usual test machine)
        assert all(sample[k] is None for k in metrics_mod._GPU_FIELDS)
    else:
        assert sample["gpu_memory_total"] == sample["gpus"][0]["gpu_memory_total"]
    assert sample["active_models"] == 0
    assert isinstance(sample["uptime"], int) and sample["uptime"] >= 0
    assert abs(sample["timestamp"] / 1000 - file_db.clock()) < 60
    row_id = file_db.save_metrics(sample)
    [row] = file_db.get_metrics_history()
    assert row["id"] == row_id and row["cpu_usage"] == sample["cpu_usage"]


def test_sample_without_a_database() -> None:
    sample = sample_metrics()
    assert sample["uptime"] is None and sample["requests_per_minute"] is None
    assert 0 <= sample["disk_usage"] <= 100


def test_missing_psutil_names_the_extra(monkeypatch: pytest.MonkeyPatch, memory_db: CyllamaDB) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(MissingDependencyError, match=r"cyllama-db\[metrics\]") as info:
        sample_metrics(memory_db)
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, cyllama_db.CyllamaDBError)
    with pytest.raises(MissingDependencyError, match=r"\[metrics\]"):
        memory_db.start_metrics_sampler(0.1)  # fails in the caller, not in the thread


def test_disk_path_is_used(tmp_path: Path) -> None:
    sample = sample_metrics(disk_path=tmp_path)
    import psutil

    assert abs(sample["disk_usage"] - psutil.disk_usage(str(tmp_path)).percent) < 5


# -- GPU through a fake NVML ---------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """Just enough of pynvml's API, with fixed readings and chosen failures."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(
        self,
        gpus: list[dict[str, Any]],
        fail: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
        init_error: Exception | None = None,
    ) -> None:
        self.gpus = gpus
        self.fail = fail
        self.init_error = init_error
        self.init_calls = 0

    def _check(self, fn: str, handle: int) -> dict[str, Any]:
        if (fn, handle) in self.fail:
            raise FakeNVMLError(f"{fn}: Not Supported")
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self._check("nvmlDeviceGetName", handle)["name"]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return types.SimpleNamespace(gpu=self._check("nvmlDeviceGetUtilizationRates", handle)["util"], memory=5)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._check("nvmlDeviceGetTemperature", handle)["temp"]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        gpu = self._check("nvmlDeviceGetMemoryInfo", handle)
        return types.SimpleNamespace(used=gpu["used"], total=gpu["total"], free=gpu["total"] - gpu["used"])

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._check("nvmlDeviceGetPowerUsage", handle)["power_mw"]


MIB = 1024 * 1024
TWO_GPUS = [
    {"name": "NVIDIA H100 80GB HBM3", "util": 37, "temp": 61, "used": 2048 * MIB, "total": 81559 * MIB, "power_mw": 123456},
    {"name": b"NVIDIA A10", "util": 90, "temp": 70, "used": 100 * MIB, "total": 23028 * MIB, "power_mw": 60000},
]


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def test_fake_nvml_two_gpus_one_failing_call(memory_db: CyllamaDB, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cyllama_db.metrics")
    nvml = FakeNVML(TWO_GPUS, fail={("nvmlDeviceGetPowerUsage", 1)})
    sample = sample_metrics(memory_db, nvml=nvml)
    # the first GPU fills the seed's columns (MiB and W)
    assert sample["gpu_usage"] == 37.0
    assert sample["gpu_temperature"] == 61.0
    assert sample["gpu_memory_used"] == 2048.0
    assert sample["gpu_memory_total"] == 81559.0
    assert sample["gpu_power_usage"] == pytest.approx(123.456)
    # every GPU is in the list; the failed call leaves just that reading None
    assert sample["gpus"] == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "gpu_usage": 37.0, "gpu_temperature": 61.0,
         "gpu_memory_used": 2048.0, "gpu_memory_total": 81559.0, "gpu_power_usage": pytest.approx(123.456)},
        {"index": 1, "name": "NVIDIA A10", "gpu_usage": 90.0, "gpu_temperature": 70.0,
         "gpu_memory_used": 100.0, "gpu_memory_total": 23028.0, "gpu_power_usage": None},
    ]
    sample_metrics(memory_db, nvml=nvml)
    failures = _messages(caplog, "nvmlDeviceGetPowerUsage")
    assert len(failures) == 1 and failures[0].levelno == logging.DEBUG  # once, at DEBUG
    assert nvml.init_calls == 1  # NVML is initialised once, not per sample

    memory_db.save_metrics(sample)
    [row] = memory_db.get_metrics_history()
    assert row["gpus"][1]["name"] == "NVIDIA A10" and row["gpus"][1]["gpu_power_usage"] is None
    assert row["gpu_memory_total"] == 81559.0
    with memory_db.pool.read() as conn:
        assert conn.execute("SELECT gpus_json FROM metrics_history").fetchone()[0].startswith("[{")


def test_failing_call_on_the_first_gpu_leaves_that_column_none(memory_db: CyllamaDB) -> None:
    nvml = FakeNVML(TWO_GPUS, fail={("nvmlDeviceGetTemperature", 0), ("nvmlDeviceGetMemoryInfo", 0)})
    sample = sample_metrics(memory_db, nvml=nvml)
    assert sample["gpu_temperature"] is None
    assert sample["gpu_memory_used"] is None and sample["gpu_memory_total"] is None
    assert sample["gpu_usage"] == 37.0
    assert sample["gpus"][1]["gpu_temperature"] == 70.0


@pytest.mark.parametrize("nvml", [FakeNVML([], init_error=FakeNVMLError("NVML Shared Library Not Found")), FakeNVML([])])
def test_no_nvml_or_no_gpu_gives_none(memory_db: CyllamaDB, caplog: pytest.LogCaptureFixture, nvml: FakeNVML) -> None:
    caplog.set_level(logging.DEBUG, logger="cyllama_db.metrics")
    for _ in range(3):
        sample = sample_metrics(memory_db, nvml=nvml)
        assert all(sample[k] is None for k in metrics_mod._GPU_FIELDS)
        assert sample["gpus"] == []
    assert nvml.init_calls == 1
    logged = [r for r in caplog.records if "NVML" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.DEBUG


def test_pynvml_not_installed(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cyllama_db.metrics")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(metrics_mod, "_readers", {})
    for _ in range(2):
        sample = sample_metrics()
        assert sample["gpu_usage"] is None and sample["gpus"] == []
    assert len(_messages(caplog, "nvidia-ml-py")) == 1


# -- library figures: active models, uptime, requests per minute ---------------------------


def _insert_row(conn: sqlite3.Connection, table: str, values: dict[str, Any]) -> None:
    """Insert into a table owned by another store, filling its other required columns."""
    row = dict(values)
    for _, name, decl, notnull, default, pk in conn.execute(f"PRAGMA table_info({table})"):
        if notnull and default is None and not pk and name not in row:
            row[name] = f"{name}-{id(row)}-{len(row)}" if "TEXT" in decl.upper() else 0
    names = ", ".join(row)
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def test_active_models_uptime_and_requests_per_minute(
    memory_db: CyllamaDB, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    a, b, c, d = (str(tmp_path / f"{n}.gguf") for n in "abcd")
    fake_shared = types.ModuleType("cyllama_db.llm.shared")
    fake_shared.loaded_model_paths = lambda: [a, Path(b)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cyllama_db.llm.shared", fake_shared)

    with memory_db.pool.transaction() as conn:
        for name, status, path in [("a", "running", a), ("c", "running", c), ("d", "stopped", d)]:
            _insert_row(conn, "models", {"name": name, "status": status, "model_path": path})
        for age in (1, 30, 59.5, 61, 3600):  # seconds before now
            _insert_row(conn, "stats", {"created_at": T - age})
    memory_db.set_metadata("server_start_time", str(T_MS - 3_600_400))
    memory_db.clock = lambda: T

    sample = sample_metrics(memory_db, nvml=FakeNVML([]))
    # a and b loaded here, c running in the registry; a counted once; d stopped
    assert sample["active_models"] == 3
    assert sample["uptime"] == 3600
    assert sample["requests_per_minute"] == 3.0
    assert sample["timestamp"] == T_MS


def test_figures_tolerate_missing_tables_and_broken_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = types.ModuleType("cyllama_db.llm.shared")

    def boom() -> list[str]:
        raise RuntimeError("not ready")

    broken.loaded_model_paths = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cyllama_db.llm.shared", broken)
    with CyllamaDB(":memory:") as db:
        with db.pool.transaction() as conn:
            conn.execute("DROP TABLE IF EXISTS models")
            conn.execute("CREATE TABLE models (id INTEGER PRIMARY KEY, name TEXT)")  # no status column
            for table in ("stats_rollup", "stats"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
        db.delete_metadata("server_start_time")
        sample = sample_metrics(db, nvml=FakeNVML([]))
    assert sample["active_models"] == 0
    assert sample["uptime"] is None
    assert sample["requests_per_minute"] is None


def test_inference_module_is_not_imported_by_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "cyllama_db.llm.shared", raising=False)
    sample_metrics(nvml=FakeNVML([]))
    assert "cyllama_db.llm.shared" not in sys.modules


# -- the sampler ---------------------------------------------------------------------------


def test_sampler_writes_n_rows_then_stops(any_db: CyllamaDB, thread_errors: list[BaseException]) -> None:
    sampler = any_db.start_metrics_sampler(interval=0.1, nvml=FakeNVML(TWO_GPUS))
    assert sampler.running
    assert sampler.wait_for_samples(5, timeout=30)
    sampler.stop()
    assert not sampler.running
    n = sampler.samples_taken
    assert n >= 5 and sampler.errors == 0
    rows = any_db.get_metrics_history()
    assert len(rows) == n  # one row per sample, nothing else
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids)  # stamped in the order written
    assert all(r["gpu_usage"] == 37.0 and len(r["gpus"]) == 2 for r in rows)
    threading.Event().wait(0.3)  # three more intervals: nothing may be written after stop()
    assert _row_count(any_db) == n
    assert sampler.cpu_seconds > 0
    assert thread_errors == []


def test_sampler_context_manager_and_restart(memory_db: CyllamaDB) -> None:
    with MetricsSampler(memory_db, interval=0.1, nvml=FakeNVML([])) as sampler:
        assert sampler.running
        assert sampler.wait_for_samples(2, timeout=30)
    assert not sampler.running
    assert "stopped" in repr(sampler)
    sampler.stop()  # twice is harmless
    first = sampler.samples_taken
    sampler.start()
    assert sampler.start() is sampler and sampler.running  # start() while running: no second thread
    assert sampler.wait_for_samples(first + 2, timeout=30)
    sampler.stop()
    assert _row_count(memory_db) == sampler.samples_taken


def test_sampler_survives_a_failing_sample(
    memory_db: CyllamaDB, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, thread_errors: list[BaseException]
) -> None:
    caplog.set_level(logging.DEBUG, logger="cyllama_db.metrics")
    calls = {"n": 0}

    def flaky(db: Any, **_: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] in (2, 3, 4):
            raise OSError("sensor went away")
        return {"cpu_usage": float(calls["n"])}

    monkeypatch.setattr(metrics_mod, "sample_metrics", flaky)
    with memory_db.start_metrics_sampler(interval=0.1) as sampler:
        assert sampler.wait_for_samples(3, timeout=30)
    assert sampler.errors == 3
    assert isinstance(sampler.last_error, OSError)
    assert [r["cpu_usage"] for r in memory_db.get_metrics_history()][:3] == [1.0, 5.0, 6.0]
    failures = _messages(caplog, "sensor went away")
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert thread_errors == []


def test_close_stops_the_sampler(db_path: Path, thread_errors: list[BaseException]) -> None:
    db = CyllamaDB(db_path)
    sampler = db.start_metrics_sampler(interval=0.1, nvml=FakeNVML([]))
    assert sampler.wait_for_samples(1, timeout=30)
    db.close()
    assert not sampler.running  # close() joined it before closing connections
    assert thread_errors == []
    with CyllamaDB(db_path) as again:
        assert _row_count(again) == sampler.samples_taken


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_database_closed_under_the_sampler(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread_errors: list[BaseException]
) -> None:
    db = CyllamaDB(":memory:" if kind == "memory" else tmp_path / "x.db")
    real = metrics_mod.sample_metrics

    def close_then_sample(target: Any, **kwargs: Any) -> dict[str, Any]:
        sample = real(target, **kwargs)
        if sampler.samples_taken == 2:
            # the pool closes between sampling and saving, bypassing close()'s hook
            assert db._pool is not None
            db._pool.close()
        return sample

    monkeypatch.setattr(metrics_mod, "sample_metrics", close_then_sample)
    sampler = MetricsSampler(db, interval=0.1, nvml=FakeNVML([]))
    sampler.start()
    assert sampler._thread is not None
    sampler._thread.join(timeout=30)
    assert not sampler.running  # it ended by itself
    assert sampler.samples_taken == 2 and sampler.errors == 0
    assert thread_errors == []
    sampler.stop()
    db.close()


def test_sampler_stops_when_pool_is_closed_while_waiting(memory_db: CyllamaDB, thread_errors: list[BaseException]) -> None:
    sampler = memory_db.start_metrics_sampler(interval=0.1, nvml=FakeNVML([]))
    assert sampler.wait_for_samples(1, timeout=30)
    assert memory_db._pool is not None
    memory_db._pool.close()
    assert sampler._thread is not None
    sampler._thread.join(timeout=30)
    assert not sampler.running and sampler.errors == 0
    assert thread_errors == []


@pytest.mark.parametrize(
    ("interval", "error"),
    [(0, ValueError), (-1, ValueError), (math.inf, ValueError), (math.nan, ValueError),
     (1e-9, ValueError), (0.099, ValueError), (86_401, ValueError), (10**400, ValueError),
     ("1", TypeError), (True, TypeError)],
)
def test_bad_interval(memory_db: CyllamaDB, interval: Any, error: type[Exception]) -> None:
    # 1e-9 used to be accepted: a tight loop writing to the database.
    with pytest.raises(error, match="interval"):
        MetricsSampler(memory_db, interval)
    with pytest.raises(error, match="interval"):
        memory_db.start_metrics_sampler(interval)


def test_interval_bounds_are_inclusive(memory_db: CyllamaDB) -> None:
    assert MetricsSampler(memory_db, metrics_mod.MIN_SAMPLER_INTERVAL).interval == 0.1
    assert MetricsSampler(memory_db, metrics_mod.MAX_SAMPLER_INTERVAL).interval == 86_400


def test_next_deadline_examples() -> None:
    assert _next_deadline(0.0, 0.3, 1.0) == 1.0
    assert _next_deadline(1.0, 1.2, 1.0) == 2.0  # a slow sample does not shift the grid
    assert _next_deadline(1.0, 2.0, 1.0) == 3.0  # exactly on a tick that already passed
    assert _next_deadline(1.0, 4.5, 1.0) == 5.0  # missed ticks are skipped, not made up
    assert _next_deadline(1.0, 0.9999, 1.0) == 2.0  # a wait that returned a hair early


@given(
    previous=st.floats(min_value=0, max_value=1e6),
    lag=st.floats(min_value=0, max_value=1e4),
    interval=st.floats(min_value=0.01, max_value=100),
)
def test_next_deadline_stays_on_the_grid(previous: float, lag: float, interval: float) -> None:
    now = previous + lag
    deadline = _next_deadline(previous, now, interval)
    steps = (deadline - previous) / interval
    assert deadline > now or math.isclose(deadline, now, abs_tol=1e-6)
    assert steps >= 1 - 1e-6
    assert abs(steps - round(steps)) < 1e-6 * max(1.0, steps)  # no drift off the grid
    assert deadline - now <= interval * (1 + 1e-6) + 1e-6  # never skips a tick still ahead


def test_cpu_reading_is_primed_per_thread(monkeypatch: pytest.MonkeyPatch, memory_db: CyllamaDB) -> None:
    import psutil

    calls: list[tuple[str, float | None]] = []
    real = psutil.cpu_percent

    def recording(interval: float | None = None, percpu: bool = False) -> float:
        calls.append((threading.current_thread().name, interval))
        return real(interval=interval)

    monkeypatch.setattr(psutil, "cpu_percent", recording)

    def one_off() -> None:
        sample_metrics(nvml=FakeNVML([]))
        sample_metrics(nvml=FakeNVML([]))

    worker = threading.Thread(target=one_off, name="one-off")
    worker.start()
    worker.join()
    # a fresh thread's first sample measures over a short window, then the
    # reading is non-blocking (psutil's very first non-blocking value is meaningless)
    assert [i for name, i in calls if name == "one-off"] == [0.1, None]

    with memory_db.start_metrics_sampler(interval=0.1, nvml=FakeNVML([])) as sampler:
        assert sampler.wait_for_samples(2, timeout=30)
    sampled = [i for name, i in calls if name == "cyllama-metrics-sampler"]
    # primed once at start (not blocking), then one non-blocking read per sample
    assert sampled[0] is None and set(sampled) == {None}
    assert len(sampled) == sampler.samples_taken + 1


@pytest.mark.llama
def test_figures_with_a_real_model_registry_and_stats(memory_db: CyllamaDB, tiny_model_path: Path, tmp_path: Path) -> None:
    from cyllama_db.llm import LLM

    llm = LLM(tiny_model_path, db=memory_db, max_tokens=2)
    try:
        llm("Hello")  # loads the model and records one generation in stats
        other = tmp_path / "other.gguf"
        other.write_bytes(tiny_model_path.read_bytes())
        memory_db.save_model("tiny", status="running", model_path=str(tiny_model_path))
        memory_db.save_model("other", status="running", model_path=str(other))
        memory_db.save_model("idle", status="stopped", model_path=str(other))
        sample = sample_metrics(memory_db, nvml=FakeNVML([]))
        # tiny: loaded here and running in the registry, counted once; other: registry only
        assert sample["active_models"] == 2
        assert sample["requests_per_minute"] == 1.0
    finally:
        llm.close()
    assert sample_metrics(memory_db, nvml=FakeNVML([]))["active_models"] == 2  # both registry entries remain


def test_sampler_start_resets_uptime_origin(memory_db: CyllamaDB) -> None:
    pytest.importorskip("psutil")
    memory_db.set_metadata("server_start_time", "1")
    memory_db.clock = lambda: 2_000.0
    sampler = memory_db.start_metrics_sampler(interval=60)
    try:
        assert memory_db.get_metadata("server_start_time") == "2000000"
    finally:
        sampler.stop()


# -- the inference process's own RSS and CPU -------------------------------------------------

_MISS = {"finish_reason": "stop", "stats": {"prompt_tokens": 2, "generated_tokens": 4,
                                            "generation_time_ms": 40.0, "total_time_ms": 50.0}}


def test_the_process_that_generates_is_sampled(file_db: CyllamaDB) -> None:
    pytest.importorskip("psutil")
    file_db.record_generation("/models/m.gguf", _MISS)
    first = sample_metrics(file_db)
    assert first["process_pid"] == os.getpid()
    assert first["process_rss_bytes"] > 10 * 1024 * 1024  # a Python process with SQLite loaded
    # psutil's first reading of a process is meaningless: None (unless this
    # thread already sampled it in an earlier test).
    assert first["process_cpu_usage"] is None or first["process_cpu_usage"] >= 0
    sum(i * i for i in range(300_000))  # some CPU time between the two readings
    second = sample_metrics(file_db)
    assert second["process_cpu_usage"] is not None and second["process_cpu_usage"] >= 0
    file_db.save_metrics(second)
    [row] = file_db.get_metrics_history()
    assert row["process_pid"] == os.getpid() and row["process_rss_bytes"] == second["process_rss_bytes"]
    assert sample_metrics(file_db, process="self")["process_pid"] == os.getpid()
    with pytest.raises(TypeError, match="pid"):
        sample_metrics(file_db, process="nope")


def test_another_process_that_generates_is_found(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's sampler runs in its own process: it reports the generating one."""
    psutil = pytest.importorskip("psutil")
    # As in the dashboard's process: no model loaded here (earlier tests may have loaded one).
    monkeypatch.setattr(metrics_mod, "_loaded_model_paths", lambda: [])
    code = (
        "import sys, time; from cyllama_db import CyllamaDB\n"
        f"db = CyllamaDB({str(db_path)!r})\n"
        f"db.record_generation('/models/m.gguf', {_MISS!r})\n"
        "big = bytearray(64 * 1024 * 1024)\n"  # a resident size no idle interpreter has
        "for i in range(len(big) // 4096): big[i * 4096] = 1\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(metrics_mod.__file__).parents[2])}
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with CyllamaDB(db_path) as db:
            sample = sample_metrics(db)
            assert sample["process_pid"] == child.pid
            assert sample["process_rss_bytes"] >= 64 * 1024 * 1024
            assert sample["process_rss_bytes"] == pytest.approx(
                psutil.Process(child.pid).memory_info().rss, rel=0.2)
    finally:
        child.communicate("", timeout=30)
    with CyllamaDB(db_path) as db:  # the generating process is gone: nothing to report
        assert sample_metrics(db)["process_pid"] is None


# -- the store object ----------------------------------------------------------------------------


def test_the_store_object(memory_db: CyllamaDB) -> None:
    from cyllama_db.stores.metrics import MetricsStore

    metrics = memory_db.metrics
    assert isinstance(metrics, MetricsStore) and metrics in memory_db.stores and metrics.name == "metrics"
    memory_db.clock = lambda: T  # type: ignore[method-assign]
    row_id = metrics.record({"cpu_usage": 12.5, "timestamp": T_MS - MINUTE_MS})
    assert isinstance(row_id, int)
    assert memory_db.save_metrics({"cpu_usage": 50.0}) == row_id + 1
    history = metrics.history(5)
    assert history == memory_db.get_metrics_history(5)
    assert [r["cpu_usage"] for r in history] == [12.5, 50.0]
    assert [r["cpu_usage"] for r in metrics.history(since=T - 30)] == [50.0]
    assert memory_db.get_db_stats()["metrics_samples"] == 2


def test_a_sampler_registers_with_the_store_and_close_stops_it(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    db = CyllamaDB(tmp_path / "s.db")
    sampler = db.metrics.start_sampler(interval=0.1, nvml=FakeNVML([]))
    try:
        assert sampler.running and sampler in db.metrics._samplers
        # The sampling process is the "server": uptime counts from its start.
        assert db.metadata.get("server_start_time") is not None
        assert sampler.wait_for_samples(1, timeout=30)
        sample = db.metrics.history(1)[-1]
        assert sample["uptime"] is not None and sample["requests_per_minute"] == 0.0
    finally:
        db.close()
    assert not sampler.running and sampler not in db.metrics._samplers
    other = MetricsSampler(CyllamaDB(":memory:"), 1.0)
    other.db.metrics.register_sampler(other, True)
    assert other in other.db.metrics._samplers
    other.db.metrics.register_sampler(other, False)
    assert other not in other.db.metrics._samplers
    other.db.close()


def test_sample_metrics_reads_the_other_stores_through_their_methods(memory_db: CyllamaDB) -> None:
    pytest.importorskip("psutil")
    memory_db.clock = lambda: T  # type: ignore[method-assign]
    memory_db.metadata.set("server_start_time", str(T_MS - 90_000))
    for k in range(3):  # two in the last minute
        memory_db.clock = lambda k=k: T - 90 + 40 * k  # type: ignore[misc]
        memory_db.record_generation("m.gguf", {"stats": None}, None)
    memory_db.clock = lambda: T  # type: ignore[method-assign]
    sample = sample_metrics(memory_db, nvml=FakeNVML([]))
    assert sample["uptime"] == 90
    assert sample["requests_per_minute"] == 2.0
    with pytest.raises(TypeError, match="CyllamaDB"):
        sample_metrics(object())  # type: ignore[arg-type]


def test_latest_is_the_newest_sample(memory_db: CyllamaDB) -> None:
    assert memory_db.metrics.latest() is None
    memory_db.clock = lambda: T  # type: ignore[method-assign]
    memory_db.save_metrics({"cpu_usage": 1.0, "timestamp": T_MS - 2 * MINUTE_MS})
    newest = memory_db.save_metrics({"cpu_usage": 2.0, "gpus": [{"index": 0, "gpu_usage": 5.0}]})
    memory_db.save_metrics({"cpu_usage": 3.0, "timestamp": T_MS - MINUTE_MS})
    latest = memory_db.metrics.latest()
    assert latest is not None and latest["id"] == newest and latest["cpu_usage"] == 2.0
    assert latest["timestamp_ms"] == T_MS and latest["gpus"] == [{"index": 0, "gpu_usage": 5.0}]
    assert latest == memory_db.get_metrics_history(5)[-1]


# -- host (schema 11) -----------------------------------------------------------------------


def test_each_sample_records_the_host_that_took_it(any_db: CyllamaDB) -> None:
    import socket

    any_db.clock = lambda: T
    mine = any_db.save_metrics({"cpu_usage": 1.0})
    other = any_db.save_metrics({"cpu_usage": 2.0, "host": "gpu-box-2"})
    history = any_db.get_metrics_history(minutes=1)
    assert [(h["id"], h["host"]) for h in history] == [(mine, socket.gethostname()), (other, "gpu-box-2")]
    assert [h["id"] for h in any_db.get_metrics_history(minutes=1, host="gpu-box-2")] == [other]
    assert [h["id"] for h in any_db.metrics.history(1, host=socket.gethostname())] == [mine]
    assert any_db.get_metrics_history(minutes=1, host="nobody") == []
    assert any_db.metrics.latest()["host"] == "gpu-box-2"
    with any_db.pool.read() as conn:  # the readable view shows it
        assert [r[0] for r in conn.execute("SELECT host FROM metrics ORDER BY id")] == [socket.gethostname(), "gpu-box-2"]


@pytest.mark.parametrize("bad", ["", "a" * 256, "tab\there"])
def test_a_bad_host_is_refused(memory_db: CyllamaDB, bad: str) -> None:
    with pytest.raises(ValueError, match="host"):
        memory_db.save_metrics({"cpu_usage": 1.0, "host": bad})
    with pytest.raises(ValueError, match="host"):
        memory_db.get_metrics_history(host=bad)
    with pytest.raises(TypeError, match="host"):
        memory_db.save_metrics({"host": 3})
    assert memory_db.get_metrics_history() == []


def test_cli_metrics_history_filters_and_names_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cyllama_db.cli import main

    path = tmp_path / "hosts.db"
    with CyllamaDB(path) as db:
        db.save_metrics({"cpu_usage": 11.5, "host": "box-a"})
        db.save_metrics({"cpu_usage": 22.5, "host": "box-b"})
    assert main(["--db", str(path), "metrics", "history"]) == 0
    out = capsys.readouterr().out
    assert "host" in out and "box-a" in out and "box-b" in out
    assert main(["--db", str(path), "metrics", "history", "--host", "box-b"]) == 0
    out = capsys.readouterr().out
    assert "22.50" in out and "11.50" not in out and "box-a" not in out
