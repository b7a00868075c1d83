"""``cyllama-db logs``: the structured log entries, once or followed (``-f``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from ..errors import UsageError
from ..stores.search import fts_query
from .args import PROG
from .format import format_value, json_text, plain, print_json, visible
from .session import open_db, require

__all__ = ["cmd_logs", "emit_logs"]


def _log_line(entry: Mapping[str, Any]) -> str:
    when = format_value(entry.get("created_at"))
    category = visible(str(entry.get("category") or "-"))
    level = visible(str(entry.get("level", "")))
    message = visible(str(entry.get("message", "")), lines=True)
    text = f"{when} {level.ljust(8)} {category}: {message}"
    if entry.get("error_type"):
        error = f"{entry['error_type']}: {entry.get('error_message') or ''}"
        text += f" [{visible(error, lines=True)}]"
    return text


def emit_logs(entries: Sequence[Mapping[str, Any]], as_json: bool, stream: TextIO) -> None:
    """Write ``entries`` to ``stream``: a JSON object per line, or one escaped text line each."""
    for entry in entries:
        if as_json:
            stream.write(json_text(plain(entry)) + "\n")
        else:
            stream.write(_log_line(entry) + "\n")
    stream.flush()


def cmd_logs(args: argparse.Namespace) -> int:
    """``cyllama-db logs`` (see docs/cli.md); returns the exit code."""
    if args.search is not None:
        try:
            fts_query(args.search, "-q")
        except ValueError as exc:
            raise UsageError(str(exc), f"{PROG} logs") from None
    with open_db(args, reads=True) as db:
        get_logs = require(db, "get_logs", "logs")
        entries = list(reversed(get_logs(
            level=args.level, category=args.category, since=args.since, limit=args.n, search=args.search
        )))
        if not args.follow:
            if args.json:
                print_json(entries)
            elif not entries:
                print("no log entries")
            else:
                emit_logs(entries, False, sys.stdout)
            return 0
        # Follow: JSON lines, since a JSON array would never end.
        emit_logs(entries, args.json, sys.stdout)
        last = max((e["created_at"] for e in entries), default=None)
        # Ids already printed at the newest timestamp: the next query starts there.
        seen = {e.get("id") for e in entries if e["created_at"] == last}
        try:
            while True:
                time.sleep(args.interval)
                since: Any = last if last is not None else args.since
                fresh = [
                    e for e in reversed(get_logs(level=args.level, category=args.category,
                                                 since=since, limit=100_000, search=args.search))
                    if not (e["created_at"] == last and e.get("id") in seen)
                ]
                if not fresh:
                    continue
                emit_logs(fresh, args.json, sys.stdout)
                newest = max(e["created_at"] for e in fresh)
                if last is None or newest > last:
                    last, seen = newest, set()
                seen |= {e.get("id") for e in fresh if e["created_at"] == last}
        except KeyboardInterrupt:
            return 0


