"""PostgreSQL behind the storage seam: a psycopg 3 connection pool shared by several machines.

This module is imported only when a ``postgresql://`` URL is used (it
imports psycopg at its top; ``import cyllama_db`` never loads it). Stores
see :class:`PostgresConnection`, which behaves like the ``sqlite3``
connection they were written for:

- ``execute(sql, params)`` / ``executemany`` take ``?`` placeholders, turned
  into psycopg's ``%s`` outside string literals, quoted identifiers,
  comments and dollar-quoted bodies (a literal ``%`` is escaped);
- the cursor's ``fetchone()`` / ``fetchall()`` / iteration / ``rowcount``
  work as in sqlite3 (``fetchone()`` of a statement without rows is None);
- ``True``/``False`` parameters are sent as 1/0 (SQLite has no booleans, and
  the schemas store flags in integer columns); ``numeric`` results (``sum``
  and ``avg`` of integers) come back as ``int`` when whole, else ``float``;
- errors are raised as the library's (:meth:`PostgresBackend.error`), never
  as psycopg's.

Transactions mirror :class:`~cyllama_db.db.pool.ConnectionPool`: a thread
takes a connection from the pool for its outermost :meth:`~PostgresBackend.read`
or :meth:`~PostgresBackend.transaction` and gives it back at the end; nested
calls use the same connection, and a nested transaction joins the outer one.
Outside a transaction each statement commits on its own (autocommit). A
statement that fails inside a transaction aborts all of it on PostgreSQL
(not only the statement, as on SQLite): committing such a transaction
raises instead of silently writing nothing.

Lock waits (row locks, :func:`advisory_lock`) end after the busy timeout
(``lock_timeout``) with :class:`~cyllama_db.DatabaseBusyError`, and so does
waiting for a free connection when all ``max_size`` are taken. A
connection that the server closed (a restart) is replaced and the
statement retried once when it ran outside a transaction; inside one, the
transaction fails with an error saying nothing of it was written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from ..errors import (
    ConfigurationError,
    CyllamaDBError,
    DatabaseBusyError,
    DatabaseClosedError,
    DatabaseError,
    DatabaseIntegrityError,
    DiskFullError,
    MissingDependencyError,
    OutOfRangeError,
    ReadOnlyDatabaseError,
)
from .backend import Backend
from .settings import Settings
from .url import DatabaseURL, parse_url, redact_text

try:
    import psycopg
    import psycopg_pool
    from psycopg import pq
    from psycopg.adapt import Loader
    from psycopg.pq import TransactionStatus
except ImportError as exc:  # pragma: no cover - exercised where psycopg is absent
    raise MissingDependencyError(
        f"a postgresql:// database needs psycopg 3 and psycopg_pool ({exc}); install them with "
        "pip install 'cyllama-db[postgres]'"
    ) from exc

__all__ = [
    "FLIGHT_LOCK_PREFIX",
    "MIN_SERVER_VERSION",
    "PostgresBackend",
    "PostgresConnection",
    "advisory_key",
    "advisory_lock",
    "translate_placeholders",
    "try_advisory_lock",
]

logger = logging.getLogger("cyllama_db")

#: The oldest server this backend runs on (``server_version_num``): PostgreSQL 12.
MIN_SERVER_VERSION = 120000

#: The advisory lock of a single flight is named this followed by the request's cache key.
FLIGHT_LOCK_PREFIX = "cyllama-db flight:"

#: Seconds between two tries for a flight lock another machine holds (doubling from the first).
_FLIGHT_POLL = (0.01, 0.25)

#: ``lock_timeout`` inside :meth:`PostgresBackend.no_wait` (0 would mean "wait forever").
NO_WAIT_LOCK_TIMEOUT_MS = 1

# SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_BUSY_STATES = frozenset({"55P03", "40001", "40P01"})  # lock_not_available, serialization, deadlock
_GONE_STATES = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect now
_READ_ONLY = "25006"
_DISK_FULL = "53100"
_OUT_OF_RANGE = frozenset({"22003", "22P03"})

_CONNECTION_HINT = (
    "Check that the server is running and accepts connections there (pg_isready -h HOST -p PORT), "
    "and the URL's host, port and credentials; nothing was written"
)
_LOST_HINT = (
    "The server closed the connection (a restart or a network fault); any transaction in progress "
    "was rolled back by the server and nothing of it was written. Retry once the server is back"
)
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


# -- placeholders ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2048)
def translate_placeholders(sql: str) -> str:
    """``sql`` with sqlite3's ``?`` placeholders as psycopg's ``%s``, and every ``%`` as ``%%``.

    ``?`` inside string literals (``'...'``, ``E'...'``), quoted identifiers,
    ``--`` and ``/* */`` comments and dollar-quoted bodies stays as it is;
    ``%`` is doubled everywhere, because psycopg reads ``%`` as a
    placeholder even inside literals.
    """
    if "?" not in sql and "%" not in sql:
        return sql
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        elif c == "'" or c == '"':
            backslashes = c == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            j = i + 1
            while j < n:
                if backslashes and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # '' or "" inside
                        j += 2
                        continue
                    break
                j += 1
            out.append(sql[i:j + 1].replace("%", "%%"))
            i = j + 1
        elif c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif c == "/" and sql.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif c == "$" and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is None:
                out.append(c)
                i += 1
                continue
            end = sql.find(tag.group(), tag.end())
            j = n if end < 0 else end + len(tag.group())
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parameters(parameters: Any) -> Any:
    """sqlite3's parameters as psycopg takes them: a tuple, booleans as integers."""
    if isinstance(parameters, Mapping):
        return parameters
    values = tuple(parameters)
    if bool in map(type, values):  # the loop runs in C: this is every statement's path
        values = tuple(int(v) if v.__class__ is bool else v for v in values)
    return values


# The statuses of a result that has rows to read (what psycopg's ``description``
# tests, without building its Column objects on every statement).
_ROW_STATUSES = frozenset(
    status for status in pq.ExecStatus if status.name in ("TUPLES_OK", "SINGLE_TUPLE", "TUPLES_CHUNK")
)


def _has_rows(cursor: psycopg.Cursor[Any]) -> bool:
    """Whether ``cursor``'s current result has columns (``cursor.description is not None``), cheaply."""
    res = cursor.pgresult
    return res is not None and (res.nfields > 0 or res.status in _ROW_STATUSES)


class _NumberLoader(Loader):
    """``numeric`` as SQLite would give it: ``int`` when whole, else ``float`` (never ``Decimal``)."""

    def load(self, data: Any) -> int | float:
        text = bytes(data)
        if b"." in text or b"e" in text or b"E" in text or b"N" in text or b"I" in text:
            return float(text)
        return int(text)


# -- advisory locks ----------------------------------------------------------------------------


def advisory_key(name: str) -> int:
    """The signed 64-bit key of the advisory lock called ``name`` (BLAKE2b of its UTF-8)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _needs_transaction(conn: PostgresConnection, what: str) -> None:
    if not conn.in_transaction:
        raise DatabaseError(
            conn.backend.location,
            f"{what}() outside a transaction",
            "An advisory lock lasts until its transaction ends: take it inside backend.transaction()",
        )


def advisory_lock(conn: PostgresConnection, name: str) -> None:
    """Hold the cluster-wide lock ``name`` until ``conn``'s transaction ends.

    Every connection to the database (any machine) that asks for the same
    name waits; after the busy timeout it raises
    :class:`~cyllama_db.DatabaseBusyError` (inside :meth:`PostgresBackend.no_wait`,
    at once). For migrations and single-flight generation.
    """
    _needs_transaction(conn, "advisory_lock")
    conn.execute("SELECT pg_advisory_xact_lock(?)", (advisory_key(name),)).fetchone()


def try_advisory_lock(conn: PostgresConnection, name: str) -> bool:
    """Take the lock ``name`` for ``conn``'s transaction if nobody holds it; never waits."""
    _needs_transaction(conn, "try_advisory_lock")
    row = conn.execute("SELECT pg_try_advisory_xact_lock(?)", (advisory_key(name),)).fetchone()
    return bool(row and row[0])


class _FlightLocks:
    """The session-level advisory locks of :meth:`PostgresBackend.flight`, on one connection of their own.

    A flight's lock must outlive the transactions of the generation it
    guards, so it is a session lock (``pg_try_advisory_lock``, released by
    ``pg_advisory_unlock``), held on a connection outside the pool. One such
    connection serves every flight of the backend (a session holds any
    number of advisory locks): concurrent misses of different requests do
    not take a server connection each. Since several threads share it, a
    lock held by another machine is waited for by trying again (10 ms, then
    doubling up to 250 ms) rather than by a blocking ``pg_advisory_lock``.

    If that connection is lost (a server restart), its locks are gone with
    it: the holders carry on (their answers are stored as usual) and the
    next flight opens a new connection. A forked child never uses its
    parent's connection.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._raw: psycopg.Connection[Any] | None = None
        self._pid = 0
        self._session = 0  # bumped each time a new connection replaces the old one

    def _connection(self) -> psycopg.Connection[Any]:
        """The flights' connection (under ``self._lock``), opened or replaced when needed."""
        raw = self._raw
        if raw is not None and self._pid == os.getpid() and not raw.closed and not raw.broken:
            return raw
        if raw is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                raw.close()
        self._raw = None
        raw = self.backend._connect_direct().raw
        self._raw, self._pid = raw, os.getpid()
        self._session += 1
        return raw

    def _try(self, key: int) -> int:
        """The session number if ``pg_try_advisory_lock(key)`` took the lock, else 0."""
        with self._lock:
            for attempt in (1, 2):
                raw = self._connection()
                try:
                    row = raw.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                except psycopg.Error as exc:
                    if attempt == 2 or not raw.broken:
                        raise self.backend.error(exc) from exc
                    continue  # the server dropped it: once more on a new connection
                return self._session if row and row[0] else 0
        return 0  # pragma: no cover - the loop returns or raises

    def acquire(self, key: int, timeout: float | None) -> int:
        """Take the lock ``key``, waiting at most ``timeout`` seconds: its session number, or 0 (not taken)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _FLIGHT_POLL[0]
        while True:
            session = self._try(key)
            if session:
                return session
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return 0
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, _FLIGHT_POLL[1])

    def release(self, key: int, session: int) -> None:
        """Give the lock ``key`` back (nothing to do if its connection has gone since)."""
        with self._lock:
            raw = self._raw
            if raw is None or session != self._session or self._pid != os.getpid() or raw.closed or raw.broken:
                return  # the session that held it is gone, and its locks with it
            try:
                raw.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except psycopg.Error as exc:
                # The connection failed: closing it ends the session, which releases the lock.
                logger.warning("could not release a single-flight lock on %s: %s", self.backend.location, exc)
                with contextlib.suppress(Exception):
                    raw.close()

    def close(self) -> None:
        with self._lock:
            raw, self._raw = self._raw, None
            if raw is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    raw.close()


# -- the connection a store sees ---------------------------------------------------------------


class PostgresCursor:
    """The result of :meth:`PostgresConnection.execute`, read like a ``sqlite3.Cursor``."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def fetchone(self) -> Any:
        """The next row (a tuple), or None when there is none (or the statement returns no rows)."""
        cursor = self._cursor
        if not _has_rows(cursor):
            return None
        return cursor.fetchone()

    def fetchall(self) -> list[Any]:
        """The remaining rows ([] for a statement that returns none)."""
        if not _has_rows(self._cursor):
            return []
        return self._cursor.fetchall()

    def fetchmany(self, size: int = 1) -> list[Any]:
        """Up to ``size`` more rows."""
        if not _has_rows(self._cursor):
            return []
        return self._cursor.fetchmany(size)

    def __iter__(self) -> Iterator[Any]:
        if not _has_rows(self._cursor):
            return iter(())
        return iter(self._cursor)

    @property
    def rowcount(self) -> int:
        """Rows the statement changed (or returned)."""
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        """The result's columns (``name`` first in each, as in sqlite3), or None."""
        return self._cursor.description

    def close(self) -> None:
        """Like sqlite3's: release the rows (they were fetched with the statement)."""
        self._cursor.close()

    @property
    def lastrowid(self) -> Any:
        raise DatabaseError(
            "postgresql",
            "cursor.lastrowid does not exist on PostgreSQL",
            "Write INSERT ... RETURNING id and read it with fetchone()",
        )


class PostgresConnection:
    """One pooled psycopg connection, spoken to like a ``sqlite3.Connection`` (module notes)."""

    __slots__ = ("_dirty_timeout", "backend", "from_pool", "raw")

    def __init__(self, backend: PostgresBackend, raw: psycopg.Connection[Any], from_pool: bool) -> None:
        self.backend = backend
        self.raw = raw
        self.from_pool = from_pool
        self._dirty_timeout = False

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (or failed and not yet rolled back) on this connection."""
        return self.raw.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = (), /) -> PostgresCursor:
        """Run one statement (``?`` placeholders); returns its cursor.

        Without parameters the text goes to the server as it is (several
        statements separated by ``;`` are allowed then, as in migrations).
        """
        try:
            return PostgresCursor(self._execute(sql, parameters))
        except psycopg.Error as exc:
            if not self._retryable():
                raise self.backend.error(exc) from exc
            self._reconnect(exc)
        try:
            return PostgresCursor(self._execute(sql, parameters))
        except psycopg.Error as exc:
            raise self.backend.error(exc) from exc

    def _execute(self, sql: str, parameters: Any) -> psycopg.Cursor[Any]:
        if parameters:
            return self.raw.execute(translate_placeholders(sql), _parameters(parameters))
        return self.raw.execute(sql)

    def executemany(self, sql: str, parameters: Any, /) -> PostgresCursor:
        """Run one statement for each parameter sequence; ``rowcount`` is the total changed."""
        rows = [_parameters(p) for p in parameters]
        if not rows:
            return PostgresCursor(self.raw.cursor())
        query = translate_placeholders(sql)

        def run() -> PostgresCursor:
            cursor = self.raw.cursor()
            cursor.executemany(query, rows)
            return PostgresCursor(cursor)

        try:
            return run()
        except psycopg.Error as exc:
            if not self._retryable():
                raise self.backend.error(exc) from exc
            self._reconnect(exc)
        try:
            return run()
        except psycopg.Error as exc:
            raise self.backend.error(exc) from exc

    def executescript(self, script: str) -> None:
        """Run several ``;``-separated statements (no parameters), as in a migration."""
        self.execute(script)

    def _retryable(self) -> bool:
        """After an error: whether the connection is gone outside a transaction (safe to redo once)."""
        if not self.raw.broken:
            return False
        return not self.backend._in_transaction(self)

    def _reconnect(self, cause: BaseException) -> None:
        """Swap the dead connection for a new one (or raise the error naming the server)."""
        old, old_from_pool = self.raw, self.from_pool
        new = self.backend._connect_direct().raw
        self.raw, self.from_pool = new, False
        self._dirty_timeout = False
        if self.backend._local_state().no_wait:
            self.set_lock_timeout(NO_WAIT_LOCK_TIMEOUT_MS)
        self.backend._discard(old, old_from_pool)
        logger.warning(
            "the connection to %s was lost (%s); reconnected and retried the statement once",
            self.backend.location, redact_text(str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__),
        )

    def set_lock_timeout(self, milliseconds: int) -> None:
        """How long this connection's lock waits last (0: for ever); restored when it goes back."""
        self.raw.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(milliseconds)}ms",))
        self._dirty_timeout = True

    def commit(self) -> None:
        """Like sqlite3's: commit the open transaction (prefer :meth:`PostgresBackend.transaction`)."""
        if self.in_transaction:
            self.backend._finish(self, commit=True)

    def rollback(self) -> None:
        """Like sqlite3's: roll the open transaction back."""
        if self.in_transaction:
            self.backend._finish(self, commit=False)


class _State(threading.local):
    """This thread's connection and how deep inside read()/transaction() it is."""

    conn: PostgresConnection | None = None
    depth = 0
    tx = 0
    no_wait = False


# -- the backend -------------------------------------------------------------------------------


class PostgresBackend(Backend):
    """The PostgreSQL engine: one database on a server, shared by every machine that names it.

    Build it with :meth:`open` (or the constructor, which does the same).
    ``url``: a ``postgresql://`` URL (or a parsed :class:`~cyllama_db.db.url.DatabaseURL`);
    ``busy_timeout``: seconds a lock wait or a wait for a free connection may
    take; ``max_size``: connections in the pool (per process);
    ``connect_timeout``: seconds to reach the server; ``tables``: the tables
    :meth:`size_bytes` and :meth:`vacuum` look at (default: every table in the
    connection's schema).
    """

    name: ClassVar[str] = "postgresql"
    #: The wrapper (:class:`PostgresConnection`) takes sqlite3's ``?`` and translates it itself.
    placeholder: ClassVar[str] = "?"

    def __init__(
        self,
        url: str | DatabaseURL,
        *,
        busy_timeout: float = 30.0,
        readonly: bool = False,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        tables: Sequence[str] | None = None,
    ) -> None:
        parsed = parse_url(url) if isinstance(url, str) else url
        if parsed.engine != "postgresql" or parsed.conninfo is None:
            raise ConfigurationError(
                f"PostgresBackend needs a postgresql:// URL, got {parsed.redacted!r}"
            )
        if max_size < 1 or min_size < 0 or min_size > max_size:
            raise ConfigurationError(
                f"pool sizes min_size={min_size}, max_size={max_size}: need 0 <= min_size <= max_size, max_size >= 1"
            )
        self.url = parsed
        self.busy_timeout = float(busy_timeout)
        self.readonly = readonly
        self.connect_timeout = float(connect_timeout)
        self.tables: tuple[str, ...] | None = tuple(tables) if tables is not None else None
        self.fallback_reason = None
        self.server_version = 0
        self._local = _State()
        self._closed = False
        self._flights = _FlightLocks(self)
        self._secrets = [parsed.password] if parsed.password else []
        options = {key for key, _ in parsed.options}
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in options:
            self._kwargs["connect_timeout"] = max(1, round(self.connect_timeout))
        if "application_name" not in options:
            self._kwargs["application_name"] = "cyllama-db"
        probe = self._connect_direct()  # a clear error naming the server, at once
        try:
            row = probe.raw.execute("SELECT current_setting('server_version_num')::int").fetchone()
            self.server_version = int(row[0]) if row else 0
        finally:
            probe.raw.close()
        if self.server_version < MIN_SERVER_VERSION:
            raise DatabaseError(
                self.location,
                f"the server runs PostgreSQL {self.server_version // 10000}",
                "cyllama-db needs PostgreSQL 12 or newer",
            )
        self.pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            parsed.conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=self._kwargs,
            configure=self._configure,
            open=False,
            timeout=self.busy_timeout,
            name=f"cyllama-db {parsed.server}",
        )
        try:
            self.pool.open(wait=min_size > 0, timeout=max(self.connect_timeout, 1.0))
        except psycopg_pool.PoolTimeout as exc:
            self.pool.close(timeout=0)
            raise self._unreachable(f"the pool could not open {min_size} connection(s): {exc}") from None

    @classmethod
    def open(cls, url: str | DatabaseURL | Settings, **options: Any) -> PostgresBackend:
        """Connect to the database ``url`` names (keyword options as for the class).

        Given a :class:`~cyllama_db.db.settings.Settings` (what
        :class:`~cyllama_db.CyllamaDB` does), connects to its ``url`` with
        its busy timeout and read-only flag and brings the schema up to date
        (:func:`~cyllama_db.db.migrations.migrate_backend`: one runner,
        serialised across machines by an advisory lock; a newer schema is
        refused with :class:`~cyllama_db.SchemaVersionError`, untouched).
        Given a URL, only connects: migrations are then the caller's.

        Raises a :class:`~cyllama_db.DatabaseError` naming the host and port
        (never the password) when the server cannot be reached; there is no
        fallback to memory.
        """
        if not isinstance(url, Settings):
            return cls(url, **options)
        settings = url
        if settings.url is None:
            raise ConfigurationError(
                f"PostgresBackend.open() needs settings with a postgresql:// URL, got the path {settings.path!r}"
            )
        backend = cls(settings.url, busy_timeout=settings.busy_timeout, readonly=settings.readonly, **options)
        try:
            if settings.readonly:
                backend._check_readonly_schema()
            else:
                from . import migrations as _migrations

                _migrations.migrate_backend(backend)
        except BaseException:
            backend.close()
            raise
        return backend

    def _check_readonly_schema(self) -> None:
        """Read-only: refuse a newer schema, or one that needs migrations this connection cannot run."""
        from . import migrations as _migrations

        with self.read() as conn:
            _migrations.check_not_newer(conn, self.location)
            if _migrations.pending_versions(conn):
                raise ReadOnlyDatabaseError(
                    f"database {self.location!r} has schema version {_migrations.schema_version(conn)} "
                    f"and this cyllama-db needs {_migrations.latest_version()}; readonly=True cannot "
                    "upgrade it. Open it once without readonly=True to upgrade it."
                )

    # -- what the stores use of a connection pool ----------------------------------------------

    #: Never an in-memory database (the stores' fast paths ask).
    memory: ClassVar[bool] = False

    def fetchone(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        """One row of a read on this thread's connection (the stores' hot read path).

        What ``with self.read() as conn: conn.execute(...).fetchone()`` does,
        without the context manager (a cache hit's path).
        """
        state = self._local
        if state.conn is not None:  # inside read()/transaction(): its connection
            return state.conn.execute(sql, parameters).fetchone()
        conn = self._acquire()
        state.conn, state.depth = conn, 1
        try:
            return conn.execute(sql, parameters).fetchone()
        finally:
            state.conn, state.depth = None, 0
            self._release(conn)

    def execute_write(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """One statement as its own transaction (autocommit); returns the rows it changed.

        Inside a :meth:`transaction` of this thread it joins that transaction.
        """
        self.check_writable()
        state = self._local
        if state.conn is not None:
            return int(state.conn.execute(sql, parameters).rowcount)
        conn = self._acquire()
        state.conn, state.depth = conn, 1
        try:
            return int(conn.execute(sql, parameters).rowcount)
        finally:
            state.conn, state.depth = None, 0
            self._release(conn)

    # -- connections ------------------------------------------------------------------------

    def _configure(self, raw: psycopg.Connection[Any]) -> None:
        """Settings every new connection gets (the pool's ``configure``)."""
        raw.adapters.register_loader("numeric", _NumberLoader)
        raw.execute(
            "SELECT set_config('lock_timeout', %s, false), set_config('TimeZone', 'UTC', false)",
            (f"{self._busy_ms()}ms",),
        )
        if self.readonly:
            raw.execute("SET default_transaction_read_only = on")

    def _busy_ms(self) -> int:
        return max(1, int(self.busy_timeout * 1000))

    def _connect_direct(self) -> PostgresConnection:
        """A new connection outside the pool (at open, and to replace a dead one)."""
        try:
            raw = psycopg.connect(self.url.conninfo or "", **self._kwargs)
        except psycopg.Error as exc:
            raise self.error(exc) from exc
        try:
            self._configure(raw)
        except psycopg.Error as exc:
            raw.close()
            raise self.error(exc) from exc
        return PostgresConnection(self, raw, from_pool=False)

    def _discard(self, raw: psycopg.Connection[Any], from_pool: bool) -> None:
        if from_pool:
            with contextlib.suppress(Exception):
                self.pool.putconn(raw)  # a broken one is closed and replaced by the pool
        else:
            with contextlib.suppress(Exception):
                raw.close()

    def _local_state(self) -> _State:
        return self._local

    def _acquire(self) -> PostgresConnection:
        if self._closed:
            raise DatabaseClosedError(self.location)
        try:
            raw = self.pool.getconn(timeout=self.busy_timeout)
        except psycopg_pool.PoolClosed:
            raise DatabaseClosedError(self.location) from None
        except psycopg_pool.PoolTimeout as exc:
            # All connections taken for the whole busy timeout, or none can be made:
            # a direct attempt tells which (and names the server if it is down).
            probe = self._connect_direct()
            probe.raw.close()
            raise DatabaseBusyError(self.location, self.busy_timeout) from exc
        conn = PostgresConnection(self, raw, from_pool=True)
        if self._local.no_wait:
            try:
                conn.set_lock_timeout(NO_WAIT_LOCK_TIMEOUT_MS)
            except psycopg.Error as exc:
                if not raw.broken:
                    self._release(conn)
                    raise self.error(exc) from exc
                # A dead connection: the first statement reconnects (or names the server).
        return conn

    def _release(self, conn: PostgresConnection) -> None:
        raw = conn.raw
        if conn._dirty_timeout and not raw.broken:
            try:
                if raw.info.transaction_status != TransactionStatus.IDLE:
                    raw.execute("ROLLBACK")
                raw.execute("SELECT set_config('lock_timeout', %s, false)", (f"{self._busy_ms()}ms",))
            except psycopg.Error:
                with contextlib.suppress(Exception):
                    raw.close()  # the pool replaces it rather than hand out the wrong timeout
        self._discard(raw, conn.from_pool)

    def _in_transaction(self, conn: PostgresConnection) -> bool:
        state = self._local
        return state.conn is conn and state.tx > 0

    # -- the seam ---------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[PostgresConnection]:
        """This thread's connection (autocommit: each statement sees committed data).

        Inside a :meth:`transaction` of this thread it is that transaction's
        connection, so reads see its uncommitted writes.
        """
        state = self._local
        if state.conn is not None:
            state.depth += 1
            try:
                yield state.conn
            finally:
                state.depth -= 1
            return
        conn = self._acquire()
        state.conn, state.depth = conn, 1
        try:
            yield conn
        finally:
            state.conn, state.depth = None, 0
            self._release(conn)

    @contextmanager
    def transaction(self) -> Iterator[PostgresConnection]:
        """A write transaction, committed on exit, rolled back on error; nested calls join the outer one."""
        self.check_writable()
        state = self._local
        if state.tx:
            state.tx += 1
            state.depth += 1
            try:
                yield state.conn  # type: ignore[misc]  # set while tx > 0
            finally:
                state.tx -= 1
                state.depth -= 1
            return
        owned = state.conn is None
        conn = self._acquire() if owned else state.conn
        assert conn is not None
        state.conn = conn
        state.depth += 1
        try:
            conn.execute("BEGIN")  # outside a transaction: a dead connection is replaced first
            state.tx = 1
            try:
                yield conn
            except BaseException:
                state.tx = 0
                self._finish(conn, commit=False)
                raise
            state.tx = 0
            self._finish(conn, commit=True)
        finally:
            state.tx = 0
            state.depth -= 1
            if owned:
                state.conn, state.depth = None, 0
                self._release(conn)

    def _finish(self, conn: PostgresConnection, commit: bool) -> None:
        raw = conn.raw
        if raw.broken:
            if commit:
                raise self._lost("the connection was lost before the commit")
            return
        status = raw.info.transaction_status
        try:
            if commit and status == TransactionStatus.INERROR:
                raw.execute("ROLLBACK")
                raise DatabaseError(
                    self.location,
                    "a statement failed inside the transaction and its error was caught",
                    "PostgreSQL aborts the whole transaction on an error, so it was rolled back "
                    "and nothing of it was written; let the error end the transaction, or retry it",
                )
            if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                raw.execute("COMMIT" if commit else "ROLLBACK")
        except psycopg.Error as exc:
            if not commit:
                return  # rolling back a dead connection: the server has already dropped it
            raise self.error(exc) from exc

    def check_writable(self) -> None:
        """Raise :class:`~cyllama_db.ReadOnlyDatabaseError` if opened read-only."""
        if self._closed:
            raise DatabaseClosedError(self.location)
        if self.readonly:
            raise ReadOnlyDatabaseError(
                f"database {self.location!r} was opened read-only (readonly=True); nothing was written. "
                "Open it without readonly=True to change it."
            )

    def waits(self) -> bool:
        """False inside :meth:`no_wait` on this thread (as :meth:`ConnectionPool.waits`)."""
        return not self._local.no_wait

    @contextmanager
    def no_wait(self) -> Iterator[None]:
        """Inside the block, this thread's lock waits fail at once with ``DatabaseBusyError``."""
        state = self._local
        if state.no_wait:
            yield
            return
        state.no_wait = True
        conn = state.conn
        if conn is not None:
            try:
                conn.set_lock_timeout(NO_WAIT_LOCK_TIMEOUT_MS)
            except psycopg.Error as exc:
                state.no_wait = False
                raise self.error(exc) from exc
        try:
            yield
        finally:
            state.no_wait = False
            current = state.conn
            if current is not None and not current.raw.broken:
                with contextlib.suppress(psycopg.Error):  # an aborted transaction: reset at release
                    current.set_lock_timeout(self._busy_ms())


    @contextmanager
    def lock_wait(self, seconds: float) -> Iterator[None]:
        """Inside the block, this thread's lock waits last at most ``seconds`` (then ``DatabaseBusyError``).

        For the write-behind's background flush, which waits only briefly
        for another connection's lock (SQLite: ``PRAGMA busy_timeout``).
        """
        with self.read() as conn:
            conn.set_lock_timeout(max(1, int(seconds * 1000)))
            try:
                yield
            finally:
                if not conn.raw.broken:
                    with contextlib.suppress(psycopg.Error):  # an aborted transaction: reset at release
                        conn.set_lock_timeout(
                            NO_WAIT_LOCK_TIMEOUT_MS if self._local.no_wait else self._busy_ms()
                        )

    def close(self) -> None:
        """Close the pool and every connection in it; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._flights.close()
        with contextlib.suppress(Exception):
            self.pool.close(timeout=5.0)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self.url.redacted

    @property
    def is_memory(self) -> bool:
        return False

    # -- SQL dialect ----------------------------------------------------------------------------

    def now_sql(self) -> str:
        return "(extract(epoch from clock_timestamp())::double precision)"

    def least(self, *expressions: str) -> str:
        return f"LEAST({', '.join(expressions)})"

    def greatest(self, *expressions: str) -> str:
        return f"GREATEST({', '.join(expressions)})"

    def trunc_int(self, expression: str) -> str:
        return f"trunc({expression})::bigint"

    def next_id_sql(self, table: str) -> str:
        return f"nextval(pg_get_serial_sequence('{table}', 'id'))"

    # -- schema introspection ---------------------------------------------------------------------

    def columns(self, conn: Any, table: str) -> list[str]:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def has_table(self, conn: Any, table: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchone()
        return row is not None

    def _table_names(self, conn: PostgresConnection) -> list[str]:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
            "AND c.relkind IN ('r', 'p', 'm') ORDER BY c.relname"
        ).fetchall()
        names = [str(row[0]) for row in rows]
        return names if self.tables is None else [n for n in names if n in self.tables]

    def table_names(self, conn: Any) -> list[str]:
        return self._table_names(conn)

    def has_triggers(self, conn: Any, table: str) -> bool:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ? AND NOT t.tgisinternal)",
            (table,),
        ).fetchone()
        return bool(row[0])

    # -- moving rows between engines ----------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[PostgresConnection]:
        """A ``REPEATABLE READ READ ONLY`` transaction: every read inside sees the state at its first one."""
        with self.read() as conn:
            if self._in_transaction(conn) or conn.in_transaction:
                yield conn  # inside a transaction of this thread: its view is the snapshot
                return
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                self._finish(conn, commit=False)

    def stream(
        self, conn: Any, sql: str, parameters: Sequence[Any] = (), size: int = 5000
    ) -> Iterator[list[Any]]:
        """A server-side cursor inside a transaction (:meth:`snapshot`), else the base class's fetches."""
        if not conn.in_transaction:
            yield from super().stream(conn, sql, parameters, size)
            return
        try:
            with conn.raw.cursor(name=f"cyllama_stream_{threading.get_ident()}") as cursor:
                cursor.itersize = size
                cursor.execute(translate_placeholders(sql), _parameters(parameters))
                while True:
                    rows = cursor.fetchmany(size)
                    if not rows:
                        return
                    yield rows
        except psycopg.Error as exc:
            raise self.error(exc) from exc

    def insert_rows(self, conn: Any, table: str, columns: Sequence[str], rows: Any) -> None:
        """``COPY ... FROM STDIN``: one round trip for all the rows."""
        try:
            with conn.raw.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(_parameters(row))
        except psycopg.Error as exc:
            raise self.error(exc) from exc

    # -- sizes and maintenance --------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes our tables take with their indexes and TOAST (``pg_total_relation_size``)."""
        with self.read() as conn:
            names = self._table_names(conn)
            if not names:
                return 0
            row = conn.execute(
                "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(?)",
                (names,),
            ).fetchone()
        return int(row[0]) if row else 0

    def storage_stats(self) -> dict[str, Any]:
        with self.read() as conn:
            version = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
            database_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            dead = conn.execute(
                "SELECT COALESCE(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE schemaname = current_schema()"
            ).fetchone()[0]
        pool = self.pool.get_stats()
        tables_bytes = self.size_bytes()
        return {
            # What get_db_stats() reports as the file's size: our tables' (no file of ours).
            "file_size_mb": round(tables_bytes / 1_048_576, 4),
            "file_bytes": tables_bytes,
            "server": self.url.server,
            "server_version": str(version),
            "database_size_mb": round(int(database_bytes) / 1_048_576, 4),
            "tables_size_mb": round(tables_bytes / 1_048_576, 4),
            "dead_rows": int(dead),
            "pool_size": int(pool.get("pool_size", 0)),
            "pool_available": int(pool.get("pool_available", 0)),
            "pool_max": self.pool.max_size,
        }

    def vacuum(self) -> None:
        """``VACUUM (FULL, ANALYZE)`` of our tables: gives their free space back to the file system.

        Takes each table's exclusive lock while it is rewritten, as SQLite's
        VACUUM locks the file. Not inside a transaction.
        """
        if self._local.tx:
            raise DatabaseError(
                self.location, "vacuum() inside a transaction", "VACUUM cannot run in a transaction block"
            )
        with self.read() as conn:
            names = self._table_names(conn)
            if names:
                conn.execute("VACUUM (FULL, ANALYZE) " + ", ".join(_quote_identifier(n) for n in names))

    def advisory_lock(self, conn: PostgresConnection, name: str) -> None:
        """:func:`advisory_lock`: hold the lock ``name`` until ``conn``'s transaction ends."""
        advisory_lock(conn, name)

    def try_advisory_lock(self, conn: PostgresConnection, name: str) -> bool:
        """:func:`try_advisory_lock`: take the lock ``name`` if free; never waits."""
        return try_advisory_lock(conn, name)

    @contextmanager
    def flight(self, key: str, timeout: float | None) -> Iterator[bool]:
        """Hold the cluster-wide lock of the identical request ``key`` (a cache key) for the block.

        Every machine missing the same request takes the same lock: one
        generates while the others wait, then find its answer when they look
        the cache up again inside the block (the caller's part). The lock is
        a session-level advisory lock on a connection outside the pool (see
        :class:`_FlightLocks`), so it spans the generation and the
        transactions that store it, and is released when the block ends,
        however it ends. A wait longer than ``timeout`` seconds (None: for
        ever) gives up: the block runs without the lock (value False), as a
        caller in one process does after waiting that long for an identical
        request. A server that cannot be reached for the lock does the same,
        with a warning: a lost lock costs a duplicate generation, never the
        call.
        """
        if self._closed:
            raise DatabaseClosedError(self.location)
        lock = advisory_key(FLIGHT_LOCK_PREFIX + key)
        try:
            session = self._flights.acquire(lock, timeout)
        except CyllamaDBError as exc:
            logger.warning("single flight across machines is off for this call (%s); generating without it", exc)
            session = 0
        else:
            if not session:
                logger.info(
                    "gave up waiting %ss for another machine's identical request; running it separately", timeout
                )
        try:
            yield bool(session)
        finally:
            if session:
                self._flights.release(lock, session)

    # -- errors ---------------------------------------------------------------------------------

    def _text(self, exc: BaseException) -> str:
        text = str(exc).strip() or type(exc).__name__
        return redact_text(" ".join(text.split()), secrets=self._secrets)

    def _unreachable(self, reason: str) -> DatabaseError:
        return DatabaseError(
            self.location,
            f"cannot reach the PostgreSQL server at {self.url.server} ({redact_text(reason, secrets=self._secrets)})",
            _CONNECTION_HINT.replace("HOST", self.url.host or "localhost").replace("PORT", str(self.url.port or 5432)),
        )

    def _lost(self, reason: str) -> DatabaseError:
        return DatabaseError(
            self.location,
            f"lost the connection to the PostgreSQL server at {self.url.server} ({redact_text(reason, secrets=self._secrets)})",
            _LOST_HINT,
        )

    def error(self, exc: BaseException) -> Exception:
        """The library's error for psycopg's ``exc`` (already-mapped errors are returned as they are).

        Lock timeout, serialization failure, deadlock, a pool with no free
        connection -> :class:`~cyllama_db.DatabaseBusyError`; a constraint ->
        :class:`~cyllama_db.DatabaseIntegrityError`; no server, or a
        connection it closed -> :class:`~cyllama_db.DatabaseError` naming
        host and port; a read-only transaction ->
        :class:`~cyllama_db.ReadOnlyDatabaseError`; a full disk ->
        :class:`~cyllama_db.DiskFullError`; a number out of range ->
        :class:`~cyllama_db.OutOfRangeError`; the rest ->
        :class:`~cyllama_db.DatabaseError`. No message holds the password.
        """
        if isinstance(exc, CyllamaDBError):
            return exc
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return DatabaseBusyError(self.location, self.busy_timeout)
        if isinstance(exc, psycopg_pool.PoolClosed):
            return DatabaseClosedError(self.location)
        text = self._text(exc)
        if isinstance(exc, OverflowError):
            return OutOfRangeError(f"a number is out of range ({text}): PostgreSQL columns hold 64-bit integers")
        if not isinstance(exc, psycopg.Error):
            return DatabaseError(self.location, f"{type(exc).__name__}: {text}", "Nothing was written.")
        state = exc.sqlstate or ""
        if state in _BUSY_STATES:
            return DatabaseBusyError(self.location, self.busy_timeout)
        if state.startswith("23") or isinstance(exc, psycopg.IntegrityError):
            return DatabaseIntegrityError(
                self.location, text, "A row broke a constraint of the schema; nothing was written."
            )
        if state == _READ_ONLY:
            return ReadOnlyDatabaseError(
                f"cannot write to the database {self.location!r}: {text}. It was opened read-only "
                "(or the server is a read-only standby); nothing was written."
            )
        if state == _DISK_FULL:
            return DiskFullError(
                self.location, text, "The server's disk is full; free space there and retry. Nothing was written."
            )
        if state in _OUT_OF_RANGE:
            return OutOfRangeError(f"a number is out of range ({text}): pass a smaller value")
        connection_level = state.startswith("08") or state in _GONE_STATES or (
            not state and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        )
        if connection_level:
            if isinstance(exc, psycopg.OperationalError) and "connection failed" in text.lower():
                return self._unreachable(text)
            if state == "08001" or state == "57P03":
                return self._unreachable(text)
            return self._lost(text)
        if state == "28P01" or state == "28000":
            return self._unreachable(text)  # authentication: the server answered, the credentials did not
        if isinstance(exc, psycopg.ProgrammingError) and "invalid" in text.lower() and "option" in text.lower():
            return ConfigurationError(f"database URL {self.location!r}: {text}")
        return DatabaseError(self.location, text, "The operation was rolled back; nothing was written.")

    # -- full-text search ---------------------------------------------------------------------------

    def search_available(self) -> bool:
        """False: the cache's full-text search is built on SQLite FTS5 and not yet on ``tsvector``.

        ``db.cache.search()`` raises :class:`~cyllama_db.errors.SearchUnavailableError` here;
        ``db.logs.query(search=...)`` searches with ``tsvector`` (see ``stores/logs.py``).
        """
        return False


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
