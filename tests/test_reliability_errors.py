"""The error contract: ``except CyllamaDBError`` catches every failure of the library's own doing.

A wrong call may raise ``TypeError`` or ``ValueError`` (the documented
built-ins, which the library's own errors subclass where the meaning
matches); a path the caller names may fail with the ``OSError`` the file
system gives. Nothing else escapes: never ``OverflowError``, a raw
``sqlite3.Error``, ``KeyError``, ``AttributeError``...
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cyllama_db
from cyllama_db import CyllamaDB
from cyllama_db.errors import (
    CyllamaDBError,
    DatabaseError,
    DatabaseFileError,
    DatabaseIntegrityError,
    DiskFullError,
    OutOfRangeError,
)
from cyllama_db.stores.params import PARAMS_BY_NAME
from test_reliability_input import MODULE_WRONG, NO_ARGUMENTS, WRONG

pytestmark = pytest.mark.reliability

# -- the values a fuzzer throws at every parameter ---------------------------------------------

HUGE = [10**400, -(10**400), 2**63, -(2**63) - 1, 2**64, 10**20]
ODD_FLOATS = [1e308, -1e308, math.inf, -math.inf, math.nan, 1e300, 9e18, -0.0, 5e-324]
ODD_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "x\udcff", "\x1b[2J", "../..", "-1", "1e400", "nan"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(HUGE)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(ODD_FLOATS)
    | st.text(max_size=12)
    | st.text(alphabet=st.characters(codec=None, categories=["Cs", "Cc", "Lo"]), max_size=6)
    | st.sampled_from(ODD_TEXT)
    | st.binary(max_size=8)
    | st.sampled_from([
        timedelta(days=-1), timedelta.max, timedelta(0), datetime.max, datetime.min,
        datetime(2020, 1, 1, tzinfo=timezone.utc), object(), Path("."),
    ])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=3),
    max_leaves=5,
)

PARAM_NAMES = sorted(PARAMS_BY_NAME)
# Field names the nested arguments know: a nasty value deep inside a valid structure.
KNOWN_KEYS = [
    "text", "stats", "prompt_tokens", "generated_tokens", "tokens_per_second", "total_time_ms",
    "temperature", "max_tokens", "top_k", "top_p", "seed", "logit_bias", "stop_sequences",
    "cpu_usage", "memory_usage", "gpus", "role", "content", "n_ctx", "ctx_size", "custom_params",
    "finish_reason", "id", "name",
]
NASTY = VALUES | st.dictionaries(st.sampled_from(KNOWN_KEYS), VALUES, min_size=1, max_size=2)

# The deterministic sweep: each of these in place of each argument of each function.
SPECIMENS: list[Any] = [
    *HUGE, *ODD_FLOATS, *ODD_TEXT, None, True, -1, 0, b"x", [], {}, [1], ["x"], {"a": 1}, object(),
    timedelta.max, timedelta(days=-1), datetime.max, datetime.min, Path("."),
    *({key: value} for key in KNOWN_KEYS for value in (10**400, 1e308, math.nan, "\x00", b"x", [None])),
]

# A valid call of each method; the fuzzer replaces one or two of its arguments.
BASE: dict[str, dict[str, Any]] = {
    "cache_response": {"prompt": "p", "model_path": "m.gguf", "config": None, "response": "r"},
    "delete_config": {"key": "k"},
    "delete_metadata": {"key": "mk"},
    "delete_model": {"model": "gone"},
    "export_database": {"path": "out.db", "overwrite": True},
    "get_cached_response": {"prompt": "p", "model_path": "m.gguf"},
    "get_config": {"key": "k"},
    "get_metadata": {"key": "mk"},
    "get_model": {"id": 1},
    "get_model_by_name": {"name": "m"},
    "import_database": {"path": "in.db"},
    "log": {"level": "INFO", "message": "m"},
    "mark_model_loaded": {"model": "m"},
    "mark_model_unloaded": {"model": "m"},
    "prune_stats": {"older_than": timedelta(days=3650)},
    "record_generation": {"model_path": "m.gguf", "response": {"text": "x"}},
    "register_model": {"path": "m.gguf"},
    "save_metrics": {"sample": {"cpu_usage": 1.0}},
    "save_model": {"name": "fz"},
    "set_config": {"key": "k", "value": 1},
    "set_metadata": {"key": "mk", "value": "v"},
    "start_metrics_sampler": {"interval": 60.0},
    "to_llama_kwargs": {"model": "m"},
    "to_sampling_kwargs": {"model": "m"},
    "to_server_args": {"model": "m"},
    "update_model": {"model": "m"},
}
MSG = [{"role": "user", "content": "hi"}]
DB = object()  # stands for the test's database
MODULE_BASE: dict[str, dict[str, Any]] = {
    "AsyncCyllamaDB": {"db": DB},
    "AsyncLLM": {"model_path": "m.gguf", "db": DB},
    "CyllamaDB": {"path": "other.db"},
    "CyllamaDBHandler": {"db": DB},
    "GenerationConfig": {},
    "GenerationStats": {},
    "LLM": {"model_path": "m.gguf", "db": DB},
    "MetricsSampler": {"db": DB, "interval": 60.0},
    "Response": {"text": "t"},
    "cached": {},
    "chat": {"messages": MSG, "model_path": "m.gguf", "db": DB},
    "chat_async": {"messages": MSG, "model_path": "m.gguf", "db": DB},
    "complete": {"prompt": "p", "model_path": "m.gguf", "db": DB},
    "complete_async": {"prompt": "p", "model_path": "m.gguf", "db": DB},
    "stream_complete_async": {"prompt": "p", "model_path": "m.gguf", "db": DB},
    "configure_db": {"path": "global.db"},
    "generate_cache_key": {"prompt": "p", "model_path": "m.gguf"},
    "model_identity": {"model_path": "m.gguf"},
    "sample_metrics": {"db": DB},
    "to_llama_kwargs": {"params": {"model_path": "m.gguf"}},
    "to_sampling_kwargs": {"params": {"temperature": 0.5}},
    "to_server_args": {"params": {"model_path": "m.gguf"}},
    "validate_params": {"params": {"ctx_size": 512}},
}
# Where a function takes **options: the names the fuzzer may give.
EXTRA_NAMES: dict[str, list[str]] = {
    "register_model": PARAM_NAMES, "save_model": PARAM_NAMES, "update_model": [*PARAM_NAMES, "name"],
    "get_models": ["status", "type", "name", "model_path", "ctx_size", "temperature", "nope"],
    "LLM": ["n_ctx", "temperature", "max_tokens", "seed", "n_gpu_layers", "chat_format"],
    "AsyncLLM": ["n_ctx", "temperature", "max_tokens", "seed", "n_gpu_layers", "chat_format"],
    "chat": ["temperature", "max_tokens", "seed", "top_k", "logit_bias"],
    "chat_async": ["temperature", "max_tokens", "seed", "top_k", "logit_bias"],
    "complete": ["temperature", "max_tokens", "seed", "top_k", "logit_bias", "stop"],
    "complete_async": ["temperature", "max_tokens", "seed", "top_k", "logit_bias", "stop"],
    "stream_complete_async": ["temperature", "max_tokens", "seed", "top_k", "logit_bias", "stop"],
    "configure_db": ["enabled", "cache_ttl", "max_cache_size_mb", "log_level", "log_to_db",
                     "metrics_retention", "busy_timeout"],
}

# Parameters naming a file the caller chose: the file system's own OSError is the answer there.
PATH_METHODS = {"export_database", "import_database", "register_model", "start_metrics_sampler"}
# Not fuzzed: it ends the test's database.
SKIPPED = {"close"}
ALLOWED = (CyllamaDBError, TypeError, ValueError)


def _named(fn: Any) -> tuple[list[str], bool]:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _call(name: str, fn: Any, base: dict[str, Any], data: Any, db: CyllamaDB) -> Any:
    kwargs = {k: (db if v is DB else v) for k, v in base.items()}
    named, var_kw = _named(fn)
    choices = list(named) + (EXTRA_NAMES.get(name, []) if var_kw else [])
    if not choices:
        return fn(**kwargs)
    for _ in range(data.draw(st.integers(1, 2), label="how many")):
        target = data.draw(st.sampled_from(choices), label="argument")
        if target == "params":  # a parameter mapping: the nasty value goes inside
            kwargs[target] = {data.draw(st.sampled_from(PARAM_NAMES)): data.draw(NASTY)}
        else:
            kwargs[target] = data.draw(NASTY, label=target)
    return fn(**kwargs)


def _sweep(name: str, fn: Any, base: dict[str, Any], db: CyllamaDB, *, paths: bool) -> int:
    """Call ``fn`` with each specimen in place of each argument in turn; return the number of calls."""
    named, var_kw = _named(fn)
    calls = 0
    for target in list(named) + (EXTRA_NAMES.get(name, []) if var_kw else []):
        for specimen in SPECIMENS:
            kwargs = {k: (db if v is DB else v) for k, v in base.items()}
            if target == "params":
                for param in ("temperature", "ctx_size", "custom_params", "model_url", "seed"):
                    kwargs[target] = {param: specimen}
                    _check(f"{name}({target}={{{param!r}: {specimen!r:.60}}})", lambda kwargs=kwargs: fn(**kwargs), paths=paths)
                    calls += 1
                continue
            kwargs[target] = specimen
            _check(f"{name}({target}={specimen!r:.60})", lambda kwargs=kwargs: fn(**kwargs), paths=paths)
            calls += 1
    return calls


def _check(name: str, call: Any, *, paths: bool) -> None:
    allowed = ALLOWED + ((OSError,) if paths else ())
    try:
        result = call()
        # The async API: a coroutine fails when awaited, a stream at its first chunk.
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        elif hasattr(result, "__anext__"):
            with contextlib.suppress(StopAsyncIteration):
                asyncio.run(result.__anext__())
    except allowed as exc:
        bad = isinstance(exc, (OverflowError, sqlite3.Error, KeyError, AttributeError)) and not isinstance(
            exc, CyllamaDBError
        )
        assert not bad, f"{name}: raw {type(exc).__name__} escaped: {exc}"
        assert str(exc), f"{name}: {type(exc).__name__} with no message"
        return
    except Exception as exc:  # the contract is broken: show which call and what escaped
        raise AssertionError(f"{name}: {type(exc).__name__} escaped the error contract: {exc!r}") from exc
    stop = getattr(result, "stop", None)
    if callable(stop):  # a metrics sampler that started after all
        stop()
    if isinstance(result, CyllamaDB):
        result.close()  # a database the fuzzer opened (log_to_db=True hooks up logging)


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CyllamaDB]:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    old = os.getcwd()
    os.chdir(folder)  # exports with fuzzed relative names land here
    db = CyllamaDB(folder / "fuzz.db")
    db.set_config("k", 1)
    db.cache_response("p", "m.gguf", None, "r")
    db.record_generation("m.gguf", {"text": "x"})
    db.log("INFO", "hello")
    db.save_model("m", model_path="m.gguf")
    db.export_database(folder / "in.db")
    try:
        yield db
    finally:
        db.close()
        os.chdir(old)


METHODS = sorted((set(WRONG) | NO_ARGUMENTS) - SKIPPED)


def test_the_fuzzed_methods_are_every_public_method() -> None:
    public = {n for n, m in inspect.getmembers(CyllamaDB) if not n.startswith("_") and callable(m) and n != "clock"}
    assert public == set(METHODS) | SKIPPED


@pytest.mark.parametrize("name", METHODS)
def test_every_argument_of_every_method_against_every_specimen(fuzz_db: CyllamaDB, name: str) -> None:
    _sweep(name, getattr(fuzz_db, name), BASE.get(name, {}), fuzz_db, paths=name in PATH_METHODS)


@pytest.mark.parametrize("name", METHODS)
@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
def test_every_method_raises_only_documented_errors(fuzz_db: CyllamaDB, name: str, data: Any) -> None:
    fn = getattr(fuzz_db, name)
    _check(name, lambda: _call(name, fn, BASE.get(name, {}), data, fuzz_db), paths=name in PATH_METHODS)


MODULE_FUNCTIONS = sorted(MODULE_BASE)


def test_the_fuzzed_functions_are_every_public_function() -> None:
    assert set(MODULE_BASE) == set(MODULE_WRONG) | {"CyllamaDB", "GenerationConfig"}
MODULE_PATHS = {"LLM", "chat", "complete", "AsyncLLM", "chat_async", "complete_async", "stream_complete_async",
                "CyllamaDB", "configure_db", "model_identity", "generate_cache_key",
                "sample_metrics", "MetricsSampler"}


@pytest.mark.parametrize("name", MODULE_FUNCTIONS)
def test_every_argument_of_every_function_against_every_specimen(fuzz_db: CyllamaDB, name: str) -> None:
    try:
        _sweep(name, getattr(cyllama_db, name), MODULE_BASE[name], fuzz_db, paths=name in MODULE_PATHS)
    finally:
        cyllama_db.reset_db()


@pytest.mark.parametrize("name", MODULE_FUNCTIONS)
@given(data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
def test_every_module_function_raises_only_documented_errors(
    fuzz_db: CyllamaDB, name: str, data: Any
) -> None:
    fn = getattr(cyllama_db, name)

    def call() -> Any:
        result = _call(name, fn, MODULE_BASE[name], data, fuzz_db)
        if isinstance(result, CyllamaDB) and result is not fuzz_db:
            result.close()
        return result

    try:
        _check(name, call, paths=name in MODULE_PATHS)
    finally:
        cyllama_db.reset_db()


# -- faults under the library: a full disk, a file deleted under a live process -------------------

# A valid call of every public method, for the fault tests (writes and reads alike).
def _valid_calls(db: CyllamaDB, folder: Path) -> dict[str, Any]:
    calls: dict[str, Any] = {
        name: (lambda name=name: getattr(db, name)(**BASE[name])) for name in BASE
        if name not in ("export_database", "import_database", "register_model", "start_metrics_sampler")
    }
    calls.update({name: getattr(db, name) for name in NO_ARGUMENTS - {"close"}})
    calls["get_models"] = db.get_models
    calls["get_logs"] = db.get_logs
    calls["get_generation_history"] = db.get_generation_history
    calls["get_stats_summary"] = db.get_stats_summary
    calls["get_metrics_history"] = db.get_metrics_history
    calls["invalidate_cache"] = lambda: db.invalidate_cache(older_than=timedelta(days=1))
    calls["prune_logs"] = lambda: db.prune_logs(older_than=timedelta(days=1))
    calls["export_database"] = lambda: db.export_database(folder / "fault-out.db", overwrite=True)
    return calls


def _populate(db: CyllamaDB) -> None:
    db.set_config("k", 1)
    db.set_metadata("mk", "v")
    db.cache_response("p", "m.gguf", None, "r")
    db.record_generation("m.gguf", {"text": "x"})
    db.log("INFO", "hello")
    db.save_model("m", model_path="m.gguf")


def test_a_full_disk_is_a_disk_full_error_from_every_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own "database or disk is full" (max_page_count stands in for the disk)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    db = CyllamaDB(tmp_path / "full.db")
    try:
        _populate(db)
        with db.pool.read() as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
        big = "x" * 200_000
        writes = {
            "set_config": lambda: db.set_config("big", big),
            "set_metadata": lambda: db.set_metadata("big", big),
            "cache_response": lambda: db.cache_response(big, "m.gguf", None, big),
            "log": lambda: db.log("INFO", big),
            "save_model": lambda: db.save_model("big", chat_template=big),
            "record_generation": lambda: [db.record_generation(big, {"text": "x"}) for _ in range(3)],
        }
        for name, call in writes.items():
            with pytest.raises(DiskFullError, match="disk") as info:
                call()
            assert isinstance(info.value, (DatabaseError, OSError, CyllamaDBError)), name
            assert "free" in str(info.value).lower(), name
        assert db.get_config("big") is None  # nothing was written
        assert db.get_config("k") == 1
    finally:
        db.close()


def test_a_database_deleted_under_a_live_process_is_a_database_file_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    path = tmp_path / "gone.db"
    db = CyllamaDB(path)
    try:
        _populate(db)
        for side in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            side.unlink(missing_ok=True)
        outcomes: dict[str, BaseException | None] = {}

        def run() -> None:  # a new thread opens a new connection: on a new, empty file
            for name, call in _valid_calls(db, tmp_path).items():
                try:
                    call()
                    outcomes[name] = None
                except BaseException as exc:  # recorded and checked below
                    outcomes[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
        escaped = {n: repr(e) for n, e in outcomes.items() if e is not None and not isinstance(e, CyllamaDBError)}
        assert not escaped
        failed = {n: e for n, e in outcomes.items() if e is not None}
        assert "get_config" in failed and isinstance(failed["get_config"], DatabaseFileError)
        assert "removed" in str(failed["get_config"])
    finally:
        db.close()


def test_constraint_failures_are_integrity_errors() -> None:
    from cyllama_db.db.store import library_error

    error = library_error(sqlite3.IntegrityError("UNIQUE constraint failed: cache.cache_key"), "x.db")
    assert isinstance(error, DatabaseIntegrityError) and isinstance(error, ValueError)
    assert "UNIQUE" in str(error) and "x.db" in str(error)
    assert isinstance(library_error(OverflowError("int too large"), "x.db"), OutOfRangeError)
    assert isinstance(library_error(sqlite3.OperationalError("disk I/O error"), "x.db"), DatabaseFileError)
    assert type(library_error(sqlite3.OperationalError("something new"), "x.db")) is DatabaseError
