"""A disabled database answers every public method with the empty answer and touches no file."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import CyllamaDB

# method -> (args, kwargs, acceptable empty answers)
CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...]]] = {
    "cache_response": (("p", "m.gguf", None, "text"), {}, (None,)),
    "cleanup_cache": ((), {}, (0,)),
    "close": ((), {}, (None,)),
    "delete_all_models": ((), {}, (0,)),
    "delete_config": (("k",), {}, (False,)),
    "delete_metadata": (("k",), {}, (False,)),
    "delete_model": (("m",), {}, (False,)),
    "export_database": (("out.db",), {}, ({}, None)),
    "get_all_config": ((), {}, ({},)),
    "get_all_metadata": ((), {}, ({},)),
    "get_cache_stats": ((), {}, ({},)),
    "get_cached_response": (("p", "m.gguf"), {}, (None,)),
    "get_config": (("k", "dflt"), {}, ("dflt",)),
    "get_database_size": ((), {}, (0,)),
    "get_db_stats": ((), {}, ({},)),
    "get_generation_history": ((), {}, ([],)),
    "get_logs": ((), {}, ([],)),
    "get_metadata": (("k",), {}, (None,)),
    "get_metrics_history": ((), {}, ([],)),
    "get_model": ((1,), {}, (None,)),
    "get_model_by_name": (("m",), {}, (None,)),
    "get_models": ((), {}, ([],)),
    "get_stats_summary": ((), {}, ("summary",)),
    "get_stats_series": ((3600.0, 60), {}, ({"step_seconds": 0, "start": 0.0, "end": 0.0, "exact": True,
                                              "models": [], "overall": []},)),
    "import_database": (("in.db",), {}, ({}, None)),
    "invalidate_cache": ((), {}, (0,)),
    "list_cache_entries": ((), {}, ([],)),
    "recorded_models": ((), {}, ([],)),
    "cached_models": ((), {}, ([],)),
    "registered_model_files": ((), {}, ([],)),
    "model_usage": ((["m.gguf"],), {}, ((0, None),)),
    "search_cache": (("anything",), {}, ([],)),
    "log": (("INFO", "msg"), {}, (None,)),
    "mark_model_loaded": (("m",), {}, (None,)),
    "mark_model_unloaded": (("m",), {}, (False,)),
    "mark_server_start": ((), {}, (None,)),
    "migration_status": ((), {}, ([],)),
    "prune_logs": ((), {"keep_last": 1}, (0,)),
    "prune_stats": ((60.0,), {}, (0,)),
    "record_generation": (("m.gguf", {"text": "x"}), {}, (None,)),
    "register_model": (("m.gguf",), {}, ("id",)),
    "save_metrics": (({"cpu_usage": 1.0},), {}, (None,)),
    "save_model": (("m",), {}, ("id",)),
    "schema_version": ((), {}, (0,)),
    "set_config": (("k", 1), {}, (None,)),
    "set_metadata": (("k", "v"), {}, (None,)),
    "start_metrics_sampler": ((), {}, ("sampler",)),
    "update_model": (("m",), {"ctx_size": 512}, (None,)),
    "vacuum": ((), {}, (None,)),
    "flush": ((), {}, (None,)),
}
# Conversions of a stored model need the registry; with no database they say so.
NEEDS_A_RECORD = {"to_llama_kwargs", "to_sampling_kwargs", "to_server_args"}


def _public_methods() -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(CyllamaDB)
        if not name.startswith("_") and callable(member) and name != "clock"
    }


def test_every_public_method_is_covered() -> None:
    assert _public_methods() == set(CALLS) | NEEDS_A_RECORD


@pytest.mark.parametrize("name", sorted(CALLS))
def test_disabled_method_returns_empty_answer(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = CyllamaDB(tmp_path / "never.db", enabled=False)
    args, kwargs, answers = CALLS[name]
    result = getattr(db, name)(*args, **kwargs)
    if answers == ("summary",):
        assert result["total_generations"] == 0 and result["by_model"] == {}
    elif answers == ("id",):
        assert result in (None, 0)
    elif answers == ("sampler",):
        assert not result.running
    else:
        assert any(result == a and type(result) is type(a) for a in answers), result
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(NEEDS_A_RECORD))
def test_disabled_model_conversions_explain_themselves(name: str, tmp_path: Path) -> None:
    db = CyllamaDB(tmp_path / "never.db", enabled=False)
    with pytest.raises(Exception, match="disabled") as info:
        getattr(db, name)("m")
    assert "closed" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
