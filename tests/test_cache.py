"""The response cache store: keys, model identity, TTL, size limit, invalidation, hit bookkeeping."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
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
from cyllama_db import cache as cache_module

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
        assert actual == (stats["size_bytes"], stats["entries"])  # the trigger-kept totals are exact


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


def test_hit_buffer_flushes_when_it_grows(file_db: CyllamaDB, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_FLUSH_ENTRIES", 5)
    for i in range(5):
        file_db.cache_response(f"p{i}", model, CONFIG, _response())
    with _other_connection(file_db) as conn:
        for i in range(4):
            file_db.get_cached_response(f"p{i}", model, CONFIG)
        assert conn.execute("SELECT SUM(hit_count) FROM cache").fetchone()[0] == 0
        file_db.get_cached_response("p4", model, CONFIG)
        assert conn.execute("SELECT SUM(hit_count) FROM cache").fetchone()[0] == 5


def test_hit_buffer_flushes_after_an_interval(
    file_db: CyllamaDB, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_db.cache_response("p", model, CONFIG, _response())
    ticks = [100.0]
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: ticks[0])
    with _other_connection(file_db) as conn:
        file_db.get_cached_response("p", model, CONFIG)
        assert conn.execute("SELECT hit_count FROM cache").fetchone()[0] == 0
        ticks[0] += cache_module._FLUSH_SECONDS
        file_db.get_cached_response("p", model, CONFIG)
        assert conn.execute("SELECT hit_count FROM cache").fetchone()[0] == 2


def test_a_failing_flush_keeps_the_hit_working(
    file_db: CyllamaDB, model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache_module, "_FLUSH_ENTRIES", 1)
    file_db.cache_response("p", model, CONFIG, _response())

    def broken() -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(file_db.pool, "transaction", broken)
    assert file_db.get_cached_response("p", model, CONFIG) is not None
    assert "could not write cache hit counts" in caplog.text
    monkeypatch.undo()
    file_db.get_db_stats()
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
