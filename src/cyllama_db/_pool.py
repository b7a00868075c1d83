"""Thread-local SQLite connections with one write-transaction helper.

File databases get one connection per thread (re-opened in a forked child,
as diskcache's ``Cache._con`` does), all in WAL mode so readers never block
the single writer.  Every write goes through :meth:`ConnectionPool.transaction`,
which uses ``BEGIN IMMEDIATE``: taking the write lock up front means two
writers never both hold a read snapshot and then deadlock on upgrade, which is
what produces "database is locked" despite a busy timeout.

In-memory databases (``":memory:"`` or the fallback after a file could not be
opened) use a single connection shared by every thread behind a lock, because
SQLite's shared-cache memory databases report table locks immediately instead
of waiting.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .errors import DatabaseBusyError, DatabaseClosedError, ReadOnlyDatabaseError

__all__ = ["ConnectionPool"]

# This process's id, kept current by an at-fork hook, so the per-call check
# for a connection inherited through fork() costs no getpid() system call.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork()
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ConnectionPool:
    """Hands out the calling thread's connection; closes them all on :meth:`close`."""

    def __init__(self, path: str, *, busy_timeout: float = 30.0, memory: bool = False) -> None:
        self.path = path
        self.memory = memory
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._registry_lock = threading.Lock()
        # Each connection with the thread that opened it (None for the shared
        # in-memory one), so connections of finished threads can be closed.
        self._connections: list[tuple[weakref.ref[threading.Thread] | None, sqlite3.Connection]] = []
        self._closed = False
        self._shared: sqlite3.Connection | None = None
        self._shared_lock = threading.RLock()
        if memory:
            self._shared = self._open(":memory:")

    # -- opening ---------------------------------------------------------------------------

    def _open(self, target: str) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; the sqlite3
        # module's implicit transactions would otherwise wrap reads too.
        conn = sqlite3.connect(
            target,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if target != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode; only an
            # OS crash or power loss can drop the last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
        owner = None if self.memory else weakref.ref(threading.current_thread())
        with self._registry_lock:
            # Short-lived threads (e.g. one per HTTP request) would otherwise
            # leave a connection and two file descriptors behind each.
            finished = [c for ref, c in self._connections if ref is not None and not _alive(ref)]
            self._connections = [
                (ref, c) for ref, c in self._connections if ref is None or _alive(ref)
            ]
            self._connections.append((owner, conn))
        for stale in finished:
            with contextlib.suppress(sqlite3.Error):
                stale.close()
        return conn

    def _thread_connection(self) -> sqlite3.Connection:
        if self._closed:
            raise DatabaseClosedError(self.path)
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and getattr(self._local, "pid", None) == pid:
            return conn
        # A connection inherited through fork() must not be used (SQLite's locks
        # are per-process); open a fresh one and forget the parent's.
        if conn is not None:
            with self._registry_lock:
                self._connections = [(r, c) for r, c in self._connections if c is not conn]
            self._local.depth = 0
        conn = self._open(self.path)
        self._local.conn = conn
        self._local.pid = pid
        return conn

    # -- use -------------------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """The calling thread's connection, for one plain autocommit read.

        The fastest way to run a single ``SELECT`` on a file database: the
        :meth:`read` context manager costs about as much as a small indexed
        ``SELECT`` itself. The connection is in autocommit mode, so each
        statement sees the latest committed data. Do not write with it:
        writes must use :meth:`transaction` (or :meth:`execute_write` for a
        single statement). In-memory databases share one
        connection between threads behind a lock, so there this raises
        ``RuntimeError``; use :meth:`read` (``pool.memory`` tells which).
        Raises :class:`DatabaseClosedError` after :meth:`close`.
        """
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and not self._closed and local.pid == _pid:
            return conn
        if self._shared is not None:
            raise RuntimeError("an in-memory database shares one connection between threads: use read()")
        return self._thread_connection()

    def execute_write(self, sql: str, parameters: Sequence[object] = ()) -> int:
        """Run one write statement as its own transaction; returns its ``rowcount``.

        The same guarantees as a :meth:`transaction` holding just this
        statement, for a few microseconds less (no BEGIN and COMMIT
        statements, no context manager): in autocommit mode SQLite takes the
        write lock (waiting up to the busy timeout) as the statement starts,
        as ``BEGIN IMMEDIATE`` would, and commits when it ends. Inside a
        :meth:`transaction` of the same thread it joins that transaction.
        Use :meth:`transaction` for anything that needs two statements.
        """
        try:
            if self._shared is not None:
                if self._closed:
                    raise DatabaseClosedError(self.path)
                with self._shared_lock:
                    return self._shared.execute(sql, parameters).rowcount
            return self.connection().execute(sql, parameters).rowcount
        except sqlite3.OperationalError as exc:
            self._translate(exc)
            raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection to read with (autocommit: each statement sees committed data)."""
        if self._shared is not None:
            if self._closed:
                raise DatabaseClosedError(self.path)
            with self._shared_lock:
                yield self._shared
        else:
            yield self._thread_connection()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); commits on success, rolls back on error.

        Nested use joins the outer transaction, so helpers that write can be
        called both on their own and from inside a larger transaction.
        """
        if self._shared is not None:
            if self._closed:
                raise DatabaseClosedError(self.path)
            with self._shared_lock:
                yield from self._transaction_on(self._shared, self._shared_state())
        else:
            conn = self._thread_connection()
            yield from self._transaction_on(conn, self._local)

    def _shared_state(self) -> threading.local:
        # The shared connection is guarded by an RLock, so only one thread is
        # ever inside; a single depth counter for it is enough.
        state = getattr(self, "_shared_depth", None)
        if state is None:
            state = threading.local()
            self._shared_depth = state
        return state

    def _translate(self, exc: sqlite3.OperationalError) -> None:
        """Raise the library's error for a read-only file or a lock held too long."""
        _raise_if_readonly(exc)
        if _is_busy(exc):
            raise DatabaseBusyError(self.path, self.busy_timeout) from exc

    def _transaction_on(self, conn: sqlite3.Connection, state: threading.local) -> Iterator[sqlite3.Connection]:
        depth = getattr(state, "depth", 0)
        if depth:
            state.depth = depth + 1
            try:
                yield conn
            finally:
                state.depth = depth
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self._translate(exc)
            raise
        state.depth = 1
        try:
            yield conn
        except BaseException:
            state.depth = 0
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        state.depth = 0
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._translate(exc)
            raise

    # -- shutdown --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def connection_count(self) -> int:
        """How many connections are open (one per thread that used the pool)."""
        with self._registry_lock:
            return len(self._connections)

    def close(self) -> None:
        """Close every thread's connection; later use raises :class:`DatabaseClosedError`."""
        with self._registry_lock:
            if self._closed:
                return
            self._closed = True
            connections = [c for _, c in self._connections]
            self._connections = []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()


def _alive(ref: weakref.ref[threading.Thread]) -> bool:
    thread = ref()
    if thread is None:
        return False
    # During interpreter shutdown the main thread already reports itself as
    # finished while atexit handlers still use its connection: never prune it.
    return thread is threading.main_thread() or thread.is_alive()


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def _raise_if_readonly(exc: sqlite3.OperationalError) -> None:
    if "readonly" in str(exc) or "read-only" in str(exc):
        raise ReadOnlyDatabaseError(
            f"cannot write to the database: {exc}. Check the file's permissions "
            "or point CYLLAMA_DB_PATH at a writable location."
        ) from exc
