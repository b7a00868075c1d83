"""The ``cyllama-db`` command line (also ``python -m cyllama_db``).

Standard library only (argparse). Every command opens the database given by
``--db`` (else ``$CYLLAMA_DB_PATH``, else the per-user default), does one thing
and exits with 0 (success), 1 (an error: the message is one line on stderr)
or 2 (a usage mistake: unknown option, malformed value). Read commands take
``--json`` and then print JSON (datetimes as ISO-8601) instead of tables.

The package, by job:

- ``parser.py``: :func:`build_parser` (every command and option; ``docs/cli.md``
  documents each, a test checks that) and :func:`main`;
- ``args.py``: argument types and value readers;
- ``format.py``: tables, ``key: value`` lines, JSON and terminal-safe text,
  shared with :mod:`cyllama_db.dashboard`;
- ``session.py``: opening the database of ``--db``;
- one module per command group: ``database.py`` (info, vacuum, migrate,
  export, import), ``config.py``, ``cache.py``, ``stats.py`` (stats,
  history), ``logs.py``, ``models.py``, ``metrics.py``, ``dashboard.py``.

This module only loads the parser when a command runs, so that importing
``cyllama_db.cli.format`` (as the dashboard does) stays cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``cyllama-db`` argument parser (every command and option)."""
    from .parser import build_parser as build

    return build()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage)."""
    from .parser import main as run

    return run(argv)
