"""The response cache store: keys, model identity, TTL, size limit, invalidation, hit bookkeeping."""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyllama_db import (
    LLM,
    CyllamaDB,
    DatabaseClosedError,
    GenerationConfig,
    GenerationStats,
    Response,
    generate_cache_key,
    model_identity,
)
from cyllama_db.db import deferred as deferred_module
from cyllama_db.stores import cache as cache_module
from cyllama_db.stores import keys as _cacheutil

CONFIG = GenerationConfig(temperature=0.0, max_tokens=16)
T0 = 1_700_000_000.0


def _response(text: str = "an answer", **stats: int) -> Response:
    counts = {"prompt_tokens": 3, "generated_tokens": 5, "total_tokens": 8, **stats}
    return Response(
        text,
        "stop",
        "/models/m.gguf",
        False,
        GenerationStats(**counts, prompt_time_ms=1.5, generation_time_ms=20.0, total_time_ms=22.0,
                        tokens_per_second=250.0),
    )


@pytest.fixture
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real GGUF file (not loaded here: the cache only reads its header)."""
    from cyllama_db.testing import write_tiny_llama

    return Path(write_tiny_llama(tmp_path_factory.mktemp("cache-models") / "model.gguf"))


@pytest.fixture
def clock_db(tmp_path: Path) -> Iterator[CyllamaDB]:
    db = CyllamaDB(tmp_path / "clock.db", cache_ttl=timedelta(hours=1))
    now = [T0]
    db.clock = lambda: now[0]  # type: ignore[method-assign]
    db.now = now  # type: ignore[attr-defined]
    yield db
    db.close()


def _other_connection(db: CyllamaDB) -> sqlite3.Connection:
    return sqlite3.connect(db.path, isolation_level=None)


# -- keys ------------------------------------------------------------------------------------


def test_key_is_deterministic_and_ignores_seed(model: Path) -> None:
    key = generate_cache_key("Hello", model, CONFIG)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == generate_cache_key("Hello", model, CONFIG.replace(seed=42))
    assert key == generate_cache_key("Hello", str(model), CONFIG.to_dict())
    assert key == generate_cache_key("Hello", model, GenerationConfig(temperature=0, max_tokens=16))


@pytest.mark.parametrize(
    "change",
    [{"temperature": 0.5}, {"max_tokens": 17}, {"top_k": 1}, {"top_p": 0.5}, {"min_p": 0.1},
     {"repeat_penalty": 1.1}, {"stop_sequences": ["\n"]}, {"grammar": "root ::= [a-z]+"}],
)
def test_key_changes_with_each_sampling_option(model: Path, change: dict[str, object]) -> None:
    assert generate_cache_key("Hello", model, CONFIG) != generate_cache_key("Hello", model, CONFIG.replace(**change))


def test_key_separates_prompts_kinds_and_stop_order(model: Path) -> None:
    assert generate_cache_key("Hello", model, CONFIG) != generate_cache_key("Hello ", model, CONFIG)
    chat = [{"role": "user", "content": "Hello"}]
    assert generate_cache_key(chat, model, CONFIG) != generate_cache_key("Hello", model, CONFIG)
    a = CONFIG.replace(stop_sequences=["x", "y"])
    b = CONFIG.replace(stop_sequences=["y", "x"])
    assert generate_cache_key("Hello", model, a) == generate_cache_key("Hello", model, b)


@given(prompt=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_key_is_canonical_json_of_prompt_model_and_config(prompt: str) -> None:
    import hashlib

    identity = model_identity("/nowhere/model.gguf")
    canonical = json.dumps(
        {"config": json.loads(CONFIG.cache_json()), "model": identity, "prompt": prompt},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert generate_cache_key(prompt, "/nowhere/model.gguf", CONFIG) == expected


@given(
    prompt=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=50),
    scale=st.floats(0.01, 4.0),
    chat=st.booleans(),
)
def test_key_with_load_options_is_canonical_json(prompt: str, scale: float, chat: bool) -> None:
    import hashlib

    identity = model_identity("/nowhere/model.gguf")
    options = {"rope_freq_scale": scale, "n_ctx": 4096, "chat_format": "chatml"}
    load = {"rope_freq_scale": scale, **({"chat_format": "chatml"} if chat else {})}
    if chat:
        messages = [{"role": "user", "content": prompt}]
        data = {"config": json.loads(CONFIG.cache_json()), "kind": "chat", "load": load,
                "messages": messages, "model": identity}
    else:
        data = {"config": json.loads(CONFIG.cache_json()), "load": load, "model": identity, "prompt": prompt}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    request = [{"role": "user", "content": prompt}] if chat else prompt
    assert generate_cache_key(request, "/nowhere/model.gguf", CONFIG, load_options=options) == expected


@pytest.mark.parametrize(
    "options",
    [
        {"chat_format": "chatml"},
        {"lora_path": "adapter.gguf"},
        {"lora_base": "base.gguf"},
        {"lora_path": "adapter.gguf", "lora_scale": 0.5},
        {"kv_overrides": {"tokenizer.ggml.add_bos_token": False}},
        {"rope_freq_scale": 0.5},
        {"rope_freq_base": 10000},
        {"rope_scaling_type": 2},
        {"yarn_ext_factor": 1.0},
        {"yarn_attn_factor": 0.5},
        {"yarn_beta_fast": 16.0},
        {"yarn_beta_slow": 2.0},
        {"yarn_orig_ctx": 4096},
        {"type_k": 8},
        {"type_v": 8},
        {"last_n_tokens_size": 256},
        {"embedding": True},
        {"pooling_type": 1},
        {"attention_type": 1},
        {"spm_infill": True},
        {"chat_handler": len},
    ],
)
def test_load_options_that_change_the_output_change_the_key(model: Path, options: dict[str, object]) -> None:
    chat = [{"role": "user", "content": "Hello"}]
    assert generate_cache_key(chat, model, CONFIG) != generate_cache_key(chat, model, CONFIG, load_options=options)
    completion_differs = generate_cache_key("Hello", model, CONFIG) != generate_cache_key(
        "Hello", model, CONFIG, load_options=options
    )
    # the chat template (chat_format / chat_handler) only matters to chat requests
    assert completion_differs == (not {"chat_format", "chat_handler"} & set(options))


def test_infrastructure_and_default_load_options_do_not_change_the_key(model: Path) -> None:
    options = {
        "n_ctx": 4096, "n_gpu_layers": -1, "n_threads": 4, "n_threads_batch": 8, "n_batch": 64,
        "n_ubatch": 64, "use_mmap": False, "use_mlock": True, "verbose": True, "main_gpu": 1,
        "tensor_split": [3.0, 1.0], "split_mode": 2, "offload_kqv": False, "op_offload": False,
        "flash_attn": True, "swa_full": True, "numa": True, "no_perf": True, "logits_all": True,
        "vocab_only": False, "seed": 7,
        # at llama-cpp-python's defaults
        "lora_scale": 1.0, "last_n_tokens_size": 64, "rope_freq_base": 0.0, "rope_scaling_type": -1,
        "yarn_ext_factor": -1, "embedding": False, "kv_overrides": {}, "type_k": None, "chat_format": None,
    }  # fmt: skip
    for request in ("Hello", [{"role": "user", "content": "Hello"}]):
        assert generate_cache_key(request, model, CONFIG) == generate_cache_key(  # type: ignore[arg-type]
            request, model, CONFIG, load_options=options  # type: ignore[arg-type]
        )


def test_numbers_in_load_options_are_normalised(model: Path) -> None:
    def key(**options: object) -> str:
        return generate_cache_key("Hello", model, CONFIG, load_options=options)

    assert key(rope_freq_base=10000) == key(rope_freq_base=10000.0) != key(rope_freq_base=20000.0)
    assert key(kv_overrides={"a": 1, "b": "x"}) == key(kv_overrides={"b": "x", "a": 1})


def test_lora_files_are_keyed_by_identity_not_path(model: Path, tmp_path: Path) -> None:
    from cyllama_db.testing import write_tiny_llama

    copy = tmp_path / "moved" / "adapter.gguf"
    copy.parent.mkdir()
    adapter = write_tiny_llama(tmp_path / "adapter.gguf", seed=3)
    shutil.copy(adapter, copy)
    other = write_tiny_llama(tmp_path / "other" / "adapter.gguf", seed=4)

    def key(path: object) -> str:
        return generate_cache_key("Hello", model, CONFIG, load_options={"lora_path": path})

    assert key(adapter) == key(str(copy)) != key(other)


class Draft:
    """A stand-in for llama_cpp's LlamaPromptLookupDecoding."""

    def __init__(self, n: int) -> None:
        self.num_pred_tokens = n


def test_object_load_options_are_keyed_by_class_and_state(model: Path) -> None:
    class Opaque:
        def __init__(self) -> None:
            self.handle = threading.Lock()

    def key(value: object) -> str:
        return generate_cache_key("Hello", model, CONFIG, load_options={"draft_model": value})

    assert key(Draft(10)) == key(Draft(10)) != key(Draft(5))
    # state outside __dict__ (C types, bound methods) is never mistaken for "no state"
    assert key(functools.partial(len)) != key(functools.partial(sum))
    assert key(Draft(1).__init__) != key(Draft(2).__init__)
    opaque = Opaque()
    # no stable identity: entries are this object's own (reused while it lives, never shared)
    assert key(opaque) == key(opaque) != key(Opaque())


def test_load_option_defaults_match_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    import inspect

    params = inspect.signature(llama_cpp.Llama.__init__).parameters
    defaults = {**_cacheutil._FLOAT_OPTIONS, **_cacheutil._INT_OPTIONS, **_cacheutil._BOOL_OPTIONS}
    assert {name: params[name].default for name in defaults} == defaults
    from cyllama_db.llm import LOAD_OPTIONS

    assert set(_cacheutil.OUTPUT_LOAD_OPTIONS) <= set(LOAD_OPTIONS) <= set(params)


def test_store_and_lookup_take_load_options(memory_db: CyllamaDB, model: Path) -> None:
    options = {"chat_format": "chatml", "n_ctx": 2048}
    chat = [{"role": "user", "content": "Hello"}]
    memory_db.cache_response(chat, model, CONFIG, _response("chatml answer"), load_options=options)
    assert memory_db.get_cached_response(chat, model, CONFIG) is None
    hit = memory_db.get_cached_response(chat, model, CONFIG, load_options={"chat_format": "chatml"})
    assert hit is not None and hit.text == "chatml answer"
    with pytest.raises(TypeError, match="load_options"):
        memory_db.get_cached_response(chat, model, CONFIG, load_options=[("chat_format", "x")])  # type: ignore[arg-type]


# -- model identity --------------------------------------------------------------------------


def test_same_file_at_two_paths_shares_entries(model: Path, tmp_path: Path, memory_db: CyllamaDB) -> None:
    moved = tmp_path / "elsewhere" / "model.gguf"
    moved.parent.mkdir()
    shutil.copy(model, moved)
    assert model_identity(moved) == model_identity(model)
    assert model_identity(moved).startswith("model.gguf@")
    memory_db.cache_response("Hello", model, CONFIG, _response())
    hit = memory_db.get_cached_response("Hello", moved, CONFIG)
    assert hit is not None and hit.model_path == str(moved)


def test_different_file_under_the_same_name_does_not(model: Path, tmp_path: Path, memory_db: CyllamaDB) -> None:
    from cyllama_db.testing import write_tiny_llama

    other = Path(write_tiny_llama(tmp_path / "other" / "model.gguf", name="another-model"))
    assert model_identity(other) != model_identity(model)
    memory_db.cache_response("Hello", model, CONFIG, _response())
    assert memory_db.get_cached_response("Hello", other, CONFIG) is None


def test_renamed_copy_is_a_different_model(model: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "renamed.gguf"
    shutil.copy(model, renamed)
    assert model_identity(renamed) != model_identity(model)
    assert model_identity(renamed).split("@")[1] == model_identity(model).split("@")[1]


def test_file_changed_in_place_gets_a_new_identity(model: Path, tmp_path: Path, memory_db: CyllamaDB) -> None:
    from cyllama_db.testing import write_tiny_llama

    path = tmp_path / "changing.gguf"
    shutil.copy(model, path)
    before = model_identity(path)
    memory_db.cache_response("Hello", path, CONFIG, _response())
    write_tiny_llama(path, name="edited-metadata")
    assert model_identity(path) != before
    assert memory_db.get_cached_response("Hello", path, CONFIG) is None


def test_identity_of_missing_and_non_gguf_files(tmp_path: Path) -> None:
    assert model_identity(tmp_path / "absent.gguf") == "absent.gguf"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model" * 100)
    first = model_identity(junk)
    assert first.startswith("junk.bin@")
    junk.write_bytes(b"other bytes" * 100)
    os.utime(junk, ns=(1, 1))
    assert model_identity(junk) != first


def test_lookups_recheck_the_file_at_most_once_per_millisecond(
    model: Path, tmp_path: Path, memory_db: CyllamaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cyllama_db.testing import write_tiny_llama

    ticks = [1000.0]
    monkeypatch.setattr(_cacheutil, "_monotonic", lambda: ticks[0])
    path = tmp_path / "swapped.gguf"
    shutil.copy(model, path)
    memory_db.cache_response("Hello", path, CONFIG, _response())  # checks the file
    stats: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(_cacheutil.os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k))
    assert memory_db.get_cached_response("Hello", path, CONFIG) is not None
    assert stats == []  # checked less than a millisecond ago: no stat()
    other = tmp_path / "other" / "swapped.gguf"
    write_tiny_llama(other, name="a-different-model")
    os.replace(other, path)
    stats.clear()
    # Within the millisecond the previous identity may still be used...
    assert memory_db.get_cached_response("Hello", path, CONFIG) is not None
    ticks[0] += 2 * _cacheutil.RECHECK_SECONDS
    # ...and not after it.
    assert memory_db.get_cached_response("Hello", path, CONFIG) is None
    assert str(path) in stats


def test_model_identity_always_looks_at_the_file(
    model: Path, tmp_path: Path, memory_db: CyllamaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cyllama_db.testing import write_tiny_llama

    monkeypatch.setattr(_cacheutil, "_monotonic", lambda: 1000.0)  # time stands still
    path = tmp_path / "replaced.gguf"
    shutil.copy(model, path)
    memory_db.cache_response("Hello", path, CONFIG, _response())
    write_tiny_llama(path, name="replaced-model")
    before = generate_cache_key("Hello", model, CONFIG)
    assert generate_cache_key("Hello", path, CONFIG) != before  # the public functions re-check...
    assert memory_db.get_cached_response("Hello", path, CONFIG) is None  # ...and update the lookups' view
    memory_db.cache_response("Hello", path, CONFIG, _response("new"))
    cache_module.clear_identity_cache()
    hit = memory_db.get_cached_response("Hello", path, CONFIG)
    assert hit is not None and hit.text == "new"


# -- store and look up -----------------------------------------------------------------------


def test_round_trip_on_memory_and_file(any_db: CyllamaDB, model: Path) -> None:
    assert any_db.get_cached_response("Hello", model, CONFIG) is None
    assert any_db.cache_response("Hello", model, CONFIG, _response("Hi there")) is None
    hit = any_db.get_cached_response("Hello", model, CONFIG)
    assert hit is not None
    assert (hit.text, hit.finish_reason, hit.cache_hit, hit.model_path) == ("Hi there", "stop", True, str(model))
    assert (hit.stats.prompt_tokens, hit.stats.generated_tokens, hit.stats.total_tokens) == (3, 5, 8)
    assert hit.stats.generation_time_ms == 0.0 and hit.stats.tokens_per_second is None
    assert hit.stats.total_time_ms is not None and hit.stats.total_time_ms >= 0
    assert any_db.get_cached_response("Hello", model, CONFIG.replace(max_tokens=3)) is None
    # a str is accepted as the response
    any_db.cache_response("Plain", model, None, "just text")
    again = any_db.get_cached_response("Plain", model)
    assert again is not None and again.text == "just text"


def test_chat_messages_as_the_prompt(any_db: CyllamaDB, model: Path) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    any_db.cache_response(messages, model, CONFIG, _response("Hello!"))
    hit = any_db.get_cached_response([{"content": "Hi", "role": "user"}], model, CONFIG)
    assert hit is not None and hit.text == "Hello!"
    assert any_db.get_cached_response("Hi", model, CONFIG) is None
    assert any_db.get_cache_stats()["by_kind"]["chat"] == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    text=st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
)
def test_any_text_round_trips(memory_db: CyllamaDB, prompt: str, text: str) -> None:
    memory_db.cache_response(prompt, "/m/model.gguf", CONFIG, _response(text))
    hit = memory_db.get_cached_response(prompt, "/m/model.gguf", CONFIG)
    assert hit is not None and hit.text == text


def test_values_are_stored_as_json(file_db: CyllamaDB, model: Path) -> None:
    file_db.cache_response("Hello", model, CONFIG, _response())
    with _other_connection(file_db) as conn:
        row = conn.execute(
            "SELECT response_text, response_json, config_json, kind, model_identity, prompt_hash FROM cache"
        ).fetchone()
    assert row[0] == "an answer"
    stored = json.loads(row[1])
    assert stored["stats"]["tokens_per_second"] == 250.0 and stored["finish_reason"] == "stop"
    assert json.loads(row[2])["max_tokens"] == 16
    assert row[3] == "completion" and row[4] == model_identity(model)
    assert len(row[5]) == 64


def test_bad_arguments(memory_db: CyllamaDB, model: Path) -> None:
    with pytest.raises(TypeError, match="prompt"):
        memory_db.cache_response(42, model, CONFIG, _response())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="response"):
        memory_db.cache_response("x", model, CONFIG, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config"):
        memory_db.get_cached_response("x", model, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="temprature"):
        memory_db.get_cached_response("x", model, {"temprature": 0.1})
    with pytest.raises(ValueError, match="ttl"):
        memory_db.cache_response("x", model, CONFIG, _response(), ttl=-5)
    with pytest.raises(ValueError, match="ttl"):
        memory_db.cache_response("x", model, CONFIG, _response(), ttl="soon")
    for huge in (10**30, float("inf"), "99999999999d"):
        with pytest.raises(ValueError, match=r"ttl=.*too long"):
            memory_db.cache_response("x", model, CONFIG, _response(), ttl=huge)


def test_lone_surrogates_are_a_value_error_naming_the_argument(memory_db: CyllamaDB, model: Path) -> None:
    with pytest.raises(ValueError, match="prompt contains a lone surrogate"):
        memory_db.cache_response("bad \ud800", model, CONFIG, _response())
    with pytest.raises(ValueError, match=r"response\.text contains a lone surrogate"):
        memory_db.cache_response("fine", model, CONFIG, _response("bad \udfff"))
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\]"):
        memory_db.cache_response([{"role": "user", "content": "\ud800"}], model, CONFIG, _response())
    with pytest.raises(ValueError, match="prompt"):
        memory_db.get_cached_response("bad \ud800", model, CONFIG)
    with pytest.raises(ValueError, match="prompt"):
        generate_cache_key("bad \ud800", model, CONFIG)
    assert memory_db.get_cache_stats()["entries"] == 0
    # surrogate pairs are just how JSON writes characters beyond the BMP
    memory_db.cache_response([{"role": "user", "content": "\U0001F600"}], model, CONFIG, _response("\U0001F600"))
    assert memory_db.get_cached_response([{"role": "user", "content": "\U0001F600"}], model, CONFIG) is not None


def test_disabled_and_closed_databases(model: Path, tmp_path: Path) -> None:
    off = CyllamaDB(enabled=False)
    off.cache_response("Hello", model, CONFIG, _response())
    assert off.get_cached_response("Hello", model, CONFIG) is None
    assert off.invalidate_cache() == 0 and off.cleanup_cache() == 0 and off.get_cache_stats() == {}
    db = CyllamaDB(tmp_path / "closed.db")
    db.close()
    with pytest.raises(DatabaseClosedError):
        db.get_cached_response("Hello", model, CONFIG)
    with pytest.raises(DatabaseClosedError):
        db.cache_response("Hello", model, CONFIG, _response())


# -- TTL -------------------------------------------------------------------------------------


def test_default_ttl_expires_entries(clock_db: CyllamaDB, model: Path) -> None:
    clock_db.cache_response("Hello", model, CONFIG, _response())
    clock_db.now[0] = T0 + 3599  # type: ignore[attr-defined]
    assert clock_db.get_cached_response("Hello", model, CONFIG) is not None
    clock_db.now[0] = T0 + 3600  # type: ignore[attr-defined]
    assert clock_db.get_cached_response("Hello", model, CONFIG) is None


def test_per_entry_ttl_and_cleanup(clock_db: CyllamaDB, model: Path) -> None:
    clock_db.cache_response("short", model, CONFIG, _response(), ttl=timedelta(seconds=10))
    clock_db.cache_response("string", model, CONFIG, _response(), ttl="2h")
    clock_db.cache_response("default", model, CONFIG, _response())
    clock_db.now[0] = T0 + 11  # type: ignore[attr-defined]
    assert clock_db.get_cached_response("short", model, CONFIG) is None
    assert clock_db.get_cache_stats()["expired"] == 1
    assert clock_db.cleanup_cache() == 1
    clock_db.now[0] = T0 + 3601  # type: ignore[attr-defined]
    assert clock_db.get_cached_response("default", model, CONFIG) is None
    assert clock_db.get_cached_response("string", model, CONFIG) is not None
    assert clock_db.cleanup_cache() == 1
    assert clock_db.get_cache_stats()["entries"] == 1


def test_cache_ttl_none_never_expires(tmp_path: Path, model: Path) -> None:
    with CyllamaDB(tmp_path / "forever.db", cache_ttl=None) as db:
        db.clock = lambda: T0  # type: ignore[method-assign]
        db.cache_response("Hello", model, CONFIG, _response())
        db.clock = lambda: T0 + 10 * 365 * 86400  # type: ignore[method-assign]
        assert db.get_cached_response("Hello", model, CONFIG) is not None
        assert db.cleanup_cache() == 0


def test_ttl_from_the_environment(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYLLAMA_CACHE_TTL", "60")
    with CyllamaDB(tmp_path / "env.db") as db:
        db.clock = lambda: T0  # type: ignore[method-assign]
        db.cache_response("Hello", model, CONFIG, _response())
        db.clock = lambda: T0 + 61  # type: ignore[method-assign]
        assert db.get_cached_response("Hello", model, CONFIG) is None


# -- size limit ------------------------------------------------------------------------------


def _total_bytes(db: CyllamaDB) -> int:
    return int(db.get_cache_stats()["size_bytes"])


def _counted_total(db: CyllamaDB) -> int:
    """The total as the store reads it: cache_totals plus the rows not folded in yet."""
    with _other_connection(db) as conn:
        return int(conn.execute(cache_module._TOTAL_SQL).fetchone()[0])


def _sum_bytes(path: str | Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM cache").fetchone()[0])


def test_size_limit_holds_without_cleanup(tmp_path: Path, model: Path) -> None:
    limit_mb = 0.05
    with CyllamaDB(tmp_path / "small.db", max_cache_size_mb=limit_mb) as db:
        for i in range(200):
            db.cache_response(f"prompt {i}", model, CONFIG, _response("x" * 1000))
            assert _total_bytes(db) <= limit_mb * 1_048_576
        stats = db.get_cache_stats()
        assert 0 < stats["entries"] < 200
        # the newest entry always survives its own insert
        assert db.get_cached_response("prompt 199", model, CONFIG) is not None
        assert db.get_cached_response("prompt 0", model, CONFIG) is None
        with _other_connection(db) as conn:
            actual = conn.execute("SELECT COALESCE(SUM(size_bytes), 0), COUNT(*) FROM cache").fetchone()
        assert actual == (stats["size_bytes"], stats["entries"])
        assert _counted_total(db) == actual[0]  # cache_totals plus the uncounted rows is exact


def test_eviction_is_least_recently_used(tmp_path: Path, model: Path) -> None:
    with CyllamaDB(tmp_path / "lru.db", max_cache_size_mb=0.02) as db:
        now = [T0]
        db.clock = lambda: now[0]  # type: ignore[method-assign]
        for i in range(8):
            now[0] += 1
            db.cache_response(f"p{i}", model, CONFIG, _response("x" * 1000))
        now[0] += 1
        assert db.get_cached_response("p0", model, CONFIG) is not None  # p0 is now the most recent
        for i in range(8, 14):
            now[0] += 1
            db.cache_response(f"p{i}", model, CONFIG, _response("x" * 1000))
        assert db.get_cached_response("p0", model, CONFIG) is not None
        assert db.get_cached_response("p1", model, CONFIG) is None


def test_entry_larger_than_the_limit_is_not_stored(tmp_path: Path, model: Path) -> None:
    with CyllamaDB(tmp_path / "tiny.db", max_cache_size_mb=0.001) as db:
        db.cache_response("small", model, CONFIG, _response("ok"))
        db.cache_response("huge", model, CONFIG, _response("x" * 5000))
        assert db.get_cached_response("huge", model, CONFIG) is None
        assert db.get_cached_response("small", model, CONFIG) is not None


def test_cleanup_enforces_a_lowered_limit(tmp_path: Path, model: Path) -> None:
    path = tmp_path / "shrink.db"
    with CyllamaDB(path) as db:
        for i in range(40):
            db.cache_response(f"p{i}", model, CONFIG, _response("x" * 1000))
    with CyllamaDB(path, max_cache_size_mb=0.02) as db:
        removed = db.cleanup_cache()
        assert removed > 0 and _total_bytes(db) <= 0.02 * 1_048_576
        assert db.get_cache_stats()["entries"] == 40 - removed


def test_lru_order_merges_never_hit_and_hit_entries(tmp_path: Path) -> None:
    """Entries never hit go in insertion order, hit ones by their last hit: one LRU order."""
    # A fixed absolute path: stored paths count toward entry sizes, and so decide
    # how many entries one eviction takes (a relative one would depend on the cwd).
    with CyllamaDB(tmp_path / "merge.db", max_cache_size_mb=0.02) as db:
        now = [T0]
        db.clock = lambda: now[0]  # type: ignore[method-assign]
        for name in ("a", "b", "c", "d"):
            now[0] += 10
            db.cache_response(name, LRU_MODEL, CONFIG, _response("x" * 1000))
        now[0] = T0 + 41  # b: hit after d was stored
        assert db.get_cached_response("b", LRU_MODEL, CONFIG) is not None
        now[0] = T0 + 35  # c: hit between c's and d's inserts (hits buffered in another order)
        assert db.get_cached_response("c", LRU_MODEL, CONFIG) is not None
        db.get_db_stats()  # write the hits: b and c join the hit entries' index
        # What each insert evicted: one eviction may take two entries, and then
        # only their order relative to the others' is defined.
        steps: list[set[str]] = []
        gone: set[str] = set()
        for i in range(40):
            now[0] = T0 + 100 + i
            db.cache_response(f"new {i}", LRU_MODEL, CONFIG, _response("x" * 1000))
            step = {name for name in ("a", "b", "c", "d") if name not in gone and not _present(db, name)}
            if step:
                steps.append(step)
                gone |= step
            if len(gone) == 4:
                break
        expected = ["a", "c", "d", "b"]  # by last use: a 10, c 35 (hit), d 40, b 41 (hit)
        position = 0
        for step in steps:
            assert step == set(expected[position : position + len(step)]), (steps, expected)
            position += len(step)
        assert position == 4


LRU_MODEL = "/nonexistent/cyllama-lru/m.gguf"


def _present(db: CyllamaDB, prompt: str, model: str = LRU_MODEL) -> bool:
    with _other_connection(db) as conn:
        key = generate_cache_key(prompt, model, CONFIG)
        return conn.execute("SELECT 1 FROM cache WHERE cache_key = ?", (key,)).fetchone() is not None


def test_a_restored_entry_counts_as_recently_used(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "restore.db", max_cache_size_mb=0.02) as db:
        now = [T0]
        db.clock = lambda: now[0]  # type: ignore[method-assign]
        for i in range(6):
            now[0] += 1
            db.cache_response(f"p{i}", "m.gguf", CONFIG, _response("x" * 1000))
        now[0] += 1
        db.cache_response("p0", "m.gguf", CONFIG, _response("y" * 1000))  # stored again: now the newest
        for i in range(6, 14):
            now[0] += 1
            db.cache_response(f"p{i}", "m.gguf", CONFIG, _response("x" * 1000))
        assert _present(db, "p0", "m.gguf") and not _present(db, "p1", "m.gguf")
        hit = db.get_cached_response("p0", "m.gguf", CONFIG)
        assert hit is not None and hit.text == "y" * 1000
        assert _counted_total(db) == _sum_bytes(db.path)


def test_cache_totals_stay_exact_through_every_kind_of_write(tmp_path: Path) -> None:
    """cache_totals is written by folds, the store's deletes and an UPDATE trigger, never by a plain insert."""
    path = tmp_path / "totals.db"
    with CyllamaDB(path, max_cache_size_mb=0.05) as db:
        now = [T0]
        db.clock = lambda: now[0]  # type: ignore[method-assign]

        def check() -> None:
            assert _counted_total(db) == _sum_bytes(path)

        for i in range(30):  # inserts, re-stores and the evictions they cause
            now[0] += 1
            db.cache_response(f"p{i % 20}", "m.gguf", CONFIG, _response("x" * (500 + 37 * i)))
            check()
        for i in range(0, 20, 3):  # hits written in a batch
            db.get_cached_response(f"p{i}", "m.gguf", CONFIG)
        db.get_db_stats()
        check()
        db.invalidate_cache(prompt="p5")
        check()
        newest = _newest_prompt(db)
        db.invalidate_cache(prompt=newest)  # frees the top rowid: the next insert takes it again
        check()
        now[0] += 1
        db.cache_response("after a freed top rowid", "m.gguf", CONFIG, _response("z" * 800))
        check()
        db.cache_response("after a freed top rowid", "m.gguf", CONFIG, _response("z" * 1800))  # re-stored
        check()
        with _other_connection(db) as conn:  # an UPDATE from elsewhere fires the trigger
            conn.execute("UPDATE cache SET size_bytes = size_bytes + 1000 WHERE id = (SELECT MIN(id) FROM cache)")
        check()
        db.invalidate_cache(older_than=T0 + 10)
        check()
        db.invalidate_cache()
        check()
        assert _sum_bytes(path) == 0


def _newest_prompt(db: CyllamaDB) -> str:
    with _other_connection(db) as conn:
        return str(conn.execute("SELECT prompt FROM cache ORDER BY id DESC LIMIT 1").fetchone()[0])


def test_cleanup_repairs_totals_after_writes_by_other_tools(file_db: CyllamaDB) -> None:
    file_db.cache_response("a", "m.gguf", CONFIG, _response())
    file_db.cache_response("b", "m.gguf", CONFIG, _response())
    with _other_connection(file_db) as conn:
        conn.execute(cache_module._FOLD_SQL)
        conn.execute("DELETE FROM cache WHERE prompt = 'b'")  # the store's accounting does not see it
        assert conn.execute(cache_module._TOTAL_SQL).fetchone()[0] > _sum_bytes(file_db.path)
    file_db.cleanup_cache()
    assert _counted_total(file_db) == _sum_bytes(file_db.path)
    with _other_connection(file_db) as conn:
        conn.execute("PRAGMA recursive_triggers = OFF")
        columns = ", ".join(
            "id + 100" if row[1] == "id" else row[1] for row in conn.execute("PRAGMA table_info(cache)")
        )
        # The same key under a new rowid: REPLACE's delete of the old row fires no trigger.
        conn.execute(f"INSERT OR REPLACE INTO cache SELECT {columns} FROM cache")
        conn.execute(cache_module._FOLD_SQL)
        assert conn.execute(cache_module._TOTAL_SQL).fetchone()[0] != _sum_bytes(file_db.path)
    file_db.cleanup_cache()
    assert _counted_total(file_db) == _sum_bytes(file_db.path)


def test_two_writers_pass_the_limit_by_at_most_their_sync_interval(tmp_path: Path) -> None:
    """Each database object only sees the other's inserts when it syncs (every 1% of the limit)."""
    path = tmp_path / "two.db"
    limit_mb = 0.5
    limit = int(limit_mb * 1_048_576)
    every = int(limit * cache_module.SYNC_FRACTION)
    first, second = CyllamaDB(path, max_cache_size_mb=limit_mb), CyllamaDB(path, max_cache_size_mb=limit_mb)
    try:
        highest = 0
        for i in range(1200):
            writer = first if i % 2 else second
            writer.cache_response(f"prompt {i}", "m.gguf", CONFIG, _response("x" * (200 + i % 700)))
            highest = max(highest, _sum_bytes(path))
        assert limit < highest <= limit + every  # it does pass the limit, and by no more than the bound
        first.cleanup_cache()
        assert _sum_bytes(path) <= limit
    finally:
        first.close()
        second.close()


_WRITER = textwrap.dedent(
    """
    import sys
    import time
    from cyllama_db import CyllamaDB, GenerationConfig
    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = GenerationConfig(temperature=0.0, max_tokens=16)
    with CyllamaDB(path, max_cache_size_mb=float(sys.argv[4])) as db:
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.monotonic()
        for i in range(count):
            db.cache_response(f"{name} {i}", "m.gguf", config, "x" * (300 + (i * 37) % 900))
        print(start, time.monotonic(), flush=True)
    """
)


def test_size_limit_holds_with_two_processes_writing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    limit_mb = 0.5
    limit = int(limit_mb * 1_048_576)
    CyllamaDB(path).close()  # create the schema once, before both start
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), name, "1500", str(limit_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for name in ("first", "second")
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:  # start both at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        highest = 0
        with sqlite3.connect(path, timeout=30) as conn:
            while any(proc.poll() is None for proc in procs):
                total = conn.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM cache").fetchone()[0]
                highest = max(highest, int(total))
        spans = []
        for proc in procs:
            assert proc.wait(timeout=60) == 0
            assert proc.stdout is not None
            start, end = map(float, proc.stdout.readline().split())
            spans.append((start, end))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    inserted = 2 * sum(300 + (i * 37) % 900 for i in range(1500))
    assert inserted > 3 * limit  # both had to evict
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a  # they did write at the same time
    assert highest > 0.9 * limit
    # One other writer: at most one sync interval (1% of the limit) over.
    assert highest <= limit * (1 + cache_module.SYNC_FRACTION)
    assert _sum_bytes(path) <= limit * (1 + cache_module.SYNC_FRACTION)


class TestSizeEstimate:
    """The in-process running total that spares each insert a read of the real one."""

    def test_reserve_until_a_sync_is_due(self) -> None:
        estimate = cache_module._SizeEstimate()
        assert not estimate.reserve(10, limit=1000, sync_every=100)  # never read yet
        estimate.sync_end(estimate.sync_start(), 500)
        assert estimate.reserve(60, limit=1000, sync_every=100)
        assert not estimate.reserve(60, limit=1000, sync_every=100)  # 120 bytes since the sync
        assert estimate.reserve(40, limit=1000, sync_every=100)
        assert estimate.total == 600
        estimate.sync_end(estimate.sync_start(), 950)
        assert not estimate.reserve(60, limit=1000, sync_every=100)  # would pass the limit
        estimate.forget()
        assert estimate.total is None

    def test_a_sync_keeps_inserts_it_cannot_have_seen(self) -> None:
        """A thread's insert still in flight during another thread's sync is not lost from the total."""
        estimate = cache_module._SizeEstimate()
        estimate.sync_end(estimate.sync_start(), 0)
        assert estimate.reserve(30, limit=1000, sync_every=500)  # in flight: not committed yet
        mark = estimate.sync_start()  # the sync's SUM cannot include it
        assert estimate.reserve(20, limit=1000, sync_every=500)  # made during the sync
        estimate.release(30)
        estimate.sync_end(mark, 400)
        assert (estimate.total, estimate.unsynced) == (450, 50)

    def test_threads_inserting_at_once(self, tmp_path: Path) -> None:
        with CyllamaDB(tmp_path / "threads.db", max_cache_size_mb=0.2) as db:
            errors: list[BaseException] = []

            def insert(worker: int) -> None:
                try:
                    for i in range(60):
                        db.cache_response(f"{worker}-{i}", "m.gguf", CONFIG, _response("x" * 900))
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=insert, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not errors
            assert _sum_bytes(db.path) <= 0.2 * 1_048_576
            assert db.cache._size.total is not None and db.cache._size.total >= _sum_bytes(db.path)


def test_stats_providers_report_the_cache(file_db: CyllamaDB, model: Path) -> None:
    file_db.cache_response("Hello", model, CONFIG, _response())
    stats = file_db.get_db_stats()
    assert stats["cache_entries"] == 1 and stats["cache_size_mb"] > 0


# -- invalidation ----------------------------------------------------------------------------


@pytest.fixture
def filled(clock_db: CyllamaDB, model: Path, tmp_path: Path) -> tuple[CyllamaDB, Path, Path]:
    from cyllama_db.testing import write_tiny_llama

    other = Path(write_tiny_llama(tmp_path / "other.gguf", name="other-model"))
    for i, path in enumerate([model, other]):
        clock_db.now[0] = T0 + i * 1000  # type: ignore[attr-defined]
        clock_db.cache_response("shared prompt", path, CONFIG, _response())
        clock_db.cache_response(f"only {i}", path, CONFIG, _response())
    clock_db.now[0] = T0 + 2000  # type: ignore[attr-defined]
    return clock_db, model, other


def test_invalidate_by_prompt(filled: tuple[CyllamaDB, Path, Path]) -> None:
    db, model, _other = filled
    assert db.invalidate_cache(prompt="shared prompt") == 2
    assert db.get_cached_response("shared prompt", model, CONFIG) is None
    assert db.get_cached_response("only 0", model, CONFIG) is not None


def test_invalidate_by_model(filled: tuple[CyllamaDB, Path, Path], tmp_path: Path) -> None:
    db, model, other = filled
    copy = tmp_path / "copy" / "model.gguf"
    copy.parent.mkdir()
    shutil.copy(model, copy)
    assert db.invalidate_cache(model_path=copy) == 2  # same identity, another path
    assert db.get_cached_response("only 1", other, CONFIG) is not None
    assert db.invalidate_cache(model_path="unknown.gguf") == 0
    # a bare file name (no such file in the current directory) matches by name
    assert db.invalidate_cache(model_path="other.gguf") == 2


def test_invalidate_by_model_path_after_the_file_changed(
    clock_db: CyllamaDB, model: Path, tmp_path: Path
) -> None:
    from cyllama_db.testing import write_tiny_llama

    path = tmp_path / "evolving.gguf"
    shutil.copy(model, path)
    clock_db.cache_response("old", path, CONFIG, _response())
    write_tiny_llama(path, name="new-version")
    clock_db.cache_response("new", path, CONFIG, _response())
    assert clock_db.invalidate_cache(model_path=path) == 2


def test_invalidate_older_than(filled: tuple[CyllamaDB, Path, Path]) -> None:
    db, _model, _other = filled
    assert db.invalidate_cache(older_than=T0 + 500) == 2
    assert db.invalidate_cache(older_than=datetime.fromtimestamp(T0 + 500, tz=timezone.utc)) == 0
    assert db.invalidate_cache(older_than=timedelta(seconds=999)) == 2  # created at T0+1000, now T0+2000
    assert db.get_cache_stats()["entries"] == 0


def test_invalidate_criteria_combine(filled: tuple[CyllamaDB, Path, Path]) -> None:
    db, model, other = filled
    assert db.invalidate_cache(prompt="shared prompt", model_path=other) == 1
    assert db.get_cached_response("shared prompt", model, CONFIG) is not None
    assert db.invalidate_cache() == 3


# -- hit bookkeeping -------------------------------------------------------------------------


def test_a_hit_is_not_a_write(file_db: CyllamaDB, model: Path) -> None:
    file_db.cache_response("Hello", model, CONFIG, _response())
    with _other_connection(file_db) as conn:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        for _ in range(50):
            assert file_db.get_cached_response("Hello", model, CONFIG) is not None
        assert conn.execute("PRAGMA data_version").fetchone()[0] == version
        assert conn.execute("SELECT hit_count FROM cache").fetchone()[0] == 0
        file_db.get_db_stats()  # flushes
        assert conn.execute("PRAGMA data_version").fetchone()[0] != version
        assert conn.execute("SELECT hit_count FROM cache").fetchone()[0] == 50


def test_hit_counts_survive_close(tmp_path: Path, model: Path) -> None:
    path = tmp_path / "hits.db"
    with CyllamaDB(path) as db:
        db.clock = lambda: T0  # type: ignore[method-assign]
        db.cache_response("Hello", model, CONFIG, _response())
        db.clock = lambda: T0 + 5  # type: ignore[method-assign]
        for _ in range(3):
            db.get_cached_response("Hello", model, CONFIG)
    conn = sqlite3.connect(path)
    hits, last_hit, last_used = conn.execute("SELECT hit_count, last_hit_at, last_used_at FROM cache").fetchone()
    conn.close()
    assert (hits, last_hit, last_used) == (3, T0 + 5, T0 + 5)
    with CyllamaDB(path) as db:
        assert db.get_cache_stats()["hits"] == 3


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_hit_counts_go_through_the_databases_one_write_behind(
    file_db: CyllamaDB, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit buffers (key, time) on db.deferred's "cache.hits" channel; its thread writes a full batch."""
    monkeypatch.setattr(deferred_module, "FLUSH_ITEMS", 5)
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 3600.0)  # only the batch size triggers here
    for i in range(3):
        file_db.cache_response(f"p{i}", model, CONFIG, _response())
    channel = file_db.deferred.channels["cache.hits"]
    with _other_connection(file_db) as conn:
        for i in (0, 1, 1, 2):
            file_db.get_cached_response(f"p{i}", model, CONFIG)
        assert len(channel) == 4  # waiting, not written by the caller
        assert conn.execute("SELECT SUM(hit_count) FROM cache").fetchone()[0] == 0
        file_db.get_cached_response("p1", model, CONFIG)  # the fifth: a full batch wakes the thread
        assert _wait_for(lambda: conn.execute("SELECT SUM(hit_count) FROM cache").fetchone()[0] == 5)
        counts = dict(conn.execute("SELECT prompt, hit_count FROM cache").fetchall())
    assert counts == {"p0": 1, "p1": 3, "p2": 1}  # counted per key in one batch


def test_hit_counts_are_written_after_an_interval(
    file_db: CyllamaDB, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred_module, "FLUSH_SECONDS", 0.2)
    file_db.cache_response("p", model, CONFIG, _response())
    with _other_connection(file_db) as conn:
        file_db.get_cached_response("p", model, CONFIG)
        file_db.get_cached_response("p", model, CONFIG)
        assert _wait_for(lambda: conn.execute("SELECT hit_count FROM cache").fetchone()[0] == 2)


def test_a_failing_write_keeps_the_hit_counts_and_the_hit_working(
    file_db: CyllamaDB, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_db.cache_response("p", model, CONFIG, _response())

    def broken() -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(file_db.pool, "transaction", broken)
    assert file_db.get_cached_response("p", model, CONFIG) is not None
    with pytest.raises(sqlite3.OperationalError):
        file_db.cache.flush()
    assert len(file_db.deferred.channels["cache.hits"]) == 1  # kept for the next write
    monkeypatch.undo()
    assert file_db.get_cache_stats()["hits"] == 1  # kept and written on the next flush


def test_cache_stats(clock_db: CyllamaDB, model: Path) -> None:
    clock_db.cache_response("a", model, CONFIG, _response())
    clock_db.get_cached_response("a", model, CONFIG)
    stats = clock_db.get_cache_stats()
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["max_size_mb"] == 100.0
    assert stats["oldest"] == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert stats["by_kind"] == {"completion": 1, "chat": 0, "function": 0}
    assert stats["default_ttl_seconds"] == 3600


def test_an_llm_generation_lands_in_the_table(tiny_model_path: Path, file_db: CyllamaDB) -> None:
    llm = LLM(tiny_model_path, db=file_db, temperature=0.0, max_tokens=8)
    text = llm("Into the table").text
    hit = file_db.get_cached_response("Into the table", tiny_model_path, llm.config)
    assert hit is not None and hit.text == text
    with _other_connection(file_db) as conn:
        row = conn.execute("SELECT tokens_generated, tokens_per_second, generation_time_ms FROM cache").fetchone()
    assert row[0] and row[1] and row[2]
    llm.close()


# -- the stored response JSON ----------------------------------------------------------------

_finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    finish=st.none() | st.text(),
    model_path=st.text(),
    ints=st.tuples(*[st.none() | st.integers(min_value=0, max_value=2**63)] * 3),
    floats=st.tuples(*[st.none() | _finite] * 4),
)
def test_response_json_is_exactly_what_json_dumps_writes(
    finish: str | None, model_path: str, ints: tuple[int | None, ...], floats: tuple[float | None, ...]
) -> None:
    stats = GenerationStats(*ints, *floats)
    response = Response("text", finish, model_path, False, stats)
    expected = json.dumps(
        {"finish_reason": finish, "model_path": model_path, "stats": stats.to_dict()}, allow_nan=False
    )
    assert cache_module._response_json(response) == expected


def test_response_json_refuses_what_json_refuses() -> None:
    response = _response()
    response.stats.tokens_per_second = math.nan  # set after validation
    with pytest.raises(ValueError, match="JSON"):
        cache_module._response_json(response)
    response.stats.tokens_per_second = 1.0
    response.stats.prompt_tokens = object()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="JSON serializable"):
        cache_module._response_json(response)


# -- the pool's fast paths the cache uses ----------------------------------------------------


def test_pool_connection_is_the_calling_threads_own(file_db: CyllamaDB) -> None:
    pool = file_db.pool
    conn = pool.connection()
    assert pool.connection() is conn
    with pool.read() as same:
        assert same is conn
    other: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: other.append(pool.connection()))
    thread.start()
    thread.join()
    assert other and other[0] is not conn


def test_pool_connection_refuses_memory_and_closed_pools(memory_db: CyllamaDB, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"read\(\)"):
        memory_db.pool.connection()
    db = CyllamaDB(tmp_path / "closing.db")
    pool = db.pool
    pool.connection()
    db.close()
    with pytest.raises(DatabaseClosedError):
        pool.connection()
    with pytest.raises(DatabaseClosedError):
        pool.execute_write("DELETE FROM cache")


def test_execute_write_commits_alone_or_joins_the_open_transaction(any_db: CyllamaDB) -> None:
    pool = any_db.pool
    with pool.transaction() as conn:
        conn.execute("CREATE TABLE scratch (x INTEGER)")
    assert pool.execute_write("INSERT INTO scratch VALUES (?)", (1,)) == 1
    with pytest.raises(KeyError), pool.transaction():
        pool.execute_write("INSERT INTO scratch VALUES (2)")
        raise KeyError("roll it all back")
    with pool.read() as conn:
        assert conn.execute("SELECT x FROM scratch").fetchall() == [(1,)]
        assert not conn.in_transaction
    if any_db.path != ":memory:":
        with _other_connection(any_db) as conn:  # committed: visible to another connection
            assert conn.execute("SELECT COUNT(*) FROM scratch").fetchone()[0] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_pool_connection_in_a_forked_child_is_a_new_one(file_db: CyllamaDB) -> None:
    parent = file_db.pool.connection()
    file_db.cache_response("from the parent", "m.gguf", CONFIG, _response())
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            fresh = file_db.pool.connection() is not parent
            found = file_db.get_cached_response("from the parent", "m.gguf", CONFIG) is not None
            code = 0 if fresh and found else 3
        finally:
            os.write(write_fd, bytes([code]))
            os._exit(0)
    os.close(write_fd)
    result = os.read(read_fd, 1)
    os.waitpid(pid, 0)
    assert result == b"\x00"
    assert file_db.pool.connection() is parent


# -- the store object (db.cache) ---------------------------------------------------------------


def test_the_store_object_and_the_flat_api_are_one_cache(file_db: CyllamaDB, model: Path) -> None:
    cache = file_db.cache
    assert cache in file_db.stores and cache.name == "cache"
    cache.put("Hello", model, CONFIG, _response("stored by the store"))
    hit = file_db.get_cached_response("Hello", model, CONFIG)
    assert hit is not None and hit.text == "stored by the store" and hit.cache_hit
    file_db.cache_response("Bye", model, CONFIG, _response("stored flat"), ttl="1h", namespace="team")
    again = cache.get("Bye", model, CONFIG, namespace="team")
    assert again is not None and again.text == "stored flat"
    assert cache.get("Bye", model, CONFIG) is None  # another namespace
    assert cache.entries() == file_db.list_cache_entries()
    assert [e["prompt"] for e in cache.entries(order="hits", namespace="team")] == ["Bye"]
    assert cache.models() == file_db.cached_models() and len(cache.models()) == 1
    assert cache.stats() == file_db.get_cache_stats() and cache.stats()["entries"] == 2
    assert [e["prompt"] for e in cache.search("stored")] == [e["prompt"] for e in file_db.search_cache("stored")]
    assert cache.invalidate(namespace="team") == 1
    assert cache.cleanup() == 0
    assert file_db.invalidate_cache() == 1 and cache.stats()["entries"] == 0


def test_find_gives_every_column_of_the_entries_under_a_key_prefix(file_db: CyllamaDB, model: Path) -> None:
    file_db.cache_response("hello", model, CONFIG, _response("world"))
    key = generate_cache_key("hello", model, CONFIG)
    [entry] = file_db.cache.find(key[:12].upper())  # keys are hex: any case matches
    with _other_connection(file_db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(cache)")]
    expected = [c for c in columns if c not in ("id", "config_json", "response_json")] + ["config", "response"]
    assert list(entry) == expected
    assert entry["cache_key"] == key and entry["response_text"] == "world" and entry["prompt"] == "hello"
    assert entry["config"] == json.loads(CONFIG.to_json()) and entry["config"]["max_tokens"] == 16
    assert entry["response"]["finish_reason"] == "stop" and entry["response"]["stats"]["generated_tokens"] == 5
    assert isinstance(entry["created_at"], datetime) and entry["last_hit_at"] is None
    assert file_db.cache.find(key) == [entry]
    assert file_db.cache.find("zzzz") == []
    # Hits still in the buffer are written first.
    file_db.get_cached_response("hello", model, CONFIG)
    assert file_db.cache.find(key)[0]["hit_count"] == 1


def test_find_tells_an_ambiguous_prefix_and_checks_its_arguments(memory_db: CyllamaDB, model: Path) -> None:
    for i in range(40):  # 40 keys over 16 first hex digits: some first digit is shared
        memory_db.cache_response(f"p{i}", model, CONFIG, _response())
    keys = sorted(e["cache_key"] for e in memory_db.list_cache_entries(limit=100))
    shared = next(k[0] for k, n in itertools.pairwise(keys) if k[0] == n[0])
    found = memory_db.cache.find(shared)
    assert len(found) == 2 and all(e["cache_key"].startswith(shared) for e in found)
    assert [e["cache_key"] for e in found] == sorted(e["cache_key"] for e in found)
    assert len(memory_db.cache.find(shared, limit=1)) == 1
    assert len(memory_db.cache.find(shared, limit=100)) == sum(k.startswith(shared) for k in keys)
    with pytest.raises(ValueError, match="key_prefix"):
        memory_db.cache.find("  ")
    with pytest.raises(TypeError, match="key_prefix"):
        memory_db.cache.find(12)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        memory_db.cache.find(shared, limit=0)
    assert CyllamaDB(enabled=False).cache.find("ab") == []


def test_find_shows_a_cached_function_entry(memory_db: CyllamaDB) -> None:
    from cyllama_db import cached

    @cached(db=memory_db)
    def double(x: int) -> int:
        return 2 * x

    assert double(21) == 42
    [entry] = memory_db.cache.find(double.cache_key(21))
    assert entry["kind"] == "function" and entry["response_text"] == "42"
    assert entry["response_json"] is None and entry["config"] == {}


def test_the_ways_in_for_callers_that_have_their_key(file_db: CyllamaDB, model: Path) -> None:
    cache = file_db.cache
    key = generate_cache_key("keyed", model, CONFIG)
    assert cache.lookup(key, str(model), 0.0) is None
    cache.store_response(
        key=key, kind="completion", prompt="keyed", model_path=str(model), identity=model_identity(model),
        config=CONFIG, response=_response("by key"), ttl=None,
    )
    hit = cache.lookup(key, "shown/path.gguf", 0.0)
    assert hit is not None and (hit.text, hit.model_path, hit.cache_hit) == ("by key", "shown/path.gguf", True)
    assert hit.stats.generated_tokens == 5
    # ...and it is the entry the public lookup finds.
    assert file_db.get_cached_response("keyed", model, CONFIG).text == "by key"  # type: ignore[union-attr]
    cache.put_value(
        key="fn-key", kind="function", prompt="{}", model_path="mod.fn", identity="fn:mod.fn",
        config_json="{}", response_text=json.dumps({"a": None}), response_json=None,
    )
    cache.put_value(
        key="fn-none", kind="function", prompt="[]", model_path="mod.fn", identity="fn:mod.fn",
        config_json="{}", response_text="null", response_json=None, ttl=60,
    )
    assert cache.get_value("fn-key") == (True, {"a": None})
    assert cache.get_value("fn-none") == (True, None)  # a stored None is a hit
    assert cache.get_value("absent") == (False, None)
    assert cache.delete(key="fn-key") == 1 and cache.get_value("fn-key") == (False, None)
    assert cache.delete(identity="fn:mod.fn") == 1
    assert cache.delete(key="fn-key") == 0
    with pytest.raises(TypeError, match="key= or identity="):
        cache.delete()
    assert cache.stats()["entries"] == 1
    off = CyllamaDB(enabled=False).cache
    assert off.lookup(key, str(model), 0.0) is None and off.get_value(key) == (False, None)
    assert off.delete(key=key) == 0


def test_flush_writes_the_buffered_hits_and_indexes_new_entries(
    file_db: CyllamaDB, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_db.cache_response("first", model, CONFIG, _response())  # the first insert syncs (and indexes)
    file_db.cache_response("p", model, CONFIG, _response("findable words"))  # this one is not indexed yet
    file_db.get_cached_response("p", model, CONFIG)
    with _other_connection(file_db) as conn:
        assert conn.execute("SELECT SUM(hit_count) FROM cache").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM cache_fts_docsize").fetchone()[0] == 1
        file_db.cache.flush()
        assert conn.execute("SELECT SUM(hit_count) FROM cache").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM cache_fts_docsize").fetchone()[0] == 2


def test_totals_are_the_gauges_for_monitoring(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "t.db", max_cache_size_mb=0.05) as db:
        assert db.cache.totals() == {"entries": 0, "size_bytes": 0, "evictions": 0}
        for i in range(100):
            db.cache_response(f"prompt {i}", "m.gguf", CONFIG, _response("y" * 900))
        totals = db.cache.totals()
        assert totals is not None
        assert totals["entries"] == db.get_cache_stats()["entries"] < 100
        assert totals["size_bytes"] == _sum_bytes(db.path) <= 0.05 * 1_048_576
        assert totals["evictions"] == 100 - totals["entries"]
    assert CyllamaDB(enabled=False).cache.totals() is None
