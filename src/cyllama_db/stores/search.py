"""Full-text search (SQLite FTS5) over the logs and the response cache.

Two external-content FTS5 tables index text that lives in the base tables
(nothing is stored twice): ``logs_fts`` over the ``logs`` columns
``message``, ``error_type``, ``error_message`` and ``prompt_preview``, and
``cache_fts`` over the ``cache`` columns ``prompt`` and ``response_text``
(read through the view ``cache_fts_source``, which decodes chat prompts).

**Deferred indexing.** Writing an FTS5 index in every insert's transaction
doubles the cost of a cache insert and puts milliseconds into its tail (each
commit writes a new index segment and its structure record; measured 52 ->
112 µs median and 0.25 -> 4.6 ms p99). So inserts write nothing extra: new
rows are indexed in batches by :func:`sync_index`, which indexes the rows
above the highest one indexed (a rowid range) and is run before every
search, by the stores' periodic bookkeeping (the cache's size sync, every
256th log write), by cleanup and pruning, and at close. What has to happen at
once is forgetting: an external-content index can only drop a row given
the values it indexed, which are gone after a DELETE or UPDATE. So triggers
on the base tables copy those values, for rows that are indexed (that have
a row in the index's ``..._docsize`` table), into a plain table
(``logs_fts_pending``, ``cache_fts_pending``), and the next
:func:`sync_index` removes them from the index. The triggers use no virtual
table, so they also work under ``PRAGMA trusted_schema=OFF``, and searches
leave out pending rows, so a search never returns a row whose indexed text
is gone. Migration 8 creates all this and indexes the rows already there.

The shadow tables (``logs_fts_data``, ``_idx``, ``_docsize``, ``_config``,
the same for ``cache_fts``) and the ``_pending`` tables are internal.

The tokenizer is ``unicode61 remove_diacritics 2``: words are runs of
letters and digits in any script, matched without regard to case, and
without the accents of Latin letters (``cafe`` finds ``Café``). Search text
is never passed to FTS5 as query syntax (:func:`fts_query`): what it
supports is

* words: every word must appear, in any order (``disk full``);
* ``"a phrase"`` in double quotes: those words next to each other, in order;
* ``word*``: any word starting with ``word`` (also ``"a phra"*``).

Everything else (``AND``/``OR``/``NOT``/``NEAR``, ``column:``, ``^``,
parentheses, a ``-``) is ordinary text.

Without FTS5 in this Python's SQLite (rare: CPython's builds have it), the
tables are not created, every other feature works, and a search raises
:class:`~cyllama_db.errors.SearchUnavailableError`.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from typing import TYPE_CHECKING

from ..db.migrations import execute_script, migration
from ..errors import SearchUnavailableError

if TYPE_CHECKING:
    from ..db.pool import ConnectionPool

__all__ = [
    "CACHE_FTS",
    "CACHE_FTS_SOURCE",
    "CACHE_INDEX",
    "FTS_TOKENIZER",
    "LOGS_FTS",
    "LOGS_INDEX",
    "create_cache_index",
    "fts5_available",
    "fts_query",
    "index_is_behind",
    "refresh",
    "require_index",
    "search_clause",
    "sync_index",
]

logger = logging.getLogger("cyllama_db.search")

#: The FTS5 tokenizer of both indexes.
FTS_TOKENIZER = "unicode61 remove_diacritics 2"
LOGS_FTS = "logs_fts"
CACHE_FTS = "cache_fts"

_LOGS_COLUMNS = ("message", "error_type", "error_message", "prompt_preview")

#: Search text longer than this is refused (a query is words, not documents).
MAX_QUERY_CHARS = 1000
_MAX_TERMS = 64


@functools.lru_cache(maxsize=1)
def fts5_available() -> bool:
    """Whether this Python's SQLite has the FTS5 extension."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE VIRTUAL TABLE temp.probe USING fts5(a, tokenize='{FTS_TOKENIZER}')")
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return True


class _Index:
    """One full-text index: its FTS5 table, the table it indexes, and how."""

    def __init__(
        self, name: str, table: str, content: str, columns: dict[str, str], sources: tuple[str, ...]
    ) -> None:
        self.name = name
        self.table = table
        self.content = content
        #: indexed column -> its SQL in terms of a row alias ``ROW``
        self.columns = columns
        self.cols = ", ".join(columns)
        #: the base table's columns those expressions read
        self.sources = sources

    def values(self, row: str) -> str:
        return ", ".join(expr.replace("ROW", row) for expr in self.columns.values())

    def create_sql(self) -> str:
        n, t = self.name, self.table
        indexed = (
            f"EXISTS (SELECT 1 FROM {n}_docsize WHERE id = old.id)"
            f" AND NOT EXISTS (SELECT 1 FROM {n}_pending WHERE id = old.id)"
        )
        sources = ", ".join(self.sources)
        old = ", ".join(f"old.{c}" for c in self.sources)
        pending_cols = ", ".join(f"{c}" for c in self.sources)
        # The triggers copy the old row's columns as they are: computing the
        # indexed text (JSON functions) is left to the sync, since functions
        # that are not innocuous may not run in triggers under trusted_schema=OFF.
        return f"""
            CREATE VIRTUAL TABLE IF NOT EXISTS {n} USING fts5(
                {self.cols}, content='{self.content}', content_rowid='id', tokenize='{FTS_TOKENIZER}'
            );
            -- Rows to drop from the index at the next sync, with the columns
            -- their indexed text came from (an external-content index needs it).
            CREATE TABLE IF NOT EXISTS {n}_pending (id INTEGER PRIMARY KEY, {pending_cols});
            CREATE TRIGGER IF NOT EXISTS {n}_forget_deleted AFTER DELETE ON {t}
            WHEN {indexed} BEGIN
                INSERT INTO {n}_pending (id, {sources}) VALUES (old.id, {old});
            END;
            CREATE TRIGGER IF NOT EXISTS {n}_forget_updated AFTER UPDATE OF id, {sources} ON {t}
            WHEN {indexed} BEGIN
                INSERT INTO {n}_pending (id, {sources}) VALUES (old.id, {old});
            END;
        """


def _fts_engine(conn: object) -> bool:
    """Whether ``conn`` is SQLite's (the FTS5 indexes exist only there; elsewhere the index calls do nothing)."""
    return isinstance(conn, sqlite3.Connection)


def sync_index(conn: sqlite3.Connection, index: _Index) -> int:
    """Bring ``index`` up to date, inside the caller's write transaction; returns rows indexed.

    Drops the pending rows from the index, then indexes every row above the
    highest one indexed, and the pending ones that still exist (updated in
    place). Does nothing where the index does not exist (no FTS5).
    """
    n, t = index.name, index.table
    if not _fts_engine(conn):
        return 0
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (n,)).fetchone() is None:
        return 0
    pending = [row[0] for row in conn.execute(f"SELECT id FROM {n}_pending")]
    if pending:
        conn.execute(
            f"INSERT INTO {n} ({n}, rowid, {index.cols})"
            f" SELECT 'delete', p.id, {index.values('p')} FROM {n}_pending AS p"
        )
        conn.execute(f"DELETE FROM {n}_pending")
    top = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {n}_docsize").fetchone()[0]
    added = conn.execute(
        f"INSERT INTO {n} (rowid, {index.cols}) SELECT id, {index.values(t)} FROM {t} WHERE id > ?", (top,)
    ).rowcount
    for start in range(0, len(pending), 500):
        chunk = [i for i in pending[start : start + 500] if i <= top]
        if chunk:
            added += conn.execute(
                f"INSERT INTO {n} (rowid, {index.cols}) SELECT id, {index.values(t)} FROM {t}"
                f" WHERE id IN ({','.join('?' * len(chunk))})"
                f" AND NOT EXISTS (SELECT 1 FROM {n}_docsize AS d WHERE d.id = {t}.id)",
                chunk,
            ).rowcount
    return max(added, 0)


def _chat_text(row: str) -> str:
    """SQL for the searchable text of a cache row's prompt.

    The prompt of a chat (or ``@cached`` function) entry is canonical JSON,
    written with ``\\u`` escapes for every non-ASCII character: the index
    gets its decoded string values instead (message contents and roles), so
    ``Müller`` in a chat message is found as ``muller``.
    """
    return (
        f"CASE WHEN {row}.kind != 'completion' AND json_valid({row}.prompt)"
        f" THEN (SELECT group_concat(value, ' ') FROM json_tree({row}.prompt) WHERE type = 'text')"
        f" ELSE {row}.prompt END"
    )


#: The cache index reads its text through this view (internal): the prompt of
#: a chat entry decoded as the index has it, for snippet().
CACHE_FTS_SOURCE = "cache_fts_source"

LOGS_INDEX = _Index(LOGS_FTS, "logs", "logs", {c: f"ROW.{c}" for c in _LOGS_COLUMNS}, _LOGS_COLUMNS)
CACHE_INDEX = _Index(
    CACHE_FTS,
    "cache",
    CACHE_FTS_SOURCE,
    {"prompt": _chat_text("ROW"), "response_text": "ROW.response_text"},
    ("kind", "prompt", "response_text"),
)


@migration(9, "full-text search")
def _create_search_indexes(conn: sqlite3.Connection) -> None:
    if not fts5_available():
        logger.warning(
            "this Python's SQLite (%s) has no FTS5: the full-text search indexes are not created, "
            "and db.get_logs(search=...) / db.search_cache() will raise SearchUnavailableError",
            sqlite3.sqlite_version,
        )
        return
    # The cache's index is the cache store's part of this version (cache.py).
    execute_script(conn, LOGS_INDEX.create_sql())
    sync_index(conn, LOGS_INDEX)  # the rows already there (a file from before v9)


def create_cache_index(conn: sqlite3.Connection) -> None:
    """Create the cache's full-text index and its source view, and index the rows there
    (the cache store's part of migration 9); nothing without FTS5."""
    if not fts5_available():
        return
    conn.execute(
        f"CREATE VIEW IF NOT EXISTS {CACHE_FTS_SOURCE} AS"
        f" SELECT id, {_chat_text('cache')} AS prompt, response_text FROM cache"
    )
    execute_script(conn, CACHE_INDEX.create_sql())
    sync_index(conn, CACHE_INDEX)  # the rows already there (a file from before v9)


def index_is_behind(conn: sqlite3.Connection, index: _Index) -> bool:
    """Whether :func:`sync_index` has work to do (reads only; False without the index)."""
    n = index.name
    if not _fts_engine(conn):
        return False
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (n,)).fetchone() is None:
        return False
    return bool(
        conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {n}_pending)"
            f" OR COALESCE((SELECT MAX(id) FROM {index.table}), 0)"
            f" > COALESCE((SELECT MAX(id) FROM {n}_docsize), 0)"
        ).fetchone()[0]
    )


def refresh(pool: ConnectionPool, index: _Index) -> None:
    """Sync ``index`` in its own write transaction if it is behind (no write lock otherwise)."""
    with pool.read() as conn:
        if not index_is_behind(conn, index):
            return
    with pool.transaction() as conn:
        added = sync_index(conn, index)
    logger.debug("indexed %d rows for full-text search in %s", added, index.name)


def search_clause(index: _Index, id_sql: str) -> str:
    """SQL keeping the rows (``id_sql`` their id) whose text matches the ``?`` bound to the query.

    Leaves out rows whose index entry is pending removal (their text changed
    or they are gone), for a search that could not sync first (read-only).
    """
    n = index.name
    return (
        f"{id_sql} IN (SELECT rowid FROM {n} WHERE {n} MATCH ?)"
        f" AND {id_sql} NOT IN (SELECT id FROM {n}_pending)"
    )


def require_index(conn: sqlite3.Connection, name: str) -> None:
    """Raise :class:`SearchUnavailableError` unless the FTS table ``name`` exists and works here."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    if row is None:
        raise SearchUnavailableError(
            f"this database has no full-text search index ({name}): the SQLite that upgraded it "
            f"had no FTS5 extension (this Python's SQLite {sqlite3.sqlite_version} "
            f"{'has it' if fts5_available() else 'has none either'}). Searching needs a Python whose "
            "sqlite3 module includes FTS5 (CPython's official builds do) when the file is first "
            "opened; everything else works without it."
        )
    if not fts5_available():
        raise SearchUnavailableError(
            f"this Python's SQLite {sqlite3.sqlite_version} has no FTS5 extension, which "
            "full-text search needs; use a Python whose sqlite3 module includes it (CPython's "
            "official builds do)."
        )


_TERM = re.compile(r'"([^"]*)("?)(\*?)|(\S+)')


def fts_query(text: str, argument: str = "search") -> str:
    """The FTS5 query for the user's search ``text``: words, ``"phrases"`` and ``prefix*`` only.

    Every term is written as an FTS5 string (double-quoted, inner quotes
    doubled), so nothing the user types is read as FTS5 syntax: words are
    ANDed, a double-quoted phrase stays a phrase, and a ``*`` right after a
    term makes its last word a prefix. Raises ``TypeError`` for non-text and
    ``ValueError`` for text without a single letter or digit, or too long.
    """
    if not isinstance(text, str):
        raise TypeError(f"{argument} must be a str, got {type(text).__name__}")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"{argument} is {len(text)} characters long; at most {MAX_QUERY_CHARS} are searched for")
    # FTS5 reads a query as C text: a NUL would end it inside a quoted term.
    text = text.replace("\x00", " ")
    terms: list[str] = []
    for match in _TERM.finditer(text):
        phrase, _closing, star, word = match.groups()
        if word is not None:
            body, star = (word[:-1], "*") if word.endswith("*") else (word, "")
            body = body.replace('"', " ")
        else:
            body = phrase
        # A term without a letter or digit holds no token: FTS5 would refuse it.
        if not any(ch.isalnum() for ch in body):
            continue
        terms.append('"' + body.replace('"', '""') + '"' + ("*" if star else ""))
    if not terms:
        raise ValueError(
            f"{argument}={text!r} has no words to search for (words are letters and digits; "
            'use words, "a phrase" or a prefix*)'
        )
    if len(terms) > _MAX_TERMS:
        raise ValueError(f"{argument} has {len(terms)} terms; at most {_MAX_TERMS} are searched for")
    return " ".join(terms)
