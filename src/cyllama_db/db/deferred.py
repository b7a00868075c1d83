"""Write-behind: bookkeeping a hot path buffers in memory and one background thread writes.

A cache hit must cost about as much as the ``SELECT`` that found it, so
what it leaves behind (the statistics row of the hit, the entry's hit count)
is not written by the caller: it waits in a *channel* of the database's
:class:`DeferredWrites` (``db.deferred``) and is written later, in batches,
one write transaction per batch.

The policy, the same for every channel:

- **When.** A channel is written once :data:`FLUSH_ITEMS` items are waiting,
  or once its oldest item has waited :data:`FLUSH_SECONDS` seconds, by one
  process-wide daemon thread (``cyllama-db-writer``) serving every channel of
  every database. The store writes its channel itself before a read or a
  delete that must see the items (``db.stats.flush()``), and
  :meth:`DeferredWrites.close` writes every channel when the database closes.
- **Never blocking the hot path.** The thread waits at most
  :data:`BACKGROUND_WAIT_SECONDS` (or the busy timeout, if shorter) for
  another connection's write lock; a locked, read-only or failing write keeps
  the items, in order, and is retried :data:`FLUSH_SECONDS` later. Adding an
  item never writes, except when no thread can be started (the interpreter
  is shutting down): then the caller writes a full batch if the lock is free.
- **Bounded.** Past :data:`BUFFER_MAX` waiting items (the file stayed locked
  a long time) the oldest tenth is dropped, with a WARNING: it is
  bookkeeping, not data.
- **Exit.** A database collected without ``close()``, and every database
  still open at interpreter exit, is written by a ``weakref.finalize``
  callback waiting the full busy timeout. The thread stops for good when the
  interpreter starts shutting down (the main thread has ended, or at exit,
  before the finalizers run): a daemon thread still in SQLite while the
  interpreter tears down could crash it.
- **Fork.** A forked child starts with no thread and empty channels: the
  parent writes its own waiting items, the child must not write them twice.

A store registers a channel once its database is open::

    self._hits = self.db.deferred.channel("stats.hits", _write_hit_rows, what="cache-hit statistics rows")
    self._hits.add(row)                      # the hot path: no write
    self._hits.flush()                       # before a read that must see them
    with self.pool.transaction() as conn:    # inside a write of the store's own:
        self._hits.flush_in(conn)            # the waiting items in the same transaction

``flush(conn, items)`` runs inside one write transaction with the items in
the order they were added; it must not hold the database (use a module-level
function), so that a database collected unclosed can still be written by its
finalizer. Items are whatever the store needs: the statistics store buffers
whole rows; a store counting per key buffers ``(key, time)`` and aggregates
per key in its flush function.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .facade import CyllamaDB
    from .pool import ConnectionPool

__all__ = [
    "BACKGROUND_WAIT_SECONDS",
    "BUFFER_MAX",
    "FLUSH_ITEMS",
    "FLUSH_SECONDS",
    "Channel",
    "DeferredWrites",
]

logger = logging.getLogger("cyllama_db.deferred")

#: A channel is written once this many items are waiting ...
FLUSH_ITEMS = 256
#: ... or once the oldest has waited this many seconds (also the retry delay
#: after a write that found the file locked).
FLUSH_SECONDS = 2.0
#: Past this many waiting items in one channel the oldest tenth is dropped, with a WARNING.
BUFFER_MAX = 100_000
#: How long the background thread waits for another connection's write lock
#: (at most the database's busy timeout) before it retries later.
BACKGROUND_WAIT_SECONDS = 0.5

FlushFunction = Callable[[sqlite3.Connection, list[Any]], None]


@contextlib.contextmanager
def _lock_wait(pool: ConnectionPool, wait: float | None) -> Iterator[None]:
    """Inside the block, this thread's connection waits at most ``wait`` s for the write lock."""
    if wait is None or pool.memory or wait >= pool.busy_timeout or getattr(pool, "name", "sqlite") != "sqlite":
        # None: the pool's own busy timeout. A memory database has one
        # connection, guarded by a Python lock: no SQLite lock to wait for.
        yield
        return
    engine_wait = getattr(pool, "lock_wait", None)
    if engine_wait is not None:  # another engine (PostgreSQL: lock_timeout)
        with engine_wait(wait):
            yield
        return
    with pool.read() as conn:  # the connection transaction() uses on this thread
        conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):  # closed meanwhile: nothing to restore
                conn.execute(f"PRAGMA busy_timeout = {int(pool.busy_timeout * 1000)}")


class Channel:
    """One store's waiting items and the writing of them (see the module's policy).

    Made by :meth:`DeferredWrites.channel`; a store keeps it and calls
    :meth:`add` on its hot path, :meth:`flush` before a read that must see
    the items, and :meth:`taking` to write the waiting items together with
    a write of its own.
    """

    def __init__(
        self,
        owner: DeferredWrites,
        name: str,
        flush: FlushFunction,
        *,
        logger: logging.Logger,
        what: str,
        after_write: Callable[[], None] | None,
    ) -> None:
        self.owner = owner
        self.name = name
        self._write = flush
        self.logger = logger
        self.what = what
        self._after_write = None if after_write is None else _weak_callable(after_write)
        self.items: deque[Any] = deque()
        self._reset_locks()
        self.oldest = 0.0  # time.monotonic() when the oldest waiting item came
        self.retry_after = 0.0  # no background write before this (after a failed one)
        self.closed = False

    def _reset_locks(self) -> None:
        self.lock = threading.Lock()  # guards items, oldest, retry_after
        # Held while items are written, and by the writer thread whenever it
        # uses the pool: close() takes it, so the pool never closes under the
        # writer. Re-entrant: an after_write callback may flush again.
        self.flush_lock = threading.RLock()

    @property
    def pool(self) -> ConnectionPool:
        return self.owner.pool

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"<Channel {self.name!r}: {len(self.items)} waiting>"

    # -- the hot path -----------------------------------------------------------------------

    def add(self, item: Any) -> None:
        """Buffer one item; the background thread writes it (never a write here)."""
        dropped = 0
        with self.lock:
            items = self.items
            first = not items
            if first:
                self.oldest = time.monotonic()
            items.append(item)
            if len(items) > BUFFER_MAX:
                dropped = len(items) - BUFFER_MAX + max(1, BUFFER_MAX // 10)
                for _ in range(dropped):
                    items.popleft()
            full = len(items) == FLUSH_ITEMS
        if dropped:
            self.logger.warning(
                "dropped the %d oldest %s: %s has been locked by another connection for too long"
                " to write them",
                dropped,
                self.what,
                self.owner.path,
            )
        # Only the first waiting item and a full batch need the thread's
        # attention: it is already waiting for the rest.
        if first or full:
            _writer.wake(self)

    # -- writing ----------------------------------------------------------------------------

    def next_due(self) -> float:
        """The time.monotonic() at which the waiting items should be written."""
        if not self.items:
            return 0.0  # nothing waiting: the thread drops the channel from its list
        if len(self.items) >= FLUSH_ITEMS:
            return self.retry_after
        return max(self.oldest + FLUSH_SECONDS, self.retry_after)

    def take(self) -> list[Any]:
        """Every waiting item, oldest first; the channel is empty afterwards."""
        with self.lock:
            items = list(self.items)
            self.items.clear()
        return items

    def put_back(self, items: list[Any]) -> None:
        """Return items a failed write took, ahead of any that came meanwhile."""
        if not items:
            return
        with self.lock:
            self.items.extendleft(reversed(items))
            now = time.monotonic()
            self.oldest = now
            self.retry_after = now + FLUSH_SECONDS  # not on every add while locked
            excess = len(self.items) - BUFFER_MAX
            for _ in range(max(0, excess)):
                self.items.popleft()
        if excess > 0:
            self.logger.warning("dropped the %d oldest %s", excess, self.what)

    def flush(self, wait: float | None = None, lock_timeout: float | None = None) -> bool:
        """Write the waiting items in one transaction; False if another flush held them.

        ``wait``: longest wait for another connection's write lock (None:
        the busy timeout). ``lock_timeout``: how long to wait for a flush
        already running (the background thread's): None the busy timeout,
        -1 as long as it takes, 0 not at all. A failed write keeps the items
        and raises. Not from inside a write transaction: use
        :meth:`flush_in` there.
        """
        if lock_timeout is None:
            lock_timeout = self.pool.busy_timeout
        if not self.flush_lock.acquire(timeout=lock_timeout):
            return False
        try:
            if self.closed:
                return True
            items = self.take()
            if not items:
                return True
            try:
                with _lock_wait(self.pool, wait), self.pool.transaction() as conn:
                    self._write(conn, items)
            except BaseException:
                self.put_back(items)
                raise
            return True
        finally:
            self.flush_lock.release()

    def taking(self) -> _Taking:
        """``with channel.taking() as items:`` the waiting items, to write in the caller's own
        transaction (``[]`` if a flush has them).

        Inside the block the items are the caller's: write them with
        :meth:`write_in` in the transaction that holds the caller's own
        write. If the block raises, they go back to the channel. (A class,
        not a generator: it is on the path of every real generation.)
        """
        return _Taking(self)

    def write_in(self, conn: sqlite3.Connection, items: list[Any]) -> None:
        """Write ``items`` (from :meth:`taking`) with this channel's flush function on ``conn``."""
        if items:
            self._write(conn, items)

    def flush_in(self, conn: sqlite3.Connection) -> int:
        """Inside the caller's write transaction on ``conn``: write the waiting items there; how many.

        Never waits: items a running flush (the background thread's) holds
        are left to it. Use this, not :meth:`flush`, from inside a
        transaction (e.g. an eviction that must see every hit in its LRU
        order): :meth:`flush` would wait for the thread, which waits for the
        caller's write lock. If the caller's transaction rolls back, the
        items written in it are lost (bookkeeping, not data).
        """
        with self.taking() as items:
            self.write_in(conn, items)
        return len(items)

    def close(self) -> None:
        """Write what is waiting (waiting the busy timeout) and take no more; never raises."""
        # Taking the flush lock waits for the writer thread to be done with
        # the pool, and keeps it away afterwards (the pool closes next).
        with self.flush_lock:
            if self.closed:
                return
            try:
                self.flush(None)
            except Exception as exc:  # closing must not fail over bookkeeping
                self.logger.warning(
                    "could not write %d %s to %s: %s", len(self), self.what, self.owner.path, exc
                )
            self.closed = True
        _writer.discard(self)

    def _background_write(self) -> None:
        """The thread's write: short lock wait, errors kept for a retry, then ``after_write``."""
        with self.flush_lock:  # close() waits for this
            # Chosen as due a moment ago; not if the items were taken and
            # given back meanwhile (a failed write of a store's own).
            if self.closed or not self.items or self.next_due() > time.monotonic():
                return
            wait = min(self.pool.busy_timeout, BACKGROUND_WAIT_SECONDS)
            if self._try_flush(wait) and self._after_write is not None:
                callback = self._after_write()
                if callback is not None:
                    try:
                        callback()
                    except Exception as exc:  # housekeeping; logged, never fatal to the thread
                        self.logger.debug("after writing %s: %s", self.what, exc)

    def _try_flush(self, wait: float) -> bool:
        """Write the waiting items if the lock comes within ``wait``; never raises."""
        try:
            return self.flush(wait, lock_timeout=0)
        except Exception as exc:
            # Locked, read-only or closed: the items wait for the next attempt
            # (or the close()/exit flush, which waits the full busy timeout).
            self.logger.debug("%s not written yet (%s); retrying later", self.what, exc)
            return False


class _Taking:
    """The context manager of :meth:`Channel.taking`."""

    __slots__ = ("channel", "items", "locked")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.items: list[Any] = []
        self.locked = False

    def __enter__(self) -> list[Any]:
        channel = self.channel
        # Not waiting: a flush (the thread's) that holds the items writes them.
        self.locked = channel.flush_lock.acquire(blocking=False)
        if self.locked and channel.items:
            self.items = channel.take()
        return self.items

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if not self.locked:
            return
        try:
            if exc_type is not None:
                self.channel.put_back(self.items)
        finally:
            self.channel.flush_lock.release()


def _weak_callable(fn: Callable[[], None]) -> Callable[[], Callable[[], None] | None]:
    """A weak reference to ``fn`` (a bound method: to its object), so a channel never keeps a store alive."""
    if inspect.ismethod(fn):
        return weakref.WeakMethod(fn)
    return lambda: fn


class DeferredWrites:
    """A database's write-behind channels (``db.deferred``); see the module for the policy.

    Holds the database only weakly: the channels' pool and flush functions
    stay reachable by the exit path after the database is collected.
    """

    def __init__(self, db: CyllamaDB) -> None:
        self._db = weakref.ref(db)
        self._pool: ConnectionPool | None = None
        self._path = ""
        self.channels: dict[str, Channel] = {}
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("no channel was registered: the database is not open")
        return self._pool

    @property
    def path(self) -> str:
        return self._path

    def channel(
        self,
        name: str,
        flush: FlushFunction,
        *,
        logger: logging.Logger = logger,
        what: str = "buffered rows",
        after_write: Callable[[], None] | None = None,
    ) -> Channel:
        """Register (or get again) the channel ``name``, written by ``flush(conn, items)``.

        Call it once the database is open (a store's ``open()``).
        ``flush`` runs inside one write transaction with the waiting items,
        oldest first; it must not hold the database (pass a module-level
        function, not a bound method). ``logger`` and ``what`` ("cache-hit
        statistics rows") word the warnings. ``after_write`` (held weakly)
        runs after each background write, outside its transaction, e.g. a
        retention pass that is due.
        """
        if inspect.ismethod(flush):
            raise TypeError(
                "a channel's flush function must not hold the database: pass a module-level "
                f"function, not the bound method {flush.__qualname__}"
            )
        with self._lock:
            found = self.channels.get(name)
            if found is not None:
                return found
            if self._pool is None:
                db = self._db()
                if db is None:  # pragma: no cover - a store of a collected database
                    raise RuntimeError("the database is gone")
                self._pool = db.pool
                self._path = db.path
                _all.add(self)
                # Writes the waiting items if the database is collected
                # unclosed, or at interpreter exit; holds this object (and the
                # pool), never the database.
                self._finalizer = weakref.finalize(db, _flush_on_exit, self)
            channel = Channel(self, name, flush, logger=logger, what=what, after_write=after_write)
            self.channels[name] = channel
            return channel

    def __len__(self) -> int:
        """Items waiting in every channel."""
        return sum(len(c) for c in list(self.channels.values()))

    def __repr__(self) -> str:
        return f"<DeferredWrites {self._path!r}: {len(self)} waiting>"

    def flush(self) -> None:
        """Write every channel's waiting items now (waiting the busy timeout); raises on failure."""
        for channel in list(self.channels.values()):
            channel.flush(None)

    def close(self) -> None:
        """Write every channel and take no more items (``CyllamaDB.close()``); never raises."""
        for channel in list(self.channels.values()):
            channel.close()
        if self._finalizer is not None:
            self._finalizer.detach()


def _flush_on_exit(deferred: DeferredWrites) -> None:
    """weakref.finalize callback: the database was collected, or the interpreter exits."""
    for channel in list(deferred.channels.values()):
        if channel.closed:
            continue
        try:
            channel.flush(None, lock_timeout=channel.pool.busy_timeout)
        except Exception as exc:
            channel.logger.warning(
                "could not write %d %s to %s: %s", len(channel), channel.what, deferred.path, exc
            )


class _Writer:
    """The one background thread that writes every database's waiting channels.

    It stops for good when the interpreter starts shutting down (the main
    thread has finished, or :meth:`stop` ran at exit): from then on the
    exit flush writes the items.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: weakref.WeakSet[Channel] = weakref.WeakSet()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.busy = False  # writing: stop() waits for the end of it
        self.stop_registered = False

    def wake(self, channel: Channel) -> None:
        """``channel`` got its first waiting item, or a full batch: (re)consider it."""
        with self.cond:
            if not self._quit():
                self.pending.add(channel)
                if self.thread is not None and self.thread.is_alive():
                    self.cond.notify()
                    return
                try:
                    thread = threading.Thread(target=self._run, name="cyllama-db-writer", daemon=True)
                    thread.start()
                except RuntimeError:  # "can't create new thread at interpreter shutdown"
                    self.pending.discard(channel)
                else:
                    self.thread = thread
                    if not self.stop_registered:
                        # Registered after the databases' exit flush (atexit
                        # runs last-in first-out), so it runs before it.
                        atexit.register(self.stop)
                        self.stop_registered = True
                    return
        # No thread (the interpreter is shutting down, or the main thread has
        # finished while others go on): the caller writes full batches, if
        # the lock is free; the exit flush writes the rest.
        if len(channel) >= FLUSH_ITEMS:
            channel._try_flush(0.0)

    def discard(self, channel: Channel) -> None:
        with self.cond:
            self.pending.discard(channel)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, after the write it is doing (at interpreter exit)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            deadline = time.monotonic() + timeout
            while self.busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)

    def _quit(self) -> bool:
        return self.stopping or not threading.main_thread().is_alive()

    def _run(self) -> None:  # pragma: no cover - exercised through the tests' flush waits
        while True:
            with self.cond:
                while True:
                    if self._quit():
                        return
                    if not self.pending:
                        self.cond.wait()
                        continue
                    due = min(c.next_due() for c in self.pending)
                    delay = due - time.monotonic()
                    if delay <= 0:
                        break
                    self.cond.wait(delay)
                now = time.monotonic()
                channels = [c for c in self.pending if c.next_due() <= now]
                self.busy = True
            try:
                for channel in channels:
                    if self._quit():
                        break
                    channel._background_write()
            finally:
                with self.cond:
                    self.busy = False
                    for channel in channels:
                        if not channel.items or channel.closed:
                            self.pending.discard(channel)
                    self.cond.notify_all()
            del channels


_writer = _Writer()
_all: weakref.WeakSet[DeferredWrites] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # The child has no writer thread, and the parent writes its own waiting
    # items: the child must not write them a second time. Locks held by the
    # parent's other threads at fork time would never be released here.
    global _writer
    _writer = _Writer()
    for deferred in list(_all):
        for channel in list(deferred.channels.values()):
            channel.items.clear()
            channel._reset_locks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
