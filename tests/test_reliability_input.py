"""Bad input: every public method called with wrong types, and awkward text.

Each wrong call must raise a clear error (``TypeError`` for a wrong type,
``ValueError`` for a right type with an impossible value) whose message names
what was wrong, and must leave the database exactly as it was.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import math
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cyllama_db
from cyllama_db import CyllamaDB, GenerationConfig, Response, generate_cache_key

pytestmark = pytest.mark.reliability

OBJ = object()
DB = object()  # stands for the test's database in MODULE_WRONG
# method -> wrong calls: (args, kwargs, expected exception, fragment of the message).
# Every parameter of every public method appears at least once.
WRONG: dict[str, list[tuple[tuple[Any, ...], dict[str, Any], type[Exception], str]]] = {
    "cache_response": [
        ((123, "m.gguf", None, "r"), {}, TypeError, "prompt"),
        (("p", 123, None, "r"), {}, TypeError, "model_path"),
        (("p", "m.gguf", "greedy", "r"), {}, TypeError, "config"),
        (("p", "m.gguf", None, 123), {}, TypeError, "response"),
        (("p", "m.gguf", None, "r", [1]), {}, TypeError, "ttl"),
        (("p", "m.gguf", None, "r", -5), {}, ValueError, "ttl"),
        (("p", "m.gguf", None, "r"), {"load_options": ["n_ctx"]}, TypeError, "load_options"),
        (("p", "m.gguf", {"temprature": 0.1}, "r"), {}, TypeError, "temprature"),
        (("p", "m.gguf", None, "r"), {"namespace": 5}, TypeError, "namespace"),
        (("p", "m.gguf", None, "r"), {"namespace": " padded "}, ValueError, "namespace"),
    ],
    "delete_config": [((123,), {}, TypeError, "key")],
    "delete_metadata": [((b"k",), {}, TypeError, "key")],
    "delete_model": [((1.5,), {}, TypeError, "model"), ((None,), {}, TypeError, "model")],
    "export_database": [
        ((123,), {}, TypeError, "path"),
        (("out.db",), {"format": "xml"}, ValueError, "format"),
        (("out.jsonl",), {"format": "jsonl", "table": 5}, TypeError, "table"),
        (("out.jsonl",), {"format": "jsonl", "table": "nope"}, ValueError, "nope"),
        (("out.db",), {"overwrite": "yes"}, TypeError, "overwrite"),
        (("out.db",), {"include_secrets": 1}, TypeError, "include_secrets"),
        (("out.db",), {"progress": "bar"}, TypeError, "progress"),
    ],
    "get_cached_response": [
        ((123, "m.gguf"), {}, TypeError, "prompt"),
        ((["not", "messages"], "m.gguf"), {}, TypeError, "message"),
        (("p", None), {}, TypeError, "model_path"),
        (("p", "m.gguf", 0.0), {}, TypeError, "config"),
        (("p", "m.gguf"), {"load_options": "n_ctx=5"}, TypeError, "load_options"),
        (("p", "m.gguf"), {"namespace": b"ns"}, TypeError, "namespace"),
    ],
    "get_config": [((None,), {}, TypeError, "key"), (("",), {}, ValueError, "key")],
    "get_generation_history": [
        (("10",), {}, TypeError, "limit"),
        ((10, -1), {}, ValueError, "offset"),
        ((10, 0, 123), {}, TypeError, "model_path"),
        ((), {"session_id": 5}, TypeError, "session_id"),
        ((), {"since": "last week"}, ValueError, "since"),
        ((), {"until": [1]}, TypeError, "until"),
    ],
    "get_logs": [
        (("LOUD",), {}, ValueError, "level"),
        ((None, 5), {}, TypeError, "category"),
        ((None, None, "yesterday"), {}, ValueError, "since"),
        ((None, None, b"1h"), {}, TypeError, "since"),
        ((None, None, None, "100"), {}, TypeError, "limit"),
        ((), {"until": [1]}, TypeError, "until"),
        ((), {"offset": 1.5}, TypeError, "offset"),
        ((), {"search": 5}, TypeError, "search"),
        ((), {"search": "!?"}, ValueError, "search"),
    ],
    "get_metadata": [((1,), {}, TypeError, "key")],
    "get_metrics_history": [
        (("10",), {}, TypeError, "minutes"),
        ((-1,), {}, ValueError, "minutes"),
        (("an hour",), {}, ValueError, "minutes"),
        ((), {"since": "soon"}, ValueError, "since"),
        ((), {"until": b"1h"}, TypeError, "until"),
        ((), {"host": 1}, TypeError, "host"),
        ((), {"host": ""}, ValueError, "host"),
    ],
    "get_model": [(("1",), {}, TypeError, "id"), ((True,), {}, TypeError, "id")],
    "get_model_by_name": [((1,), {}, TypeError, "name")],
    "get_models": [((), {"no_such_column": 1}, TypeError, "no_such_column")],
    "get_stats_series": [
        (("last week", 60), {}, ValueError, "since"),
        ((b"7d", 60), {}, TypeError, "since"),
        ((3600.0, [60]), {}, TypeError, "step"),
        ((3600.0, True), {}, TypeError, "step"),
        ((3600.0, -5), {}, ValueError, "step"),
        ((3600.0, 60), {"until": OBJ}, TypeError, "until"),
    ],
    "get_stats_summary": [
        ((123,), {}, TypeError, "model_path"),
        ((None, "last week"), {}, ValueError, "since"),
        ((None, b"7d"), {}, TypeError, "since"),
        ((None, None, OBJ), {}, TypeError, "until"),
        ((), {"tz": "UTC"}, TypeError, "tz"),
    ],
    "import_database": [
        ((123,), {}, TypeError, "path"),
        (("in.db",), {"on_conflict": "merge"}, ValueError, "on_conflict"),
        (("in.db",), {"progress": 5}, TypeError, "progress"),
        (("in.db",), {"timeout": "1m"}, TypeError, "timeout"),
        (("in.db",), {"timeout": -1}, ValueError, "timeout"),
    ],
    "model_usage": [
        ((5,), {}, TypeError, "model_paths"),
        (("m.gguf",), {}, TypeError, "model_paths"),
        (([5],), {}, TypeError, "model_path"),
    ],
    "list_cache_entries": [
        (("10",), {}, TypeError, "limit"),
        ((0,), {}, ValueError, "limit"),
        ((10, "oldest"), {}, ValueError, "order"),
        ((10, "newest", 5), {}, TypeError, "model_path"),
        ((), {"namespace": 5}, TypeError, "namespace"),
    ],
    "search_cache": [
        ((5,), {}, TypeError, "query"),
        (("",), {}, ValueError, "query"),
        (("x", "10"), {}, TypeError, "limit"),
        (("x", 0), {}, ValueError, "limit"),
        (("x",), {"model_path": 5}, TypeError, "model_path"),
        (("x",), {"namespace": 5}, TypeError, "namespace"),
        (("x",), {"include_expired": "yes"}, TypeError, "include_expired"),
    ],
    "invalidate_cache": [
        ((123,), {}, TypeError, "prompt"),
        ((None, 123), {}, TypeError, "model_path"),
        ((None, None, "old"), {}, ValueError, "older_than"),
        ((None, None, b"7d"), {}, TypeError, "older_than"),
        ((), {"namespace": 7}, TypeError, "namespace"),
    ],
    "log": [
        ((["INFO"], "m"), {}, TypeError, "level"),
        (("INFO", 123), {}, TypeError, "message"),
        (("INFO", "m", 5), {}, TypeError, "category"),
        (("INFO", "m", None, ["ctx"]), {}, TypeError, "context"),
        (("INFO", "m", None, None, "boom"), {}, TypeError, "error"),
    ],
    "mark_model_loaded": [((1.5,), {}, TypeError, "model"), (("m", 5), {}, TypeError, "status")],
    "mark_model_unloaded": [(([1],), {}, TypeError, "model")],
    "prune_logs": [
        (("old",), {}, ValueError, "older_than"),
        ((b"7d",), {}, TypeError, "older_than"),
        ((), {"keep_last": -1}, ValueError, "keep_last"),
    ],
    "prune_stats": [
        (("old",), {}, ValueError, "older_than"),
        (([7],), {}, TypeError, "older_than"),
        ((60,), {"model_path": 5}, TypeError, "model_path"),
    ],
    "record_generation": [
        ((123, {"text": "x"}), {}, TypeError, "model_path"),
        (("m.gguf", "text"), {}, TypeError, "response"),
        (("m.gguf", ["text"]), {}, TypeError, "response"),
        (("m.gguf", {"text": "x"}, 0.5), {}, TypeError, "config"),
        (("m.gguf", {"text": "x"}, None, "yes"), {}, TypeError, "cache_hit"),
        (("m.gguf", {"text": "x"}), {"session_id": 5}, TypeError, "session_id"),
        (("m.gguf", {"stats": {"prompt_tokens": "many"}}), {}, TypeError, "prompt_tokens"),
    ],
    "register_model": [
        ((123,), {}, TypeError, "path"),
        (("m.gguf", 5), {}, TypeError, "name"),
        (("m.gguf",), {"ctx_size": "big"}, TypeError, "ctx_size"),
        (("m.gguf",), {"no_such_param": 1}, TypeError, "no_such_param"),
    ],
    "save_metrics": [
        (("cpu",), {}, TypeError, "sample"),
        (({"cpu_usage": "high"},), {}, TypeError, "cpu_usage"),
        (({"no_such_metric": 1},), {}, ValueError, "no_such_metric"),
    ],
    "save_model": [
        ((5,), {}, TypeError, "name"),
        (("m",), {"type": 5}, TypeError, "type"),
        (("m",), {"status": 5}, TypeError, "status"),
        (("m",), {"ctx_size": 1.5}, TypeError, "ctx_size"),
        (("m",), {"no_such_param": 1}, TypeError, "no_such_param"),
    ],
    "set_config": [
        ((5, 1), {}, TypeError, "key"),
        (("k", OBJ), {}, TypeError, "value"),
        (("k", {1, 2}), {}, TypeError, "'k'"),
        (("k", {"a": float("nan")}), {}, TypeError, "'k'"),
        (("k", (1, 2)), {}, TypeError, "'k'"),
    ],
    "set_metadata": [((5, "v"), {}, TypeError, "key"), (("k", None), {}, TypeError, "value")],
    "start_metrics_sampler": [
        (("1",), {}, TypeError, "interval"),
        ((0,), {}, ValueError, "interval"),
        ((), {"disk_path": 5}, TypeError, "disk_path"),
        ((), {"process": 1.5}, TypeError, "process"),
    ],
    "to_llama_kwargs": [((1.5,), {}, TypeError, "model")],
    "to_sampling_kwargs": [((None,), {}, TypeError, "model")],
    "to_server_args": [
        (([],), {}, TypeError, "model"),
        (("m",), {"model_path_flag": 5}, TypeError, "model_path_flag"),
        (("m",), {"legacy": "no"}, TypeError, "legacy"),
        (("m",), {"redact_secrets": 1}, TypeError, "redact_secrets"),
    ],
    "update_model": [
        ((1.5,), {"ctx_size": 1}, TypeError, "model"),
        (("m",), {"ctx_size": "big"}, TypeError, "ctx_size"),
        (("m",), {"no_such_param": 1}, TypeError, "no_such_param"),
    ],
}
# Parameters where any value is right: a default to return, an injected NVML module.
ANY_VALUE = {("get_config", "default"), ("start_metrics_sampler", "nvml")}
# No arguments, so no wrong ones.
NO_ARGUMENTS = {
    "cleanup_cache", "close", "flush", "delete_all_models", "get_all_config", "get_all_metadata",
    "get_cache_stats", "get_database_size", "get_db_stats", "mark_server_start",
    "migration_status", "schema_version", "vacuum", "recorded_models", "cached_models",
    "registered_model_files",
}


def _public_methods() -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(CyllamaDB)
        if not name.startswith("_") and callable(member) and name != "clock"
    }


Calls = list[tuple[tuple[Any, ...], dict[str, Any], type[Exception], str]]


def _uncovered(fn: Any, name: str, calls: Calls, any_value: set[tuple[str, str]],
               aliases: dict[tuple[str, str], str] | None = None) -> list[str]:
    """The named parameters of ``fn`` that no wrong call in ``calls`` names."""
    named = [
        p.name for p in inspect.signature(fn).parameters.values()
        if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    mentioned = {(aliases or {}).get((name, fragment), fragment) for _, _, _, fragment in calls}
    return [p for p in named if p not in mentioned and (name, p) not in any_value]


def _cases(table: dict[str, Calls]) -> list[Any]:
    return [
        pytest.param(name, args, kwargs, exc, fragment, id=f"{name}-{i}")
        for name, calls in sorted(table.items())
        for i, (args, kwargs, exc, fragment) in enumerate(calls)
    ]


def _assert_names(name: str, error: BaseException, fragment: str) -> None:
    message = str(error)
    assert fragment in message, f"{name}: message {message!r} does not name {fragment!r}"
    assert len(message) > len(fragment) + 10, f"{name}: message {message!r} says nothing more"


def test_every_public_method_and_parameter_is_covered() -> None:
    methods = _public_methods()
    assert set(methods) == set(WRONG) | NO_ARGUMENTS
    for name in NO_ARGUMENTS:
        assert list(inspect.signature(methods[name]).parameters) == ["self"], name
    for name, calls in WRONG.items():
        missing = _uncovered(methods[name], name, calls, ANY_VALUE)
        assert not missing, f"{name}: no wrong-type call for {missing}"


@pytest.fixture
def populated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CyllamaDB]:
    """A file database with a row in every store, in a folder of its own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    db = CyllamaDB(tmp_path / "data" / "full.db")
    db.set_config("k", 1)
    db.set_metadata("mk", "v")
    db.cache_response("p", "m.gguf", None, "r")
    db.record_generation("m.gguf", {"text": "x"}, session_id="s")
    db.log("INFO", "hello", category="c")
    db.save_metrics({"cpu_usage": 1.0})
    db.save_model("m", model_path="m.gguf", ctx_size=512)
    db.export_database("in.db")  # a valid file for import_database's wrong calls
    yield db
    db.close()


def _snapshot(db: CyllamaDB) -> list[str]:
    db.get_db_stats()  # flushes buffered writes, so they do not look like changes
    with db.pool.read() as conn:
        return list(conn.iterdump())


@pytest.mark.parametrize(("name", "args", "kwargs", "exc", "fragment"), _cases(WRONG))
def test_wrong_call_is_a_clear_error_and_writes_nothing(
    populated: CyllamaDB,
    tmp_path: Path,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: type[Exception],
    fragment: str,
) -> None:
    before = _snapshot(populated)
    files_before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(exc) as info:
        result = getattr(populated, name)(*args, **kwargs)
        if hasattr(result, "stop"):  # a sampler that started after all
            result.stop()
    _assert_names(name, info.value, fragment)
    assert _snapshot(populated) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # no stray export file


# -- the module-level API --------------------------------------------------------------------

M = "model.gguf"  # relative: the tests below run in a folder of their own
MSG = [{"role": "user", "content": "hi"}]

# public callable -> wrong calls, as for WRONG above; the database stays untouched.
MODULE_WRONG: dict[str, list[tuple[tuple[Any, ...], dict[str, Any], type[Exception], str]]] = {
    "LLM": [
        ((5,), {}, TypeError, "model_path"),
        ((M,), {"config": 5}, TypeError, "config"),
        ((M,), {"db": "db.sqlite"}, TypeError, "db"),
        ((M,), {"cache": "yes"}, TypeError, "cache"),
        ((M,), {"verbose": 1.0}, TypeError, "verbose"),
        ((M,), {"n_ctx": "big"}, TypeError, "n_ctx"),
        ((M,), {"no_such_option": 1}, TypeError, "no_such_option"),
        ((M,), {"wait_timeout": -1}, ValueError, "wait_timeout"),
        ((M,), {"wait_timeout": "5s"}, ValueError, "wait_timeout"),
    ],
    "AsyncLLM": [
        ((5,), {}, TypeError, "model_path"),
        ((M,), {"config": 5}, TypeError, "config"),
        ((M,), {"db": "db.sqlite"}, TypeError, "db"),
        ((M,), {"cache": "yes"}, TypeError, "cache"),
        ((M,), {"verbose": 1.0}, TypeError, "verbose"),
        ((M,), {"n_ctx": "big"}, TypeError, "n_ctx"),
        ((M,), {"no_such_option": 1}, TypeError, "no_such_option"),
        ((M,), {"wait_timeout": -1}, ValueError, "wait_timeout"),
    ],
    "AsyncCyllamaDB": [(("db.sqlite",), {}, TypeError, "db")],
    "CyllamaDBHandler": [(("db.sqlite",), {}, TypeError, "db"), ((), {"level": [1]}, TypeError, "level")],
    "GenerationStats": [
        ((), {name: "many"}, TypeError, name)
        for name in ("prompt_tokens", "generated_tokens", "total_tokens", "prompt_time_ms",
                     "generation_time_ms", "total_time_ms", "tokens_per_second")
    ],
    "Response": [
        ((5,), {}, TypeError, "text"),
        (("t",), {"finish_reason": 5}, TypeError, "finish_reason"),
        (("t",), {"model_path": 5}, TypeError, "model_path"),
        (("t",), {"cache_hit": "no"}, TypeError, "cache_hit"),
        (("t",), {"stats": 5}, TypeError, "stats"),
        (("t",), {"kind": "embedding"}, ValueError, "kind"),
    ],
    "MetricsSampler": [
        (("db",), {}, TypeError, "db"),
        ((None,), {}, TypeError, "db"),
        ((DB,), {"interval": "1s"}, TypeError, "interval"),
        ((DB,), {"disk_path": 5}, TypeError, "disk_path"),
        ((DB,), {"process": "other"}, TypeError, "process"),
    ],
    "cached": [
        ((5,), {}, TypeError, "function"),
        ((), {"ttl": [1]}, TypeError, "ttl"),
        ((), {"db": "db.sqlite"}, TypeError, "db"),
        ((), {"name": 5}, TypeError, "name"),
        ((), {"strict": "yes"}, TypeError, "strict"),
        ((), {"key": "name"}, TypeError, "key"),
    ],
    "chat": [
        (("hi",), {"model_path": M}, TypeError, "messages"),
        ((MSG,), {"model_path": 5}, TypeError, "model_path"),
        ((MSG,), {"model_path": M, "db": "x"}, TypeError, "db"),
        ((MSG,), {"model_path": M, "config": 5}, TypeError, "config"),
        ((MSG,), {"model_path": M, "stream": "yes"}, TypeError, "stream"),
        ((MSG,), {"model": 1.5}, TypeError, "model"),
        ((MSG,), {"model_path": M, "cache": "no"}, ValueError, "cache"),
        ((MSG,), {"model_path": M, "cache": 1}, TypeError, "cache"),
        ((MSG,), {"model_path": M, "ttl": [1]}, TypeError, "ttl"),
        ((MSG,), {"model_path": M, "namespace": 5}, TypeError, "namespace"),
        ((MSG,), {"model_path": M, "verbose": "no"}, TypeError, "verbose"),
        ((MSG,), {"model_path": M, "temprature": 0.1}, TypeError, "temprature"),
    ],
    "complete": [
        ((5,), {"model_path": M}, TypeError, "prompt"),
        (("p",), {"model_path": 5}, TypeError, "model_path"),
        (("p",), {"model_path": M, "db": "x"}, TypeError, "db"),
        (("p",), {"model_path": M, "config": "greedy"}, TypeError, "config"),
        (("p",), {"model_path": M, "stream": 1.0}, TypeError, "stream"),
        (("p",), {"model": 1.5}, TypeError, "model"),
        (("p",), {"model_path": M, "model": "x"}, TypeError, "model"),
        (("p",), {"model_path": M, "cache": "no"}, ValueError, "cache"),
        (("p",), {"model_path": M, "cache": 1.0}, TypeError, "cache"),
        (("p",), {"model_path": M, "ttl": -1}, ValueError, "ttl"),
        (("p",), {"model_path": M, "namespace": ""}, ValueError, "namespace"),
        (("p",), {"model_path": M, "verbose": "no"}, TypeError, "verbose"),
    ],
    "complete_async": [
        ((5,), {"model_path": M}, TypeError, "prompt"),
        (("p",), {"model_path": 5}, TypeError, "model_path"),
        (("p", M), {"config": "greedy"}, TypeError, "config"),
        (("p", M), {"verbose": "no"}, TypeError, "verbose"),
        (("p", M), {"db": "x"}, TypeError, "db"),
        (("p",), {"model": 1.5}, TypeError, "model"),
        (("p", M), {"cache": "no"}, ValueError, "cache"),
        (("p", M), {"ttl": -1}, ValueError, "ttl"),
        (("p", M), {"namespace": ""}, ValueError, "namespace"),
        (("p", M), {"temprature": 0.1}, TypeError, "temprature"),
    ],
    "chat_async": [
        (("hi", M), {}, TypeError, "messages"),
        ((MSG,), {"model_path": 5}, TypeError, "model_path"),
        ((MSG, M), {"config": 5}, TypeError, "config"),
        ((MSG, M), {"verbose": "no"}, TypeError, "verbose"),
        ((MSG, M), {"db": "x"}, TypeError, "db"),
        ((MSG,), {"model": 1.5}, TypeError, "model"),
        ((MSG, M), {"cache": 1}, TypeError, "cache"),
        ((MSG, M), {"ttl": [1]}, TypeError, "ttl"),
        ((MSG, M), {"namespace": 5}, TypeError, "namespace"),
    ],
    "stream_complete_async": [
        ((5, M), {}, TypeError, "prompt"),
        (("p",), {"model_path": 5}, TypeError, "model_path"),
        (("p", M), {"config": 5}, TypeError, "config"),
        (("p", M), {"verbose": "no"}, TypeError, "verbose"),
        (("p", M), {"db": "x"}, TypeError, "db"),
        (("p",), {"model": 1.5}, TypeError, "model"),
        (("p", M), {"cache": "no"}, ValueError, "cache"),
        (("p", M), {"ttl": -1}, ValueError, "ttl"),
        (("p", M), {"namespace": 5}, TypeError, "namespace"),
        (("p", M), {"timeout": "5s"}, TypeError, "timeout"),
        (("p", M), {"timeout": 0}, ValueError, "timeout"),
    ],
    "configure_db": [
        ((), {"path": 5}, TypeError, "path"),
        ((), {"enabled": "maybe"}, TypeError, "enabled"),
        ((), {"no_such_option": 1}, TypeError, "no_such_option"),
    ],
    "generate_cache_key": [
        ((5, M), {}, TypeError, "prompt"),
        (("p", 5), {}, TypeError, "model_path"),
        (("p", M, "greedy"), {}, TypeError, "config"),
        (("p", M), {"load_options": 5}, TypeError, "load_options"),
        (("p", M), {"namespace": 5}, TypeError, "namespace"),
    ],
    "model_identity": [((5,), {}, TypeError, "model_path")],
    "sample_metrics": [
        (("db",), {}, TypeError, "db"),
        ((), {"disk_path": 5}, TypeError, "disk_path"),
        ((), {"process": 1.5}, TypeError, "process"),
    ],
    "to_llama_kwargs": [((5,), {}, TypeError, "params"), (({"nope": 1},), {}, KeyError, "nope")],
    "to_sampling_kwargs": [(([1],), {}, TypeError, "params")],
    "to_server_args": [
        ((5,), {}, TypeError, "params"),
        (({},), {"model_path_flag": 5}, TypeError, "model_path_flag"),
        (({},), {"legacy": "no"}, TypeError, "legacy"),
        (({},), {"redact_secrets": 1}, TypeError, "redact_secrets"),
    ],
    "validate_params": [((5,), {}, TypeError, "params"), (({"ctx_size": "big"},), {}, TypeError, "ctx_size")],
}
# Callables of __all__ not in the table, and why.
NOT_IN_MODULE_TABLE = {
    "CyllamaDB": "its arguments are the settings, checked by configure_db's cases and test_settings.py",
    "GenerationConfig": "every field has a wrong-type case in test_inference.py",
    "ModelRecord": "built by the registry from its rows, not by users",
    "Param": "the declarative parameter table's entry type, built once in _params.py",
    "Settings": "built by Settings.resolve from CyllamaDB's arguments",
    "Stream": "built by LLM and complete(stream=True), not by users",
    "AsyncStream": "built by AsyncLLM.stream and stream_complete_async, not by users",
    "ChunkStream": "built by wrap(...).create_completion(stream=True), not by users",
    "wrap": "needs a loaded llama_cpp.Llama: its wrong calls are in test_wrap.py",
    "CachedLlama": "made by wrap(): its wrong calls are in test_wrap.py",
    "get_db": "no arguments",
    "reset_db": "no arguments",
    "unload_models": "no arguments",
    "loaded_model_paths": "no arguments",
}
MODULE_ANY_VALUE = {("MetricsSampler", "nvml"), ("sample_metrics", "nvml")}  # an injected NVML module
# Where the message names the parameter by what it is rather than by its name.
MODULE_ALIASES = {("cached", "function"): "fn"}


def test_every_public_callable_and_parameter_is_covered() -> None:
    public = {
        name for name in cyllama_db.__all__
        if callable(getattr(cyllama_db, name))
        and not (inspect.isclass(getattr(cyllama_db, name)) and issubclass(getattr(cyllama_db, name), BaseException))
    }
    assert public == set(MODULE_WRONG) | set(NOT_IN_MODULE_TABLE)
    for name, calls in MODULE_WRONG.items():
        missing = _uncovered(getattr(cyllama_db, name), name, calls, MODULE_ANY_VALUE, MODULE_ALIASES)
        assert not missing, f"{name}: no wrong-type call for {missing}"


@pytest.mark.parametrize(("name", "args", "kwargs", "exc", "fragment"), _cases(MODULE_WRONG))
def test_wrong_call_of_the_module_api_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception], fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / M).write_bytes(b"GGUF" + bytes(60))
    db = cyllama_db.configure_db(path=tmp_path / "global.db")
    db.save_model("x", model_path=str(tmp_path / M))
    before = _snapshot(db)
    args = tuple(db if a is DB else a for a in args)
    with pytest.raises(exc) as info:
        result = getattr(cyllama_db, name)(*args, **kwargs)
        # The async API: a coroutine raises when awaited, a stream at its first chunk.
        if inspect.isawaitable(result):
            asyncio.run(result)
        elif hasattr(result, "__anext__"):
            asyncio.run(result.__anext__())
    _assert_names(name, info.value, fragment)
    assert _snapshot(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([M, "global.db", "global.db-wal", "global.db-shm"])



def test_generation_config_rejects_wrong_types() -> None:
    with pytest.raises(TypeError, match="temperature"):
        GenerationConfig(temperature="hot")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_tokens"):
        GenerationConfig(max_tokens=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="temprature"):
        GenerationConfig(temprature=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=2.0)


def test_response_rejects_wrong_types() -> None:
    with pytest.raises(TypeError, match="text"):
        Response(text=5)  # type: ignore[arg-type]


def test_configure_db_rejects_unknown_and_wrong_options(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        cyllama_db.configure_db(path=tmp_path / "x.db", no_such_option=1)
    with pytest.raises((TypeError, ValueError), match="max_cache_size_mb"):
        cyllama_db.configure_db(path=tmp_path / "x.db", max_cache_size_mb="lots")
    assert not (tmp_path / "x.db").exists()


def test_complete_rejects_wrong_types_before_touching_anything(tmp_path: Path) -> None:
    db = cyllama_db.configure_db(path=tmp_path / "c.db")
    before = _snapshot(db)
    with pytest.raises(TypeError, match="prompt"):
        cyllama_db.complete(123, model_path=tmp_path / "m.gguf")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="temprature"):
        cyllama_db.complete("p", model_path=tmp_path / "m.gguf", temprature=0.1)
    assert _snapshot(db) == before


def test_cached_rejects_what_it_cannot_key(memory_db: CyllamaDB) -> None:
    @cyllama_db.cached(db=memory_db)
    def echo(value: Any) -> Any:
        return value

    with pytest.raises(TypeError, match="StringIO"):
        echo(io.StringIO("not keyable"))
    with pytest.raises(TypeError, match="JSON"):
        echo(OBJ)
    assert memory_db.get_cache_stats()["entries"] == 0


# -- awkward text ------------------------------------------------------------------------------

AWKWARD = {
    "nul": "before\x00after",
    "astral": "emoji \U0001f600 clef \U0001d11e",  # surrogate pairs in UTF-16 and JSON
    "rtl-and-combining": "\u05e9\u05dc\u05d5\u05dd e\u0301",
    "ten-megabytes": "ten megabytes " * 750_000,
}


@pytest.mark.parametrize("text", AWKWARD.values(), ids=AWKWARD.keys())
def test_awkward_text_round_trips_through_every_store(any_db: CyllamaDB, tmp_path: Path, text: str) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    any_db.set_config(text[:200], text)
    assert any_db.get_config(text[:200]) == text
    any_db.set_metadata("awkward", text)
    assert any_db.get_metadata("awkward") == text
    any_db.cache_response(text, model, None, Response(text=text))
    hit = any_db.get_cached_response(text, model)
    assert hit is not None and hit.text == text
    assert any_db.get_cached_response(text + " ", model) is None  # the whole prompt is keyed
    messages = [{"role": "user", "content": text}]
    any_db.cache_response(messages, model, None, Response(text="chat " + text[:50]))
    chat_hit = any_db.get_cached_response(messages, model)
    assert chat_hit is not None and chat_hit.text == "chat " + text[:50]
    log_id = any_db.log("INFO", text, context={"text": text})
    [entry] = [e for e in any_db.get_logs(limit=5) if e["id"] == log_id]
    assert entry["message"] == text and entry["context"] == {"text": text}


LONE = {"lone-high": "a\ud800b", "lone-low": "\udc80", "split-pair": "\ud83d\ude00"}


@pytest.mark.parametrize("text", LONE.values(), ids=LONE.keys())
def test_lone_surrogates_are_refused_by_name_and_nothing_is_written(
    file_db: CyllamaDB, tmp_path: Path, text: str
) -> None:
    """Text with no UTF-8 form (e.g. os.fsdecode of a bad file name) cannot be stored as such."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    before = _snapshot(file_db)
    calls = {
        "key": lambda: file_db.set_config(text, 1),
        "message": lambda: file_db.log("INFO", text),
        "category": lambda: file_db.log("INFO", "m", category=text),
        "response.text": lambda: file_db.cache_response("p", model, None, Response(text=text)),
        "'awkward'": lambda: file_db.set_metadata("awkward", text),
        "'odd'": lambda: file_db.set_config("odd", text),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="surrogate") as info:
            call()
        assert name in str(info.value)
    assert _snapshot(file_db) == before
    # Inside a log's context JSON escapes it, and it reads back exactly.
    log_id = file_db.log("INFO", "file listing", context={"name": text})
    [entry] = [e for e in file_db.get_logs() if e["id"] == log_id]
    # (JSON joins an escaped high+low pair into the one character they spell.)
    assert entry["context"] == {"name": "\U0001f600" if text == LONE["split-pair"] else text}


def test_lone_surrogates_in_log_records_are_kept_escaped(file_db: CyllamaDB) -> None:
    """The logging handler must never drop a record: it escapes what UTF-8 cannot hold."""
    import logging

    handler = cyllama_db.CyllamaDBHandler(db=file_db)
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, "bad name %s", ("x\udcff.txt",), None)
    handler.emit(record)
    handler.close()
    [entry] = file_db.get_logs(category="app")
    assert entry["message"] == "bad name x\\udcff.txt"


def test_ten_megabyte_prompt_counts_toward_the_size_limit(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    with CyllamaDB(tmp_path / "big.db", max_cache_size_mb=15) as db:
        big = "x" * 10_000_000
        db.cache_response(big, model, None, "first")
        db.cache_response(big + "y", model, None, "second")  # evicts the first: 20 MB > 15 MB
        assert db.get_cached_response(big, model) is None
        hit = db.get_cached_response(big + "y", model)
        assert hit is not None and hit.text == "second"


def test_config_values_outside_json_are_type_errors_naming_the_key(memory_db: CyllamaDB) -> None:
    for bad in (b"bytes", 1 + 2j, {1, 2}, (1, 2), {1: "int key"}, [float("inf")], timedelta(1), OBJ):
        with pytest.raises(TypeError, match="'k'"):
            memory_db.set_config("k", bad)
    assert memory_db.get_all_config() == {}


def test_sqlite_integrity_after_all_wrong_calls(populated: CyllamaDB) -> None:
    for name, calls in WRONG.items():
        for args, kwargs, exc, _ in calls:
            with pytest.raises(exc):
                getattr(populated, name)(*args, **kwargs)
    with populated.pool.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- properties ------------------------------------------------------------------------------

POISON = (
    st.binary(min_size=1)
    | st.complex_numbers()
    | st.sets(st.integers(), min_size=1)
    | st.tuples(st.integers())
    | st.floats().filter(lambda x: not math.isfinite(x)).map(lambda x: [x])
    | st.dictionaries(st.integers(), st.integers(), min_size=1)
    | st.dates()
    | st.builds(object)
)
NOT_JSON = st.recursive(
    POISON,
    lambda inner: st.lists(inner, min_size=1, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, min_size=1, max_size=3),
    max_leaves=6,
)


@given(value=NOT_JSON)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_values_json_cannot_hold_are_refused_and_nothing_is_written(memory_db: CyllamaDB, value: Any) -> None:
    with pytest.raises(TypeError, match="'k'"):
        memory_db.set_config("k", value)
    assert memory_db.get_config("k", "absent") == "absent"


KEYED_CHANGES: dict[str, list[Any]] = {
    "max_tokens": [1, 7, None],
    "temperature": [0.0, 0.5, 1.7],
    "top_k": [0, 1, 99],
    "top_p": [0.1, 1.0],
    "min_p": [0.0, 0.2],
    "typical_p": [0.5],
    "repeat_penalty": [1.1, 2.0],
    "frequency_penalty": [-0.5, 0.5],
    "presence_penalty": [-1.0, 1.0],
    "mirostat_mode": [1, 2],
    "mirostat_tau": [3.0],
    "mirostat_eta": [0.3],
    "stop_sequences": [("\n",), ("a", "b")],
    "grammar": ['root ::= "x"'],
    "logit_bias": [{1: 2.0}, {5: -100.0}],
    "tfs_z": [0.5],
    "suffix": ["", "end"],
    "echo": [True],
    "logprobs": [0, 3, True],
    "top_logprobs": [0, 2],
    "response_format": [{"type": "json_object"}, {"type": "json_object", "schema": {"type": "object"}}],
    "tools": [[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]],
    "tool_choice": ["auto", "none", {"type": "function", "function": {"name": "f"}}],
    "functions": [[{"name": "g"}]],
    "function_call": ["auto", {"name": "g"}],
}
CONFIGS = st.fixed_dictionaries(
    {},
    optional={name: st.sampled_from(values) for name, values in KEYED_CHANGES.items()},
)


def test_every_keyed_field_is_listed() -> None:
    import dataclasses

    keyed = {f.name for f in dataclasses.fields(GenerationConfig)} - {"seed"}
    assert keyed == set(KEYED_CHANGES)


@given(base=CONFIGS, field=st.sampled_from(sorted(KEYED_CHANGES)), data=st.data())
@settings(max_examples=150, deadline=None)
def test_any_change_of_a_keyed_field_changes_the_key(
    key_model: Path, base: dict[str, Any], field: str, data: Any
) -> None:
    model = key_model
    before = generate_cache_key("prompt", model, base)
    choices = [v for v in KEYED_CHANGES[field] if GenerationConfig(**{**base, field: v}) != GenerationConfig(**base)]
    assume(choices)
    changed = {**base, field: data.draw(st.sampled_from(choices))}
    assert generate_cache_key("prompt", model, changed) != before
    # ...while the seed, which llama.cpp ignores at temperature 0, is not keyed
    assert generate_cache_key("prompt", model, {**base, "seed": 1234}) == before


@given(config=CONFIGS, messages=st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()}),
    min_size=1, max_size=3,
), seed=st.integers(0, 2**16))
@settings(max_examples=100, deadline=None)
def test_key_ignores_dict_ordering(
    key_model: Path, config: dict[str, Any], messages: list[dict[str, str]], seed: int
) -> None:
    import random

    model = key_model
    rng = random.Random(seed)

    def shuffled(d: dict[str, Any]) -> dict[str, Any]:
        items = list(d.items())
        rng.shuffle(items)
        return {k: dict(reversed(list(v.items()))) if isinstance(v, dict) else v for k, v in items}

    assert generate_cache_key(messages, model, config) == generate_cache_key(
        [shuffled(m) for m in messages], model, shuffled(config)
    )


_KEY_CASES = [
    ("plain prompt", {}),
    ("unicode \u00e9\U0001f600 prompt", {"temperature": 0.0, "stop_sequences": ["\n", "END"]}),
    ("nul\x00prompt", {"logit_bias": {3: 1.5, 1: -2.0}, "grammar": 'root ::= "a"'}),
    ([{"role": "user", "content": "hi"}, {"content": "yo", "role": "assistant"}], {"top_k": 0}),
]
_KEY_SCRIPT = """
import json, sys
from cyllama_db import generate_cache_key
cases = json.loads(sys.argv[1])
print(json.dumps([generate_cache_key(p, sys.argv[2], c) for p, c in cases]))
"""


def test_keys_are_stable_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    cases = [(p, {k: ({str(b): v for b, v in c[k].items()} if k == "logit_bias" else c[k]) for k in c})
             for p, c in _KEY_CASES]
    here = [generate_cache_key(p, model, c) for p, c in cases]
    assert len(set(here)) == len(here)
    for hash_seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", _KEY_SCRIPT, json.dumps(cases), str(model)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert json.loads(out.stdout) == here


@pytest.fixture(scope="module")
def key_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small model file for the property tests (module-scoped: hypothesis reruns them)."""
    path = tmp_path_factory.mktemp("keys") / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


@pytest.mark.llama
def test_awkward_prompts_through_real_llama_cpp(tiny_model_path: Path, tmp_path: Path) -> None:
    db = CyllamaDB(tmp_path / "llama.db")
    try:
        for prompt in (AWKWARD["nul"], AWKWARD["astral"], AWKWARD["rtl-and-combining"]):
            first = cyllama_db.complete(prompt, model_path=tiny_model_path, db=db, temperature=0.0, max_tokens=4)
            again = cyllama_db.complete(prompt, model_path=tiny_model_path, db=db, temperature=0.0, max_tokens=4)
            assert not first.cache_hit and again.cache_hit and again.text == first.text
        before = _snapshot(db)
        with pytest.raises(ValueError, match="prompt"):
            cyllama_db.complete(LONE["lone-high"], model_path=tiny_model_path, db=db, temperature=0.0)
        # 10 MB is far past the context: a clear error, and nothing cached or recorded
        with pytest.raises(cyllama_db.errors.ContextOverflowError, match="n_ctx"):
            cyllama_db.complete(AWKWARD["ten-megabytes"], model_path=tiny_model_path, db=db, temperature=0.0)
        assert _snapshot(db) == before
    finally:
        db.close()
