"""cyllama-db: one SQLite file for everything local llama.cpp inference should remember.

Importing this package is cheap: llama_cpp, psutil and pynvml are imported
only by the functions that need them.
"""

from __future__ import annotations

from ._settings import ENV_VARS, Settings
from .database import CyllamaDB, configure_db, get_db, reset_db
from .errors import (
    ConfigurationError,
    CyllamaDBError,
    DatabaseClosedError,
    MigrationError,
    ReadOnlyDatabaseError,
    SchemaVersionError,
)

__version__ = "0.1.0"

__all__ = [
    "ENV_VARS",
    "ConfigurationError",
    "CyllamaDB",
    "CyllamaDBError",
    "DatabaseClosedError",
    "MigrationError",
    "ReadOnlyDatabaseError",
    "SchemaVersionError",
    "Settings",
    "__version__",
    "configure_db",
    "get_db",
    "reset_db",
]
