from __future__ import annotations

import time
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB
from cyllama_db.db import migrations


def test_set_get_delete(any_db: CyllamaDB) -> None:
    assert any_db.get_metadata("theme_preference") is None
    any_db.set_metadata("theme_preference", "dark")
    assert any_db.get_metadata("theme_preference") == "dark"
    any_db.set_metadata("theme_preference", "light")
    assert any_db.get_metadata("theme_preference") == "light"
    assert any_db.delete_metadata("theme_preference") is True
    assert any_db.delete_metadata("theme_preference") is False
    assert any_db.get_metadata("theme_preference") is None


def test_numbers_are_stored_as_text(any_db: CyllamaDB) -> None:
    any_db.set_metadata("last_metrics_save", 1700000000000)
    assert any_db.get_metadata("last_metrics_save") == "1700000000000"


@pytest.mark.parametrize("bad", [None, True, {"a": 1}, [1], b"x"])
def test_bad_values(any_db: CyllamaDB, bad: object) -> None:
    with pytest.raises(TypeError, match="metadata value"):
        any_db.set_metadata("k", bad)  # type: ignore[arg-type]


def test_library_keeps_version_and_start_time() -> None:
    before = int(time.time() * 1000)
    with CyllamaDB(":memory:") as db:
        assert db.get_metadata("db_version") == str(migrations.latest_version())
        start = int(db.get_metadata("server_start_time") or 0)
        assert before <= start <= int(time.time() * 1000)
        assert set(db.get_all_metadata()) >= {"db_version", "server_start_time"}


def test_updated_at_is_unix_ms(any_db: CyllamaDB) -> None:
    any_db.clock = lambda: 1234.5
    any_db.set_metadata("k", "v")
    with any_db.pool.read() as conn:
        assert conn.execute("SELECT updated_at FROM metadata WHERE key='k'").fetchone()[0] == 1234500


def test_reopening_does_not_reset_server_start_time(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with CyllamaDB(path) as db:
        db.set_metadata("server_start_time", "1000")
    with CyllamaDB(path) as db:
        assert db.get_metadata("server_start_time") == "1000"
        db.clock = lambda: 5.0
        db.mark_server_start()
        assert db.get_metadata("server_start_time") == "5000"


def test_opening_an_up_to_date_file_takes_no_write_lock(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "busy.db"
    CyllamaDB(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write
    try:
        # busy_timeout is tiny: any write during open would fail or fall back
        with CyllamaDB(path, busy_timeout=0.05) as db:
            assert db.path == str(path)
            assert db.get_metadata("db_version") == str(migrations.latest_version())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
