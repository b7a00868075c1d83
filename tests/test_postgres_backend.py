"""PostgresBackend (db/postgres.py) against a real PostgreSQL server (tests/pgserver.py).

Skipped, with the reason, only where psycopg or the server binaries are
missing; a server that exists but does not start fails these tests.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")
pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed (pip install '.[postgres]')")

import pgserver
from cyllama_db.db.postgres import (
    PostgresBackend,
    PostgresConnection,
    advisory_key,
    advisory_lock,
    translate_placeholders,
    try_advisory_lock,
)
from cyllama_db.errors import (
    ConfigurationError,
    CyllamaDBError,
    DatabaseBusyError,
    DatabaseClosedError,
    DatabaseError,
    DatabaseIntegrityError,
    OutOfRangeError,
    ReadOnlyDatabaseError,
)

PASSWORD = "PG-URL-SECRET-9"  # trust authentication ignores it; it must never be shown


def _with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


@pytest.fixture
def backend(pg_url: str) -> Iterator[PostgresBackend]:
    be = PostgresBackend(_with_password(pg_url), busy_timeout=5)
    with be.transaction() as conn:
        conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT, n BIGINT)")
    yield be
    be.close()


def _other(backend: PostgresBackend, **options: object) -> PostgresBackend:
    """A second backend on the same database: another machine, as far as locks go."""
    return PostgresBackend(backend.url, **options)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server the tests run on ---------------------------------------------------------------


def test_the_test_server_listens_on_loopback_only(backend: PostgresBackend, pg_server: pgserver.Server) -> None:
    assert backend.server_version >= 120000
    if pg_server.root is None:
        pytest.skip("CYLLAMA_TEST_PG_URL names an external server")
    with backend.read() as conn:
        listen, fsync = conn.execute("SELECT current_setting('listen_addresses'), current_setting('fsync')").fetchone()
    assert (listen, fsync) == ("127.0.0.1", "off")


# -- placeholders (no server needed) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ?", "SELECT %s"),
        ("SELECT * FROM t WHERE a = ? AND b LIKE 'x%'", "SELECT * FROM t WHERE a = %s AND b LIKE 'x%%'"),
        ("SELECT '?', ?", "SELECT '?', %s"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
        ("SELECT E'\\'?', ?", "SELECT E'\\'?', %s"),
        ('SELECT "odd?col" FROM t WHERE x = ?', 'SELECT "odd?col" FROM t WHERE x = %s'),
        ("SELECT ? -- what? 100%\n, ?", "SELECT %s -- what? 100%%\n, %s"),
        ("SELECT /* a? /* nested? */ b? */ ?", "SELECT /* a? /* nested? */ b? */ %s"),
        ("SELECT $$a?b%$$, $tag$?$tag$, ?", "SELECT $$a?b%%$$, $tag$?$tag$, %s"),
        ("SELECT 5 % 3", "SELECT 5 %% 3"),
        ("no marks at all", "no marks at all"),
    ],
)
def test_placeholders_translate_outside_literals_only(sql: str, expected: str) -> None:
    assert translate_placeholders(sql) == expected


def test_advisory_keys_are_stable_signed_64_bit() -> None:
    key = advisory_key("migrations")
    assert key == advisory_key("migrations") != advisory_key("migrations2")
    assert -(2**63) <= key < 2**63


# -- connecting and statements ----------------------------------------------------------------


def test_connects_and_never_shows_the_password(backend: PostgresBackend) -> None:
    assert backend.name == "postgresql" and not backend.is_memory
    assert PASSWORD not in backend.location and ":****@" in backend.location
    assert PASSWORD not in repr(backend.url)
    assert not backend.search_available()  # the stores' search is FTS5-only for now (cache.search raises)


def test_statements_behave_like_sqlite3(backend: PostgresBackend) -> None:
    with backend.transaction() as conn:
        assert isinstance(conn, PostgresConnection)
        cur = conn.execute("INSERT INTO kv (k, v, n) VALUES (?, ?, ?)", ("a", "100% sure?", 1))
        assert cur.rowcount == 1
        assert cur.fetchone() is None and cur.fetchall() == [] and list(cur) == []
        many = conn.executemany("INSERT INTO kv (k, v, n) VALUES (?, ?, ?)", [("b", "x", 2), ("c", "y", 3)])
        assert many.rowcount == 2
    with backend.read() as conn:
        assert conn.execute("SELECT v FROM kv WHERE k = ?", ("a",)).fetchone() == ("100% sure?",)
        row = conn.execute("SELECT '?' || ?, '50%', ? LIKE 'a%', 5 % 3", ("x", "abc")).fetchone()
        assert row == ("?x", "50%", True, 2)
        assert [r[0] for r in conn.execute("SELECT k FROM kv ORDER BY k")] == ["a", "b", "c"]
        assert conn.execute("UPDATE kv SET n = n + 1 WHERE n >= ?", (2,)).rowcount == 2
        assert conn.execute("SELECT k FROM kv WHERE k = ?", ("zz",)).fetchone() is None
        # no parameters: the text goes as it is, % and all, several statements allowed
        assert conn.execute("SELECT '100%'").fetchone() == ("100%",)
        conn.executescript("CREATE TABLE s1 (a INT); CREATE TABLE s2 (b INT)")
        assert backend.has_table(conn, "s1") and backend.has_table(conn, "s2")


def test_values_come_back_as_sqlite_gives_them(backend: PostgresBackend) -> None:
    with backend.transaction() as conn:
        conn.execute("CREATE TABLE flags (f INTEGER, r DOUBLE PRECISION, b BYTEA)")
        conn.execute("INSERT INTO flags VALUES (?, ?, ?), (?, ?, ?)", (True, 1.5, b"\x00\x01", False, 2.25, None))
    with backend.read() as conn:
        rows = conn.execute("SELECT f, r, b FROM flags ORDER BY f").fetchall()
        assert rows == [(0, 2.25, None), (1, 1.5, b"\x00\x01")]
        total, mean, big = conn.execute("SELECT sum(f), avg(r), sum(f)::numeric + 1180591620717411303424 FROM flags").fetchone()
        assert total == 1 and type(total) is int
        assert mean == pytest.approx(1.875) and type(mean) is float
        assert big == 2**70 + 1 and type(big) is int


def test_now_sql_is_unix_seconds(backend: PostgresBackend) -> None:
    with backend.read() as conn:
        now = conn.execute(f"SELECT {backend.now_sql()}").fetchone()[0]
    assert type(now) is float and abs(now - time.time()) < 5


def test_introspection_sizes_stats_and_vacuum(backend: PostgresBackend) -> None:
    with backend.read() as conn:
        assert backend.columns(conn, "kv") == ["k", "v", "n"]
        assert backend.columns(conn, "nope") == []
        assert backend.has_table(conn, "kv") and not backend.has_table(conn, "nope")
    before = backend.size_bytes()
    with backend.transaction() as conn:
        conn.executemany("INSERT INTO kv VALUES (?, ?, ?)", [(f"k{i}", "v" * 500, i) for i in range(2000)])
    grown = backend.size_bytes()
    assert grown > before + 500_000
    with backend.transaction() as conn:
        conn.execute("DELETE FROM kv")
    backend.vacuum()
    assert backend.size_bytes() < grown / 4
    stats = backend.storage_stats()
    assert stats["server_version"].startswith(str(backend.server_version // 10000))
    assert stats["pool_max"] == 10 and stats["database_size_mb"] > 0
    assert PASSWORD not in str(stats)
    limited = _other(backend, tables=["nope"])
    try:
        assert limited.size_bytes() == 0
    finally:
        limited.close()


# -- transactions ----------------------------------------------------------------------------------


def _count(backend: PostgresBackend) -> int:
    """Rows of kv as another machine sees them (a separate backend: committed data only)."""
    other = _other(backend, min_size=0, max_size=1)
    try:
        with other.read() as conn:
            return int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])
    finally:
        other.close()


def test_transaction_commits_and_rolls_back(backend: PostgresBackend) -> None:
    with backend.transaction() as conn:
        conn.execute("INSERT INTO kv (k) VALUES (?)", ("kept",))
        assert conn.in_transaction
    assert _count(backend) == 1
    with pytest.raises(RuntimeError, match="boom"), backend.transaction() as conn:
        conn.execute("INSERT INTO kv (k) VALUES (?)", ("lost",))
        raise RuntimeError("boom")
    assert _count(backend) == 1
    with backend.read() as conn:
        assert not conn.in_transaction


def test_nested_transactions_join_the_outer_one(backend: PostgresBackend) -> None:
    with backend.transaction() as outer:
        outer.execute("INSERT INTO kv (k) VALUES ('outer')")
        with backend.transaction() as inner:
            assert inner is outer
            inner.execute("INSERT INTO kv (k) VALUES ('inner')")
        assert _count(backend) == 0, "the inner block committed on its own"
        with backend.read() as reader:
            assert reader is outer
            assert reader.execute("SELECT count(*) FROM kv").fetchone()[0] == 2
    assert _count(backend) == 2
    with pytest.raises(ValueError), backend.transaction() as outer:
        outer.execute("INSERT INTO kv (k) VALUES ('o2')")
        with backend.transaction() as inner:
            inner.execute("INSERT INTO kv (k) VALUES ('i2')")
        raise ValueError("the outer block fails after the inner one ended")
    assert _count(backend) == 2


def test_a_transaction_inside_a_read_uses_its_connection(backend: PostgresBackend) -> None:
    with backend.read() as reader:
        with backend.transaction() as writer:
            assert writer is reader
            writer.execute("INSERT INTO kv (k) VALUES ('w')")
        assert not reader.in_transaction
        assert _count(backend) == 1


def test_threads_get_their_own_connections(backend: PostgresBackend) -> None:
    seen: list[int] = []
    barrier = threading.Barrier(3)

    def work() -> None:
        with backend.read() as conn:
            seen.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            barrier.wait(timeout=10)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(seen)) == 3


def test_a_caught_error_inside_a_transaction_does_not_commit_silently(backend: PostgresBackend) -> None:
    with backend.transaction() as conn:
        conn.execute("INSERT INTO kv (k) VALUES ('dup')")
    with pytest.raises(DatabaseError, match="rolled back") as info, backend.transaction() as conn:
        conn.execute("INSERT INTO kv (k) VALUES ('second')")
        with contextlib.suppress(DatabaseIntegrityError):  # fine on SQLite; PostgreSQL aborts the transaction
            conn.execute("INSERT INTO kv (k) VALUES ('dup')")
    assert not isinstance(info.value, DatabaseIntegrityError)
    assert _count(backend) == 1


# -- errors ------------------------------------------------------------------------------------------


def test_unique_violation_is_an_integrity_error(backend: PostgresBackend) -> None:
    with backend.transaction() as conn:
        conn.execute("INSERT INTO kv (k) VALUES ('x')")
    with pytest.raises(DatabaseIntegrityError) as info, backend.transaction() as conn:
        conn.execute("INSERT INTO kv (k) VALUES ('y')")
        conn.execute("INSERT INTO kv (k) VALUES ('x')")
    assert isinstance(info.value, ValueError) and "kv_pkey" in str(info.value)
    assert PASSWORD not in str(info.value) and ":****@" in str(info.value)
    assert _count(backend) == 1


def test_other_errors_are_library_errors(backend: PostgresBackend) -> None:
    with backend.read() as conn:
        with pytest.raises(DatabaseError, match="no_such_table"):
            conn.execute("SELECT * FROM no_such_table")
        with pytest.raises(OutOfRangeError):
            conn.execute("INSERT INTO kv (k, n) VALUES (?, ?)", ("big", 2**70))
        with pytest.raises(CyllamaDBError):
            conn.execute("SELECT ?, ?", (1,))
        assert conn.execute("SELECT 1").fetchone() == (1,), "the connection still works"
    with pytest.raises(DatabaseError, match="RETURNING"), backend.read() as conn:
        conn.execute("SELECT 1").lastrowid  # noqa: B018


def test_an_unreachable_port_names_host_and_port_not_the_password() -> None:
    port = _free_port()
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/nothing"
    started = time.perf_counter()
    with pytest.raises(DatabaseError) as info:
        PostgresBackend(url, connect_timeout=20)
    assert time.perf_counter() - started < 10, "a refused connection must not wait for the timeout"
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "cannot reach the PostgreSQL server" in message
    assert "pg_isready" in message
    assert PASSWORD not in message and PASSWORD not in repr(info.value)


def test_a_url_for_another_engine_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="postgresql://"):
        PostgresBackend("sqlite:///x.db")
    with pytest.raises(ConfigurationError, match="max_size"):
        PostgresBackend("postgresql://127.0.0.1:1/x", max_size=0)


@pytest.fixture
def second(tmp_path: Path) -> Iterator[pgserver.Server]:
    """A server of this test's own, to stop and start (also when CYLLAMA_TEST_PG_URL is set)."""
    try:
        server = pgserver.start(tmp_path)
    except pgserver.NoServerBinaries as exc:
        pytest.skip(str(exc))
    except pgserver.ServerStartError as exc:
        pytest.fail(f"the PostgreSQL server binaries exist but the server did not start:\n{exc}", pytrace=False)
    yield server
    server.stop()


def test_a_stopped_server_gives_a_clear_error_then_a_restart_is_survived(
    second: pgserver.Server, request: pytest.FixtureRequest
) -> None:
    be = PostgresBackend(_with_password(second.url), busy_timeout=2, connect_timeout=3)
    request.addfinalizer(be.close)
    with be.transaction() as conn:
        conn.execute("CREATE TABLE t (a INT)")
        conn.execute("INSERT INTO t VALUES (1)")
    # stopped between two operations: the stale connection is retried once, and the
    # retry cannot connect: an error naming the server
    second.pause()
    with pytest.raises(DatabaseError) as info, be.read() as conn:
        conn.execute("SELECT count(*) FROM t")
    message = str(info.value)
    assert f"127.0.0.1:{second.port}" in message and PASSWORD not in message
    # stopped in the middle of a transaction: it fails, and nothing of it is written
    second.resume()
    with pytest.raises(DatabaseError) as info, be.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        second.pause()
        conn.execute("INSERT INTO t VALUES (3)")
    assert f"127.0.0.1:{second.port}" in str(info.value) and PASSWORD not in str(info.value)
    assert "nothing of it was written" in str(info.value)
    # the server restarts: the next operation reconnects by itself (retried once)
    second.resume()
    with be.read() as conn:
        assert conn.execute("SELECT array_agg(a ORDER BY a) FROM t").fetchone() == ([1],)


def test_a_restart_between_operations_is_retried_once(
    second: pgserver.Server, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    be = PostgresBackend(second.url, busy_timeout=2, connect_timeout=3)
    request.addfinalizer(be.close)
    with be.transaction() as conn:
        conn.execute("CREATE TABLE t (a INT)")
        conn.execute("INSERT INTO t VALUES (1)")
    second.pause()
    second.resume()
    with caplog.at_level(logging.WARNING, logger="cyllama_db"):
        with be.transaction() as conn:  # BEGIN on the dead connection: replaced, retried
            conn.execute("INSERT INTO t VALUES (2)")
        with be.read() as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    assert any("reconnected" in r.getMessage() for r in caplog.records)


# -- locks, waits and the pool ---------------------------------------------------------------------


def _hold(backend: PostgresBackend, enter: threading.Event, leave: threading.Event, body: str, params: tuple[object, ...] = ()) -> threading.Thread:
    """A thread that runs ``body`` in a transaction and keeps it open until ``leave`` is set."""

    def run() -> None:
        with backend.transaction() as conn:
            conn.execute(body, params)
            enter.set()
            leave.wait(20)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert enter.wait(10)
    return thread


def test_a_row_lock_held_past_the_busy_timeout_is_database_busy(backend: PostgresBackend) -> None:
    with backend.transaction() as conn:
        conn.execute("INSERT INTO kv (k, n) VALUES ('row', 0)")
    enter, leave = threading.Event(), threading.Event()
    holder = _hold(backend, enter, leave, "UPDATE kv SET n = 1 WHERE k = 'row'")
    waiter = _other(backend, busy_timeout=0.5)
    try:
        started = time.perf_counter()
        with pytest.raises(DatabaseBusyError) as info, waiter.transaction() as conn:
            conn.execute("UPDATE kv SET n = 2 WHERE k = 'row'")
        waited = time.perf_counter() - started
        assert 0.4 < waited < 4, waited
        assert isinstance(info.value, TimeoutError) and PASSWORD not in str(info.value)
        # no_wait: at once, even with a long busy timeout
        with backend.no_wait():
            started = time.perf_counter()
            with pytest.raises(DatabaseBusyError), backend.transaction() as conn:
                conn.execute("UPDATE kv SET n = 3 WHERE k = 'row'")
            assert time.perf_counter() - started < 2, "no_wait waited (the busy timeout is 5 s)"
    finally:
        leave.set()
        holder.join(10)
        waiter.close()
    with backend.read() as conn:  # the connection went back with its normal timeout
        assert conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0] == "5s"
        assert conn.execute("SELECT n FROM kv WHERE k = 'row'").fetchone() == (1,)


def test_no_wait_on_a_held_connection_is_restored_after(backend: PostgresBackend) -> None:
    with backend.read() as conn:
        with backend.no_wait():
            assert conn.execute("SHOW lock_timeout").fetchone()[0] == "1ms"
            with backend.no_wait():  # nested: still no wait, and no early restore
                pass
            assert conn.execute("SHOW lock_timeout").fetchone()[0] == "1ms"
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "5s"


def test_advisory_lock_excludes_a_second_connection(backend: PostgresBackend) -> None:
    other = _other(backend, busy_timeout=0.5)
    enter, leave = threading.Event(), threading.Event()
    holder = _hold(backend, enter, leave, "SELECT pg_advisory_xact_lock(?)", (advisory_key("single-flight:abc"),))
    try:
        with other.transaction() as conn:
            assert not try_advisory_lock(conn, "single-flight:abc")
            assert try_advisory_lock(conn, "single-flight:other")
        started = time.perf_counter()
        with pytest.raises(DatabaseBusyError), other.transaction() as conn:
            advisory_lock(conn, "single-flight:abc")
        assert 0.4 < time.perf_counter() - started < 4
        # released when the holder's transaction ends: the waiter gets it then
        got = threading.Event()

        def wait_for_it() -> None:
            waiter = _other(backend, busy_timeout=10)
            try:
                with waiter.transaction() as conn:
                    waiter.advisory_lock(conn, "single-flight:abc")
                    got.set()
            finally:
                waiter.close()

        thread = threading.Thread(target=wait_for_it, daemon=True)
        thread.start()
        assert not got.wait(0.5), "the lock was granted while held"
        leave.set()
        assert got.wait(10), "the lock was not granted after the holder committed"
        thread.join(10)
    finally:
        leave.set()
        holder.join(10)
        other.close()


def test_advisory_lock_needs_a_transaction(backend: PostgresBackend) -> None:
    with pytest.raises(DatabaseError, match=r"inside backend\.transaction"), backend.read() as conn:
        advisory_lock(conn, "x")


def test_pool_exhaustion_waits_the_busy_timeout_then_raises_busy(pg_url: str) -> None:
    be = PostgresBackend(pg_url, busy_timeout=0.5, max_size=2)
    enter = [threading.Event(), threading.Event()]
    leave = threading.Event()

    def hold(i: int) -> None:
        with be.read() as conn:
            conn.execute("SELECT 1")
            enter[i].set()
            leave.wait(20)

    threads = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        assert all(e.wait(10) for e in enter)
        started = time.perf_counter()
        with pytest.raises(DatabaseBusyError), be.read():
            pass
        assert 0.4 < time.perf_counter() - started < 5
    finally:
        leave.set()
        for t in threads:
            t.join(10)
    with be.read() as conn:  # free again
        assert conn.execute("SELECT 1").fetchone() == (1,)
    be.close()


# -- read-only and closing ---------------------------------------------------------------------


def test_readonly_refuses_writes(backend: PostgresBackend) -> None:
    ro = _other(backend, readonly=True)
    try:
        with pytest.raises(ReadOnlyDatabaseError):
            ro.transaction().__enter__()
        with pytest.raises(ReadOnlyDatabaseError), ro.read() as conn:
            conn.execute("INSERT INTO kv (k) VALUES ('no')")
        with ro.read() as conn:
            assert conn.execute("SELECT count(*) FROM kv").fetchone() == (0,)
    finally:
        ro.close()


def test_close_is_idempotent_and_later_use_raises(pg_url: str) -> None:
    be = PostgresBackend(pg_url)
    be.close()
    be.close()
    assert be.closed
    with pytest.raises(DatabaseClosedError), be.read():
        pass
    with pytest.raises(DatabaseClosedError), be.transaction():
        pass


def test_import_cyllama_db_does_not_load_psycopg() -> None:
    import subprocess
    import sys

    code = "import sys, cyllama_db; print([m for m in ('psycopg', 'psycopg_pool') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
