"""The exceptions cyllama-db raises.

Everything derives from :class:`CyllamaDBError`, so ``except CyllamaDBError``
catches any failure of this library.  Where the meaning matches a built-in
exception, the class also derives from it (a malformed setting is a
``ValueError``, an unkeyable argument a ``TypeError``), so code that already
catches the built-in keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "CyllamaDBError",
    "DatabaseClosedError",
    "MigrationError",
    "ReadOnlyDatabaseError",
    "SchemaVersionError",
]


class CyllamaDBError(Exception):
    """Base class of every error raised by cyllama-db."""


class ConfigurationError(CyllamaDBError, ValueError):
    """A setting (constructor argument or environment variable) is malformed."""


class SchemaVersionError(CyllamaDBError):
    """The database file was written by a newer cyllama-db than this one.

    The file is left untouched; upgrade cyllama-db (``pip install -U cyllama-db``)
    or point ``CYLLAMA_DB_PATH`` at another file.
    """

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"database {path!r} has schema version {found}, but this cyllama-db "
            f"only knows versions up to {supported}. The file was not modified. "
            "Upgrade cyllama-db (pip install -U cyllama-db) or use another "
            "database path (CYLLAMA_DB_PATH or CyllamaDB(path=...))."
        )


class MigrationError(CyllamaDBError):
    """A schema migration failed; the transaction was rolled back."""


class DatabaseClosedError(CyllamaDBError, RuntimeError):
    """The database was used after :meth:`CyllamaDB.close`."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"database {path!r} is closed. Open a new CyllamaDB(...) (or call "
            "configure_db()/get_db() again for the global database)."
        )


class ReadOnlyDatabaseError(CyllamaDBError, PermissionError):
    """A write was attempted on a database file the process cannot write."""
