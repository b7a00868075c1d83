"""LLM / complete() on real llama.cpp (the tiny random-weight model), with the response cache."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cyllama_db
from cyllama_db import (
    LLM,
    ContextOverflowError,
    CyllamaDB,
    GenerationConfig,
    GenerationStats,
    ModelBusyError,
    ModelLoadError,
    ModelNotFoundError,
    Response,
    Stream,
    complete,
    generate_cache_key,
)
from cyllama_db.llm import loaded_model_paths, locks, unload_models
from cyllama_db.llm import shared as shared_models
from cyllama_db.types import _CONFIG_FIELDS

GREEDY = {"temperature": 0.0, "max_tokens": 12}


class Spy:
    """Counts what reaches llama.cpp: wraps the loaded Llama's generation methods."""

    def __init__(self, llm: LLM) -> None:
        self.calls: list[str] = []
        self._depth = 0
        llama = llm.llama
        for name in ("create_completion", "create_chat_completion"):
            real = getattr(llama, name)

            def wrapped(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                # Chat completions call create_completion inside: count the outer call only.
                if not self._depth:
                    self.calls.append(_name)
                self._depth += 1
                try:
                    return _real(*args, **kwargs)
                finally:
                    self._depth -= 1

            setattr(llama, name, wrapped)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CyllamaDB]:
    database = CyllamaDB(tmp_path / "inference.db")
    yield database
    database.close()


@pytest.fixture
def llm(tiny_model_path: Path, db: CyllamaDB) -> Iterator[LLM]:
    model = LLM(tiny_model_path, db=db, **GREEDY)
    yield model
    model.close()


@pytest.fixture(autouse=True)
def _no_shared_models() -> Iterator[None]:
    yield
    unload_models()


# -- GenerationConfig ------------------------------------------------------------------------


def test_config_defaults_and_normalisation() -> None:
    config = GenerationConfig(temperature=1, stop_sequences=["b", "a", "b"], logit_bias={"5": 1})
    assert config.temperature == 1.0 and isinstance(config.temperature, float)
    assert config.stop_sequences == ("a", "b")
    assert dict(config.logit_bias or {}) == {5: 1.0}
    assert GenerationConfig(stop_sequences="END").stop_sequences == ("END",)
    assert GenerationConfig().max_tokens == 512
    # negative frequency/presence penalties favour repetition; llama.cpp takes them
    assert GenerationConfig(frequency_penalty=-0.5, presence_penalty=-2).presence_penalty == -2.0


@pytest.mark.parametrize(
    ("changes", "error", "needle"),
    [
        ({"temperature": -1}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"max_tokens": True}, TypeError, "max_tokens"),
        ({"top_k": "40"}, TypeError, "top_k"),
        ({"mirostat_mode": 3}, ValueError, "mirostat_mode"),
        ({"stop_sequences": [1]}, TypeError, "stop_sequences"),
        ({"repeat_penalty": 0}, ValueError, "repeat_penalty"),
        ({"frequency_penalty": float("inf")}, ValueError, "frequency_penalty"),
        ({"presence_penalty": "high"}, TypeError, "presence_penalty"),
        ({"grammar": 5}, TypeError, "grammar"),
        ({"logit_bias": {"x": 1.0}}, TypeError, "logit_bias"),
    ],
)
def test_config_rejects_bad_values(changes: dict[str, Any], error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        GenerationConfig(**changes)


def test_config_replace_is_remembered_but_never_across_types() -> None:
    base = GenerationConfig(max_tokens=8)
    first = base.replace(temperature=0)
    assert base.replace(temperature=0) is first  # the same overrides again: no rebuild
    assert first.temperature == 0.0 and first.max_tokens == 8
    # 0 == False == 0.0 as dict keys, but only numbers are temperatures
    with pytest.raises(TypeError, match="temperature"):
        base.replace(temperature=False)
    assert base.replace(temperature=0.0).temperature == 0.0
    # unhashable overrides are simply not remembered
    stops = base.replace(stop_sequences=["b", "a"])
    assert stops.stop_sequences == ("a", "b") and base.replace(stop_sequences=["a"]) != stops
    assert GenerationConfig(max_tokens=9).replace(temperature=0) is not first


def test_config_replace_names_unknown_field() -> None:
    with pytest.raises(TypeError, match=r"'temprature'.*'temperature'"):
        GenerationConfig().replace(temprature=0.1)
    with pytest.raises(TypeError, match="nope"):
        GenerationConfig.from_dict({"nope": 1})


@given(
    temperature=st.floats(0, 5, allow_nan=False),
    max_tokens=st.one_of(st.none(), st.integers(1, 4096)),
    stops=st.lists(st.text(min_size=1, max_size=5), max_size=3),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
    bias=st.one_of(st.none(), st.dictionaries(st.integers(0, 1000), st.floats(-10, 10), max_size=3)),
)
def test_config_dict_round_trip(
    temperature: float, max_tokens: int | None, stops: list[str], seed: int | None, bias: dict[int, float] | None
) -> None:
    config = GenerationConfig(
        temperature=temperature, max_tokens=max_tokens, stop_sequences=stops, seed=seed, logit_bias=bias
    )
    again = GenerationConfig.from_dict(config.to_dict())
    assert again == config
    assert again.cache_json() == config.cache_json()
    assert hash(again) == hash(config)


def test_config_pickles_and_copies() -> None:
    import copy
    import pickle

    config = GenerationConfig(temperature=0.0, logit_bias={3: -1.0}, stop_sequences=["x"])
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(config) == config


def test_config_cache_json_excludes_seed_only() -> None:
    assert GenerationConfig(seed=1).cache_json() == GenerationConfig(seed=2).cache_json()
    assert GenerationConfig(top_k=1).cache_json() != GenerationConfig(top_k=2).cache_json()


# -- Response --------------------------------------------------------------------------------

_maybe_float = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
_maybe_int = st.one_of(st.none(), st.integers(0, 10**9))
_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


@given(
    text=_texts,
    finish=st.sampled_from([None, "stop", "length", "cancelled"]),
    hit=st.booleans(),
    ints=st.tuples(_maybe_int, _maybe_int, _maybe_int),
    floats=st.tuples(_maybe_float, _maybe_float, _maybe_float, _maybe_float),
)
def test_response_json_round_trip(
    text: str, finish: str | None, hit: bool, ints: tuple[Any, ...], floats: tuple[Any, ...]
) -> None:
    response = Response(text, finish, "/m/model.gguf", hit, GenerationStats(*ints, *floats))
    again = Response.from_json(response.to_json())
    assert again == response
    assert again.to_dict() == response.to_dict()
    assert str(again) == text


def test_response_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(TypeError, match="bogus"):
        Response.from_dict({"text": "x", "bogus": 1})
    with pytest.raises(TypeError, match="text"):
        Response.from_dict({"finish_reason": "stop"})
    with pytest.raises(TypeError, match="prompt_tokens"):
        GenerationStats(prompt_tokens=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stats"):
        Response("x", stats=42)  # type: ignore[arg-type]
    assert Response("x", stats=None).stats == GenerationStats()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"text": "x", "cache_hit": "false"}, "cache_hit"),
        ({"text": "x", "cache_hit": 1}, "cache_hit"),
        ({"text": 5}, "text"),
        ({"text": "x", "finish_reason": 5}, "finish_reason"),
        ({"text": "x", "model_path": 5}, "model_path"),
        ({"text": "x", "stats": [1, 2]}, "stats"),
        ({"text": "x", "stats": {"prompt_tokens": "7"}}, "prompt_tokens"),
        ({"text": "x", "stats": {"total_time_ms": "fast"}}, "total_time_ms"),
    ],
)
def test_response_from_dict_checks_types(data: dict[str, Any], needle: str) -> None:
    import json

    with pytest.raises(TypeError, match=needle):
        Response.from_dict(data)
    with pytest.raises(TypeError, match=needle):
        Response.from_json(json.dumps(data))


def test_response_checks_its_fields() -> None:
    with pytest.raises(TypeError, match="model_path"):
        Response("x", model_path=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="finish_reason"):
        Response("x", finish_reason=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache_hit"):
        Response("x", cache_hit="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        GenerationStats.from_dict([("prompt_tokens", 1)])  # type: ignore[arg-type]
    assert Response("x", model_path=Path("/m/a.gguf")).model_path == "/m/a.gguf"  # type: ignore[arg-type]


# -- loading and errors ----------------------------------------------------------------------


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFoundError, match=r"nope\.gguf") as info:
        LLM(missing)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError, match=r"nope\.gguf"):
        complete("hi", missing, db=False)


def test_not_a_gguf_file_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llama]')")
    bogus = tmp_path / "weights.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 10)
    llm = LLM(bogus, db=False)
    with caplog.at_level(logging.ERROR, logger="cyllama_db.inference.raised"), pytest.raises(
        ModelLoadError, match=r"weights\.gguf.*not a GGUF file"
    ):
        llm("hello")
    # logged for the logs store, without llama_cpp's traceback
    assert any(r.levelno == logging.ERROR and "not a GGUF file" in r.getMessage() for r in caplog.records)


def test_truncated_gguf_is_a_clear_error(tiny_model_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model_path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=r"broken\.gguf.*llama\.cpp rejected it"):
        LLM(broken, db=False)("hello")


def test_prompt_over_a_small_n_ctx(tiny_model_path: Path) -> None:
    # llama.cpp pads n_ctx=32 to 256 but llama-cpp-python's buffer holds 32.
    llm = LLM(tiny_model_path, db=False, n_ctx=32, temperature=0.0, max_tokens=4)
    with pytest.raises(ContextOverflowError, match="n_ctx=32"):
        llm("hello world " * 20)
    assert llm("hello").text


def test_context_overflow_names_the_file(tiny_model_path: Path) -> None:
    llm = LLM(tiny_model_path, db=False, n_ctx=256, **GREEDY)
    prompt = "hello world " * 200
    with pytest.raises(ContextOverflowError, match=r"tiny-llama\.gguf.*n_ctx") as info:
        llm(prompt)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ContextOverflowError):
        list(llm(prompt, stream=True))
    assert llm("hello").text  # the model is still usable


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("n_ctx", "big", TypeError),
        ("n_ctx", 512.0, TypeError),
        ("n_ctx", True, TypeError),
        ("n_ctx", -1, ValueError),
        ("n_gpu_layers", "all", TypeError),
        ("n_threads", "4", TypeError),
        ("rope_freq_scale", "0.5", TypeError),
        ("rope_freq_base", float("inf"), ValueError),
        ("use_mmap", "no", TypeError),
        ("flash_attn", 1, TypeError),
        ("chat_format", 5, TypeError),
        ("lora_path", 5, TypeError),
        ("kv_overrides", {"a": [1]}, TypeError),
        ("tensor_split", "3,1", TypeError),
        ("chat_handler", "chatml", TypeError),
    ],
)
def test_load_option_types_are_checked_before_llama_cpp(
    tiny_model_path: Path, option: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=option):
        LLM(tiny_model_path, db=False, **{option: value})
    with pytest.raises(error, match=option):
        complete("hi", tiny_model_path, db=False, **{option: value})


def test_flags_must_be_bools(tiny_model_path: Path, db: CyllamaDB) -> None:
    with pytest.raises(TypeError, match="cache"):
        LLM(tiny_model_path, db=db, cache="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="verbose"):
        LLM(tiny_model_path, db=db, verbose="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cache='no': use True, False, 'refresh' or 'only-if-cached'"):
        complete("hi", tiny_model_path, db=db, cache="no")  # type: ignore[arg-type]
    assert db.get_cache_stats()["entries"] == 0


def test_a_lone_surrogate_is_a_value_error_naming_the_argument(llm: LLM, tiny_model_path: Path) -> None:
    with pytest.raises(ValueError, match="prompt contains a lone surrogate"):
        llm("bad \ud800 text")
    with pytest.raises(ValueError, match="prompt contains a lone surrogate"):
        LLM(tiny_model_path, db=False)("bad \ud800 text")
    with pytest.raises(ValueError, match="prompt contains a lone surrogate"):
        complete("bad \ud800", tiny_model_path, db=False)
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\] contains a lone surrogate"):
        llm.chat([{"role": "user", "content": "bad \udc80"}])
    with pytest.raises(ValueError, match="prompt"):
        llm.cache_key("\ud800")
    # a character beyond the BMP is fine (JSON writes it as a surrogate pair)
    assert llm.chat([{"role": "user", "content": "emoji \U0001F600"}]).text is not None


def test_unknown_keyword_is_a_type_error(tiny_model_path: Path) -> None:
    with pytest.raises(TypeError, match=r"'n_ctxx'.*'n_ctx'"):
        LLM(tiny_model_path, n_ctxx=128)
    with pytest.raises(TypeError, match="bogus"):
        complete("hi", tiny_model_path, db=False, bogus=1)
    llm = LLM(tiny_model_path, db=False)
    with pytest.raises(TypeError, match="max_token"):
        llm("hi", max_token=3)
    with pytest.raises(TypeError, match="prompt must be a str"):
        llm(["not", "a", "prompt"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="db must be"):
        LLM(tiny_model_path, db="x.db")  # type: ignore[arg-type]


def test_kwargs_split_between_model_and_config(tiny_model_path: Path) -> None:
    llm = LLM(tiny_model_path, db=False, n_ctx=64, temperature=0.0, max_tokens=3)
    assert llm.load_options == {"n_ctx": 64}
    assert llm.config.temperature == 0.0 and llm.config.max_tokens == 3
    assert len(llm.llama.input_ids) == 64  # the option reached Llama(...)


# -- the core loop: miss, then hit -----------------------------------------------------------


def test_miss_then_hit_does_not_reach_llama_cpp(llm: LLM) -> None:
    spy = Spy(llm)
    first = llm("Hello world")
    second = llm("Hello world")
    assert spy.calls == ["create_completion"]
    assert first.text and second.text == first.text
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.finish_reason == first.finish_reason
    s1, s2 = first.stats, second.stats
    assert s1.generated_tokens and s1.prompt_tokens and s1.total_tokens == s1.prompt_tokens + s1.generated_tokens
    assert s1.generation_time_ms and s1.generation_time_ms > 0 and s1.tokens_per_second
    assert s1.total_time_ms is not None and s1.total_time_ms >= s1.generation_time_ms
    assert (s2.prompt_tokens, s2.generated_tokens) == (s1.prompt_tokens, s1.generated_tokens)
    assert s2.generation_time_ms == 0.0 and s2.tokens_per_second is None and s2.total_time_ms is not None


def test_generation_matches_llama_cpp_directly(llm: LLM) -> None:
    expected = llm.llama.create_completion("The cat", max_tokens=12, temperature=0.0)["choices"][0]["text"]
    assert llm("The cat").text == expected


def test_hit_survives_a_restart_without_loading_the_model(tiny_model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    with CyllamaDB(path) as first_db:
        text = LLM(tiny_model_path, db=first_db, **GREEDY)("Once upon").text
    with CyllamaDB(path) as second_db:
        fresh = LLM(tiny_model_path, db=second_db, **GREEDY)
        again = fresh("Once upon")
        assert again.cache_hit and again.text == text
        assert not fresh.loaded


def test_hit_in_another_process_never_imports_llama_cpp(tiny_model_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "shared.db"
    with CyllamaDB(path) as db:
        text = LLM(tiny_model_path, db=db, **GREEDY)("Across processes").text
    code = (
        "import sys, cyllama_db\n"
        f"db = cyllama_db.CyllamaDB({str(path)!r})\n"
        f"r = cyllama_db.complete('Across processes', {str(tiny_model_path)!r}, db=db, temperature=0.0, max_tokens=12)\n"
        "print(r.cache_hit, 'llama_cpp' in sys.modules)\n"
        "sys.stdout.write(r.text)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    flags, _, replayed = out.partition("\n")
    assert flags == "True False"
    assert replayed == text


def test_seed_is_not_part_of_the_key_but_sampling_options_are(llm: LLM) -> None:
    spy = Spy(llm)
    llm("Seeded", seed=1)
    assert llm("Seeded", seed=2).cache_hit
    assert not llm("Seeded", max_tokens=5).cache_hit
    assert not llm("Seeded", stop_sequences=["zz"]).cache_hit
    assert len(spy.calls) == 3


def test_infrastructure_load_options_are_not_part_of_the_key(tiny_model_path: Path, db: CyllamaDB) -> None:
    LLM(tiny_model_path, db=db, n_ctx=128, **GREEDY)("Context size")
    other = LLM(
        tiny_model_path, db=db, n_ctx=256, n_threads=1, n_batch=64, n_ubatch=64, use_mmap=False,
        flash_attn=False, offload_kqv=False, n_gpu_layers=0, **GREEDY,
    )  # fmt: skip
    assert other("Context size").cache_hit and not other.loaded
    # options at llama-cpp-python's defaults, and chat options on a completion, do not split entries
    same = LLM(tiny_model_path, db=db, lora_scale=1.0, last_n_tokens_size=64, chat_format="chatml", **GREEDY)
    assert same("Context size").cache_hit and not same.loaded


@pytest.mark.parametrize(
    "options",
    [
        {"rope_freq_scale": 0.5},
        {"rope_freq_base": 100.0},
        {"kv_overrides": {"tokenizer.ggml.add_bos_token": False}},
        {"last_n_tokens_size": 2, "repeat_penalty": 1.5},
    ],
)
def test_load_options_that_change_the_output_are_part_of_the_key(
    tiny_model_path: Path, db: CyllamaDB, options: dict[str, Any]
) -> None:
    sampling = {k: v for k, v in options.items() if k in _CONFIG_FIELDS}
    plain = LLM(tiny_model_path, db=db, **GREEDY, **sampling)
    plain("Hello")
    changed = LLM(tiny_model_path, db=db, **{**GREEDY, **options})
    expected = LLM(tiny_model_path, db=False, **{**GREEDY, **options})("Hello").text
    assert expected != plain("Hello").text  # the option really changes the output
    response = changed("Hello")
    assert not response.cache_hit and response.text == expected
    assert changed("Hello").cache_hit
    assert changed.cache_key("x") != plain.cache_key("x")
    for model in (plain, changed):
        model.close()


def test_chat_format_is_part_of_chat_keys(tiny_model_path: Path, db: CyllamaDB) -> None:
    messages = [{"role": "user", "content": "Hi there"}]
    default = LLM(tiny_model_path, db=db, **GREEDY)
    chatml = LLM(tiny_model_path, db=db, chat_format="chatml", **GREEDY)
    expected = LLM(tiny_model_path, db=False, chat_format="chatml", **GREEDY).chat(messages).text
    assert default.chat(messages).text != expected
    response = chatml.chat(messages)
    assert not response.cache_hit and response.text == expected
    assert chatml.chat(messages).cache_hit
    assert complete("Hi", tiny_model_path, db=db, chat_format="chatml", **GREEDY).text == default("Hi").text
    assert chatml.cache_key(messages) == generate_cache_key(
        messages, tiny_model_path, chatml.config, load_options={"chat_format": "chatml"}
    )
    for model in (default, chatml):
        model.close()


def test_captured_llm_keys_a_cached_local_function(tiny_model_path: Path, db: CyllamaDB) -> None:
    def make(llm: LLM) -> Any:
        @cyllama_db.cached(db=db)
        def summarise(text: str) -> str:
            return llm(text).text

        return summarise

    a = make(LLM(tiny_model_path, db=False, **GREEDY))
    b = make(LLM(tiny_model_path, db=False, rope_freq_scale=0.5, **GREEDY))
    c = make(LLM(tiny_model_path, db=False, **GREEDY))
    assert a.function_name != b.function_name and a.function_name == c.function_name
    assert a("Hello") != b("Hello")
    assert c("Hello") == a("Hello")
    assert db.get_cache_stats()["by_kind"]["function"] == 2


def test_cache_key_matches_generate_cache_key(llm: LLM, tiny_model_path: Path) -> None:
    assert llm.cache_key("abc") == generate_cache_key("abc", tiny_model_path, llm.config)
    messages = [{"role": "user", "content": "abc"}]
    assert llm.cache_key(messages) == generate_cache_key(messages, tiny_model_path, llm.config)
    assert llm.cache_key("abc", max_tokens=3) != llm.cache_key("abc")


def test_cache_false_and_db_false_always_generate(tiny_model_path: Path, db: CyllamaDB) -> None:
    for model in (LLM(tiny_model_path, db=db, cache=False, **GREEDY), LLM(tiny_model_path, db=False, **GREEDY)):
        spy = Spy(model)
        a, b = model("No cache"), model("No cache")
        assert len(spy.calls) == 2 and not a.cache_hit and not b.cache_hit and a.text == b.text
    assert db.get_cache_stats()["entries"] == 0


def test_db_none_uses_the_global_database(tiny_model_path: Path, tmp_path: Path) -> None:
    cyllama_db.configure_db(path=tmp_path / "global.db")
    llm = LLM(tiny_model_path, **GREEDY)
    assert not llm("Global").cache_hit
    assert llm("Global").cache_hit
    assert cyllama_db.get_db().get_cache_stats()["entries"] == 1
    assert complete("Global", tiny_model_path, **GREEDY).cache_hit


def test_disabled_by_environment_means_no_cache(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CYLLAMA_DB_ENABLED", "0")
    llm = LLM(tiny_model_path, **GREEDY)
    spy = Spy(llm)
    llm("Disabled")
    assert not llm("Disabled").cache_hit
    assert len(spy.calls) == 2


# -- statistics hand-off ---------------------------------------------------------------------


def test_every_generation_is_recorded(llm: LLM, db: CyllamaDB, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool, bool, GenerationConfig]] = []

    def record(model_path: str, response: Response, config: GenerationConfig, cache_hit: bool = False) -> None:
        seen.append((model_path, response.cache_hit, cache_hit, config))

    monkeypatch.setattr(db, "record_generation", record, raising=False)
    llm("Recorded")
    llm("Recorded")
    list(llm("Recorded", stream=True))
    assert [(hit, flag) for _p, hit, flag, _c in seen] == [(False, False), (True, True), (True, True)]
    assert all(path == llm.model_path and cfg == llm.config for path, _h, _f, cfg in seen)


def test_a_failing_stats_store_never_breaks_generation(
    llm: LLM, db: CyllamaDB, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("stats table on fire")

    monkeypatch.setattr(db, "record_generation", broken, raising=False)
    with caplog.at_level(logging.WARNING, logger="cyllama_db.inference"):
        assert llm("Still works").text
        assert llm("Still works").cache_hit
    assert "stats table on fire" in caplog.text


@pytest.mark.skipif(not hasattr(CyllamaDB, "get_generation_history"), reason="stats store not present")
def test_generations_reach_the_real_stats_store(llm: LLM, db: CyllamaDB) -> None:
    llm("Into the stats")
    llm("Into the stats")
    history = db.get_generation_history(limit=10)
    assert len(history) == 2
    assert sorted(bool(row["cache_hit"]) for row in history) == [False, True]


# -- streaming -------------------------------------------------------------------------------


def test_streamed_miss_is_stored_and_matches_the_plain_call(llm: LLM, tiny_model_path: Path) -> None:
    plain = LLM(tiny_model_path, db=False, **GREEDY)("Stream me").text
    spy = Spy(llm)
    stream = llm("Stream me", stream=True)
    assert isinstance(stream, Stream) and not stream.cache_hit
    chunks = list(stream)
    assert len(chunks) > 1 and "".join(chunks) == plain == stream.text
    assert stream.response is not None and stream.response.text == plain
    assert stream.response.stats.generated_tokens
    again = llm("Stream me")
    assert again.cache_hit and again.text == plain
    assert spy.calls == ["create_completion"]


def test_stream_hit_replays_the_cached_text(llm: LLM) -> None:
    text = llm("Replay").text
    spy = Spy(llm)
    with llm("Replay", stream=True) as stream:
        assert stream.cache_hit and stream.response is not None and stream.response.cache_hit
        chunks = list(stream)
    assert "".join(chunks) == text and len(chunks) > 1
    assert spy.calls == []


def test_stream_stopped_early_is_not_stored(llm: LLM, db: CyllamaDB) -> None:
    spy = Spy(llm)
    stream = llm("Early stop", stream=True)
    next(stream)
    next(stream)
    stream.close()
    assert stream.response is None
    assert db.get_cached_response("Early stop", llm.model_path, llm.config) is None
    assert not llm("Early stop").cache_hit
    assert len(spy.calls) == 2


def test_stopped_stream_is_recorded_as_cancelled(
    llm: LLM, db: CyllamaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Response] = []
    monkeypatch.setattr(db, "record_generation", lambda path, r, cfg, cache_hit=False: seen.append(r), raising=False)
    with llm("Cancel me", stream=True) as stream:
        first = next(stream)
    assert [r.finish_reason for r in seen] == ["cancelled"]
    assert seen[0].text == first and not seen[0].cache_hit


def test_one_generation_at_a_time_per_model(llm: LLM) -> None:
    stream = llm("First stream", stream=True)
    next(stream)
    with pytest.raises(ModelBusyError, match="unfinished stream"):
        llm("Second call")
    stream.close()
    assert llm("Second call").text


# -- chat ------------------------------------------------------------------------------------


def test_chat_miss_then_hit(llm: LLM) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    spy = Spy(llm)
    first = llm.chat(messages)
    second = llm.chat([dict(m) for m in messages])
    assert spy.calls == ["create_chat_completion"]
    assert first.text and second.text == first.text and second.cache_hit
    assert first.stats.prompt_tokens and first.stats.prompt_tokens > 5  # the template was applied
    # a completion of the same text is a different request
    assert not llm("Hi").cache_hit
    streamed = llm.chat(messages, stream=True)
    assert streamed.cache_hit and "".join(streamed) == first.text


def test_chat_stream_miss(llm: LLM) -> None:
    messages = [{"role": "user", "content": "Stream a chat"}]
    stream = llm.chat(messages, stream=True)
    text = "".join(stream)
    assert text and not stream.cache_hit
    assert llm.chat(messages).text == text


def test_chat_rejects_malformed_messages(llm: LLM) -> None:
    with pytest.raises(TypeError, match="messages"):
        llm.chat("hello")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="role"):
        llm.chat([{"content": "no role"}])
    with pytest.raises(ValueError, match="empty"):
        llm.chat([])


# -- concurrency -----------------------------------------------------------------------------


def test_concurrent_identical_misses_generate_once(llm: LLM) -> None:
    spy = Spy(llm)
    barrier = threading.Barrier(4)
    results: list[Response] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(llm("Single flight"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert spy.calls == ["create_completion"]
    assert len({r.text for r in results}) == 1
    assert sorted(r.cache_hit for r in results) == [False, True, True, True]


def test_single_flight_is_per_database(tiny_model_path: Path, tmp_path: Path) -> None:
    dbs = [CyllamaDB(tmp_path / "a.db"), CyllamaDB(tmp_path / "b.db")]
    models = [LLM(tiny_model_path, db=d, **GREEDY) for d in dbs]
    barrier = threading.Barrier(2)

    def worker(model: LLM) -> None:
        barrier.wait()
        model("Two databases")

    threads = [threading.Thread(target=worker, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d, m in zip(dbs, models, strict=True):
        assert d.get_cached_response("Two databases", tiny_model_path, m.config) is not None
        m.close()
        d.close()


def _run_threads(n: int, fn: Any) -> tuple[list[Any], list[BaseException]]:
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results.append(fn(i))
        except BaseException as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_concurrent_identical_streams_generate_once(llm: LLM) -> None:
    spy = Spy(llm)

    def stream(_i: int) -> tuple[str, bool, Response | None]:
        s = llm("Streamed flight", stream=True)
        text = "".join(s)
        return text, s.cache_hit, s.response

    results, errors = _run_threads(4, stream)
    assert not errors
    assert spy.calls == ["create_completion"]
    assert len({text for text, _hit, _r in results}) == 1
    assert sorted(hit for _t, hit, _r in results) == [False, True, True, True]
    assert all(r is not None and r.text == results[0][0] for _t, _h, r in results)


def test_streams_and_plain_calls_share_one_generation(llm: LLM) -> None:
    spy = Spy(llm)

    def call(i: int) -> str:
        if i % 2:
            return "".join(llm("Mixed flight", stream=True))
        return llm("Mixed flight").text

    results, errors = _run_threads(4, call)
    assert not errors and len(set(results)) == 1
    assert len(spy.calls) == 1


def test_an_unconsumed_stream_holds_nobody_up(llm: LLM) -> None:
    spy = Spy(llm)
    idle = llm("Idle stream", stream=True)  # a miss that nobody iterates yet
    first = llm("Idle stream")  # same thread: must not wait for it
    assert not first.cache_hit
    # Iterated later, it finds the answer stored meanwhile (re-checked under the model lock).
    assert "".join(idle) == first.text and idle.cache_hit
    assert idle.response is not None and idle.response.cache_hit
    assert spy.calls == ["create_completion"]


def test_followers_of_an_abandoned_stream_generate_themselves(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(llm)
    waiting = threading.Event()
    real_wait = locks._flights.wait

    def wait(flight: Any, timeout: Any = None) -> Any:
        waiting.set()
        return real_wait(flight, timeout)

    monkeypatch.setattr(locks._flights, "wait", wait)
    leader = llm("Abandoned flight", stream=True)
    next(leader)  # leads the flight and holds the model
    out: list[Response] = []
    follower = threading.Thread(target=lambda: out.append(llm("Abandoned flight")))
    follower.start()
    assert waiting.wait(30)
    leader.close()  # cancelled: nothing to share
    follower.join(60)
    assert len(out) == 1 and not out[0].cache_hit and out[0].text
    assert spy.calls == ["create_completion", "create_completion"]
    assert llm("Abandoned flight").cache_hit


def test_a_stream_follower_replays_the_leaders_result(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(llm)
    waiting = threading.Event()
    real_wait = locks._flights.wait

    def wait(flight: Any, timeout: Any = None) -> Any:
        waiting.set()
        return real_wait(flight, timeout)

    monkeypatch.setattr(locks._flights, "wait", wait)
    leader = llm("Followed flight", stream=True)
    parts = [next(leader)]
    out: list[tuple[str, bool]] = []

    def follow() -> None:
        s = llm("Followed flight", stream=True)
        out.append(("".join(s), s.cache_hit))

    follower = threading.Thread(target=follow)
    follower.start()
    assert waiting.wait(30)
    parts.extend(leader)
    follower.join(60)
    assert out == [("".join(parts), True)]
    assert spy.calls == ["create_completion"]


def test_different_prompts_from_threads_are_serialised(llm: LLM) -> None:
    prompts = [f"Thread {i}" for i in range(4)]
    expected = {p: LLM(llm.model_path, db=False, **GREEDY)(p).text for p in prompts}
    out: dict[str, str] = {}
    threads = [threading.Thread(target=lambda p=p: out.__setitem__(p, llm(p).text)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == expected


# -- complete() and model lifetime -----------------------------------------------------------


def test_complete_reuses_the_loaded_model(tiny_model_path: Path, db: CyllamaDB) -> None:
    first = complete("Reuse", tiny_model_path, db=db, **GREEDY)
    shared = list(shared_models._shared.values())
    assert len(shared) == 1 and shared[0].loaded
    llama = shared[0]._llama
    second = complete("Reuse again", tiny_model_path, db=db, **GREEDY)
    assert next(iter(shared_models._shared.values()))._llama is llama
    assert not first.cache_hit and not second.cache_hit
    assert complete("Reuse", tiny_model_path, db=db, **GREEDY).cache_hit
    assert str(tiny_model_path) in loaded_model_paths()


def test_complete_keeps_a_bounded_number_of_models(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_models, "MAX_SHARED_MODELS", 1)
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny_model_path, copy)
    complete("a", tiny_model_path, db=False, **GREEDY)
    complete("b", copy, db=False, **GREEDY)
    assert [llm.model_path for llm in shared_models._shared.values()] == [str(copy)]
    assert unload_models() == 1
    assert str(copy) not in loaded_model_paths()


def test_complete_stream_and_config(tiny_model_path: Path, db: CyllamaDB) -> None:
    config = GenerationConfig(temperature=0.0, max_tokens=6)
    stream = complete("Configured", tiny_model_path, db=db, config=config, stream=True)
    text = "".join(stream)
    assert complete("Configured", tiny_model_path, db=db, config=config).text == text
    # a keyword overrides the config
    assert not complete("Configured", tiny_model_path, db=db, config=config, max_tokens=7).cache_hit


def test_loaded_model_paths_and_close(llm: LLM) -> None:
    import gc

    gc.collect()  # LLMs of earlier tests that were never closed hold their models until collected
    assert llm.model_path not in loaded_model_paths()
    llm("Load me")
    assert llm.model_path in loaded_model_paths()
    llm.close()
    assert not llm.loaded and llm.model_path not in loaded_model_paths()
    assert llm("Load me").cache_hit  # closing frees the model, not the cache


def test_model_file_change_reloads_and_rekeys(tiny_model_path: Path, tmp_path: Path, db: CyllamaDB) -> None:
    from cyllama_db.testing import write_tiny_llama

    path = tmp_path / "changing.gguf"
    shutil.copy(tiny_model_path, path)
    llm = LLM(path, db=db, **GREEDY)
    llm("Change")
    old_llama = llm._llama
    write_tiny_llama(path, seed=7, name="changed-model")
    response = llm("Change")
    assert not response.cache_hit
    assert llm._llama is not old_llama


def test_generation_errors_are_logged(tiny_model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    llm = LLM(tiny_model_path, db=False, n_ctx=256)
    with caplog.at_level(logging.ERROR, logger="cyllama_db.inference.raised"), pytest.raises(ContextOverflowError):
        llm("word " * 400)
    record = next(r for r in caplog.records if r.name == "cyllama_db.inference.raised")
    # the message says how to fix it; a llama_cpp traceback would bury it
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert "n_ctx" in record.getMessage()
    assert record.model_path == llm.model_path  # type: ignore[attr-defined]
    assert record.prompt == "word " * 400  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(CyllamaDB, "get_logs"), reason="logs store not present")
def test_generation_errors_fill_the_logs_tables_columns(tiny_model_path: Path, tmp_path: Path) -> None:
    database = CyllamaDB(tmp_path / "logged.db", log_to_db=True)
    try:
        llm = LLM(tiny_model_path, db=database, n_ctx=256)
        with pytest.raises(ContextOverflowError):
            llm("word " * 400)
        with pytest.raises(ContextOverflowError):
            llm.chat([{"role": "user", "content": "chat " * 400}])
        rows = database.get_logs(level="ERROR", category="cyllama_db.inference")
        assert len(rows) == 2
        assert all(row["model_path"] == llm.model_path for row in rows)
        previews = sorted(row["prompt_preview"] for row in rows)
        assert previews[0].startswith('[{"content": "chat chat') and previews[1].startswith("word word")
    finally:
        database.close()


def test_hits_and_misses_are_logged_at_debug(llm: LLM, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="cyllama_db.cache"):
        llm("Logged")
        llm("Logged")
    messages = [r.getMessage() for r in caplog.records if r.name == "cyllama_db.cache"]
    assert any("cache miss" in m for m in messages) and any("cache hit" in m for m in messages)


_EXIT_SCRIPT = """
import sys
from cyllama_db import CyllamaDB, complete, configure_db
db = configure_db(path=sys.argv[1])
db.register_model(sys.argv[2], name="tiny")
complete("Hello", model="tiny", temperature=0.0, max_tokens=4)
assert db.get_model_by_name("tiny")["status"] == "running"
complete("Hello", model_path=sys.argv[2], temperature=0.0, max_tokens=4, n_ctx=128)
print("generated")
"""


def test_models_are_freed_cleanly_at_exit(tiny_model_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "exit.db"
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(path), str(tiny_model_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "generated"
    # llama_cpp's own __del__ at interpreter shutdown would print this
    assert "Exception ignored" not in done.stderr, done.stderr
    with CyllamaDB(path) as db:
        assert db.get_model_by_name("tiny")["status"] == "stopped"  # type: ignore[index]


def test_errors_raised_to_the_caller_print_nothing(tiny_model_path: Path, tmp_path: Path) -> None:
    # With no logging configured, Python's last-resort handler would print every
    # ERROR record to stderr: a caught ContextOverflowError must stay quiet, and
    # a non-GGUF file must not print a traceback before its ModelLoadError.
    import subprocess
    import sys
    import textwrap

    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a model" * 20)
    script = textwrap.dedent(
        f"""
        from cyllama_db import LLM, CyllamaDB, ContextOverflowError, ModelLoadError
        db = CyllamaDB({str(tmp_path / "quiet.db")!r}, log_to_db=True)
        try:
            LLM({str(tiny_model_path)!r}, db=db, n_ctx=256)("word " * 400)
        except ContextOverflowError:
            pass
        try:
            LLM({str(bogus)!r}, db=db)("hi")
        except ModelLoadError:
            pass
        logs = [r["message"] for r in db.get_logs(level="ERROR")]
        assert any("generation failed" in m for m in logs), logs
        assert any("not a GGUF file" in m for m in logs), logs
        db.close()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
