"""Moving data between engines: a SQLite file out of, or into, a database server (PostgreSQL).

``db.export_database(path)`` and ``db.import_database(path)`` on a
``postgresql://`` database use the same policies, checks and report as
between two SQLite files (``export.py``, ``importer.py``); only the copying
differs, since SQLite's backup API and ``ATTACH`` cannot reach a server:

- **export** creates a fresh SQLite file with this version's schema (the
  SQLite migrations), and copies every table's rows from one pinned
  snapshot of the server (:meth:`~cyllama_db.db.backend.Backend.snapshot`)
  in chunks. Secrets are redacted per policy *before* a row is written, so
  they never reach the file. Tables derived from others (rollups, totals)
  are copied as the server holds them, after the rows they derive from.
  The result is an ordinary cyllama-db file.
- **import** checks the incoming file exactly as between SQLite files (its
  private, disarmed, upgraded copy, every row checked against this
  version's SQLite schema; rows PostgreSQL could not hold, with a NUL
  character or invalid UTF-8 text, are skipped too). The checked rows go to
  temporary tables on the server, and each table is merged from there by its
  policy in one transaction: keyed tables by their natural key with
  ``on_conflict``, append tables with new ids (a row already present is
  skipped). Derived tables are rebuilt: where the server's own triggers
  maintain them nothing is needed; else the new rows' contributions are
  computed by this version's SQLite triggers in a scratch in-memory
  database and added to the server's rows (numbers summed, text kept).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..db import files as _files
from ..db import migrations as _migrations
from ..db.policy import TablePolicy, conflict_record, incoming_wins, keyed_report
from .export import (
    ProgressCallback,
    _columns,
    _derived_tables,
    _new_private_file,
    _quote,
    _redact_custom_text,
    _redact_text,
    _redacted_marker,
    _restore_custom_text,
    _rowid_alias,
    _scanned_text_columns,
    _user_tables,
    policies,
    policy_of,
)

if TYPE_CHECKING:
    from ..db.backend import Backend
    from .export import Exporter
    from .importer import _Deadline

__all__ = ["export_to_sqlite", "merge_into_server", "our_schema"]

logger = logging.getLogger("cyllama_db")

_CHUNK_ROWS = 5000
_ROW = "cyllama_row"  # the incoming file's rowid, in the server's temporary tables
_INSERT_TRIGGER = re.compile(r"\bAFTER\s+INSERT\s+ON\s+[\"`\[]?(\w+)", re.IGNORECASE)


def our_schema() -> sqlite3.Connection:
    """A private in-memory SQLite database with this version's schema (every migration applied).

    It stands for "our schema" where the database itself is not SQLite: the
    tables an export writes, the columns and checks an import holds rows to.
    """
    conn = sqlite3.connect(":memory:", isolation_level=None)
    _migrations.migrate(conn, ":memory:")
    return conn


def _ordered(tables: set[str], found: Mapping[str, TablePolicy]) -> list[str]:
    order = {name: i for i, name in enumerate(found)}
    return sorted(tables, key=lambda t: (order.get(t, len(order)), t))


# -- export --------------------------------------------------------------------------------


class _RowRedactor:
    """Hides one table's secrets in each row before it is written (the rules of ``_redact_table``)."""

    def __init__(self, conn: sqlite3.Connection, policy: TablePolicy, names: Sequence[str]) -> None:
        self.marker = _redacted_marker()
        self.secrets = [i for i, n in enumerate(names) if n in policy.secret_columns]
        self.flags = [i for i, n in enumerate(names) if n in policy.secret_flag_columns]
        scanned = set(_scanned_text_columns(conn, "main", policy))
        self.text = [i for i, n in enumerate(names) if n in scanned]
        self.changed = 0

    def __call__(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for i in self.secrets:
            if values[i] is not None and values[i] != self.marker:
                values[i] = self.marker
                self.changed += 1
        for i in self.flags:
            if values[i] is not None:
                redacted = _redact_custom_text(values[i])
                if redacted is not values[i]:
                    values[i] = redacted
                    self.changed += 1
        for i in self.text:
            shown = _redact_text(values[i])
            if shown is not values[i] and shown != values[i]:
                values[i] = shown
                self.changed += 1
        return values


def export_to_sqlite(
    exporter: Exporter, dest: str, include_secrets: bool, progress: ProgressCallback | None
) -> dict[str, Any]:
    """Write the server database behind ``exporter`` to the SQLite file ``dest`` (prepared by the caller)."""
    from .search import CACHE_INDEX, LOGS_INDEX, sync_index

    backend: Backend = exporter.backend
    found = {p.table: p for p in policies(exporter.db)}
    tmp = _files.export_temp_name(dest)
    _new_private_file(tmp)
    redacted = 0
    try:
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            _migrations.migrate(dst, tmp)
            file_tables = set(_user_tables(dst))
            derived = _derived_tables(dst, found.values())
            with backend.snapshot() as src:
                server_tables = set(backend.table_names(src))
                common = file_tables & server_tables
                # Rows first, then what derives from them (replacing what the
                # file's triggers computed while the rows went in).
                tables = [t for t in _ordered(common, found) if t not in derived]
                tables += [t for t in _ordered(common, found) if t in derived]
                plan: list[tuple[str, list[str], int]] = []
                for table in tables:
                    on_server = set(backend.columns(src, table))
                    names = [c[0] for c in _columns(dst, "main", table) if c[0] in on_server]
                    count = int(src.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()[0])
                    plan.append((table, names, count))
                total = sum(p[2] for p in plan)
                done = 0
                dst.execute("BEGIN IMMEDIATE")
                try:
                    for table, names, _count in plan:
                        policy = policy_of(found, table)
                        redact = (
                            _RowRedactor(dst, policy, names) if policy.redacts and not include_secrets else None
                        )
                        if table in derived:
                            dst.execute(f"DELETE FROM {_quote(table)}")
                        col_list = ", ".join(_quote(n) for n in names)
                        insert = (
                            f"INSERT OR REPLACE INTO {_quote(table)} ({col_list})"
                            f" VALUES ({', '.join('?' * len(names))})"
                        )
                        keys = [c[0] for c in sorted(
                            (c for c in _columns(dst, "main", table) if c[2] > 0), key=lambda c: c[2]
                        ) if c[0] in names] or names[:1]
                        order = ", ".join(_quote(k) for k in keys)
                        for rows in backend.stream(src, f"SELECT {col_list} FROM {_quote(table)} ORDER BY {order}",
                                                   (), _CHUNK_ROWS):
                            dst.executemany(insert, rows if redact is None else map(redact, rows))
                            done += len(rows)
                            if progress is not None:
                                progress(done, total)
                        if redact is not None:
                            redacted += redact.changed
                    # The file's search indexes, so it searches without a first sync.
                    sync_index(dst, LOGS_INDEX)
                    sync_index(dst, CACHE_INDEX)
                    dst.execute("COMMIT")
                except BaseException:
                    if dst.in_transaction:
                        dst.execute("ROLLBACK")
                    raise
            if progress is not None and total == 0:
                progress(0, 0)
            dst.execute("PRAGMA journal_mode = DELETE")
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
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


# -- import --------------------------------------------------------------------------------


def _read_copy(copy: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA trusted_schema = OFF")
    return conn


class _Merge:
    """One import into a server database, inside its transaction ``conn``."""

    def __init__(
        self,
        backend: Backend,
        conn: Any,
        ours: sqlite3.Connection,
        src: sqlite3.Connection,
        on_conflict: str,
        deadline: _Deadline,
    ) -> None:
        self.backend = backend
        self.conn = conn
        self.ours = ours
        self.src = src
        self.on_conflict = on_conflict
        self.deadline = deadline
        self.serial = 0
        self.maintained: dict[str, set[str]] = {}

    def check_time(self) -> None:
        if self.deadline._check():
            raise self.deadline.error()

    def load(self, table: str, names: list[str], where: str, params: Sequence[Any]) -> str:
        """A temporary server table holding the file's rows of ``table`` (``names`` and their rowid)."""
        self.serial += 1
        tmp = f"cyllama_import_{self.serial}"
        col_list = ", ".join(_quote(n) for n in names)
        self.conn.execute(
            f"CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {col_list} FROM {_quote(table)} WITH NO DATA"
        )
        self.conn.execute(f"ALTER TABLE {tmp} ADD COLUMN {_ROW} BIGINT")
        cursor = self.src.execute(
            f"SELECT {col_list}, rowid FROM main.{_quote(table)}{where} ORDER BY rowid", tuple(params)
        )
        while True:
            rows = cursor.fetchmany(_CHUNK_ROWS)
            if not rows:
                break
            self.backend.insert_rows(self.conn, tmp, [*(_quote(n) for n in names), _ROW], rows)
            self.check_time()
        return tmp

    def restore_secrets(self, policy: TablePolicy, tmp: str, names: list[str]) -> None:
        """The rule of ``Importer._restore_secrets``: a redacted secret keeps the stored one."""
        if not policy.key or not set(policy.key) <= set(names):
            return
        conn, t = self.conn, _quote(policy.table)
        marker = _redacted_marker()
        same_key = " AND ".join(f"m.{_quote(k)} = s.{_quote(k)}" for k in policy.key)
        for col in policy.secret_columns:
            if col in names:
                q = _quote(col)
                conn.execute(
                    f"UPDATE {tmp} AS s SET {q} = (SELECT m.{q} FROM {t} AS m WHERE {same_key}) WHERE s.{q} = ?",
                    (marker,),
                )
        for col in policy.secret_flag_columns:
            if col in names:
                q = _quote(col)
                rows = conn.execute(
                    f"SELECT s.{_ROW}, s.{q}, m.{q} FROM {tmp} AS s LEFT JOIN {t} AS m ON {same_key}"
                    f" WHERE s.{q} LIKE ?",
                    (f"%{marker}%",),
                ).fetchall()
                for row, incoming, stored in rows:
                    restored = _restore_custom_text(incoming, stored)
                    if restored is not incoming:
                        conn.execute(f"UPDATE {tmp} SET {q} = ? WHERE {_ROW} = ?", (restored, row))
        for col in _scanned_text_columns(self.ours, "main", policy):
            if col not in names:
                continue
            q = _quote(col)
            rows = conn.execute(
                f"SELECT s.{_ROW}, s.{q}, m.{q} FROM {tmp} AS s JOIN {t} AS m ON {same_key}"
                f" WHERE s.{q} LIKE ? OR s.{q} LIKE ?",
                ("%****@%", f"%{marker}%"),
            ).fetchall()
            for row, incoming, stored in rows:
                if isinstance(stored, str) and _redact_text(stored) == incoming:
                    conn.execute(f"UPDATE {tmp} SET {q} = ? WHERE {_ROW} = ?", (stored, row))

    def keyed(
        self, policy: TablePolicy, tmp: str, names: list[str], key: tuple[str, ...]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The rule of ``Importer._merge_keyed``, with the file's rows in ``tmp``."""
        conn, t = self.conn, _quote(policy.table)
        col_list = ", ".join(_quote(n) for n in names)
        match = " AND ".join(f"m.{_quote(k)} = s.{_quote(k)}" for k in key)
        content, stamp = policy.compared(names, key)
        same = " AND ".join(f"m.{_quote(n)} IS NOT DISTINCT FROM s.{_quote(n)}" for n in content) or "TRUE"
        key_cols = ", ".join(f"s.{_quote(k)}" for k in key)
        stamps = f", m.{_quote(stamp)}, s.{_quote(stamp)}" if stamp else ", NULL, NULL"
        differing = conn.execute(
            f"SELECT {key_cols}{stamps} FROM {tmp} AS s JOIN {t} AS m ON {match}"
            f" WHERE NOT ({same}) ORDER BY s.{_ROW}"
        ).fetchall()
        matched = int(conn.execute(f"SELECT COUNT(*) FROM {tmp} AS s JOIN {t} AS m ON {match}").fetchone()[0])
        inserted = conn.execute(
            f"INSERT INTO {t} ({col_list}) SELECT {col_list} FROM {tmp} AS s"
            f" WHERE NOT EXISTS (SELECT 1 FROM {t} AS m WHERE {match}) ORDER BY s.{_ROW}"
            " ON CONFLICT DO NOTHING"
        ).rowcount
        self.check_time()
        replaced = 0
        listed: list[dict[str, Any]] = []
        updatable = [n for n in names if n not in key]
        set_clause = ", ".join(f"{_quote(n)} = s.{_quote(n)}" for n in updatable)
        src_where = " AND ".join(f"s.{_quote(k)} = ?" for k in key)
        for row in differing:
            key_values = tuple(row[: len(key)])
            current_stamp, incoming_stamp = row[len(key)], row[len(key) + 1]
            take = incoming_wins(self.on_conflict, current_stamp, incoming_stamp)
            if take and updatable:
                conn.execute(
                    f"UPDATE {t} AS m SET {set_clause} FROM {tmp} AS s WHERE {match} AND {src_where}",
                    key_values,
                )
                replaced += 1
            listed.append(conflict_record(policy.table, key_values, take))
        return keyed_report(key, inserted, matched, len(differing), replaced), listed

    def append(self, table: str, tmp: str, names: list[str], required: set[str], rows: int) -> dict[str, Any]:
        """The rule of ``Importer._append``: new ids; a row identical to one already there is skipped."""
        conn, t = self.conn, _quote(table)
        col_list = ", ".join(_quote(n) for n in names)

        def same(a: str, b: str) -> str:
            # ``=`` where neither side can be NULL lets the server hash the comparison.
            return " AND ".join(
                f"{a}.{_quote(n)} = {b}.{_quote(n)}" if n in required
                else f"{a}.{_quote(n)} IS NOT DISTINCT FROM {b}.{_quote(n)}"
                for n in names
            ) or "TRUE"

        # Repeats inside the file, then rows the database already has.
        conn.execute(f"DELETE FROM {tmp} AS a USING {tmp} AS b WHERE a.{_ROW} > b.{_ROW} AND {same('a', 'b')}")
        conn.execute(f"DELETE FROM {tmp} AS s WHERE EXISTS (SELECT 1 FROM {t} AS m WHERE {same('m', 's')})")
        self.check_time()
        inserted = conn.execute(
            f"INSERT INTO {t} ({col_list}) SELECT {col_list} FROM {tmp} ORDER BY {_ROW}"
        ).rowcount
        self.check_time()
        return {
            "mode": "append",
            "key": None,
            "inserted": inserted,
            "duplicates": rows - inserted,
            "unchanged": 0,
            "conflicts": 0,
            "replaced": 0,
        }

    def add_contributions(self, delta: sqlite3.Connection, table: str, tmp: str, names: list[str]) -> None:
        """Feed the rows just inserted into ``table`` to the scratch database, whose triggers
        compute what they add to the derived tables."""
        col_list = ", ".join(_quote(n) for n in names)
        insert = f"INSERT INTO {_quote(table)} ({col_list}) VALUES ({', '.join('?' * len(names))})"
        for rows in self.backend.stream(self.conn, f"SELECT {col_list} FROM {tmp} ORDER BY {_ROW}", (), _CHUNK_ROWS):
            delta.executemany(insert, rows)
            # Only the triggers' output is kept (the delete triggers were dropped).
            delta.execute(f"DELETE FROM {_quote(table)}")
            self.check_time()

    def fold_derived(self, delta: sqlite3.Connection, table: str, server_columns: set[str]) -> int:
        """Add the scratch database's rows of the derived ``table`` to the server's: numbers summed,
        text taken from the new row when it has one. Returns the rows written."""
        cols = [c for c in _columns(delta, "main", table) if c[0] in server_columns]
        keys = [c[0] for c in sorted((c for c in cols if c[2] > 0), key=lambda c: c[2])]
        if not keys:
            logger.warning("import: %s has no primary key; its rows from the imported file were not added", table)
            return 0
        names = [c[0] for c in cols]
        sets = ", ".join(
            f"{_quote(n)} = cur.{_quote(n)} + excluded.{_quote(n)}" if kind in ("INTEGER", "REAL")
            else f"{_quote(n)} = COALESCE(excluded.{_quote(n)}, cur.{_quote(n)})"
            for n, kind, pk in cols
            if not pk
        )
        action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
        sql = (
            f"INSERT INTO {_quote(table)} AS cur ({', '.join(_quote(n) for n in names)})"
            f" VALUES ({', '.join('?' * len(names))})"
            f" ON CONFLICT ({', '.join(_quote(k) for k in keys)}) {action}"
        )
        rows = delta.execute(f"SELECT {', '.join(_quote(n) for n in names)} FROM {_quote(table)}").fetchall()
        if rows:
            self.conn.executemany(sql, rows)
        return len(rows)


def _insert_triggers(conn: sqlite3.Connection) -> dict[str, set[str]]:
    """``{table: derived tables its INSERT triggers write}`` in a SQLite schema."""
    from .export import _TRIGGER_TARGET

    found: dict[str, set[str]] = {}
    for table, sql in conn.execute("SELECT tbl_name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall():
        text = str(sql or "")
        if not _INSERT_TRIGGER.search(text.split("BEGIN", 1)[0]):
            continue
        body = text.split("BEGIN", 1)[-1]
        found.setdefault(table, set()).update(t for t in _TRIGGER_TARGET.findall(body) if t != table)
    return found


def _delta_database() -> sqlite3.Connection:
    """A scratch copy of our schema whose only triggers are those that run on INSERT."""
    delta = our_schema()
    for name, sql in delta.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall():
        if not _INSERT_TRIGGER.search(str(sql or "").split("BEGIN", 1)[0]):
            delta.execute(f"DROP TRIGGER {_quote(name)}")
    return delta


def merge_into_server(
    backend: Backend,
    ours: sqlite3.Connection,
    copy: str,
    on_conflict: str,
    progress: ProgressCallback | None,
    deadline: _Deadline,
    found: Mapping[str, TablePolicy],
) -> dict[str, Any]:
    """Merge the checked private copy ``copy`` into the server database, in one transaction.

    ``ours`` is :func:`our_schema`. Returns the merge part of the import report
    (as ``Importer._merge_tables``).
    """
    src = _read_copy(copy)
    delta: sqlite3.Connection | None = None
    try:
        with backend.transaction() as conn:
            if deadline.at is not None:
                remaining = max(1, int((deadline.at - time.monotonic()) * 1000))
                conn.execute(f"SET LOCAL statement_timeout = {remaining}")
            merge = _Merge(backend, conn, ours, src, on_conflict, deadline)
            server_tables = set(backend.table_names(conn))
            our_tables = set(_user_tables(ours))
            import_tables = _user_tables(src)
            derived = _derived_tables(ours, found.values())
            tables = [
                t for t in _ordered(set(import_tables) & our_tables & server_tables, found) if t not in derived
            ]
            skipped = sorted(
                t for t in import_tables if t not in our_tables or (t not in derived and t not in server_tables)
            )
            feeds = _insert_triggers(ours)
            # A table whose derived tables the server maintains itself needs nothing more.
            fed = {
                t: {d for d in targets if d in server_tables and d in derived}
                for t, targets in feeds.items()
                if t in tables and not backend.has_triggers(conn, t)
            }
            fed = {t: d for t, d in fed.items() if d}
            plans: list[tuple[str, TablePolicy, list[str], str, list[Any], int]] = []
            for table in tables:
                policy = policy_of(found, table)
                where, params = "", []
                if policy.local_keys:
                    where = (
                        f" WHERE {_quote(policy.key[0])} IS NULL OR {_quote(policy.key[0])}"
                        f" NOT IN ({','.join('?' * len(policy.local_keys))})"
                    )
                    params = list(policy.local_keys)
                count = int(src.execute(f"SELECT COUNT(*) FROM main.{_quote(table)}{where}", params).fetchone()[0])
                plans.append((table, policy, [], where, params, count))
            total = sum(p[5] for p in plans)
            done = 0
            report_tables: dict[str, Any] = {}
            conflicts: list[dict[str, Any]] = []
            conflict_count = 0
            from .importer import _MAX_LISTED_CONFLICTS, _natural_key

            for table, policy, _, where, params, count in plans:
                main_cols = _columns(ours, "main", table)
                import_names = {c[0] for c in _columns(src, "main", table)}
                on_server = set(backend.columns(conn, table))
                alias = _rowid_alias(main_cols)
                names = [c[0] for c in main_cols if c[0] in import_names and c[0] in on_server and c[0] != alias]
                key = _natural_key(ours, policy, main_cols)
                if key is not None and not all(k in import_names for k in key):
                    key = None
                tmp = merge.load(table, names, where, params)
                if policy.redacts:
                    merge.restore_secrets(policy, tmp, names)
                if key is None:
                    required = {
                        r[1] for r in ours.execute(f"PRAGMA main.table_info({_quote(table)})") if r[3] or r[5]
                    }
                    entry = merge.append(table, tmp, names, required, count)
                    if table in fed and entry["inserted"]:
                        if delta is None:
                            delta = _delta_database()
                        merge.add_contributions(delta, table, tmp, names)
                else:
                    entry, listed = merge.keyed(policy, tmp, names, key)
                    conflict_count += len(listed)
                    room = _MAX_LISTED_CONFLICTS - len(conflicts)
                    conflicts.extend(listed[: max(room, 0)])
                entry["rows"] = count
                report_tables[table] = entry
                done += count
                if progress is not None:
                    progress(done, total)
            if delta is not None:
                for targets in fed.values():
                    for target in sorted(targets):
                        merge.fold_derived(delta, target, set(backend.columns(conn, target)))
            if progress is not None and total == 0:
                progress(0, 0)
            if deadline.at is not None:
                conn.execute("SET LOCAL statement_timeout = 0")
        return {
            "on_conflict": on_conflict,
            "tables": report_tables,
            "conflicts": conflicts,
            "conflict_count": conflict_count,
            "skipped_tables": skipped,
        }
    except Exception as exc:
        if deadline.at is not None and time.monotonic() > deadline.at:
            raise deadline.error() from exc
        raise
    finally:
        src.close()
        if delta is not None:
            delta.close()

