"""The ``cyllama-db`` command line (also ``python -m cyllama_db``).

Standard library only (argparse). Every command opens the database given by
``--db`` (else ``$CYLLAMA_DB_PATH``, else the per-user default), does one thing
and exits with 0 (success), 1 (an error: the message is one line on stderr)
or 2 (a usage mistake: unknown option, malformed value). Read commands take
``--json`` and then print JSON (datetimes as ISO-8601) instead of tables.

:func:`build_parser` returns the parser; ``docs/cli.md`` documents every
command and option it defines (a test checks that).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import logging
import math
import os
import re
import shlex
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from .._time import _shown, parse_when
from ..stores.search import fts_query

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = ["build_parser", "main"]

PROG = "cyllama-db"

Handler = Callable[[argparse.Namespace], int]

# Exceptions that mean "the request cannot be done as asked": reported as one
# line on stderr with exit code 1. Anything else is a bug and keeps its
# traceback (set CYLLAMA_DEBUG=1 to see tracebacks for these too).
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    LookupError,
    ArithmeticError,  # e.g. OverflowError: a number too big for SQLite or the clock
    OSError,
    sqlite3.Error,
    ImportError,
    RuntimeError,
)

# Upper bounds of numeric options: far beyond any real use, well inside what
# SQLite (64-bit integers), time.sleep() and datetimes can take.
_MAX_COUNT = 1_000_000_000
_MAX_SECONDS = 86_400.0  # polling and sampling intervals: one day


# -- errors --------------------------------------------------------------------------------


class UsageError(Exception):
    """A malformed command line: reported on one line, exit code 2."""

    def __init__(self, message: str, prog: str = PROG) -> None:
        super().__init__(message)
        self.message = message
        self.prog = prog


class CommandError(Exception):
    """The command cannot do what was asked: one line on stderr, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with errors raised (one line, exit 2) instead of printed with the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


# -- argument types ------------------------------------------------------------------------


def _duration(text: str) -> timedelta | datetime:
    """``--since``/``--until``/``--older-than``: read by the API's own parser (``_time.parse_when``).

    A duration (``7d``, ``90m``: that long ago) or an ISO-8601 date/time.
    """
    try:
        value = parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {_shown(text)}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what}, got {value}")
        if value > _MAX_COUNT:
            raise argparse.ArgumentTypeError(f"must be at most {_MAX_COUNT}, got {_shown(text)}")
        return value

    return parse


_positive_int = _int_at_least(1, "must be at least 1")
_non_negative_int = _int_at_least(0, "must not be negative")


def _float_between(
    minimum: float, maximum: float, *, exclusive_min: bool = False
) -> Callable[[str], float]:
    """An argparse type for a finite float in [minimum, maximum] ((minimum, ...] if exclusive)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None
        low_ok = value > minimum if exclusive_min else value >= minimum
        if not (low_ok and value <= maximum):  # also rejects nan and inf
            low = f"more than {minimum:.10g}" if exclusive_min else f"at least {minimum:.10g}"
            raise argparse.ArgumentTypeError(
                f"must be {low} and at most {maximum:.10g}, got {_shown(text)}"
            )
        return value

    return parse


_positive_float = _float_between(0, _MAX_SECONDS, exclusive_min=True)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise UsageError(f"{what}: {text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def _typed_value(text: str, type_name: str, what: str) -> Any:
    """``text`` converted to ``type_name`` (a config ``--type``); UsageError if it does not fit."""
    try:
        if type_name == "str":
            return text
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
        if type_name == "bool":
            return _parse_bool(text, what)
        if type_name == "json":
            return json.loads(text)
    except (ValueError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what}: {text!r} is not a valid {type_name} ({exc})") from None
    raise UsageError(f"{what}: unknown type {type_name!r}")


# -- output --------------------------------------------------------------------------------


def _none(value: float) -> Any:
    return None


def _nonfinite_name(value: float) -> str:
    """``nan``/``inf``/``-inf`` spelled as JavaScript and Python's json module do."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _plain(value: Any, *, nonfinite: Callable[[float], Any] = _none) -> Any:
    """``value`` as JSON-ready data: datetimes ISO-8601, non-finite floats ``nonfinite(x)`` (None)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, float):
        return value if math.isfinite(value) else nonfinite(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, nonfinite=nonfinite) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, nonfinite=nonfinite) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _plain(to_dict(), nonfinite=nonfinite)
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value), nonfinite=nonfinite)
    return str(value)


# -- terminal safety: what the database holds is shown, never run by the terminal -------------

# C0 controls but newline and tab, DEL, C1 controls (U+0080-U+009F: 0x9b is a CSI
# on some terminals), the line and paragraph separators, and the bidirectional
# overrides that reorder what is shown (U+202A-U+202E, U+2066-U+2069).
_UNSAFE_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _visible(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), as git and journalctl do.

    Terminal escape sequences in a model name, a prompt or a log message
    (clearing the screen, OSC 52 clipboard writes, ...) are printed as the
    letters of their escape, never sent to the terminal. With ``lines`` a
    newline and a tab stay as they are (multi-line log messages), else they
    too become ``\\n`` and ``\\t`` (one table cell per line).
    """
    return (_UNSAFE_IN_LINES if lines else _UNSAFE).sub(_escape_char, text)


def _json_text(data: Any, **dump: Any) -> str:
    """JSON text for a terminal: json.dumps escapes C0 controls; C1 and the bidi controls too here."""
    text = json.dumps(data, ensure_ascii=False, **dump)
    return _UNSAFE_IN_LINES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _print_json(data: Any, stream: TextIO | None = None) -> None:
    out = sys.stdout if stream is None else stream
    out.write(_json_text(_plain(data), indent=2, allow_nan=False) + "\n")


def _fmt(value: Any) -> str:
    """One table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.2f}" if abs(value) >= 0.01 else f"{value:.3g}"
    if isinstance(value, dict | list):
        return _visible(json.dumps(_plain(value), ensure_ascii=False))
    return _visible(str(value))


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover - loop always returns


_PERCENT = re.compile(r"-?\d+(\.\d+)?%")


def _table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    stream: TextIO | None = None,
    *,
    decimals: int | None = None,
) -> None:
    """Print an aligned text table (numbers and percentages right-aligned).

    ``decimals``: every float column shows that many decimals (a column of
    measurements reads better as 30.00 / 42.10 than as 30 / 42.10).
    """
    out = sys.stdout if stream is None else stream

    def cell(value: Any) -> str:
        if decimals is not None and isinstance(value, float) and math.isfinite(value):
            return f"{value:.{decimals}f}"
        return _fmt(value)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [
        bool(rows)
        and all(
            (isinstance(row[i], int | float) and not isinstance(row[i], bool))
            or row[i] is None
            or (isinstance(row[i], str) and _PERCENT.fullmatch(row[i]) is not None)
            for row in rows
        )
        for i in range(len(headers))
    ]
    widths = [
        max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    out.write(line(headers) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write(line(row) + "\n")


class _StreamTable:
    """A table printed a row at a time (``metrics watch``): fixed column widths, numbers right-aligned.

    Unlike :func:`_table` the rows are not known in advance, so each column is
    as wide as ``widths`` says (at least its header); a longer cell widens only its own row.
    """

    def __init__(
        self,
        headers: Sequence[str],
        widths: Sequence[int],
        numeric: Sequence[bool],
        stream: TextIO | None = None,
    ) -> None:
        self.headers = list(headers)
        self.widths = [max(len(h), w) for h, w in zip(headers, widths, strict=True)]
        self.numeric = list(numeric)
        self.stream = stream

    def _line(self, cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, self.widths, self.numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    def header(self) -> None:
        out = sys.stdout if self.stream is None else self.stream
        out.write(self._line(self.headers) + "\n")
        out.write("  ".join("-" * w for w in self.widths) + "\n")
        out.flush()

    def row(self, values: Sequence[Any]) -> None:
        out = sys.stdout if self.stream is None else self.stream
        out.write(self._line([_fmt(v) for v in values]) + "\n")
        out.flush()


def _pairs(pairs: Sequence[tuple[str, Any]], stream: TextIO | None = None) -> None:
    """Print ``key: value`` lines with the values aligned."""
    out = sys.stdout if stream is None else stream
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        out.write(f"{(key + ':').ljust(width + 1)} {_fmt(value)}\n")


class _Progress:
    """``progress(done, total)`` that draws a percentage on a terminal's stderr line."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        pct = 100.0 if total <= 0 else 100.0 * done / total
        self.stream.write(f"\r{self.label}: {pct:5.1f}% ({done}/{total})")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _progress_for(label: str) -> _Progress | None:
    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    return _Progress(label, stream) if callable(isatty) and isatty() else None


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Let SIGTERM end a long-running command as Ctrl-C does: cleanly, exit code 0."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- opening the database ------------------------------------------------------------------


class _Held(logging.Filter):
    """Holds back every record of one logger (those logged on it directly) for later."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def _construct(path: str | None, readonly: bool = False) -> CyllamaDB:
    """``CyllamaDB(path)``, its "falling back to memory" warning kept off stderr.

    The library logs that warning and carries on in memory; the command line
    reports the same failure as its one error line instead (see :func:`_open`),
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
        db = CyllamaDB(path, enabled=True, readonly=readonly)
    finally:
        library_logger.removeFilter(held)
    if db.fallback_reason is None:
        for record in held.records:
            library_logger.handle(record)
    return db


@contextlib.contextmanager
def _open(args: argparse.Namespace, *, reads: bool = False) -> Iterator[CyllamaDB]:
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


def _require(db: Any, method: str, store: str) -> Callable[..., Any]:
    fn = getattr(db, method, None)
    if fn is None:
        raise CommandError(
            f"this cyllama-db has no {store} store yet ({method}() is missing); upgrade cyllama-db"
        )
    return fn


# -- info / vacuum / migrate ---------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from ..db import migrations

    with _open(args, reads=True) as db:
        stats = db.get_db_stats()
        size = db.get_database_size()
    file_bytes = size if db.is_memory else _file_bytes(db.path)
    counts = {
        k: v
        for k, v in stats.items()
        if k not in ("path", "file_size_mb", "schema_version")
        and isinstance(v, int)
        and not isinstance(v, bool)
    }
    info = {
        "path": stats.get("path"),
        "file_bytes": file_bytes,
        "used_bytes": size,
        "schema_version": stats.get("schema_version"),
        "latest_schema_version": migrations.latest_version(),
        "counts": counts,
        **{k: v for k, v in stats.items()
           if k not in counts and k not in ("path", "schema_version", "file_size_mb")},
    }
    if args.json:
        _print_json(info)
        return 0
    pairs: list[tuple[str, Any]] = [
        ("path", info["path"]),
        ("size", f"{_human_bytes(file_bytes)} on disk, {_human_bytes(size)} in use"),
        ("schema version", f"{info['schema_version']} (this cyllama-db: {info['latest_schema_version']})"),
    ]
    pairs += [(name.replace("_", " "), n) for name, n in sorted(counts.items())]
    _pairs(pairs)
    return 0


def _cmd_vacuum(args: argparse.Namespace) -> int:
    with _open(args) as db:
        before = _file_bytes(db.path)
        db.vacuum()
        after = _file_bytes(db.path)
    if args.json:
        _print_json({"path": db.path, "bytes_before": before, "bytes_after": after})
        return 0
    print(f"vacuumed {db.path}: {_human_bytes(before)} -> {_human_bytes(after)}")
    return 0


def _file_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def _read_only_versions(path: str) -> dict[int, tuple[str | None, str | None]]:
    """``{version: (name, applied_at)}`` read without migrating (or creating) the file."""
    if path == ":memory:" or not os.path.exists(path):
        return {}
    if not os.path.isfile(path):
        raise CommandError(f"cannot read the schema version of {path}: not a regular file")
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    from ..db.settings import Settings

    conn = sqlite3.connect(uri, uri=True, timeout=Settings.resolve(path=path).busy_timeout)
    try:
        has = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
        ).fetchone()
        if has is None:
            return {}
        cols = {r[1] for r in conn.execute("PRAGMA table_info(schema_version)")}
        name_col = "name" if "name" in cols else "NULL"
        return {
            int(v): (n, a)
            for v, n, a in conn.execute(f"SELECT version, {name_col}, applied_at FROM schema_version")
        }
    finally:
        conn.close()


def _db_file(args: argparse.Namespace) -> str:
    from ..db.settings import Settings

    return Settings.resolve(path=getattr(args, "db", None), enabled=True).path


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ..db import facade as database
    from ..db import migrations

    del database  # imported for its side effect: every store registers its migrations

    path = _db_file(args)
    try:
        applied = _read_only_versions(path)
    except sqlite3.Error as exc:
        raise CommandError(f"cannot read the schema version of {path}: {exc}") from None
    if args.status:
        known = {m.version: m.name for m in migrations.registered_migrations()}
        rows = []
        for version in sorted(set(known) | set(applied)):
            if version in applied:
                state = "applied" if version in known else "unknown (newer cyllama-db)"
                name, at = applied[version]
                name = known.get(version, name)
            else:
                state, name, at = "pending", known[version], None
            rows.append({"version": version, "name": name, "status": state, "applied_at": at})
        result = {
            "path": path,
            "exists": path == ":memory:" or os.path.exists(path),
            "schema_version": max(applied, default=0),
            "latest_version": migrations.latest_version(),
            "migrations": rows,
        }
        if args.json:
            _print_json(result)
            return 0
        print(f"{path}: schema version {result['schema_version']}, "
              f"this cyllama-db knows up to {result['latest_version']}")
        _table([[r["version"], r["name"], r["status"], r["applied_at"]] for r in rows],
               ["version", "name", "status", "applied_at"])
        return 0
    before = max(applied, default=0)
    with _open(args) as db:
        after = db.schema_version()
    result = {"path": path, "from_version": before, "to_version": after,
              "applied": [v for v in range(before + 1, after + 1)]}
    if args.json:
        _print_json(result)
    elif after == before:
        print(f"{path}: up to date (schema version {after})")
    else:
        print(f"{path}: migrated from schema version {before} to {after}")
    return 0


# -- config --------------------------------------------------------------------------------


def _value_type(key: str, value: Any) -> str:
    from ..stores.config import encode_value

    return encode_value(key, value)[1]


def _show_value(value: Any) -> str:
    """A config value as text that ``config set`` reads back with the same ``--type``.

    Non-finite floats print as Python spells them (``nan``, ``inf``, ``-inf``)
    at the top level and as ``NaN``/``Infinity`` inside JSON values: both are
    what ``--type float`` and ``--type json`` accept.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(_plain(value, nonfinite=float), ensure_ascii=False, allow_nan=True)


def _config_json(value: Any) -> Any:
    # The config store keeps nan/inf (they round-trip); JSON has no such
    # numbers, and null would be indistinguishable from a stored None, so
    # they are written as the strings "NaN", "Infinity" and "-Infinity".
    return _plain(value, nonfinite=_nonfinite_name)


def _cmd_config_get(args: argparse.Namespace) -> int:
    missing = object()
    with _open(args, reads=True) as db:
        value = db.get_config(args.key, missing)
    if value is missing:
        raise CommandError(f"config key {args.key!r} is not set (see: {PROG} config list)")
    if args.json:
        _print_json(
            {"key": args.key, "value": _config_json(value), "type": _value_type(args.key, value)}
        )
    else:
        print(_visible(_show_value(value), lines=True))
    return 0


def _cmd_config_set(args: argparse.Namespace) -> int:
    value = _typed_value(args.value, args.type, f"config set {args.key} --type {args.type}")
    with _open(args) as db:
        db.set_config(args.key, value)
    if args.json:
        _print_json({"key": args.key, "value": value, "type": args.type})
        return 0
    print(f"{_visible(args.key)} = {_visible(_show_value(value), lines=True)} ({args.type})")
    return 0


def _cmd_config_list(args: argparse.Namespace) -> int:
    with _open(args, reads=True) as db:
        items = db.get_all_config()
    if args.json:
        _print_json([
            {"key": k, "value": _config_json(v), "type": _value_type(k, v)} for k, v in items.items()
        ])
        return 0
    if not items:
        print("no config entries")
        return 0
    _table([[k, _value_type(k, v), _show_value(v)] for k, v in items.items()], ["key", "type", "value"])
    return 0


def _cmd_config_unset(args: argparse.Namespace) -> int:
    with _open(args) as db:
        existed = db.delete_config(args.key)
    if not existed:
        raise CommandError(f"config key {args.key!r} is not set")
    if args.json:
        _print_json({"key": args.key, "removed": True})
        return 0
    print(f"removed {args.key}")
    return 0


# -- export / import -----------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    if args.format == "jsonl" and not args.table:
        raise UsageError("--format jsonl needs --table TABLE (one table per file)", f"{PROG} export")
    if args.format == "sqlite" and args.table:
        raise UsageError("--table only applies to --format jsonl", f"{PROG} export")
    if args.path == "-" and args.format != "jsonl":
        raise UsageError("only --format jsonl can be written to stdout ('-')", f"{PROG} export")
    progress = _progress_for("exporting")
    if args.path != "-" and not args.force and os.path.exists(args.path) and not os.path.isdir(args.path):
        raise CommandError(f"{args.path} already exists; choose another name or pass --force to overwrite it")
    with _open(args, reads=True) as db:
        target: Any = sys.stdout if args.path == "-" else args.path
        try:
            result = db.export_database(
                target,
                format=args.format,
                table=args.table,
                overwrite=args.force,
                include_secrets=args.include_secrets,
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.finish()
    if args.path == "-":
        return 0
    if args.json:
        _print_json(result)
    elif result["format"] == "jsonl":
        print(f"exported {result['rows']} rows of {result['table']} to {result['path']}")
    else:
        note = f", {result['redacted_secrets']} secrets redacted" if result["redacted_secrets"] else ""
        print(f"exported {db.path} to {result['path']} "
              f"({_human_bytes(result['bytes'])}, schema version {result['schema_version']}{note})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    progress = _progress_for("importing")
    with _open(args) as db:
        try:
            timeout: Any = {"timeout": None} if args.no_timeout else (
                {} if args.timeout is None else {"timeout": args.timeout.total_seconds()}
            )
            report = db.import_database(
                args.path, on_conflict=args.on_conflict, progress=progress, **timeout
            )
        finally:
            if progress is not None:
                progress.finish()
    if args.json:
        _print_json(report)
        return 0
    print(f"imported {_visible(report['source'])} (schema version {report['source_schema_version']}) "
          f"into {_visible(db.path)}")
    rows = [
        [t, e["mode"] if e["key"] is None else "by " + ",".join(e["key"]), e["rows"], e["inserted"],
         e["unchanged"] + e["duplicates"], e["conflicts"], e["replaced"]]
        for t, e in report["tables"].items()
    ]
    _table(rows, ["table", "merge", "rows", "added", "already there", "conflicts", "replaced"])
    if report["conflict_count"]:
        kept = report["on_conflict"] == "keep"
        print(f"\n{report['conflict_count']} conflicts (on-conflict={report['on_conflict']}):")
        for c in report["conflicts"][:20]:
            print(f"  {c['table']} {_fmt(c['key'])}: {c['resolution']}")
        if report["conflict_count"] > 20:
            print(f"  ... and {report['conflict_count'] - 20} more (--json lists them)")
        if kept:
            print("the current rows were kept; use --on-conflict replace or newer to take imported ones")
    if report.get("skipped_row_count"):
        print(f"\n{report['skipped_row_count']} invalid rows skipped (never stored):")
        for table, entry in report["tables"].items():
            for reason, count in (entry.get("skipped_reasons") or {}).items():
                print(f"  {_visible(table)}: {count} x {_visible(reason)}")
    if report["skipped_tables"]:
        names = ", ".join(_visible(t) for t in report["skipped_tables"])
        print(f"skipped tables this database does not have: {names}")
    if report.get("cache_evicted"):
        print(f"cache size limit: {report['cache_evicted']} entries evicted")
    return 0


# -- cache ---------------------------------------------------------------------------------


_CACHE_LIST_COLUMNS = (
    "cache_key", "kind", "model_name", "model_path", "prompt", "finish_reason", "tokens_generated",
    "size_bytes", "hit_count", "created_at", "expires_at", "last_hit_at", "last_used_at",
)
_CACHE_TIMES = ("created_at", "expires_at", "last_hit_at", "last_used_at")


def _cache_columns(db: Any) -> list[str]:
    _require(db, "get_cache_stats", "cache")
    with db.pool.read() as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(cache)")]


def _cache_record(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    from .._time import from_timestamp

    record = dict(zip(names, row, strict=True))
    for name in _CACHE_TIMES:
        if isinstance(record.get(name), int | float):
            record[name] = from_timestamp(record[name])
    for name in ("config_json", "response_json"):
        if isinstance(record.get(name), str):
            with contextlib.suppress(ValueError):
                record[name[: -len("_json")]] = json.loads(record.pop(name))
    return record


def _cache_entries(
    db: Any, limit: int, order: str, model: str | None, namespace: str | None = None
) -> list[dict[str, Any]]:
    lister = getattr(db, "list_cache_entries", None)
    if callable(lister):  # the store's own listing, where it has one
        return [dict(e) for e in lister(limit=limit, order=order, model_path=model, namespace=namespace)]
    available = _cache_columns(db)
    names = [c for c in _CACHE_LIST_COLUMNS if c in available]
    where, params = "", []
    if model:
        where = " WHERE model_path = ? OR model_name = ?"
        params = [os.path.abspath(os.path.expanduser(model)), os.path.basename(model)]
    by = "created_at DESC" if order == "newest" else "hit_count DESC, last_used_at DESC"
    with db.pool.read() as conn:
        rows = conn.execute(
            f"SELECT {', '.join(names)} FROM cache{where} ORDER BY {by}, id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
    return [_cache_record(names, row) for row in rows]


def _cmd_cache_list(args: argparse.Namespace) -> int:
    with _open(args, reads=True) as db:
        entries = _cache_entries(db, args.n, args.sort, args.model, args.namespace)
    if args.json:
        _print_json(entries)
        return 0
    if not entries:
        print("no cache entries")
        return 0
    _table(
        [[str(e.get("cache_key", ""))[:16], e.get("model_name") or _short_path(e.get("model_path")),
          e.get("namespace") or "-", e.get("hit_count"), e.get("size_bytes"), e.get("created_at"),
          e.get("expires_at"), _preview(e.get("prompt"))] for e in entries],
        ["key", "model", "namespace", "hits", "bytes", "created", "expires", "prompt"],
    )
    return 0


def _short_path(path: Any) -> str:
    return "-" if not path else os.path.basename(str(path))


def _preview(text: Any, width: int = 40) -> str:
    if text is None:
        return "-"
    flat = _visible(" ".join(str(text).split()))
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _cmd_cache_search(args: argparse.Namespace) -> int:
    with _open(args, reads=True) as db:
        try:
            fts_query(args.text, "TEXT")
        except ValueError as exc:
            raise UsageError(str(exc), f"{PROG} cache search") from None
        entries = _require(db, "search_cache", "cache")(
            args.text, limit=args.n, model_path=args.model, namespace=args.namespace,
            include_expired=args.expired,
        )
    if args.json:
        _print_json(entries)
        return 0
    if not entries:
        print(f"no cache entries match {args.text!r}")
        return 0
    _table(
        [[str(e.get("cache_key", ""))[:16], e.get("model_name") or _short_path(e.get("model_path")),
          e.get("namespace") or "-", e.get("hit_count"), e.get("created_at"),
          _preview(e.get("snippet"), 72)] for e in entries],
        ["key", "model", "namespace", "hits", "created", "match"],
    )
    return 0


def _cmd_cache_show(args: argparse.Namespace) -> int:
    prefix = args.key.strip().lower()
    if not prefix:
        raise UsageError("KEY must not be empty", f"{PROG} cache show")
    with _open(args, reads=True) as db:
        names = _cache_columns(db)
        with db.pool.read() as conn:
            # A key prefix is an index range on the unique cache_key index.
            rows = conn.execute(
                f"SELECT {', '.join(names)} FROM cache WHERE cache_key >= ? AND cache_key < ?"
                " ORDER BY cache_key LIMIT 2",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
    if not rows:
        raise CommandError(f"no cache entry with key {args.key!r} (see: {PROG} cache list)")
    if len(rows) > 1:
        raise CommandError(f"key prefix {args.key!r} matches several entries; give more of the key")
    entry = _cache_record(names, rows[0])
    entry.pop("id", None)
    if args.json:
        _print_json(entry)
    else:
        _pairs([(k, v.replace("\n", "\\n") if isinstance(v, str) else v) for k, v in entry.items()])
    return 0


def _cmd_cache_invalidate(args: argparse.Namespace) -> int:
    criteria = args.model or args.prompt is not None or args.older_than is not None or args.namespace
    if not (args.all or criteria):
        raise UsageError(
            "give --model, --prompt, --older-than, --namespace or --all (to empty the whole cache)",
            f"{PROG} cache invalidate",
        )
    if args.all and criteria:
        raise UsageError("--all cannot be combined with other criteria", f"{PROG} cache invalidate")
    with _open(args) as db:
        fn = _require(db, "invalidate_cache", "cache")
        removed = fn(
            prompt=args.prompt, model_path=args.model, older_than=args.older_than, namespace=args.namespace
        )
    if args.json:
        _print_json({"removed": removed})
        return 0
    print(f"removed {removed} cache entries")
    return 0


def _cmd_cache_cleanup(args: argparse.Namespace) -> int:
    with _open(args) as db:
        removed = _require(db, "cleanup_cache", "cache")()
    if args.json:
        _print_json({"removed": removed})
        return 0
    print(f"removed {removed} expired or over-limit cache entries")
    return 0


def _cmd_cache_stats(args: argparse.Namespace) -> int:
    with _open(args, reads=True) as db:
        stats = dict(_require(db, "get_cache_stats", "cache")())
        summary = db.get_stats_summary() if hasattr(db, "get_stats_summary") else {}
    # Hits over lookups is only known for recorded generations: take it from the statistics.
    stats["hit_rate"] = summary.get("cache_hit_rate") if summary.get("total_generations") else None
    if args.json:
        _print_json(stats)
        return 0
    limit = stats.get("max_size_mb")
    used = stats.get("size_bytes")
    pairs: list[tuple[str, Any]] = [
        ("entries", stats.get("entries")),
        ("size", f"{_human_bytes(used)}"
                 + (f" of {_human_bytes(limit * 1_048_576)} ({100 * used / (limit * 1_048_576):.1f}%)"
                    if limit and used is not None else "")),
        ("hits served", stats.get("hits")),
        ("hit rate", _pct(stats["hit_rate"]) + " of recorded generations"
         if stats["hit_rate"] is not None else "- (no generations recorded)"),
        ("expired", stats.get("expired")),
        ("oldest", stats.get("oldest")),
    ]
    for kind, n in (stats.get("by_kind") or {}).items():
        pairs.append((f"{kind} entries", n))
    ttl = stats.get("default_ttl_seconds")
    pairs.append(("default ttl", "never expires" if ttl is None else f"{ttl / 3600:g} h"))
    _pairs(pairs)
    return 0


# -- stats / history -----------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace) -> int:
    with _open(args, reads=True) as db:
        summary = _require(db, "get_stats_summary", "statistics")(
            model_path=args.model, since=args.since, until=args.until
        )
    if args.json:
        _print_json(summary)
        return 0
    print(f"generations: {summary['total_generations']}   tokens: {summary['total_tokens']}   "
          f"cache hit rate: {_pct(summary.get('cache_hit_rate'))}   "
          f"avg tokens/s: {_fmt(summary.get('avg_tokens_per_second'))}")
    by_model = summary.get("by_model") or {}
    if by_model:
        print()
        _table(
            [[m.get("model_name") or _short_path(path), m.get("generations"), m.get("tokens"),
              _pct(m.get("cache_hit_rate")), m.get("avg_tokens_per_second"),
              m.get("p50_latency_ms"), m.get("p95_latency_ms")] for path, m in by_model.items()],
            ["model", "generations", "tokens", "hit rate", "tok/s", "p50 ms", "p95 ms"],
        )
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    with _open(args, reads=True) as db:
        rows = _require(db, "get_generation_history", "statistics")(
            limit=args.n, offset=args.offset, model_path=args.model, since=args.since, until=args.until
        )
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no generations recorded")
        return 0
    _table(
        [[r.get("created_at"), r.get("model_name") or _short_path(r.get("model_path")),
          r.get("prompt_tokens"), r.get("generated_tokens"), r.get("total_time_ms"),
          r.get("tokens_per_second"), r.get("cache_hit"), r.get("finish_reason")] for r in rows],
        ["time", "model", "prompt tok", "gen tok", "total ms", "tok/s", "hit", "finish"],
    )
    return 0


# -- logs ----------------------------------------------------------------------------------


def _log_line(entry: Mapping[str, Any]) -> str:
    when = _fmt(entry.get("created_at"))
    category = _visible(str(entry.get("category") or "-"))
    level = _visible(str(entry.get("level", "")))
    message = _visible(str(entry.get("message", "")), lines=True)
    text = f"{when} {level.ljust(8)} {category}: {message}"
    if entry.get("error_type"):
        error = f"{entry['error_type']}: {entry.get('error_message') or ''}"
        text += f" [{_visible(error, lines=True)}]"
    return text


def _emit_logs(entries: Sequence[Mapping[str, Any]], as_json: bool, stream: TextIO) -> None:
    for entry in entries:
        if as_json:
            stream.write(_json_text(_plain(entry)) + "\n")
        else:
            stream.write(_log_line(entry) + "\n")
    stream.flush()


def _cmd_logs(args: argparse.Namespace) -> int:
    if args.search is not None:
        try:
            fts_query(args.search, "-q")
        except ValueError as exc:
            raise UsageError(str(exc), f"{PROG} logs") from None
    with _open(args, reads=True) as db:
        get_logs = _require(db, "get_logs", "logs")
        entries = list(reversed(get_logs(
            level=args.level, category=args.category, since=args.since, limit=args.n, search=args.search
        )))
        if not args.follow:
            if args.json:
                _print_json(entries)
            elif not entries:
                print("no log entries")
            else:
                _emit_logs(entries, False, sys.stdout)
            return 0
        # Follow: JSON lines, since a JSON array would never end.
        _emit_logs(entries, args.json, sys.stdout)
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
                _emit_logs(fresh, args.json, sys.stdout)
                newest = max(e["created_at"] for e in fresh)
                if last is None or newest > last:
                    last, seen = newest, set()
                seen |= {e.get("id") for e in fresh if e["created_at"] == last}
        except KeyboardInterrupt:
            return 0


# -- models --------------------------------------------------------------------------------


def _param_value(name: str, text: str) -> Any:
    """A ``--param name=value`` value converted to the parameter's type."""
    from ..stores.params import PARAMS_BY_NAME

    param = PARAMS_BY_NAME.get(name)
    kind = None if param is None else param.type
    what = f"--param {name}"
    if text.lower() in ("null", "none") and kind not in (None, "str"):
        return None
    if kind in ("float", "bool", "json"):
        return _typed_value(text, kind, what)
    if kind in ("int", "gpu_layers"):
        if kind == "gpu_layers" and text in ("all", "auto"):
            return text
        number = _typed_value(text, "int", what)
        if not -(2**63) <= number < 2**63:  # what SQLite and llama.cpp can hold
            raise UsageError(f"{what}: {_shown(text)} is out of range (a 64-bit integer)")
        return number
    if kind == "str" or param is not None:
        return text
    # An unknown name: let the registry say so (with suggestions); keep JSON scalars typed.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _params_from(pairs: Sequence[tuple[str, str]] | None) -> dict[str, Any]:
    return {name: _param_value(name, value) for name, value in (pairs or [])}


def _redacted(model: Mapping[str, Any], show_secrets: bool) -> dict[str, Any]:
    from ..stores.params import redact

    return redact(dict(model), show_secrets=show_secrets)


def _find_model(db: Any, name: str) -> dict[str, Any]:
    model = _require(db, "get_model_by_name", "model registry")(name)
    if model is None:
        raise CommandError(f"no model named {name!r} (see: {PROG} models list)")
    return dict(model)


def _cmd_models_list(args: argparse.Namespace) -> int:
    filters = {}
    if args.status:
        filters["status"] = args.status
    if args.type:
        filters["type"] = args.type
    with _open(args, reads=True) as db:
        models = [dict(m) for m in _require(db, "get_models", "model registry")(**filters)]
    models = [_redacted(m, args.show_secrets) for m in models]
    if args.json:
        _print_json(models)
        return 0
    if not models:
        print("no models registered")
        return 0
    _table(
        [[m.get("id"), m.get("name"), m.get("type"), m.get("status"), m.get("quantization"),
          m.get("size_label"), m.get("last_used_at"), m.get("model_path")] for m in models],
        ["id", "name", "type", "status", "quant", "size", "last used", "path"],
    )
    return 0


def _cmd_models_show(args: argparse.Namespace) -> int:
    with _open(args, reads=True) as db:
        model = _redacted(_find_model(db, args.name), args.show_secrets)
    if args.json:
        _print_json(model)
        return 0
    # The full GGUF key/value set is long: --json shows it.
    _pairs([
        (k, v.replace("\n", "\\n") if isinstance(v, str) else v)
        for k, v in model.items()
        if v is not None and k not in ("metadata", "gguf_metadata")
    ])
    return 0


def _cmd_models_add(args: argparse.Namespace) -> int:
    params = _params_from(args.param)
    if args.type:
        params["type"] = args.type
    if args.status:
        params["status"] = args.status
    with _open(args) as db:
        result = _require(db, "register_model", "model registry")(args.path, name=args.name, **params)
        # An id (or the record itself): print what was registered either way.
        found = db.get_model(result) if isinstance(result, int) else result
    record: dict[str, Any] = dict(found or {"name": args.name, "id": result})
    if args.json:
        _print_json(_redacted(record, False))
        return 0
    print(_visible(f"registered {record['name']!r} (id {record['id']}): "
                   f"{record.get('architecture') or '?'} {record.get('size_label') or ''} "
                   f"{record.get('quantization') or ''}".rstrip()))
    return 0


def _cmd_models_update(args: argparse.Namespace) -> int:
    params = _params_from(args.param)
    if args.status:
        params["status"] = args.status
    if args.type:
        params["type"] = args.type
    if args.rename is not None:
        if not args.rename.strip():
            raise UsageError("--rename needs a non-empty NEW_NAME", f"{PROG} models update")
        params["name"] = args.rename
    if not params:
        raise UsageError("nothing to change: give --param KEY=VALUE, --status, --type or --rename",
                         f"{PROG} models update")
    with _open(args) as db:
        _find_model(db, args.name)
        updated = _require(db, "update_model", "model registry")(args.name, **params)
    if args.json:
        _print_json(_redacted(dict(updated or {"name": args.name}), False))
        return 0
    print(f"updated {args.name!r}: {', '.join(sorted(params))}")
    return 0


def _cmd_models_rm(args: argparse.Namespace) -> int:
    with _open(args) as db:
        _find_model(db, args.name)
        _require(db, "delete_model", "model registry")(args.name)
    if args.json:
        _print_json({"name": args.name, "removed": True})
        return 0
    print(f"removed {args.name!r}")
    return 0


def _cmd_models_args(args: argparse.Namespace) -> int:
    import warnings

    with _open(args, reads=True) as db:
        model = _find_model(db, args.name)
        if args.llama_kwargs:
            kwargs = _require(db, "to_llama_kwargs", "model registry")(model)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                argv = _require(db, "to_server_args", "model registry")(
                    model, redact_secrets=not args.show_secrets
                )
    if args.llama_kwargs:
        if not args.show_secrets:
            kwargs = _redacted(kwargs, False)
        if args.json:
            _print_json(kwargs)
        else:
            for key, value in kwargs.items():
                print(_visible(f"{key}={value!r}"))
        return 0
    if args.json:
        _print_json(argv)
    else:
        print(_visible(shlex.join(["llama-server", *argv])))
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    return 0


# -- metrics -------------------------------------------------------------------------------

_METRIC_COLUMNS = (
    ("cpu_usage", "cpu %"),
    ("memory_usage", "mem %"),
    ("disk_usage", "disk %"),
    ("gpu_usage", "gpu %"),
    ("gpu_temperature", "gpu °C"),
    ("gpu_memory_used", "gpu MB"),
    ("gpu_power_usage", "gpu W"),
    ("active_models", "models"),
    ("requests_per_minute", "req/min"),
)


def _metric_row(sample: Mapping[str, Any]) -> list[Any]:
    stamp = sample.get("timestamp")
    if isinstance(stamp, int | float):
        stamp = datetime.fromtimestamp(stamp / 1000).astimezone()
    return [stamp, *(sample.get(k) for k, _ in _METRIC_COLUMNS)]


def _cmd_metrics_sample(args: argparse.Namespace) -> int:
    from ..stores import metrics

    with _open(args) as db:
        sample = metrics.sample_metrics(db)
        if not args.no_save:
            db.save_metrics(sample)
    if args.json:
        _print_json(sample)
        return 0
    _table([_metric_row(sample)], ["time", *(h for _, h in _METRIC_COLUMNS)])
    return 0


def _cmd_metrics_watch(args: argparse.Namespace) -> int:
    with _open(args) as db:
        sampler = _require(db, "start_metrics_sampler", "metrics")(interval=args.interval)
        table = _StreamTable(
            ["time", *(h for _, h in _METRIC_COLUMNS)],
            # "YYYY-MM-DD HH:MM:SS", then room for e.g. "100.00" ("143771.00" GPU MB)
            [19, *(9 if key == "gpu_memory_used" else 7 for key, _ in _METRIC_COLUMNS)],
            [False, *(True for _ in _METRIC_COLUMNS)],
        )
        if not args.json:
            table.header()
        try:
            while True:
                count = sampler.samples_taken + 1
                if not sampler.wait_for_samples(count, timeout=max(args.interval * 5, 5.0)):
                    if not sampler.running:
                        raise CommandError(f"the metrics sampler stopped: {sampler.last_error}")
                    continue
                history = db.get_metrics_history(minutes=max(args.interval * 3 / 60, 0.1))
                if not history:
                    continue
                latest = history[-1]
                if args.json:
                    print(_json_text(_plain(latest)), flush=True)
                else:
                    table.row(_metric_row(latest))
        except KeyboardInterrupt:
            return 0
        finally:
            sampler.stop()


def _cmd_metrics_history(args: argparse.Namespace) -> int:
    with _open(args, reads=True) as db:
        rows = _require(db, "get_metrics_history", "metrics")(minutes=args.minutes)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no samples in the last {_fmt(args.minutes)} minutes "
              f"(start one: {PROG} metrics watch, or {PROG} dashboard)")
        return 0
    _table([_metric_row(r) for r in rows], ["time", *(h for _, h in _METRIC_COLUMNS)], decimals=2)
    return 0


# -- dashboard -----------------------------------------------------------------------------


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from .. import dashboard

    with _open(args, reads=True) as db:
        try:
            server = dashboard.make_server(db, args.host, args.port, refresh_seconds=args.refresh)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(f"port {args.port} is in use; try --port 0 (any free port)") from None
            raise
        sampler = None
        if db.settings.readonly and not args.no_sampler:
            print(f"{PROG}: warning: {db.path} is not writable: opened read-only, metrics are "
                  "not sampled", file=sys.stderr)
        elif not args.no_sampler and hasattr(db, "start_metrics_sampler"):
            try:
                sampler = db.start_metrics_sampler(interval=args.interval)
            except ImportError as exc:
                print(f"{PROG}: warning: metrics are not sampled: {exc}", file=sys.stderr)
        if not dashboard.is_loopback(args.host):
            print(f"{PROG}: warning: serving on {args.host}, reachable from other machines; "
                  "the dashboard has no authentication", file=sys.stderr)
        if args.json:
            print(_json_text({"database": db.path, "url": server.url}), flush=True)
        else:
            print(f"dashboard for {db.path} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            if sampler is not None:
                sampler.stop()
    return 0


# -- the parser ----------------------------------------------------------------------------


def _add_json(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a --json given before the command (the global one) is kept.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of a table (also accepted before the command)")


def _command(
    subparsers: Any, name: str, handler: Handler, help_text: str, *, read: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text
    )
    parser.set_defaults(handler=handler)
    # Also accepted after the command (`cyllama-db info --db x.db`); SUPPRESS
    # keeps a --db given before the command when this one is absent.
    parser.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                        help="database file (same as the global --db)")
    # Every command prints something, so every command takes --json.
    _add_json(parser)
    return parser


def _group(subparsers: Any, name: str, help_text: str) -> Any:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    return sub


def build_parser() -> argparse.ArgumentParser:
    """The ``cyllama-db`` argument parser (every command and option)."""
    from .. import __version__
    from ..stores.metrics import MAX_HISTORY_MINUTES, MAX_SAMPLER_INTERVAL, MIN_SAMPLER_INTERVAL
    from ..stores.registry import MODEL_STATUSES

    sampler_interval = _float_between(MIN_SAMPLER_INTERVAL, MAX_SAMPLER_INTERVAL)
    parser = _Parser(
        prog=PROG,
        description="Inspect and maintain a cyllama-db database (cache, statistics, logs, "
        "models, metrics, config).",
        epilog="The database is --db PATH, else $CYLLAMA_DB_PATH, else the per-user default.",
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        help="database file (default: $CYLLAMA_DB_PATH, else the per-user data dir)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of tables (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _command(sub, "info", _cmd_info, "path, size, schema version and row counts per store",
             read=True)
    _command(sub, "vacuum", _cmd_vacuum, "rebuild the file to reclaim free space")
    p = _command(sub, "migrate", _cmd_migrate,
                 "apply pending schema migrations (--status: only show them)", read=True)
    p.add_argument("--status", action="store_true",
                   help="list migrations and whether each is applied, without changing the file")

    # config
    config = _group(sub, "config", "typed key/value configuration")
    p = _command(config, "get", _cmd_config_get, "print one value", read=True)
    p.add_argument("key")
    p = _command(config, "set", _cmd_config_set, "store a value")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--type", choices=("str", "int", "float", "bool", "json"), default="str",
                   help="how to read VALUE (default: str)")
    _command(config, "list", _cmd_config_list, "every key with its type and value", read=True)
    p = _command(config, "unset", _cmd_config_unset, "remove a key")
    p.add_argument("key")

    # export / import
    p = _command(sub, "export", _cmd_export,
                 "write a consistent copy of the database (safe while others write)")
    p.add_argument("path", help="file to write ('-' = stdout, jsonl only)")
    p.add_argument("--format", choices=("sqlite", "jsonl"), default="sqlite",
                   help="sqlite: a complete database file (default); jsonl: one table, a JSON object per row")
    p.add_argument("--table", help="the table to write with --format jsonl")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    p.add_argument("--include-secrets", action="store_true",
                   help="keep secret model parameters (hf_token, api_key) instead of '***'")
    p = _command(sub, "import", _cmd_import,
                 "merge another cyllama-db database file into this one", read=True)
    p.add_argument("path", help="database file written by `cyllama-db export`")
    p.add_argument("--on-conflict", choices=("keep", "replace", "newer"), default="keep",
                   help="when a keyed row differs: keep the current one (default), replace it, "
                   "or take the newer")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--timeout", type=_duration, default=None, metavar="DURATION",
                       help="stop (writing nothing) if the import takes longer, e.g. 90s, 30m "
                       "(default 10m)")
    limit.add_argument("--no-timeout", action="store_true", help="no time limit")

    # cache
    cache = _group(sub, "cache", "the response cache")
    p = _command(cache, "list", _cmd_cache_list, "cache entries", read=True)
    p.add_argument("-n", type=_positive_int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--sort", choices=("newest", "hits"), default="newest",
                   help="newest first (default) or most-hit first")
    p.add_argument("--model", metavar="PATH", help="only entries of this model")
    p.add_argument("--namespace", metavar="NAME", help="only entries of this namespace")
    p = _command(cache, "search", _cmd_cache_search,
                 "entries whose prompt or response matches TEXT (full-text), best first", read=True)
    p.add_argument("text", help='words (all must appear), "a phrase" in double quotes, prefix*')
    p.add_argument("-n", type=_positive_int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--model", metavar="PATH", help="only entries of this model")
    p.add_argument("--namespace", metavar="NAME", help="only entries of this namespace")
    p.add_argument("--expired", action="store_true", help="include expired entries")
    p = _command(cache, "show", _cmd_cache_show, "one entry in full", read=True)
    p.add_argument("key", help="the cache key (a unique prefix is enough)")
    p = _command(cache, "invalidate", _cmd_cache_invalidate, "remove matching entries")
    p.add_argument("--model", metavar="PATH", help="entries of this model")
    p.add_argument("--prompt", help="entries for this exact prompt")
    p.add_argument("--older-than", type=_duration, metavar="DURATION",
                   help="entries created longer ago than this (e.g. 7d, 12h), or before a date (2024-05-01)")
    p.add_argument("--namespace", metavar="NAME", help="entries of this namespace")
    p.add_argument("--all", action="store_true", help="every entry")
    _command(cache, "cleanup", _cmd_cache_cleanup,
             "remove expired entries, then least recently used ones over the size limit")
    _command(cache, "stats", _cmd_cache_stats, "entries, size and hit rate", read=True)

    # stats / history
    p = _command(sub, "stats", _cmd_stats, "generation statistics per model", read=True)
    p.add_argument("--model", metavar="PATH", help="only this model")
    p.add_argument("--since", type=_duration, metavar="DURATION",
                   help="only the last DURATION (e.g. 7d, 24h), or from a date (2024-05-01)")
    p.add_argument("--until", type=_duration, metavar="DURATION",
                   help="only up to DURATION ago, or before a date")
    p = _command(sub, "history", _cmd_history, "recorded generations, newest first", read=True)
    p.add_argument("-n", type=_positive_int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--offset", type=_non_negative_int, default=0, help="skip this many first")
    p.add_argument("--model", metavar="PATH", help="only this model")
    p.add_argument("--since", type=_duration, metavar="DURATION",
                   help="only the last DURATION (e.g. 24h), or from a date (2024-05-01)")
    p.add_argument("--until", type=_duration, metavar="DURATION",
                   help="only up to DURATION ago, or before a date")

    # logs
    p = _command(sub, "logs", _cmd_logs, "structured log entries, oldest of the last N first",
                 read=True)
    p.add_argument("-n", type=_positive_int, default=50, metavar="N", help="how many (default 50)")
    p.add_argument("--level", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   help="this level and above")
    p.add_argument("--category", help="only this category (logger name)")
    p.add_argument("--since", type=_duration, metavar="DURATION",
                   help="only the last DURATION (e.g. 1h), or from a date (2024-05-01)")
    p.add_argument("-q", "--search", metavar="TEXT",
                   help='only entries whose text matches TEXT (full-text: words, "a phrase", prefix*)')
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new entries until Ctrl-C (with --json: JSON lines)")
    p.add_argument("--interval", type=_positive_float, default=1.0, metavar="SECONDS",
                   help="how often --follow checks for new entries (default 1)")

    # models
    models = _group(sub, "models", "the model registry")
    p = _command(models, "list", _cmd_models_list, "registered models", read=True)
    p.add_argument("--status", choices=MODEL_STATUSES,
                   help="only models with this status")
    p.add_argument("--type", help="only models of this type (e.g. llama)")
    p.add_argument("--show-secrets", action="store_true", help="print secrets instead of '***'")
    p = _command(models, "show", _cmd_models_show, "every stored field of one model", read=True)
    p.add_argument("name")
    p.add_argument("--show-secrets", action="store_true", help="print secrets instead of '***'")
    p = _command(models, "add", _cmd_models_add,
                 "register a GGUF file (reads its metadata, not its weights)")
    p.add_argument("path", help="the .gguf file")
    p.add_argument("--name", help="registry name (default: from the file)")
    p.add_argument("--type", help="model type (default: llama)")
    p.add_argument("--status", choices=MODEL_STATUSES,
                   help="initial status")
    p.add_argument("--param", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="a llama-server parameter, e.g. ctx_size=8192 (repeatable)")
    p = _command(models, "update", _cmd_models_update, "change a model's parameters")
    p.add_argument("name")
    p.add_argument("--param", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="a parameter to set (repeatable; VALUE null unsets it)")
    p.add_argument("--status", choices=MODEL_STATUSES,
                   help="new status")
    p.add_argument("--type", help="new model type")
    p.add_argument("--rename", metavar="NEW_NAME", help="new registry name")
    p = _command(models, "rm", _cmd_models_rm, "remove a model from the registry")
    p.add_argument("name")
    p = _command(models, "args", _cmd_models_args,
                 "the model's llama-server command line (or Llama() keyword arguments)", read=True)
    p.add_argument("name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--server", action="store_true",
                       help="llama-server argv (the default)")
    which.add_argument("--llama-kwargs", action="store_true",
                       help="keyword arguments for llama_cpp.Llama(...)")
    p.add_argument("--show-secrets", action="store_true", help="print secrets instead of '***'")

    # metrics
    metrics = _group(sub, "metrics", "CPU, memory, disk and GPU samples")
    p = _command(metrics, "sample", _cmd_metrics_sample, "take one sample, save and print it",
                 read=True)
    p.add_argument("--no-save", action="store_true", help="print the sample without saving it")
    p = _command(metrics, "watch", _cmd_metrics_watch,
                 "sample every --interval seconds in the foreground until Ctrl-C", read=True)
    p.add_argument("--interval", type=sampler_interval, default=1.0, metavar="SECONDS",
                   help=f"seconds between samples (default 1, at least {MIN_SAMPLER_INTERVAL:g})")
    p = _command(metrics, "history", _cmd_metrics_history, "saved samples, oldest first",
                 read=True)
    p.add_argument("--minutes", type=_float_between(0, MAX_HISTORY_MINUTES, exclusive_min=True),
                   default=10.0, help="how far back (default 10)")

    # dashboard
    p = _command(sub, "dashboard", _cmd_dashboard,
                 "serve a local web page with charts of metrics, statistics, cache and models")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 = any free)")
    p.add_argument("--interval", type=sampler_interval, default=1.0, metavar="SECONDS",
                   help=f"metrics sampling interval (default 1, at least {MIN_SAMPLER_INTERVAL:g})")
    p.add_argument("--no-sampler", action="store_true",
                   help="do not sample metrics (another process does)")
    p.add_argument("--refresh", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="how often the page refreshes its data (default 5)")
    return parser


def _run(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        with _stop_on_sigterm():
            return _run(args)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc.message} (see: {exc.prog} --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error of ours.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except CommandError as exc:
        print(f"{PROG}: error: {_visible(str(exc))}", file=sys.stderr)
        return 1
    except _USER_ERRORS as exc:
        if os.environ.get("CYLLAMA_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {_visible(message)}", file=sys.stderr)
        return 1
    except Exception as exc:
        from ..errors import CyllamaDBError

        if isinstance(exc, CyllamaDBError) and not os.environ.get("CYLLAMA_DEBUG"):
            print(f"{PROG}: error: {_visible(' '.join(str(exc).split()))}", file=sys.stderr)
            return 1
        raise
