"""The storage seam: what a store may ask of the database engine.

Stores write plain SQL that SQLite and PostgreSQL both understand
(``INSERT ... ON CONFLICT ... DO UPDATE``, ``RETURNING``, ``COALESCE``,
numeric Unix-second timestamps) with ``?`` placeholders, and ask the
:class:`Backend` for everything else: connections and transactions, the
placeholder translation, upserts, the current time in SQL, full-text
search, schema introspection, sizes and maintenance, and the mapping of the
engine's errors to the library's. SQLite (:class:`~cyllama_db.db.sqlite.SQLiteBackend`)
and PostgreSQL (:class:`~cyllama_db.db.postgres.PostgresBackend`) implement
it. The contract is written out in ``docs/index.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Protocol

__all__ = ["Backend", "Connection"]


class Connection(Protocol):
    """The DB-API connection a store gets from :meth:`Backend.read` / :meth:`Backend.transaction`."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class Backend(ABC):
    """One database engine behind the stores (see ``docs/index.md``, "The storage seam").

    Lifecycle: :meth:`open` (a classmethod) connects, refuses files or
    servers that are not ours or are newer, runs pending migrations and
    returns the backend; :meth:`close` closes every connection.
    """

    #: The engine's name: ``"sqlite"``, ``"postgresql"``.
    name: ClassVar[str]
    #: The placeholder the engine's driver expects in place of ``?``.
    placeholder: ClassVar[str] = "?"
    #: Why the database is not the one asked for (a fallback to memory), or None.
    fallback_reason: str | None = None

    # -- connections and transactions ---------------------------------------------------------

    @abstractmethod
    def read(self) -> AbstractContextManager[Any]:
        """This thread's connection, for reads (and writes that join an open transaction)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """A write transaction on this thread's connection, committed on exit, rolled back on error.

        Nested calls join the outer transaction. Waits for other writers up
        to the busy timeout, then raises ``DatabaseBusyError``.
        """

    @abstractmethod
    def no_wait(self) -> AbstractContextManager[None]:
        """Inside the block, writes fail at once instead of waiting for another writer's lock."""

    @abstractmethod
    def close(self) -> None:
        """Close every thread's connection; idempotent."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data lives, safe to show: a path, ``":memory:"``, or a URL without its password."""

    @property
    @abstractmethod
    def is_memory(self) -> bool:
        """Whether the data lives in this process only."""

    # -- single flight across machines ------------------------------------------------------------

    def flight(self, key: str, timeout: float | None) -> AbstractContextManager[bool]:
        """Hold the cross-machine lock of the identical request ``key`` for the block.

        The miss path of a cached call (``LLM``, ``@cached``) generates inside
        it, after looking the cache up once more: a machine that waited here
        for another one to generate the same request finds its answer then.
        The lock is waited for at most ``timeout`` seconds (None: for ever);
        the block then runs without it and the context value is False (it
        is True while the lock is held).

        This default is for engines whose data one machine holds (SQLite):
        the in-process single flight (``llm/locks.py``) already covers it,
        and this returns a no-op. PostgreSQL holds a session-level advisory
        lock on a connection of its own (:meth:`PostgresBackend.flight`).
        """
        return nullcontext(True)

    # -- SQL dialect ----------------------------------------------------------------------------

    def sql(self, text: str) -> str:
        """``text`` with its ``?`` placeholders in the driver's style (unchanged for ``?`` engines)."""
        return text

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str], update: Sequence[str] | None = None) -> str:
        """``INSERT`` of ``columns`` that updates ``update`` (default: the non-key columns) on a ``key`` conflict."""
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        changed = [c for c in columns if c not in key] if update is None else list(update)
        action = (
            "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in changed) if changed else "DO NOTHING"
        )
        return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT({', '.join(key)}) {action}"

    def least(self, *expressions: str) -> str:
        """SQL for the smallest of ``expressions`` (SQLite's scalar ``MIN(a, b)``, PostgreSQL's ``LEAST``).

        NULLs differ: SQLite's gives NULL if any is NULL, ``LEAST`` ignores
        them; callers pass non-NULL expressions (``COALESCE``).
        """
        return f"MIN({', '.join(expressions)})"

    def greatest(self, *expressions: str) -> str:
        """SQL for the largest of ``expressions`` (``MAX(a, b)`` / ``GREATEST``; NULLs as in :meth:`least`)."""
        return f"MAX({', '.join(expressions)})"

    def trunc_int(self, expression: str) -> str:
        """SQL for ``expression`` (a number) truncated toward zero to an integer.

        SQLite's ``CAST(x AS INTEGER)``; a cast to an integer rounds on
        PostgreSQL, so it writes ``trunc(x)::bigint``.
        """
        return f"CAST({expression} AS INTEGER)"

    def next_id_sql(self, table: str) -> str:
        """SQL for a fresh ``id`` above every other in ``table`` (moving a row to the end of id order)."""
        return f"(SELECT MAX(id) FROM {table}) + 1"

    @abstractmethod
    def now_sql(self) -> str:
        """An SQL expression for the current time in Unix seconds (a float), for views and defaults."""

    # -- schema introspection --------------------------------------------------------------------

    @abstractmethod
    def columns(self, conn: Any, table: str) -> list[str]:
        """The column names of ``table``, in order (``[]`` if there is no such table)."""

    @abstractmethod
    def has_table(self, conn: Any, table: str) -> bool:
        """Whether ``table`` exists."""

    @abstractmethod
    def table_names(self, conn: Any) -> list[str]:
        """Every table of the database (ours, ``schema_version`` included), sorted."""

    @abstractmethod
    def has_triggers(self, conn: Any, table: str) -> bool:
        """Whether ``table`` has triggers of its own (code the engine runs on its writes)."""

    # -- moving rows between engines (export and import, ``stores/transfer.py``) -----------------

    def snapshot(self) -> AbstractContextManager[Any]:
        """A connection that sees one fixed, committed state of the database for the whole block
        (reads only). The default is :meth:`read`; engines that can pin a snapshot do."""
        return self.read()

    def stream(self, conn: Any, sql: str, parameters: Sequence[Any] = (), size: int = 5000) -> Iterator[list[Any]]:
        """The rows of a query in lists of at most ``size``, without holding them all in memory."""
        cursor = conn.execute(self.sql(sql), parameters)
        while True:
            rows = cursor.fetchmany(size)
            if not rows:
                return
            yield rows

    def insert_rows(self, conn: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Insert ``rows`` (values of ``columns``) into ``table`` as fast as the engine can.

        ``table`` and ``columns`` are quoted by the caller where needed; no conflict handling.
        """
        marks = ", ".join("?" for _ in columns)
        conn.executemany(self.sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"), rows)

    # -- sizes and maintenance ------------------------------------------------------------------------

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes the data takes inside the engine (pages in use, or the relations' size)."""

    @abstractmethod
    def storage_stats(self) -> dict[str, Any]:
        """Engine-specific lines of ``get_db_stats()`` (file size, free pages, vacuum mode...)."""

    @abstractmethod
    def vacuum(self) -> None:
        """Give free space back and compact."""

    def reclaim(self, conn: Any) -> int:
        """After a delete, inside its transaction: give free space back if the engine does that; returns pages freed."""
        return 0

    # -- errors ---------------------------------------------------------------------------------

    @abstractmethod
    def error(self, exc: BaseException) -> Exception:
        """The library's error (a :class:`~cyllama_db.CyllamaDBError`) for the engine's ``exc``."""

    # -- full-text search ---------------------------------------------------------------------------

    @abstractmethod
    def search_available(self) -> bool:
        """Whether full-text search works on this engine (SQLite: the FTS5 module is compiled in)."""
