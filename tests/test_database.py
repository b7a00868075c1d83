from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

import pytest

import cyllama_db
from cyllama_db import (
    CyllamaDB,
    DatabaseClosedError,
    ReadOnlyDatabaseError,
    configure_db,
    get_db,
    reset_db,
)
from cyllama_db.errors import ForeignDatabaseError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_creates_parent_folders_and_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.db"
    with CyllamaDB(path) as db:
        db.set_config("k", 1)
        assert db.path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # WAL side files inherit the owner-only mode from the database file.
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            assert stat.S_IMODE(side.stat().st_mode) & 0o077 == 0


def test_owner_only_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        CyllamaDB(tmp_path / "u.db").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "u.db").stat().st_mode) == 0o600


def test_existing_readable_file_is_made_owner_only(tmp_path: Path) -> None:
    # Issue 13: a group- or world-readable database we own is tightened to 0600
    # (test_reliability_security.py covers the warning for one we do not own).
    path = tmp_path / "shared.db"
    CyllamaDB(path).close()
    path.chmod(0o640)
    CyllamaDB(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_env_path_used_when_no_argument(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYLLAMA_DB_PATH", str(tmp_path / "fromenv.db"))
    with CyllamaDB() as db:
        assert db.path == str(tmp_path / "fromenv.db")
    assert (tmp_path / "fromenv.db").exists()


def test_default_path_in_isolated_home(tmp_path: Path) -> None:
    with CyllamaDB() as db:
        assert db.path.startswith(os.environ["XDG_DATA_HOME"])
        assert Path(db.path).exists()


def test_wal_and_pragmas(file_db: CyllamaDB) -> None:
    with file_db.pool.read() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_data_persists_across_instances(db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        db.set_config("model", "llama.gguf")
        db.set_metadata("theme", "dark")
    with CyllamaDB(db_path) as db:
        assert db.get_config("model") == "llama.gguf"
        assert db.get_metadata("theme") == "dark"


# -- disabled mode ---------------------------------------------------------------------------


def test_disabled_is_a_no_op_and_creates_no_file(tmp_path: Path) -> None:
    path = tmp_path / "never" / "x.db"
    db = CyllamaDB(path, enabled=False)
    assert db.set_config("a", 1) is None
    assert db.get_config("a") is None
    assert db.get_config("a", "fallback") == "fallback"
    assert db.get_all_config() == {}
    assert db.delete_config("a") is False
    assert db.set_metadata("k", "v") is None
    assert db.get_metadata("k") is None
    assert db.get_all_metadata() == {}
    assert db.get_db_stats() == {}
    assert db.get_database_size() == 0
    assert db.schema_version() == 0
    assert db.migration_status() == []
    db.vacuum()
    db.close()
    db.close()
    assert not path.exists()
    assert not path.parent.exists()


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYLLAMA_DB_ENABLED", "0")
    monkeypatch.setenv("CYLLAMA_DB_PATH", str(tmp_path / "x.db"))
    db = get_db()
    assert not db.enabled
    db.set_config("a", 1)
    assert db.get_config("a") is None
    assert not (tmp_path / "x.db").exists()


# -- graceful degradation ------------------------------------------------------------------


def test_garbage_file_falls_back_to_memory_and_is_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite at all\n" * 100)
    before = _sha(path)
    with caplog.at_level(logging.WARNING, logger="cyllama_db"):
        db = CyllamaDB(path)
    assert db.path == ":memory:"
    assert db.fallback_reason is not None
    assert "not a SQLite database" in db.fallback_reason
    assert any("falling back" in r.getMessage() for r in caplog.records)
    db.set_config("still", "works")
    assert db.get_config("still") == "works"
    db.close()
    assert _sha(path) == before
    assert not Path(str(path) + "-wal").exists()


def test_corrupt_sqlite_file_falls_back_and_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    with CyllamaDB(path) as db:
        db.set_config("x", 1)
    data = bytearray(path.read_bytes())
    # Keep the magic header, destroy the page size and the schema page.
    data[16:18] = b"\x00\x03"
    data[100:4096] = os.urandom(4096 - 100)
    path.write_bytes(bytes(data))
    Path(str(path) + "-wal").unlink(missing_ok=True)
    Path(str(path) + "-shm").unlink(missing_ok=True)
    before = _sha(path)
    with CyllamaDB(path) as db:
        assert db.path == ":memory:"
        db.set_config("y", 2)
        assert db.get_config("y") == 2
    assert _sha(path) == before


def test_directory_in_place_of_file_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "adir.db"
    path.mkdir()
    with CyllamaDB(path) as db:
        assert db.path == ":memory:"
        assert "not a regular file" in (db.fallback_reason or "")
    assert path.is_dir()


def test_unwritable_parent_falls_back(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with CyllamaDB(blocker / "sub" / "x.db") as db:
        assert db.path == ":memory:"
        db.set_config("a", 1)
        assert db.get_config("a") == 1


def test_read_only_file_is_refused_or_read_but_never_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with CyllamaDB(path) as db:
        db.set_config("kept", True)
    before = _sha(path)
    if os.geteuid() == 0:
        # root ignores mode bits; the immutable attribute binds root too.
        if shutil.which("chattr") is None or (
            subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0
        ):
            pytest.skip("running as root and chattr +i is not available on this filesystem")
        undo = ["chattr", "-i", str(path)]
    else:
        path.chmod(0o400)
        undo = None
    try:
        # A valid file this user cannot write is not "unusable": falling back
        # to an empty memory database would quietly lose every write.
        with pytest.raises(ReadOnlyDatabaseError, match="readonly=True"):
            CyllamaDB(path)
        with CyllamaDB(path, readonly=True) as db:
            assert db.path == str(path) and not db.is_memory
            assert db.get_config("kept") is True
            with pytest.raises(ReadOnlyDatabaseError, match="read-only"):
                db.set_config("new", 1)
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            path.chmod(0o600)
    assert _sha(path) == before
    with CyllamaDB(path) as db:
        assert db.get_config("kept") is True
        assert db.get_config("new") is None


def test_memory_fallback_is_shared_by_threads(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"x" * 200)
    db = CyllamaDB(path)
    assert db.is_memory

    def write(i: int) -> None:
        for j in range(20):
            db.set_config(f"t{i}-{j}", j)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(db.get_all_config()) == 120
    db.close()


# -- lifecycle -------------------------------------------------------------------------------


def test_use_after_close_raises(file_db: CyllamaDB) -> None:
    file_db.close()
    file_db.close()  # idempotent
    assert file_db.closed
    with pytest.raises(DatabaseClosedError, match="closed"):
        file_db.get_config("x")
    with pytest.raises(DatabaseClosedError):
        file_db.set_metadata("x", "y")
    with pytest.raises(DatabaseClosedError):
        file_db.get_db_stats()
    with pytest.raises(DatabaseClosedError), file_db:
        pass


def test_close_closes_every_threads_connection(file_db: CyllamaDB) -> None:
    opened = threading.Barrier(6)
    release = threading.Event()
    connections: list[sqlite3.Connection] = []

    def use() -> None:
        with file_db.pool.read() as conn:
            connections.append(conn)
        opened.wait(10)
        release.wait(10)  # stay alive so the connection is not pruned as finished

    threads = [threading.Thread(target=use) for _ in range(5)]
    for t in threads:
        t.start()
    with file_db.pool.read() as conn:
        connections.append(conn)
    opened.wait(10)
    assert file_db.pool.connection_count() == 6
    file_db.close()
    release.set()
    for t in threads:
        t.join()
    assert len({id(c) for c in connections}) == 6
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")


def test_context_manager_closes(db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        db.set_config("a", 1)
    assert db.closed


def test_repr(file_db: CyllamaDB) -> None:
    assert "open" in repr(file_db)
    file_db.close()
    assert "closed" in repr(file_db)


# -- maintenance -----------------------------------------------------------------------------


def test_db_stats_and_size(file_db: CyllamaDB) -> None:
    for i in range(50):
        file_db.set_config(f"k{i}", "x" * 1000)
    stats = file_db.get_db_stats()
    assert stats["config_entries"] == 50
    assert stats["metadata_entries"] >= 2
    assert stats["schema_version"] == cyllama_db.db.migrations.latest_version()
    assert stats["file_size_mb"] > 0
    assert file_db.get_database_size() >= 50 * 1000


def test_vacuum_shrinks_after_deletes(file_db: CyllamaDB) -> None:
    for i in range(200):
        file_db.set_config(f"k{i}", "x" * 4000)
    big = file_db.get_database_size()
    for i in range(200):
        file_db.delete_config(f"k{i}")
    file_db.vacuum()
    assert file_db.get_database_size() < big / 4
    assert file_db.get_all_config() == {}


# -- global database -------------------------------------------------------------------------


def test_get_db_builds_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYLLAMA_DB_PATH", str(tmp_path / "global.db"))
    db = get_db()
    assert db is get_db()
    assert db.path == str(tmp_path / "global.db")


def test_configure_db_replaces_and_closes_previous(tmp_path: Path) -> None:
    first = configure_db(path=tmp_path / "one.db")
    assert get_db() is first
    second = configure_db(path=tmp_path / "two.db", max_cache_size_mb=5)
    assert first.closed
    assert get_db() is second
    assert second.settings.max_cache_size_mb == 5


def test_get_db_reopens_after_close_with_same_options(tmp_path: Path) -> None:
    db = configure_db(path=tmp_path / "g.db")
    db.set_config("a", 1)
    db.close()
    again = get_db()
    assert again is not db
    assert again.path == str(tmp_path / "g.db")
    assert again.get_config("a") == 1


def test_get_db_is_thread_safe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYLLAMA_DB_PATH", str(tmp_path / "race.db"))
    seen: list[CyllamaDB] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        seen.append(get_db())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(d) for d in seen}) == 1


def test_reset_db_closes_global(tmp_path: Path) -> None:
    db = configure_db(path=tmp_path / "r.db")
    reset_db()
    assert db.closed


def test_another_applications_sqlite_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other-app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE cache (id INTEGER, foo TEXT)")
    conn.execute("INSERT INTO cache VALUES (1, 'theirs')")
    conn.commit()
    conn.close()
    before = _sha(path)
    with pytest.raises(ForeignDatabaseError, match="another application") as caught:
        CyllamaDB(path)
    assert "no cyllama-db schema_version table" in str(caught.value)
    assert str(path) in str(caught.value)
    assert _sha(path) == before
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("cache",)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_empty_sqlite_file_made_by_someone_else_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # zero bytes
    with CyllamaDB(path) as db:
        assert db.path == str(path)
        db.set_config("a", 1)


# -- reads never write (issue 13, item 5) ----------------------------------------------------

_HOLD_WRITE_LOCK = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "conn.execute('BEGIN IMMEDIATE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
    "conn.execute('ROLLBACK')\n"
)


def test_reads_and_exports_succeed_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    import sys
    import time

    path = tmp_path / "busy.db"
    db = CyllamaDB(path, busy_timeout=10)
    try:
        db.cache_response("prompt", "m.gguf", None, "answer")
        for _ in range(3):  # buffered hit counts (cache) and hit rows (stats)
            assert db.get_cached_response("prompt", "m.gguf", None) is not None
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_WRITE_LOCK, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            started = time.monotonic()
            stats = db.get_db_stats()
            cache = db.get_cache_stats()
            exported = db.export_database(tmp_path / "copy.db")
            rows = db.export_database(tmp_path / "cache.jsonl", format="jsonl", table="cache")
            elapsed = time.monotonic() - started
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
        # Before: each flush waited the whole busy timeout, then DatabaseBusyError.
        assert elapsed < 2.0, f"the reads waited {elapsed:.1f} s for another process's write"
        assert stats["cache_entries"] == 1 and stats["path"] == str(path)
        assert cache["entries"] == 1
        assert exported and rows
        with CyllamaDB(tmp_path / "copy.db", readonly=True) as copy:
            assert copy.get_cache_stats()["entries"] == 1
        # The buffered hits were kept, not lost: written by the next read that can.
        assert db.get_cache_stats()["hits"] == 3
    finally:
        db.close()
