"""The model registry: every llama-server parameter and the GGUF metadata of each model.

One ``models`` table merges the seed design's GGUF metadata cache (file
size, architecture, quantization, context length, vocabulary size, chat
template, the full key/value set, a fingerprint) with the dashboard's
identity columns (``id``, unique ``name``, ``type``, ``status``, timestamps)
and one column per entry of :data:`cyllama_db.stores.params.PARAMS`.  The parameter
columns are generated from that list, and columns that a newer list adds are
added to existing files when they are opened, so the schema never drifts from
the validation, ``to_llama_kwargs()`` and ``to_server_args()``.

Two names would have clashed and are resolved so:

* the seed's ``path`` (the model file) is the ``model_path`` parameter;
  ``path`` stays llama-server's ``--path`` (static files);
* the seed's ``chat_template`` (the template embedded in the GGUF) is
  ``gguf_chat_template``; ``chat_template`` stays the ``--chat-template``
  override.

Rows come back as :class:`ModelRecord` dicts whose ``repr`` and
:meth:`ModelRecord.to_dict` redact secrets (``hf_token``, ``api_key``).

The store is :class:`ModelRegistry`, reached as ``db.models``
(``db.models.register(path)``, ``db.models.get(id)``...); the facade's flat
``db.register_model``, ``db.get_model``... are the same methods.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from .._time import from_timestamp, to_timestamp
from .._validate import check_path
from ..db import policy as _policy
from ..db.migrations import execute_script, migration
from ..db.store import Store, db_op
from ..errors import (
    DatabaseIntegrityError,
    ModelExistsError,
    ModelLoadError,
    ReadOnlyDatabaseError,
    UnknownModelError,
)
from . import gguf as _gguf
from .params import (
    FILE_COLUMNS,
    IDENTITY_COLUMNS,
    PARAMS,
    PARAMS_BY_NAME,
    ParameterTypeError,
    ParameterValueError,
    UnknownParameterError,
    from_sql,
    redact,
    sqlite_type,
    to_llama_kwargs,
    to_sampling_kwargs,
    to_server_args,
    to_sql,
)

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = [
    "EXPORT_POLICY",
    "MODEL_STATUSES",
    "ModelRecord",
    "ModelRef",
    "ModelRegistry",
    "inference_arguments",
]


def _param_ok(name: str, value: Any) -> int:
    """1 when an imported ``models`` column holds a valid value of its parameter, else 0."""
    from .params import REDACTED

    if value is None or name not in PARAMS_BY_NAME:
        return 1
    if value == REDACTED or (isinstance(value, str) and ":****@" in value):
        return 1  # what an export redacted: the merge puts this database's value back
    try:
        from_sql(name, value)
    except (ValueError, TypeError, OverflowError, RecursionError, KeyError):
        return 0
    return 1


#: How the ``models`` table is exported and imported (``db/policy.py``): models
#: match by name (the id is local). Secrets (``hf_token``, ``api_key``, their
#: flags in ``custom_params``, URL passwords) are redacted by an export unless
#: asked, and a redacted value never overwrites a stored one.
EXPORT_POLICY: tuple[_policy.TablePolicy, ...] = (
    _policy.TablePolicy(
        "models",
        key=("name",),
        newer_by="updated_at",
        bookkeeping=("created_at", "updated_at", "last_used_at"),
        time_columns=("created_at", "updated_at", "first_seen_at", "last_used_at"),
        json_columns=("metadata_json",),
        secret_columns=tuple(p.name for p in PARAMS if p.secret),
        secret_flag_columns=("custom_params",),
        redact_text_except=("metadata_json", "gguf_chat_template"),
        column_check=_policy.ColumnCheck(_param_ok, "not a valid value of the parameter"),
    ),
)

logger = logging.getLogger("cyllama_db.registry")

#: The values ``status`` may take (the dashboard's set).
MODEL_STATUSES: Final = ("running", "stopped", "loading", "error")

#: The file columns as stored (a record's ``gguf_metadata`` is kept as JSON text
#: in ``metadata_json``; ``file_mtime_ns`` is the re-read check, not shown).
_FILE_DB_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("filename", "TEXT"),
    ("size_bytes", "INTEGER"),
    ("file_mtime_ns", "INTEGER"),
    ("format", "TEXT"),
    ("architecture", "TEXT"),
    ("size_label", "TEXT"),
    ("parameter_count", "INTEGER"),
    ("quantization", "TEXT"),
    ("context_length", "INTEGER"),
    ("vocab_size", "INTEGER"),
    ("gguf_chat_template", "TEXT"),
    ("metadata_json", "TEXT"),
    ("fingerprint", "TEXT"),
    ("first_seen_at", "REAL"),
    ("last_used_at", "REAL"),
)
_TIMESTAMP_COLUMNS: Final = frozenset({"created_at", "updated_at", "first_seen_at", "last_used_at"})
# What describes the file itself; cleared when model_path changes, copied
# between rows of the same unchanged file.
_FILE_INFO_COLUMNS: Final = tuple(c for c, _ in _FILE_DB_COLUMNS if c != "last_used_at")

# Column names go into SQL text (quoted); they all come from the lists above,
# never from the caller, and must be plain identifiers.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
for _name in (*IDENTITY_COLUMNS, *(c for c, _ in _FILE_DB_COLUMNS), *PARAMS_BY_NAME):
    if not _IDENTIFIER.fullmatch(_name):  # pragma: no cover - guards future edits
        raise RuntimeError(f"registry column name {_name!r} is not a plain identifier")
if {c for c, _ in _FILE_DB_COLUMNS} - {"file_mtime_ns", "metadata_json"} | {"gguf_metadata"} != set(
    FILE_COLUMNS
):  # pragma: no cover - guards future edits
    raise RuntimeError("registry file columns and _params.FILE_COLUMNS disagree")

#: What the ``model`` argument of the registry helpers accepts: an id, a
#: name, or a record (its ``id`` is used).
ModelRef = int | str | Mapping[str, Any]


def _q(name: str) -> str:
    return f'"{name}"'


#: SQLite column types as PostgreSQL spells them (64-bit integers, float8 times).
_PG_TYPES: Final = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": "TEXT"}


def _param_column_sql(p: Any, engine: str = "sqlite") -> str:
    sql_type = sqlite_type(p)
    return f"{_q(p.name)} {sql_type if engine == 'sqlite' else _PG_TYPES[sql_type]}"


@migration(5, "model registry")
def _create_models_table(conn: sqlite3.Connection) -> None:
    statuses = ", ".join(f"'{s}'" for s in MODEL_STATUSES)
    columns = [
        "id INTEGER PRIMARY KEY AUTOINCREMENT",
        "name TEXT NOT NULL",
        "type TEXT NOT NULL DEFAULT 'llama'",
        f"status TEXT NOT NULL DEFAULT 'stopped' CHECK (status IN ({statuses}))",
        "created_at REAL NOT NULL",
        "updated_at REAL NOT NULL",
        *(f"{_q(name)} {sql_type}" for name, sql_type in _FILE_DB_COLUMNS),
        *(_param_column_sql(p) for p in PARAMS),
    ]
    body = ",\n            ".join(columns)
    execute_script(
        conn,
        f"""
        CREATE TABLE IF NOT EXISTS models (
            {body}
        );
        CREATE UNIQUE INDEX IF NOT EXISTS idx_models_name ON models(name);
        CREATE INDEX IF NOT EXISTS idx_models_status ON models(status);
        CREATE INDEX IF NOT EXISTS idx_models_type ON models(type);
        CREATE INDEX IF NOT EXISTS idx_models_created ON models(created_at);
        CREATE INDEX IF NOT EXISTS idx_models_path ON models(model_path);
        """,
    )


@migration(5, "model registry", engine="postgresql")
def _create_models_table_pg(conn: Any) -> None:
    statuses = ", ".join(f"'{s}'" for s in MODEL_STATUSES)
    columns = [
        "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "name TEXT NOT NULL",
        "type TEXT NOT NULL DEFAULT 'llama'",
        f"status TEXT NOT NULL DEFAULT 'stopped' CHECK (status IN ({statuses}))",
        "created_at DOUBLE PRECISION NOT NULL",
        "updated_at DOUBLE PRECISION NOT NULL",
        *(f"{_q(name)} {_PG_TYPES[sql_type]}" for name, sql_type in _FILE_DB_COLUMNS),
        *(_param_column_sql(p, "postgresql") for p in PARAMS),
    ]
    body = ",\n            ".join(columns)
    conn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS models (
            {body}
        );
        CREATE UNIQUE INDEX IF NOT EXISTS idx_models_name ON models(name);
        CREATE INDEX IF NOT EXISTS idx_models_status ON models(status);
        CREATE INDEX IF NOT EXISTS idx_models_type ON models(type);
        CREATE INDEX IF NOT EXISTS idx_models_created ON models(created_at);
        CREATE INDEX IF NOT EXISTS idx_models_path ON models(model_path);
        """
    )


def _name_taken(exc: Exception) -> bool:
    """Whether a constraint error is the unique name's (SQLite: ``models.name``; PostgreSQL: its index)."""
    text = str(exc)
    return "models.name" in text or "idx_models_name" in text


# -- records ---------------------------------------------------------------------------------


class ModelRecord(dict[str, Any]):
    """One registered model: a dict of its columns.

    Keys: the identity columns (``id``, ``name``, ``type``, ``status``,
    ``created_at``, ``updated_at``), the model file's metadata (``filename``,
    ``size_bytes``, ``format``, ``architecture``, ``size_label``,
    ``parameter_count``, ``quantization``, ``context_length``, ``vocab_size``,
    ``gguf_chat_template``, ``gguf_metadata`` (every GGUF key/value, long
    arrays summarised; stored as ``metadata_json``), ``fingerprint``, ``first_seen_at``, ``last_used_at``) and
    every parameter of :data:`~cyllama_db.stores.params.PARAMS` (``None`` = unset).
    Timestamps are aware UTC datetimes.

    The values are the real ones, secrets included, so a record can be
    passed to :func:`~cyllama_db.to_server_args` to launch the model.  Its
    ``repr``/``str`` redact secrets and show only set values; use
    :meth:`to_dict` (redacted unless ``show_secrets=True``) to export one.
    """

    __slots__ = ()

    @property
    def params(self) -> dict[str, Any]:
        """The set (non-``None``) parameters, secrets included."""
        return {k: v for k, v in self.items() if k in PARAMS_BY_NAME and v is not None}

    def to_dict(self, show_secrets: bool = False) -> dict[str, Any]:
        """A plain dict copy; secret values are ``"***"`` unless ``show_secrets``."""
        return redact(self, show_secrets=show_secrets)

    def __repr__(self) -> str:
        shown = redact(self)
        parts = [f"{k}={shown[k]!r}" for k in ("id", "name", "type", "status") if k in shown]
        parts += [
            f"{k}={shown[k]!r}"
            for k in ("architecture", "quantization")
            if shown.get(k) is not None
        ]
        parts += [f"{k}={v!r}" for k, v in shown.items() if k in PARAMS_BY_NAME and v is not None]
        return f"ModelRecord({', '.join(parts)})"

    __str__ = __repr__


def _record_from_row(columns: list[str], row: tuple[Any, ...]) -> ModelRecord:
    rec = ModelRecord()
    for col, value in zip(columns, row, strict=True):
        if col == "file_mtime_ns":
            continue
        if col == "metadata_json":
            rec["gguf_metadata"] = None if value is None else json.loads(value)
        elif col in _TIMESTAMP_COLUMNS:
            rec[col] = from_timestamp(value)
        elif col in PARAMS_BY_NAME:
            try:
                rec[col] = from_sql(col, value)
            except (TypeError, ValueError) as exc:
                # Written by hand or by an older list: show it as stored rather
                # than make every listing fail; to_llama_kwargs() will name it.
                # The parameter errors keep secrets out of their messages, but
                # a JSON decoding error or the like might quote the text.
                reason = (
                    str(exc)
                    if isinstance(exc, (ParameterTypeError, ParameterValueError))
                    else type(exc).__name__
                )
                logger.warning("model %r: stored %s is invalid: %s", row[0], col, reason)
                rec[col] = value
        else:
            rec[col] = value
    return rec


# -- argument checks ---------------------------------------------------------------------------


def _check_text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ParameterTypeError(field, "str", value)
    if not value.strip():
        raise ParameterValueError(field, value, "a non-empty string")
    return value


_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _in_int64(value: int) -> bool:
    """Whether SQLite can hold ``value`` (a larger Python int cannot even be bound)."""
    return _INT64_MIN <= value <= _INT64_MAX


def _check_status(value: object) -> str:
    if not isinstance(value, str):
        raise ParameterTypeError("status", "str", value)
    if value not in MODEL_STATUSES:
        raise ParameterValueError("status", value, ", ".join(MODEL_STATUSES))
    return value


def _check_ref(model: object) -> int | str:
    """The id or name that a model reference (id, name or record) stands for; type check only."""
    if isinstance(model, Mapping):
        if model.get("id") is None:
            # Not the mapping itself in the message: it may hold secrets.
            raise ParameterValueError(
                "model", "a mapping without 'id'", "an id, a name or a registered record"
            )
        model = model["id"]
    if isinstance(model, bool) or not isinstance(model, (int, str)):
        raise ParameterTypeError("model", "an id (int), a name (str) or a ModelRecord", model)
    return model


_MANAGED_HINT = {
    "id": "the registry assigns ids",
    "use_count": "it is counted from the statistics (one per recorded generation of the model's file)",
    "created_at": "it is set by the registry",
    "updated_at": "it is set by the registry",
    "last_used_at": "it is set by mark_model_loaded() / LLM.from_registry()",
}
_FILE_HINT = "it is read from the GGUF file by register_model() and cannot be set directly"


def _split_params(params: Mapping[str, Any], *, identity: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity values, parameter columns as SQL values); every name checked."""
    allowed_identity = set(identity)
    ident: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for key, value in params.items():
        if key in allowed_identity:
            ident[key] = value
        elif key in PARAMS_BY_NAME:
            values[key] = to_sql(key, value)
        elif key in _MANAGED_HINT:
            raise UnknownParameterError(key, hint=_MANAGED_HINT[key])
        elif key in FILE_COLUMNS:
            raise UnknownParameterError(key, hint=_FILE_HINT)
        else:
            import difflib

            close = difflib.get_close_matches(key, [*PARAMS_BY_NAME, *allowed_identity], n=3, cutoff=0.6)
            raise UnknownParameterError(key, close)
    if "name" in ident:
        _check_text("name", ident["name"])
    if "type" in ident:
        _check_text("type", ident["type"])
    if "status" in ident:
        _check_status(ident["status"])
    return ident, values


_FILTERABLE_FILE: Final = {
    "filename": str,
    "size_bytes": int,
    "format": str,
    "architecture": str,
    "size_label": str,
    "parameter_count": int,
    "quantization": str,
    "context_length": int,
    "vocab_size": int,
    "gguf_chat_template": str,
    "fingerprint": str,
}


def _filter_value(key: str, value: Any) -> Any:
    """The SQL value to compare column ``key`` with; the key must be a known column.

    The key is checked before anything else (``None`` values included): it is
    pasted into the SQL text, so only the names of this module's columns may
    pass.
    """
    if key in PARAMS_BY_NAME:
        return to_sql(key, value)
    expected: type | None = _FILTERABLE_FILE.get(key)
    if key in ("name", "type", "status"):
        expected = str
    elif key == "id":
        expected = int
    elif key in _TIMESTAMP_COLUMNS:
        expected = float
    if expected is None:
        filterable = [*IDENTITY_COLUMNS, *_FILTERABLE_FILE, "first_seen_at", "last_used_at", *PARAMS_BY_NAME]
        import difflib

        close = difflib.get_close_matches(key, filterable, n=3, cutoff=0.6)
        hint = (
            f"did you mean {', '.join(map(repr, close))}?"
            if close
            else "filter on a parameter, an identity column (id, name, type, status...) "
            "or a file column (architecture, quantization...)"
        )
        raise UnknownParameterError(key, close, hint=hint)
    if value is None:
        return None
    if key == "status":
        return _check_status(value)
    if key in _TIMESTAMP_COLUMNS:
        if isinstance(value, str):  # "7d" means a moment relative to now: not an equality filter
            raise ParameterTypeError(key, "a datetime or Unix seconds", value)
        try:
            return to_timestamp(value)
        except TypeError:
            raise ParameterTypeError(key, "a datetime or Unix seconds", value) from None
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ParameterTypeError(key, expected.__name__, value)
    if isinstance(value, int) and not _in_int64(value):
        raise ParameterValueError(
            key, value, "an integer within SQLite's 64-bit range -2**63..2**63-1"
        )
    return value


def _file_info(summary: Mapping[str, Any], st: os.stat_result, path: str) -> dict[str, Any]:
    """The file columns (as stored) for a GGUF summary from :func:`_gguf.summarize_gguf`."""
    count = summary.get("parameter_count")
    return {
        "filename": os.path.basename(path),
        "size_bytes": st.st_size,
        "file_mtime_ns": st.st_mtime_ns,
        "format": summary.get("format"),
        "architecture": summary.get("architecture"),
        "size_label": summary.get("size_label"),
        "parameter_count": count if isinstance(count, int) else None,
        "quantization": summary.get("quantization"),
        "context_length": summary.get("context_length"),
        "vocab_size": summary.get("vocab_size"),
        "gguf_chat_template": summary.get("chat_template"),
        "metadata_json": json.dumps(summary.get("metadata") or {}, ensure_ascii=False),
        "fingerprint": summary.get("fingerprint"),
    }


# -- the store ---------------------------------------------------------------------------------


class ModelRegistry(Store):
    """The model registry, ``db.models``: every llama-server parameter and the GGUF metadata of each model.

    ``db.models.save`` / ``list`` / ``get`` / ``get_by_name`` / ``update`` /
    ``delete`` / ``delete_all`` are the snake_case form of the dashboard's
    ``saveModel``, ``getModels``, ``getModel``, ``getModelByName``,
    ``updateModel``, ``deleteModel`` and ``deleteAllModels``; :meth:`register`
    reads a GGUF file's metadata; :meth:`fetch` looks a model up by id, name
    or record; :meth:`mark_loaded` / :meth:`mark_unloaded` keep its status;
    :meth:`to_llama_kwargs`, :meth:`to_sampling_kwargs` and
    :meth:`to_server_args` turn it back into a launch.

    The flat ``db.save_model``, ``db.get_models``, ``db.register_model``, ...
    are the same methods.
    """

    name = "models"
    tables = ("models",)
    export_policy = EXPORT_POLICY

    def open(self) -> None:
        """Add the columns of parameters that :data:`PARAMS` gained since the file was made."""
        # Parameters added to PARAMS after a file was created get their column
        # now, so the table always matches the list.
        with self.pool.read() as conn:
            have = set(self.backend.columns(conn, "models"))
        if not [p for p in PARAMS if p.name not in have]:
            return
        try:
            with self.pool.transaction() as conn:
                have = set(self.backend.columns(conn, "models"))
                for p in PARAMS:
                    if p.name not in have:
                        conn.execute(f"ALTER TABLE models ADD COLUMN {_param_column_sql(p, self.backend.name)}")
                        logger.info("added registry column %s", p.name)
        except ReadOnlyDatabaseError as exc:
            logger.warning("cannot add new parameter columns to the registry: %s", exc)

    def counts(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """``model_entries`` and ``running_models`` for ``get_db_stats()``."""
        total, running = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END), 0) FROM models"
        ).fetchone()
        return {"model_entries": total, "running_models": running}

    # -- reading -------------------------------------------------------------------------

    def _select(self, where: str = "", args: Iterable[Any] = ()) -> list[ModelRecord]:
        with self.pool.read() as conn:
            cursor = conn.execute(f"SELECT * FROM models {where} ORDER BY id", tuple(args))
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        return self._with_usage([_record_from_row(columns, row) for row in rows])

    @db_op(empty=list)
    def files(self) -> list[tuple[str, str | None, str | None]]:
        """``(name, model_path, filename)`` of every registered model (a cheap listing)."""
        with self.pool.read() as conn:
            return [(str(n), p, f) for n, p, f in conn.execute("SELECT name, model_path, filename FROM models")]

    @db_op(empty=list)
    def running_paths(self) -> list[str | None]:
        """The ``model_path`` of every model whose status is ``running`` (``None`` where unset), oldest first."""
        with self.pool.read() as conn:
            return [r[0] for r in conn.execute("SELECT model_path FROM models WHERE status = 'running' ORDER BY id")]

    def _with_usage(self, records: list[ModelRecord]) -> list[ModelRecord]:
        """Add ``use_count`` and bring ``last_used_at`` up to date from the statistics.

        Every generation of the model's file counts, however it was loaded
        (``complete(path)``, an ``LLM`` that keeps generating, ``wrap()``):
        the statistics hold one row per generation, and every recorded path
        with the same file fingerprint is the same model.
        """
        usage = getattr(self.db, "model_usage", None)
        if not records or not callable(usage):
            return records
        from .modelref import known_models, select_model

        # One look at the stores for the whole listing, not one per record.
        known = known_models(self.db)
        for record in records:
            path = record.get("model_path")
            if not path:
                record["use_count"] = 0
                continue
            try:
                paths = select_model(self.db, str(path), known).paths
                count, last = usage(paths)
            except Exception as exc:  # bookkeeping: a listing must not fail over it
                logger.debug("no usage figures for model %s: %s", record.get("name"), exc)
                continue
            record["use_count"] = count
            stored = record.get("last_used_at")
            if last is not None and (stored is None or from_timestamp(last) > stored):
                record["last_used_at"] = from_timestamp(last)
        return records

    @db_op(empty=list)
    def _select_op(self, where: str = "", args: Iterable[Any] = ()) -> list[ModelRecord]:
        return self._select(where, args)

    def get(self, id: int) -> ModelRecord | None:
        """The model with this id, or ``None``."""
        if isinstance(id, bool) or not isinstance(id, int):
            raise ParameterTypeError("id", "int", id)
        if not _in_int64(id):
            return None  # no row can have it
        found = self._select_op("WHERE id = ?", (id,))
        return found[0] if found else None

    def get_by_name(self, name: str) -> ModelRecord | None:
        """The model with this name, or ``None``."""
        if not isinstance(name, str):
            raise ParameterTypeError("name", "str", name)
        found = self._select_op("WHERE name = ?", (name,))
        return found[0] if found else None

    def _resolve_id(self, conn: sqlite3.Connection, model: ModelRef) -> int:
        """The id of ``model`` (an id, a name or a record); :class:`UnknownModelError` if absent."""
        model = _check_ref(model)
        if isinstance(model, int) and not _in_int64(model):
            raise UnknownModelError(model)  # no row can have it
        column = "id" if isinstance(model, int) else "name"
        row = conn.execute(f"SELECT id FROM models WHERE {column} = ?", (model,)).fetchone()
        if row is None:
            raise UnknownModelError(model)
        return int(row[0])

    @db_op()
    def fetch(self, model: ModelRef) -> ModelRecord:
        """The stored record of ``model`` (an id, a name or a record: its ``id`` is looked up).

        Unlike :meth:`get` / :meth:`get_by_name`, a model that is not there
        is an error. Returns ``None`` when the database is disabled.

        Raises:
            UnknownModelError: no such model (a ``KeyError``).
            ParameterTypeError / ParameterValueError: ``model`` is not an id,
                a name or a record with an ``id``.
        """
        with self.pool.read() as conn:
            model_id = self._resolve_id(conn, model)
        found = self._select("WHERE id = ?", (model_id,))
        if not found:  # deleted in between
            raise UnknownModelError(model_id)
        return found[0]

    def _as_record(self, model: ModelRef) -> Mapping[str, Any]:
        # A mapping is used as given (it may be a record the caller edited),
        # even when the database is disabled; an id or a name is looked up.
        if isinstance(model, Mapping):
            return model
        ref = _check_ref(model)
        if not self.enabled:
            raise UnknownModelError(
                ref,
                "the database is disabled, so there is no model registry to look it up in; "
                "enable it, or pass the parameters themselves (a ModelRecord or a dict)",
            )
        return self.fetch(ref)

    # -- writing -------------------------------------------------------------------------

    def save(
        self, name: str, type: str = "llama", status: str = "stopped", **params: Any
    ) -> int:
        """Add a model with its llama-server parameters; return its id (0 when disabled).

        ``params`` are any of :data:`~cyllama_db.PARAMS` (``model_path``,
        ``ctx_size``, ``gpu_layers``, ``flash_attn``, ``api_key``,
        ``custom_params``...); unset ones stay ``NULL`` (llama-server's default).

        Raises:
            ModelExistsError: ``name`` is taken (names are unique).
            UnknownParameterError: a name that is not a parameter (a
                ``TypeError`` and a ``KeyError``).
            ParameterTypeError / ParameterValueError: a value of the wrong type
                or outside the allowed set, e.g. ``flash_attn="maybe"``.

        The arguments are checked even when the database is disabled.
        """
        ident, values = _split_params(
            {"name": name, "type": type, "status": status, **params},
            identity=("name", "type", "status"),
        )
        return self._save(name, ident, values)

    @db_op(empty=lambda: 0)
    def _save(self, name: str, ident: dict[str, Any], values: dict[str, Any]) -> int:
        now = self.clock()
        row = {**ident, "created_at": now, "updated_at": now, **values}
        try:
            with self.pool.transaction() as conn:
                return self._insert(conn, row)
        except (sqlite3.IntegrityError, DatabaseIntegrityError) as exc:
            if _name_taken(exc):
                raise ModelExistsError(name) from None
            raise

    @staticmethod
    def _insert(conn: sqlite3.Connection, row: Mapping[str, Any]) -> int:
        names = ", ".join(_q(k) for k in row)
        marks = ", ".join("?" for _ in row)
        cursor = conn.execute(f"INSERT INTO models ({names}) VALUES ({marks}) RETURNING id", tuple(row.values()))
        return int(cursor.fetchall()[0][0])  # fetchall: SQLite finishes the statement

    @staticmethod
    def _update_row(conn: sqlite3.Connection, model_id: int, row: Mapping[str, Any]) -> None:
        sets = ", ".join(f"{_q(k)} = ?" for k in row)
        conn.execute(f"UPDATE models SET {sets} WHERE id = ?", (*row.values(), model_id))

    def update(self, model: ModelRef, **params: Any) -> ModelRecord:
        """Change parameters (``None`` unsets one), ``name``, ``type`` or ``status``.

        ``model`` is an id, a name or a record.  Changing ``model_path``
        clears the file metadata (it described the old file); call
        :meth:`register` to read the new one.  Returns the updated
        record (``None`` when the database is disabled).

        Raises:
            UnknownModelError: no such model.
            ModelExistsError: renamed to a name that is taken.
            UnknownParameterError / ParameterTypeError / ParameterValueError:
                as :meth:`save`.
        """
        _check_ref(model)
        ident, values = _split_params(params, identity=("name", "type", "status"))
        return self._update(model, ident, values)

    @db_op()
    def _update(
        self, model: ModelRef, ident: dict[str, Any], values: dict[str, Any]
    ) -> ModelRecord:
        row: dict[str, Any] = {**ident, **values}
        try:
            with self.pool.transaction() as conn:
                model_id = self._resolve_id(conn, model)
                if "model_path" in values:
                    old = conn.execute(
                        "SELECT model_path FROM models WHERE id = ?", (model_id,)
                    ).fetchone()[0]
                    if old != values["model_path"]:
                        row.update(dict.fromkeys(_FILE_INFO_COLUMNS))
                if row:
                    row["updated_at"] = self.clock()
                    self._update_row(conn, model_id, row)
        except (sqlite3.IntegrityError, DatabaseIntegrityError) as exc:
            if _name_taken(exc):
                raise ModelExistsError(str(ident.get("name"))) from None
            raise
        return self.fetch(model_id)

    def delete(self, model: ModelRef) -> bool:
        """Remove a model (id, name or record); return whether it existed."""
        _check_ref(model)
        return self._delete(model)

    @db_op(empty=lambda: False)
    def _delete(self, model: ModelRef) -> bool:
        with self.pool.transaction() as conn:
            try:
                model_id = self._resolve_id(conn, model)
            except UnknownModelError:
                return False
            conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
        return True

    @db_op(empty=lambda: 0)
    def delete_all(self) -> int:
        """Remove every model; return how many there were."""
        with self.pool.transaction() as conn:
            return int(conn.execute("DELETE FROM models").rowcount)

    def mark_loaded(self, model: ModelRef, status: str | None = "running") -> None:
        """Record that ``model`` was just used: ``last_used_at`` = now, and ``status`` set.

        ``status=None`` leaves the status alone (a use that loaded nothing,
        e.g. an answer from the response cache).  The inference layer calls
        it: ``LLM.from_registry()`` and ``complete(..., model=name)`` mark the
        use, and the model's status becomes ``running`` when llama.cpp
        actually loads it (``error`` when that fails).
        """
        if status is not None:
            _check_status(status)
        _check_ref(model)
        self._mark(model, status)

    @db_op()
    def _mark(self, model: ModelRef, status: str | None) -> None:
        with self.pool.transaction() as conn:
            model_id = self._resolve_id(conn, model)
            if status is None:
                conn.execute(
                    "UPDATE models SET last_used_at = ? WHERE id = ?", (self.clock(), model_id)
                )
            else:
                conn.execute(
                    "UPDATE models SET last_used_at = ?, status = ? WHERE id = ?",
                    (self.clock(), status, model_id),
                )

    def mark_unloaded(self, model: ModelRef) -> bool:
        """Record that ``model`` left memory: a ``running`` status becomes ``stopped``.

        Any other status (``error``, ``loading``, or ``stopped`` already) is
        left as it is, and so is ``last_used_at``.  Returns whether the status
        changed.  ``LLM.close()``, ``unload_models()`` and the eviction of a
        ``complete()`` model call it for the models they had marked running.
        """
        _check_ref(model)
        return self._unmark(model)

    @db_op(empty=lambda: False)
    def _unmark(self, model: ModelRef) -> bool:
        with self.pool.transaction() as conn:
            try:
                model_id = self._resolve_id(conn, model)
            except UnknownModelError:
                return False  # deleted meanwhile: nothing left to mark
            cur = conn.execute(
                "UPDATE models SET status = 'stopped' WHERE id = ? AND status = 'running'",
                (model_id,),
            )
            return cur.rowcount > 0

    # -- GGUF files ----------------------------------------------------------------------

    def register(
        self, path: str | os.PathLike[str], name: str | None = None, **params: Any
    ) -> int:
        """Register (or refresh) a GGUF model file with its metadata and parameters.

        Reads the file's header (architecture, size label and parameter
        count, quantization, context length, vocabulary size, chat template,
        every key/value, fingerprint) without loading any weights.  An
        unchanged file (same path, size and modification time) is not read
        again: its stored metadata is reused.

        ``name`` defaults to the model already registered for this path, else
        the GGUF's ``general.name``, else the file name without ``.gguf``
        (whichever is free).  If a model of that name exists it is updated:
        its file metadata is refreshed, ``params`` (and ``type``/``status``)
        are applied and other stored parameters are kept.  ``model_path`` is
        set to the absolute path.  Returns the model's id (0 when the
        database is disabled: the arguments are still checked, the file is
        not read), like :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            GGUFFormatError: not a (well-formed) GGUF file (a ``ValueError``).
            ModelExistsError: no free default name; pass ``name=``.
            UnknownParameterError / ParameterTypeError / ParameterValueError:
                as :meth:`save`.
        """
        spath = os.path.abspath(os.path.expanduser(check_path(path, "path")))
        if name is not None:
            _check_text("name", name)
        if "model_path" in params:
            raise UnknownParameterError(
                "model_path", hint="register_model() sets it from `path`"
            )
        ident, values = _split_params(params, identity=("type", "status"))
        return self._register(spath, name, ident, values)

    @db_op(empty=lambda: 0)
    def _register(
        self, spath: str, name: str | None, ident: dict[str, Any], values: dict[str, Any]
    ) -> int:
        st = os.stat(spath)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{spath} is not a model file")

        info = self._cached_file_info(spath, st)
        if info is None:
            info = _file_info(_gguf.summarize_gguf(spath), st, spath)
        now = self.clock()
        candidates = self._default_names(spath, info)

        try:
            with self.pool.transaction() as conn:
                first_seen = conn.execute(
                    "SELECT MIN(first_seen_at) FROM models WHERE model_path = ?", (spath,)
                ).fetchone()[0]
                info = {**info, "first_seen_at": first_seen if first_seen is not None else now}
                chosen = name if name is not None else self._pick_name(conn, spath, candidates)
                existing = conn.execute(
                    "SELECT id FROM models WHERE name = ?", (chosen,)
                ).fetchone()
                row = {**info, "model_path": spath, **ident, **values, "updated_at": now}
                if existing is None:
                    model_id = self._insert(conn, {"name": chosen, "created_at": now, **row})
                else:
                    model_id = int(existing[0])
                    self._update_row(conn, model_id, row)
        except (sqlite3.IntegrityError, DatabaseIntegrityError) as exc:  # pragma: no cover - the name was checked
            raise ModelExistsError(str(name)) from exc
        return model_id

    def _cached_file_info(self, path: str, st: os.stat_result) -> dict[str, Any] | None:
        """File columns of a row already holding this unchanged file, if any."""
        columns = ", ".join(_q(c) for c in _FILE_INFO_COLUMNS if c != "first_seen_at")
        with self.pool.read() as conn:
            cursor = conn.execute(
                f"SELECT {columns} FROM models WHERE model_path = ? AND size_bytes = ?"
                " AND file_mtime_ns = ? AND metadata_json IS NOT NULL ORDER BY id LIMIT 1",
                (path, st.st_size, st.st_mtime_ns),
            )
            row = cursor.fetchone()
            names = [d[0] for d in cursor.description]
        return None if row is None else dict(zip(names, row, strict=True))

    @staticmethod
    def _default_names(path: str, info: Mapping[str, Any]) -> list[str]:
        names: list[str] = []
        general = json.loads(info["metadata_json"] or "{}").get("general.name")
        if isinstance(general, str) and general.strip():
            names.append(general.strip())
        stem = os.path.basename(path)
        if stem.lower().endswith(".gguf"):
            stem = stem[: -len(".gguf")]
        if stem and stem not in names:
            names.append(stem)
        return names

    @staticmethod
    def _pick_name(conn: sqlite3.Connection, path: str, candidates: list[str]) -> str:
        rows = conn.execute(
            "SELECT name FROM models WHERE model_path = ? ORDER BY id", (path,)
        ).fetchall()
        registered = [r[0] for r in rows]
        if registered:
            # Re-registration updates the entry this file already has.
            return next((c for c in candidates if c in registered), registered[0])
        for candidate in candidates:
            if conn.execute("SELECT 1 FROM models WHERE name = ?", (candidate,)).fetchone() is None:
                return candidate
        raise ModelExistsError(
            candidates[0] if candidates else path,
            f"another file is registered under it; pass register_model({path!r}, name=...)",
        )

    # -- conversions ---------------------------------------------------------------------

    def to_llama_kwargs(self, model: ModelRef) -> dict[str, Any]:
        """``llama_cpp.Llama(**kwargs)`` keywords for a model (id, name or record).

        See :func:`cyllama_db.stores.params.to_llama_kwargs` for the translations
        (cache type names to ggml codes, ``flash_attn``, ``gpu_layers``...).
        """
        return to_llama_kwargs(self._as_record(model))

    def to_sampling_kwargs(self, model: ModelRef) -> dict[str, Any]:
        """``Llama.create_completion`` defaults (temperature, top_k, ...) for a model."""
        return to_sampling_kwargs(self._as_record(model))

    def to_server_args(
        self,
        model: ModelRef,
        *,
        model_path_flag: str = "--model",
        legacy: bool = False,
        redact_secrets: bool = False,
    ) -> list[str]:
        """The ``llama-server`` argv (without the program) for a model (id, name or record).

        Long flags, only values that differ from llama-server's defaults,
        booleans as their switch forms, ``custom_params`` last.  Pass
        ``redact_secrets=True`` to print it; ``legacy=True`` for llama-server
        builds older than the ``--load-mode`` rework.
        """
        return to_server_args(
            self._as_record(model),
            model_path_flag=model_path_flag,
            legacy=legacy,
            redact_secrets=redact_secrets,
        )

    # -- listing (last: a method named ``list`` hides the builtin in the annotations below it) --

    def list(self, **filters: Any) -> list[ModelRecord]:
        """Every registered model matching all ``filters``, oldest first.

        A filter is ``column=value`` on any parameter (``flash_attn="on"``,
        ``ctx_size=8192``), identity column (``status="running"``,
        ``type="llama"``) or file column (``architecture="llama"``,
        ``quantization="Q4_K_M"``); ``None`` matches unset values.  Values are
        validated like stored ones; an unknown key raises
        :class:`~cyllama_db.UnknownParameterError` (also when the database
        is disabled: the arguments are checked first; then ``[]``).
        """
        clauses: list[str] = []
        args: list[Any] = []
        for key, value in filters.items():
            sql_value = _filter_value(key, value)
            if sql_value is None:
                clauses.append(f"{_q(key)} IS NULL")
            else:
                clauses.append(f"{_q(key)} = ?")
                args.append(sql_value)
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        return self._select_op(where, args)


# -- inference -------------------------------------------------------------------------------


def inference_arguments(
    db: CyllamaDB, model: ModelRef
) -> tuple[ModelRecord, dict[str, Any], dict[str, Any]]:
    """What ``LLM.from_registry`` / ``complete(model=...)`` need to run a registered model.

    Returns ``(record, llm_kwargs, sampling)``: ``llm_kwargs`` are
    ``LLM(**llm_kwargs)`` keywords (``model_path``, the ``Llama()`` load
    options of :func:`~cyllama_db.stores.params.to_llama_kwargs` and ``verbose``
    when ``log_disable`` is stored); ``sampling`` are ``GenerationConfig``
    fields (:func:`~cyllama_db.stores.params.to_sampling_kwargs`, which also
    carries the seed, a per-call setting there).

    Raises:
        UnknownModelError: no such model.
        ModelLoadError: the entry has no ``model_path``, or the database is disabled.
    """
    if not db.enabled:
        raise ModelLoadError(
            str(model if isinstance(model, (int, str)) else "?"),
            "the database is disabled, so there is no model registry to load it from; "
            "enable it or pass model_path instead",
        )
    record = db.models.fetch(model)
    load = to_llama_kwargs(record)
    path = load.pop("model_path", None)
    if path is None:
        raise ModelLoadError(
            str(record["name"]),
            "it has no model_path; register its GGUF file with "
            "db.register_model(path, name=...) or set one with db.update_model(..., model_path=...)",
        )
    load.pop("seed", None)  # a GenerationConfig field in the inference layer
    return record, {"model_path": path, **load}, to_sampling_kwargs(record)
