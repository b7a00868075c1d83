"""Full-text search (SQLite FTS5) over the logs and the response cache.

Two external-content FTS5 tables index text that lives in the base tables
(nothing is stored twice): ``logs_fts`` over the ``logs`` columns
``message``, ``error_type``, ``error_message`` and ``prompt_preview``, and
``cache_fts`` over the ``cache`` columns ``prompt`` and ``response_text``.
Triggers on the base tables keep them in step with every insert, update and
delete, whoever makes it (the stores, an import, the sqlite3 shell);
migration 8 creates them and indexes the rows already there. Their shadow
tables (``logs_fts_data``, ``..._idx``, ``..._docsize``, ``..._config``
and the same for ``cache_fts``) are internal.

The tokenizer is ``unicode61 remove_diacritics 2``: words are runs of
letters and digits in any script, matched without regard to case or
accents (``cafe`` finds ``Café``). Search text is never passed to FTS5 as
query syntax (:func:`fts_query`): what it supports is

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

from .errors import SearchUnavailableError
from .migrations import execute_script, migration

__all__ = [
    "CACHE_FTS",
    "CACHE_FTS_SOURCE",
    "FTS_TOKENIZER",
    "LOGS_FTS",
    "fts5_available",
    "fts_query",
    "require_index",
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


def _index_sql(name: str, table: str, content: str, columns: dict[str, str]) -> str:
    """The FTS5 table ``name`` over ``table`` (read through ``content``), and its triggers.

    ``columns`` maps each indexed column to its SQL in terms of a row alias
    ``ROW`` (``NEW`` or ``OLD`` in the triggers).
    """
    cols = ", ".join(columns)
    new = ", ".join(expr.replace("ROW", "new") for expr in columns.values())
    old = ", ".join(expr.replace("ROW", "old") for expr in columns.values())
    rows = ", ".join(expr.replace("ROW", table) for expr in columns.values())
    sources = ", ".join(c for c in columns)
    # An external-content table forgets a row through the 'delete' command,
    # given exactly the values it indexed (computed from the OLD row).
    return f"""
        CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING fts5(
            {cols}, content='{content}', content_rowid='id', tokenize='{FTS_TOKENIZER}'
        );
        CREATE TRIGGER IF NOT EXISTS {name}_insert AFTER INSERT ON {table} BEGIN
            INSERT INTO {name} (rowid, {cols}) VALUES (new.id, {new});
        END;
        CREATE TRIGGER IF NOT EXISTS {name}_delete AFTER DELETE ON {table} BEGIN
            INSERT INTO {name} ({name}, rowid, {cols}) VALUES ('delete', old.id, {old});
        END;
        CREATE TRIGGER IF NOT EXISTS {name}_update AFTER UPDATE OF id, {sources} ON {table} BEGIN
            INSERT INTO {name} ({name}, rowid, {cols}) VALUES ('delete', old.id, {old});
            INSERT INTO {name} (rowid, {cols}) VALUES (new.id, {new});
        END;
        INSERT INTO {name} (rowid, {cols}) SELECT id, {rows} FROM {table};
    """


_LOGS_INDEX = {c: f"ROW.{c}" for c in _LOGS_COLUMNS}
_CACHE_INDEX = {"prompt": _chat_text("ROW"), "response_text": "ROW.response_text"}
#: The cache index reads its text through this view (internal): the prompt of
#: a chat entry decoded as the triggers index it, for snippet() and 'rebuild'.
CACHE_FTS_SOURCE = "cache_fts_source"


@migration(8, "full-text search")
def _create_search_indexes(conn: sqlite3.Connection) -> None:
    if not fts5_available():
        logger.warning(
            "this Python's SQLite (%s) has no FTS5: the full-text search indexes are not created, "
            "and db.get_logs(search=...) / db.search_cache() will raise SearchUnavailableError",
            sqlite3.sqlite_version,
        )
        return
    # The last statement of each script indexes the rows already there (a file
    # from before v8). Not FTS5's 'rebuild': it reads the content through a
    # statement that may not use json_tree (the view of the cache's text).
    execute_script(conn, _index_sql(LOGS_FTS, "logs", "logs", _LOGS_INDEX))
    conn.execute(
        f"CREATE VIEW IF NOT EXISTS {CACHE_FTS_SOURCE} AS"
        f" SELECT id, {_chat_text('cache')} AS prompt, response_text FROM cache"
    )
    execute_script(conn, _index_sql(CACHE_FTS, "cache", CACHE_FTS_SOURCE, _CACHE_INDEX))


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
