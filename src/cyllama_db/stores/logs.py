"""Structured logs: the seed design's ``logs`` table, and a ``logging`` handler writing to it.

The store is :class:`LogStore`, reached as ``db.logs``: ``db.logs.log(...)``
(the flat ``db.log(...)``) writes one row; :class:`CyllamaDBHandler` turns records of
Python's :mod:`logging` into rows (level, logger name as ``category``,
``extra`` fields as ``context``, ``exc_info`` as the error columns).  With
``log_to_db`` set, the database attaches a handler to the library's own
``cyllama_db`` logger when it opens and detaches it when it closes.

Two rules keep logging from hurting the code that logs:

- the handler never raises: a failed write goes to
  :meth:`logging.Handler.handleError` (a traceback on stderr, as for every
  standard handler), and
- a thread-local flag is set while a row is being written, so a record the
  database itself emits during that write is dropped by this handler instead
  of recursing into it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import traceback
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._time import from_timestamp
from .._validate import check_text
from ..db import policy as _policy
from ..db.migrations import execute_script, migration
from ..db.settings import LOG_LEVELS
from ..db.store import Store, db_op
from .search import (
    LOGS_FTS,
    LOGS_INDEX,
    fts_query,
    refresh,
    require_index,
    search_clause,
    sync_index,
)
from .stats import _check_limit, _time_arg

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = ["EXPORT_POLICY", "LOG_COLUMNS", "CyllamaDBHandler", "LogStore", "level_name"]


#: How the ``logs`` table is exported and imported (``db/policy.py``): appended.
EXPORT_POLICY: tuple[_policy.TablePolicy, ...] = (
    _policy.TablePolicy(
        "logs", merge="append", time_columns=("created_at",), json_columns=("context_json",)
    ),
)

LIBRARY_LOGGER = "cyllama_db"

#: Log rows are indexed for full-text search every this many writes (and
#: before a search, at close): see ``_search``.
LOG_INDEX_BATCH = 256

#: Characters of a prompt kept in ``prompt_preview``.
PROMPT_PREVIEW_CHARS = 100

#: The fields of a row returned by ``db.logs.query()`` (``get_logs``).
LOG_COLUMNS = (
    "id",
    "level",
    "category",
    "message",
    "context",
    "model_path",
    "prompt_preview",
    "error_type",
    "error_message",
    "stack_trace",
    "created_at",
)

_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}

_LEVEL_CHECK = ", ".join(f"'{name}'" for name in LOG_LEVELS)


@migration(4, "structured logs")
def _create_logs_table(conn: sqlite3.Connection) -> None:
    # created_at follows level and category in their indexes: "WARNING and
    # above, newest first" and "this category, newest first" read in order.
    execute_script(
        conn,
        f"""
        CREATE TABLE IF NOT EXISTS logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            level TEXT NOT NULL CHECK (level IN ({_LEVEL_CHECK})),
            category TEXT,
            message TEXT NOT NULL,
            context_json TEXT,
            model_path TEXT,
            prompt_preview TEXT,
            error_type TEXT,
            error_message TEXT,
            stack_trace TEXT,
            created_at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_logs_level ON logs(level, created_at);
        CREATE INDEX IF NOT EXISTS idx_logs_category ON logs(category, created_at);
        CREATE INDEX IF NOT EXISTS idx_logs_created ON logs(created_at);
        """,
    )


def level_name(level: str | int, argument: str = "level") -> str:
    """The standard name of ``level`` (``"warning"``, ``30`` -> ``"WARNING"``).

    Raises ``ValueError`` naming ``argument`` for anything that is not one
    of DEBUG, INFO, WARNING, ERROR, CRITICAL (or their numbers).
    """
    if isinstance(level, str):
        name = level.strip().upper()
        name = _ALIASES.get(name, name)
        if name in LOG_LEVELS:
            return name
    elif isinstance(level, int) and not isinstance(level, bool):
        for name, number in LOG_LEVELS.items():
            if number == level:
                return name
    error = ValueError if isinstance(level, (str, int)) and not isinstance(level, bool) else TypeError
    raise error(
        f"{argument}={level!r} is not a log level: use one of {', '.join(LOG_LEVELS)} "
        "(or logging.DEBUG ... logging.CRITICAL)"
    )


def _floor_level(levelno: int) -> str | None:
    """The highest standard level at or below ``levelno`` (custom levels such as 25)."""
    found = None
    for name, number in LOG_LEVELS.items():
        if number <= levelno:
            found = name
    return found


def _json_default(value: Any) -> Any:
    # Logging must not fail over a context value JSON cannot hold: store its text.
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _split_context(context: Mapping[str, Any] | None) -> tuple[str | None, str | None, str | None]:
    """(context_json, model_path, prompt_preview): the two known keys get their own columns."""
    if context is None:
        return None, None, None
    rest = dict(context)
    model_path = rest.pop("model_path", None)
    prompt = rest.pop("prompt", None)
    preview = rest.pop("prompt_preview", None)
    if prompt is not None:
        preview = prompt
    text = json.dumps(rest, default=_json_default, ensure_ascii=False) if rest else None
    if text is not None and _escaped(text) is not text:
        # A lone surrogate (e.g. an os.fsdecode'd file name): ASCII JSON
        # escapes it as \udXXX, which reads back as exactly the same str.
        text = json.dumps(rest, default=_json_default, ensure_ascii=True)
    if isinstance(model_path, os.PathLike):
        model_path = os.fspath(model_path)
    return (
        text,
        None if model_path is None else _escaped(str(model_path)),
        None if preview is None else _escaped(str(preview)[:PROMPT_PREVIEW_CHARS]),
    )


def _escaped(text: str) -> str:
    """``text``, or, if it holds lone surrogates (no UTF-8 form), those written as ``\\udXXX``.

    For text that is only shown to people (messages from logging records,
    tracebacks, previews): a log record must never be dropped for one bad
    character. Returns ``text`` itself when nothing needed escaping.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _error_fields(
    error: BaseException | None,
) -> tuple[str | None, str | None, str | None]:
    if error is None:
        return None, None, None
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    trace = "".join(traceback.format_exception(kind, error, error.__traceback__))
    return name, str(error), trace


# Set while this thread writes a log row; records emitted meanwhile are dropped
# by CyllamaDBHandler rather than written (and logged, and written...).
_writing = threading.local()


def _in_write() -> bool:
    return bool(getattr(_writing, "active", False))


class LogStore(Store):
    """Structured logs: ``db.logs.log``, ``query``, ``prune``, ``write`` (for handlers).

    With ``log_to_db`` it attaches the library's logger while the database
    is open. The flat ``db.log`` / ``get_logs`` / ``prune_logs`` and the
    ``db.log_level`` property are the same.
    """

    name = "logs"
    tables = ("logs",)
    export_policy = EXPORT_POLICY

    def __init__(self, db: CyllamaDB) -> None:
        super().__init__(db)
        self._handler: CyllamaDBHandler | None = None
        #: log rows written by this store since it last brought the search index up to date
        self._unindexed = 0

    def counts(self, conn: sqlite3.Connection) -> dict[str, Any]:
        return {"log_entries": conn.execute("SELECT COUNT(*) FROM logs").fetchone()[0]}

    # -- lifecycle hooks -------------------------------------------------------------------

    def flush(self) -> None:
        """Index the log rows written since the last sync (full-text search)."""
        self._refresh_index()

    def _refresh_index(self) -> None:
        """Index the log rows written since the last sync (full-text search); a no-op if none."""
        pool = self._pool
        if pool is not None and not pool.closed and not pool.readonly:
            refresh(pool, LOGS_INDEX)
            self._unindexed = 0

    def open(self) -> None:
        if self.settings.log_to_db:
            self._handler = _attach_library_logger(self.db)
            try:
                self._log_open_events()
            except Exception as exc:  # bookkeeping; never fail an open over it
                logging.getLogger(LIBRARY_LOGGER).debug("could not log the open: %s", exc)

    def close(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            _detach_library_logger(handler)
        try:
            self._refresh_index()
        except Exception as exc:  # closing must not fail over the search index
            logging.getLogger(LIBRARY_LOGGER).debug("log search index not brought up to date: %s", exc)

    def _log_open_events(self) -> None:
        """Write what happened while opening, before the handler could be attached."""
        threshold = LOG_LEVELS[self.settings.log_level]
        fallback = getattr(self.db, "fallback_reason", None)
        if fallback is not None and threshold <= logging.WARNING:
            self.write(
                "WARNING",
                f"cannot use database {self.settings.path}; fell back to an in-memory database",
                category=LIBRARY_LOGGER,
                context={"reason": fallback},
            )
        if threshold > logging.INFO:
            return
        # metadata.db_version still holds the version of the previous open
        # (it is updated after the store hooks): anything newer ran just now.
        value = self.db.metadata.get("db_version")
        previous = int(value) if value is not None and value.isdigit() else 0
        applied = [
            (m["version"], m["name"])
            for m in self.db.migration_status()
            if m["applied"] and m["version"] > previous
        ]
        for version, name in applied:
            self.write(
                "INFO",
                f"applied migration {version} ({name}) to {self.path}",
                category=f"{LIBRARY_LOGGER}.migrations",
            )

    # -- writing ---------------------------------------------------------------------------

    @property
    def level(self) -> str:
        """The lowest level stored (``settings.log_level``)."""
        return self.settings.log_level

    @db_op()
    def log(
        self,
        level: str | int,
        message: str,
        category: str | None = None,
        context: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> int | None:
        """Write one log row; return its id, or ``None`` if ``level`` is below :attr:`level`.

        Args:
            level: ``"DEBUG"``, ``"INFO"``, ``"WARNING"``, ``"ERROR"``,
                ``"CRITICAL"`` (any case) or the ``logging`` constant;
                anything else raises ``ValueError``.
            message: the text.
            category: free-form group, e.g. ``"generation"`` or a logger name.
            context: JSON-able details. ``model_path`` and ``prompt`` go to
                their own columns (the prompt cut to its first 100
                characters as ``prompt_preview``); the rest is stored as JSON
                (values JSON cannot hold are stored as their ``repr``).
            error: an exception: fills ``error_type``, ``error_message`` and
                ``stack_trace``.
        """
        name = level_name(level)
        if not isinstance(message, str):
            raise TypeError(f"log message must be a str, got {type(message).__name__}")
        if category is not None and not isinstance(category, str):
            raise TypeError(f"log category must be a str or None, got {type(category).__name__}")
        if context is not None and not isinstance(context, Mapping):
            raise TypeError(f"log context must be a mapping or None, got {type(context).__name__}")
        if error is not None and not isinstance(error, BaseException):
            raise TypeError(f"log error must be an exception or None, got {type(error).__name__}")
        check_text(message, "log message")
        if category is not None:
            check_text(category, "log category")
        if LOG_LEVELS[name] < LOG_LEVELS[self.settings.log_level]:
            return None
        error_type, error_message, trace = _error_fields(error)
        return self.write(
            name,
            message,
            category=category,
            context=context,
            error_type=error_type,
            error_message=error_message,
            stack_trace=trace,
        )

    @db_op()
    def write(
        self,
        level: str,
        message: str,
        *,
        category: str | None = None,
        context: Mapping[str, Any] | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        stack_trace: str | None = None,
        created_at: float | None = None,
    ) -> int | None:
        """Write one row as given (for logging handlers); return its id.

        Unlike :meth:`log` it neither checks its arguments nor applies the
        level threshold: ``level`` must already be a standard level name
        (:func:`level_name`) and the text checked. ``created_at`` (Unix
        seconds) defaults to now. A record the database itself emits while
        this row is written is dropped by :class:`CyllamaDBHandler`.
        """
        context_json, model_path, preview = _split_context(context)
        outer = _in_write()
        _writing.active = True
        try:
            with self.pool.transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO logs (level, category, message, context_json, model_path,"
                    " prompt_preview, error_type, error_message, stack_trace, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        level,
                        None if category is None else _escaped(category),
                        _escaped(message),
                        context_json,
                        model_path,
                        preview,
                        error_type,
                        None if error_message is None else _escaped(error_message),
                        None if stack_trace is None else _escaped(stack_trace),
                        self.clock() if created_at is None else created_at,
                    ),
                )
                row_id = int(cursor.fetchone()[0])
                # New rows are indexed for search in batches, not one by one
                # (a commit per row would write an FTS5 segment per row).
                self._unindexed += 1
                if self._unindexed >= LOG_INDEX_BATCH and self.backend.search_available():
                    sync_index(conn, LOGS_INDEX)
                    self._unindexed = 0
        finally:
            _writing.active = outer
        return row_id

    # -- reading ---------------------------------------------------------------------------

    @db_op(empty=list)
    def query(
        self,
        level: str | int | None = None,
        category: str | None = None,
        since: datetime | timedelta | float | str | None = None,
        limit: int = 100,
        *,
        until: datetime | timedelta | float | str | None = None,
        offset: int = 0,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """Log rows, newest first, as plain dicts.

        Args:
            level: that level and above (``"WARNING"`` gives warnings,
                errors and critical rows).
            category: that category and its dotted children, as in
                ``logging``'s hierarchy (``"cyllama_db"`` also matches
                ``"cyllama_db.cache"``).
            since: first moment included: a datetime, Unix seconds, a
                timedelta or duration text meaning "that long ago"
                (``since="1h"``), or ISO-8601 text (``"2024-05-01T12:00Z"``).
            until: first moment excluded (the same forms).
            limit: at most this many rows; ``offset`` skips the newest ones
                (non-negative ints; beyond 2**63 - 1 they mean "no limit").
            search: only rows whose ``message``, ``error_type``,
                ``error_message`` or ``prompt_preview`` match this full-text
                search (SQLite FTS5): every word must appear (any case, accents
                ignored), ``"a phrase"`` in double quotes, ``word*`` for a
                prefix; nothing else is query syntax. Still newest first.
                Raises :class:`~cyllama_db.errors.SearchUnavailableError`
                without FTS5.

        Each dict has ``id``, ``level``, ``category``, ``message``,
        ``context`` (the decoded dict or ``None``), ``model_path``,
        ``prompt_preview``, ``error_type``, ``error_message``,
        ``stack_trace`` and ``created_at`` (an aware UTC datetime).
        """
        limit = _check_limit(limit, "limit")
        offset = _check_limit(offset, "offset")
        clauses: list[str] = []
        args: list[Any] = []
        if search is not None:
            clauses.append(search_clause(LOGS_INDEX, "id"))
            args.append(fts_query(search, "search"))
        if level is not None:
            floor = LOG_LEVELS[level_name(level)]
            names = [name for name, number in LOG_LEVELS.items() if number >= floor]
            clauses.append(f"level IN ({', '.join('?' * len(names))})")
            args += names
        if category is not None:
            if not isinstance(category, str):
                raise TypeError(f"category must be a str, got {type(category).__name__}")
            # "cat." <= child < "cat/" ('/' follows '.'): an index range, unlike LIKE.
            clauses.append("(category = ? OR (category >= ? AND category < ?))")
            args += [category, category + ".", category + "/"]
        now = self.clock()
        if since is not None:
            clauses.append("created_at >= ?")
            args.append(_time_arg(since, "since", now))
        if until is not None:
            clauses.append("created_at < ?")
            args.append(_time_arg(until, "until", now))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        if search is not None:
            # Best effort, as every read's bookkeeping: a read never waits on a write.
            self._flush_for_read(self._refresh_index)
        with self.pool.read() as conn:
            if search is not None:
                require_index(conn, LOGS_FTS)
            rows = conn.execute(
                "SELECT id, level, category, message, context_json, model_path, prompt_preview,"
                f" error_type, error_message, stack_trace, created_at FROM logs{where}"
                " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        out = []
        for row in rows:
            record = dict(zip(LOG_COLUMNS, row, strict=True))
            record["context"] = None if row[4] is None else json.loads(row[4])
            record["created_at"] = from_timestamp(row[10])
            out.append(record)
        return out

    # -- retention -------------------------------------------------------------------------

    @db_op(empty=int)
    def prune(
        self,
        older_than: datetime | timedelta | float | str | None = None,
        keep_last: int | None = None,
    ) -> int:
        """Delete log rows; return how many.

        Each argument is a separate limit, and a row goes if either says so:
        ``older_than`` (datetime, Unix seconds, ISO-8601 text, or a
        timedelta or duration text such as ``"30d"`` meaning "that long
        ago") removes rows written before it; ``keep_last=N`` keeps only
        the newest N rows. At least one is required.
        """
        if older_than is None and keep_last is None:
            raise TypeError("prune_logs() needs older_than=..., keep_last=... or both")
        if keep_last is not None:
            keep_last = _check_limit(keep_last, "keep_last")
        cutoff = None if older_than is None else _time_arg(older_than, "older_than", self.clock())
        removed = 0
        with self.pool.transaction() as conn:
            if cutoff is not None:
                removed += conn.execute("DELETE FROM logs WHERE created_at < ?", (cutoff,)).rowcount
            if keep_last is not None:
                removed += conn.execute(
                    "DELETE FROM logs WHERE id NOT IN"
                    " (SELECT id FROM logs ORDER BY created_at DESC, id DESC LIMIT ?)",
                    (keep_last,),
                ).rowcount
            if removed:
                sync_index(conn, LOGS_INDEX)  # drop the pruned rows from the search index now
                self._reclaim(conn)
        return removed


# -- the logging handler -----------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("x", logging.INFO, __file__, 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}


class CyllamaDBHandler(logging.Handler):
    """A :class:`logging.Handler` that writes records into a database's ``logs`` table.

    Args:
        db: the database; ``None`` means the global one (:func:`~cyllama_db.get_db`),
            looked up at each record.
        level: the handler's own level (records below the database's
            ``log_level`` are never stored either).

    Each record becomes a row: its level (custom levels are stored as the
    standard level below them), the logger name as ``category``, the
    formatted message, fields passed with ``extra=`` as ``context``, and
    ``exc_info`` / ``stack_info`` as the error columns. A failed write never
    raises into the logging call: it goes to :meth:`handleError`.
    """

    def __init__(self, db: Any = None, level: int | str = logging.NOTSET) -> None:
        try:
            super().__init__(level)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"level must be a logging level (an int or a name such as 'INFO'): {exc}") from None
        if db is not None and not isinstance(getattr(db, "logs", None), LogStore):
            raise TypeError(f"db must be a CyllamaDB or None (the global database), got {type(db).__name__}")
        self.db = db

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit ``record``; returns whether it passed the filters."""
        # No handler lock: the database serialises writes itself, and holding
        # a lock here while waiting for the database's lock could deadlock
        # against a thread that logs while holding the database's lock.
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the logs table (errors go to :meth:`handleError`)."""
        if _in_write():
            return  # the database logging about its own write: do not recurse
        _writing.active = True
        try:
            db = self.db
            if db is None:
                from ..db.facade import get_db

                db = get_db()
            if not db.enabled:
                return
            name = _floor_level(record.levelno)
            if name is None or LOG_LEVELS[name] < LOG_LEVELS[db.settings.log_level]:
                return
            extra = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
            error_type = error_message = trace = None
            if record.exc_info and record.exc_info[1] is not None:
                error_type, error_message, trace = _error_fields(record.exc_info[1])
            if record.stack_info:
                trace = f"{trace}\n{record.stack_info}" if trace else record.stack_info
            db.logs.write(
                name,
                record.getMessage(),
                category=record.name,
                context=extra or None,
                error_type=error_type,
                error_message=error_message,
                stack_trace=trace,
                created_at=record.created,
            )
        except Exception:
            self.handleError(record)
        finally:
            _writing.active = False


# -- attaching the library logger -------------------------------------------------------------
#
# Records below a logger's level are never created, so storing the library's
# DEBUG records means lowering the ``cyllama_db`` logger's level. Left at that,
# the extra records would also propagate to the application's handlers (a
# root StreamHandler has no level of its own and prints them). So while a
# database is attached the library logger does not propagate; a _Propagator
# handler passes on to the parent loggers' handlers exactly the records the
# library would have created and propagated without us.


class _Routing:
    """What attaching changed on the library logger, to be put back."""

    def __init__(self) -> None:
        self.saved_level = logging.NOTSET
        self.saved_propagate = True
        self.lowered_to: int | None = None  # the level we set, if we lowered it


_attach_lock = threading.Lock()
_attached: list[CyllamaDBHandler] = []
_routing = _Routing()


def _natural_level(name: str) -> int:
    """The effective level of logger ``name`` had the library logger's level not been lowered."""
    lib = logging.getLogger(LIBRARY_LOGGER)
    found = logging.Logger.manager.loggerDict.get(name)
    logger: logging.Logger | None = found if isinstance(found, logging.Logger) else lib
    while logger is not None:
        level = logger.level
        # Someone else may have set the level since (pytest's caplog, the
        # application): then theirs counts, not the one saved before ours.
        if logger is lib and _routing.lowered_to is not None and level == _routing.lowered_to:
            level = _routing.saved_level
        if level:
            return level
        logger = logger.parent
    return logging.NOTSET


class _Propagator(logging.Handler):
    """Passes the library's records on to the parent loggers' handlers, as propagation would.

    Only records at or above the level their logger would have without the
    database attached: the application's console looks the same as without
    ``log_to_db``.
    """

    def handle(self, record: logging.LogRecord) -> bool:
        lib = logging.getLogger(LIBRARY_LOGGER)
        if lib.propagate or lib.parent is None:
            return False  # propagation was switched back on: it delivers the record itself
        if record.levelno < _natural_level(record.name):
            return False
        if record.name.endswith(".raised") and not _has_handlers(lib.parent):
            # An error raised to the caller: where nothing is configured, Python's
            # last-resort handler would print it, which its NullHandler prevents
            # when the records propagate normally.
            return False
        lib.parent.callHandlers(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does it
        self.handle(record)


def _has_handlers(logger: logging.Logger | None) -> bool:
    while logger is not None:
        if logger.handlers:
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


_propagator = _Propagator()


def _attach_library_logger(db: Any) -> CyllamaDBHandler:
    """Route the ``cyllama_db`` logger's records at ``db.log_level`` and above into ``db``.

    The logger's level is lowered to that level while a handler is attached,
    without changing what the application's own handlers receive (see the
    comment above); everything is restored when the last one is detached.
    """
    threshold = LOG_LEVELS[db.settings.log_level]
    handler = CyllamaDBHandler(db, level=threshold)
    lib = logging.getLogger(LIBRARY_LOGGER)
    with _attach_lock:
        if not _attached:
            _routing.saved_level = lib.level
            _routing.saved_propagate = lib.propagate
            _routing.lowered_to = None
            if lib.propagate:
                lib.propagate = False
                lib.addHandler(_propagator)
        _attached.append(handler)
        lib.addHandler(handler)
        _retune(lib)
    return handler


def _retune(lib: logging.Logger) -> None:
    """Set the library logger's level to the lowest any attached database stores."""
    lowest = min(int(h.level) for h in _attached)
    current = lib.level if lib.level != _routing.lowered_to else _routing.saved_level
    natural = current or (lib.parent.getEffectiveLevel() if lib.parent else logging.WARNING)
    if natural > lowest:
        lib.setLevel(lowest)
        _routing.lowered_to = lowest
    elif _routing.lowered_to is not None and lib.level == _routing.lowered_to:
        lib.setLevel(_routing.saved_level)
        _routing.lowered_to = None


def _detach_library_logger(handler: CyllamaDBHandler) -> None:
    lib = logging.getLogger(LIBRARY_LOGGER)
    with _attach_lock:
        lib.removeHandler(handler)
        if handler in _attached:
            _attached.remove(handler)
        if _attached:
            _retune(lib)
            return
        if _routing.lowered_to is not None and lib.level == _routing.lowered_to:
            lib.setLevel(_routing.saved_level)
        _routing.lowered_to = None
        if _propagator in lib.handlers:
            lib.removeHandler(_propagator)
            lib.propagate = _routing.saved_propagate
