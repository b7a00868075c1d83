"""Opening the database of one ``cyllama-db`` command (``--db``, else the default).

Every handler runs inside ``with open_db(args) as db:``; the database is
closed when the command ends, however it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import CommandError

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = ["open_db", "require"]

class _Held(logging.Filter):
    """Holds back every record of one logger (those logged on it directly) for later."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def _is_url(path: str) -> bool:
    from ..db.url import SCHEMES, is_url

    return is_url(path) and path.split("://", 1)[0].lower() in SCHEMES


def _construct(path: str | None, readonly: bool = False) -> CyllamaDB:
    """``CyllamaDB(path)``, its "falling back to memory" warning kept off stderr.

    The library logs that warning and carries on in memory; the command line
    reports the same failure as its one error line instead (see :func:`open_db`),
    so the warning would be a second line. Anything else logged while opening
    is passed on unchanged.
    """
    from ..db.facade import CyllamaDB

    library_logger = logging.getLogger("cyllama_db")
    held = _Held()
    library_logger.addFilter(held)
    try:
        # The command line is an explicit request to use the database, so
        # CYLLAMA_DB_ENABLED=0 (meant for library calls) does not turn it off.
        if path is not None and _is_url(path):
            # --db postgresql://... (or sqlite:///...): a URL, its password never shown.
            db = CyllamaDB(url=path, enabled=True, readonly=readonly)
        else:
            db = CyllamaDB(path, enabled=True, readonly=readonly)
    finally:
        library_logger.removeFilter(held)
    if db.fallback_reason is None:
        for record in held.records:
            library_logger.handle(record)
    return db


@contextlib.contextmanager
def open_db(args: argparse.Namespace, *, reads: bool = False) -> Iterator[CyllamaDB]:
    """The database of ``--db``; ``reads=True``: a command that only reads, which opens
    a file this user may read but not write read-only instead of failing."""
    from ..errors import ReadOnlyDatabaseError

    path = getattr(args, "db", None)
    try:
        db = _construct(path)
    except ReadOnlyDatabaseError:
        if not reads:
            raise
        db = _construct(path, readonly=True)
    try:
        if db.fallback_reason is not None:
            raise CommandError(f"cannot open database {db.settings.path}: {db.fallback_reason}")
        yield db
    finally:
        db.close()


def require(db: Any, method: str, store: str) -> Callable[..., Any]:
    """``db.<method>``; CommandError naming the missing store if this database has none."""
    fn = getattr(db, method, None)
    if fn is None:
        raise CommandError(
            f"this cyllama-db has no {store} store yet ({method}() is missing); upgrade cyllama-db"
        )
    return fn

