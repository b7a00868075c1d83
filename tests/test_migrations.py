from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB, MigrationError, SchemaVersionError
from cyllama_db.db import migrations
from cyllama_db.db.migrations import Migration, execute_script


def _open_and_close(path: str) -> None:
    db = CyllamaDB(path)
    # A child that silently fell back to memory would still exit 0.
    assert db.fallback_reason is None, db.fallback_reason
    db.close()


def test_fresh_file_gets_every_migration(file_db: CyllamaDB) -> None:
    status = file_db.migration_status()
    assert [s["version"] for s in status] == [m.version for m in migrations.registered_migrations()]
    assert all(s["applied"] for s in status)
    assert file_db.schema_version() == migrations.latest_version()
    assert file_db.get_metadata("db_version") == str(migrations.latest_version())


def test_reopening_applies_nothing_twice(db_path: Path) -> None:
    CyllamaDB(db_path).close()
    conn = sqlite3.connect(db_path)
    before = conn.execute("SELECT version, applied_at FROM schema_version").fetchall()
    conn.close()
    CyllamaDB(db_path).close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT version, applied_at FROM schema_version").fetchall() == before
    conn.close()


def test_newer_schema_is_refused_and_file_untouched(db_path: Path) -> None:
    CyllamaDB(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=DELETE")  # so the header bytes would show a WAL switch
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (migrations.latest_version() + 5,))
    conn.commit()
    conn.close()
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()
    with pytest.raises(SchemaVersionError, match="Upgrade cyllama-db") as info:
        CyllamaDB(db_path)
    assert info.value.found == migrations.latest_version() + 5
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before
    assert not Path(str(db_path) + "-wal").exists()


def test_concurrent_processes_migrate_a_fresh_file_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_open_and_close, args=(str(path),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    conn = sqlite3.connect(path)
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    conn.close()
    assert versions == [m.version for m in migrations.registered_migrations()]


def test_failing_migration_rolls_back_with_its_record(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    CyllamaDB(db_path).close()
    bad_version = migrations.latest_version() + 1

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(migrations._MIGRATIONS, bad_version, Migration(bad_version, "bad", (bad,)))
    with pytest.raises(MigrationError, match="disk on fire"):
        # the failure is not a reason to fall back silently: it propagates
        migrations.migrate(sqlite3.connect(db_path, isolation_level=None), str(db_path))
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == bad_version - 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchone() is None
    conn.close()


def test_new_migration_is_applied_on_open(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> None:
    CyllamaDB(db_path).close()
    v = migrations.latest_version() + 1

    def add(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE extra (x)")

    monkeypatch.setitem(migrations._MIGRATIONS, v, Migration(v, "extra", (add,)))
    with CyllamaDB(db_path) as db:
        assert db.schema_version() == v
        with db.pool.read() as conn:
            conn.execute("SELECT * FROM extra").fetchall()


def test_duplicate_version_with_other_function_is_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @migrations.migration(1, "imposter")
        def imposter(conn: sqlite3.Connection) -> None:  # pragma: no cover
            pass


def test_execute_script_keeps_one_transaction() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("BEGIN")
    execute_script(conn, "CREATE TABLE a (x);\nINSERT INTO a VALUES ('; not a split');\n")
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='a'").fetchone() is None
    with pytest.raises(MigrationError, match="incomplete"):
        execute_script(conn, "CREATE TABLE b (x")


def test_read_versions_reads_without_migrating_or_creating(tmp_path: Path) -> None:
    from cyllama_db.errors import DatabaseFileError

    path = tmp_path / "v.db"
    assert migrations.read_versions(str(path), 1.0) == {}
    assert not path.exists()
    assert migrations.read_versions(":memory:", 1.0) == {}

    with CyllamaDB(path) as db:
        latest = db.schema_version()
    versions = migrations.read_versions(str(path), 1.0)
    assert sorted(versions) == list(range(1, latest + 1))
    names = {m.version: m.name for m in migrations.registered_migrations()}
    assert all(versions[v][0] == names[v] and versions[v][1] for v in versions)

    # An early file: schema_version without a name column, nothing else; read, not migrated.
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    conn.execute("INSERT INTO schema_version VALUES (1, '2024-01-01 00:00:00')")
    conn.commit()
    conn.close()
    assert migrations.read_versions(str(old), 1.0) == {1: (None, "2024-01-01 00:00:00")}
    conn = sqlite3.connect(old)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["schema_version"]
    conn.close()

    (tmp_path / "dir.db").mkdir()
    with pytest.raises(DatabaseFileError, match="not a regular file") as raised:
        migrations.read_versions(str(tmp_path / "dir.db"), 1.0)
    assert raised.value.sqlite_error == "not a regular file"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, but long enough to have a header" * 100)
    with pytest.raises(DatabaseFileError) as raised:
        migrations.read_versions(str(junk), 1.0)
    assert raised.value.sqlite_error == "file is not a database"
