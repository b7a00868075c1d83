from __future__ import annotations

import multiprocessing
import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB


def _writer_process(path: str, worker: int, count: int) -> None:
    db = CyllamaDB(path)
    for i in range(count):
        with db.pool.transaction() as conn:
            conn.execute("INSERT INTO t (worker, n) VALUES (?, ?)", (worker, i))
        db.set_config(f"p{worker}-{i}", i)
    db.close()


def _make_table(db: CyllamaDB) -> None:
    with db.pool.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (worker INTEGER, n INTEGER)")


def test_eight_threads_writing_lose_nothing(file_db: CyllamaDB) -> None:
    _make_table(file_db)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(100):
                with file_db.pool.transaction() as conn:
                    # read-modify-write: only correct if transactions serialise
                    conn.execute("INSERT INTO t (worker, n) VALUES (?, ?)", (worker, i))
                file_db.set_config(f"t{worker}-{i}", i)
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with file_db.pool.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 800
    assert len(file_db.get_all_config()) == 800


def test_read_modify_write_is_serialised(file_db: CyllamaDB) -> None:
    with file_db.pool.transaction() as conn:
        conn.execute("CREATE TABLE counter (n INTEGER)")
        conn.execute("INSERT INTO counter VALUES (0)")

    def bump() -> None:
        for _ in range(50):
            with file_db.pool.transaction() as conn:
                (n,) = conn.execute("SELECT n FROM counter").fetchone()
                conn.execute("UPDATE counter SET n = ?", (n + 1,))

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with file_db.pool.read() as conn:
        assert conn.execute("SELECT n FROM counter").fetchone()[0] == 400


def test_four_processes_writing_lose_nothing(db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        _make_table(db)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(db_path), w, 100)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with CyllamaDB(db_path) as db:
        with db.pool.read() as conn:
            rows = conn.execute("SELECT worker, COUNT(*) FROM t GROUP BY worker").fetchall()
        assert sorted(rows) == [(0, 100), (1, 100), (2, 100), (3, 100)]
        assert len(db.get_all_config()) == 400


def test_transaction_rolls_back_on_error(file_db: CyllamaDB) -> None:
    _make_table(file_db)
    with pytest.raises(RuntimeError), file_db.pool.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1, 1)")
        raise RuntimeError("boom")
    with file_db.pool.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
        assert not conn.in_transaction


def test_nested_transactions_join_the_outer_one(any_db: CyllamaDB) -> None:
    _make_table(any_db)
    with any_db.pool.transaction() as outer:
        outer.execute("INSERT INTO t VALUES (1, 1)")
        with any_db.pool.transaction() as inner:
            assert inner is outer
            inner.execute("INSERT INTO t VALUES (2, 2)")
        any_db.set_config("inside", True)  # a store method inside a transaction
        assert outer.in_transaction
    with any_db.pool.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 2
    assert any_db.get_config("inside") is True


def test_nested_failure_rolls_back_everything(any_db: CyllamaDB) -> None:
    _make_table(any_db)
    with pytest.raises(ValueError), any_db.pool.transaction() as outer:
        outer.execute("INSERT INTO t VALUES (1, 1)")
        with any_db.pool.transaction() as inner:
            inner.execute("INSERT INTO t VALUES (2, 2)")
            raise ValueError("inner")
    with any_db.pool.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    # and the pool is usable afterwards
    any_db.set_config("after", 1)
    assert any_db.get_config("after") == 1


def test_one_connection_per_thread(file_db: CyllamaDB) -> None:
    # The connections themselves, not their ids: a finished thread's connection
    # is closed and, if nothing held it, its id could be reused by the next one.
    seen: list[sqlite3.Connection] = []

    def grab() -> None:
        with file_db.pool.read() as a, file_db.pool.read() as b:
            assert a is b
            seen.append(a)

    threads = [threading.Thread(target=grab) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(conn) for conn in seen}) == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_opens_its_own_connection(file_db: CyllamaDB) -> None:
    file_db.set_config("parent", 1)
    with file_db.pool.read() as conn:
        parent_conn = conn
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            with file_db.pool.read() as conn:
                fresh = conn is not parent_conn
            file_db.set_config("child", 2)
            code = 0 if fresh and file_db.get_config("parent") == 1 else 3
        finally:
            os.write(write_fd, bytes([code]))
            os._exit(0)
    os.close(write_fd)
    result = os.read(read_fd, 1)
    os.waitpid(pid, 0)
    assert result == b"\x00"
    assert file_db.get_config("child") == 2


def test_locked_error_never_escapes_a_busy_writer(db_path: Path) -> None:
    """A second writer waits for the first instead of failing with 'database is locked'."""
    with CyllamaDB(db_path, busy_timeout=10) as db:
        _make_table(db)
        other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        released = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        released.start()
        with db.pool.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (9, 9)")
        released.join()
        other.close()
        with db.pool.read() as conn:
            assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1


if sys.platform == "win32":  # pragma: no cover
    pytest.skip("process tests assume POSIX", allow_module_level=True)


def test_finished_threads_do_not_leak_connections(file_db: CyllamaDB) -> None:
    def use() -> None:
        file_db.get_config("a")

    for _ in range(60):
        t = threading.Thread(target=use)
        t.start()
        t.join()
    file_db.get_config("a")  # this thread opens one more, pruning the dead ones
    # main thread + at most the last finished thread before pruning ran
    assert file_db.pool.connection_count() <= 2


def test_connections_of_live_threads_survive_pruning(file_db: CyllamaDB) -> None:
    ready, done = threading.Event(), threading.Event()
    results: list[object] = []

    def long_lived() -> None:
        file_db.set_config("long", 1)
        ready.set()
        done.wait(10)
        results.append(file_db.get_config("long"))

    worker = threading.Thread(target=long_lived)
    worker.start()
    ready.wait(10)
    for _ in range(5):
        t = threading.Thread(target=lambda: file_db.get_config("x"))
        t.start()
        t.join()
    file_db.get_config("x")
    done.set()
    worker.join()
    assert results == [1]


def test_lock_held_past_busy_timeout_raises_clear_error(db_path: Path) -> None:
    from cyllama_db import DatabaseBusyError

    with CyllamaDB(db_path, busy_timeout=0.2) as db:
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(DatabaseBusyError, match="busy timeout") as info:
                db.set_config("k", 1)
            assert isinstance(info.value, TimeoutError)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        db.set_config("k", 1)  # works once the lock is released
        assert db.get_config("k") == 1


def test_locked_file_at_open_raises_instead_of_falling_back(db_path: Path) -> None:
    from cyllama_db import DatabaseBusyError

    CyllamaDB(db_path).close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseBusyError):
            CyllamaDB(db_path, busy_timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- the WAL stays bounded (issue 13, item 9) --------------------------------------------------


def test_wal_stays_bounded_under_cache_churn_with_readers_that_never_pause(tmp_path: Path) -> None:
    """A 2 MB cache churned with 100 KB answers while two threads read without pause.

    SQLite's automatic checkpoint never waits for readers, so it never
    reached the end of the WAL and the WAL grew with every eviction (57 MB
    here before the fix, and it stayed that size).
    """
    from cyllama_db.db.pool import JOURNAL_SIZE_LIMIT

    path = tmp_path / "churn.db"
    wal = Path(f"{path}-wal")
    db = CyllamaDB(path, max_cache_size_mb=2)
    other = CyllamaDB(path, max_cache_size_mb=2)  # another process's view, kept open throughout
    stop = threading.Event()

    def read() -> None:
        i = 0
        while not stop.is_set():
            other.get_cached_response(f"prompt {i % 800}", "m.gguf", None)
            i += 1

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    peak = 0
    try:
        for i in range(800):
            db.cache_response(f"prompt {i}", "m.gguf", None, f"{i:08d}" * 12_500)
            if i % 10 == 0:
                peak = max(peak, wal.stat().st_size)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert db.get_cache_stats()["size_mb"] <= 2.0
    assert peak < 32 * 1024 * 1024, f"the WAL grew to {peak / 1e6:.0f} MB under churn"
    db.close()  # the other connection is still open: close() checkpoints and truncates anyway
    assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT
    other.close()
    assert not wal.exists() or wal.stat().st_size <= JOURNAL_SIZE_LIMIT
