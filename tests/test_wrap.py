"""wrap(): an existing llama_cpp.Llama as a cached drop-in, checked against the raw Llama."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import LLM, CacheMissError, ChunkStream, CyllamaDB, complete, wrap
from cyllama_db.llm import unload_models

pytestmark = pytest.mark.llama

MSGS = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def raw(tiny_model_path: Path) -> Iterator[Any]:
    from llama_cpp import Llama

    llama = Llama(str(tiny_model_path), n_ctx=512, verbose=False, logits_all=True)
    yield llama
    llama.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CyllamaDB]:
    database = CyllamaDB(tmp_path / "wrap.db")
    yield database
    database.close()


@pytest.fixture(autouse=True)
def _no_shared_models() -> Iterator[None]:
    yield
    unload_models()


def _without_volatile(out: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(out))
    for name in ("id", "created", "cyllama_db"):
        data.pop(name, None)
    for choice in data["choices"]:
        for call in (choice.get("message") or {}).get("tool_calls") or []:
            call.pop("id", None)
    return data


def test_completion_matches_the_raw_llama_and_a_hit_has_the_same_shape(raw: Any, db: CyllamaDB) -> None:
    cached = wrap(raw, db=db)
    expected = raw.create_completion("The sky is", max_tokens=8, temperature=0)
    miss = cached.create_completion("The sky is", max_tokens=8, temperature=0)
    hit = cached.create_completion("The sky is", max_tokens=8, temperature=0)
    assert _without_volatile(miss) == _without_volatile(expected)
    assert _without_volatile(hit) == _without_volatile(expected)
    assert set(miss) == set(hit) == {*expected, "cyllama_db"}
    assert miss["cyllama_db"]["cache_hit"] is False and hit["cyllama_db"]["cache_hit"] is True
    assert hit["cyllama_db"]["original_id"] == miss["id"] != hit["id"]
    assert hit["cyllama_db"]["cache_key"] == miss["cyllama_db"]["cache_key"]
    json.dumps(hit)
    # __call__ is create_completion, as on the Llama
    assert cached("The sky is", max_tokens=8, temperature=0)["cyllama_db"]["cache_hit"] is True
    summary = db.get_stats_summary()
    assert summary["total_generations"] == 3 and summary["cache_hits"] == 2


def test_chat_matches_the_raw_llama(raw: Any, db: CyllamaDB) -> None:
    cached = wrap(raw, db=db)
    expected = raw.create_chat_completion(MSGS, max_tokens=6, temperature=0)
    miss = cached.create_chat_completion(MSGS, max_tokens=6, temperature=0)
    hit = cached.create_chat_completion(messages=MSGS, max_tokens=6, temperature=0)
    assert _without_volatile(miss) == _without_volatile(expected) == _without_volatile(hit)
    assert hit["object"] == "chat.completion" and hit["cyllama_db"]["cache_hit"]


def test_llama_cpp_defaults_apply_and_wrap_defaults_override_them(raw: Any, db: CyllamaDB) -> None:
    # llama-cpp-python's create_completion generates 16 tokens by default
    cached = wrap(raw, db=db, temperature=0)
    out = cached.create_completion("Defaults")
    assert out["usage"]["completion_tokens"] == raw.create_completion("Defaults", temperature=0)["usage"][
        "completion_tokens"
    ]
    short = wrap(raw, db=db, temperature=0, max_tokens=3).create_completion("Defaults")
    assert short["usage"]["completion_tokens"] <= 3
    with pytest.raises(TypeError, match="temprature"):
        wrap(raw, db=db, temprature=0)
    with pytest.raises(TypeError, match="create_completion"):
        cached.create_completion("x", max_tokenz=3)
    with pytest.raises(TypeError, match=r"loaded llama_cpp\.Llama"):
        wrap("model.gguf")  # type: ignore[arg-type]


def test_other_attributes_delegate_to_the_llama(raw: Any, db: CyllamaDB) -> None:
    cached = wrap(raw, db=db)
    assert cached.tokenize(b"hello") == raw.tokenize(b"hello")
    assert cached.n_ctx() == raw.n_ctx()
    assert cached.metadata == raw.metadata
    assert cached.llama is raw and cached.__wrapped__ is raw
    with pytest.raises(AttributeError):
        cached.no_such_attribute  # noqa: B018


def test_wrap_and_llm_share_keys_and_entries(raw: Any, db: CyllamaDB, tiny_model_path: Path) -> None:
    cached = wrap(raw, db=db)
    first = cached.create_completion("Shared prompt", max_tokens=8, temperature=0)
    llm = LLM(tiny_model_path, db=db, temperature=0, max_tokens=8)
    again = llm("Shared prompt")
    assert again.cache_hit and again.text == first["choices"][0]["text"]
    assert llm.cache_key("Shared prompt") == first["cyllama_db"]["cache_key"]
    chat_first = cached.create_chat_completion(MSGS, max_tokens=5, temperature=0.2)
    assert llm.chat(MSGS, max_tokens=5, temperature=0.2).cache_hit
    r = complete("Shared prompt", tiny_model_path, db=db, temperature=0, max_tokens=8)
    assert r.cache_hit and r.to_openai()["choices"][0]["text"] == first["choices"][0]["text"]
    assert chat_first["cyllama_db"]["cache_key"] == llm.cache_key(MSGS, max_tokens=5, temperature=0.2)


def test_entries_are_shared_with_another_process_and_another_path(
    raw: Any, db: CyllamaDB, tiny_model_path: Path, tmp_path: Path
) -> None:
    cached = wrap(raw, db=db)
    first = cached.create_completion("Across processes", max_tokens=8, temperature=0)
    copy = tmp_path / "elsewhere" / tiny_model_path.name
    copy.parent.mkdir()
    copy.write_bytes(tiny_model_path.read_bytes())
    script = textwrap.dedent(
        f"""
        import json, sys
        from llama_cpp import Llama
        from cyllama_db import CyllamaDB, wrap
        db = CyllamaDB({str(db.path)!r})
        out = wrap(Llama({str(copy)!r}, verbose=False), db=db).create_completion(
            "Across processes", max_tokens=8, temperature=0, cache="only-if-cached")
        print(json.dumps(out))
        db.close()
        """
    )
    db.flush() if hasattr(db, "flush") else None
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cyllama_db"]["cache_hit"] and out["choices"][0]["text"] == first["choices"][0]["text"]
    assert out["model"] == str(copy)


def test_two_models_never_share_entries(db: CyllamaDB, tmp_path: Path) -> None:
    from llama_cpp import Llama

    from cyllama_db.testing import write_tiny_llama

    a = Llama(str(write_tiny_llama(tmp_path / "a.gguf", seed=1)), verbose=False)
    b = Llama(str(write_tiny_llama(tmp_path / "b.gguf", seed=2)), verbose=False)
    try:
        out_a = wrap(a, db=db).create_completion("Same prompt", max_tokens=8, temperature=0)
        out_b = wrap(b, db=db).create_completion("Same prompt", max_tokens=8, temperature=0)
        assert not out_b["cyllama_db"]["cache_hit"]
        assert out_b["choices"][0]["text"] == b.create_completion("Same prompt", max_tokens=8, temperature=0)[
            "choices"
        ][0]["text"]
        assert out_a["cyllama_db"]["cache_key"] != out_b["cyllama_db"]["cache_key"]
    finally:
        a.close()
        b.close()


def test_streams_are_chunk_dicts_and_a_hit_replays_them(raw: Any, db: CyllamaDB) -> None:
    cached = wrap(raw, db=db)
    expected = raw.create_completion("Streamed", max_tokens=8, temperature=0)["choices"][0]["text"]
    stream = cached.create_completion("Streamed", max_tokens=8, temperature=0, stream=True)
    assert isinstance(stream, ChunkStream)
    chunks = list(stream)
    assert all(c["object"] == "text_completion" and "choices" in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    replay = list(cached.create_completion("Streamed", max_tokens=8, temperature=0, stream=True))
    assert all(c["cyllama_db"]["cache_hit"] for c in replay)
    assert "".join(c["choices"][0]["text"] for c in replay) == expected
    json.dumps(replay)
    chat_chunks = list(cached.create_chat_completion(MSGS, max_tokens=5, temperature=0, stream=True))
    chat_replay = list(cached.create_chat_completion(MSGS, max_tokens=5, temperature=0, stream=True))
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chat_chunks)
    assert text == "".join((c["choices"][0]["delta"].get("content") or "") for c in chat_replay)
    assert chat_replay[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chat_replay[-1]["choices"][0]["finish_reason"] == chat_chunks[-1]["choices"][0]["finish_reason"]


def test_tool_calls_and_logprobs_survive_the_cache(tiny_model_path: Path, db: CyllamaDB) -> None:
    from llama_cpp import Llama

    llama = Llama(str(tiny_model_path), n_ctx=512, verbose=False, chat_format="chatml-function-calling",
                  logits_all=True)
    try:
        cached = wrap(llama, db=db)
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 5}}, "required": ["city"]}}}]
        kwargs: dict[str, Any] = {
            "tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 40, "temperature": 0,
        }
        miss = cached.create_chat_completion(MSGS, **kwargs)
        hit = cached.create_chat_completion(MSGS, **kwargs)
        calls = miss["choices"][0]["message"]["tool_calls"]
        assert calls and calls[0]["function"]["name"] == "get_weather"
        assert json.loads(calls[0]["function"]["arguments"])["city"]
        assert hit["cyllama_db"]["cache_hit"] and hit["choices"][0]["message"] == miss["choices"][0]["message"]
        assert hit["choices"][0]["finish_reason"] == "tool_calls"
        # a different tool list is a different request
        other = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
        changed = cached.create_chat_completion(
            MSGS, **{**kwargs, "tools": other, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
        )
        assert not changed["cyllama_db"]["cache_hit"]
        # logprobs (numpy floats in llama-cpp-python's dict) come back as plain JSON
        first = cached.create_completion("Log probs", max_tokens=3, logprobs=2, temperature=0)
        again = cached.create_completion("Log probs", max_tokens=3, logprobs=2, temperature=0)
        assert again["cyllama_db"]["cache_hit"]
        assert again["choices"][0]["logprobs"] == first["choices"][0]["logprobs"]
        assert len(first["choices"][0]["logprobs"]["top_logprobs"]) == 3
        json.dumps(first)
        without = cached.create_completion("Log probs", max_tokens=3, temperature=0)
        assert not without["cyllama_db"]["cache_hit"] and without["choices"][0]["logprobs"] is None
    finally:
        llama.close()


def test_per_call_cache_modes(raw: Any, db: CyllamaDB) -> None:
    cached = wrap(raw, db=db)
    with pytest.raises(CacheMissError, match="only-if-cached"):
        cached.create_completion("Modes", max_tokens=4, cache="only-if-cached")
    first = cached.create_completion("Modes", max_tokens=4, temperature=0.9, seed=1)
    assert cached.create_completion("Modes", max_tokens=4, temperature=0.9, seed=2)["cyllama_db"]["cache_hit"]
    fresh = cached.create_completion("Modes", max_tokens=4, temperature=0.9, seed=3, cache="refresh")
    assert not fresh["cyllama_db"]["cache_hit"]
    stored = cached.create_completion("Modes", max_tokens=4, temperature=0.9, cache="only-if-cached")
    assert stored["choices"][0]["text"] == fresh["choices"][0]["text"]
    assert not cached.create_completion("Modes", max_tokens=4, temperature=0.9, cache=False)["cyllama_db"]["cache_hit"]
    assert first["cyllama_db"]["cache_key"] == fresh["cyllama_db"]["cache_key"]
    spaced = cached.create_completion("Modes", max_tokens=4, temperature=0.9, namespace="team-a")
    assert not spaced["cyllama_db"]["cache_hit"] and spaced["cyllama_db"]["cache_key"] != first["cyllama_db"]["cache_key"]
    assert cached.create_completion("Modes", max_tokens=4, temperature=0.9, namespace="team-a")["cyllama_db"]["cache_hit"]
    assert db.invalidate_cache(namespace="team-a") == 1
    assert cached.create_completion("Modes", max_tokens=4, temperature=0.9, cache="only-if-cached")
    with pytest.raises(ValueError, match="refresh"):
        cached.create_completion("Modes", cache="sometimes")


def test_uncacheable_parameters_go_straight_to_the_model(raw: Any, db: CyllamaDB) -> None:
    from llama_cpp import StoppingCriteriaList

    cached = wrap(raw, db=db)
    stop_never = StoppingCriteriaList([lambda ids, logits: False])
    a = cached.create_completion("Callbacks", max_tokens=4, temperature=0, stopping_criteria=stop_never)
    b = cached.create_completion("Callbacks", max_tokens=4, temperature=0, stopping_criteria=stop_never)
    assert not a["cyllama_db"]["cache_hit"] and not b["cyllama_db"]["cache_hit"]
    assert db.get_cache_stats()["entries"] == 0
    tokens = raw.tokenize(b"Token prompt")
    assert cached.create_completion(tokens, max_tokens=3, temperature=0)["choices"][0]["text"] == (
        raw.create_completion(tokens, max_tokens=3, temperature=0)["choices"][0]["text"]
    )


def test_sampled_calls_follow_the_database_setting(raw: Any, tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "nosample.db", cache_sampled=False) as db:
        cached = wrap(raw, db=db)
        cached.create_completion("Sampled", max_tokens=3, temperature=0.8)
        assert not cached.create_completion("Sampled", max_tokens=3, temperature=0.8)["cyllama_db"]["cache_hit"]
        # a fixed seed makes it deterministic, so it is cached
        cached.create_completion("Sampled", max_tokens=3, temperature=0.8, seed=7)
        assert cached.create_completion("Sampled", max_tokens=3, temperature=0.8, seed=7)["cyllama_db"]["cache_hit"]
        # greedy calls are cached, and an explicit cache=True caches a sampled call
        cached.create_completion("Sampled", max_tokens=3, temperature=0.8, cache=True)
        assert cached.create_completion("Sampled", max_tokens=3, temperature=0.8, cache=True)["cyllama_db"][
            "cache_hit"
        ]


def test_llm_accepts_an_existing_llama(raw: Any, db: CyllamaDB) -> None:
    llm = LLM(raw, db=db, temperature=0, max_tokens=6)
    assert llm.loaded and llm.llama is raw
    r = llm("Adopted")
    assert r.text == raw.create_completion("Adopted", max_tokens=6, temperature=0)["choices"][0]["text"]
    llm.close()  # never frees the caller's Llama
    assert raw.create_completion("Still usable", max_tokens=2)["choices"]
    with pytest.raises(TypeError, match="load options come from the Llama"):
        LLM(raw, db=db, n_ctx=128)


def test_response_to_openai_and_llama_cpp_parameter_names(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = LLM(tiny_model_path, db=db, temperature=0, max_tokens=12)
    r = llm("Stop here", stop=["\n"], echo=False, suffix=None)
    out = r.to_openai()
    assert out["object"] == "text_completion" and out["choices"][0]["text"] == r.text
    assert out["usage"]["completion_tokens"] == r.stats.generated_tokens
    assert llm("Stop here", stop=["\n"]).cache_hit
    assert not llm("Stop here", stop=["\n", "."]).cache_hit
    boolean = llm("A boolean:", response_format={"type": "json_object", "schema": {"type": "boolean"}})
    assert json.loads(boolean.text) in (True, False)
    chat = llm.chat(MSGS, response_format={"type": "json_object"}, max_tokens=12)
    assert chat.to_openai()["choices"][0]["message"]["role"] == "assistant"
    with pytest.raises(TypeError, match="stop and stop_sequences"):
        llm("x", stop=["a"], stop_sequences=["b"])


def test_breaking_out_of_a_stream_releases_the_model(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = LLM(tiny_model_path, db=db, temperature=0, max_tokens=30)
    for i, _piece in enumerate(llm("Break out", stream=True)):
        if i == 1:
            break
    assert llm("Next call, same thread").text  # no ModelBusyError, no GC needed

    def read_two() -> None:
        for i, _piece in enumerate(llm("Return early", stream=True)):
            if i == 1:
                return

    read_two()
    import threading

    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(llm("Other thread").text))
    worker.start()
    worker.join(10)
    assert done, "another thread still waited for the dropped stream"
    assert db.get_cached_response("Break out", tiny_model_path, llm.config) is None
    stream = llm("Deleted", stream=True)
    next(stream)
    del stream
    assert llm("After del").text


def test_waiting_for_a_held_model_times_out_naming_the_holder(tiny_model_path: Path, db: CyllamaDB) -> None:
    import threading

    from cyllama_db import ModelBusyError

    llm = LLM(tiny_model_path, db=db, temperature=0, max_tokens=30, wait_timeout=0.3)
    stream = llm("Held open", stream=True)
    next(stream)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            llm("Blocked")
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=other, name="worker-7")
    worker.start()
    worker.join(10)
    assert errors and isinstance(errors[0], ModelBusyError)
    assert "an open stream in thread 'MainThread'" in str(errors[0]) and "wait_timeout" in str(errors[0])
    with pytest.raises(ModelBusyError, match="unfinished stream"):
        llm("Same thread")
    stream.close()
    assert llm("Free again").text


def test_waiting_for_an_identical_request_has_a_timeout(tiny_model_path: Path, tmp_path: Path) -> None:
    # Two database objects on one file share single-flight; an idle leader
    # does not block the follower for ever.
    import threading

    path = tmp_path / "flight.db"
    with CyllamaDB(path) as db1, CyllamaDB(path) as db2:
        leader_llm = LLM(tiny_model_path, db=db1, temperature=0, max_tokens=20)
        follower_llm = LLM(tiny_model_path, db=db2, temperature=0, max_tokens=20, wait_timeout=0.5)
        leader = leader_llm("Identical request", stream=True)
        next(leader)  # leads the flight, then idles
        out: list[Any] = []
        worker = threading.Thread(target=lambda: out.append(follower_llm("Identical request")))
        worker.start()
        worker.join(30)
        assert out and out[0].text and not out[0].cache_hit
        leader.close()


def test_cached_on_a_wrapped_method_keys_on_the_wrappers_defaults(raw: Any, db: CyllamaDB) -> None:
    from cyllama_db import cached

    short = cached(db=db)(wrap(raw, db=False, temperature=0, max_tokens=2).create_completion)
    long = cached(db=db)(wrap(raw, db=False, temperature=0, max_tokens=8).create_completion)
    assert short.cache_key("Keyed") != long.cache_key("Keyed")
    a, b = short("Keyed"), long("Keyed")
    assert a["usage"]["completion_tokens"] <= 2 < b["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("messages", "error", "needle"),
    [
        ([{"role": "user"}], ValueError, r"messages\[0\] \(user\) needs 'content'"),
        ([{"role": "user", "content": 5}], TypeError, r"messages\[0\]\['content'\] must be a str"),
        ([{"role": "robot", "content": "hi"}], ValueError, "role 'robot'"),
        ([{"role": "user", "content": None}], TypeError, "only an assistant message with tool_calls"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], TypeError, "needs a str 'text'"),
        ([{"role": "user", "content": [7]}], TypeError, r"\['content'\]\[0\] must be a dict"),
        ([{"role": "user", "content": "x", "tool_calls": []}], ValueError, "only assistant messages carry"),
        ([{"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {}}]}],
         ValueError, "needs a non-empty str 'name'"),
        ([{"role": "tool", "content": "42"}], ValueError, "tool_call_id"),
        ([{"role": "user", "content": "x", "name": 3}], TypeError, r"\['name'\] must be a str"),
    ],
)
def test_bad_chat_messages_are_refused_before_generating(
    tiny_model_path: Path, db: CyllamaDB, raw: Any, messages: list[Any], error: type[Exception], needle: str
) -> None:
    llm = LLM(tiny_model_path, db=db, max_tokens=4)
    with pytest.raises(error, match=needle):
        llm.chat(messages)
    with pytest.raises(error, match=needle):
        wrap(raw, db=db).create_chat_completion(messages)
    assert not llm.loaded  # refused before the model was even loaded
    assert db.get_stats_summary()["total_generations"] == 0


def test_tool_round_trip_messages_are_accepted(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = LLM(tiny_model_path, db=db, max_tokens=3, temperature=0)
    messages = [
        {"role": "system", "content": "You call tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert llm.chat(messages).text is not None


def test_bad_grammars_and_schemas_are_errors_never_crashes(tiny_model_path: Path, tmp_path: Path) -> None:
    # In a child process: before the validator, the first of these killed the
    # process with SIGSEGV, which would take the test run down with it.
    script = textwrap.dedent(
        f"""
        from llama_cpp import Llama, LlamaGrammar
        import cyllama_db
        from cyllama_db import LLM, CyllamaDB, GrammarError, JSONSchemaError, chat, complete, wrap
        path = {str(tiny_model_path)!r}
        db = CyllamaDB({str(tmp_path / "g.db")!r})
        llm = LLM(path, db=db, max_tokens=4)
        w = wrap(Llama(path, verbose=False), db=db)
        msgs = [{{"role": "user", "content": "hi"}}]
        bad = ['root ::= (', 'root ::= "ok" <|eos|>', 'root ::= [a-z]{{3,1}}', 'start ::= "x"']
        calls = {{
            "LLM": lambda g: llm("x", grammar=g),
            "LLM.chat": lambda g: llm.chat(msgs, grammar=g),
            "complete": lambda g: complete("x", path, db=db, grammar=g, max_tokens=4),
            "chat": lambda g: chat(msgs, path, db=db, grammar=g, max_tokens=4),
            "wrap": lambda g: w.create_completion("x", grammar=g, max_tokens=4),
            "wrap.chat": lambda g: w.create_chat_completion(msgs, grammar=g, max_tokens=4),
            "wrap.LlamaGrammar": lambda g: w("x", grammar=LlamaGrammar.from_string(g), max_tokens=4),
        }}
        for name, call in calls.items():
            for grammar in bad:
                try:
                    call(grammar)
                except GrammarError as exc:
                    assert isinstance(exc, ValueError) and "grammar" in str(exc)
                    print("refused", name)
                else:
                    raise SystemExit(f"{{name}} accepted {{grammar!r}}")
        schemas = [{{"type": "nonsense"}}, {{"$ref": "#/$defs/missing"}}]
        for schema in schemas:
            for call in (
                lambda s: llm("x", response_format={{"type": "json_object", "schema": s}}),
                lambda s: llm.chat(msgs, response_format={{"type": "json_object", "schema": s}}),
                lambda s: w.create_chat_completion(msgs, response_format={{"type": "json_object", "schema": s}}),
                lambda s: llm.chat(msgs, tools=[{{"type": "function", "function": {{"name": "f", "parameters": s}}}}]),
            ):
                try:
                    call(schema)
                except JSONSchemaError:
                    print("refused schema")
                else:
                    raise SystemExit(f"accepted schema {{schema!r}}")
        good = llm("x", grammar='root ::= "yes" | "no"')
        assert good.text in ("yes", "no"), good.text
        print("valid grammar ok", db.get_stats_summary()["total_generations"])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert lines.count("refused schema") == 8
    assert sum(line.startswith("refused ") and line != "refused schema" for line in lines) == 7 * 4
    assert lines[-1] == "valid grammar ok 1"
