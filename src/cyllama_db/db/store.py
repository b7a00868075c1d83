"""What every store shares: the :class:`Store` base class, :func:`db_op`, the error mapping.

Each store module (``stores/config.py``, ``stores/cache.py``, ...) defines
one :class:`Store` subclass; :class:`~cyllama_db.CyllamaDB` creates one of
each (``db.config``, ``db.cache``, ...) and keeps them in ``db.stores``. A
store decorates each public method with :func:`db_op`, which turns it into
a no-op returning the empty answer when the database is disabled, raises a
clear error after ``close()``, and maps the engine's errors to the
library's; :func:`delegate` marks the facade's flat methods.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from ..errors import (
    DatabaseBusyError,
    DatabaseClosedError,
    DatabaseError,
    DatabaseFileError,
    DatabaseIntegrityError,
    DiskFullError,
    OutOfRangeError,
    ReadOnlyDatabaseError,
)

if TYPE_CHECKING:
    from .backend import Backend
    from .facade import CyllamaDB
    from .policy import TablePolicy
    from .pool import ConnectionPool
    from .settings import Settings

__all__ = [
    "RECLAIM_MAX_PAGES",
    "RECLAIM_MIN_PAGES",
    "Closing",
    "Store",
    "db_op",
    "delegate",
    "library_error",
    "reclaim_free_pages",
]

logger = logging.getLogger("cyllama_db")

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound="Closing")


class Closing:
    """``with obj:`` closes ``obj`` on the way out (for classes with a ``close()``)."""

    def close(self) -> None:  # pragma: no cover - every user overrides it
        raise NotImplementedError

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

#: Free pages are given back to the file system (with incremental auto-vacuum)
#: only when there are at least this many and they are an eighth of the file:
#: fewer are simply reused by the next writes (e.g. after a cache eviction).
RECLAIM_MIN_PAGES = 256
#: At most this many pages (8 MiB at 4 KiB pages; ~20 ms measured) are given
#: back per call, which keeps the write transaction that does it short; the
#: next delete goes on.
RECLAIM_MAX_PAGES = 2048


def reclaim_free_pages(conn: sqlite3.Connection) -> int:
    """Give free pages back to the file system (``PRAGMA incremental_vacuum``); returns how many.

    Inside the caller's write transaction, after a delete. Does nothing
    unless the file uses incremental auto-vacuum and at least
    :data:`RECLAIM_MIN_PAGES` pages, an eighth of the file, are free; then
    frees up to :data:`RECLAIM_MAX_PAGES` of them.
    """
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if free < RECLAIM_MIN_PAGES:
        return 0
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2 = INCREMENTAL
        return 0
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    if free * 8 < pages:
        return 0
    # Python's sqlite3 runs a statement without result columns for one step
    # only, and each step of incremental_vacuum frees one page; executescript
    # would run it to the end but commits the caller's transaction first.
    for _ in range(min(free, RECLAIM_MAX_PAGES)):
        conn.execute("PRAGMA incremental_vacuum(1)")
    return free - int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def db_op(empty: Callable[[], Any] | None = None) -> Callable[[F], F]:
    """Decorate a public store method: disabled -> ``empty()``; closed -> error."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return empty() if empty is not None else None
            if self._pool is None or self._pool.closed:
                raise DatabaseClosedError(self.path)
            try:
                return fn(self, *args, **kwargs)
            except (sqlite3.Error, OverflowError) as exc:
                # The error contract: nothing of SQLite's own escapes raw.
                raise library_error(exc, self.path, self.settings.busy_timeout) from exc

        return cast(F, wrapper)

    return decorate


_FILE_GONE_HINT = (
    "The database file was removed, replaced or damaged while this process had it open; "
    "restore it from a backup (cyllama-db export) or open the path again to start a new one."
)


def library_error(exc: BaseException, path: str, busy_timeout: float = 0.0) -> Exception:
    """The library's error for a raw ``sqlite3.Error`` or ``OverflowError`` raised under ``path``.

    The mapping (docs/reliability.md): full disk -> :class:`DiskFullError`;
    lock held too long -> :class:`DatabaseBusyError`; read-only file ->
    :class:`ReadOnlyDatabaseError`; file removed, corrupt or unreadable ->
    :class:`DatabaseFileError`; constraint -> :class:`DatabaseIntegrityError`;
    a number too large for SQLite -> :class:`OutOfRangeError`; the rest ->
    :class:`DatabaseError`.
    """
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OverflowError):
        return OutOfRangeError(
            f"a number is out of range ({text}): SQLite holds 64-bit integers and finite floats; "
            "pass a smaller value"
        )
    lowered = text.lower()
    if "database or disk is full" in lowered or "disk is full" in lowered:
        return DiskFullError(
            path, text, "Free some disk space (or raise the quota) and retry; nothing was written."
        )
    if "locked" in lowered or "database is busy" in lowered:
        return DatabaseBusyError(path, busy_timeout)
    if "readonly" in lowered or "read-only" in lowered:
        return ReadOnlyDatabaseError(
            f"cannot write to the database {path!r}: {text}. Check the file's permissions "
            "or point CYLLAMA_DB_PATH at a writable location."
        )
    if isinstance(exc, sqlite3.IntegrityError):
        return DatabaseIntegrityError(
            path, text, "A row broke a constraint of the schema; nothing was written."
        )
    if any(
        word in lowered
        for word in ("no such table", "no such column", "disk i/o error", "malformed",
                     "not a database", "unable to open", "file is not a database")
    ):
        return DatabaseFileError(path, text, _FILE_GONE_HINT)
    return DatabaseError(path, text, "The operation was rolled back; nothing was written.")


class Store:
    """A store: one object owning its tables, reached as an attribute of the database.

    ``db.config``, ``db.cache``, ``db.stats``... are stores. Each owns its
    tables (the migrations that create them), the SQL that reads and writes
    them, its part of :meth:`~cyllama_db.CyllamaDB.get_db_stats` and its
    import/export merge policy. Other modules use a store's public methods
    only. The database opens, flushes and closes its stores in the order of
    ``CyllamaDB.stores``.

    Subclasses get the database's state through properties (``settings``,
    ``enabled``, ``path``, ``pool``, ``clock``), so a test that replaces
    ``db.clock`` moves every store's time with it.
    """

    #: The attribute the store is reached under (``db.<name>``).
    name: ClassVar[str] = ""
    #: The tables this store owns.
    tables: ClassVar[tuple[str, ...]] = ()
    #: How export and import treat each of those tables (:class:`~cyllama_db.db.policy.TablePolicy`).
    export_policy: ClassVar[tuple[TablePolicy, ...]] = ()

    def __init__(self, db: CyllamaDB) -> None:
        self.db = db

    # -- what the database provides ----------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The database's resolved settings."""
        return self.db.settings

    @property
    def enabled(self) -> bool:
        """False when the database was disabled: every call is then a no-op."""
        return self.db.settings.enabled

    @property
    def path(self) -> str:
        """The database in use (``":memory:"`` for in-memory databases, also after a fallback)."""
        return self.db.path

    @property
    def _pool(self) -> ConnectionPool | None:
        return self.db._pool

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool (raises :class:`DatabaseClosedError` once closed)."""
        return self.db.pool

    @property
    def clock(self) -> Callable[[], float]:
        """Seconds since the epoch: the database's clock (tests replace ``db.clock``)."""
        return self.db.clock

    @property
    def backend(self) -> Backend:
        """The engine behind the database (:class:`~cyllama_db.db.backend.Backend`)."""
        return self.db.backend

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        """After a delete, inside its transaction: give free space back (``Backend.reclaim``)."""
        self.db.backend.reclaim(conn)

    def _flush_for_read(self, *flushers: Callable[[], Any]) -> None:
        self.db._flush_for_read(*flushers)

    # -- lifecycle hooks ---------------------------------------------------------------------

    def open(self) -> None:
        """Called once the database is open (set up in-memory state)."""

    def flush(self) -> None:
        """Write buffered bookkeeping (before a read that must see it, a vacuum, an export)."""

    def close(self) -> None:
        """Called by ``CyllamaDB.close()`` before the connections close; must not raise."""

    def counts(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """This store's part of ``get_db_stats()`` (row counts), read on ``conn``."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.db!r}>"


def delegate(target: Callable[..., Any]) -> Callable[[F], F]:
    """Mark a facade method as the flat spelling of a store method (``db.get_config`` -> ``db.config.get``).

    Copies the store method's docstring; the tests check that both
    signatures match, so the flat API cannot drift from the store's.
    """

    def decorate(fn: F) -> F:
        fn.__doc__ = target.__doc__
        fn.__delegates_to__ = target  # type: ignore[attr-defined]
        return fn

    return decorate
