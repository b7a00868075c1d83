"""Export and import of a whole database: ``db.export_database(path)`` / ``db.import_database(path)``.

Export copies the database through SQLite's online backup API while holding
one read transaction on the source, so the copy is exactly the snapshot at
the moment the export began: other processes keep writing (WAL mode lets
them), and without the pinned snapshot the backup would restart each time
they commit and might never finish.

Import merges another cyllama-db file into this one instead of replacing it:

==================  ===================================================
table               rule
==================  ===================================================
``config``          by ``key``
``metadata``        by ``key`` (``db_version``/``server_start_time`` are
                    this database's own and never imported)
``models``          by ``name`` (the registry's id is local)
``cache``           by ``cache_key`` (a conflict: a different response)
``stats``, ``logs``,  appended; a row identical to one already present is
``metrics_history`` skipped, so importing the same file twice is harmless
other tables        by their primary key, else a unique column, else appended
==================  ===================================================

A keyed row that exists on both sides with different content is a
*conflict*; ``on_conflict`` decides it (``"keep"`` the current row,
``"replace"`` it with the imported one, or take the ``"newer"`` of the two by
``updated_at``/``created_at``) and every conflict is listed in the report.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, Any

from .._validate import check_bool, check_callable, check_path
from ..db import files as _files
from ..db import migrations as _migrations
from ..db.store import StoreBase, db_op

logger = logging.getLogger("cyllama_db")

__all__ = ["DEFAULT_IMPORT_TIMEOUT", "ON_CONFLICT", "ExportMixin", "ProgressCallback"]

#: ``progress(done, total)``: pages copied (export) or rows merged (import).
ProgressCallback = Callable[[int, int], None]

#: What ``import_database(on_conflict=...)`` accepts.
ON_CONFLICT = ("keep", "replace", "newer")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_ALIAS = "cyllama_import"
_BACKUP_STEP_PAGES = 1024  # 4 MiB with the default page size: fine-grained progress
_MERGE_CHUNK_ROWS = 20_000
_MAX_LISTED_CONFLICTS = 1000

# Key columns where neither the primary key nor a unique index says it.
_KEY_OVERRIDES: dict[str, tuple[str, ...]] = {"models": ("name",)}
# Tables that are appended to even if they had a usable unique key.
_APPEND_TABLES = frozenset({"stats", "logs", "metrics_history"})
# Order of merging (the rest follows alphabetically).
_TABLE_ORDER = ("config", "metadata", "models", "cache", "stats", "logs", "metrics_history")
# Columns that record use, not content: rows differing only in them are not conflicts.
_BOOKKEEPING = frozenset(
    {"created_at", "updated_at", "hit_count", "last_hit_at", "last_accessed", "last_used_at",
     "accessed_at", "access_count"}
)
# Where a row's content is only some of its columns: the same cache key on two
# machines may come with another path to the same file, and that is no conflict.
_CONTENT_OVERRIDES: dict[str, tuple[str, ...]] = {
    "cache": ("response_text", "response_json", "finish_reason"),
}
_NEVER_IMPORTED_METADATA = ("db_version", "server_start_time")
_INTERNAL_TABLES = frozenset({"schema_version"})
# Tables whose rows triggers derive from other tables (e.g. the stats rollup):
# importing the source rows re-derives them, so copying them would count twice.
_DERIVED_TABLES = frozenset({"stats_rollup"})
_TRIGGER_TARGET = re.compile(
    r"\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE|DELETE\s+FROM)\s+[\"`\[]?(\w+)", re.IGNORECASE
)


def _quote(name: str) -> str:
    """An SQL identifier, quoted (names come from sqlite_master, never from the caller)."""
    return '"' + name.replace('"', '""') + '"'


def _secret_columns() -> list[str]:
    from .params import PARAMS

    return [p.name for p in PARAMS if p.secret]


def _redacted_marker() -> str:
    from .params import REDACTED

    return str(REDACTED)


def _redact_custom_text(text: Any) -> Any:
    """``custom_params`` column text with the values of secret flags (``--api-key``...) redacted."""
    from .params import _redact_custom_text

    return _redact_custom_text(text)


def _redact_text(value: Any) -> Any:
    """``value`` with URL passwords and inline secret flags hidden (non-text: unchanged)."""
    from .params import redact_text

    return redact_text(value) if isinstance(value, str) else value


def _plain_text_columns(conn: sqlite3.Connection, schema: str) -> list[str]:
    """The models table's TEXT columns other than secrets and custom_params (handled apart)."""
    skip = {*_secret_columns(), "custom_params", "metadata_json", "gguf_chat_template"}
    return [c[0] for c in _columns(conn, schema, "models") if c[1] == "TEXT" and c[0] not in skip]


def _restore_custom_text(incoming: Any, stored: Any) -> Any:
    from .params import _restore_custom_text

    return _restore_custom_text(incoming, stored)


# The tables SQLite keeps for each FTS5 (or FTS3/4) virtual table.
_SHADOW_SUFFIXES = ("_data", "_idx", "_content", "_docsize", "_config", "_segments", "_segdir", "_stat")


def _user_tables(conn: sqlite3.Connection, schema: str = "main") -> list[str]:
    """The tables holding data: not schema_version, and not virtual tables (the full-text
    indexes) or their shadow tables, which triggers derive from the data."""
    rows = conn.execute(
        f"SELECT name, sql FROM {_quote(schema)}.sqlite_master WHERE type = 'table'"
        " AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    virtual = {name for name, sql in rows if str(sql or "").upper().startswith("CREATE VIRTUAL TABLE")}
    shadows = {v + suffix for v in virtual for suffix in _SHADOW_SUFFIXES}
    return [name for name, _ in rows if name not in _INTERNAL_TABLES and name not in virtual | shadows]


def _derived_tables(conn: sqlite3.Connection) -> set[str]:
    """Tables written by triggers on other tables (their content follows from those)."""
    derived = set(_DERIVED_TABLES)
    for table, sql in conn.execute(
        "SELECT tbl_name, sql FROM main.sqlite_master WHERE type = 'trigger'"
    ).fetchall():
        body = str(sql or "").split("BEGIN", 1)[-1]
        derived.update(t for t in _TRIGGER_TARGET.findall(body) if t != table)
    return derived


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[tuple[str, str, int]]:
    """``(name, declared type, pk position)`` of each column."""
    rows = conn.execute(f"PRAGMA {_quote(schema)}.table_info({_quote(table)})").fetchall()
    return [(r[1], str(r[2] or "").upper(), int(r[5])) for r in rows]


def _rowid_alias(cols: list[tuple[str, str, int]]) -> str | None:
    pks = [c for c in cols if c[2] > 0]
    if len(pks) == 1 and pks[0][1] == "INTEGER":
        return pks[0][0]
    return None


def _natural_key(
    conn: sqlite3.Connection, table: str, cols: list[tuple[str, str, int]]
) -> tuple[str, ...] | None:
    """The columns that identify a row across databases, or None (append)."""
    if table in _APPEND_TABLES:
        return None
    if table in _KEY_OVERRIDES:
        return _KEY_OVERRIDES[table]
    alias = _rowid_alias(cols)
    pks = tuple(c[0] for c in sorted((c for c in cols if c[2] > 0), key=lambda c: c[2]))
    if pks and alias is None:
        return pks
    for row in conn.execute(f"PRAGMA main.index_list({_quote(table)})").fetchall():
        if int(row[2]) != 1:  # not unique
            continue
        info = conn.execute(f"PRAGMA main.index_info({_quote(row[1])})").fetchall()
        names = tuple(r[2] for r in sorted(info, key=lambda r: r[0]))
        if names and all(n is not None for n in names):
            return names
    return None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _check_sqlite_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise IsADirectoryError(f"{what} {path!r} is not a regular file")
    with open(path, "rb") as handle:
        head = handle.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        raise ValueError(
            f"{what} {path!r} is not a SQLite database file "
            "(import takes a file written by export_database / `cyllama-db export`)"
        )


def _open_readonly(path: str, timeout: float) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)


@contextlib.contextmanager
def _pinned_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Hold one read transaction so a backup copies a single, fixed snapshot."""
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _backup(
    src: sqlite3.Connection, dst: sqlite3.Connection, progress: ProgressCallback | None
) -> int:
    """Copy ``src`` into ``dst``; return the page count."""
    total = [0]

    def step(status: int, remaining: int, pages: int) -> None:
        total[0] = pages
        if progress is not None:
            progress(pages - remaining, pages)

    src.backup(dst, pages=_BACKUP_STEP_PAGES, progress=step)
    if progress is not None and total[0] == 0:
        # A tiny database is copied in one step and the callback never fires.
        pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
        progress(pages, pages)
        total[0] = pages
    return total[0]


def _new_private_file(path: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    return value


# -- untrusted imports ---------------------------------------------------------------------

#: Seconds ``import_database`` may take by default (copy, checks and merge together).
DEFAULT_IMPORT_TIMEOUT = 600.0
# Columns holding Unix seconds (Unix milliseconds in the metrics table): a value
# outside the years 1-9999 cannot become a datetime and broke every listing.
_TIME_COLUMNS = frozenset(
    {"created_at", "updated_at", "expires_at", "last_hit_at", "last_used_at", "first_seen_at"}
)
_MS_TIME_COLUMNS: dict[str, frozenset[str]] = {
    "metrics_history": frozenset({"timestamp", "created_at"}),
    "metadata": frozenset({"updated_at"}),
}
# Text columns that must hold JSON (as json.loads reads it), by table.
_JSON_COLUMNS: dict[str, tuple[str, ...]] = {
    "cache": ("config_json", "response_json"),
    "logs": ("context_json",),
    "models": ("metadata_json",),
    "metrics_history": ("gpus_json",),
}
_MAX_LISTED_SKIPS = 1000
_URL_PASSWORD_MARK = ":****@"
_FINITE = 1.7976931348623157e308


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if not 0 < timeout < 10**9:  # also NaN
        raise ValueError(f"timeout must be a positive number of seconds (or None for no limit), got {timeout!r}")
    return float(timeout)


class _Deadline:
    """The import's time limit, enforced inside SQLite by a progress handler."""

    def __init__(self, seconds: float | None, source: str) -> None:
        import time

        self.seconds = seconds
        self.source = source
        self.at = None if seconds is None else time.monotonic() + seconds
        self.expired = False

    def _check(self) -> int:
        import time

        if self.at is not None and time.monotonic() > self.at:
            self.expired = True
            return 1  # SQLite stops the statement: "interrupted"
        return 0

    @contextlib.contextmanager
    def watch(self, conn: sqlite3.Connection) -> Iterator[None]:
        if self.at is None:
            yield
            return
        if self._check():
            raise self.error()
        conn.set_progress_handler(self._check, 10_000)
        try:
            yield
        finally:
            conn.set_progress_handler(None, 0)

    def error(self) -> Exception:
        from ..errors import ImportTimeoutError

        return ImportTimeoutError(
            f"importing {self.source!r} took longer than its {self.seconds:g} s limit and was "
            "stopped; nothing was written. Pass a larger timeout (import_database(..., timeout=...), "
            "cyllama-db import --timeout) for a large file, or check the file: it may be hostile."
        )


class _TableSchema:
    """One table of this database, as the import's checks need it."""

    def __init__(
        self,
        name: str,
        columns: list[tuple[str, str, bool, int]],
        alias: str | None,
        unique: list[tuple[str, ...]],
        checks: list[str],
    ) -> None:
        self.name = name
        self.columns = columns  # (name, declared type, not null, pk position)
        self.alias = alias
        self.unique = unique
        self.checks = checks


def _check_clauses(sql: str) -> list[str]:
    """The expressions of the ``CHECK (...)`` constraints in a ``CREATE TABLE`` (our own schema)."""
    found: list[str] = []
    for match in re.finditer(r"\bCHECK\s*\(", sql, re.IGNORECASE):
        depth, i = 1, match.end()
        quote: str | None = None
        while i < len(sql) and depth:
            ch = sql[i]
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "'\"":
                quote = ch
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            i += 1
        if depth == 0:
            found.append(sql[match.end(): i - 1])
    return found


def _drop_code(conn: sqlite3.Connection) -> None:
    """Drop every trigger and view of the import's private copy (they are code, not data)."""
    for kind, name in conn.execute(
        "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
    ).fetchall():
        conn.execute(f"DROP {'TRIGGER' if kind == 'trigger' else 'VIEW'} IF EXISTS {_quote(name)}")


class _Skipped:
    """The rows an import left out, and why."""

    def __init__(self) -> None:
        self.reasons: dict[str, dict[str, int]] = {}
        self.rows: list[dict[str, Any]] = []
        self.count = 0

    def add(self, table: str, key: Any, reason: str) -> None:
        per = self.reasons.setdefault(table, {})
        per[reason] = per.get(reason, 0) + 1
        self.count += 1
        if len(self.rows) < _MAX_LISTED_SKIPS:
            self.rows.append({"table": table, "key": key, "reason": reason})

    def per_table(self) -> dict[str, int]:
        return {t: sum(r.values()) for t, r in self.reasons.items()}


def _json_ok(text: Any) -> int:
    if text is None:
        return 1
    if not isinstance(text, str):
        return 0
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return 0
    return 1


def _config_ok(text: Any, value_type: Any) -> int:
    from .config import decode_value

    if not isinstance(text, str) or not isinstance(value_type, str):
        return 0
    try:
        decode_value(text, value_type)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return 0
    return 1


def _param_ok(name: str, value: Any) -> int:
    from .params import PARAMS_BY_NAME, from_sql

    if value is None or name not in PARAMS_BY_NAME:
        return 1
    if value == _redacted_marker() or (isinstance(value, str) and _URL_PASSWORD_MARK in value):
        return 1  # what an export redacted: the merge puts this database's value back
    try:
        from_sql(name, value)
    except (ValueError, TypeError, OverflowError, RecursionError, KeyError):
        return 0
    return 1


def _cache_entry_size(
    prompt: Any, response_text: Any, response_json: Any, config_json: Any, model_path: Any, identity: Any
) -> int:
    """An imported cache entry's ``size_bytes``, recomputed, never taken from the file.

    The same formula as ``CacheMixin._cache_write`` (cache.py; duplicated here
    so import does not reach into the write path, and kept equal by
    test_export.py's test that compares the two on a real entry).
    """
    from .cache import _ROW_OVERHEAD, _utf8_len

    return (
        len(str(prompt).encode("utf-8", "surrogatepass"))
        + _utf8_len(str(response_text))
        + (_utf8_len(response_json) if isinstance(response_json, str) and response_json else 0)
        + len(str(config_json))
        + len(str(model_path))
        + len(str(identity))
        + _ROW_OVERHEAD
    )


def _sha256(text: Any) -> str:
    import hashlib

    return hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).hexdigest()


def _row_rules(table: _TableSchema, present: set[str]) -> list[tuple[str, str]]:
    """``(reason, SQL that is 1 for a bad row)`` for each check of one table, first failing first."""
    from .._time import MAX_TIMESTAMP, MIN_TIMESTAMP

    rules: list[tuple[str, str]] = []
    ms = _MS_TIME_COLUMNS.get(table.name, frozenset())
    for name, declared, notnull, pk in table.columns:
        if name == table.alias:
            continue
        q = _quote(name)
        if name not in present:
            if notnull:
                rules.append((f"{name}: missing from the file's table (required)", "1"))
            continue
        rules.append((f"{name}: a blob (binary) value", f"typeof({q}) = 'blob'"))
        if notnull or pk:
            rules.append((f"{name}: empty (NULL) in a required column", f"{q} IS NULL"))
        if declared == "INTEGER":
            rules.append((f"{name}: not an integer", f"typeof({q}) NOT IN ('integer', 'null')"))
        elif declared == "REAL":
            rules.append((f"{name}: not a number", f"typeof({q}) NOT IN ('real', 'integer', 'null')"))
            rules.append((f"{name}: not a finite number", f"{q} IS NOT NULL AND abs({q}) > {_FINITE!r}"))
        elif declared == "TEXT":
            rules.append((f"{name}: not text", f"typeof({q}) NOT IN ('text', 'null')"))
        if name in _TIME_COLUMNS or name in ms:
            scale = 1000 if name in ms else 1
            rules.append((
                f"{name}: not a time between the years 1 and 9999",
                f"{q} IS NOT NULL AND NOT ({q} BETWEEN {MIN_TIMESTAMP * scale!r} AND {MAX_TIMESTAMP * scale!r})",
            ))
        if name in _JSON_COLUMNS.get(table.name, ()):
            rules.append((f"{name}: not valid JSON", f"NOT cyllama_json_ok({q})"))
        if table.name == "models":
            rules.append((
                f"{name}: not a valid value of the parameter",
                f"NOT cyllama_param_ok({_sql_text(name)}, {q})",
            ))
    if table.name == "config" and {"value", "value_type"} <= present:
        rules.append(("value: does not match its value_type (e.g. invalid JSON)",
                      "NOT cyllama_config_ok(value, value_type)"))
    names = {c[0] for c in table.columns}
    for expr in table.checks:
        idents = {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr) if w in names}
        if idents <= present:
            rules.append((f"breaks the constraint CHECK ({' '.join(expr.split())})", f"({expr}) IS 0"))
    return rules


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _key_of(row: tuple[Any, ...]) -> Any:
    values = [v if isinstance(v, (str, int, float)) or v is None else repr(v)[:80] for v in row]
    return values[0] if len(values) == 1 else values


def _validate_copy(conn: sqlite3.Connection, schema: dict[str, _TableSchema]) -> _Skipped:
    """Delete the rows of the import copy that this database could not hold; report them.

    Runs on the private copy, before the merge takes the write lock.
    """
    skipped = _Skipped()
    conn.create_function("cyllama_json_ok", 1, _json_ok, deterministic=True)
    conn.create_function("cyllama_config_ok", 2, _config_ok, deterministic=True)
    conn.create_function("cyllama_param_ok", 2, _param_ok, deterministic=True)
    conn.create_function("cyllama_cache_size", 6, _cache_entry_size, deterministic=True)
    conn.create_function("cyllama_sha256", 1, _sha256, deterministic=True)
    copy_tables = set(_user_tables(conn, "main"))
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, table in schema.items():
            if name not in copy_tables:
                continue
            present = {r[1] for r in conn.execute(f"PRAGMA main.table_info({_quote(name)})")}
            key_cols = _KEY_OVERRIDES.get(name) or next(iter(table.unique), None)
            key_sql = (
                ", ".join(_quote(k) for k in key_cols) if key_cols and set(key_cols) <= present else "rowid"
            )
            rules = _row_rules(table, present)
            t = _quote(name)
            if rules:
                case = " ".join(f"WHEN {sql} THEN {_sql_text(reason)}" for reason, sql in rules)
                where = " OR ".join(f"({sql})" for _, sql in rules)
                bad = conn.execute(
                    f"SELECT rowid, CASE {case} END, {key_sql} FROM {t} WHERE {where}"
                ).fetchall()
                for rowid, reason, *key in bad:
                    skipped.add(name, _key_of(tuple(key)), str(reason))
                    conn.execute(f"DELETE FROM {t} WHERE rowid = ?", (rowid,))
            # Two rows with one key: the store holds one (the first is kept).
            for cols in ([*table.unique, *([_KEY_OVERRIDES[name]] if name in _KEY_OVERRIDES else [])]):
                if not set(cols) <= present:
                    continue
                group = ", ".join(_quote(c) for c in cols)
                dupes = conn.execute(
                    f"SELECT rowid, {group} FROM {t} WHERE rowid NOT IN"
                    f" (SELECT MIN(rowid) FROM {t} GROUP BY {group})"
                ).fetchall()
                for rowid, *key in dupes:
                    skipped.add(name, _key_of(tuple(key)), f"a second row with the same {', '.join(cols)}")
                    conn.execute(f"DELETE FROM {t} WHERE rowid = ?", (rowid,))
            if name == "cache" and {
                "size_bytes", "prompt", "response_text", "response_json", "config_json", "model_path",
                "model_identity", "prompt_hash",
            } <= present:
                # Sizes drive the size limit and eviction: recomputed, never trusted.
                conn.execute(
                    "UPDATE cache SET size_bytes = cyllama_cache_size(prompt, response_text,"
                    " response_json, config_json, model_path, model_identity),"
                    " prompt_hash = cyllama_sha256(prompt)"
                )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return skipped


class ExportMixin(StoreBase):
    """``export_database`` / ``import_database``: copies and merges of the whole file."""

    # -- helpers ---------------------------------------------------------------------------

    def _flush_stores(self) -> None:
        # Buffered bookkeeping (e.g. cache hit counts) belongs in the copy.
        run_hooks = getattr(self, "_run_hooks", None)
        if run_hooks is not None:
            run_hooks("_store_flush")

    @contextlib.contextmanager
    def _snapshot_source(self) -> Iterator[sqlite3.Connection]:
        """A connection to this database with a read snapshot pinned for the duration."""
        if self.path == ":memory:":
            # The shared in-memory connection is held under the pool's lock:
            # nothing else can write while we copy.
            with self.pool.read() as conn:
                yield conn
            return
        conn = _open_readonly(self.path, self.settings.busy_timeout)
        try:
            with _pinned_snapshot(conn):
                yield conn
        finally:
            conn.close()

    # -- export ----------------------------------------------------------------------------

    @db_op()
    def export_database(
        self,
        path: str | os.PathLike[str] | IO[str],
        *,
        format: str = "sqlite",
        table: str | None = None,
        overwrite: bool = False,
        include_secrets: bool = False,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Write a consistent copy of the database to ``path``.

        Args:
            path: the file to write (``"~"`` expanded; its folder is created).
                With ``format="jsonl"`` it may also be an open text stream.
            format: ``"sqlite"`` (default): a complete SQLite database made
                with SQLite's backup API; it holds every row committed before
                the export began, even while other processes keep writing.
                ``"jsonl"``: one JSON object per row of ``table``.
            table: the table to write with ``format="jsonl"`` (required there).
            overwrite: replace an existing file (default: refuse).
            include_secrets: keep secret model parameters (``hf_token``,
                ``api_key``, and the same flags inside ``custom_params``);
                by default their values are written as ``"***"``.
            progress: ``progress(done, total)`` called as pages (sqlite) or
                rows (jsonl) are written.

        Returns:
            ``{"path", "format", "bytes", "schema_version", ...}``: for sqlite
            also ``pages`` and ``redacted_secrets``; for jsonl ``table`` and
            ``rows``.
        """
        if format not in ("sqlite", "jsonl"):
            error = ValueError if isinstance(format, str) else TypeError
            raise error(f"format must be 'sqlite' or 'jsonl', got {format!r}")
        if table is not None and not isinstance(table, str):
            raise TypeError(f"table must be a table name (str) or None, got {type(table).__name__}")
        check_bool(overwrite, "overwrite")
        check_bool(include_secrets, "include_secrets")
        check_callable(progress, "progress")
        if format == "jsonl":
            if table is None:
                raise ValueError("format='jsonl' needs table=... (one table per file)")
            return self._export_jsonl(path, table, overwrite, include_secrets, progress)
        if table is not None:
            raise ValueError("table=... only applies to format='jsonl'; sqlite exports every table")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike for format='sqlite', got {type(path).__name__}")
        dest = self._prepare_destination(path, overwrite)
        self._flush_for_read()  # a read: never waits on, or fails for, a write
        tmp = _files.export_temp_name(dest)
        _new_private_file(tmp)
        try:
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                with self._snapshot_source() as src:
                    pages = _backup(src, dst, progress)
                # A self-contained single file, whatever mode the source used.
                dst.execute("PRAGMA journal_mode = DELETE")
                redacted = 0 if include_secrets else self._redact_copy(dst)
                version = _migrations.schema_version(dst)
            finally:
                dst.close()
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return {
            "path": dest,
            "format": "sqlite",
            "bytes": os.path.getsize(dest),
            "pages": pages,
            "schema_version": version,
            "redacted_secrets": redacted,
        }

    def _prepare_destination(self, path: str | os.PathLike[str], overwrite: bool) -> str:
        dest = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if self.path != ":memory:" and _same_file(dest, self.path):
            raise ValueError(f"cannot export the database onto itself ({dest!r})")
        if os.path.isdir(dest):
            raise IsADirectoryError(f"export path {dest!r} is a directory; give a file name")
        if os.path.exists(dest) and not overwrite:
            raise FileExistsError(
                f"export path {dest!r} already exists; choose another name or pass "
                "overwrite=True (cyllama-db export --force)"
            )
        _files.private_makedirs(os.path.dirname(dest))
        # Exports killed before they finished (SIGKILL, power loss) left their
        # temporary copy beside the target: their pid says they are gone.
        _files.remove_stale_exports(os.path.dirname(dest))
        return dest

    def _redact_copy(self, dst: sqlite3.Connection) -> int:
        """Replace secret model parameters in the copy by the redaction marker."""
        if "models" not in _user_tables(dst):
            return 0
        present = {c[0] for c in _columns(dst, "main", "models")}
        marker = _redacted_marker()
        # Overwrite the old values' bytes too, not just unlink them from the b-tree.
        dst.execute("PRAGMA secure_delete = ON")
        changed = 0
        dst.execute("BEGIN IMMEDIATE")
        try:
            for col in _secret_columns():
                if col in present:
                    cur = dst.execute(
                        f"UPDATE models SET {_quote(col)} = ? WHERE {_quote(col)} IS NOT NULL"
                        f" AND {_quote(col)} != ?",
                        (marker, marker),
                    )
                    changed += cur.rowcount
            if "custom_params" in present:
                # The same secrets given as raw flags ({"--api-key": ...}).
                rows = dst.execute(
                    "SELECT rowid, custom_params FROM models WHERE custom_params IS NOT NULL"
                ).fetchall()
                for rowid, text in rows:
                    redacted = _redact_custom_text(text)
                    if redacted is not text:
                        dst.execute(
                            "UPDATE models SET custom_params = ? WHERE rowid = ?", (redacted, rowid)
                        )
                        changed += 1
            # URL passwords (model_url="https://user:PW@host/...") and secret flags
            # written inline, in every other text column.
            text_cols = _plain_text_columns(dst, "main")
            if text_cols:
                listed = ", ".join(_quote(c) for c in text_cols)
                for rowid, *values in dst.execute(f"SELECT rowid, {listed} FROM models").fetchall():
                    for col, value in zip(text_cols, values, strict=True):
                        shown = _redact_text(value)
                        if shown is not value and shown != value:
                            dst.execute(f"UPDATE models SET {_quote(col)} = ? WHERE rowid = ?", (shown, rowid))
                            changed += 1
            dst.execute("COMMIT")
        except BaseException:
            dst.execute("ROLLBACK")
            raise
        return changed

    def _export_jsonl(
        self,
        path: str | os.PathLike[str] | IO[str],
        table: str,
        overwrite: bool,
        include_secrets: bool,
        progress: ProgressCallback | None,
    ) -> dict[str, Any]:
        self._flush_for_read()  # a read: never waits on, or fails for, a write
        with self.pool.read() as conn:
            tables = _user_tables(conn)
        if table not in tables:
            raise ValueError(f"no table {table!r} in the database; tables: {', '.join(tables)}")
        if isinstance(path, (str, os.PathLike)):
            dest = self._prepare_destination(path, overwrite)
            tmp = _files.export_temp_name(dest)
            _new_private_file(tmp)
            try:
                with open(tmp, "w", encoding="utf-8") as handle:
                    rows, version = self._write_jsonl(handle, table, include_secrets, progress)
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
            size: int | None = os.path.getsize(dest)
            where: str = dest
        else:
            rows, version = self._write_jsonl(path, table, include_secrets, progress)
            size = None
            where = getattr(path, "name", "<stream>")
        return {
            "path": where,
            "format": "jsonl",
            "table": table,
            "rows": rows,
            "bytes": size,
            "schema_version": version,
        }

    def _write_jsonl(
        self,
        handle: IO[str],
        table: str,
        include_secrets: bool,
        progress: ProgressCallback | None,
    ) -> tuple[int, int]:
        redacting = not include_secrets and table == "models"
        secrets = set(_secret_columns()) if redacting else set()
        marker = _redacted_marker()
        written = 0
        with self._snapshot_source() as conn:
            version = _migrations.schema_version(conn)
            total = int(conn.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()[0])
            cursor = conn.execute(f"SELECT * FROM {_quote(table)} ORDER BY rowid")
            names = [d[0] for d in cursor.description]
            for row in cursor:
                record = {
                    name: (marker if name in secrets and value is not None else _jsonable(value))
                    for name, value in zip(names, row, strict=True)
                }
                if redacting and "custom_params" in record:
                    text = row[names.index("custom_params")]
                    record["custom_params"] = _jsonable(_redact_custom_text(text))
                if redacting:
                    for name, value in record.items():
                        if name not in secrets and name != "custom_params" and isinstance(value, str):
                            record[name] = _redact_text(value)
                handle.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
                written += 1
                if progress is not None and written % 1000 == 0:
                    progress(written, total)
        if progress is not None:
            progress(written, max(total, written))
        return written, version

    # -- import ----------------------------------------------------------------------------

    @db_op()
    def import_database(
        self,
        path: str | os.PathLike[str],
        *,
        on_conflict: str = "keep",
        progress: ProgressCallback | None = None,
        timeout: float | None = DEFAULT_IMPORT_TIMEOUT,
    ) -> dict[str, Any]:
        """Merge another cyllama-db database file into this one; return a report.

        Cache entries are matched by their key, config and metadata by key,
        models by name; stats, logs and metrics rows are appended (rows
        already present are skipped). A matched row with different content is
        a conflict, settled by ``on_conflict``: ``"keep"`` (default) keeps
        this database's row, ``"replace"`` takes the imported one, ``"newer"``
        takes whichever was updated (else created) later. Secrets that the
        export redacted (columns, secret flags inside ``custom_params``, URL
        passwords) never overwrite stored ones, and are never stored as ``"***"``. The whole merge is one
        transaction: it applies completely or not at all.

        The file is untrusted input. It is read into a private copy, whose
        triggers and views are dropped (and the merge runs with
        ``trusted_schema=OFF``); every row is checked against this
        database's own column types, constraints, time range and JSON
        columns, and a row that fails is skipped and reported, never stored.
        Cache entry sizes are recomputed, not taken from the file.

        A file from an older cyllama-db is upgraded (in a temporary copy; the
        file itself is only read); a file from a newer one raises
        :class:`~cyllama_db.SchemaVersionError`.

        Args:
            path: the file to import.
            on_conflict: ``"keep"``, ``"replace"`` or ``"newer"`` (above).
            progress: ``progress(done, total)`` called as rows are merged.
            timeout: seconds the whole import may take (default 600; None: no
                limit). Past it the import stops with
                :class:`~cyllama_db.errors.ImportTimeoutError` and nothing is written.

        Returns:
            ``{"source", "source_schema_version", "on_conflict", "tables":
            {table: {"mode", "key", "rows", "inserted", "unchanged",
            "duplicates", "conflicts", "replaced", "skipped",
            "skipped_reasons"}}, "conflicts": [{"table", "key",
            "resolution"}], "skipped_rows": [{"table", "key", "reason"}],
            "skipped_row_count", "skipped_tables", "cache_evicted"}``.
        """
        if on_conflict not in ON_CONFLICT:
            error = ValueError if isinstance(on_conflict, str) else TypeError
            raise error(f"on_conflict must be one of {', '.join(ON_CONFLICT)}; got {on_conflict!r}")
        check_callable(progress, "progress")
        limit = _check_timeout(timeout)
        source = os.path.abspath(os.path.expanduser(check_path(path, "path")))
        _check_sqlite_file(source, "import file")
        if self.path != ":memory:" and _same_file(source, self.path):
            raise ValueError(f"cannot import the database into itself ({source!r})")

        import shutil
        import tempfile

        deadline = _Deadline(limit, source)
        # Imports killed before they finished left their working copy behind.
        _files.remove_stale_import_dirs()
        workdir = tempfile.mkdtemp(prefix=_files.import_temp_prefix())  # 0700
        try:
            copy = os.path.join(workdir, "import.db")
            source_version, skipped = self._snapshot_for_import(source, copy, deadline)
            self._flush_stores()
            report = self._merge(copy, on_conflict, progress, deadline)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        for table, entry in report["tables"].items():
            reasons = skipped.reasons.get(table, {})
            entry["skipped"] = sum(reasons.values())
            entry["rows"] += entry["skipped"]
            entry["skipped_reasons"] = dict(reasons)
        report = {
            "source": source,
            "source_schema_version": source_version,
            **report,
            "skipped_rows": skipped.rows,
            "skipped_row_count": skipped.count,
        }
        if skipped.count:
            logger.warning(
                "import of %s skipped %d invalid row(s): %s", source, skipped.count,
                "; ".join(f"{t}: {n}" for t, n in skipped.per_table().items()),
            )
        cleanup = getattr(self, "cleanup_cache", None)
        # Imported entries count against the cache size limit like any others.
        report["cache_evicted"] = int(cleanup() or 0) if callable(cleanup) else 0
        return report

    def _main_schema(self) -> dict[str, _TableSchema]:
        """This database's own tables: what every imported row is checked against."""
        with self.pool.read() as conn:
            derived = _derived_tables(conn)
            schema = {}
            for table in _user_tables(conn, "main"):
                if table in derived:
                    continue
                sql = conn.execute(
                    "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()[0]
                rows = conn.execute(f"PRAGMA main.table_info({_quote(table)})").fetchall()
                columns = [(r[1], str(r[2] or "").upper(), bool(r[3]), int(r[5])) for r in rows]
                alias = _rowid_alias([(c[0], c[1], c[3]) for c in columns])
                unique: list[tuple[str, ...]] = []
                for index in conn.execute(f"PRAGMA main.index_list({_quote(table)})").fetchall():
                    if int(index[2]) != 1:
                        continue
                    info = conn.execute(f"PRAGMA main.index_info({_quote(index[1])})").fetchall()
                    names = tuple(r[2] for r in sorted(info, key=lambda r: r[0]))
                    if names and all(n is not None for n in names) and names != (alias,):
                        unique.append(names)
                schema[table] = _TableSchema(table, columns, alias, unique, _check_clauses(str(sql or "")))
        return schema

    def _snapshot_for_import(self, source: str, copy: str, deadline: _Deadline) -> tuple[int, _Skipped]:
        """Copy ``source`` to ``copy`` (a fixed snapshot), disarm it, upgrade it and drop invalid rows."""
        src = _open_readonly(source, self.settings.busy_timeout)
        try:
            src.execute("PRAGMA trusted_schema = OFF")
            if "schema_version" not in {
                r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }:
                raise ValueError(
                    f"import file {source!r} is not a cyllama-db database (it has no schema_version table)"
                )
            # Refuse before copying anything: a newer file's tables may mean something else.
            _migrations.check_not_newer(src, source)
            version = _migrations.schema_version(src)
            _new_private_file(copy)
            dst = sqlite3.connect(copy, isolation_level=None)
            try:
                dst.execute("PRAGMA trusted_schema = OFF")
                with deadline.watch(dst):
                    with _pinned_snapshot(src):
                        _backup(src, dst, None)
                    dst.execute("PRAGMA journal_mode = DELETE")
                    # The file's own code must never run: not while it is upgraded
                    # below, and not inside the merge's write transaction.
                    _drop_code(dst)
                    _migrations.migrate(dst, copy)
                    _drop_code(dst)
                    skipped = _validate_copy(dst, self._main_schema())
            finally:
                dst.close()
        except sqlite3.Error as exc:
            if deadline.expired:
                raise deadline.error() from exc
            raise ValueError(
                f"import file {source!r} cannot be read as a cyllama-db database: {exc}"
            ) from exc
        finally:
            src.close()
        return version, skipped

    def _merge(
        self, copy: str, on_conflict: str, progress: ProgressCallback | None, deadline: _Deadline
    ) -> dict[str, Any]:
        with self.pool.read() as conn:
            conn.execute(f"ATTACH DATABASE ? AS {_ALIAS}", (copy,))
            trusted = conn.execute("PRAGMA trusted_schema").fetchone()[0]
            conn.execute("PRAGMA trusted_schema = OFF")
        try:
            with self.pool.transaction() as conn, deadline.watch(conn):
                return self._merge_tables(conn, on_conflict, progress)
        except sqlite3.Error as exc:
            if deadline.expired:
                raise deadline.error() from exc
            raise
        finally:
            with self.pool.read() as conn:
                conn.execute(f"PRAGMA trusted_schema = {int(trusted)}")
                conn.execute(f"DETACH DATABASE {_ALIAS}")

    def _merge_tables(
        self, conn: sqlite3.Connection, on_conflict: str, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        main_tables = set(_user_tables(conn, "main"))
        import_tables = _user_tables(conn, _ALIAS)
        order = {name: i for i, name in enumerate(_TABLE_ORDER)}
        tables = sorted(
            (t for t in import_tables if t in main_tables),
            key=lambda t: (order.get(t, len(order)), t),
        )
        derived = _derived_tables(conn)
        tables = [t for t in tables if t not in derived]
        skipped = sorted(t for t in import_tables if t not in main_tables)
        self._prepare_import_copy(conn, tables)

        counts = {
            t: int(conn.execute(f"SELECT COUNT(*) FROM {_ALIAS}.{_quote(t)}").fetchone()[0])
            for t in tables
        }
        total = sum(counts.values())
        done = 0
        report_tables: dict[str, Any] = {}
        conflicts: list[dict[str, Any]] = []
        conflict_count = 0
        for table in tables:
            main_cols = _columns(conn, "main", table)
            import_names = {c[0] for c in _columns(conn, _ALIAS, table)}
            cols = [c for c in main_cols if c[0] in import_names]
            alias = _rowid_alias(main_cols)
            key = _natural_key(conn, table, main_cols)
            if key is not None and not all(k in import_names for k in key):
                key = None
            base = done

            def table_progress(n: int, base: int = base) -> None:
                if progress is not None:
                    progress(base + n, total)

            if key is None:
                entry = self._append(conn, table, cols, alias, counts[table], table_progress)
            else:
                entry, found = self._merge_keyed(conn, table, cols, alias, key, on_conflict)
                conflict_count += len(found)
                room = _MAX_LISTED_CONFLICTS - len(conflicts)
                conflicts.extend(found[: max(room, 0)])
            entry["rows"] = counts[table]
            report_tables[table] = entry
            done += counts[table]
            if progress is not None:
                progress(done, total)
        if progress is not None and total == 0:
            progress(0, 0)
        return {
            "on_conflict": on_conflict,
            "tables": report_tables,
            "conflicts": conflicts,
            "conflict_count": conflict_count,
            "skipped_tables": skipped,
        }

    def _prepare_import_copy(self, conn: sqlite3.Connection, tables: list[str]) -> None:
        """Edit the private copy so the generic merge does the right thing."""
        if "metadata" in tables:
            conn.execute(
                f"DELETE FROM {_ALIAS}.metadata WHERE key IN ({','.join('?' * len(_NEVER_IMPORTED_METADATA))})",
                _NEVER_IMPORTED_METADATA,
            )
        if "models" in tables:
            import_cols = {c[0] for c in _columns(conn, _ALIAS, "models")}
            main_cols = {c[0] for c in _columns(conn, "main", "models")}
            marker = _redacted_marker()
            for col in _secret_columns():
                if col in import_cols and col in main_cols and "name" in import_cols:
                    # A redacted secret means "not exported", never the literal "***":
                    # keep the stored one (or none for a new model).
                    q = _quote(col)
                    conn.execute(
                        f"UPDATE {_ALIAS}.models SET {q} = (SELECT m.{q} FROM main.models m"
                        f" WHERE m.name = {_ALIAS}.models.name) WHERE {q} = ?",
                        (marker,),
                    )
            if {"custom_params", "name"} <= import_cols and "custom_params" in main_cols:
                # The same rule for secret flags inside custom_params, flag by flag.
                rows = conn.execute(
                    f"SELECT s.rowid, s.custom_params, m.custom_params FROM {_ALIAS}.models AS s"
                    " LEFT JOIN main.models AS m ON m.name = s.name"
                    " WHERE instr(s.custom_params, ?) > 0",
                    (marker,),
                ).fetchall()
                for rowid, incoming, stored in rows:
                    restored = _restore_custom_text(incoming, stored)
                    if restored is not incoming:
                        conn.execute(
                            f"UPDATE {_ALIAS}.models SET custom_params = ? WHERE rowid = ?",
                            (restored, rowid),
                        )
            if "name" in import_cols:
                # A URL whose password the export hid: this database's own URL when it
                # is the same one, else the imported text (it holds no secret).
                for col in _plain_text_columns(conn, _ALIAS):
                    if col not in main_cols:
                        continue
                    q = _quote(col)
                    rows = conn.execute(
                        f"SELECT s.rowid, s.{q}, m.{q} FROM {_ALIAS}.models AS s"
                        " JOIN main.models AS m ON m.name = s.name"
                        f" WHERE instr(s.{q}, '****@') > 0 OR instr(s.{q}, ?) > 0",
                        (marker,),
                    ).fetchall()
                    for rowid, incoming, stored in rows:
                        if isinstance(stored, str) and _redact_text(stored) == incoming:
                            conn.execute(f"UPDATE {_ALIAS}.models SET {q} = ? WHERE rowid = ?", (stored, rowid))

    def _append(
        self,
        conn: sqlite3.Connection,
        table: str,
        cols: list[tuple[str, str, int]],
        alias: str | None,
        rows: int,
        progress: Callable[[int], None],
    ) -> dict[str, Any]:
        names = [c[0] for c in cols if c[0] != alias]
        col_list = ", ".join(_quote(n) for n in names)
        same = " AND ".join(f"m.{_quote(n)} IS s.{_quote(n)}" for n in names) or "1"
        t = _quote(table)
        inserted = 0
        bounds = conn.execute(f"SELECT MIN(rowid), MAX(rowid) FROM {_ALIAS}.{t}").fetchone()
        if bounds[0] is not None:
            low = int(bounds[0]) - 1
            seen = 0
            while low < int(bounds[1]):
                high = low + _MERGE_CHUNK_ROWS
                cur = conn.execute(
                    f"INSERT INTO main.{t} ({col_list}) SELECT {col_list} FROM {_ALIAS}.{t} AS s"
                    f" WHERE s.rowid > ? AND s.rowid <= ?"
                    f" AND NOT EXISTS (SELECT 1 FROM main.{t} AS m WHERE {same})"
                    " ORDER BY s.rowid",
                    (low, high),
                )
                inserted += cur.rowcount
                seen += int(
                    conn.execute(
                        f"SELECT COUNT(*) FROM {_ALIAS}.{t} WHERE rowid > ? AND rowid <= ?",
                        (low, high),
                    ).fetchone()[0]
                )
                progress(seen)
                low = high
        return {
            "mode": "append",
            "key": None,
            "inserted": inserted,
            "duplicates": rows - inserted,
            "unchanged": 0,
            "conflicts": 0,
            "replaced": 0,
        }

    def _merge_keyed(
        self,
        conn: sqlite3.Connection,
        table: str,
        cols: list[tuple[str, str, int]],
        alias: str | None,
        key: tuple[str, ...],
        on_conflict: str,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        t = _quote(table)
        names = [c[0] for c in cols if c[0] != alias]
        col_list = ", ".join(_quote(n) for n in names)
        match = " AND ".join(f"m.{_quote(k)} = s.{_quote(k)}" for k in key)
        content = [n for n in names if n not in key and n not in _BOOKKEEPING]
        if table in _CONTENT_OVERRIDES:
            content = [n for n in content if n in _CONTENT_OVERRIDES[table]]
        same = " AND ".join(f"m.{_quote(n)} IS s.{_quote(n)}" for n in content) or "1"
        stamp = next((c for c in ("updated_at", "created_at") if c in names), None)
        key_cols = ", ".join(f"s.{_quote(k)}" for k in key)
        stamps = f", m.{_quote(stamp)}, s.{_quote(stamp)}" if stamp else ", NULL, NULL"

        differing = conn.execute(
            f"SELECT {key_cols}{stamps} FROM {_ALIAS}.{t} AS s JOIN main.{t} AS m ON {match}"
            f" WHERE NOT ({same})"
        ).fetchall()
        matched = int(
            conn.execute(
                f"SELECT COUNT(*) FROM {_ALIAS}.{t} AS s JOIN main.{t} AS m ON {match}"
            ).fetchone()[0]
        )
        cur = conn.execute(
            f"INSERT INTO main.{t} ({col_list}) SELECT {col_list} FROM {_ALIAS}.{t} AS s"
            f" WHERE NOT EXISTS (SELECT 1 FROM main.{t} AS m WHERE {match}) ORDER BY s.rowid"
        )
        inserted = cur.rowcount

        replaced = 0
        found: list[dict[str, Any]] = []
        updatable = [n for n in names if n not in key]
        set_clause = ", ".join(f"{_quote(n)} = s.{_quote(n)}" for n in updatable)
        key_where = " AND ".join(f"main.{t}.{_quote(k)} = ?" for k in key)
        src_where = " AND ".join(f"s.{_quote(k)} = ?" for k in key)
        for row in differing:
            key_values = tuple(row[: len(key)])
            current_stamp, incoming_stamp = row[len(key)], row[len(key) + 1]
            take = on_conflict == "replace" or (
                on_conflict == "newer"
                and incoming_stamp is not None
                and (current_stamp is None or incoming_stamp > current_stamp)
            )
            if take and updatable:
                conn.execute(
                    f"UPDATE main.{t} SET {set_clause} FROM (SELECT * FROM {_ALIAS}.{t} AS s"
                    f" WHERE {src_where}) AS s WHERE {key_where}",
                    key_values + key_values,
                )
                replaced += 1
            found.append(
                {
                    "table": table,
                    "key": key_values[0] if len(key_values) == 1 else list(key_values),
                    "resolution": "replaced" if take else "kept",
                }
            )
        entry = {
            "mode": "key",
            "key": list(key),
            "inserted": inserted,
            "unchanged": matched - len(differing),
            "duplicates": 0,
            "conflicts": len(differing),
            "replaced": replaced,
        }
        return entry, found
