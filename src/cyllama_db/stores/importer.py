"""Import of a whole database: ``db.import_database(path)`` merges another file into this one.

The merge follows each table's :class:`~cyllama_db.db.policy.TablePolicy`
(declared by the store that owns the table; see ``db/policy.py``):

- ``"keyed"`` tables match rows by their natural key; a matched row with
  different content is a *conflict*, which ``on_conflict`` settles
  (``"keep"`` the current row, ``"replace"`` it with the imported one, or
  take the ``"newer"`` of the two by the policy's ``newer_by`` column); every
  conflict is listed in the report;
- ``"append"`` tables get the rows not already present (importing the same
  file twice is harmless);
- ``"derived"`` tables (and any a trigger writes) are rebuilt by triggers;
- a table no store declares is merged by its primary key, else a unique
  column, else appended.

The file is untrusted: it is read into a private copy whose triggers and views
are dropped, upgraded there, and every row is checked against this database's
own schema and the policies' checks before the merge takes the write lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._validate import check_callable, check_path
from ..db import files as _files
from ..db import migrations as _migrations
from ..db.policy import TablePolicy, conflict_record, incoming_wins, keyed_report
from ..db.store import Store, db_op
from .export import (
    ProgressCallback,
    _backup,
    _columns,
    _derived_tables,
    _new_private_file,
    _open_readonly,
    _pinned_snapshot,
    _quote,
    _redact_text,
    _redacted_marker,
    _restore_custom_text,
    _rowid_alias,
    _same_file,
    _scanned_text_columns,
    _user_tables,
    policy_map,
    policy_of,
)

logger = logging.getLogger("cyllama_db")

__all__ = ["DEFAULT_IMPORT_TIMEOUT", "ON_CONFLICT", "Importer"]

#: What ``import_database(on_conflict=...)`` accepts.
ON_CONFLICT = ("keep", "replace", "newer")

#: Seconds ``import_database`` may take by default (copy, checks and merge together).
DEFAULT_IMPORT_TIMEOUT = 600.0

_SQLITE_MAGIC = b"SQLite format 3\x00"
_ALIAS = "cyllama_import"
_MERGE_CHUNK_ROWS = 20_000
_MAX_LISTED_CONFLICTS = 1000
_MAX_LISTED_SKIPS = 1000
_FINITE = 1.7976931348623157e308


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


# -- checking the private copy -------------------------------------------------------------


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


class _Functions:
    """The policies' checks, registered as SQL functions of the private copy."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.names: dict[tuple[int, int], str] = {}
        conn.create_function("cyllama_json_ok", 1, _json_ok, deterministic=True)
        conn.create_function("cyllama_utf8_ok", 1, _utf8_ok, deterministic=True)

    def __call__(self, fn: Callable[..., Any], nargs: int) -> str:
        """The SQL name of ``fn`` taking ``nargs`` arguments (registered on first use)."""
        key = (id(fn), nargs)
        if key not in self.names:
            name = f"cyllama_policy_{len(self.names)}"
            self.conn.create_function(name, nargs, fn, deterministic=True)
            self.names[key] = name
        return self.names[key]


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _utf8_ok(data: Any) -> int:
    if not isinstance(data, bytes):
        return 1
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return 0
    return 1


def _row_rules(
    table: _TableSchema, present: set[str], policy: TablePolicy, fns: _Functions, server: bool = False
) -> list[tuple[str, str]]:
    """``(reason, SQL that is 1 for a bad row)`` for each check of one table, first failing first."""
    from .._time import MAX_TIMESTAMP, MIN_TIMESTAMP

    rules: list[tuple[str, str]] = []
    times = policy.checked_times
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
            if server:
                # What SQLite stores but a server's text type refuses (it would fail the whole import).
                rules.append((
                    f"{name}: not valid UTF-8 text",
                    f"typeof({q}) = 'text' AND NOT cyllama_utf8_ok(CAST({q} AS BLOB))",
                ))
                rules.append((
                    f"{name}: holds a NUL character, which PostgreSQL cannot store",
                    f"typeof({q}) = 'text' AND instr(CAST({q} AS BLOB), x'00') > 0",
                ))
        if name in times:
            # Out of the years 1-9999 a time cannot become a datetime (it broke every listing).
            scale = times[name]
            rules.append((
                f"{name}: not a time between the years 1 and 9999",
                f"{q} IS NOT NULL AND NOT ({q} BETWEEN {MIN_TIMESTAMP * scale!r} AND {MAX_TIMESTAMP * scale!r})",
            ))
        if name in policy.json_columns:
            rules.append((f"{name}: not valid JSON", f"NOT cyllama_json_ok({q})"))
        if policy.column_check is not None:
            rules.append((
                f"{name}: {policy.column_check.reason}",
                f"NOT {fns(policy.column_check.check, 2)}({_sql_text(name)}, {q})",
            ))
    for check in policy.row_checks:
        if set(check.columns) <= present:
            args = ", ".join(_quote(c) for c in check.columns)
            rules.append((check.reason, f"NOT {fns(check.check, len(check.columns))}({args})"))
    names = {c[0] for c in table.columns}
    for expr in table.checks:
        idents = {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr) if w in names}
        if idents <= present:
            rules.append((f"breaks the constraint CHECK ({' '.join(expr.split())})", f"({expr}) IS 0"))
    return rules


def _key_of(row: tuple[Any, ...]) -> Any:
    values = [v if isinstance(v, (str, int, float)) or v is None else repr(v)[:80] for v in row]
    return values[0] if len(values) == 1 else values


def _validate_copy(
    conn: sqlite3.Connection,
    schema: dict[str, _TableSchema],
    found: Mapping[str, TablePolicy],
    server: bool = False,
) -> _Skipped:
    """Delete the rows of the import copy that this database could not hold; report them.

    Runs on the private copy, before the merge takes the write lock.
    ``server``: the rows go to a database server (PostgreSQL), whose text
    columns refuse what SQLite's take (invalid UTF-8, NUL characters).
    """
    skipped = _Skipped()
    fns = _Functions(conn)
    copy_tables = set(_user_tables(conn, "main"))
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name, table in schema.items():
            if name not in copy_tables:
                continue
            policy = policy_of(found, name)
            present = {r[1] for r in conn.execute(f"PRAGMA main.table_info({_quote(name)})")}
            key_cols: tuple[str, ...] | None = policy.key or next(iter(table.unique), None)
            key_sql = (
                ", ".join(_quote(k) for k in key_cols) if key_cols and set(key_cols) <= present else "rowid"
            )
            rules = _row_rules(table, present, policy, fns, server)
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
            for cols in dict.fromkeys([*table.unique, *([policy.key] if policy.key else [])]):
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
            if policy.recomputed and policy.recompute_inputs() <= present:
                # Computed again, never trusted (e.g. sizes drive the size limit and eviction).
                sets = ", ".join(
                    f"{_quote(r.column)} = {fns(r.function, len(r.inputs))}"
                    f"({', '.join(_quote(c) for c in r.inputs)})"
                    for r in policy.recomputed
                )
                conn.execute(f"UPDATE {t} SET {sets}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return skipped


def _schema_of(conn: sqlite3.Connection, found: Mapping[str, TablePolicy]) -> dict[str, _TableSchema]:
    """The tables of a SQLite schema (not the derived ones), as the import's checks need them."""
    derived = _derived_tables(conn, found.values())
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


def _natural_key(
    conn: sqlite3.Connection, policy: TablePolicy, cols: list[tuple[str, str, int]]
) -> tuple[str, ...] | None:
    """The columns that identify a row across databases, or None (append)."""
    if policy.merge == "append":
        return None
    if policy.key:
        return policy.key
    alias = _rowid_alias(cols)
    pks = tuple(c[0] for c in sorted((c for c in cols if c[2] > 0), key=lambda c: c[2]))
    if pks and alias is None:
        return pks
    for row in conn.execute(f"PRAGMA main.index_list({_quote(policy.table)})").fetchall():
        if int(row[2]) != 1:  # not unique
            continue
        info = conn.execute(f"PRAGMA main.index_info({_quote(row[1])})").fetchall()
        names = tuple(r[2] for r in sorted(info, key=lambda r: r[0]))
        if names and all(n is not None for n in names):
            return names
    return None


# -- import --------------------------------------------------------------------------------


class Importer(Store):
    """Merges another database file into this one (``db.import_database``).

    Not one of ``db.stores``: it owns no tables, and applies the stores'
    policies (:func:`~cyllama_db.stores.export.policies`).
    """

    name = "importer"

    @db_op()
    def merge(
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

        found = policy_map(self.db)
        deadline = _Deadline(limit, source)
        # Imports killed before they finished left their working copy behind.
        _files.remove_stale_import_dirs()
        workdir = tempfile.mkdtemp(prefix=_files.import_temp_prefix())  # 0700
        try:
            copy = os.path.join(workdir, "import.db")
            source_version, skipped = self._snapshot_for_import(source, copy, deadline, found)
            # Buffered bookkeeping (e.g. cache hit counts) is written before the merge.
            self.db.flush()
            report = self._merge(copy, on_conflict, progress, deadline, found)
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
        # Imported entries count against the cache size limit like any others.
        report["cache_evicted"] = int(self.db.cleanup_cache() or 0)
        return report

    def _main_schema(self, found: Mapping[str, TablePolicy]) -> dict[str, _TableSchema]:
        """This database's own tables: what every imported row is checked against.

        On a server (PostgreSQL) it is this version's SQLite schema, which
        the server's tables mirror (:func:`~cyllama_db.stores.transfer.our_schema`).
        """
        if self.backend.name != "sqlite":
            from .transfer import our_schema

            ours = our_schema()
            try:
                return _schema_of(ours, found)
            finally:
                ours.close()
        with self.pool.read() as conn:
            return _schema_of(conn, found)

    def _snapshot_for_import(
        self, source: str, copy: str, deadline: _Deadline, found: Mapping[str, TablePolicy]
    ) -> tuple[int, _Skipped]:
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
                    skipped = _validate_copy(
                        dst, self._main_schema(found), found, server=self.backend.name != "sqlite"
                    )
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
        self,
        copy: str,
        on_conflict: str,
        progress: ProgressCallback | None,
        deadline: _Deadline,
        found: Mapping[str, TablePolicy],
    ) -> dict[str, Any]:
        if self.backend.name != "sqlite":
            # A server cannot ATTACH the file: its rows are sent over (transfer.py).
            from .transfer import merge_into_server, our_schema

            ours = our_schema()
            try:
                return merge_into_server(self.backend, ours, copy, on_conflict, progress, deadline, found)
            finally:
                ours.close()
        with self.pool.read() as conn:
            conn.execute(f"ATTACH DATABASE ? AS {_ALIAS}", (copy,))
            trusted = conn.execute("PRAGMA trusted_schema").fetchone()[0]
            conn.execute("PRAGMA trusted_schema = OFF")
        try:
            with self.pool.transaction() as conn, deadline.watch(conn):
                return self._merge_tables(conn, on_conflict, progress, found)
        except sqlite3.Error as exc:
            if deadline.expired:
                raise deadline.error() from exc
            raise
        finally:
            with self.pool.read() as conn:
                conn.execute(f"PRAGMA trusted_schema = {int(trusted)}")
                conn.execute(f"DETACH DATABASE {_ALIAS}")

    def _merge_tables(
        self,
        conn: sqlite3.Connection,
        on_conflict: str,
        progress: ProgressCallback | None,
        found: Mapping[str, TablePolicy],
    ) -> dict[str, Any]:
        main_tables = set(_user_tables(conn, "main"))
        import_tables = _user_tables(conn, _ALIAS)
        order = {name: i for i, name in enumerate(found)}
        tables = sorted(
            (t for t in import_tables if t in main_tables),
            key=lambda t: (order.get(t, len(order)), t),
        )
        derived = _derived_tables(conn, found.values())
        tables = [t for t in tables if t not in derived]
        skipped = sorted(t for t in import_tables if t not in main_tables)
        self._prepare_import_copy(conn, tables, found)

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
            policy = policy_of(found, table)
            main_cols = _columns(conn, "main", table)
            import_names = {c[0] for c in _columns(conn, _ALIAS, table)}
            cols = [c for c in main_cols if c[0] in import_names]
            alias = _rowid_alias(main_cols)
            key = _natural_key(conn, policy, main_cols)
            if key is not None and not all(k in import_names for k in key):
                key = None
            base = done

            def table_progress(n: int, base: int = base) -> None:
                if progress is not None:
                    progress(base + n, total)

            if key is None:
                entry = self._append(conn, table, cols, alias, counts[table], table_progress)
            else:
                entry, listed = self._merge_keyed(conn, policy, cols, alias, key, on_conflict)
                conflict_count += len(listed)
                room = _MAX_LISTED_CONFLICTS - len(conflicts)
                conflicts.extend(listed[: max(room, 0)])
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

    def _prepare_import_copy(
        self, conn: sqlite3.Connection, tables: list[str], found: Mapping[str, TablePolicy]
    ) -> None:
        """Edit the private copy so the generic merge does the right thing."""
        for table in tables:
            policy = found.get(table)
            if policy is None:
                continue
            if policy.local_keys:
                # This database's own rows: never imported.
                conn.execute(
                    f"DELETE FROM {_ALIAS}.{_quote(table)} WHERE {_quote(policy.key[0])}"
                    f" IN ({','.join('?' * len(policy.local_keys))})",
                    policy.local_keys,
                )
            if policy.redacts:
                self._restore_secrets(conn, policy)

    def _restore_secrets(self, conn: sqlite3.Connection, policy: TablePolicy) -> None:
        """A redacted secret means "not exported", never the literal ``"***"``: keep the
        stored one (or none for a new row)."""
        t = _quote(policy.table)
        import_cols = {c[0] for c in _columns(conn, _ALIAS, policy.table)}
        main_cols = {c[0] for c in _columns(conn, "main", policy.table)}
        if not policy.key or not set(policy.key) <= import_cols:
            return
        marker = _redacted_marker()
        this_row = " AND ".join(f"m.{_quote(k)} = {_ALIAS}.{t}.{_quote(k)}" for k in policy.key)
        same_key = " AND ".join(f"m.{_quote(k)} = s.{_quote(k)}" for k in policy.key)
        for col in policy.secret_columns:
            if col in import_cols and col in main_cols:
                q = _quote(col)
                conn.execute(
                    f"UPDATE {_ALIAS}.{t} SET {q} = (SELECT m.{q} FROM main.{t} m"
                    f" WHERE {this_row}) WHERE {q} = ?",
                    (marker,),
                )
        for col in policy.secret_flag_columns:
            if col in import_cols and col in main_cols:
                # The same rule for secret flags inside the flags column, flag by flag.
                q = _quote(col)
                rows = conn.execute(
                    f"SELECT s.rowid, s.{q}, m.{q} FROM {_ALIAS}.{t} AS s"
                    f" LEFT JOIN main.{t} AS m ON {same_key}"
                    f" WHERE instr(s.{q}, ?) > 0",
                    (marker,),
                ).fetchall()
                for rowid, incoming, stored in rows:
                    restored = _restore_custom_text(incoming, stored)
                    if restored is not incoming:
                        conn.execute(
                            f"UPDATE {_ALIAS}.{t} SET {q} = ? WHERE rowid = ?", (restored, rowid)
                        )
        # A URL whose password the export hid: this database's own URL when it
        # is the same one, else the imported text (it holds no secret).
        for col in _scanned_text_columns(conn, _ALIAS, policy):
            if col not in main_cols:
                continue
            q = _quote(col)
            rows = conn.execute(
                f"SELECT s.rowid, s.{q}, m.{q} FROM {_ALIAS}.{t} AS s"
                f" JOIN main.{t} AS m ON {same_key}"
                f" WHERE instr(s.{q}, '****@') > 0 OR instr(s.{q}, ?) > 0",
                (marker,),
            ).fetchall()
            for rowid, incoming, stored in rows:
                if isinstance(stored, str) and _redact_text(stored) == incoming:
                    conn.execute(f"UPDATE {_ALIAS}.{t} SET {q} = ? WHERE rowid = ?", (stored, rowid))

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
        policy: TablePolicy,
        cols: list[tuple[str, str, int]],
        alias: str | None,
        key: tuple[str, ...],
        on_conflict: str,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        table = policy.table
        t = _quote(table)
        names = [c[0] for c in cols if c[0] != alias]
        col_list = ", ".join(_quote(n) for n in names)
        match = " AND ".join(f"m.{_quote(k)} = s.{_quote(k)}" for k in key)
        content, stamp = policy.compared(names, key)
        same = " AND ".join(f"m.{_quote(n)} IS s.{_quote(n)}" for n in content) or "1"
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
            take = incoming_wins(on_conflict, current_stamp, incoming_stamp)
            if take and updatable:
                conn.execute(
                    f"UPDATE main.{t} SET {set_clause} FROM (SELECT * FROM {_ALIAS}.{t} AS s"
                    f" WHERE {src_where}) AS s WHERE {key_where}",
                    key_values + key_values,
                )
                replaced += 1
            found.append(conflict_record(table, key_values, take))
        return keyed_report(key, inserted, matched, len(differing), replaced), found
