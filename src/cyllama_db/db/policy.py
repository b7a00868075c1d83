"""How a store's tables travel through ``export_database`` / ``import_database``.

Each store module declares one :class:`TablePolicy` per table it owns, in its
``EXPORT_POLICY`` tuple; the exporter and importer (``stores/export.py``,
``stores/importer.py``) know no table by name and apply the policies
generically:

- ``merge="keyed"``: a row is matched by its natural :attr:`~TablePolicy.key`;
  a matched row whose :attr:`~TablePolicy.content` differs is a *conflict*,
  which ``on_conflict`` settles (``"keep"``, ``"replace"``, ``"newer"``);
- ``merge="append"``: rows are appended, and a row identical to one already
  present is skipped (importing the same file twice is harmless);
- ``merge="derived"``: never imported; triggers rebuild it from the rows
  imported into other tables (copying it would count them twice).

Every imported row is checked first (column types, ``NOT NULL``, ``CHECK``,
the policy's time and JSON columns and its :class:`RowCheck`\\ s); a row
that fails is skipped and reported. A table no store declares is merged by
its primary key, else a unique column, else appended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["MERGE_KINDS", "ColumnCheck", "Recompute", "RowCheck", "TablePolicy", "by_table"]

MergeKind = Literal["keyed", "append", "derived"]

#: The values :attr:`TablePolicy.merge` may take.
MERGE_KINDS: tuple[MergeKind, ...] = ("keyed", "append", "derived")


@dataclass(frozen=True)
class RowCheck:
    """A check of each imported row over some of its columns (run as an SQL function).

    ``check(*values)`` gets the row's values of :attr:`columns` and returns
    1 when the row can be stored, 0 when it must be skipped with
    :attr:`reason`. It is only applied when the file's table has all the
    columns.
    """

    columns: tuple[str, ...]
    check: Callable[..., int]
    reason: str


@dataclass(frozen=True)
class ColumnCheck:
    """A check of every column of each imported row: ``check(column, value)`` is 1 or 0.

    A failing row is skipped with ``"<column>: <reason>"``.
    """

    check: Callable[[str, Any], int]
    reason: str


@dataclass(frozen=True)
class Recompute:
    """A column never taken from an imported file: ``function(*inputs)`` computes it again."""

    column: str
    function: Callable[..., Any]
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class TablePolicy:
    """One table's import/export rules (see the module's docstring).

    Attributes:
        table: the table's name.
        merge: ``"keyed"``, ``"append"`` or ``"derived"``.
        key: the columns that identify a row across databases (``"keyed"``);
            empty: the primary key, else the first unique index.
        content: the columns whose difference makes a conflict; empty: every
            column but the key and :attr:`bookkeeping`.
        newer_by: the column ``on_conflict="newer"`` compares (the larger
            value wins); ``None``: the current row is kept.
        bookkeeping: columns that record use, not content (timestamps, hit
            counts): rows differing only in them are no conflict. A replaced
            row takes them from the file; a kept row keeps its own.
        local_keys: values of the (one-column) key whose rows belong to this
            database and are never imported.
        time_columns: columns holding Unix seconds; a value outside the years
            1-9999 is refused.
        ms_time_columns: the same for columns holding Unix milliseconds.
        json_columns: text columns that must hold valid JSON.
        secret_columns: columns whose values an export writes as the
            redaction marker (``"***"``) unless secrets are included; an
            import never stores the marker, it keeps the stored value (NULL
            for a new row: the column must allow it).
        secret_flag_columns: JSON columns of raw command-line flags whose
            secret flags (``--api-key``...) are redacted and restored one by one.
        redact_text_except: ``None``: no other column holds secrets. A tuple:
            every other TEXT column may hold a URL password or an inline
            secret flag, which are redacted too; these columns are left as
            they are (large JSON or templates that hold no secret).
        row_checks: checks of each imported row (:class:`RowCheck`).
        column_check: a check of every column of each imported row.
        recomputed: columns computed again on import instead of trusted
            (all at once, when the file's table has every column they use).
    """

    table: str
    merge: MergeKind = "keyed"
    key: tuple[str, ...] = ()
    content: tuple[str, ...] = ()
    newer_by: str | None = None
    bookkeeping: tuple[str, ...] = ()
    local_keys: tuple[str, ...] = ()
    time_columns: tuple[str, ...] = ()
    ms_time_columns: tuple[str, ...] = ()
    json_columns: tuple[str, ...] = ()
    secret_columns: tuple[str, ...] = ()
    secret_flag_columns: tuple[str, ...] = ()
    redact_text_except: tuple[str, ...] | None = None
    row_checks: tuple[RowCheck, ...] = ()
    column_check: ColumnCheck | None = None
    recomputed: tuple[Recompute, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.table, str) or not self.table:
            raise TypeError(f"TablePolicy.table must be a table name, got {self.table!r}")
        if self.merge not in MERGE_KINDS:
            raise ValueError(
                f"TablePolicy({self.table!r}).merge must be one of {', '.join(MERGE_KINDS)}, got {self.merge!r}"
            )
        if self.merge != "keyed" and (self.key or self.content or self.local_keys or self.newer_by):
            raise ValueError(
                f"TablePolicy({self.table!r}): key, content, newer_by and local_keys apply to merge='keyed' only"
            )
        if self.local_keys and len(self.key) != 1:
            raise ValueError(f"TablePolicy({self.table!r}): local_keys need a one-column key")
        if self.redacts and not self.key:
            # An import puts the stored secret back in place of "***": it finds the row by key.
            raise ValueError(f"TablePolicy({self.table!r}): secret columns need merge='keyed' with a key")
        overlap = set(self.time_columns) & set(self.ms_time_columns)
        if overlap:
            raise ValueError(
                f"TablePolicy({self.table!r}): {', '.join(sorted(overlap))} cannot hold both seconds and milliseconds"
            )

    @property
    def redacts(self) -> bool:
        """Whether an export hides something of this table unless secrets are included."""
        return bool(self.secret_columns or self.secret_flag_columns) or self.redact_text_except is not None

    @property
    def checked_times(self) -> dict[str, int]:
        """``{column: scale}`` of the time columns: 1 for seconds, 1000 for milliseconds."""
        return {**dict.fromkeys(self.time_columns, 1), **dict.fromkeys(self.ms_time_columns, 1000)}

    def compared(self, names: Sequence[str], key: Sequence[str]) -> tuple[list[str], str | None]:
        """For a keyed merge over the columns ``names``: the columns whose difference is a
        conflict (:attr:`content`, else all but the key and :attr:`bookkeeping`), and the
        column ``on_conflict="newer"`` compares (None if the table lacks it)."""
        if self.content:
            content = [n for n in names if n not in key and n in self.content]
        else:
            content = [n for n in names if n not in key and n not in self.bookkeeping]
        return content, (self.newer_by if self.newer_by in names else None)

    def recompute_inputs(self) -> set[str]:
        """Every column :attr:`recomputed` reads or writes."""
        return {c for r in self.recomputed for c in (r.column, *r.inputs)}


def incoming_wins(on_conflict: str, stored_stamp: Any, incoming_stamp: Any) -> bool:
    """Whether a keyed conflict takes the incoming row: always for ``"replace"``, for
    ``"newer"`` when its :attr:`TablePolicy.newer_by` stamp is later, never for ``"keep"``."""
    return on_conflict == "replace" or (
        on_conflict == "newer"
        and incoming_stamp is not None
        and (stored_stamp is None or incoming_stamp > stored_stamp)
    )


def conflict_record(table: str, key_values: Sequence[Any], replaced: bool) -> dict[str, Any]:
    """One entry of an import report's conflict list."""
    return {
        "table": table,
        "key": key_values[0] if len(key_values) == 1 else list(key_values),
        "resolution": "replaced" if replaced else "kept",
    }


def keyed_report(key: Sequence[str], inserted: int, matched: int, conflicts: int, replaced: int) -> dict[str, Any]:
    """A keyed table's line of an import report (the same on every engine)."""
    return {
        "mode": "key",
        "key": list(key),
        "inserted": inserted,
        "unchanged": matched - conflicts,
        "duplicates": 0,
        "conflicts": conflicts,
        "replaced": replaced,
    }


def by_table(policies: Iterable[TablePolicy]) -> Mapping[str, TablePolicy]:
    """``{table: policy}`` in the given order; a table declared twice is an error."""
    found: dict[str, TablePolicy] = {}
    for policy in policies:
        if policy.table in found:
            raise ValueError(f"two export policies for the table {policy.table!r}")
        found[policy.table] = policy
    return found
