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

``fork()`` with other threads using the database: a connection another
thread was inside at the moment of the fork has its SQLite mutex held by a
thread that does not exist in the child, so closing (finalizing) it there
waits forever, and SQLite's per-process record of the file's locks says
"held" forever. So ``fork()`` first waits (at most :data:`FORK_WAIT_SECONDS`)
until no thread is inside a pool operation, and operations starting
meanwhile wait for the fork. The child then closes the inherited connections,
which is safe because none was in use, and needed: only once they are closed
does its own connection take real file locks (without them, another process
closing the file last would delete the WAL the child is writing to). An
inherited connection that was in use anyway (the wait timed out, or it was
inside a transaction of the forking thread) is abandoned instead: never
closed, a reference kept until the process ends.

The WAL of a file database stays bounded: ``journal_size_limit`` truncates it
back to :data:`JOURNAL_SIZE_LIMIT` whenever it is reset, SQLite's automatic
checkpoint runs every 1,000 pages; every :data:`WAL_CHECK_EVERY` commits a
WAL over :data:`WAL_RESTART_BYTES` gets a ``wal_checkpoint(RESTART)`` that
waits up to :data:`WAL_RESTART_WAIT` for readers (the automatic one never
waits, so readers that never pause starve it); and :meth:`ConnectionPool.close`
ends with a ``wal_checkpoint(TRUNCATE)`` that waits at most 0.2 s for a write in flight.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import (
    DatabaseBusyError,
    DatabaseClosedError,
    DatabaseFileError,
    DiskFullError,
    ReadOnlyDatabaseError,
)

__all__ = ["JOURNAL_SIZE_LIMIT", "ConnectionPool", "readonly_uri"]

#: Bytes the ``-wal`` file is truncated back to after a checkpoint resets it (4 MiB).
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
#: A WAL larger than this is checkpointed with RESTART (waiting for readers) after a commit.
WAL_RESTART_BYTES = 2 * JOURNAL_SIZE_LIMIT
#: Checked every this many commits of one pool (one stat() call).
WAL_CHECK_EVERY = 16
#: Longest wait of that checkpoint for readers, in seconds (never more than busy_timeout).
WAL_RESTART_WAIT = 0.2

# This process's id, kept current by an at-fork hook, so the per-call check
# for a connection inherited through fork() costs no getpid() system call.
_pid = os.getpid()


# Every open pool, so that a forked child can abandon the connections it inherited.
_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()

# Connections inherited through fork(), kept referenced for the rest of the
# process: a Python sqlite3.Connection that is garbage-collected closes (and
# finalizes) itself, which is exactly what must never happen in the child.
_inherited: list[sqlite3.Connection] = []
_inherited_ids: set[int] = set()


def _abandon(conn: sqlite3.Connection) -> None:
    """Never close ``conn`` (inherited from the parent) in this process, not even at exit."""
    if id(conn) in _inherited_ids:
        return
    _inherited.append(conn)
    _inherited_ids.add(id(conn))
    try:
        # At interpreter exit module globals are cleared, which would free
        # (and so close) the list's connections: one reference is leaked on
        # purpose so they never are.
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
    except Exception:  # pragma: no cover - a Python without ctypes: the list still holds them
        pass


def readonly_uri(path: str) -> str:
    """The URI that opens ``path`` read-only, also where SQLite could not create a ``-shm``.

    In a folder this user cannot write, with no ``-wal`` beside the file, no
    process can be writing it (a writer needs the ``-wal``): the file is
    then opened ``immutable``, which needs no ``-shm``.
    """
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    folder = os.path.dirname(path) or "."
    if not os.path.exists(path + "-wal") and not os.access(folder, os.W_OK):
        uri += "&immutable=1"
    return uri


# -- quiet at fork time ----------------------------------------------------------------------
#
# Abandoning is not enough on its own: SQLite keeps one record per file of the
# locks this process's connections hold (and a mutex guarding it). Had the
# writer thread been inside a write transaction when the process forked, the
# child would inherit "a connection of this process holds the write lock" and
# wait for it forever. So fork() waits (briefly) until no thread is inside a
# pool operation, and a pool operation that would start meanwhile waits for
# the fork to be done. Per operation this costs a dict update, a few hundred
# nanoseconds.

_active: dict[int, int] = {}  # thread ident -> nesting depth of pool operations
_forking = False
_fork_done = threading.Event()
_fork_done.set()
#: Longest wait of fork() for the other threads' pool operations to end.
FORK_WAIT_SECONDS = 10.0


def _enter() -> None:
    tid = threading.get_ident()
    depth = _active.get(tid, 0)
    _active[tid] = depth + 1
    while _forking and depth == 0:  # (nested: fork() is already waiting for this thread)
        del _active[tid]
        _fork_done.wait(FORK_WAIT_SECONDS)
        _active[tid] = 1


def _leave() -> None:
    tid = threading.get_ident()
    depth = _active.get(tid, 1) - 1
    if depth > 0:
        _active[tid] = depth
    else:
        _active.pop(tid, None)


@contextmanager
def _inside() -> Iterator[None]:
    _enter()
    try:
        yield
    finally:
        _leave()


_fork_clean = False  # the last fork() found no other thread inside a pool operation


def _before_fork() -> None:
    global _forking, _fork_clean
    _fork_done.clear()
    _forking = True
    me = threading.get_ident()
    deadline = time.monotonic() + FORK_WAIT_SECONDS
    while True:
        busy = any(tid != me for tid in list(_active))
        if not busy or time.monotonic() >= deadline:
            break
        time.sleep(0.0005)
    _fork_clean = not busy
    # An in-memory database has one connection, which the child keeps using:
    # fork only while no thread is inside it, so its SQLite mutex is free.
    for pool in list(_pools):
        if pool._shared is not None and not pool._closed:
            pool._fork_held = pool._shared_lock.acquire(blocking=False)


def _after_fork_in_parent() -> None:
    global _forking
    for pool in list(_pools):
        if pool._fork_held:
            pool._fork_held = False
            pool._shared_lock.release()
    _forking = False
    _fork_done.set()


def _after_fork_in_child() -> None:
    global _pid, _forking, _fork_done
    _pid = os.getpid()
    mine = _active.get(threading.get_ident())
    _active.clear()  # the other threads do not exist here
    if mine:
        _active[threading.get_ident()] = mine
    _forking = False
    _fork_done = threading.Event()
    _fork_done.set()
    for pool in list(_pools):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork()
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class ConnectionPool:
    """Hands out the calling thread's connection; closes them all on :meth:`close`."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 30.0,
        memory: bool = False,
        readonly: bool = False,
        auto_vacuum: bool = False,
    ) -> None:
        self.path = path
        self.memory = memory
        self.busy_timeout = busy_timeout
        #: a new (empty) database gets ``PRAGMA auto_vacuum = INCREMENTAL`` (else NONE)
        self.auto_vacuum = auto_vacuum
        #: every write raises ReadOnlyDatabaseError (file connections are opened ``mode=ro``)
        self.readonly = readonly
        self._fork_held = False
        self._commits = 0
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
        _pools.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget (never close) every connection of the parent."""
        self._registry_lock = threading.Lock()  # a parent thread may have held it
        for _, conn in self._connections:
            if _fork_clean and not conn.in_transaction:
                # Idle at the fork: closing only drops this process's view of it
                # (it cannot checkpoint: the parent still holds its lock).
                try:
                    conn.close()
                except Exception:  # pragma: no cover - nothing to do about it here
                    _abandon(conn)
            else:
                _abandon(conn)
        self._connections = []
        if self._shared is not None:
            held, self._fork_held = self._fork_held, False
            self._shared_lock = threading.RLock()
            self._shared_depth = threading.local()
            if not held and not self._closed:
                # Another thread was inside the shared connection when the
                # process forked (the before-fork hook timed out): using it
                # here could wait forever on its SQLite mutex.
                _abandon(self._shared)
                self._closed = True

    # -- opening ---------------------------------------------------------------------------

    def _open(self, target: str) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; the sqlite3
        # module's implicit transactions would otherwise wrap reads too.
        read_only_file = self.readonly and target != ":memory:"
        with _inside():
            conn = sqlite3.connect(
                readonly_uri(target) if read_only_file else target,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=read_only_file,
            )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if read_only_file:
                conn.execute("PRAGMA query_only = ON")
            elif conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                # A new, empty database: its auto-vacuum mode can only be chosen
                # now, before anything (switching to WAL included) writes page 1.
                conn.execute(f"PRAGMA auto_vacuum = {'INCREMENTAL' if self.auto_vacuum else 'NONE'}")
            if not read_only_file and target != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL is durable across application crashes in WAL mode; only an
                # OS crash or power loss can drop the last commits.
                conn.execute("PRAGMA synchronous = NORMAL")
                # A WAL that grew for one big transaction shrinks back to this
                # after the next checkpoint resets it, instead of staying that size.
                conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except BaseException:
            conn.close()  # ours, just opened: closing it is safe
            raise
        owner = None if self.memory else weakref.ref(threading.current_thread())
        with self._registry_lock:
            # Short-lived threads (e.g. one per HTTP request) would otherwise
            # leave a connection and two file descriptors behind each.
            finished = [c for ref, c in self._connections if ref is not None and not _alive(ref)]
            self._connections = [
                (ref, c) for ref, c in self._connections if ref is None or _alive(ref)
            ]
            self._connections.append((owner, conn))
        with _inside():
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
        # are per-process), nor closed (see _abandon): open a fresh one.
        if conn is not None:
            _abandon(conn)
            self._local.depth = 0
            self._local.no_wait = False
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

    def fetchone(self, sql: str, parameters: Sequence[object] = ()) -> tuple[object, ...] | None:
        """The first row of one autocommit ``SELECT`` on this thread's connection.

        As fast as :meth:`connection` ``.execute(...).fetchone()`` give or
        take a few hundred nanoseconds, and, unlike it, a ``fork()`` waits
        for it to end (see the module's notes on fork). Works on in-memory
        databases too.
        """
        _enter()
        try:
            if self._shared is not None:
                if self._closed:
                    raise DatabaseClosedError(self.path)
                with self._shared_lock:
                    row: tuple[object, ...] | None = self._shared.execute(sql, parameters).fetchone()
                    return row
            return self.connection().execute(sql, parameters).fetchone()
        finally:
            _leave()

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
        self.check_writable()
        _enter()
        try:
            if self._shared is not None:
                if self._closed:
                    raise DatabaseClosedError(self.path)
                with self._shared_lock:
                    return self._shared.execute(sql, parameters).rowcount
            conn = self.connection()
            rowcount = conn.execute(sql, parameters).rowcount
            if not conn.in_transaction:
                self._after_commit(conn)
            return rowcount
        except sqlite3.OperationalError as exc:
            self._translate(exc)
            raise
        finally:
            _leave()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection to read with (autocommit: each statement sees committed data)."""
        _enter()
        try:
            if self._shared is not None:
                if self._closed:
                    raise DatabaseClosedError(self.path)
                with self._shared_lock:
                    yield self._shared
            else:
                yield self._thread_connection()
        finally:
            _leave()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); commits on success, rolls back on error.

        Nested use joins the outer transaction, so helpers that write can be
        called both on their own and from inside a larger transaction.
        On a read-only pool it raises :class:`ReadOnlyDatabaseError`.
        """
        self.check_writable()
        _enter()
        try:
            if self._shared is not None:
                if self._closed:
                    raise DatabaseClosedError(self.path)
                with self._shared_lock:
                    yield from self._transaction_on(self._shared, self._shared_state())
            else:
                conn = self._thread_connection()
                yield from self._transaction_on(conn, self._local)
        finally:
            _leave()

    def check_writable(self) -> None:
        """Raise :class:`ReadOnlyDatabaseError` if the pool was opened read-only."""
        if self.readonly:
            if self._closed:
                raise DatabaseClosedError(self.path)
            raise ReadOnlyDatabaseError(
                f"database {self.path!r} was opened read-only (readonly=True); nothing was written. "
                "Open it without readonly=True (the file must be writable) to change it."
            )

    @contextmanager
    def no_wait(self) -> Iterator[None]:
        """Inside the block, this thread's writes never wait for another connection's lock.

        A write that would wait raises :class:`DatabaseBusyError` at once
        (``busy_timeout`` 0 on this thread's connection). For best-effort
        bookkeeping before a read: a read must not wait on, or fail for, a write.
        """
        if self._shared is not None or getattr(self._local, "no_wait", False):
            yield  # one connection behind a Python lock: no SQLite lock to wait for
            return
        conn = self._thread_connection()
        conn.execute("PRAGMA busy_timeout = 0")
        self._local.no_wait = True
        try:
            yield
        finally:
            self._local.no_wait = False
            with contextlib.suppress(sqlite3.Error):  # closed meanwhile: nothing to restore
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    def waits(self) -> bool:
        """False inside :meth:`no_wait` on this thread."""
        return not getattr(self._local, "no_wait", False)

    def _shared_state(self) -> threading.local:
        # The shared connection is guarded by an RLock, so only one thread is
        # ever inside; a single depth counter for it is enough.
        state = getattr(self, "_shared_depth", None)
        if state is None:
            state = threading.local()
            self._shared_depth = state
        return state

    def _translate(self, exc: sqlite3.OperationalError) -> None:
        """Raise the library's error for a read-only file, a lock held too long, a full disk."""
        _raise_if_readonly(exc)
        if _is_busy(exc):
            raise DatabaseBusyError(self.path, self.busy_timeout) from exc
        text = str(exc)
        if "disk is full" in text:
            raise DiskFullError(
                self.path, text, "Free some disk space (or raise the quota) and retry; nothing was written."
            ) from exc
        if "disk I/O error" in text:
            raise DatabaseFileError(
                self.path, text, "Nothing was written; check the disk (dmesg, df) and retry."
            ) from exc

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
        self._after_commit(conn)

    def _after_commit(self, conn: sqlite3.Connection) -> None:
        """Every few commits: if the WAL outgrew its bound, checkpoint it to the start."""
        self._commits += 1
        if self._commits % WAL_CHECK_EVERY or self._shared is not None:
            return
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        if size <= WAL_RESTART_BYTES:
            return
        # SQLite's own (passive) checkpoint never waits for readers, so with
        # readers always active it can never reach the end of the WAL, which
        # then grows without bound. RESTART waits a little for them, copies
        # everything back and lets the next writer start the WAL over
        # (journal_size_limit then truncates it).
        waits = self.waits()
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(min(WAL_RESTART_WAIT, self.busy_timeout) * 1000)}")
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.Error:
            pass  # busy or full: the next check tries again
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000) if waits else 0}")

    # -- shutdown --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def connection_count(self) -> int:
        """How many connections are open (one per thread that used the pool)."""
        with self._registry_lock:
            return len(self._connections)

    def close(self) -> None:
        """Close every thread's connection; later use raises :class:`DatabaseClosedError`.

        A file database's WAL is first checkpointed and truncated, if that
        needs no wait (another connection writing or reading an old snapshot
        makes it a no-op; SQLite's own checkpoint then does it later).
        Connections inherited through ``fork()`` are never closed.
        """
        with self._registry_lock:
            if self._closed:
                return
            self._closed = True
            connections = [c for _, c in self._connections]
            self._connections = []
        with _inside():
            if connections and not self.memory and not self.readonly:
                _checkpoint(connections[0])
            for conn in connections:
                with contextlib.suppress(sqlite3.Error):  # closing is best effort
                    conn.close()


#: How long close()'s checkpoint waits for a write in flight (another
#: connection's, e.g. a background write of buffered hit counts) to end.
CLOSE_CHECKPOINT_WAIT_MS = 200


def _checkpoint(conn: sqlite3.Connection) -> None:
    """``wal_checkpoint(TRUNCATE)``, waiting at most :data:`CLOSE_CHECKPOINT_WAIT_MS`; never raises."""
    try:
        if conn.in_transaction:
            return  # a thread is still inside a transaction: leave it to SQLite
        conn.execute(f"PRAGMA busy_timeout = {CLOSE_CHECKPOINT_WAIT_MS}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error:
        pass


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
