"""SQLite behind the storage seam: one file (or memory), WAL, one connection per thread.

Opening is where SQLite differs most from a server: the file may be
another application's, from a newer cyllama-db, read-only, on a full disk,
not a database at all. :meth:`SQLiteBackend.open` gives each case its
defined outcome (``docs/reliability.md``) before a byte is written.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from ..errors import (
    CyllamaDBError,
    DatabaseBusyError,
    DatabaseFileError,
    DiskFullError,
    ForeignDatabaseError,
    ReadOnlyDatabaseError,
    SchemaVersionError,
)
from . import files as _files
from . import migrations as _migrations
from . import pool as _pool_module
from .backend import Backend
from .pool import ConnectionPool
from .settings import Settings
from .store import library_error, reclaim_free_pages

__all__ = ["SQLiteBackend"]

logger = logging.getLogger("cyllama_db")

_SQLITE_MAGIC = b"SQLite format 3\x00"

# SQLite's primary result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``, Python 3.11+).
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = (
    8, 10, 11, 13, 14, 26
)
_IO_HINT = (
    "An I/O error is not a broken file: nothing was written and the file was not replaced. "
    "Check the disk (dmesg, df) and retry."
)
_FULL_HINT = "Free some disk space (or raise the quota) and retry; the file was left as it was."


class _Unusable(Exception):
    """Internal: the file itself cannot hold a database (not SQLite, corrupt, a directory...).

    Only these fall back to memory (or raise with ``fallback="raise"``);
    everything else (a full disk, an I/O error, a read-only or foreign
    file, a lock) raises its own :class:`~cyllama_db.CyllamaDBError`.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _remove_new_side_files(path: str, existed: list[str]) -> None:
    """Delete the -wal/-shm that a failed read-only open just created beside ``path``."""
    wal = path + "-wal"
    if existed or (os.path.exists(wal) and os.path.getsize(wal) > 0):
        return  # another connection's (or a crashed writer's) files: not ours to delete
    for side in (wal, path + "-shm"):
        with contextlib.suppress(OSError):
            os.remove(side)


def _remove_if_still_empty(path: str) -> None:
    """Delete the file this open created, and its side files, if nothing was ever written to it."""
    try:
        if os.path.getsize(path) != 0:
            return
        wal = path + "-wal"
        if os.path.exists(wal) and os.path.getsize(wal) != 0:
            return  # another process is already writing a database into it
        for name in (path, wal, path + "-shm", path + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
    except OSError:
        pass


def _unwritable_place(path: str) -> str | None:
    """Why SQLite cannot write ``path`` (or create its -wal/-shm), or None if it can."""
    if not os.access(path, os.W_OK):
        return f"{path} is not writable by this user"
    folder = os.path.dirname(path) or "."
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} is not writable, so SQLite cannot create the -wal and -shm files"
    return None


def _readonly_error(path: str, why: str) -> ReadOnlyDatabaseError:
    return ReadOnlyDatabaseError(
        f"cannot write to the database {path!r}: {why}. Nothing was changed. Open it with "
        "CyllamaDB(path, readonly=True) to read it, fix the permissions, or point "
        "CYLLAMA_DB_PATH at a writable location."
    )


def _os_error(exc: OSError, path: str) -> Exception:
    """The library's error for an OSError while opening, or _Unusable for a file to fall back from."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DiskFullError(path, str(exc), _FULL_HINT)
    if exc.errno == errno.EIO:
        return DatabaseFileError(path, str(exc), _IO_HINT)
    return _Unusable(exc)


def _sqlite_error(exc: sqlite3.Error, path: str, busy_timeout: float) -> Exception:
    """The library's error for a SQLite error while opening, or _Unusable for a file to fall back from."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    lowered = text.lower()
    if _pool_module._is_busy(exc):
        # Busy is not broken: falling back would silently split the
        # process's data from everyone else's.
        return DatabaseBusyError(path, busy_timeout)
    if primary == _SQLITE_FULL or "disk is full" in lowered:
        return DiskFullError(path, text, _FULL_HINT)
    if primary == _SQLITE_IOERR or "disk i/o error" in lowered:
        return DatabaseFileError(path, text, _IO_HINT)
    if primary == _SQLITE_READONLY or "readonly" in lowered or "read-only" in lowered:
        return _readonly_error(path, f"{text} ({_unwritable_place(path) or 'SQLite refused the write'})")
    if primary == _SQLITE_CANTOPEN or "unable to open" in lowered:
        why = _unwritable_place(path)
        if why is not None:
            return _readonly_error(path, why)
    return _Unusable(exc)


class SQLiteBackend(Backend):
    """The SQLite engine: a file in WAL mode (or a private in-memory database).

    Build it with :meth:`open`; ``pool`` is its :class:`~cyllama_db.db.pool.ConnectionPool`.
    """

    name: ClassVar[str] = "sqlite"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: ConnectionPool = None  # type: ignore[assignment]  # set by open()
        self.fallback_reason: str | None = None

    @classmethod
    def open(cls, settings: Settings) -> SQLiteBackend:
        """Open (creating, checking and migrating) the database ``settings`` name.

        A file that cannot hold a database at all falls back to memory
        (``fallback="memory"``, with :attr:`fallback_reason` saying why) or
        raises :class:`~cyllama_db.errors.DatabaseFileError`
        (``fallback="raise"``); every other fault raises its own error and
        leaves the file as it was.
        """
        backend = cls(settings)
        if settings.path == ":memory:":
            backend.pool = backend._open_memory()
            backend.pool.readonly = settings.readonly
            return backend
        try:
            backend.pool = backend._open_file(settings.path)
        except _Unusable as exc:
            if settings.fallback == "raise":
                raise DatabaseFileError(
                    settings.path,
                    f"{type(exc.cause).__name__}: {exc.cause}",
                    "The file cannot hold a database and fallback='raise' (or "
                    "CYLLAMA_DB_FALLBACK=raise) forbids running on an in-memory one; the file "
                    "was left untouched. Move it aside or point CYLLAMA_DB_PATH elsewhere.",
                ) from exc.cause
            backend._fall_back(exc.cause)
        return backend

    # -- the seam ---------------------------------------------------------------------------------

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.pool.read()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.pool.transaction()

    def no_wait(self) -> AbstractContextManager[None]:
        return self.pool.no_wait()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    @property
    def location(self) -> str:
        return ":memory:" if self.fallback_reason is not None else self.settings.path

    @property
    def is_memory(self) -> bool:
        return self.location == ":memory:"

    def now_sql(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"

    def columns(self, conn: sqlite3.Connection, table: str) -> list[str]:
        return [row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]

    def has_table(self, conn: sqlite3.Connection, table: str) -> bool:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        return row is not None

    def table_names(self, conn: sqlite3.Connection) -> list[str]:
        return [
            str(r[0]) for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]

    def has_triggers(self, conn: sqlite3.Connection, table: str) -> bool:
        return conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,)
        ).fetchone() is not None

    def size_bytes(self) -> int:
        with self.pool.read() as conn:
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count * page_size)

    def file_bytes(self) -> int:
        """The file and its WAL on disk (the in-memory size for a memory database)."""
        if self.is_memory:
            return self.size_bytes()
        path = self.location
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))

    def storage_stats(self) -> dict[str, Any]:
        file_bytes = self.file_bytes()
        stats: dict[str, Any] = {"file_size_mb": round(file_bytes / 1_048_576, 4), "file_bytes": file_bytes}
        with self.pool.read() as conn:
            mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
            stats["auto_vacuum"] = {0: "none", 1: "full", 2: "incremental"}.get(mode, str(mode))
            stats["free_pages"] = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return stats

    def vacuum(self) -> None:
        with self.pool.read() as conn:
            if self.settings.auto_vacuum and conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect with the VACUUM
            conn.execute("VACUUM")
            if not self.is_memory:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def reclaim(self, conn: sqlite3.Connection) -> int:
        if not self.settings.auto_vacuum:
            return 0
        freed = reclaim_free_pages(conn)
        if freed:
            logger.debug("gave %d free pages back to the file system", freed)
        return freed

    def error(self, exc: BaseException) -> Exception:
        return library_error(exc, self.location, self.settings.busy_timeout)

    def search_available(self) -> bool:
        from ..stores.search import fts5_available

        return fts5_available()

    # -- opening ----------------------------------------------------------------------------------

    def _fall_back(self, exc: BaseException) -> None:
        self.fallback_reason = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "cannot use database %s (%s); falling back to an in-memory database "
            "for this process. The file was left untouched.",
            self.settings.path,
            exc,
        )
        self.pool = self._open_memory()

    def _open_memory(self) -> ConnectionPool:
        pool = ConnectionPool(
            ":memory:", busy_timeout=self.settings.busy_timeout, memory=True,
            auto_vacuum=self.settings.auto_vacuum,
        )
        with pool.read() as conn:
            _migrations.migrate(conn, ":memory:")
        return pool

    def _open_file(self, path: str) -> ConnectionPool:
        """The pool for ``path``; raises a library error, or _Unusable for a file to fall back from."""
        readonly = self.settings.readonly
        created = False
        try:
            if not readonly:
                _files.private_makedirs(os.path.dirname(path))  # 0700, each level it creates
                try:
                    # O_EXCL + 0600: the file is owner-only from its first byte, with no
                    # window in which another user could open it.
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                    os.close(fd)
                    created = True
                except FileExistsError:
                    pass
            elif not os.path.lexists(path):
                raise DatabaseFileError(
                    path,
                    "no such file",
                    "readonly=True opens an existing database only; check the path",
                )
        except OSError as exc:
            if isinstance(exc, DatabaseFileError):
                raise
            raise _os_error(exc, path) from exc
        try:
            pool = self._open_existing(path)
        except BaseException:
            if created:
                _remove_if_still_empty(path)  # a full disk must not leave a 0-byte file behind
            raise
        if not created and not readonly:
            # One of ours from before (or copied in) that others can read: owner-only
            # again when this user owns it, else a warning naming it.
            for existing in (path, path + "-wal", path + "-shm"):
                _files.tighten_file(existing)
        return pool

    def _open_existing(self, path: str) -> ConnectionPool:
        readonly = self.settings.readonly
        busy = self.settings.busy_timeout
        try:
            if not os.path.isfile(path):
                raise _Unusable(IsADirectoryError(f"{path} is not a regular file"))
            if not os.access(path, os.R_OK):
                raise _Unusable(PermissionError(f"{path} is not readable by this user"))
            with open(path, "rb") as handle:
                head = handle.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise _os_error(exc, path) from exc
        if head and head != _SQLITE_MAGIC:
            raise _Unusable(sqlite3.DatabaseError(f"{path} is not a SQLite database (header {head[:16]!r})"))
        if not readonly and not os.access(path, os.W_OK):
            # A valid file this user cannot write: not a reason to forget it.
            raise _readonly_error(path, f"{path} is not writable by this user")
        try:
            self._check_file(path)
            pool = ConnectionPool(path, busy_timeout=busy, readonly=readonly, auto_vacuum=self.settings.auto_vacuum)
            try:
                with pool.read() as conn:
                    if readonly:
                        _migrations.check_not_newer(conn, path)
                        self._refuse_pending(conn, path)
                    else:
                        _migrations.migrate(conn, path)
            except BaseException:
                pool.close()
                raise
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, path, busy) from exc
        except OSError as exc:
            if isinstance(exc, CyllamaDBError):
                raise
            raise _os_error(exc, path) from exc
        return pool

    @staticmethod
    def _refuse_pending(conn: sqlite3.Connection, path: str) -> None:
        pending = _migrations.pending_versions(conn)
        if pending:
            raise ReadOnlyDatabaseError(
                f"database {path!r} has schema version {_migrations.schema_version(conn)} and this "
                f"cyllama-db needs {_migrations.latest_version()}; readonly=True cannot upgrade it. "
                "Open it once without readonly=True (the file must be writable) to upgrade it."
            )

    def _check_file(self, path: str) -> None:
        """Refuse another application's file, or one from a newer cyllama-db, before writing a byte.

        Read-only, and before the pool sets WAL mode, which would rewrite the
        header of a file we must not touch. Waits for a lock at most the busy
        timeout.
        """
        uri = _pool_module.readonly_uri(path)
        existed = [side for side in (path + "-wal", path + "-shm") if os.path.exists(side)]
        conn = sqlite3.connect(uri, uri=True, timeout=self.settings.busy_timeout)
        try:
            _migrations.check_ours(conn, path)
            _migrations.check_not_newer(conn, path)
        except SchemaVersionError:
            # A newer process may be using that file and its -shm: leave them.
            conn.close()
            raise
        except (ForeignDatabaseError, sqlite3.Error) as exc:
            conn.close()
            if not (isinstance(exc, sqlite3.Error) and _pool_module._is_busy(exc)):
                # Even a read-only connection creates -wal and -shm beside a
                # file whose header says WAL mode; a file we refuse or cannot
                # use must not keep them.
                _remove_new_side_files(path, existed)
            raise
        conn.close()
