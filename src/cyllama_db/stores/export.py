"""Export of a whole database: ``db.export_database(path)``, and what import shares with it.

Export copies the database through SQLite's online backup API while holding
one read transaction on the source, so the copy is exactly the snapshot at
the moment the export began: other processes keep writing (WAL mode lets
them), and without the pinned snapshot the backup would restart each time
they commit and might never finish.

No table is known here by name: each store declares its tables' rules in its
module's ``EXPORT_POLICY`` (:class:`~cyllama_db.db.policy.TablePolicy`), and
:func:`policies` collects them. An export redacts what the policies call
secret; the import (``importer.py``) merges by their keys and checks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from .._validate import check_bool, check_callable
from ..db import files as _files
from ..db import migrations as _migrations
from ..db.policy import TablePolicy, by_table
from ..db.store import Store, db_op

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = ["Exporter", "ProgressCallback", "policies"]

#: ``progress(done, total)``: pages copied (export) or rows merged (import).
ProgressCallback = Callable[[int, int], None]

_BACKUP_STEP_PAGES = 1024  # 4 MiB with the default page size: fine-grained progress
_INTERNAL_TABLES = frozenset({"schema_version"})
_TRIGGER_TARGET = re.compile(
    r"\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE|DELETE\s+FROM)\s+[\"`\[]?(\w+)", re.IGNORECASE
)
# The tables SQLite keeps for each FTS5 (or FTS3/4) virtual table.
_SHADOW_SUFFIXES = ("_data", "_idx", "_content", "_docsize", "_config", "_segments", "_segdir", "_stat")


# -- the stores' policies ------------------------------------------------------------------


def policies(db: CyllamaDB | None = None) -> list[TablePolicy]:
    """Every store's :class:`~cyllama_db.db.policy.TablePolicy`, in merge order.

    The order is that of the stores (config, metadata, models, cache, stats,
    logs, metrics); tables no store declares are merged after them,
    alphabetically.
    """
    if db is not None:
        return [p for store in db.stores for p in type(store).export_policy]
    from . import cache, config, logs, metadata, metrics, registry, stats

    classes = (config.ConfigStore, metadata.MetadataStore, registry.ModelRegistry, cache.CacheStore,
               stats.StatsStore, logs.LogStore, metrics.MetricsStore)
    return [p for store in classes for p in store.export_policy]


def policy_of(found: Mapping[str, TablePolicy], table: str) -> TablePolicy:
    """``table``'s policy; a table no store declares is keyed by its schema's key (else appended)."""
    return found.get(table) or TablePolicy(table)


def policy_map(db: CyllamaDB | None = None) -> Mapping[str, TablePolicy]:
    """:func:`policies` as ``{table: policy}`` (merge order kept)."""
    return by_table(policies(db))


# -- the schema ----------------------------------------------------------------------------


def _quote(name: str) -> str:
    """An SQL identifier, quoted (names come from sqlite_master, never from the caller)."""
    return '"' + name.replace('"', '""') + '"'


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


def _derived_tables(conn: sqlite3.Connection, found: Iterable[TablePolicy]) -> set[str]:
    """Tables never imported: those the policies call derived, and those written by
    triggers on other tables (their content follows from those)."""
    derived = {p.table for p in found if p.merge == "derived"}
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


# -- secrets -------------------------------------------------------------------------------


def _redacted_marker() -> str:
    from .params import REDACTED

    return str(REDACTED)


def _redact_custom_text(text: Any) -> Any:
    """Flags column text with the values of secret flags (``--api-key``...) redacted."""
    from .params import _redact_custom_text

    return _redact_custom_text(text)


def _restore_custom_text(incoming: Any, stored: Any) -> Any:
    from .params import _restore_custom_text

    return _restore_custom_text(incoming, stored)


def _redact_text(value: Any) -> Any:
    """``value`` with URL passwords and inline secret flags hidden (non-text: unchanged)."""
    from .params import redact_text

    return redact_text(value) if isinstance(value, str) else value


def _scanned_text_columns(conn: sqlite3.Connection, schema: str, policy: TablePolicy) -> list[str]:
    """The TEXT columns of ``policy``'s table that may hold a URL password or an inline
    secret flag: all but the secret ones and those the policy leaves alone."""
    if policy.redact_text_except is None:
        return []
    skip = {*policy.secret_columns, *policy.secret_flag_columns, *policy.redact_text_except}
    return [c[0] for c in _columns(conn, schema, policy.table) if c[1] == "TEXT" and c[0] not in skip]


def _redact_table(dst: sqlite3.Connection, policy: TablePolicy, marker: str) -> int:
    """Replace the secrets of one table of the copy by ``marker``; return how many values changed."""
    t = _quote(policy.table)
    present = {c[0] for c in _columns(dst, "main", policy.table)}
    changed = 0
    for col in policy.secret_columns:
        if col in present:
            q = _quote(col)
            cur = dst.execute(
                f"UPDATE {t} SET {q} = ? WHERE {q} IS NOT NULL AND {q} != ?", (marker, marker)
            )
            changed += cur.rowcount
    for col in policy.secret_flag_columns:
        if col in present:
            # The same secrets given as raw flags ({"--api-key": ...}).
            q = _quote(col)
            rows = dst.execute(f"SELECT rowid, {q} FROM {t} WHERE {q} IS NOT NULL").fetchall()
            for rowid, text in rows:
                redacted = _redact_custom_text(text)
                if redacted is not text:
                    dst.execute(f"UPDATE {t} SET {q} = ? WHERE rowid = ?", (redacted, rowid))
                    changed += 1
    # URL passwords (model_url="https://user:PW@host/...") and secret flags
    # written inline, in every other text column.
    text_cols = _scanned_text_columns(dst, "main", policy)
    if text_cols:
        listed = ", ".join(_quote(c) for c in text_cols)
        for rowid, *values in dst.execute(f"SELECT rowid, {listed} FROM {t}").fetchall():
            for col, value in zip(text_cols, values, strict=True):
                shown = _redact_text(value)
                if shown is not value and shown != value:
                    dst.execute(f"UPDATE {t} SET {_quote(col)} = ? WHERE rowid = ?", (shown, rowid))
                    changed += 1
    return changed


# -- files ---------------------------------------------------------------------------------


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


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


# -- export --------------------------------------------------------------------------------


class Exporter(Store):
    """Writes copies of the whole database (``db.export_database``).

    Not one of ``db.stores``: it owns no tables, and applies the stores'
    policies (:func:`policies`).
    """

    name = "exporter"

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

    @db_op()
    def export(
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
        if self.backend.name != "sqlite":
            # A server: no backup API; the rows are copied into a new file (transfer.py).
            from .transfer import export_to_sqlite

            return export_to_sqlite(self, dest, include_secrets, progress)
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
        """Replace the secrets the policies name, in the copy, by the redaction marker."""
        present = set(_user_tables(dst))
        targets = [p for p in policies(self.db) if p.redacts and p.table in present]
        if not targets:
            return 0
        marker = _redacted_marker()
        # Overwrite the old values' bytes too, not just unlink them from the b-tree.
        dst.execute("PRAGMA secure_delete = ON")
        changed = 0
        dst.execute("BEGIN IMMEDIATE")
        try:
            for policy in targets:
                changed += _redact_table(dst, policy, marker)
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
            if self.backend.name == "sqlite":
                tables = _user_tables(conn)
            else:
                tables = [t for t in self.backend.table_names(conn) if t not in _INTERNAL_TABLES]
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
        policy = policy_of(policy_map(self.db), table)
        redacting = not include_secrets and policy.redacts
        secrets = set(policy.secret_columns) if redacting else set()
        flags = set(policy.secret_flag_columns) if redacting else set()
        # Unlike the sqlite copy, every other text column is scanned (the copy
        # leaves some alone to keep their JSON valid for an import).
        scan_text = redacting and policy.redact_text_except is not None
        marker = _redacted_marker()
        written = 0
        server = self.backend.name != "sqlite"
        with self.backend.snapshot() if server else self._snapshot_source() as conn:
            version = _migrations.schema_version(conn)
            total = int(conn.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()[0])
            if server:
                names = self.backend.columns(conn, table)
                order = "id" if "id" in names else "1"
                rows: Iterable[Any] = (
                    row
                    for chunk in self.backend.stream(conn, f"SELECT * FROM {_quote(table)} ORDER BY {order}")
                    for row in chunk
                )
            else:
                cursor = conn.execute(f"SELECT * FROM {_quote(table)} ORDER BY rowid")
                names = [d[0] for d in cursor.description]
                rows = cursor
            for row in rows:
                record = {
                    name: (marker if name in secrets and value is not None else _jsonable(value))
                    for name, value in zip(names, row, strict=True)
                }
                for name in flags & record.keys():
                    record[name] = _jsonable(_redact_custom_text(row[names.index(name)]))
                if scan_text:
                    for name, value in record.items():
                        if name not in secrets and name not in flags and isinstance(value, str):
                            record[name] = _redact_text(value)
                handle.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
                written += 1
                if progress is not None and written % 1000 == 0:
                    progress(written, total)
        if progress is not None:
            progress(written, max(total, written))
        return written, version
