"""The model registry: schema, CRUD, validation, filters, GGUF registration, conversions, secrets.

The reader itself (``_gguf``) is compared with the ``gguf`` package field for
field in tests/test_gguf.py (``test_large_vocab_matches_gguf_reader``); here the
*registry's* stored fields are compared with it.
"""

from __future__ import annotations

import json
import os
import pprint
import re
import shutil
import sqlite3
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cyllama_db
from cyllama_db import (
    MODEL_STATUSES,
    PARAMS,
    PARAMS_BY_NAME,
    CyllamaDB,
    CyllamaDBError,
    DatabaseClosedError,
    ModelExistsError,
    ModelRecord,
    ParameterTypeError,
    ParameterValueError,
    ServerArgWarning,
    UnknownModelError,
    UnknownParameterError,
)
from cyllama_db.stores import gguf as _gguf
from cyllama_db.stores.params import FILE_COLUMNS, IDENTITY_COLUMNS, REDACTED, sqlite_type
from cyllama_db.testing import DEFAULT_CHAT_TEMPLATE, write_large_vocab_gguf, write_tiny_llama

# test_params.py owns the "valid value for each parameter" strategies (and a
# test that every shaped parameter has one); reuse them rather than copy them.
from test_params import _strategy

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0


@pytest.fixture
def db(memory_db: CyllamaDB) -> CyllamaDB:
    memory_db.clock = lambda: T0  # type: ignore[method-assign]
    return memory_db


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama GGUF (written with the gguf package; no llama_cpp needed)."""
    pytest.importorskip("gguf")
    return write_tiny_llama(tmp_path_factory.mktemp("reg") / "tiny.gguf")


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


# -- schema ------------------------------------------------------------------------------------


def _columns(db: CyllamaDB) -> dict[str, str]:
    with db.pool.read() as conn:
        return {r[1]: r[2] for r in conn.execute("PRAGMA table_info(models)")}


def test_one_column_per_parameter_generated_from_params(db: CyllamaDB) -> None:
    cols = _columns(db)
    for p in PARAMS:
        assert cols.get(p.name) == sqlite_type(p), p.name
    for name in IDENTITY_COLUMNS:
        assert name in cols
    seed_columns = [
        "filename", "size_bytes", "format", "architecture", "parameter_count", "quantization",
        "context_length", "vocab_size", "metadata_json", "fingerprint", "first_seen_at",
        "last_used_at",
    ]  # fmt: skip
    for name in seed_columns:
        assert name in cols, name
    # the seed's `path` is the model_path parameter; its chat_template the GGUF's own
    assert "gguf_chat_template" in cols and cols["chat_template"] == "TEXT"
    assert cols["created_at"] == "REAL" and cols["last_used_at"] == "REAL"


def test_indexes(db: CyllamaDB) -> None:
    with db.pool.read() as conn:
        rows = conn.execute("PRAGMA index_list(models)").fetchall()
        indexes = {r[1]: bool(r[2]) for r in rows}
        cols = {
            name: [c[2] for c in conn.execute(f"PRAGMA index_info({name})")] for name in indexes
        }
    assert indexes["idx_models_name"] is True  # unique
    assert cols["idx_models_name"] == ["name"]
    assert cols["idx_models_status"] == ["status"]
    assert cols["idx_models_type"] == ["type"]
    assert cols["idx_models_created"] == ["created_at"]
    assert cols["idx_models_path"] == ["model_path"]


def test_status_check_constraint_in_sql(db: CyllamaDB) -> None:
    db.save_model("m")
    with db.pool.transaction() as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE models SET status = 'bogus'")


def test_parameter_columns_added_to_an_older_file(db_path: Path) -> None:
    with CyllamaDB(db_path) as first:
        first.save_model("m", reasoning_budget=5)
        with first.pool.read() as conn:
            conn.execute("ALTER TABLE models DROP COLUMN reasoning_budget")
            conn.execute("ALTER TABLE models DROP COLUMN polling")
        assert "reasoning_budget" not in _columns(first)
    with CyllamaDB(db_path) as second:
        cols = _columns(second)
        assert cols["reasoning_budget"] == "INTEGER" and cols["polling"] == "INTEGER"
        second.update_model("m", reasoning_budget=7)
        assert second.get_model_by_name("m")["reasoning_budget"] == 7  # type: ignore[index]


# -- save / get / update / delete --------------------------------------------------------------


def test_save_and_get(any_db: CyllamaDB) -> None:
    any_db.clock = lambda: T0  # type: ignore[method-assign]
    model_id = any_db.save_model("llama-3-8b", ctx_size=8192, temperature=0.8, port=8080)
    assert isinstance(model_id, int) and model_id > 0
    rec = any_db.get_model(model_id)
    assert isinstance(rec, ModelRecord)
    assert rec["id"] == model_id
    assert rec["name"] == "llama-3-8b"
    assert rec["type"] == "llama" and rec["status"] == "stopped"
    assert rec["created_at"] == rec["updated_at"] == _ts(T0)
    assert rec["ctx_size"] == 8192 and rec["temperature"] == 0.8 and rec["port"] == 8080
    assert rec["flash_attn"] is None  # unset: llama-server's default
    assert set(PARAMS_BY_NAME) <= set(rec) and set(IDENTITY_COLUMNS) <= set(rec)
    assert set(FILE_COLUMNS) <= set(rec)
    assert rec.params == {"ctx_size": 8192, "temperature": 0.8, "port": 8080}
    assert any_db.get_model_by_name("llama-3-8b") == rec
    assert any_db.get_model(model_id + 100) is None
    assert any_db.get_model_by_name("nope") is None


def test_save_type_and_status(db: CyllamaDB) -> None:
    mid = db.save_model("g", type="gpt", status="running")
    rec = db.get_model(mid)
    assert rec is not None and rec["type"] == "gpt" and rec["status"] == "running"


@pytest.mark.parametrize("status", MODEL_STATUSES)
def test_every_status_is_accepted(db: CyllamaDB, status: str) -> None:
    assert db.get_model(db.save_model("m", status=status))["status"] == status  # type: ignore[index]


def test_names_are_unique(db: CyllamaDB) -> None:
    db.save_model("m", ctx_size=1)
    with pytest.raises(ModelExistsError, match="'m'") as info:
        db.save_model("m", ctx_size=2)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CyllamaDBError)
    assert [r["ctx_size"] for r in db.get_models()] == [1]


def test_update_model(db: CyllamaDB) -> None:
    mid = db.save_model("m", ctx_size=4096, temperature=0.7, api_key="k")
    db.clock = lambda: T0 + 60  # type: ignore[method-assign]
    rec = db.update_model(mid, temperature=0.2, status="running", api_key=None, top_k=10)
    assert rec["temperature"] == 0.2 and rec["top_k"] == 10 and rec["status"] == "running"
    assert rec["ctx_size"] == 4096  # untouched
    assert rec["api_key"] is None  # None unsets
    assert rec["created_at"] == _ts(T0) and rec["updated_at"] == _ts(T0 + 60)
    assert db.get_model(mid) == rec


def test_update_by_name_and_by_record_and_rename(db: CyllamaDB) -> None:
    mid = db.save_model("old")
    db.save_model("other")
    db.update_model("old", ctx_size=1)
    rec = db.get_model(mid)
    assert rec is not None
    db.update_model(rec, name="new")
    assert db.get_model_by_name("old") is None
    assert db.get_model_by_name("new")["ctx_size"] == 1  # type: ignore[index]
    with pytest.raises(ModelExistsError, match="'other'"):
        db.update_model(mid, name="other")
    assert db.get_model(mid)["name"] == "new"  # type: ignore[index]


def test_update_unknown_model(db: CyllamaDB) -> None:
    with pytest.raises(UnknownModelError, match="id 99") as info:
        db.update_model(99, ctx_size=1)
    assert isinstance(info.value, KeyError) and isinstance(info.value, CyllamaDBError)
    with pytest.raises(UnknownModelError, match="'ghost'"):
        db.update_model("ghost", ctx_size=1)


def test_update_with_nothing_changes_nothing(db: CyllamaDB) -> None:
    mid = db.save_model("m")
    db.clock = lambda: T0 + 5  # type: ignore[method-assign]
    assert db.update_model(mid)["updated_at"] == _ts(T0)


def test_delete(db: CyllamaDB) -> None:
    a = db.save_model("a")
    db.save_model("b")
    db.save_model("c")
    assert db.delete_model(a) is True
    assert db.delete_model(a) is False
    assert db.delete_model("b") is True
    assert [r["name"] for r in db.get_models()] == ["c"]
    assert db.delete_all_models() == 1
    assert db.get_models() == []
    assert db.delete_all_models() == 0


def test_db_stats_count_models(db: CyllamaDB) -> None:
    stats = db.get_db_stats()
    assert stats["model_entries"] == 0 and stats["running_models"] == 0
    db.save_model("a", status="running")
    db.save_model("b")
    stats = db.get_db_stats()
    assert stats["model_entries"] == 2 and stats["running_models"] == 1


def test_mark_model_loaded(db: CyllamaDB) -> None:
    mid = db.save_model("m")
    assert db.get_model(mid)["last_used_at"] is None  # type: ignore[index]
    db.clock = lambda: T0 + 30  # type: ignore[method-assign]
    db.mark_model_loaded("m")
    rec = db.get_model(mid)
    assert rec is not None
    assert rec["last_used_at"] == _ts(T0 + 30) and rec["status"] == "running"
    assert rec["updated_at"] == _ts(T0)  # use is not a configuration change
    db.mark_model_loaded(mid, status="error")
    assert db.get_model(mid)["status"] == "error"  # type: ignore[index]
    with pytest.raises(ParameterValueError, match="status"):
        db.mark_model_loaded(mid, status="busy")
    with pytest.raises(UnknownModelError):
        db.mark_model_loaded("ghost")


# -- round trips -------------------------------------------------------------------------------

_FULL_CONFIG = st.fixed_dictionaries({p.name: _strategy(p) for p in PARAMS})


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(config=_FULL_CONFIG, probe=st.sampled_from(PARAMS))
def test_every_parameter_round_trips(db: CyllamaDB, config: dict[str, Any], probe: Any) -> None:
    """Every parameter at once, each with a random valid value of its type."""
    db.delete_all_models()
    mid = db.save_model("m", **config)
    rec = db.get_model(mid)
    assert rec is not None
    assert {name: rec[name] for name in config} == config
    assert {name: type(rec[name]) for name in config} == {k: type(v) for k, v in config.items()}
    # and every value can be filtered on
    assert [r["id"] for r in db.get_models(**{probe.name: config[probe.name]})] == [mid]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.sampled_from(PARAMS).flatmap(lambda p: _strategy(p).map(lambda v: (p.name, v))),
    second=st.sampled_from(PARAMS).flatmap(lambda p: _strategy(p).map(lambda v: (p.name, v))),
)
def test_update_round_trips(
    db: CyllamaDB, first: tuple[str, Any], second: tuple[str, Any]
) -> None:
    db.delete_all_models()
    mid = db.save_model("m", **dict([first]))
    rec = db.update_model(mid, **dict([second]))
    expected = {**dict([first]), **dict([second])}
    assert rec.params == {k: v for k, v in expected.items() if v is not None}


@pytest.mark.parametrize(
    ("name", "given_", "stored"),
    [
        ("mmap", 0, False),  # SQLite-style booleans are normalised
        ("kv_offload", 1, True),
        ("temperature", 1, 1.0),  # ints become floats for float parameters
        ("gpu_layers", "99", 99),  # numeric text becomes the number
        ("gpu_layers", "all", "all"),
        ("fit_target", 2048, "2048"),
        ("spec_replace", ("a", "b"), ["a", "b"]),
        ("custom_params", {"--x": [1, "y"], "flag": True}, {"--x": [1, "y"], "flag": True}),
    ],
)
def test_normalised_values(db: CyllamaDB, name: str, given_: Any, stored: Any) -> None:
    rec = db.get_model(db.save_model("m", **{name: given_}))
    assert rec is not None and rec[name] == stored and type(rec[name]) is type(stored)


# -- validation --------------------------------------------------------------------------------


def _count(db: CyllamaDB) -> int:
    return len(db.get_models())


def test_unknown_parameter(db: CyllamaDB) -> None:
    with pytest.raises(UnknownParameterError, match=r"'ctx_sise'.*'ctx_size'") as info:
        db.save_model("m", ctx_sise=4096)
    err = info.value
    assert isinstance(err, TypeError) and isinstance(err, KeyError)  # unexpected keyword / key
    assert isinstance(err, CyllamaDBError)
    assert err.name == "ctx_sise"
    with pytest.raises(UnknownParameterError, match="'bogus'"):
        db.update_model(db.save_model("ok"), bogus=1)
    assert _count(db) == 1


@pytest.mark.parametrize(
    ("params", "name", "fragment"),
    [
        ({"ctx_size": "big"}, "ctx_size", "expects int, got str"),
        ({"ctx_size": 4096.0}, "ctx_size", "expects int, got float"),
        ({"temperature": "hot"}, "temperature", "expects float"),
        ({"mlock": "yes"}, "mlock", "expects bool"),
        ({"model_path": Path("/m.gguf")}, "model_path", "expects str"),
        ({"gpu_layers": 1.5}, "gpu_layers", "int or 'auto'/'all'"),
        ({"custom_params": ["--x"]}, "custom_params", "JSON object"),
    ],
)
def test_wrong_type(db: CyllamaDB, params: dict[str, Any], name: str, fragment: str) -> None:
    with pytest.raises(ParameterTypeError, match=re.escape(fragment)) as info:
        db.save_model("m", **params)
    assert info.value.name == name and isinstance(info.value, TypeError)
    assert isinstance(info.value, CyllamaDBError)
    assert _count(db) == 0


@pytest.mark.parametrize(
    ("params", "name", "fragment"),
    [
        ({"flash_attn": "maybe"}, "flash_attn", "on, off, auto"),
        ({"cache_type_k": "q9"}, "cache_type_k", "q8_0"),
        ({"cache_type_v": "Q8_0"}, "cache_type_v", "f16"),
        ({"top_p": 1.5}, "top_p", "0..1"),
        ({"port": 70000}, "port", "0..65535"),
        ({"mirostat": 3}, "mirostat", "0, 1, 2"),
        ({"gpu_layers": "most"}, "gpu_layers", "auto, all"),
        ({"temperature": float("nan")}, "temperature", "finite"),
        ({"mmap": 2}, "mmap", "true, false"),
        ({"cpu_range": "zero-seven"}, "cpu_range", "lo-hi"),
        ({"json_schema": "{not json"}, "json_schema", "JSON"),
        ({"control_vector_layer_range": [1]}, "control_vector_layer_range", "[START, END]"),
    ],
)
def test_value_not_allowed(db: CyllamaDB, params: dict[str, Any], name: str, fragment: str) -> None:
    with pytest.raises(ParameterValueError, match=re.escape(fragment)) as info:
        db.save_model("m", **params)
    assert info.value.name == name and isinstance(info.value, ValueError)
    assert _count(db) == 0


@pytest.mark.parametrize("status", ["Running", "paused", ""])
def test_invalid_status(db: CyllamaDB, status: str) -> None:
    with pytest.raises(ParameterValueError, match=r"'status'.*running, stopped, loading, error"):
        db.save_model("m", status=status)
    mid = db.save_model("ok")
    with pytest.raises(ParameterValueError, match="'status'"):
        db.update_model(mid, status=status)
    with pytest.raises(ParameterValueError, match="'status'"):
        db.get_models(status=status)
    assert db.get_model(mid)["status"] == "stopped"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"name": ""}, ParameterValueError, "'name'"),
        ({"name": "  "}, ParameterValueError, "'name'"),
        ({"name": 5}, ParameterTypeError, "'name' expects str"),
        ({"name": "m", "type": ""}, ParameterValueError, "'type'"),
        ({"name": "m", "type": None}, ParameterTypeError, "'type' expects str"),
        ({"name": "m", "status": None}, ParameterTypeError, "'status' expects str"),
    ],
)
def test_invalid_identity(db: CyllamaDB, kwargs: dict[str, Any], exc: type, fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        db.save_model(**kwargs)
    assert _count(db) == 0


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("id", "assigns ids"),
        ("created_at", "set by the registry"),
        ("updated_at", "set by the registry"),
        ("last_used_at", "mark_model_loaded"),
        ("architecture", "register_model"),
        ("fingerprint", "register_model"),
        ("gguf_metadata", "register_model"),
    ],
)
def test_managed_columns_cannot_be_set(db: CyllamaDB, key: str, fragment: str) -> None:
    with pytest.raises(UnknownParameterError, match=f"'{key}'.*{fragment}"):
        db.save_model("m", **{key: 1})
    mid = db.save_model("ok")
    with pytest.raises(UnknownParameterError, match=f"'{key}'"):
        db.update_model(mid, **{key: 1})


def test_bad_model_reference(db: CyllamaDB) -> None:
    with pytest.raises(ParameterTypeError, match="'model'"):
        db.update_model(1.0, ctx_size=1)  # type: ignore[arg-type]
    with pytest.raises(ParameterTypeError, match="'model'"):
        db.delete_model(True)
    with pytest.raises(ParameterValueError, match="without 'id'"):
        db.mark_model_loaded({"name": "m"})
    with pytest.raises(ParameterTypeError, match="'id' expects int"):
        db.get_model("1")  # type: ignore[arg-type]
    with pytest.raises(ParameterTypeError, match="'name' expects str"):
        db.get_model_by_name(1)  # type: ignore[arg-type]


def test_error_messages_never_contain_secrets(db: CyllamaDB) -> None:
    with pytest.raises(ParameterValueError) as info:
        db.mark_model_loaded({"api_key": "sk-secret"})
    assert "sk-secret" not in str(info.value)


_LEAKY: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"hf_token": b"hf_SECRET"}, ParameterTypeError),
    ({"api_key": 12345678}, ParameterTypeError),  # the digits are the secret
    ({"custom_params": {"--api-key": "SK-SECRET", "x": float("nan")}}, ParameterTypeError),
    ({"custom_params": {"hf-token": "HF-SECRET", "--x": {"a": 1}}}, ParameterValueError),
    ({"custom_params": {"--api-key": ["SECRET", {"a": 1}]}}, ParameterValueError),
]


@pytest.mark.parametrize(("params", "exc"), _LEAKY)
def test_invalid_secret_values_are_not_shown(
    db: CyllamaDB, params: dict[str, Any], exc: type[Exception]
) -> None:
    mid = db.save_model("ok")
    calls = {
        "save_model": lambda: db.save_model("m", **params),
        "update_model": lambda: db.update_model(mid, **params),
        "get_models": lambda: db.get_models(**params),
        "register_model": lambda: db.register_model("/nonexistent.gguf", **params),
    }
    for what, call in calls.items():
        with pytest.raises(exc) as info:
            call()
        (name,) = params
        text = f"{info.value} {info.value!r} {info.value.args!r} {getattr(info.value, 'value', '')!r}"
        assert name in str(info.value), what
        assert "SECRET" not in text and "12345678" not in text, (what, text)
    assert [m["name"] for m in db.get_models()] == ["ok"]


def test_invalid_stored_secret_is_not_logged(
    db: CyllamaDB, caplog: pytest.LogCaptureFixture
) -> None:
    mid = db.save_model("m")
    with db.pool.transaction() as conn:  # written by hand / by another tool
        conn.execute(
            "UPDATE models SET api_key = ?, custom_params = ?",
            (b"12345678", '{"--api-key": "SK-SECRET", "x": NaN}'),
        )
    with caplog.at_level("WARNING", logger="cyllama_db.registry"):
        rec = db.get_model(mid)
    assert rec is not None and rec["api_key"] == b"12345678"  # shown as stored...
    assert "12345678" not in repr(rec) and "SK-SECRET" not in repr(rec)  # ...but redacted
    assert "api_key" in caplog.text and "custom_params" in caplog.text  # the column is named
    assert "12345678" not in caplog.text and "SK-SECRET" not in caplog.text, caplog.text


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"ctx_size": 2**70}, "ctx_size"),
        ({"ctx_size": 2**63}, "ctx_size"),
        ({"threads": -(2**63) - 1}, "threads"),
        ({"gpu_layers": 2**70}, "gpu_layers"),
        ({"gpu_layers": str(2**70)}, "gpu_layers"),
    ],
)
def test_int_parameters_are_bound_to_int64(db: CyllamaDB, params: dict[str, Any], name: str) -> None:
    with pytest.raises(ParameterValueError, match=f"'{name}'.*64-bit"):
        db.save_model("b", **params)
    mid = db.save_model("ok", **{name: 7})
    with pytest.raises(ParameterValueError, match=f"'{name}'"):
        db.update_model(mid, **params)
    with pytest.raises(ParameterValueError, match=f"'{name}'"):
        db.get_models(**params)
    assert db.get_model(mid)[name] == 7  # type: ignore[index]
    assert [m["name"] for m in db.get_models()] == ["ok"]


def test_int64_extremes_round_trip(db: CyllamaDB) -> None:
    mid = db.save_model("m", threads=2**63 - 1, gpu_layers=2**63 - 1, top_k=-(2**63))
    rec = db.get_model(mid)
    assert rec is not None
    assert (rec["threads"], rec["gpu_layers"], rec["top_k"]) == (2**63 - 1, 2**63 - 1, -(2**63))
    assert [m["id"] for m in db.get_models(gpu_layers=2**63 - 1)] == [mid]


@pytest.mark.parametrize(
    "filters", [{"id": 2**64}, {"size_bytes": 2**64}, {"context_length": -(2**70)}]
)
def test_out_of_range_int_filters_are_rejected(db: CyllamaDB, filters: dict[str, Any]) -> None:
    (key,) = filters
    with pytest.raises(ParameterValueError, match=f"'{key}'.*64-bit"):
        db.get_models(**filters)


def test_out_of_range_ids_are_unknown_models(db: CyllamaDB) -> None:
    # No row can have such an id: a lookup finds nothing rather than overflow.
    db.save_model("m")
    for big in (2**64, -(2**70)):
        assert db.get_model(big) is None
        assert db.delete_model(big) is False
        with pytest.raises(UnknownModelError):
            db.update_model(big, ctx_size=1)
        with pytest.raises(UnknownModelError):
            db.mark_model_loaded(big)
        with pytest.raises(UnknownModelError):
            db.to_server_args(big)


# -- filters -----------------------------------------------------------------------------------


@pytest.fixture
def fleet(db: CyllamaDB) -> CyllamaDB:
    db.save_model("a", status="running", flash_attn="on", gpu_layers=99, mlock=True, top_p=0.9)
    db.save_model("b", type="gpt", flash_attn="off", gpu_layers="all", temperature=0.5)
    db.save_model("c", status="running", type="gpt", ctx_size=8192, top_p=0.9)
    return db


def _names(records: list[ModelRecord]) -> list[str]:
    return [r["name"] for r in records]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["a", "b", "c"]),
        ({"status": "running"}, ["a", "c"]),
        ({"type": "llama"}, ["a"]),
        ({"type": "gpt", "status": "running"}, ["c"]),
        ({"flash_attn": "on"}, ["a"]),
        ({"flash_attn": None}, ["c"]),  # None matches unset
        ({"gpu_layers": 99}, ["a"]),
        ({"gpu_layers": "99"}, ["a"]),  # normalised like stored values
        ({"gpu_layers": "all"}, ["b"]),
        ({"mlock": True}, ["a"]),
        ({"mlock": 1}, ["a"]),
        ({"mlock": False}, []),
        ({"top_p": 0.9}, ["a", "c"]),
        ({"temperature": 0.5}, ["b"]),
        ({"ctx_size": 8192, "top_p": 0.9}, ["c"]),
        ({"name": "b"}, ["b"]),
        ({"status": "error"}, []),
    ],
)
def test_filters(fleet: CyllamaDB, filters: dict[str, Any], expected: list[str]) -> None:
    assert _names(fleet.get_models(**filters)) == expected


def test_filter_by_id_and_timestamps(fleet: CyllamaDB) -> None:
    a = fleet.get_model_by_name("a")
    assert a is not None
    assert _names(fleet.get_models(id=a["id"])) == ["a"]
    assert len(fleet.get_models(created_at=_ts(T0))) == 3
    assert fleet.get_models(created_at=T0 + 1) == []
    assert len(fleet.get_models(last_used_at=None)) == 3


@pytest.mark.parametrize(
    ("filters", "exc", "fragment"),
    [
        ({"flash_attn": "maybe"}, ParameterValueError, "flash_attn"),
        ({"ctx_size": "8192"}, ParameterTypeError, "ctx_size"),
        ({"type": 3}, ParameterTypeError, "'type'"),
        ({"id": "1"}, ParameterTypeError, "'id'"),
        ({"architecture": 1}, ParameterTypeError, "'architecture'"),
        ({"vocab_size": "many"}, ParameterTypeError, "'vocab_size'"),
        ({"created_at": "yesterday"}, ParameterTypeError, "'created_at'"),
        ({"stauts": "running"}, UnknownParameterError, "did you mean 'status'"),
        ({"limit": 5}, UnknownParameterError, "'limit'"),
    ],
)
def test_bad_filters(fleet: CyllamaDB, filters: dict[str, Any], exc: type, fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        fleet.get_models(**filters)


@pytest.mark.parametrize(
    "hostile",
    [
        "name = name OR 1=1 --",
        'name" = "name" OR "1"="1',
        "status; DROP TABLE models; --",
        'a" IS NULL OR 1=1 OR "b',
        "metadata_json",
        "file_mtime_ns",
        "1",
        "",
    ],
)
def test_hostile_filter_keys_never_reach_sql(fleet: CyllamaDB, hostile: str) -> None:
    with pytest.raises(UnknownParameterError):
        fleet.get_models(**{hostile: "x"})
    with pytest.raises(UnknownParameterError):
        fleet.get_models(**{hostile: None})  # an IS NULL filter checks its key too
    with pytest.raises(UnknownParameterError):
        fleet.save_model("evil", **{hostile: "x"})
    assert _names(fleet.get_models()) == ["a", "b", "c"]


def test_hostile_values_are_data(fleet: CyllamaDB) -> None:
    evil = "x'); DROP TABLE models; --"
    mid = fleet.save_model(evil, model_path=evil)
    assert _names(fleet.get_models(model_path=evil)) == [evil]
    assert fleet.get_model(mid)["name"] == evil  # type: ignore[index]
    assert len(fleet.get_models()) == 4


# -- register_model: GGUF metadata -------------------------------------------------------------


def test_register_tiny_model_reads_every_field(db: CyllamaDB, tiny_gguf: Path) -> None:
    gguf = pytest.importorskip("gguf")
    mid = db.register_model(tiny_gguf)
    rec = db.get_model(mid)
    assert rec is not None
    reader = gguf.GGUFReader(tiny_gguf)

    def field(key: str) -> Any:
        return reader.fields[key].contents()

    assert rec["name"] == field("general.name") == "tiny-test-llama"
    assert rec["type"] == "llama" and rec["status"] == "stopped"
    assert rec["model_path"] == str(tiny_gguf.resolve())
    assert rec["filename"] == "tiny.gguf"
    assert rec["size_bytes"] == tiny_gguf.stat().st_size
    assert rec["format"] == "gguf"
    assert rec["architecture"] == field("general.architecture") == "llama"
    assert rec["size_label"] == field("general.size_label")
    assert rec["parameter_count"] == sum(int(t.n_elements) for t in reader.tensors)
    assert rec["quantization"] == gguf.LlamaFileType(field("general.file_type")).name[4:] == "F32"
    assert rec["context_length"] == field("llama.context_length") == 512
    assert rec["vocab_size"] == len(field("tokenizer.ggml.tokens")) == 274
    assert rec["gguf_chat_template"] == field("tokenizer.chat_template") == DEFAULT_CHAT_TEMPLATE
    assert rec["fingerprint"] == _gguf.model_fingerprint(tiny_gguf)
    assert re.fullmatch(r"[0-9a-f]{64}", rec["fingerprint"])
    assert rec["first_seen_at"] == rec["created_at"] == _ts(T0)
    assert rec["last_used_at"] is None
    meta = rec["gguf_metadata"]
    assert list(meta) == [k for k in reader.fields if not k.startswith("GGUF.")]
    assert meta["llama.embedding_length"] == field("llama.embedding_length")
    assert meta["tokenizer.ggml.tokens"] == {"type": "array", "item_type": "string", "length": 274}
    assert rec["chat_template"] is None  # the llama-server override is not set by registering


def test_register_large_vocab_model_agrees_with_gguf_package(db: CyllamaDB, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = write_large_vocab_gguf(tmp_path / "big.gguf", n_vocab=20_000)
    rec = db.get_model(db.register_model(path))
    assert rec is not None
    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert rec["vocab_size"] == len(fields["tokenizer.ggml.tokens"].data) == 20_000
    assert rec["context_length"] == fields["llama.context_length"].contents()
    assert rec["architecture"] == fields["general.architecture"].contents()
    assert rec["name"] == fields["general.name"].contents()
    assert rec["size_label"] == fields["general.size_label"].contents()
    assert rec["quantization"] == "F16"
    assert rec["gguf_chat_template"] == fields["tokenizer.chat_template"].contents()
    assert rec["parameter_count"] == sum(int(t.n_elements) for t in reader.tensors)
    meta = rec["gguf_metadata"]
    assert list(meta) == list(fields)
    for key, f in fields.items():
        if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.data) > 64:
            # big arrays are summarised, not stored
            assert meta[key] == {
                "type": "array", "item_type": f.types[-1].name.lower(), "length": len(f.data)
            }, key  # fmt: skip
        else:
            assert meta[key] == f.contents(), key
    with db.pool.read() as conn:
        stored = conn.execute("SELECT length(metadata_json) FROM models").fetchone()[0]
    assert stored < 10_000  # the vocabulary is not copied into the database


def test_unchanged_file_is_not_read_again(
    db: CyllamaDB, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(shutil.copy(tiny_gguf, tmp_path / "copy.gguf"))
    reads: list[str] = []
    real = _gguf.summarize_gguf

    def counting(p: Any, **kw: Any) -> dict[str, Any]:
        reads.append(os.fspath(p))
        return real(p, **kw)

    monkeypatch.setattr(_gguf, "summarize_gguf", counting)
    first = db.register_model(path, ctx_size=1024)
    assert len(reads) == 1
    db.clock = lambda: T0 + 10  # type: ignore[method-assign]
    again = db.register_model(path, temperature=0.1)
    assert again == first and len(reads) == 1  # same row, no read
    rec = db.get_model(first)
    assert rec is not None
    assert rec["ctx_size"] == 1024 and rec["temperature"] == 0.1  # earlier params kept
    assert rec["first_seen_at"] == _ts(T0) and rec["updated_at"] == _ts(T0 + 10)
    # another entry for the same unchanged file reuses the stored metadata too
    other = db.get_model(db.register_model(path, name="copy-8k", ctx_size=8192))
    assert len(reads) == 1 and other is not None
    assert other["fingerprint"] == rec["fingerprint"] and other["vocab_size"] == 274
    assert other["first_seen_at"] == _ts(T0)
    # a changed modification time means the file is read again
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    db.register_model(path)
    assert len(reads) == 2
    db.register_model(path)
    assert len(reads) == 2


def test_replaced_file_gets_new_metadata(db: CyllamaDB, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    path = write_tiny_llama(tmp_path / "m.gguf", n_ctx_train=512)
    mid = db.register_model(path)
    old = db.get_model(mid)
    write_tiny_llama(tmp_path / "m.gguf", n_ctx_train=1024, n_embd=32, seed=3)
    assert db.register_model(path) == mid
    new = db.get_model(mid)
    assert old is not None and new is not None
    assert new["context_length"] == 1024 and old["context_length"] == 512
    assert new["fingerprint"] != old["fingerprint"]
    assert new["size_bytes"] == path.stat().st_size != old["size_bytes"]


def test_default_names(db: CyllamaDB, tiny_gguf: Path, tmp_path: Path) -> None:
    # 1. general.name
    first = db.register_model(tiny_gguf)
    assert db.get_model(first)["name"] == "tiny-test-llama"  # type: ignore[index]
    # 2. same general.name, another file (another quantisation...): the file stem
    other = Path(shutil.copy(tiny_gguf, tmp_path / "tiny-q8.gguf"))
    second = db.register_model(other)
    assert db.get_model(second)["name"] == "tiny-q8"  # type: ignore[index]
    # 3. re-registering a path updates its entry, whatever its name
    db.update_model(second, name="renamed")
    assert db.register_model(other) == second
    assert len(db.get_models()) == 2
    # 4. both names taken by other files: a clear error
    clash_dir = tmp_path / "clash"
    clash_dir.mkdir()
    clash = Path(shutil.copy(tiny_gguf, clash_dir / "tiny-q8.gguf"))
    db.update_model(second, name="tiny-q8")
    with pytest.raises(ModelExistsError, match="name="):
        db.register_model(clash)
    assert db.get_model(db.register_model(clash, name="third"))["model_path"] == str(clash)  # type: ignore[index]


def test_stem_when_general_name_missing(db: CyllamaDB, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    path = write_tiny_llama(tmp_path / "nameless.gguf", name="")
    assert db.get_model(db.register_model(path))["name"] == "nameless"  # type: ignore[index]


def test_register_with_explicit_name_type_status_and_params(db: CyllamaDB, tiny_gguf: Path) -> None:
    mid = db.register_model(
        tiny_gguf, name="mine", type="custom", status="loading", ctx_size=256, api_key="k"
    )
    rec = db.get_model(mid)
    assert rec is not None
    assert (rec["name"], rec["type"], rec["status"]) == ("mine", "custom", "loading")
    assert rec["ctx_size"] == 256 and rec["api_key"] == "k"
    # an existing entry of that name is pointed at the file and keeps its params
    db.save_model("preset", temperature=0.3)
    rec = db.get_model(db.register_model(tiny_gguf, name="preset"))
    assert rec is not None
    assert rec["temperature"] == 0.3 and rec["architecture"] == "llama"


def test_register_errors(db: CyllamaDB, tmp_path: Path, tiny_gguf: Path) -> None:
    with pytest.raises(FileNotFoundError):
        db.register_model(tmp_path / "missing.gguf")
    with pytest.raises(IsADirectoryError):
        db.register_model(tmp_path)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(_gguf.GGUFFormatError) as info:
        db.register_model(junk)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CyllamaDBError)
    with pytest.raises(UnknownParameterError, match="model_path"):
        db.register_model(tiny_gguf, model_path="/elsewhere.gguf")
    with pytest.raises(ParameterValueError, match="flash_attn"):
        db.register_model(tiny_gguf, flash_attn="maybe")
    with pytest.raises(ParameterValueError, match="'name'"):
        db.register_model(tiny_gguf, name="")
    assert db.get_models() == []


def test_relative_and_home_paths_are_stored_absolute(
    db: CyllamaDB, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(tiny_gguf, tmp_path / "rel.gguf")
    monkeypatch.chdir(tmp_path)
    rec = db.get_model(db.register_model("rel.gguf"))
    assert rec is not None and rec["model_path"] == str(tmp_path / "rel.gguf")
    home = Path(os.environ["HOME"])
    shutil.copy(tiny_gguf, home / "h.gguf")
    rec = db.get_model(db.register_model("~/h.gguf"))
    assert rec is not None and rec["model_path"] == str(home / "h.gguf")


def test_changing_model_path_clears_file_metadata(db: CyllamaDB, tiny_gguf: Path) -> None:
    mid = db.register_model(tiny_gguf)
    db.mark_model_loaded(mid)
    rec = db.update_model(mid, model_path="/models/other.gguf")
    for key in FILE_COLUMNS:
        if key != "last_used_at":
            assert rec[key] is None, key
    assert rec["last_used_at"] is not None
    # the same path again keeps it
    mid2 = db.register_model(tiny_gguf, name="again")
    assert db.update_model(mid2, model_path=str(tiny_gguf.resolve()))["vocab_size"] == 274


def test_concurrent_registration_of_one_file(file_db: CyllamaDB, tiny_gguf: Path) -> None:
    ids: list[int] = []
    errors: list[BaseException] = []

    def register() -> None:
        try:
            ids.append(file_db.register_model(tiny_gguf))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(ids)) == 1 and len(file_db.get_models()) == 1


# -- conversions -------------------------------------------------------------------------------


def test_server_args_for_twenty_non_default_parameters(db: CyllamaDB) -> None:
    db.save_model(
        "mistral",
        model_path="/models/mistral-7b.Q5_K_M.gguf",
        hf_token="hf_abc",
        ctx_size=8192,
        predict=256,
        batch_size=512,
        ubatch_size=256,
        n_parallel=2,
        cont_batching=False,
        threads=6,
        threads_batch=12,
        cache_ram=0,
        cache_type_k="q4_0",
        cache_type_v="q4_0",
        mmap=False,
        mlock=False,  # default; with mmap=False gives --load-mode none
        gpu_layers="all",
        main_gpu=1,
        kv_unified=True,
        temperature=0.2,
        top_k=20,
        repeat_penalty=1.1,
        dry_multiplier=0.8,
        mirostat=2,
        mirostat_ent=4.0,
        grammar_file="/g/json.gbnf",
        flash_attn="off",
        jinja=True,  # default: not emitted
        port=9000,
        api_key="sk-secret",
        warmup=False,
        context_shift=True,
        reasoning_budget=0,
        custom_params={"--spec-type": "ngram-simple"},
    )
    expected = [
        "--model", "/models/mistral-7b.Q5_K_M.gguf",
        "--hf-token", "hf_abc",
        "--ctx-size", "8192",
        "--predict", "256",
        "--batch-size", "512",
        "--ubatch-size", "256",
        "--parallel", "2",
        "--no-cont-batching",
        "--threads", "6",
        "--threads-batch", "12",
        "--cache-ram", "0",
        "--cache-type-k", "q4_0",
        "--cache-type-v", "q4_0",
        "--load-mode", "none",
        "--gpu-layers", "all",
        "--main-gpu", "1",
        "--kv-unified",
        "--temperature", "0.2",
        "--top-k", "20",
        "--repeat-penalty", "1.1",
        "--dry-multiplier", "0.8",
        "--mirostat", "2",
        "--mirostat-ent", "4.0",
        "--grammar-file", "/g/json.gbnf",
        "--flash-attn", "off",
        "--port", "9000",
        "--api-key", "sk-secret",
        "--no-warmup",
        "--context-shift",
        "--reasoning-budget", "0",
        "--spec-type", "ngram-simple",
    ]  # fmt: skip
    rec = db.get_model_by_name("mistral")
    assert rec is not None
    assert db.to_server_args("mistral") == expected
    assert db.to_server_args(rec["id"]) == expected
    assert db.to_server_args(rec) == expected
    assert cyllama_db.to_server_args(rec) == expected  # the module-level helper takes a record
    redacted = db.to_server_args("mistral", redact_secrets=True)
    assert "sk-secret" not in redacted and "hf_abc" not in redacted
    assert redacted[redacted.index("--api-key") + 1] == REDACTED
    assert db.to_server_args("mistral", model_path_flag="-m")[:2] == ["-m", expected[1]]
    legacy = db.to_server_args("mistral", legacy=True)
    assert "--no-mmap" in legacy and "--load-mode" not in legacy


def test_server_args_warns_about_unlaunchable_parameters(db: CyllamaDB) -> None:
    db.save_model("m", list_devices=True, ctx_size=64)
    with pytest.warns(ServerArgWarning, match="list_devices"):
        assert db.to_server_args("m") == ["--ctx-size", "64"]


def test_llama_and_sampling_kwargs(db: CyllamaDB) -> None:
    db.save_model(
        "m",
        model_path="/m.gguf",
        ctx_size=2048,
        gpu_layers="all",
        cache_type_k="q8_0",
        cache_type_v="bf16",
        flash_attn="on",
        mmap=False,
        seed=-1,
        temperature=0.3,
        top_k=5,
        predict=64,
        mirostat=2,
        api_key="secret",  # a server setting: not a Llama() keyword
        port=9999,
    )
    kwargs = db.to_llama_kwargs("m")
    assert kwargs == {
        "model_path": "/m.gguf",
        "n_ctx": 2048,
        "n_gpu_layers": -1,
        "type_k": 8,
        "type_v": 30,
        "use_mmap": False,
        "seed": 0xFFFFFFFF,
        "flash_attn": True,
    }
    assert db.to_sampling_kwargs("m") == {
        "max_tokens": 64,
        "temperature": 0.3,
        "top_k": 5,
        "mirostat_mode": 2,
    }
    assert cyllama_db.to_llama_kwargs(db.get_model_by_name("m")) == kwargs  # type: ignore[arg-type]


def test_conversions_of_unknown_models(db: CyllamaDB) -> None:
    with pytest.raises(UnknownModelError):
        db.to_llama_kwargs("ghost")
    with pytest.raises(UnknownModelError):
        db.to_server_args(42)


def test_llama_loads_the_registered_tiny_model(db: CyllamaDB, tiny_model_path: Path) -> None:
    import llama_cpp

    db.register_model(
        tiny_model_path,
        name="tiny",
        ctx_size=256,
        batch_size=64,
        ubatch_size=64,
        threads=1,
        gpu_layers=0,
        cache_type_k="f16",
        flash_attn="off",
        seed=7,
        mmap=True,
        log_disable=True,
    )
    kwargs = db.to_llama_kwargs("tiny")
    assert kwargs["verbose"] is False  # log_disable
    llm = llama_cpp.Llama(**kwargs)
    try:
        assert llm.n_ctx() == 256
        assert llm.model_path == str(tiny_model_path.resolve())
        out = llm.create_completion(
            "Hello", **{**db.to_sampling_kwargs("tiny"), "max_tokens": 4, "temperature": 0.0}
        )
        assert out["choices"][0]["text"]
        assert out["usage"]["completion_tokens"] >= 1
    finally:
        llm.close()


# -- secrets -----------------------------------------------------------------------------------


def test_secrets_are_redacted_in_repr_and_exports(db: CyllamaDB) -> None:
    mid = db.save_model(
        "s",
        hf_token="hf_TOPSECRET",
        api_key="sk-TOPSECRET",
        custom_params={"--api-key": "sk-CUSTOMSECRET", "--n-predict": 5},
        ctx_size=128,
    )
    rec = db.get_model(mid)
    assert rec is not None
    for text in (
        repr(rec),
        str(rec),
        f"{rec}",
        pprint.pformat(rec),
        repr(db.get_models()),
        json.dumps(rec.to_dict(), default=str),
    ):
        assert "TOPSECRET" not in text and "CUSTOMSECRET" not in text, text
    assert REDACTED in repr(rec)
    assert "ctx_size=128" in repr(rec) and "name='s'" in repr(rec)
    exported = rec.to_dict()
    assert type(exported) is dict
    assert exported["hf_token"] == exported["api_key"] == REDACTED
    assert exported["custom_params"] == {"--api-key": REDACTED, "--n-predict": 5}
    # stored, and available when asked for
    shown = rec.to_dict(show_secrets=True)
    assert shown["api_key"] == "sk-TOPSECRET" and shown["hf_token"] == "hf_TOPSECRET"
    assert rec["api_key"] == "sk-TOPSECRET"
    assert rec.params["custom_params"]["--api-key"] == "sk-CUSTOMSECRET"
    assert "sk-TOPSECRET" in db.to_server_args(mid)
    assert "sk-CUSTOMSECRET" not in db.to_server_args(mid, redact_secrets=True)


def test_repr_shows_only_set_values(db: CyllamaDB) -> None:
    rec = db.get_model(db.save_model("m", ctx_size=1))
    assert repr(rec) == "ModelRecord(id=1, name='m', type='llama', status='stopped', ctx_size=1)"


# -- disabled / closed -------------------------------------------------------------------------


def test_disabled_database_is_a_no_op(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = CyllamaDB(enabled=False)

    def fail(*a: Any, **k: Any) -> Any:
        raise AssertionError("read the file")

    monkeypatch.setattr(_gguf, "summarize_gguf", fail)
    assert db.save_model("m", ctx_size=1) == 0
    assert db.register_model(tiny_gguf) == 0
    assert db.get_models() == [] and db.get_models(status="running") == []
    assert db.get_model(1) is None and db.get_model_by_name("m") is None
    assert db.update_model(1, ctx_size=2) is None
    assert db.delete_model(1) is False and db.delete_all_models() == 0
    assert db.mark_model_loaded("m") is None
    assert db.mark_model_unloaded("m") is False
    assert db.register_model("/no/such/file.gguf") == 0  # not even looked at


def test_disabled_database_conversions(tiny_gguf: Path) -> None:
    db = CyllamaDB(enabled=False)
    # by id or name there is nothing to look up, and the error says why
    for call in (db.to_llama_kwargs, db.to_server_args, db.to_sampling_kwargs):
        for ref in ("x", 1):
            with pytest.raises(UnknownModelError, match="database is disabled") as info:
                call(ref)
            assert not isinstance(info.value, DatabaseClosedError)
    # a record (or any mapping of parameters) needs no registry
    params = {"name": "x", "model_path": "/m.gguf", "ctx_size": 512, "temperature": 0.2, "api_key": "k"}
    assert db.to_llama_kwargs(params) == {"model_path": "/m.gguf", "n_ctx": 512}
    assert db.to_server_args(params, redact_secrets=True) == [
        "--model", "/m.gguf", "--ctx-size", "512", "--temperature", "0.2", "--api-key", REDACTED,
    ]  # fmt: skip
    assert db.to_sampling_kwargs(ModelRecord(params)) == {"temperature": 0.2}
    with pytest.raises(ParameterTypeError, match="'model'"):
        db.to_server_args(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (lambda db: db.save_model(5), ParameterTypeError, "'name' expects str"),
        (lambda db: db.save_model(""), ParameterValueError, "'name'"),
        (lambda db: db.save_model("m", status="busy"), ParameterValueError, "'status'"),
        (lambda db: db.save_model("m", ctx_size="big"), ParameterTypeError, "'ctx_size'"),
        (lambda db: db.save_model("m", bogus=1), UnknownParameterError, "'bogus'"),
        (lambda db: db.get_models(bogus=1), UnknownParameterError, "'bogus'"),
        (lambda db: db.get_models(flash_attn="maybe"), ParameterValueError, "'flash_attn'"),
        (lambda db: db.get_model("1"), ParameterTypeError, "'id'"),
        (lambda db: db.get_model_by_name(1), ParameterTypeError, "'name'"),
        (lambda db: db.update_model(1, bogus=1), UnknownParameterError, "'bogus'"),
        (lambda db: db.update_model(1.0, ctx_size=1), ParameterTypeError, "'model'"),
        (lambda db: db.delete_model(True), ParameterTypeError, "'model'"),
        (lambda db: db.mark_model_loaded(1, status="busy"), ParameterValueError, "'status'"),
        (lambda db: db.mark_model_unloaded(None), ParameterTypeError, "'model'"),
        (lambda db: db.register_model("x.gguf", name=""), ParameterValueError, "'name'"),
        (lambda db: db.register_model("x.gguf", model_path="y"), UnknownParameterError, "model_path"),
        (lambda db: db.register_model("x.gguf", ctx_sise=1), UnknownParameterError, "ctx_size"),
    ],
)
def test_disabled_database_still_checks_arguments(call: Any, exc: type, fragment: str) -> None:
    db = CyllamaDB(enabled=False)
    with pytest.raises(exc, match=fragment):
        call(db)


def test_closed_database_raises(db_path: Path) -> None:
    db = CyllamaDB(db_path)
    mid = db.save_model("m")
    db.close()
    for call in (
        lambda: db.save_model("n"),
        lambda: db.get_models(),
        lambda: db.get_model(mid),
        lambda: db.update_model(mid, ctx_size=1),
        lambda: db.delete_model(mid),
        lambda: db.to_server_args("m"),
        lambda: db.get_model_by_name("m"),
        lambda: db.mark_model_loaded(mid),
        lambda: db.mark_model_unloaded(mid),
        lambda: db.register_model(db_path),
    ):
        with pytest.raises(DatabaseClosedError):
            call()


def test_models_persist_across_reopen(db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        mid = db.save_model("m", ctx_size=4096, custom_params={"--x": 1}, gpu_layers="auto")
        before = db.get_model(mid)
    with CyllamaDB(db_path) as db:
        assert db.get_model(mid) == before


# -- docs --------------------------------------------------------------------------------------


def test_docs_parameter_table_is_generated_from_params() -> None:
    from cyllama_db.stores.params import parameter_table_markdown

    text = (ROOT / "docs" / "registry.md").read_text()
    start, end = "<!-- parameters:start -->\n", "<!-- parameters:end -->"
    assert start in text and end in text
    table = text.split(start, 1)[1].split(end, 1)[0].strip("\n") + "\n"
    assert table == parameter_table_markdown(), (
        "docs/registry.md's parameter table is stale; regenerate it with\n"
        "  python -c \"from cyllama_db.stores.params import parameter_table_markdown as t; print(t(), end='')\"\n"
        "and paste it between the parameters:start / parameters:end markers"
    )
    assert len(table.strip().splitlines()) == len(PARAMS) + 2


def test_module_exports() -> None:
    for name in (
        "ModelRecord", "MODEL_STATUSES", "UnknownParameterError", "ParameterTypeError",
        "ParameterValueError", "UnknownModelError", "ModelExistsError", "to_server_args",
        "to_llama_kwargs", "PARAMS",
    ):  # fmt: skip
        assert name in cyllama_db.__all__, name
    assert issubclass(UnknownParameterError, CyllamaDBError)
    assert issubclass(ParameterTypeError, CyllamaDBError)
    assert issubclass(ParameterValueError, CyllamaDBError)


def test_no_warnings_from_normal_use(db: CyllamaDB) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mid = db.save_model("m", ctx_size=64, flash_attn="auto")
        db.to_server_args(mid)
        db.to_llama_kwargs(mid)


# -- the store object (db.models) ---------------------------------------------------------------


def test_the_registry_is_a_store_reached_as_db_models(db: CyllamaDB, tiny_gguf: Path) -> None:
    from cyllama_db.db.store import Store
    from cyllama_db.stores.registry import ModelRegistry

    assert isinstance(db.models, ModelRegistry) and isinstance(db.models, Store)
    assert db.models in db.stores and db.models.db is db
    assert (db.models.name, db.models.tables) == ("models", ("models",))
    with db.pool.read() as conn:
        assert db.models.counts(conn) == {"model_entries": 0, "running_models": 0}

    mid = db.models.register(tiny_gguf, name="tiny", ctx_size=256)
    assert db.models.get(mid) == db.get_model(mid) == db.models.get_by_name("tiny")
    assert db.models.fetch("tiny") == db.models.fetch(mid) == db.models.fetch(db.get_model(mid))
    other = db.models.save("other", status="running", model_path="/x/other.gguf")
    assert [m["name"] for m in db.models.list()] == ["tiny", "other"] == [m["name"] for m in db.get_models()]
    assert db.models.files() == db.registered_model_files() == [
        ("tiny", str(tiny_gguf), "tiny.gguf"), ("other", "/x/other.gguf", None),
    ]
    assert db.models.running_paths() == ["/x/other.gguf"]
    assert db.models.update("other", ctx_size=64)["ctx_size"] == 64
    assert db.models.mark_unloaded(other) is True and db.models.running_paths() == []
    db.models.mark_loaded("tiny")
    assert db.models.running_paths() == [str(tiny_gguf)]
    assert db.models.to_llama_kwargs("tiny")["n_ctx"] == 256
    assert db.models.to_server_args("tiny") == db.to_server_args("tiny")
    assert db.models.to_sampling_kwargs("tiny") == db.to_sampling_kwargs("tiny")
    assert db.models.delete("other") is True and db.models.delete("other") is False
    assert db.models.delete_all() == 1 and db.models.list() == []


def test_fetch_raises_for_a_missing_model(db: CyllamaDB) -> None:
    with pytest.raises(UnknownModelError, match="'ghost'"):
        db.models.fetch("ghost")
    with pytest.raises(UnknownModelError, match="id 7"):
        db.models.fetch(7)
    with pytest.raises(ParameterTypeError, match="model"):
        db.models.fetch(1.5)  # type: ignore[arg-type]
    assert CyllamaDB(enabled=False).models.fetch("ghost") is None  # disabled: the empty answer


def test_disabled_store_answers_empty(tiny_gguf: Path) -> None:
    models = CyllamaDB(enabled=False).models
    assert models.files() == [] and models.running_paths() == [] and models.list() == []
    assert models.register(tiny_gguf) == 0 and models.save("m") == 0 and models.get(1) is None


def test_flat_registry_methods_are_delegates_with_the_same_signature() -> None:
    """Every public ModelRegistry method but the hooks has a flat facade spelling, of the same signature."""
    import inspect

    from cyllama_db.db.store import Store
    from cyllama_db.stores.registry import ModelRegistry

    own = {
        name for name, member in vars(ModelRegistry).items()
        if not name.startswith("_") and callable(member) and not hasattr(Store, name)
    } - {"fetch", "running_paths"}  # store-only: for the other modules
    flat = {
        member.__delegates_to__.__name__: member
        for member in vars(CyllamaDB).values()
        if getattr(getattr(member, "__delegates_to__", None), "__qualname__", "").startswith("ModelRegistry.")
    }
    assert set(flat) == own
    for name, facade_method in flat.items():
        target = getattr(ModelRegistry, name)
        assert facade_method.__delegates_to__ is target
        assert inspect.signature(facade_method) == inspect.signature(target), name
        assert facade_method.__doc__ == target.__doc__ and target.__doc__, name


# -- inference arguments -----------------------------------------------------------------------


def test_inference_arguments(db: CyllamaDB) -> None:
    from cyllama_db.stores.registry import inference_arguments

    db.save_model(
        "m", model_path="/m.gguf", ctx_size=512, seed=5, temperature=0.1, predict=-1,
        log_disable=True, cache_type_k="q8_0", api_key="k",
    )  # fmt: skip
    record, llm_kwargs, sampling = inference_arguments(db, "m")
    assert record["name"] == "m"
    assert llm_kwargs == {"model_path": "/m.gguf", "n_ctx": 512, "type_k": 8, "verbose": False}
    assert sampling == {"max_tokens": None, "temperature": 0.1, "seed": 5}
    db.save_model("pathless", ctx_size=1)
    with pytest.raises(cyllama_db.errors.ModelLoadError, match=r"'pathless'.*register_model"):
        inference_arguments(db, "pathless")
    with pytest.raises(UnknownModelError):
        inference_arguments(db, "ghost")
    with pytest.raises(cyllama_db.errors.ModelLoadError, match="disabled"):
        inference_arguments(CyllamaDB(enabled=False), "m")


# -- LLM.from_registry / complete(model=...) ----------------------------------------------------


@pytest.fixture
def tiny_registered(db: CyllamaDB, tiny_model_path: Path) -> CyllamaDB:
    db.register_model(
        tiny_model_path,
        name="tiny",
        ctx_size=256,
        batch_size=64,
        threads=1,
        gpu_layers=0,
        temperature=0.0,  # greedy: deterministic text
        predict=3,
        seed=11,
        log_disable=True,
    )
    return db


def test_llm_from_registry_loads_and_generates(tiny_registered: CyllamaDB) -> None:
    from cyllama_db import LLM

    db = tiny_registered
    db.clock = lambda: T0 + 100  # type: ignore[method-assign]
    with LLM.from_registry("tiny", db=db, cache=False) as llm:
        rec = db.get_model_by_name("tiny")
        assert rec is not None
        # used now, but "running" only once llama.cpp has the model in memory
        assert rec["status"] == "stopped" and rec["last_used_at"] == _ts(T0 + 100)
        assert llm.model_path == rec["model_path"]
        assert llm.load_options == {"n_ctx": 256, "n_batch": 64, "n_threads": 1, "n_gpu_layers": 0}
        assert llm.config.temperature == 0.0 and llm.config.max_tokens == 3
        assert llm.config.seed == 11
        out = llm("Hello")
        assert db.get_model_by_name("tiny")["status"] == "running"  # type: ignore[index]
        assert out.text and out.stats.generated_tokens == 3
        assert llm.llama.n_ctx() == 256  # the stored ctx_size reached llama.cpp
        # the same text as an LLM built by hand with the same settings
        by_hand = llm.__class__(
            rec["model_path"], db=False, cache=False, n_ctx=256, n_batch=64, n_threads=1,
            n_gpu_layers=0, temperature=0.0, max_tokens=3, seed=11,
        )  # fmt: skip
        with by_hand:
            assert by_hand("Hello").text == out.text
    assert db.get_model_by_name("tiny")["status"] == "stopped"  # type: ignore[index]


def test_llm_from_registry_overrides(tiny_registered: CyllamaDB) -> None:
    from cyllama_db import LLM, GenerationConfig

    db = tiny_registered
    rec = db.get_model_by_name("tiny")
    assert rec is not None
    with LLM.from_registry(rec["id"], db=db, n_ctx=128, max_tokens=2) as llm:
        assert llm.load_options["n_ctx"] == 128 and llm.config.max_tokens == 2
        assert llm.config.temperature == 0.0  # the rest stays as stored
    with LLM.from_registry("tiny", db=db, config=GenerationConfig(max_tokens=5)) as llm:
        assert llm.config.max_tokens == 5 and llm.config.temperature == 0.8  # config replaces
        assert llm.load_options["n_ctx"] == 256


def test_complete_with_a_registered_model(tiny_registered: CyllamaDB) -> None:
    from cyllama_db import complete
    from cyllama_db.llm import unload_models

    db = tiny_registered
    try:
        db.clock = lambda: T0 + 200  # type: ignore[method-assign]
        first = complete("Hello", model="tiny", db=db)
        assert first.text and first.stats.generated_tokens == 3  # stored predict
        rec = db.get_model_by_name("tiny")
        assert rec is not None
        assert rec["last_used_at"] == _ts(T0 + 200) and rec["status"] == "running"
        assert db.get_db_stats()["running_models"] == 1
        assert first.model_path == rec["model_path"]
        # explicit kwargs win over the stored values
        longer = complete("Hello", model="tiny", db=db, max_tokens=5, cache=False)
        assert longer.stats.generated_tokens == 5 and longer.text.startswith(first.text)
        # the same as naming the file with the same settings
        direct = complete(
            "Hello", rec["model_path"], db=False, n_ctx=256, n_batch=64, n_threads=1,
            n_gpu_layers=0, temperature=0.0, max_tokens=3, seed=11,
        )  # fmt: skip
        assert direct.text == first.text
    finally:
        unload_models()
    assert db.get_model_by_name("tiny")["status"] == "stopped"  # type: ignore[index]
    assert db.get_db_stats()["running_models"] == 0


def test_chat_with_a_registered_model(tiny_registered: CyllamaDB) -> None:
    from cyllama_db import chat
    from cyllama_db.llm import unload_models

    db = tiny_registered
    messages = [{"role": "user", "content": "Say hi"}]
    try:
        first = chat(messages, model="tiny", db=db)
        assert first.stats.generated_tokens == 3  # the stored predict applies to chat too
        rec = db.get_model_by_name("tiny")
        assert rec is not None and rec["status"] == "running"
        again = chat(messages, model="tiny", db=db)
        assert again.cache_hit and again.text == first.text
        with pytest.raises(TypeError, match="not both"):
            chat(messages, rec["model_path"], db=db, model="tiny")
        with pytest.raises(UnknownModelError):
            chat(messages, model="ghost", db=db)
    finally:
        unload_models()


def test_registry_inference_errors(tiny_registered: CyllamaDB, tmp_path: Path) -> None:
    from cyllama_db import LLM, complete
    from cyllama_db.errors import ModelNotFoundError

    db = tiny_registered
    with pytest.raises(UnknownModelError):
        LLM.from_registry("ghost", db=db)
    with pytest.raises(UnknownModelError):
        complete("Hi", model="ghost", db=db)
    with pytest.raises(TypeError, match="not both"):
        complete("Hi", "x.gguf", db=db, model="tiny")
    with pytest.raises(TypeError, match=r"model_path .* or model="):
        complete("Hi", db=db)
    with pytest.raises(TypeError, match="needs its database"):
        LLM.from_registry("tiny", db=False)
    with pytest.raises(TypeError, match="bogus"):
        LLM.from_registry("tiny", db=db, bogus=1)
    assert db.get_model_by_name("tiny")["status"] == "stopped"  # type: ignore[index]
    # a registered file that has gone: status "error"
    gone = tmp_path / "gone.gguf"
    shutil.copy(db.get_model_by_name("tiny")["model_path"], gone)  # type: ignore[index]
    db.register_model(gone, name="gone")
    gone.unlink()
    with pytest.raises(ModelNotFoundError):
        LLM.from_registry("gone", db=db)
    assert db.get_model_by_name("gone")["status"] == "error"  # type: ignore[index]
    db.update_model("gone", status="stopped")
    with pytest.raises(ModelNotFoundError):
        complete("Hi", model="gone", db=db)
    assert db.get_model_by_name("gone")["status"] == "error"  # type: ignore[index]


def test_from_registry_uses_the_global_database(tiny_model_path: Path) -> None:
    from cyllama_db import LLM, configure_db

    db = configure_db(path=":memory:")
    db.register_model(tiny_model_path, name="global-tiny", ctx_size=128)
    with LLM.from_registry("global-tiny", cache=False, max_tokens=1) as llm:
        assert llm.load_options["n_ctx"] == 128
        llm("Hi")
        assert db.get_model_by_name("global-tiny")["status"] == "running"  # type: ignore[index]
    assert db.get_model_by_name("global-tiny")["status"] == "stopped"  # type: ignore[index]


# -- registry status follows the model in memory ----------------------------------------------


def _status(db: CyllamaDB, name: str) -> str:
    rec = db.get_model_by_name(name)
    assert rec is not None
    return str(rec["status"])


def test_mark_model_unloaded(db: CyllamaDB) -> None:
    mid = db.save_model("m", status="running")
    db.clock = lambda: T0 + 5  # type: ignore[method-assign]
    assert db.mark_model_unloaded("m") is True
    rec = db.get_model(mid)
    assert rec is not None and rec["status"] == "stopped"
    assert rec["last_used_at"] is None and rec["updated_at"] == _ts(T0)  # only the status
    assert db.mark_model_unloaded(mid) is False  # already stopped
    db.update_model(mid, status="error")
    assert db.mark_model_unloaded(mid) is False and _status(db, "m") == "error"  # kept
    assert db.mark_model_unloaded("ghost") is False
    db.mark_model_loaded(mid, status=None)  # a use that loads nothing
    rec = db.get_model(mid)
    assert rec is not None and rec["status"] == "error" and rec["last_used_at"] == _ts(T0 + 5)


def test_llm_close_marks_the_model_stopped(tiny_registered: CyllamaDB) -> None:
    from cyllama_db import LLM

    db = tiny_registered
    llm = LLM.from_registry("tiny", db=db, cache=False)
    llm("Hello")
    assert _status(db, "tiny") == "running" and db.get_db_stats()["running_models"] == 1
    llm.close()
    assert _status(db, "tiny") == "stopped" and db.get_db_stats()["running_models"] == 0
    llm("Hello")  # a later call loads it again
    assert _status(db, "tiny") == "running"
    llm.close()
    llm.close()  # twice is harmless
    assert _status(db, "tiny") == "stopped"


def test_two_llms_on_one_entry_stop_it_when_the_last_closes(tiny_registered: CyllamaDB) -> None:
    from cyllama_db import LLM

    db = tiny_registered
    first = LLM.from_registry("tiny", db=db, cache=False)
    second = LLM.from_registry("tiny", db=db, cache=False)
    first("Hi")
    second("Hi")
    first.close()
    assert _status(db, "tiny") == "running"  # the second still has it loaded
    second.close()
    assert _status(db, "tiny") == "stopped"


def test_llm_close_never_raises_when_the_database_is_gone(tiny_model_path: Path, db_path: Path) -> None:
    from cyllama_db import LLM

    db = CyllamaDB(db_path)
    db.register_model(tiny_model_path, name="tiny", ctx_size=128)
    llm = LLM.from_registry("tiny", db=db, cache=False, max_tokens=1)
    llm("Hi")
    db.delete_model("tiny")
    llm.close()  # the entry is gone: nothing to mark, no error
    db.register_model(tiny_model_path, name="tiny", ctx_size=128)
    llm = LLM.from_registry("tiny", db=db, cache=False, max_tokens=1)
    llm("Hi")
    db.close()
    llm.close()  # the database is closed: best effort, no error
    assert not llm.loaded
    with CyllamaDB(db_path) as again:
        assert _status(again, "tiny") == "running"  # what was last written


def test_a_cache_hit_does_not_mark_the_model_running(tiny_registered: CyllamaDB) -> None:
    from cyllama_db import complete
    from cyllama_db.llm import loaded_model_paths, unload_models

    db = tiny_registered
    try:
        first = complete("Hello", model="tiny", db=db)
        assert _status(db, "tiny") == "running"
        assert unload_models() == 1
        assert _status(db, "tiny") == "stopped"
        db.clock = lambda: T0 + 300  # type: ignore[method-assign]
        again = complete("Hello", model="tiny", db=db)
        assert again.cache_hit and again.text == first.text
        rec = db.get_model_by_name("tiny")
        assert rec is not None
        assert rec["status"] == "stopped"  # nothing was loaded...
        assert rec["last_used_at"] == _ts(T0 + 300)  # ...but it was used
        assert loaded_model_paths() == []
        # once the model does load for this entry, it is running
        complete("Hello", model="tiny", db=db, cache=False)
        assert _status(db, "tiny") == "running"
    finally:
        unload_models()
    assert _status(db, "tiny") == "stopped"


def test_evicted_shared_model_is_marked_stopped(
    tiny_registered: CyllamaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cyllama_db import complete
    from cyllama_db.llm import shared
    from cyllama_db.llm.shared import unload_models

    db = tiny_registered
    path = db.get_model_by_name("tiny")["model_path"]  # type: ignore[index]
    db.save_model("tiny-128", model_path=path, ctx_size=128, threads=1, gpu_layers=0, predict=2)
    monkeypatch.setattr(shared, "MAX_SHARED_MODELS", 1)
    try:
        complete("Hello", model="tiny", db=db, cache=False)
        assert (_status(db, "tiny"), _status(db, "tiny-128")) == ("running", "stopped")
        complete("Hello", model="tiny-128", db=db, cache=False)  # evicts "tiny"
        assert (_status(db, "tiny"), _status(db, "tiny-128")) == ("stopped", "running")
        assert db.get_db_stats()["running_models"] == 1
    finally:
        unload_models()
    assert _status(db, "tiny-128") == "stopped" and db.get_db_stats()["running_models"] == 0


def test_load_failure_after_from_registry_marks_error(tiny_registered: CyllamaDB, tmp_path: Path) -> None:
    from cyllama_db import LLM
    from cyllama_db.errors import ModelNotFoundError

    db = tiny_registered
    copy = tmp_path / "copy.gguf"
    shutil.copy(db.get_model_by_name("tiny")["model_path"], copy)  # type: ignore[index]
    db.register_model(copy, name="copy", ctx_size=128)
    llm = LLM.from_registry("copy", db=db, cache=False)
    copy.unlink()  # gone before the first call loads it
    with pytest.raises(ModelNotFoundError):
        llm("Hi")
    assert _status(db, "copy") == "error"
    llm.close()
    assert _status(db, "copy") == "error"  # close() only turns "running" into "stopped"
