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
