"""Output of the ``cyllama-db`` commands, shared with the dashboard.

JSON-ready data (:func:`plain`), text that cannot drive the terminal
(:func:`visible`, :func:`json_text`), aligned tables (:func:`print_table`,
:class:`StreamTable`), ``key: value`` lines (:func:`print_pairs`), cell
values (:func:`format_value`, :func:`percent`, :func:`human_bytes`,
:func:`preview`, :func:`short_path`) and a progress line on stderr
(:func:`progress_for`). Standard library only; nothing here opens a database.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "Progress",
    "StreamTable",
    "format_value",
    "human_bytes",
    "json_text",
    "nonfinite_name",
    "percent",
    "plain",
    "preview",
    "print_json",
    "print_pairs",
    "print_table",
    "progress_for",
    "short_path",
    "visible",
]

# -- output --------------------------------------------------------------------------------


def _none(value: float) -> Any:
    return None


def nonfinite_name(value: float) -> str:
    """``nan``/``inf``/``-inf`` spelled as JavaScript and Python's json module do."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def plain(value: Any, *, nonfinite: Callable[[float], Any] = _none) -> Any:
    """``value`` as JSON-ready data: datetimes ISO-8601, non-finite floats ``nonfinite(x)`` (None)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, float):
        return value if math.isfinite(value) else nonfinite(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v, nonfinite=nonfinite) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, nonfinite=nonfinite) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return plain(to_dict(), nonfinite=nonfinite)
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value), nonfinite=nonfinite)
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


def visible(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), as git and journalctl do.

    Terminal escape sequences in a model name, a prompt or a log message
    (clearing the screen, OSC 52 clipboard writes, ...) are printed as the
    letters of their escape, never sent to the terminal. With ``lines`` a
    newline and a tab stay as they are (multi-line log messages), else they
    too become ``\\n`` and ``\\t`` (one table cell per line).
    """
    return (_UNSAFE_IN_LINES if lines else _UNSAFE).sub(_escape_char, text)


def json_text(data: Any, **dump: Any) -> str:
    """JSON text for a terminal: json.dumps escapes C0 controls; C1 and the bidi controls too here."""
    text = json.dumps(data, ensure_ascii=False, **dump)
    return _UNSAFE_IN_LINES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """Print ``data`` as indented JSON (see :func:`plain`, :func:`json_text`) to ``stream`` (stdout)."""
    out = sys.stdout if stream is None else stream
    out.write(json_text(plain(data), indent=2, allow_nan=False) + "\n")


def format_value(value: Any) -> str:
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
        return visible(json.dumps(plain(value), ensure_ascii=False))
    return visible(str(value))


def percent(value: Any) -> str:
    """A fraction as a percentage with one decimal (``0.25`` -> ``25.0%``); ``-`` for None."""
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def human_bytes(n: float | None) -> str:
    """A byte count in B, KB, MB or GB (powers of 1024); ``-`` for None."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover - loop always returns


_PERCENT = re.compile(r"-?\d+(\.\d+)?%")


def print_table(
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
        return format_value(value)

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


class StreamTable:
    """A table printed a row at a time (``metrics watch``): fixed column widths, numbers right-aligned.

    Unlike :func:`print_table` the rows are not known in advance, so each column is
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
        out.write(self._line([format_value(v) for v in values]) + "\n")
        out.flush()


def print_pairs(pairs: Sequence[tuple[str, Any]], stream: TextIO | None = None) -> None:
    """Print ``key: value`` lines with the values aligned."""
    out = sys.stdout if stream is None else stream
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        out.write(f"{(key + ':').ljust(width + 1)} {format_value(value)}\n")


class Progress:
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


def progress_for(label: str) -> Progress | None:
    """A :class:`Progress` drawing on stderr, or None when stderr is not a terminal."""
    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    return Progress(label, stream) if callable(isatty) and isatty() else None


def short_path(path: Any) -> str:
    """A path's file name (``-`` for none): a model in a narrow column."""
    return "-" if not path else os.path.basename(str(path))


def preview(text: Any, width: int = 40) -> str:
    """``text`` on one line, escaped (:func:`visible`), cut to ``width`` with an ellipsis; ``-`` for None."""
    if text is None:
        return "-"
    flat = visible(" ".join(str(text).split()))
    return flat if len(flat) <= width else flat[: width - 1] + "…"

