"""The database's write-behind (db/deferred.py): channels, one thread, one policy, fork and exit paths.

The statistics' hit rows use it (tests/test_stats.py, "buffered cache hits");
these tests drive a channel of their own, shaped like the cache's hit
counts: ``(key, time)`` per hit, aggregated per key by the flush function.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import cyllama_db.db.deferred as deferred_module
from cyllama_db import CyllamaDB
from cyllama_db.db.deferred import Channel, DeferredWrites

# Module-level flush functions: a channel's flush must not hold the database.
CALLS: list[tuple[bool, list[Any]]] = []


def _create_tally(db: CyllamaDB) -> None:
    with db.pool.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS tally (key TEXT PRIMARY KEY, hits INTEGER NOT NULL, last REAL)")
        conn.executemany("INSERT INTO tally (key, hits, last) VALUES (?, 0, NULL)", [("a",), ("b",), ("c",)])


def write_tally(conn: sqlite3.Connection, items: list[tuple[str, float]]) -> None:
    """What the cache's hit counts need: one UPDATE per key, the hits aggregated."""
    CALLS.append((conn.in_transaction, list(items)))
    counts: dict[str, list[float]] = {}
    for key, when in items:
        entry = counts.setdefault(key, [0, when])
        entry[0] += 1
        entry[1] = max(entry[1], when)
    conn.executemany(
        "UPDATE tally SET hits = hits + ?, last = MAX(COALESCE(last, 0), ?) WHERE key = ?",
        [(int(n), last, key) for key, (n, last) in counts.items()],
    )


FAIL_NEXT = threading.Event()


def write_tally_or_fail(conn: sqlite3.Connection, items: list[tuple[str, float]]) -> None:
    if FAIL_NEXT.is_set():
        FAIL_NEXT.clear()
        raise sqlite3.OperationalError("database is locked")
    write_tally(conn, items)


def tally(path: Path) -> dict[str, tuple[int, float | None]]:
    """The table as another connection sees it (committed rows only)."""
    with sqlite3.connect(path) as conn:
        return {k: (n, last) for k, n, last in conn.execute("SELECT key, hits, last FROM tally ORDER BY key")}


def wait_for(condition: Any, timeout: float = 30.0) -> bool:
    """Poll ``condition()`` until it is true (a correctness wait, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


@pytest.fixture(autouse=True)
def _clean() -> None:
    CALLS.clear()
    FAIL_NEXT.clear()


@pytest.fixture
def slow_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """The background thread waits an hour: items are written only when something asks."""
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 3600.0)


@pytest.fixture
def db(db_path: Path) -> Any:
    database = CyllamaDB(db_path)
    _create_tally(database)
    yield database
    database.close()


def test_the_database_owns_one_deferred_writes(db: CyllamaDB) -> None:
    assert isinstance(db.deferred, DeferredWrites)
    assert "stats.hits" in db.deferred.channels  # the statistics store registered its channel
    channel = db.deferred.channel("test.tally", write_tally)
    assert isinstance(channel, Channel)
    assert db.deferred.channel("test.tally", write_tally) is channel  # one channel per name
    assert len(db.deferred) == 0


def test_a_disabled_database_has_one_too() -> None:
    db = CyllamaDB(enabled=False)
    assert isinstance(db.deferred, DeferredWrites) and db.deferred.channels == {}
    db.close()


def test_adding_is_not_a_write_and_flush_aggregates_per_key(db: CyllamaDB, db_path: Path, slow_flush: None) -> None:
    channel = db.deferred.channel("test.tally", write_tally)
    watcher = sqlite3.connect(db_path)
    version = watcher.execute("PRAGMA data_version").fetchone()[0]
    for i, key in enumerate("abacab"):
        channel.add((key, 100.0 + i))
    assert len(channel) == 6 and len(db.deferred) == 6
    assert watcher.execute("PRAGMA data_version").fetchone()[0] == version  # nothing committed
    assert tally(db_path)["a"] == (0, None)
    assert channel.flush() is True
    assert tally(db_path) == {"a": (3, 104.0), "b": (2, 105.0), "c": (1, 103.0)}
    # One call, inside one write transaction, with the items in the order added.
    assert CALLS == [(True, [("a", 100.0), ("b", 101.0), ("a", 102.0), ("c", 103.0), ("a", 104.0), ("b", 105.0)])]
    assert len(channel) == 0
    watcher.close()


def test_a_failed_write_keeps_the_items_in_order(db: CyllamaDB, db_path: Path, slow_flush: None) -> None:
    channel = db.deferred.channel("test.failing", write_tally_or_fail)
    channel.add(("a", 1.0))
    channel.add(("b", 2.0))
    FAIL_NEXT.set()
    with pytest.raises(Exception, match="locked"):
        channel.flush()
    channel.add(("c", 3.0))
    assert list(channel.items) == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert channel.flush() is True
    assert tally(db_path) == {"a": (1, 1.0), "b": (1, 2.0), "c": (1, 3.0)}


def test_taking_writes_the_items_in_the_callers_transaction(db: CyllamaDB, db_path: Path, slow_flush: None) -> None:
    channel = db.deferred.channel("test.tally", write_tally)
    channel.add(("a", 1.0))
    with channel.taking() as items, db.pool.transaction() as conn:
        channel.write_in(conn, items)
        conn.execute("UPDATE tally SET hits = hits + 10 WHERE key = 'c'")
    assert tally(db_path)["a"] == (1, 1.0) and tally(db_path)["c"][0] == 10
    assert len(channel) == 0
    # A failed transaction gives the items back.
    channel.add(("b", 2.0))
    with pytest.raises(RuntimeError), channel.taking() as items, db.pool.transaction() as conn:
        channel.write_in(conn, items)
        raise RuntimeError("the caller's own write failed")
    assert list(channel.items) == [("b", 2.0)]
    assert tally(db_path)["b"] == (0, None)


def test_taking_while_a_flush_holds_the_items_takes_none(db: CyllamaDB, slow_flush: None) -> None:
    channel = db.deferred.channel("test.tally", write_tally)
    channel.add(("a", 1.0))
    holder_ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        with channel.flush_lock:
            holder_ready.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holder_ready.wait(10)
        with channel.taking() as items:
            assert items == []
        assert len(channel) == 1
    finally:
        release.set()
        holder.join()


def test_a_flush_function_must_not_hold_the_database(db: CyllamaDB) -> None:
    class Owner:
        def write(self, conn: sqlite3.Connection, items: list[Any]) -> None:  # pragma: no cover
            pass

    with pytest.raises(TypeError, match="module-level"):
        db.deferred.channel("test.bound", Owner().write)


def test_the_thread_writes_after_the_interval(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 0.05)
    with CyllamaDB(db_path) as db:
        _create_tally(db)
        channel = db.deferred.channel("test.tally", write_tally)
        channel.add(("a", 1.0))
        channel.add(("a", 2.0))
        assert wait_for(lambda: tally(db_path)["a"] == (2, 2.0))


def test_the_thread_writes_a_full_batch(db: CyllamaDB, db_path: Path, slow_flush: None) -> None:
    channel = db.deferred.channel("test.tally", write_tally)
    for i in range(deferred_module.FLUSH_ITEMS):
        channel.add(("b", float(i)))
    assert wait_for(lambda: tally(db_path)["b"][0] == deferred_module.FLUSH_ITEMS)


def test_one_thread_serves_every_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 0.05)
    paths = [tmp_path / "one.db", tmp_path / "two.db"]
    dbs = [CyllamaDB(p) for p in paths]
    try:
        for db in dbs:
            _create_tally(db)
            db.deferred.channel("test.tally", write_tally).add(("c", 5.0))
            db.record_generation("m.gguf", {"stats": None}, None, cache_hit=True)  # the stats channel too
        assert all(wait_for(lambda p=p: tally(p)["c"] == (1, 5.0)) for p in paths)
        writers = [t for t in threading.enumerate() if t.name == "cyllama-db-writer"]
        assert len(writers) == 1
    finally:
        for db in dbs:
            db.close()
    for path in paths:
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM stats").fetchone()[0] == 1


class _Store:
    """Stands for a store with a retention pass to run after a background write."""

    def __init__(self, runs: list[int]) -> None:
        self.runs = runs

    def after(self) -> None:
        self.runs.append(1)


def test_after_write_runs_after_a_background_write_and_is_held_weakly(
    db: CyllamaDB, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 0.05)
    runs: list[int] = []
    store = _Store(runs)
    channel = db.deferred.channel("test.tally", write_tally, after_write=store.after)
    channel.add(("a", 1.0))
    assert wait_for(lambda: len(runs) == 1)
    channel.add(("a", 1.5))
    channel.flush()  # a flush asked for by a store is not a background write
    assert len(runs) == 1
    del store
    gc.collect()
    channel.add(("a", 2.0))  # the callback is gone: the write still happens
    assert wait_for(lambda: tally(db_path)["a"] == (3, 2.0))
    assert len(runs) == 1


def test_the_buffer_is_bounded(
    db: CyllamaDB, db_path: Path, slow_flush: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(deferred_module, "BUFFER_MAX", 20)
    channel = db.deferred.channel("test.tally", write_tally, what="test hit counts")
    with caplog.at_level("WARNING", logger="cyllama_db.deferred"):
        for i in range(50):
            channel.add(("a", float(i)))
    assert "dropped the" in caplog.text and "test hit counts" in caplog.text
    assert 0 < len(channel) <= 20
    assert channel.items[-1] == ("a", 49.0)  # the newest are kept


def test_close_writes_and_takes_no_more(db_path: Path, slow_flush: None) -> None:
    db = CyllamaDB(db_path)
    _create_tally(db)
    channel = db.deferred.channel("test.tally", write_tally)
    channel.add(("a", 1.0))
    db.close()
    assert tally(db_path)["a"] == (1, 1.0)
    assert channel.closed
    db.deferred.close()  # twice: harmless
    channel.add(("a", 2.0))  # after close: never written (and never an error)
    assert channel.flush() is True
    assert tally(db_path)["a"] == (1, 1.0)


def test_items_of_a_collected_database_are_written(db_path: Path, slow_flush: None) -> None:
    db = CyllamaDB(db_path)
    _create_tally(db)
    db.deferred.channel("test.tally", write_tally).add(("b", 7.0))
    del db
    gc.collect()
    assert tally(db_path)["b"] == (1, 7.0)


def test_items_are_written_at_exit_without_close(db_path: Path) -> None:
    code = (
        "import sqlite3\n"
        "import cyllama_db.db.deferred as d\n"
        "d.FLUSH_SECONDS = 3600.0\n"
        "from cyllama_db import CyllamaDB\n"
        "import test_deferred as t\n"
        f"db = CyllamaDB({str(db_path)!r})\n"
        "t._create_tally(db)\n"
        "channel = db.deferred.channel('test.tally', t.write_tally)\n"
        "for i in range(9):\n"
        "    channel.add(('c', float(i)))\n"
        "keep = db  # never closed: the interpreter's exit writes the items\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)
    assert tally(db_path)["c"] == (9, 8.0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_write_the_parents_items(db_path: Path, slow_flush: None) -> None:
    db = CyllamaDB(db_path)
    _create_tally(db)
    channel = db.deferred.channel("test.tally", write_tally)
    for i in range(5):
        channel.add(("a", float(i)))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            if len(db.deferred) != 0:
                code = 2
            db.close()  # its channels were emptied at fork: the parent writes the items
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tally(db_path)["a"] == (0, None)
    db.close()
    assert tally(db_path)["a"] == (5, 4.0)


@pytest.mark.parametrize("where", ["memory", "file"])
def test_flush_in_writes_inside_the_callers_transaction_without_waiting(
    where: str, tmp_path: Path, slow_flush: None
) -> None:
    with CyllamaDB(":memory:" if where == "memory" else tmp_path / "in.db") as db:
        _create_tally(db)
        channel = db.deferred.channel("test.tally", write_tally)
        channel.add(("a", 1.0))
        channel.add(("a", 2.0))
        with db.pool.transaction() as conn:
            assert channel.flush_in(conn) == 2
            assert conn.execute("SELECT hits FROM tally WHERE key = 'a'").fetchone()[0] == 2
        assert len(channel) == 0
        # While a flush (the thread's) holds the items, flush_in leaves them to it and returns at once.
        channel.add(("b", 3.0))
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with channel.flush_lock:
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert held.wait(10)
            with db.pool.transaction() as conn:
                assert channel.flush_in(conn) == 0
        finally:
            release.set()
            holder.join()
        assert len(channel) == 1
        assert channel.flush() is True
        with db.pool.read() as conn:
            assert conn.execute("SELECT hits FROM tally WHERE key = 'b'").fetchone()[0] == 1
