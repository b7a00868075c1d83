"""Store contract tests run against both engines (issue 16): a SQLite file and a PostgreSQL server.

``engine_db`` opens a :class:`CyllamaDB` on a temporary SQLite file and on a
fresh database of the throwaway PostgreSQL server (tests/pgserver.py); the
PostgreSQL cases skip, saying why, only where no server binaries exist.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import CyllamaDB, CyllamaDBError, SchemaVersionError
from cyllama_db.db import migrations
from cyllama_db.errors import ConfigurationError, ModelExistsError, SearchUnavailableError

PASSWORD = "s3cret-pw"

Opener = Callable[..., CyllamaDB]


def _with_password(url: str) -> str:
    # The test cluster trusts local connections: a password is accepted and ignored.
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_open(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """A function opening a database on one engine (every call: the same database)."""
    if request.param == "sqlite":
        target: dict[str, Any] = {"path": tmp_path / "engine.db"}
    else:
        target = {"url": _with_password(request.getfixturevalue("pg_url"))}
    opened: list[CyllamaDB] = []

    def open_db(**options: Any) -> CyllamaDB:
        db = CyllamaDB(**target, **options)
        opened.append(db)
        return db

    yield open_db
    for db in opened:
        db.close()


@pytest.fixture
def engine_db(engine_open: Opener) -> CyllamaDB:
    """A CyllamaDB on a temporary SQLite file, and one on a PostgreSQL database."""
    return engine_open()


def _model(tmp_path: Path, name: str = "m.gguf") -> str:
    return str(tmp_path / name)


# -- config and metadata ---------------------------------------------------------------------------


def test_config_round_trips_every_type(engine_db: CyllamaDB) -> None:
    values = {"s": "text ü", "i": 2**62, "f": 0.1, "b": True, "j": {"a": [1, None, "x"]}, "n": None}
    for key, value in values.items():
        engine_db.config.set(key, value)
    for key, value in values.items():
        got = engine_db.config.get(key)
        assert got == value and type(got) is type(value)
    engine_db.config.set("i", 3)
    assert engine_db.config.get("i") == 3
    assert engine_db.config.all() == {**values, "i": 3}
    assert engine_db.config.delete("s") and not engine_db.config.delete("s")
    assert engine_db.config.get("s", "gone") == "gone"


def test_metadata(engine_db: CyllamaDB) -> None:
    engine_db.metadata.set("k", 5)
    assert engine_db.metadata.get("k") == "5"
    assert engine_db.metadata.get("db_version") == str(migrations.latest_version())
    assert "k" in engine_db.metadata.all()
    assert engine_db.metadata.delete("k") and engine_db.metadata.get("k") is None


# -- the registry ---------------------------------------------------------------------------------


def test_models_register_get_update_delete(engine_db: CyllamaDB, tmp_path: Path) -> None:
    first = engine_db.models.save("alpha", model_path=_model(tmp_path, "a.gguf"), ctx_size=4096, mlock=True)
    second = engine_db.models.save("beta")
    assert first != second
    record = engine_db.models.get(first)
    assert record is not None and record["name"] == "alpha"
    assert record["ctx_size"] == 4096 and record["mlock"] is True
    with pytest.raises(ModelExistsError):
        engine_db.models.save("alpha")
    updated = engine_db.models.update("alpha", ctx_size=None, status="running", top_k=5)
    assert updated["ctx_size"] is None and updated["top_k"] == 5 and updated["status"] == "running"
    with pytest.raises(ModelExistsError):
        engine_db.models.update("beta", name="alpha")
    assert engine_db.get_db_stats()["running_models"] == 1
    assert [m["name"] for m in engine_db.models.list()] == ["alpha", "beta"]
    assert engine_db.models.delete("alpha") and not engine_db.models.delete("alpha")
    assert engine_db.models.get_by_name("alpha") is None
    assert engine_db.models.delete_all() == 1


# -- the cache ---------------------------------------------------------------------------------


def test_cache_put_get_and_ttl_expiry(engine_db: CyllamaDB, tmp_path: Path) -> None:
    model = _model(tmp_path)
    now = [1_700_000_000.0]
    engine_db.clock = lambda: now[0]
    engine_db.cache.put("hello", model, {"temperature": 0.0}, "world", ttl=60)
    engine_db.cache.put("forever", model, None, "kept", ttl=None)
    hit = engine_db.cache.get("hello", model, {"temperature": 0.0})
    assert hit is not None and hit.text == "world" and hit.cache_hit
    assert engine_db.cache.get("hello", model, {"temperature": 0.5}) is None  # another config
    now[0] += 61
    assert engine_db.cache.get("hello", model, {"temperature": 0.0}) is None  # expired
    assert engine_db.cache.stats()["expired"] == 1
    assert engine_db.cache.cleanup() == 1
    assert engine_db.cache.stats()["entries"] == 1
    # A re-store replaces the entry (and moves it to the end of the LRU order).
    engine_db.cache.put("forever", model, None, "replaced")
    assert engine_db.cache.get("forever", model).text == "replaced"  # type: ignore[union-attr]
    assert engine_db.cache.stats()["entries"] == 1


def test_hit_counts_after_flush(engine_db: CyllamaDB, tmp_path: Path) -> None:
    model = _model(tmp_path)
    engine_db.cache.put("p", model, None, "r")
    for _ in range(3):
        assert engine_db.cache.get("p", model) is not None
    engine_db.cache.flush()
    entries = engine_db.cache.entries()
    assert len(entries) == 1 and entries[0]["hit_count"] == 3 and entries[0]["last_hit_at"] is not None
    assert engine_db.cache.stats()["hits"] == 3


def test_lru_eviction_keeps_the_size_limit(engine_open: Opener, tmp_path: Path) -> None:
    limit_mb = 0.02  # 20971 bytes
    db = engine_open(max_cache_size_mb=limit_mb)
    model = _model(tmp_path)
    filler = "x" * 1500
    for i in range(5):
        db.cache.put(f"early {i}", model, None, filler)
    assert db.cache.get("early 0", model) is not None  # hit: the most recently used now
    limit = int(limit_mb * 1_048_576)
    room = int(limit / (db.cache.stats()["size_bytes"] / 5))  # entries that fit
    late = room - 5 + 2  # two more than fit: the two least recently used go
    for i in range(late):
        db.cache.put(f"late {i}", model, None, filler)
    totals = db.cache.totals()
    assert totals is not None
    assert 0 < totals["size_bytes"] <= limit and totals["evictions"] > 0
    assert db.cache.stats()["size_bytes"] == totals["size_bytes"]  # the kept total is exact
    assert db.cache.get("early 1", model) is None  # never hit, oldest: evicted first
    assert db.cache.get("early 0", model) is not None  # hit: kept
    assert db.cache.get(f"late {late - 1}", model) is not None  # the newest
    assert db.cache.cleanup() == 0 and db.cache.totals() == totals


def test_invalidate_by_model_prompt_and_namespace(engine_db: CyllamaDB, tmp_path: Path) -> None:
    a, b = _model(tmp_path, "a.gguf"), _model(tmp_path, "b.gguf")
    for model in (a, b):
        engine_db.cache.put("shared", model, None, "r")
        engine_db.cache.put("only", model, None, "r")
    engine_db.cache.put("shared", a, None, "r", namespace="team")
    assert engine_db.cache.get("shared", a, namespace="team") is not None
    assert engine_db.cache.invalidate(namespace="team") == 1
    assert engine_db.cache.get("shared", a, namespace="team") is None
    assert engine_db.cache.invalidate(prompt="only") == 2
    assert engine_db.cache.invalidate(model_path=b) == 1
    assert engine_db.cache.get("shared", a) is not None
    assert engine_db.cache.invalidate() == 1
    totals = engine_db.cache.totals()
    assert totals is not None and totals["entries"] == 0 and totals["size_bytes"] == 0


def test_get_db_stats_and_migration_status(engine_db: CyllamaDB, tmp_path: Path) -> None:
    engine_db.config.set("k", 1)
    engine_db.cache.put("p", _model(tmp_path), None, "r")
    stats = engine_db.get_db_stats()
    for key in (
        "path", "file_size_mb", "file_bytes", "schema_version", "config_entries", "metadata_entries",
        "model_entries", "running_models", "cache_entries", "cache_size_mb", "stats_entries",
        "log_entries", "metrics_samples",
    ):
        assert key in stats, key
    assert stats["config_entries"] == 1 and stats["cache_entries"] == 1
    assert stats["schema_version"] == migrations.latest_version() == engine_db.schema_version()
    assert stats["engine"] == engine_db.backend.name
    status = engine_db.migration_status()
    assert [m["version"] for m in status] == [m.version for m in migrations.registered_migrations()]
    assert all(m["applied"] and isinstance(m["applied_at"], str) for m in status)
    assert engine_db.get_database_size() > 0


def test_reopen_keeps_the_data(engine_open: Opener, tmp_path: Path) -> None:
    db = engine_open()
    db.config.set("kept", [1, 2])
    db.cache.put("p", _model(tmp_path), None, "r")
    db.models.save("m")
    db.close()
    again = engine_open()
    assert again.config.get("kept") == [1, 2]
    assert again.cache.get("p", _model(tmp_path)) is not None
    assert again.models.get_by_name("m") is not None
    assert again.schema_version() == migrations.latest_version()


def test_newer_schema_is_refused_untouched(engine_open: Opener) -> None:
    db = engine_open()
    db.config.set("k", "v")
    newer = migrations.latest_version() + 1
    with db.pool.transaction() as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", (newer, "from the future"))
    db.close()
    with pytest.raises(SchemaVersionError) as info:
        engine_open()
    assert str(newer) in str(info.value)
    # Untouched: readable by a build that knows the version.
    with pytest.raises(SchemaVersionError):
        engine_open(readonly=True)


def test_search_on_each_engine(engine_db: CyllamaDB, tmp_path: Path) -> None:
    engine_db.cache.put("the quick brown fox", _model(tmp_path), None, "jumps")
    if engine_db.backend.name == "sqlite":
        assert [e["prompt"] for e in engine_db.cache.search("quick")] == ["the quick brown fox"]
    else:
        with pytest.raises(SearchUnavailableError, match="postgresql"):
            engine_db.cache.search("quick")


# -- PostgreSQL only: URL, faults, migrations across machines ------------------------------------------


def test_password_is_redacted_everywhere(pg_url: str) -> None:
    url = _with_password(pg_url)
    with CyllamaDB(url=url) as db:
        for text in (repr(db), db.path, str(db.get_db_stats()), repr(db.settings), repr(db.config)):
            assert PASSWORD not in text
        assert ":****@" in repr(db) and ":****@" in db.path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_names_host_and_port_never_the_password() -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")
    port = _closed_port()
    with pytest.raises(CyllamaDBError) as info:
        CyllamaDB(url=f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/nope?connect_timeout=2")
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and PASSWORD not in text


def test_machines_opening_at_once_migrate_once(pg_url: str) -> None:
    results: list[Any] = []

    def open_one() -> None:
        try:
            with CyllamaDB(url=pg_url) as db:
                results.append(db.schema_version())
        except Exception as exc:  # collected: the assertion below shows it
            results.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [migrations.latest_version()] * 4
    with CyllamaDB(url=pg_url) as db, db.pool.read() as conn:
        rows = conn.execute("SELECT version, COUNT(*) FROM schema_version GROUP BY version ORDER BY version").fetchall()
    assert [tuple(r) for r in rows] == [(m.version, 1) for m in migrations.registered_migrations()]


# -- settings: which engine --------------------------------------------------------------------


def test_url_precedence_and_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cyllama_db.db.settings import Settings

    file = tmp_path / "x.db"
    assert Settings.resolve(url=f"sqlite:///{file}").path == str(file)
    assert Settings.resolve(url=f"sqlite:///{file}").engine == "sqlite"
    with pytest.raises(ConfigurationError, match="not both"):
        Settings.resolve(path=file, url=f"sqlite:///{file}")
    pg = f"postgresql://u:{PASSWORD}@db.example:5433/cache"
    env = {"CYLLAMA_DB_URL": pg}
    resolved = Settings.resolve(environ=env)
    assert resolved.engine == "postgresql" and PASSWORD not in resolved.path and PASSWORD not in repr(resolved)
    assert Settings.resolve(path=file, environ=env).engine == "sqlite"  # the argument wins
    with pytest.raises(ConfigurationError, match="CYLLAMA_DB_PATH"):
        Settings.resolve(environ={**env, "CYLLAMA_DB_PATH": str(file)})
    assert Settings.resolve(path=pg).engine == "postgresql"  # --db passes URLs as the path


# -- the command line --------------------------------------------------------------------------


def test_cli_accepts_a_postgresql_url(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cyllama_db.cli import main

    url = _with_password(pg_url)
    with CyllamaDB(url=url) as db:
        db.config.set("k", 1)
    assert main(["--db", url, "info"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and ":****@" in out and "config entries" in out
    assert main(["info", "--db", url, "--json"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and '"config_entries": 1' in out


def test_cli_unreachable_server_is_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from cyllama_db.cli import main

    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")
    port = _closed_port()
    assert main(["--db", f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/x?connect_timeout=2", "info"]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert f"127.0.0.1:{port}" in text and PASSWORD not in text


# -- statistics (issue 16: stats and its summary on both engines) ------------------------------------

T0 = 1_714_564_800.0  # 2024-05-01 12:00 UTC, on a 15-minute bucket boundary


def _response(total_ms: float | None = 100.0, tps: float | None = 50.0, prompt: int = 10, generated: int = 20,
              hit: bool = False) -> dict[str, Any]:
    stats = {
        "prompt_tokens": prompt, "generated_tokens": generated, "total_tokens": prompt + generated,
        "prompt_time_ms": None if total_ms is None else total_ms / 4,
        "generation_time_ms": None if total_ms is None else total_ms * 3 / 4,
        "total_time_ms": total_ms, "tokens_per_second": tps,
    }
    return {"text": "hi", "finish_reason": "stop", "cache_hit": hit, "stats": stats}


def _record_at(db: CyllamaDB, ts: float, model: str, **kw: Any) -> int | None:
    db.clock = lambda: ts  # type: ignore[method-assign]
    return db.record_generation(model, _response(**kw), {"temperature": 0.5, "max_tokens": 64})


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` of Prometheus ``text`` that has these labels."""
    found = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_stats_record_and_summary(engine_db: CyllamaDB, tmp_path: Path) -> None:
    from datetime import date, timedelta, timezone

    a, b = _model(tmp_path, "a.gguf"), _model(tmp_path, "b.gguf")
    ids = [
        _record_at(engine_db, T0 + 0, a, total_ms=100.0, tps=10.0, prompt=5, generated=5),
        _record_at(engine_db, T0 + 1, a, total_ms=200.0, tps=20.0, prompt=5, generated=15),
        _record_at(engine_db, T0 + 2, a, total_ms=300.0, tps=30.0, prompt=10, generated=20),
        _record_at(engine_db, T0 + 3, a, total_ms=400.0, tps=40.0, prompt=10, generated=30),
    ]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))  # new ids, increasing
    assert _record_at(engine_db, T0 + 4, a, total_ms=1.0, tps=9999.0, prompt=10, generated=30, hit=True) is None
    _record_at(engine_db, T0 + 5, b, total_ms=50.0, tps=100.0, prompt=1, generated=9)
    _record_at(engine_db, T0 + 6, b, total_ms=2.0, tps=5000.0, prompt=1, generated=9, hit=True)
    # The next day (UTC) and 23:30 local in UTC-5 of the first day: by_day follows the zone.
    _record_at(engine_db, T0 + 86_400 + 7, b, total_ms=80.0, tps=50.0, prompt=2, generated=8)

    s = engine_db.get_stats_summary(tz=timezone.utc)
    assert (s["total_generations"], s["cache_hits"]) == (8, 2)
    assert s["total_tokens"] == 10 + 20 + 30 + 40 + 40 + 10 + 10 + 10
    assert s["cache_hit_rate"] == pytest.approx(2 / 8)
    assert s["avg_tokens_per_second"] == pytest.approx((10 + 20 + 30 + 40 + 100 + 50) / 6)
    by_a = s["by_model"][a]
    assert by_a["model_name"] == "a.gguf"
    assert (by_a["generations"], by_a["tokens"], by_a["cache_hits"]) == (5, 140, 1)
    assert by_a["p50_latency_ms"] == pytest.approx(250.0) and by_a["p95_latency_ms"] == pytest.approx(385.0)
    by_b = s["by_model"][b]
    assert (by_b["generations"], by_b["cache_hits"]) == (3, 1)
    assert by_b["p50_latency_ms"] == pytest.approx(65.0)
    assert [(d["date"], d["generations"], d["cache_hits"]) for d in s["by_day"]] == [
        (date(2024, 5, 1), 7, 2), (date(2024, 5, 2), 1, 0)
    ]
    # A window whose edges fall inside 15-minute buckets (raw rows + rollup), and a model filter.
    part = engine_db.get_stats_summary(since=T0 + 2, until=T0 + 86_400 + 8, model_path=b, tz=timezone.utc)
    assert part["total_generations"] == 3 and list(part["by_model"]) == [b]
    part = engine_db.get_stats_summary(since=T0 + 2, until=T0 + 6, tz=timezone.utc)
    assert (part["total_generations"], part["cache_hits"]) == (4, 1)
    assert part["by_model"][a]["p50_latency_ms"] == pytest.approx(350.0)
    # UTC-5: everything of 2024-05-01 12:00 UTC is 07:00 local the same day; the last row too is 05-02.
    minus5 = timezone(timedelta(hours=-5))
    assert [d["date"] for d in engine_db.get_stats_summary(tz=minus5)["by_day"]] == [
        date(2024, 5, 1), date(2024, 5, 2)
    ]
    plus13 = timezone(timedelta(hours=13))  # 01:00 the next day
    assert [d["date"] for d in engine_db.get_stats_summary(tz=plus13)["by_day"]] == [
        date(2024, 5, 2), date(2024, 5, 3)
    ]
    assert engine_db.stats.models() and engine_db.stats.usage([a]) == (5, T0 + 4)
    totals = {(t["model_path"], t["cache_hit"]): t for t in engine_db.stats.totals()}
    assert totals[(a, False)]["generations"] == 4 and totals[(a, True)]["generations"] == 1
    assert totals[(a, False)]["buckets"][-1] == 4  # all four within 300 s
    # series: exact (raw rows) and from the rollup's histogram
    engine_db.clock = lambda: T0 + 2 * 86_400  # type: ignore[method-assign]
    exact = engine_db.stats.series(T0, 60, until=T0 + 120)
    assert exact["exact"] and [p["generations"] for p in exact["overall"]] == [7]
    rolled = engine_db.stats.series(T0, 3600, until=T0 + 2 * 86_400)
    assert not rolled["exact"] and sum(p["generations"] for p in rolled["overall"]) == 8


def test_stats_rows_are_immutable(engine_db: CyllamaDB, tmp_path: Path) -> None:
    _record_at(engine_db, T0, _model(tmp_path))
    with pytest.raises(Exception, match="immutable"), engine_db.pool.transaction() as conn:
        conn.execute("UPDATE stats SET total_tokens = 0")
    assert engine_db.get_generation_history()[0]["total_tokens"] == 30


def test_generation_history_paging_and_filters(engine_db: CyllamaDB, tmp_path: Path) -> None:
    a, b = _model(tmp_path, "a.gguf"), _model(tmp_path, "b.gguf")
    for i in range(10):
        _record_at(engine_db, T0 + i, a if i % 2 == 0 else b, generated=i)
    history = engine_db.get_generation_history()
    assert [r["generated_tokens"] for r in history] == list(range(9, -1, -1))
    first = history[0]
    assert first["created_at"].timestamp() == T0 + 9 and first["cache_hit"] is False
    assert first["temperature"] == 0.5 and first["max_tokens"] == 64 and first["model_name"] == "b.gguf"
    assert [r["generated_tokens"] for r in engine_db.get_generation_history(limit=3, offset=2)] == [7, 6, 5]
    assert [r["generated_tokens"] for r in engine_db.get_generation_history(model_path=a)] == [8, 6, 4, 2, 0]
    window = engine_db.get_generation_history(since=T0 + 3, until=T0 + 6)
    assert [r["generated_tokens"] for r in window] == [5, 4, 3]
    engine_db.stats.session_id = "team"
    _record_at(engine_db, T0 + 20, a, generated=99)
    assert [r["generated_tokens"] for r in engine_db.get_generation_history(session_id="team")] == [99]
    assert engine_db.get_generation_history(limit=2**70) and engine_db.get_generation_history(offset=100) == []


def test_prune_stats_keeps_the_running_totals(engine_db: CyllamaDB, tmp_path: Path) -> None:
    from cyllama_db.prometheus import prometheus_text

    a, b = _model(tmp_path, "a.gguf"), _model(tmp_path, "b.gguf")
    for i in range(4):
        _record_at(engine_db, T0 + i * 1000, a)
    _record_at(engine_db, T0 + 5000, b)
    engine_db.clock = lambda: T0 + 10_000  # type: ignore[method-assign]
    assert engine_db.prune_stats(older_than=T0 + 1500, model_path=b) == 0
    assert engine_db.prune_stats(older_than=T0 + 1500) == 2
    s = engine_db.get_stats_summary()
    assert s["total_generations"] == 3 and s["by_model"][a]["generations"] == 2
    with engine_db.pool.read() as conn:
        rollup = conn.execute("SELECT COALESCE(SUM(generations), 0) FROM stats_rollup").fetchone()[0]
    assert rollup == 3
    assert engine_db.prune_stats(older_than="1s") == 3
    with engine_db.pool.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM stats_rollup").fetchone()[0] == 0
    assert engine_db.get_stats_summary()["total_generations"] == 0
    # Prometheus counters never go down when rows are pruned.
    assert _metric(prometheus_text(engine_db), "cyllama_generations_total", model="a.gguf", cache="miss") == 4


def test_buffered_hit_rows_are_written(engine_db: CyllamaDB, tmp_path: Path) -> None:
    import time

    from cyllama_db.db import deferred

    model = _model(tmp_path)
    for i in range(5):
        assert _record_at(engine_db, T0 + i, model, hit=True) is None
    assert engine_db.stats.count() == 0  # buffered: count() writes nothing
    engine_db.stats.flush()
    assert engine_db.stats.count() == 5
    # A real generation writes the waiting hits in its own transaction.
    _record_at(engine_db, T0 + 10, model, hit=True)
    assert isinstance(_record_at(engine_db, T0 + 11, model), int)
    assert engine_db.stats.count() == 7
    # The background writer (a short lock wait of its own) writes them after FLUSH_SECONDS.
    _record_at(engine_db, T0 + 12, model, hit=True)
    deadline = time.monotonic() + deferred.FLUSH_SECONDS + 10
    while engine_db.stats.count() < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine_db.stats.count() == 8
    assert engine_db.get_stats_summary()["cache_hits"] == 7


# -- logs ----------------------------------------------------------------------------------------------


def test_logs_write_query_and_filters(engine_db: CyllamaDB) -> None:
    from datetime import timezone

    rows = [
        ("DEBUG", "quiet start", "app", T0),
        ("INFO", "model loaded in 3 seconds", "cyllama_db.models", T0 + 1),
        ("WARNING", "disk almost full on /data", "cyllama_db.cache", T0 + 2),
        ("ERROR", "generation failed: out of memory", "cyllama_db", T0 + 3),
        ("CRITICAL", "Größe überschritten", "cyllama_dbx", T0 + 4),
    ]
    ids = []
    for level, message, category, ts in rows:
        engine_db.clock = lambda ts=ts: ts  # type: ignore[method-assign]
        ids.append(engine_db.log(level, message, category=category, context={"n": 1, "prompt": "say hello"}))
    assert ids[0] is None  # below the default log_level (INFO): not stored
    assert ids[1:] == sorted(ids[1:]) and all(isinstance(i, int) for i in ids[1:])
    engine_db.logs.write("ERROR", "raw write", error_type="ValueError", error_message="bad input value",
                         created_at=T0 + 5)
    everything = engine_db.get_logs()
    assert [r["message"] for r in everything][:2] == ["raw write", "Größe überschritten"]
    assert everything[1]["context"] == {"n": 1} and everything[1]["prompt_preview"] == "say hello"
    assert everything[1]["created_at"].tzinfo is not None and everything[1]["created_at"].tzinfo.utcoffset(None) \
        == timezone.utc.utcoffset(None)
    assert [r["level"] for r in engine_db.get_logs(level="ERROR")] == ["ERROR", "CRITICAL", "ERROR"]
    assert {r["category"] for r in engine_db.get_logs(category="cyllama_db")} == {
        "cyllama_db", "cyllama_db.cache", "cyllama_db.models"
    }  # children, not "cyllama_dbx"
    assert [r["message"] for r in engine_db.get_logs(since=T0 + 4)] == ["raw write", "Größe überschritten"]
    assert [r["id"] for r in engine_db.get_logs(limit=2, offset=1)] == [ids[4], ids[3]]
    engine_db.clock = lambda: T0 + 10  # type: ignore[method-assign]
    assert len(engine_db.get_logs(since="7s", until=T0 + 5)) == 2

    def found(text: str, **kw: Any) -> list[str]:
        return [r["message"] for r in engine_db.get_logs(search=text, **kw)]

    assert found("memory") == ["generation failed: out of memory"]
    assert found("DISK full") == ["disk almost full on /data"]
    assert found('"out of memory"') == ["generation failed: out of memory"]
    assert found('"memory of out"') == []
    assert found("gener*") == ["generation failed: out of memory"]
    assert found("bad input") == ["raw write"]  # error_message is searched
    assert found("hello") == [m for _, m, _, _ in reversed(rows[1:])]  # prompt_preview too
    assert found("größe") == ["Größe überschritten"]
    assert found("memory", level="CRITICAL") == []
    assert found("OR AND NOT (") == []  # query syntax is ordinary text
    with pytest.raises(ValueError, match="no words"):
        engine_db.get_logs(search="* ( )")


def test_prune_logs(engine_db: CyllamaDB) -> None:
    for i in range(10):
        engine_db.clock = lambda i=i: T0 + i  # type: ignore[method-assign]
        engine_db.log("INFO", f"message number {i}")
    assert engine_db.prune_logs(older_than=T0 + 3) == 3
    assert engine_db.prune_logs(keep_last=4) == 3
    assert [r["message"] for r in engine_db.get_logs()] == [f"message number {i}" for i in (9, 8, 7, 6)]
    assert [r["message"] for r in engine_db.get_logs(search="number")][-1] == "message number 6"
    assert engine_db.get_db_stats()["log_entries"] == 4


# -- metrics history -------------------------------------------------------------------------------


def test_metrics_record_history_and_retention(engine_open: Opener) -> None:
    from datetime import timedelta

    db = engine_open(metrics_retention=timedelta(minutes=5))
    now = [T0]
    db.clock = lambda: now[0]  # type: ignore[method-assign]
    first = db.save_metrics({"cpu_usage": 12.5, "memory_usage": 40.0, "active_models": 2, "uptime": 7,
                             "process_rss_bytes": 2**40, "process_pid": 42,
                             "gpus": [{"index": 0, "gpu_usage": 80.0}]})
    assert isinstance(first, int)
    now[0] += 60
    second = db.save_metrics({"cpu_usage": 20.0})
    assert isinstance(second, int) and second > first
    history = db.get_metrics_history(10)
    assert [r["id"] for r in history] == [first, second]
    row = history[0]
    assert row["cpu_usage"] == 12.5 and row["active_models"] == 2 and row["uptime"] == 7
    assert row["process_rss_bytes"] == 2**40 and row["process_pid"] == 42 and row["gpu_usage"] is None
    assert row["gpus"] == [{"index": 0, "gpu_usage": 80.0}] and row["timestamp_ms"] == round(T0 * 1000)
    assert row["timestamp"].timestamp() == T0
    assert [r["id"] for r in db.get_metrics_history(0.5)] == [second]
    assert [r["id"] for r in db.get_metrics_history(since=T0 - 1, until=T0 + 1)] == [first]
    latest = db.metrics.latest()
    assert latest is not None and latest["id"] == second
    now[0] += 5 * 60 - 30  # the first sample is now past the 5-minute retention, the second not
    db.save_metrics({"cpu_usage": 1.0})
    assert [r["cpu_usage"] for r in db.get_metrics_history(60)] == [20.0, 1.0]
    assert db.get_db_stats()["metrics_samples"] == 2


def test_prometheus_text_on_each_engine(engine_db: CyllamaDB, tmp_path: Path) -> None:
    from cyllama_db.prometheus import prometheus_text

    model = _model(tmp_path, "p.gguf")
    for ms in (40.0, 300.0, 2500.0):
        _record_at(engine_db, T0, model, total_ms=ms)
    _record_at(engine_db, T0, model, total_ms=0.4, hit=True)
    engine_db.save_metrics({"cpu_usage": 25.0, "process_rss_bytes": 123456789, "process_pid": 4242})
    engine_db.cache.put("q", model, None, "a")
    text = prometheus_text(engine_db)
    assert _metric(text, "cyllama_generations_total", model_path=model, cache="miss") == 3
    assert _metric(text, "cyllama_generations_total", model_path=model, cache="hit") == 1
    assert _metric(text, "cyllama_generation_duration_seconds_bucket", cache="miss", le="0.5") == 2
    assert _metric(text, "cyllama_generation_duration_seconds_bucket", cache="hit", le="0.001") == 1
    assert _metric(text, "cyllama_generation_duration_seconds_sum", cache="miss") == pytest.approx(2.84)
    assert _metric(text, "cyllama_process_resident_memory_bytes", pid="4242") == 123456789
    assert "\ncyllama_cpu_usage_ratio 0.25\n" in text and "\ncyllama_cache_entries 1\n" in text


def test_db_stats_counts_stats_logs_metrics(engine_db: CyllamaDB, tmp_path: Path) -> None:
    _record_at(engine_db, T0, _model(tmp_path))
    _record_at(engine_db, T0, _model(tmp_path), hit=True)
    engine_db.log("WARNING", "w")
    engine_db.save_metrics({"cpu_usage": 1.0})
    engine_db.save_metrics({"cpu_usage": 2.0})
    stats = engine_db.get_db_stats()
    assert (stats["stats_entries"], stats["log_entries"], stats["metrics_samples"]) == (2, 1, 2)


def test_sampler_reads_on_each_engine(engine_db: CyllamaDB, tmp_path: Path) -> None:
    pytest.importorskip("psutil", reason="psutil is not installed (pip install '.[metrics]')")
    import time

    from cyllama_db.stores.metrics import sample_metrics

    now = time.time()
    engine_db.clock = lambda: now  # type: ignore[method-assign]
    engine_db.models.save("m", model_path=_model(tmp_path), status="running")
    engine_db.record_generation(_model(tmp_path), _response())
    engine_db.record_generation(_model(tmp_path), _response(), cache_hit=True)
    engine_db.stats.flush()
    sample = sample_metrics(engine_db)  # on PostgreSQL: no file, the root drive's use
    assert sample["requests_per_minute"] == 2.0 and sample["active_models"] == 1
    assert isinstance(sample["uptime"], int) and sample["cpu_usage"] is not None and sample["disk_usage"] > 0
    assert isinstance(engine_db.save_metrics(sample), int)
    assert engine_db.get_metrics_history(1)[-1]["requests_per_minute"] == 2.0
