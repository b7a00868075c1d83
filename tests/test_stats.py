"""Generation statistics: record_generation, summaries, history, retention."""

from __future__ import annotations

import enum
import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cyllama_db.db.deferred as deferred_module
import cyllama_db.stores.stats as stats_module
from cyllama_db import CyllamaDB, DatabaseClosedError
from cyllama_db.stores.stats import (
    BUCKET_SECONDS,
    STATS_COLUMNS,
    model_name_for,
    process_session_id,
)

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


def response(
    *,
    prompt: int | None = 10,
    generated: int | None = 20,
    total: int | None = None,
    total_ms: float | None = 100.0,
    tps: float | None = 50.0,
    finish: Any = "stop",
    cache_hit: bool = False,
    with_stats: bool = True,
) -> dict[str, Any]:
    stats = None
    if with_stats:
        stats = {
            "prompt_tokens": prompt,
            "generated_tokens": generated,
            "total_tokens": total
            if total is not None
            else (None if prompt is None or generated is None else prompt + generated),
            "prompt_time_ms": None if total_ms is None else total_ms / 4,
            "generation_time_ms": None if total_ms is None else total_ms * 3 / 4,
            "total_time_ms": total_ms,
            "tokens_per_second": tps,
        }
    return {"text": "hi", "finish_reason": finish, "cache_hit": cache_hit, "stats": stats}


CONFIG = {"temperature": 0.5, "max_tokens": 64}


def ap(path: str) -> str:
    """The absolute path rows store for ``path`` (relative to the working directory)."""
    return os.path.abspath(path)


def record_at(db: CyllamaDB, ts: float, model: str = "a.gguf", **kw: Any) -> int | None:
    """Record one row at ``ts``; the row id of a real generation (a hit is buffered: None)."""
    db.clock = lambda: ts  # type: ignore[method-assign]
    hit = kw.pop("hit", False)
    rid = db.record_generation(model, response(cache_hit=False, **kw), CONFIG, cache_hit=hit)
    assert (rid is None) == hit
    return rid


# -- record_generation ---------------------------------------------------------------------------


def test_record_generation_stores_every_column(any_db: CyllamaDB) -> None:
    any_db.clock = lambda: T0  # type: ignore[method-assign]
    rid = any_db.record_generation("/nowhere/m.gguf", response(), CONFIG)
    assert isinstance(rid, int)
    [row] = any_db.get_generation_history()
    assert set(row) == set(STATS_COLUMNS)
    assert row == {
        "id": rid,
        "session_id": process_session_id(),
        "model_path": "/nowhere/m.gguf",
        "model_name": "m.gguf",
        "prompt_tokens": 10,
        "generated_tokens": 20,
        "total_tokens": 30,
        "prompt_time_ms": 25.0,
        "generation_time_ms": 75.0,
        "total_time_ms": 100.0,
        "tokens_per_second": 50.0,
        "temperature": 0.5,
        "max_tokens": 64,
        "finish_reason": "stop",
        "cache_hit": False,
        "created_at": datetime.fromtimestamp(T0, UTC),
    }
    assert row["created_at"].tzinfo is not None


@dataclass
class FakeStats:
    prompt_tokens: int
    generated_tokens: int
    total_tokens: int
    prompt_time_ms: float
    generation_time_ms: float
    total_time_ms: float
    tokens_per_second: float


class Finish(enum.Enum):
    LENGTH = "length"


def test_duck_typed_objects(memory_db: CyllamaDB) -> None:
    stats = FakeStats(3, 4, 7, 1.0, 2.0, 3.0, 1333.3)
    resp = SimpleNamespace(
        text="x", finish_reason=Finish.LENGTH, model_path="m", cache_hit=False, stats=stats
    )
    cfg = SimpleNamespace(temperature=0.0, max_tokens=None, top_k=40)
    memory_db.record_generation(Path("m.gguf"), resp, cfg)
    [row] = memory_db.get_generation_history()
    assert row["model_path"] == ap("m.gguf")
    assert (row["prompt_tokens"], row["generated_tokens"], row["total_tokens"]) == (3, 4, 7)
    assert row["tokens_per_second"] == 1333.3
    assert row["finish_reason"] == "length"
    assert row["temperature"] == 0.0
    assert row["max_tokens"] is None


def test_stats_none_and_config_none(memory_db: CyllamaDB) -> None:
    memory_db.record_generation("m.gguf", response(with_stats=False, finish=None), None)
    [row] = memory_db.get_generation_history()
    for col in (
        "prompt_tokens",
        "total_tokens",
        "total_time_ms",
        "tokens_per_second",
        "temperature",
        "max_tokens",
        "finish_reason",
    ):
        assert row[col] is None, col
    summary = memory_db.get_stats_summary()
    assert summary["total_generations"] == 1
    assert summary["total_tokens"] == 0
    assert summary["avg_tokens_per_second"] == 0.0
    assert summary["by_model"][ap("m.gguf")]["p50_latency_ms"] is None


def test_total_tokens_derived_when_missing(memory_db: CyllamaDB) -> None:
    resp = response()
    resp["stats"]["total_tokens"] = None
    memory_db.record_generation("m.gguf", resp, CONFIG)
    assert memory_db.get_generation_history()[0]["total_tokens"] == 30


def test_non_finite_numbers_are_stored_as_null(memory_db: CyllamaDB) -> None:
    memory_db.record_generation("m.gguf", response(tps=math.inf, total_ms=math.nan), CONFIG)
    row = memory_db.get_generation_history()[0]
    assert row["tokens_per_second"] is None
    assert row["total_time_ms"] is None


def test_cache_hit_from_argument_or_response(memory_db: CyllamaDB) -> None:
    memory_db.record_generation("m.gguf", response(), CONFIG, cache_hit=True)
    memory_db.record_generation("m.gguf", response(cache_hit=True), CONFIG)
    memory_db.record_generation("m.gguf", response(), CONFIG)
    hits = [r["cache_hit"] for r in memory_db.get_generation_history()]
    assert sorted(hits) == [False, True, True]
    assert all(isinstance(h, bool) for h in hits)


def test_bad_arguments_are_named(memory_db: CyllamaDB) -> None:
    with pytest.raises(TypeError, match="model_path"):
        memory_db.record_generation(42, response(), CONFIG)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model_path"):
        memory_db.record_generation("", response(), CONFIG)
    with pytest.raises(TypeError, match=r"stats\.generated_tokens"):
        memory_db.record_generation("m.gguf", response(generated="many", total=30), CONFIG)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"config\.temperature"):
        memory_db.record_generation("m.gguf", response(), {"temperature": "hot"})
    with pytest.raises(TypeError, match="session_id"):
        memory_db.record_generation("m.gguf", response(), CONFIG, session_id=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        memory_db.record_generation("m.gguf", response(), CONFIG, bogus=1)  # type: ignore[call-arg]
    assert memory_db.get_generation_history() == []


def test_session_id_default_attribute_and_argument(memory_db: CyllamaDB) -> None:
    assert memory_db.session_id == process_session_id()
    memory_db.record_generation("m.gguf", response(), CONFIG)
    memory_db.session_id = "experiment-1"
    memory_db.record_generation("m.gguf", response(), CONFIG)
    memory_db.record_generation("m.gguf", response(), CONFIG, session_id="one-off")
    memory_db.session_id = None
    memory_db.record_generation("m.gguf", response(), CONFIG)
    sessions = [r["session_id"] for r in reversed(memory_db.get_generation_history())]
    assert sessions == [process_session_id(), "experiment-1", "one-off", process_session_id()]
    assert len(memory_db.get_generation_history(session_id="experiment-1")) == 1
    with pytest.raises(TypeError):
        memory_db.session_id = ""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_gets_its_own_session() -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write_fd, process_session_id().encode())
        os._exit(0)
    os.close(write_fd)
    child = os.read(read_fd, 100).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert child and child != process_session_id()


def test_model_name_from_gguf_metadata(tmp_path: Path, memory_db: CyllamaDB) -> None:
    pytest.importorskip("gguf")
    from cyllama_db.testing import write_tiny_llama

    path = write_tiny_llama(tmp_path / "tiny.gguf", name="Tiny Test Model")
    memory_db.record_generation(str(path), response(), CONFIG)
    assert memory_db.get_generation_history()[0]["model_name"] == "Tiny Test Model"
    summary = memory_db.get_stats_summary()
    assert summary["by_model"][str(path)]["model_name"] == "Tiny Test Model"

    # A replaced file (new size/mtime) is read again, not served from the cache.
    write_tiny_llama(path, name="Renamed Model With A Longer Name")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert model_name_for(path) == "Renamed Model With A Longer Name"


def test_model_name_falls_back_to_basename(tmp_path: Path, memory_db: CyllamaDB) -> None:
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"not a gguf file at all")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    assert model_name_for(tmp_path / "missing.gguf") == "missing.gguf"
    assert model_name_for(garbage) == "broken.gguf"
    assert model_name_for(empty) == "empty.gguf"
    assert model_name_for(folder) == "folder.gguf"
    for path in (garbage, empty, folder, tmp_path / "missing.gguf"):
        memory_db.record_generation(path, response(), CONFIG)  # never raises
    names = {r["model_name"] for r in memory_db.get_generation_history()}
    assert names == {"broken.gguf", "empty.gguf", "folder.gguf", "missing.gguf"}


def test_disabled_database_returns_empty_answers() -> None:
    db = CyllamaDB(enabled=False)
    assert db.record_generation("m.gguf", response(), CONFIG) is None
    summary = db.get_stats_summary()
    assert summary["total_generations"] == 0
    assert summary["total_tokens"] == 0
    assert summary["cache_hit_rate"] == 0.0
    assert summary["avg_tokens_per_second"] == 0.0
    assert summary["by_model"] == {} and summary["by_day"] == []
    assert db.get_generation_history() == []
    assert db.prune_stats(older_than=timedelta(0)) == 0
    assert db.stats_max_age is None
    db.stats_max_age = "1d"  # accepted, nothing to store


def test_closed_database_raises(memory_db: CyllamaDB) -> None:
    memory_db.close()
    with pytest.raises(DatabaseClosedError):
        memory_db.record_generation("m.gguf", response(), CONFIG)
    with pytest.raises(DatabaseClosedError):
        memory_db.get_stats_summary()


def test_rows_are_immutable(memory_db: CyllamaDB) -> None:
    memory_db.record_generation("m.gguf", response(), CONFIG)
    with (
        pytest.raises(sqlite3.IntegrityError, match="immutable"),
        memory_db.pool.transaction() as conn,
    ):
        conn.execute("UPDATE stats SET total_tokens = 0")


def test_concurrent_records_from_threads(file_db: CyllamaDB) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for _ in range(25):
                file_db.record_generation(f"m{k % 2}.gguf", response(), CONFIG)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    summary = file_db.get_stats_summary()
    assert summary["total_generations"] == 100
    assert summary["total_tokens"] == 3000
    assert {m: s["generations"] for m, s in summary["by_model"].items()} == {
        ap("m0.gguf"): 50,
        ap("m1.gguf"): 50,
    }
    assert file_db.get_db_stats()["stats_entries"] == 100


# -- get_stats_summary: hand-computed --------------------------------------------------------


def test_summary_hand_computed(any_db: CyllamaDB) -> None:
    # Model a: four real generations and one hit; model b: one real, one hit.
    record_at(any_db, T0 + 0, "a.gguf", total_ms=100.0, tps=10.0, prompt=5, generated=5)
    record_at(any_db, T0 + 1, "a.gguf", total_ms=200.0, tps=20.0, prompt=5, generated=15)
    record_at(any_db, T0 + 2, "a.gguf", total_ms=300.0, tps=30.0, prompt=10, generated=20)
    record_at(any_db, T0 + 3, "a.gguf", total_ms=400.0, tps=40.0, prompt=10, generated=30)
    record_at(any_db, T0 + 4, "a.gguf", total_ms=1.0, tps=9999.0, prompt=10, generated=30, hit=True)
    record_at(any_db, T0 + 5, "b.gguf", total_ms=50.0, tps=100.0, prompt=1, generated=9)
    record_at(any_db, T0 + 6, "b.gguf", total_ms=2.0, tps=5000.0, prompt=1, generated=9, hit=True)

    s = any_db.get_stats_summary(tz=UTC)
    assert s["total_generations"] == 7
    assert s["total_tokens"] == 10 + 20 + 30 + 40 + 40 + 10 + 10
    assert s["cache_hits"] == 2
    assert s["cache_hit_rate"] == pytest.approx(2 / 7)
    # Hits do not count towards speed: (10 + 20 + 30 + 40 + 100) / 5.
    assert s["avg_tokens_per_second"] == pytest.approx(40.0)

    a = s["by_model"][ap("a.gguf")]
    assert a["model_name"] == "a.gguf"
    assert (a["generations"], a["tokens"], a["cache_hits"]) == (5, 140, 1)
    assert a["cache_hit_rate"] == pytest.approx(0.2)
    assert a["avg_tokens_per_second"] == pytest.approx(25.0)
    # Latencies of real generations 100, 200, 300, 400 (linear interpolation):
    # p50 at position 1.5 -> 250; p95 at position 2.85 -> 300 + 0.85 * 100.
    assert a["p50_latency_ms"] == pytest.approx(250.0)
    assert a["p95_latency_ms"] == pytest.approx(385.0)

    b = s["by_model"][ap("b.gguf")]
    assert (b["generations"], b["tokens"], b["cache_hits"]) == (2, 20, 1)
    assert b["avg_tokens_per_second"] == pytest.approx(100.0)
    assert b["p50_latency_ms"] == b["p95_latency_ms"] == 50.0

    [day] = s["by_day"]
    assert day["date"] == date(2024, 5, 1)
    assert (day["generations"], day["tokens"], day["cache_hits"]) == (7, 160, 2)
    assert day["avg_tokens_per_second"] == pytest.approx(40.0)

    only_b = any_db.get_stats_summary(model_path="b.gguf", tz=UTC)
    assert only_b["total_generations"] == 2
    assert list(only_b["by_model"]) == [ap("b.gguf")]
    assert only_b["by_day"][0]["generations"] == 2


def test_percentiles_match_numpy(memory_db: CyllamaDB) -> None:
    np = pytest.importorskip("numpy")
    latencies = [float(x) for x in (17, 3, 99, 45, 45, 2, 1000, 61, 8, 30, 29, 64, 5)]
    for i, ms in enumerate(latencies):
        record_at(memory_db, T0 + i, total_ms=ms)
    record_at(memory_db, T0 + 99, total_ms=99999.0, hit=True)  # hits are not latencies
    a = memory_db.get_stats_summary()["by_model"][ap("a.gguf")]
    assert a["p50_latency_ms"] == pytest.approx(float(np.percentile(latencies, 50)))
    assert a["p95_latency_ms"] == pytest.approx(float(np.percentile(latencies, 95)))


def test_since_until_window_is_half_open(memory_db: CyllamaDB) -> None:
    for k in range(6):
        record_at(memory_db, T0 + k * 3600, generated=k, prompt=0)
    s = memory_db.get_stats_summary(since=T0 + 3600, until=T0 + 4 * 3600)
    assert s["total_generations"] == 3  # 1h, 2h, 3h; 4h is excluded
    assert s["total_tokens"] == 1 + 2 + 3
    as_datetimes = memory_db.get_stats_summary(
        since=datetime.fromtimestamp(T0 + 3600, UTC),
        until=datetime.fromtimestamp(T0 + 4 * 3600, UTC),
    )
    assert as_datetimes["total_tokens"] == 6
    # A timedelta means "that long before now" (the injected clock).
    memory_db.clock = lambda: T0 + 5 * 3600 + 1  # type: ignore[method-assign]
    assert memory_db.get_stats_summary(since=timedelta(hours=2))["total_generations"] == 2
    assert memory_db.get_stats_summary(since=T0 + 10, until=T0)["total_generations"] == 0


def test_window_edges_inside_buckets(memory_db: CyllamaDB) -> None:
    base = (T0 // BUCKET_SECONDS) * BUCKET_SECONDS
    stamps = [base + 1, base + 449, base + 450, base + 899, base + 900, base + 901, base + 1800 + 5]
    for i, ts in enumerate(stamps):
        record_at(memory_db, ts, prompt=0, generated=i)
    s = memory_db.get_stats_summary(since=base + 450, until=base + 901)
    assert s["total_generations"] == 3  # 450, 899, 900
    assert s["total_tokens"] == 2 + 3 + 4
    assert s["by_model"][ap("a.gguf")]["p50_latency_ms"] == 100.0


# -- by_day across midnight ---------------------------------------------------------------------


def local_ts(tz: Any, *args: int) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    "tz",
    [
        UTC,
        timezone(timedelta(hours=-5)),
        timezone(timedelta(hours=5, minutes=30)),
        timezone(timedelta(hours=5, minutes=45)),
        ZoneInfo("America/New_York"),
    ],
    ids=["utc", "minus5", "india", "nepal", "new_york"],
)
def test_by_day_splits_at_local_midnight(memory_db: CyllamaDB, tz: Any) -> None:
    record_at(memory_db, local_ts(tz, 2024, 5, 1, 23, 59, 59), generated=1, prompt=0)
    record_at(memory_db, local_ts(tz, 2024, 5, 2, 0, 0, 0), generated=2, prompt=0)
    record_at(memory_db, local_ts(tz, 2024, 5, 2, 23, 59, 0), generated=4, prompt=0)
    record_at(memory_db, local_ts(tz, 2024, 5, 4, 0, 0, 1), generated=8, prompt=0, hit=True)
    days = memory_db.get_stats_summary(tz=tz)["by_day"]
    assert [(d["date"], d["generations"], d["tokens"], d["cache_hits"]) for d in days] == [
        (date(2024, 5, 1), 1, 1, 0),
        (date(2024, 5, 2), 2, 6, 0),
        (date(2024, 5, 4), 1, 8, 1),  # empty days are left out
    ]
    assert days[2]["cache_hit_rate"] == 1.0
    assert days[2]["avg_tokens_per_second"] == 0.0


def test_by_day_across_dst_changes(memory_db: CyllamaDB) -> None:
    ny = ZoneInfo("America/New_York")
    # 2024-03-10 has 23 hours and 2024-11-03 has 25 in New York.
    for args in [
        (2024, 3, 10, 0, 5),
        (2024, 3, 10, 23, 55),
        (2024, 3, 11, 0, 5),
        (2024, 11, 3, 0, 5),
        (2024, 11, 3, 23, 55),
        (2024, 11, 4, 0, 5),
    ]:
        record_at(memory_db, local_ts(ny, *args))
    days = memory_db.get_stats_summary(tz=ny)["by_day"]
    assert [(d["date"], d["generations"]) for d in days] == [
        (date(2024, 3, 10), 2),
        (date(2024, 3, 11), 1),
        (date(2024, 11, 3), 2),
        (date(2024, 11, 4), 1),
    ]


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Any:
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset()")
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield ZoneInfo("Asia/Kolkata")
    monkeypatch.undo()
    time.tzset()


def test_by_day_defaults_to_local_time(memory_db: CyllamaDB, local_zone: Any) -> None:
    # 23:50 and 00:10 India time are the same UTC day (18:20 and 18:40 UTC).
    record_at(memory_db, local_ts(local_zone, 2024, 5, 1, 23, 50))
    record_at(memory_db, local_ts(local_zone, 2024, 5, 2, 0, 10))
    local_days = [d["date"] for d in memory_db.get_stats_summary()["by_day"]]
    utc_days = [d["date"] for d in memory_db.get_stats_summary(tz=UTC)["by_day"]]
    assert local_days == [date(2024, 5, 1), date(2024, 5, 2)]
    assert utc_days == [date(2024, 5, 1)]


def test_tz_must_be_tzinfo(memory_db: CyllamaDB) -> None:
    with pytest.raises(TypeError, match="tz"):
        memory_db.get_stats_summary(tz="UTC")  # type: ignore[arg-type]


# -- the rollup agrees with the rows (property test) ---------------------------------------------


def brute_summary(rows: list[dict[str, Any]], low: float, high: float, tz: Any) -> dict[str, Any]:
    rows = [r for r in rows if low <= r["ts"] < high]
    out: dict[str, Any] = {
        "n": len(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "hits": sum(r["hit"] for r in rows),
        "models": {},
        "days": {},
    }
    for r in rows:
        m = out["models"].setdefault(r["model"], {"n": 0, "lat": []})
        m["n"] += 1
        if not r["hit"]:
            m["lat"].append(r["ms"])
        d = datetime.fromtimestamp(r["ts"], tz).date()
        out["days"][d] = out["days"].get(d, 0) + 1
    real = [r["tps"] for r in rows if not r["hit"]]
    out["tps"] = sum(real) / len(real) if real else 0.0
    return out


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


row_strategy = st.fixed_dictionaries(
    {
        "ts": st.floats(T0, T0 + 3 * 86400, allow_nan=False),
        "model": st.sampled_from(["a.gguf", "b.gguf", "c.gguf"]),
        "hit": st.booleans(),
        "tokens": st.integers(0, 500),
        "ms": st.floats(0.5, 5000, allow_nan=False).map(lambda x: round(x, 3)),
        "tps": st.floats(0.5, 500, allow_nan=False),
    }
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(row_strategy, max_size=40),
    since=st.none() | st.floats(T0 - 100, T0 + 3 * 86400, allow_nan=False),
    span=st.none() | st.floats(0, 2 * 86400, allow_nan=False),
    prune_at=st.none() | st.floats(T0, T0 + 3 * 86400, allow_nan=False),
    tz=st.sampled_from(
        [UTC, timezone(timedelta(hours=-9, minutes=-30)), ZoneInfo("Europe/Berlin")]
    ),
)
def test_summary_matches_brute_force(
    rows: list[dict[str, Any]],
    since: float | None,
    span: float | None,
    prune_at: float | None,
    tz: Any,
) -> None:
    with CyllamaDB(":memory:") as db:
        for r in rows:
            db.clock = lambda r=r: r["ts"]  # type: ignore[method-assign]
            db.record_generation(
                r["model"],
                {
                    "stats": {
                        "total_tokens": r["tokens"],
                        "total_time_ms": r["ms"],
                        "tokens_per_second": r["tps"],
                    }
                },
                None,
                cache_hit=r["hit"],
            )
        if prune_at is not None:  # the rollup must follow deletions too
            removed = db.prune_stats(older_than=prune_at)
            assert removed == sum(r["ts"] < prune_at for r in rows)
            rows = [r for r in rows if r["ts"] >= prune_at]
        until = None if since is None or span is None else since + span
        got = db.get_stats_summary(since=since, until=until, tz=tz)
        want = brute_summary(
            rows, since if since is not None else 0.0, until if until is not None else math.inf, tz
        )
        assert got["total_generations"] == want["n"]
        assert got["total_tokens"] == want["tokens"]
        assert got["cache_hits"] == want["hits"]
        assert got["avg_tokens_per_second"] == pytest.approx(want["tps"], rel=1e-9, abs=1e-9)
        assert {m: v["generations"] for m, v in got["by_model"].items()} == {
            ap(m): v["n"] for m, v in want["models"].items()
        }
        for m, v in want["models"].items():
            got_m = got["by_model"][ap(m)]
            assert got_m["p50_latency_ms"] == pytest.approx(quantile(v["lat"], 0.5))
            assert got_m["p95_latency_ms"] == pytest.approx(quantile(v["lat"], 0.95))
        assert {d["date"]: d["generations"] for d in got["by_day"]} == want["days"]
        assert [d["date"] for d in got["by_day"]] == sorted(want["days"])


# -- history ------------------------------------------------------------------------------------


def test_history_newest_first_and_paging(memory_db: CyllamaDB) -> None:
    ids = [record_at(memory_db, T0 + k, "a.gguf" if k % 3 else "b.gguf") for k in range(10)]
    # Same timestamp: the later row is newer.
    ids.append(record_at(memory_db, T0 + 9, "a.gguf"))
    history = memory_db.get_generation_history()
    assert [r["id"] for r in history] == [ids[10], *reversed(ids[:10])]
    pages = [memory_db.get_generation_history(limit=4, offset=o) for o in (0, 4, 8)]
    assert [r["id"] for page in pages for r in page] == [r["id"] for r in history]
    assert [len(p) for p in pages] == [4, 4, 3]
    assert memory_db.get_generation_history(limit=0) == []
    b_rows = memory_db.get_generation_history(model_path="b.gguf")
    assert [r["id"] for r in b_rows] == [ids[9], ids[6], ids[3], ids[0]]
    with pytest.raises(ValueError, match="limit"):
        memory_db.get_generation_history(limit=-1)
    with pytest.raises(TypeError, match="offset"):
        memory_db.get_generation_history(offset="2")  # type: ignore[arg-type]


def test_history_goes_into_pandas(memory_db: CyllamaDB) -> None:
    pd = pytest.importorskip("pandas")
    for k in range(5):
        record_at(memory_db, T0 + k, "a.gguf" if k % 2 else "b.gguf", tps=10.0 * (k + 1))
    df = pd.DataFrame(memory_db.get_generation_history())
    assert list(df.columns) == list(STATS_COLUMNS)
    assert len(df) == 5
    means = df.groupby("model_name")["tokens_per_second"].mean().to_dict()
    assert means == {"a.gguf": pytest.approx(30.0), "b.gguf": pytest.approx(30.0)}
    assert str(df["created_at"].dt.tz) == "UTC"


# -- retention ----------------------------------------------------------------------------------


def test_prune_stats(any_db: CyllamaDB) -> None:
    for k in range(10):
        record_at(any_db, T0 + k * 86400, "a.gguf" if k % 2 else "b.gguf")
    any_db.clock = lambda: T0 + 10 * 86400  # type: ignore[method-assign]
    assert any_db.prune_stats(older_than=timedelta(days=7)) == 3  # days 0, 1, 2
    assert any_db.prune_stats(older_than=T0 + 5 * 86400, model_path="a.gguf") == 1  # day 3
    assert any_db.prune_stats(older_than=datetime.fromtimestamp(T0, UTC)) == 0
    summary = any_db.get_stats_summary()
    assert summary["total_generations"] == 6
    assert any_db.get_db_stats()["stats_entries"] == 6
    with pytest.raises(TypeError, match="older_than"):
        any_db.prune_stats(older_than=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        any_db.prune_stats(older_than=b"7d")  # type: ignore[arg-type]


def test_prune_everything_empties_the_rollup(memory_db: CyllamaDB) -> None:
    for k in range(5):
        record_at(memory_db, T0 + k * 100, tps=3.3)
    memory_db.prune_stats(older_than=T0 + 10_000)
    with memory_db.pool.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM stats_rollup").fetchone()[0] == 0
    assert memory_db.get_stats_summary()["total_generations"] == 0


def test_max_age_prunes_while_recording(db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        assert db.stats_max_age is None
        record_at(db, T0)
        record_at(db, T0 + 86400)
        db.clock = lambda: T0 + 86400 + 60  # type: ignore[method-assign]
        db.stats_max_age = "1d"  # applies at once: the first row is older than a day
        assert db.stats_max_age == timedelta(days=1)
        assert db.get_stats_summary()["total_generations"] == 1
    with CyllamaDB(db_path) as db:  # the setting lives in the file
        assert db.stats_max_age == timedelta(days=1)
        record_at(db, T0 + 3 * 86400)
        assert db.get_stats_summary()["total_generations"] == 1
        record_at(db, T0 + 3 * 86400 + 60)  # within the hour: no second prune pass needed
        assert db.get_stats_summary()["total_generations"] == 2
        db.stats_max_age = None
        assert db.stats_max_age is None
        with pytest.raises(ValueError, match="stats_max_age"):
            db.stats_max_age = "soon"
        with pytest.raises(ValueError, match="positive"):
            db.stats_max_age = 0


def test_db_stats_counts_rows(any_db: CyllamaDB) -> None:
    assert any_db.get_db_stats()["stats_entries"] == 0
    any_db.record_generation("m.gguf", response(), CONFIG)
    assert any_db.get_db_stats()["stats_entries"] == 1


# -- buffered cache hits -------------------------------------------------------------------------


@pytest.fixture
def slow_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """The background writer waits an hour: rows are written only when something asks."""
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 3600.0)


def raw_count(path: Path) -> int:
    """Rows in the file's stats table, read by a connection of its own."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM stats").fetchone()[0])


def wait_for(condition: Any, timeout: float = 30.0) -> bool:
    """Poll ``condition()`` until it is true (a correctness wait, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def test_a_hit_is_not_a_write(db_path: Path, slow_flush: None) -> None:
    with CyllamaDB(db_path) as db:
        record_at(db, T0)  # a real generation: written at once
        watcher = sqlite3.connect(db_path)
        version = watcher.execute("PRAGMA data_version").fetchone()[0]
        results = []
        for _ in range(20):
            results.append(db.record_generation("m.gguf", response(), CONFIG, cache_hit=True))
            results.append(db.record_generation("m.gguf", response(cache_hit=True), CONFIG))
        # data_version changes whenever another connection commits.
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == version
        assert raw_count(db_path) == 1
        assert results == [None] * 40  # buffered rows have no id yet
        assert db.get_stats_summary()["cache_hits"] == 40  # the read writes them first
        assert watcher.execute("PRAGMA data_version").fetchone()[0] != version
        assert raw_count(db_path) == 41
        watcher.close()


@pytest.mark.parametrize(
    "reader",
    [
        lambda db: db.get_stats_summary()["total_generations"],
        lambda db: len(db.get_generation_history()),
        lambda db: db.prune_stats(older_than=T0 - 1) or db.get_db_stats()["stats_entries"],
        lambda db: db.get_db_stats()["stats_entries"],
    ],
    ids=["summary", "history", "prune", "db_stats"],
)
def test_buffered_hits_are_written_before_reads(
    any_db: CyllamaDB, slow_flush: None, reader: Any
) -> None:
    for k in range(5):
        record_at(any_db, T0 + k, hit=True)
    assert reader(any_db) == 5


def test_prune_sees_buffered_hits(any_db: CyllamaDB, slow_flush: None) -> None:
    for k in range(4):
        record_at(any_db, T0 + k, hit=True)
    assert any_db.prune_stats(older_than=T0 + 2) == 2


def test_a_miss_writes_the_waiting_hits_with_it(db_path: Path, slow_flush: None) -> None:
    with CyllamaDB(db_path) as db:
        for k in range(3):
            record_at(db, T0 + k, hit=True)
        assert raw_count(db_path) == 0
        rid = record_at(db, T0 + 3)
        assert raw_count(db_path) == 4
        history = db.get_generation_history()
        assert [r["cache_hit"] for r in history] == [False, True, True, True]
        assert history[0]["id"] == rid


def test_nothing_is_lost_across_close(db_path: Path, slow_flush: None) -> None:
    db = CyllamaDB(db_path)
    for k in range(7):
        record_at(db, T0 + k, hit=True)
    db.close()
    assert raw_count(db_path) == 7
    with CyllamaDB(db_path) as again:
        assert again.get_stats_summary()["cache_hits"] == 7


def test_hits_are_written_at_exit_without_close(db_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import cyllama_db.db.deferred as s\n"
        "s.FLUSH_SECONDS = 3600.0\n"
        "from cyllama_db import CyllamaDB\n"
        f"db = CyllamaDB({str(db_path)!r})\n"
        "for _ in range(9):\n"
        "    db.record_generation('m.gguf', {'stats': None}, None, cache_hit=True)\n"
        "keep = db  # never closed: the interpreter's exit writes the rows\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert raw_count(db_path) == 9


def test_hits_of_a_collected_database_are_written(db_path: Path, slow_flush: None) -> None:
    import gc

    db = CyllamaDB(db_path)
    for k in range(3):
        record_at(db, T0 + k, hit=True)
    del db
    gc.collect()
    assert raw_count(db_path) == 3


def test_background_writer_writes_after_the_interval(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 0.05)
    with CyllamaDB(db_path) as db:
        for k in range(3):
            record_at(db, T0 + k, hit=True)
        assert wait_for(lambda: raw_count(db_path) == 3)


def test_background_writer_writes_a_full_batch(db_path: Path, slow_flush: None) -> None:
    with CyllamaDB(db_path) as db:
        for k in range(deferred_module.FLUSH_ITEMS):
            record_at(db, T0 + k, hit=True)
        assert wait_for(lambda: raw_count(db_path) == deferred_module.FLUSH_ITEMS)


def test_a_locked_file_does_not_block_hits(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 0.01)  # the writer retries often
    with CyllamaDB(db_path, busy_timeout=10) as db:
        done = threading.Event()

        def hits() -> None:
            for k in range(deferred_module.FLUSH_ITEMS + 50):
                record_at(db, T0 + k, hit=True)
            done.set()

        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        worker = threading.Thread(target=hits)
        try:
            worker.start()
            # Writing (or waiting for the lock) in the caller would take the
            # busy timeout (10 s) for the first hit already.
            finished = done.wait(timeout=5.0)
        finally:
            other.execute("ROLLBACK")
            other.close()
            worker.join()
        assert finished
        assert db.get_stats_summary()["cache_hits"] == deferred_module.FLUSH_ITEMS + 50


def test_a_read_waits_for_the_writers_batch_in_flight(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 0.01)
    monkeypatch.setattr(deferred_module, "BACKGROUND_WAIT_SECONDS", 20.0)
    with CyllamaDB(db_path, busy_timeout=30) as db:
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            for k in range(5):
                record_at(db, T0 + k, hit=True)
            # The writer has taken the rows and waits for the lock with them.
            assert wait_for(lambda: len(db.deferred) == 0)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert db.get_stats_summary()["cache_hits"] == 5


def test_buffer_is_bounded(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 3600.0)
    monkeypatch.setattr(deferred_module, "BUFFER_MAX", 20)
    with CyllamaDB(db_path) as db:
        with caplog.at_level(logging.WARNING, logger="cyllama_db.stats"):
            for k in range(50):
                record_at(db, T0 + k, hit=True)
        assert "dropped the" in caplog.text
        history = db.get_generation_history(limit=1000)
        assert 0 < len(history) <= 20
        # The newest rows are kept, the oldest dropped.
        assert history[0]["created_at"] == datetime.fromtimestamp(T0 + 49, UTC)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_does_not_write_the_parents_hits(db_path: Path, slow_flush: None) -> None:
    db = CyllamaDB(db_path)
    for k in range(5):
        record_at(db, T0 + k, hit=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            db.close()  # its buffer was emptied at fork: the parent writes the rows
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert raw_count(db_path) == 0
    db.close()
    assert raw_count(db_path) == 5


# -- model paths are made absolute ---------------------------------------------------------------


def test_filters_match_relative_and_home_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_db: CyllamaDB
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "model.gguf")
    record_at(memory_db, T0, absolute)  # what LLM and complete() pass
    record_at(memory_db, T0 + 1, "model.gguf")  # relative: stored absolute too
    record_at(memory_db, T0 + 2, "other.gguf")
    summary = memory_db.get_stats_summary(model_path="model.gguf")
    assert summary["total_generations"] == 2
    assert list(summary["by_model"]) == [absolute]
    assert len(memory_db.get_generation_history(model_path="model.gguf")) == 2
    assert len(memory_db.get_generation_history(model_path=Path("./model.gguf"))) == 2

    home = Path(os.environ["HOME"])
    record_at(memory_db, T0 + 3, str(home / "m.gguf"))
    assert memory_db.get_stats_summary(model_path="~/m.gguf")["total_generations"] == 1
    assert memory_db.prune_stats(older_than=T0 + 10, model_path="model.gguf") == 2
    assert memory_db.get_stats_summary()["total_generations"] == 2


def test_llm_stats_found_by_relative_path(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from cyllama_db import LLM

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_model_path, tmp_path / "model.gguf")
    with CyllamaDB(tmp_path / "llm.db") as db:
        llm = LLM("model.gguf", db=db, temperature=0.0, max_tokens=4)
        assert not llm("hi").cache_hit
        assert llm("hi").cache_hit
        summary = db.get_stats_summary(model_path="model.gguf")
        assert (summary["total_generations"], summary["cache_hits"]) == (2, 1)
        assert len(db.get_generation_history(model_path="model.gguf")) == 2
        assert db.prune_stats(older_than=timedelta(days=-1), model_path="model.gguf") == 2


# -- bad input ---------------------------------------------------------------------------------


def test_record_generation_checks_argument_types(memory_db: CyllamaDB) -> None:
    with pytest.raises(TypeError, match="response"):
        memory_db.record_generation("m.gguf", "text", CONFIG)
    with pytest.raises(TypeError, match="response"):
        memory_db.record_generation("m.gguf", None, CONFIG)
    with pytest.raises(TypeError, match="config"):
        memory_db.record_generation("m.gguf", response(), 42)
    with pytest.raises(TypeError, match="cache_hit"):
        memory_db.record_generation("m.gguf", response(), CONFIG, cache_hit="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"response\.cache_hit"):
        memory_db.record_generation("m.gguf", {**response(), "cache_hit": "yes"}, CONFIG)
    with pytest.raises(TypeError, match=r"response\.stats"):
        memory_db.record_generation("m.gguf", {"stats": "fast"}, CONFIG)
    assert memory_db.get_generation_history() == []
    # What is accepted: bools, 0/1 and numpy's bool.
    memory_db.record_generation("m.gguf", response(), CONFIG, cache_hit=0)  # type: ignore[arg-type]
    np = pytest.importorskip("numpy")
    memory_db.record_generation("m.gguf", response(), CONFIG, cache_hit=np.bool_(True))
    assert sorted(r["cache_hit"] for r in memory_db.get_generation_history()) == [False, True]


def test_time_and_paging_errors_name_the_argument(memory_db: CyllamaDB) -> None:
    record_at(memory_db, T0)
    with pytest.raises(ValueError, match="since='yesterday'"):
        memory_db.get_stats_summary(since="yesterday")
    with pytest.raises(ValueError, match="until='now'"):
        memory_db.get_stats_summary(until="now")
    with pytest.raises(TypeError, match="since"):
        memory_db.get_stats_summary(since=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="since"):
        memory_db.get_stats_summary(since=math.nan)
    with pytest.raises(ValueError, match="until"):
        memory_db.get_stats_summary(until=10**400)
    with pytest.raises(TypeError, match="older_than"):
        memory_db.prune_stats(older_than=["7d"])  # type: ignore[arg-type]
    # Beyond SQLite's integers a limit means "no limit", an offset "past the end".
    assert len(memory_db.get_generation_history(limit=10**30)) == 1
    assert memory_db.get_generation_history(offset=10**30) == []


# -- llama-cpp-python's own completion and chat dicts ----------------------------------------------


@pytest.fixture(scope="module")
def llama_outputs(tiny_model_path: Path) -> dict[str, Any]:
    """Real dicts from llama-cpp-python: a completion, a chat completion and stream chunks."""
    import llama_cpp

    llama = llama_cpp.Llama(str(tiny_model_path), verbose=False, n_ctx=256)
    outputs = {
        "completion": llama.create_completion("Hello", max_tokens=5, temperature=0.0),
        "chat": llama.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0.0),
        "completion_chunk": next(iter(llama.create_completion("Hello", max_tokens=2, stream=True))),
        "chat_chunk": next(
            iter(llama.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2, stream=True))
        ),
    }
    llama.close()
    return outputs


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_records_llama_cpp_output_dicts(
    memory_db: CyllamaDB, llama_outputs: dict[str, Any], tiny_model_path: Path, kind: str
) -> None:
    output = llama_outputs[kind]
    assert output["object"] == ("text_completion" if kind == "completion" else "chat.completion")
    usage = output["usage"]
    rid = memory_db.record_generation(tiny_model_path, output, {"temperature": 0.0, "max_tokens": 5})
    assert isinstance(rid, int)
    [row] = memory_db.get_generation_history()
    assert (row["prompt_tokens"], row["generated_tokens"], row["total_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]
    )
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert row["finish_reason"] == output["choices"][0]["finish_reason"] in ("stop", "length")
    assert row["model_path"] == str(tiny_model_path) and row["model_name"] == "tiny-test-llama"
    assert (row["temperature"], row["max_tokens"], row["cache_hit"]) == (0.0, 5, False)
    # The timings a completion dict does not have stay NULL.
    assert [row[k] for k in ("prompt_time_ms", "generation_time_ms", "total_time_ms", "tokens_per_second")] == [
        None, None, None, None
    ]
    # Without a model_path, the dict's own "model" (the Llama's model_path) is used.
    memory_db.record_generation(None, output)
    assert memory_db.get_generation_history()[0]["model_path"] == os.path.abspath(output["model"])


def test_the_cyllama_db_marker_counts_as_a_cache_hit(memory_db: CyllamaDB, llama_outputs: dict[str, Any]) -> None:
    output = {**llama_outputs["chat"], "cyllama_db": {"cache_hit": True}}
    assert memory_db.record_generation("m.gguf", output) is None  # a hit: buffered
    memory_db.record_generation("m.gguf", {**output, "cyllama_db": {"cache_hit": False}})
    memory_db.record_generation("m.gguf", llama_outputs["chat"], cache_hit=True)
    rows = memory_db.get_generation_history()
    assert sorted(r["cache_hit"] for r in rows) == [False, True, True]
    assert all(r["generated_tokens"] == output["usage"]["completion_tokens"] for r in rows)
    with pytest.raises(TypeError, match=r"cyllama_db.*cache_hit"):
        memory_db.record_generation("m.gguf", {**output, "cyllama_db": {"cache_hit": "yes"}})
    with pytest.raises(TypeError, match=r"'cyllama_db'.*dict"):
        memory_db.record_generation("m.gguf", {**output, "cyllama_db": True})


def test_openai_shaped_objects_are_read_by_attribute(memory_db: CyllamaDB) -> None:
    # e.g. the openai client's Completion objects: the same fields as attributes
    output = SimpleNamespace(
        object="chat.completion",
        model="m.gguf",
        usage=SimpleNamespace(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        choices=[SimpleNamespace(finish_reason="stop")],
    )
    memory_db.record_generation("m.gguf", output)
    [row] = memory_db.get_generation_history()
    assert (row["prompt_tokens"], row["generated_tokens"], row["total_tokens"], row["finish_reason"]) == (
        3, 4, 7, "stop"
    )


def test_unreadable_outputs_are_errors_never_null_rows(
    memory_db: CyllamaDB, llama_outputs: dict[str, Any]
) -> None:
    good = llama_outputs["completion"]
    usage = good["usage"]
    bad: list[tuple[Any, type[Exception], str]] = [
        ({}, TypeError, r"Response.*'usage' and 'choices'.*got a mapping with keys none"),
        ({"foo": 1, "bar": 2}, TypeError, r"got a mapping with keys 'foo', 'bar'"),
        (SimpleNamespace(), TypeError, r"SimpleNamespace with none of those attributes"),
        (llama_outputs["completion_chunk"], ValueError, r"no 'usage'"),
        (llama_outputs["chat_chunk"], ValueError, r"stream chunk.*chat\.completion\.chunk"),
        ({**good, "object": "embedding"}, ValueError, r"'embedding'.*expected 'text_completion'"),
        ({**good, "usage": None}, ValueError, r"no 'usage'"),
        ({**good, "usage": "lots"}, TypeError, r"response\['usage'\] must be a mapping"),
        ({**good, "usage": {**usage, "prompt_tokens": "5"}}, TypeError, r"usage\.prompt_tokens must be an int"),
        ({**good, "usage": {**usage, "completion_tokens": 2.5}}, TypeError, r"usage\.completion_tokens must be an int"),
        ({**good, "usage": {**usage, "total_tokens": True}}, TypeError, r"usage\.total_tokens must be an int"),
        ({**good, "usage": {"prompt_tokens": 3}}, ValueError, r"usage\.completion_tokens is missing"),
        ({**good, "usage": {**usage, "prompt_tokens": -1}}, ValueError, r"must not be negative"),
        ({**good, "choices": []}, ValueError, r"choices'\] must be a non-empty list"),
        ({**good, "choices": "text"}, ValueError, r"choices'\] must be a non-empty list"),
        ({**good, "choices": [5]}, TypeError, r"choices'\]\[0\] must be a mapping"),
        ({**good, "choices": [{"finish_reason": 1}]}, TypeError, r"finish_reason must be a str"),
        ({**good, "model": 7}, TypeError, r"'model'\] must be a str"),
    ]
    for output, error, message in bad:
        with pytest.raises(error, match=message):
            memory_db.record_generation("m.gguf", output)
    with pytest.raises(TypeError, match=r"model_path.*None only for a completion dict"):
        memory_db.record_generation(None, {"finish_reason": "stop", "stats": None})
    with pytest.raises(TypeError, match="model_path"):
        memory_db.record_generation(None, {k: v for k, v in good.items() if k != "model"})
    assert memory_db.get_generation_history() == []
    # total_tokens may be left out: it is the sum
    memory_db.record_generation("m.gguf", {**good, "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
    assert memory_db.get_generation_history()[0]["total_tokens"] == 5


# -- the store object ----------------------------------------------------------------------------


def test_the_store_object(any_db: CyllamaDB, slow_flush: None) -> None:
    from cyllama_db.stores.stats import StatsStore

    stats = any_db.stats
    assert isinstance(stats, StatsStore) and stats in any_db.stores and stats.name == "stats"
    any_db.clock = lambda: T0  # type: ignore[method-assign]
    rid = stats.record("a.gguf", response(), CONFIG)
    assert isinstance(rid, int)
    assert stats.record("a.gguf", response(), CONFIG, cache_hit=True) is None
    assert len(any_db.deferred.channels["stats.hits"]) == 1  # the hit waits in the database's write-behind
    assert stats.count() == 1  # a count writes nothing: the hit is not there yet
    stats.flush()
    assert len(any_db.deferred) == 0
    assert stats.count() == 2 and stats.count(since=T0 + 1) == 0 and stats.count(since=T0) == 2
    assert stats.summary() == any_db.get_stats_summary()
    assert stats.summary()["cache_hits"] == 1
    assert stats.history() == any_db.get_generation_history()
    assert stats.models() == any_db.recorded_models() == [(ap("a.gguf"), "a.gguf")]
    assert stats.usage([ap("a.gguf")]) == any_db.model_usage([ap("a.gguf")]) == (2, T0)
    assert stats.series(T0 - 60, 60, until=T0 + 60)["overall"][0]["generations"] == 2
    assert stats.prune(older_than=T0 + 1) == 2
    assert any_db.get_db_stats()["stats_entries"] == 0


def test_the_session_id_and_max_age_are_the_stores(any_db: CyllamaDB) -> None:
    any_db.session_id = "mine"
    assert any_db.stats.session_id == "mine"
    any_db.stats.session_id = None
    assert any_db.session_id == process_session_id()
    any_db.stats.max_age = "2d"
    assert any_db.stats_max_age == timedelta(days=2)
    # The setting lives in the config store, under its documented key, as a float.
    assert any_db.config.get("cyllama.stats_max_age_seconds") == 172800.0
    any_db.stats_max_age = None
    assert any_db.config.get("cyllama.stats_max_age_seconds") is None
    assert any_db.stats.max_age is None


def test_a_real_generation_notes_its_process_in_metadata(any_db: CyllamaDB) -> None:
    record_at(any_db, T0)
    pid, noted = any_db.metadata.get("inference_process").split()  # type: ignore[union-attr]
    assert int(pid) == os.getpid() and float(noted) == T0



def test_totals_are_running_totals(any_db: CyllamaDB, slow_flush: None) -> None:
    record_at(any_db, T0, total_ms=3.0)
    record_at(any_db, T0 + 1, hit=True, total_ms=0.5)
    any_db.prune_stats(older_than=T0 + 10)  # never decremented
    totals = any_db.stats.totals()  # the buffered hit is written first
    assert [(t["model_path"], t["cache_hit"], t["generations"]) for t in totals] == [
        (ap("a.gguf"), False, 1), (ap("a.gguf"), True, 1)
    ]
    miss = totals[0]
    assert miss["model_name"] == "a.gguf" and miss["prompt_tokens"] == 10 and miss["generated_tokens"] == 20
    assert miss["duration_count"] == 1 and miss["duration_sum_ms"] == 3.0
    assert len(miss["buckets"]) == len(stats_module.LATENCY_BUCKETS)
    # Cumulative: 3 ms is within every bound from 5 ms on.
    assert miss["buckets"] == [0 if le < 0.003 else 1 for le in stats_module.LATENCY_BUCKETS]
