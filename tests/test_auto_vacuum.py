"""auto_vacuum, as the seed design gives it: CyllamaDB(auto_vacuum=...), configure_db(...), $CYLLAMA_AUTO_VACUUM."""

from __future__ import annotations

import os
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB, GenerationConfig, configure_db, get_db
from cyllama_db.db.settings import ENV_VARS, Settings
from cyllama_db.db.store import RECLAIM_MAX_PAGES, RECLAIM_MIN_PAGES, reclaim_free_pages
from cyllama_db.errors import ConfigurationError, ConfigurationTypeError

DATA = Path(__file__).parent / "data"
CONFIG = GenerationConfig(temperature=0.0, max_tokens=8)


def _mode(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        conn.close()


def _pages(db: CyllamaDB) -> tuple[int, int]:
    with db.pool.read() as conn:
        return (
            int(conn.execute("PRAGMA page_count").fetchone()[0]),
            int(conn.execute("PRAGMA freelist_count").fetchone()[0]),
        )


def test_the_seeds_example_runs_verbatim() -> None:
    # docs: the seed design's "Programmatic Configuration", as written there
    # (HOME is a private folder in every test).
    configure_db(
        enabled=True,
        path="~/.cyllama/data.db",
        cache_ttl=timedelta(days=7),
        max_cache_size_mb=100.0,
        log_level="INFO",
        log_to_db=True,
        auto_vacuum=True,  # Run VACUUM periodically
    )
    db = get_db()
    assert db.path == os.path.expanduser("~/.cyllama/data.db")
    assert db.settings.auto_vacuum is True
    assert db.get_db_stats()["auto_vacuum"] == "incremental"


def test_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "CYLLAMA_AUTO_VACUUM" in ENV_VARS
    assert Settings.resolve(environ={}).auto_vacuum is True
    assert Settings.resolve(environ={"CYLLAMA_AUTO_VACUUM": "0"}).auto_vacuum is False
    assert Settings.resolve(auto_vacuum=True, environ={"CYLLAMA_AUTO_VACUUM": "off"}).auto_vacuum is True
    monkeypatch.setenv("CYLLAMA_AUTO_VACUUM", "no")
    assert CyllamaDB(":memory:").settings.auto_vacuum is False
    with pytest.raises(ConfigurationError, match="CYLLAMA_AUTO_VACUUM"):
        Settings.resolve(environ={"CYLLAMA_AUTO_VACUUM": "sometimes"})
    with pytest.raises(ConfigurationTypeError, match="auto_vacuum"):
        Settings.resolve(auto_vacuum="yes", environ={})  # type: ignore[arg-type]


def test_new_files_use_incremental_auto_vacuum(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "on.db") as db:
        assert db.get_db_stats()["auto_vacuum"] == "incremental"
    assert _mode(tmp_path / "on.db") == 2
    with CyllamaDB(tmp_path / "off.db", auto_vacuum=False) as db:
        assert db.get_db_stats()["auto_vacuum"] == "none"
    assert _mode(tmp_path / "off.db") == 0
    with CyllamaDB(":memory:") as db:
        assert db.get_db_stats()["auto_vacuum"] == "incremental"
    # The setting never changes an existing file by itself (only a VACUUM can).
    with CyllamaDB(tmp_path / "off.db") as db:
        assert db.get_db_stats()["auto_vacuum"] == "none"


def _fill_cache(db: CyllamaDB, n: int = 3000) -> None:
    for i in range(n):
        db.cache_response(f"prompt {i}", "m.gguf", CONFIG, "x" * 3000)


@pytest.mark.parametrize("auto_vacuum", [True, False])
def test_deletes_give_space_back(tmp_path: Path, auto_vacuum: bool) -> None:
    with CyllamaDB(tmp_path / "big.db", max_cache_size_mb=1000, auto_vacuum=auto_vacuum) as db:
        _fill_cache(db)
        before, _ = _pages(db)
        assert db.invalidate_cache() == 3000
        after, free = _pages(db)
        if auto_vacuum:
            # Bounded: RECLAIM_MAX_PAGES steps per call (the pointer-map pages of
            # the truncated part go too), the rest by the next delete.
            assert before - RECLAIM_MAX_PAGES - 10 < after <= before - RECLAIM_MAX_PAGES
            assert free > RECLAIM_MIN_PAGES
            db.log("INFO", "x")
            assert db.prune_logs(keep_last=0) == 1
            after, free = _pages(db)
            assert free < RECLAIM_MIN_PAGES and after < before / 4
        else:
            assert after >= before and free > 0.9 * before  # nothing given back
        db.vacuum()
    size = os.path.getsize(tmp_path / "big.db")
    assert size < 200 * 4096  # vacuum() always compacts fully


def test_small_frees_are_left_for_reuse(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "reuse.db", max_cache_size_mb=1000) as db:
        _fill_cache(db, 1000)
        before, _ = _pages(db)
        # About 5% of the file: less than an eighth, so kept for the next inserts.
        assert db.invalidate_cache(prompt="prompt 1") == 1
        for i in range(50):
            db.invalidate_cache(prompt=f"prompt {100 + i}")
        after, free = _pages(db)
        assert after >= before and free > 0  # nothing given back: later inserts reuse them


def test_pruning_statistics_reclaims(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "stats.db") as db:
        long = "y" * 2000
        for _ in range(3000):
            db.record_generation("m.gguf", {"text": "x", "finish_reason": long}, CONFIG)
        before, _ = _pages(db)
        assert db.prune_stats(older_than=db.clock() + 1) == 3000
        after, _ = _pages(db)
        assert after < before


def test_vacuum_switches_a_file_made_without_it(tmp_path: Path) -> None:
    copy = tmp_path / "v7.db"
    shutil.copyfile(DATA / "schema_v7.db", copy)  # made before auto-vacuum: mode NONE
    with CyllamaDB(copy) as db:
        assert db.get_db_stats()["auto_vacuum"] == "none"
        db.vacuum()
        assert db.get_db_stats()["auto_vacuum"] == "incremental"
    off = tmp_path / "off.db"
    CyllamaDB(off, auto_vacuum=False).close()
    with CyllamaDB(off, auto_vacuum=False) as db:
        db.vacuum()
        assert db.get_db_stats()["auto_vacuum"] == "none"  # False: the file keeps its mode


def test_reclaim_free_pages_rules(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "raw.db", isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("z" * 3000,)] * 3000)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM t WHERE rowid <= 100")  # ~100 pages: under RECLAIM_MIN_PAGES
    assert reclaim_free_pages(conn) == 0
    conn.execute("DELETE FROM t WHERE rowid <= 2500")
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    assert reclaim_free_pages(conn) == min(free, RECLAIM_MAX_PAGES)
    conn.execute("COMMIT")
    conn.close()
