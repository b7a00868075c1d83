"""The async API on real llama.cpp (the tiny model): AsyncLLM, complete_async, streams,
single-flight across tasks, cancellation, @cached on async def, wrap()'s acreate_*.

pytest-asyncio is not used: each test runs its coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cyllama_db import (
    AsyncCyllamaDB,
    AsyncLLM,
    AsyncStream,
    CacheMissError,
    CyllamaDB,
    GenerationTimeoutError,
    ModelBusyError,
    cached,
    chat_async,
    complete,
    complete_async,
    stream_complete_async,
    wrap,
)
from cyllama_db.llm import LLM, loaded_model_paths, unload_models

pytestmark = pytest.mark.llama

T = TypeVar("T")
GREEDY = {"temperature": 0.0, "max_tokens": 12}
MSGS = [{"role": "user", "content": "Say hi"}]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CyllamaDB]:
    database = CyllamaDB(tmp_path / "aio.db")
    yield database
    database.close()


@pytest.fixture(autouse=True)
def _no_shared_models() -> Iterator[None]:
    yield
    unload_models()


class Spy:
    """Counts what reaches llama.cpp on a loaded Llama: generation calls, streamed chunks
    and evaluated tokens; ``delay`` seconds per evaluated token make generations long."""

    def __init__(self, llama: Any, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.chunks = 0
        self.evals = 0
        self._depth = 0
        for name in ("create_completion", "create_chat_completion"):
            real = getattr(llama, name)

            def wrapped(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                outer = not self._depth
                if outer:
                    self.calls.append(_name)
                self._depth += 1
                try:
                    out = _real(*args, **kwargs)
                finally:
                    self._depth -= 1
                if outer and kwargs.get("stream"):
                    return self._count(out)
                return out

            setattr(llama, name, wrapped)
        real_eval = llama.eval

        def slow_eval(tokens: Any) -> Any:
            self.evals += 1
            if delay:
                time.sleep(delay)
            return real_eval(tokens)

        llama.eval = slow_eval

    def _count(self, chunks: Any) -> Iterator[Any]:
        for chunk in chunks:
            self.chunks += 1
            yield chunk


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cyllama-db stream" and t.is_alive()]


class CountingExecutor(ThreadPoolExecutor):
    """A default executor that counts the jobs handed to worker threads."""

    def __init__(self) -> None:
        super().__init__(max_workers=8)
        self.submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.submitted += 1
        return super().submit(*args, **kwargs)


# -- the calls -------------------------------------------------------------------------------


def test_await_call_is_the_sync_answer_and_a_hit_the_second_time(tiny_model_path: Path, db: CyllamaDB) -> None:
    expected = complete("The cat", tiny_model_path, db=False, **GREEDY).text

    async def main() -> None:
        async with AsyncLLM(tiny_model_path, db=db, **GREEDY) as llm:
            first = await llm("The cat")
            again = await llm.generate("The cat")
            assert first.text == expected and not first.cache_hit
            assert again.cache_hit and again.text == expected
            assert first.to_openai()["choices"][0]["text"] == expected
            chat = await llm.chat(MSGS)
            assert (await llm.chat([dict(m) for m in MSGS])).cache_hit
            assert chat.kind == "chat"

    run(main())
    summary = db.get_stats_summary()
    assert summary["total_generations"] == 4 and summary["cache_hits"] == 2


def test_same_cache_entries_as_the_sync_api(tiny_model_path: Path, db: CyllamaDB) -> None:
    sync = complete("Shared entry", tiny_model_path, db=db, **GREEDY)

    async def main() -> None:
        hit = await complete_async("Shared entry", tiny_model_path, db=db, **GREEDY)
        assert hit.cache_hit and hit.text == sync.text
        llm = AsyncLLM(tiny_model_path, db=db, **GREEDY)
        assert (await llm("Shared entry")).cache_hit
        assert llm.cache_key("Shared entry") == LLM(tiny_model_path, db=db, **GREEDY).cache_key("Shared entry")
        chat = await chat_async(MSGS, tiny_model_path, db=db, **GREEDY)
        assert not chat.cache_hit
        assert (await chat_async(MSGS, tiny_model_path, db=db, **GREEDY)).cache_hit

    run(main())


def test_per_call_options_and_errors_are_the_sync_ones(tiny_model_path: Path, db: CyllamaDB) -> None:
    async def main() -> None:
        llm = AsyncLLM(tiny_model_path, db=db, **GREEDY)
        with pytest.raises(CacheMissError):
            await llm("Never asked", cache="only-if-cached")
        first = await llm("Options", namespace="alice", ttl="1h")
        assert (await llm("Options", namespace="alice", cache="only-if-cached")).text == first.text
        with pytest.raises(CacheMissError):
            await llm("Options", cache="only-if-cached")  # another namespace
        fresh = await llm("Options", namespace="alice", cache="refresh")
        assert not fresh.cache_hit
        assert not (await llm("Options", cache=False)).cache_hit
        # config= replaces the default config for one call
        short = await llm("Options", {"temperature": 0.0, "max_tokens": 2})
        assert short.stats.generated_tokens is not None and short.stats.generated_tokens <= 2
        with pytest.raises(TypeError, match="stream"):
            await llm("Options", stream=True)
        with pytest.raises(TypeError, match=r"llm\.chat"):
            await llm([{"role": "user", "content": "x"}])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="cache"):
            await llm("Options", cache="sometimes")
        with pytest.raises(TypeError, match="temprature"):
            await llm("Options", temprature=0.5)
        with pytest.raises(TypeError, match="db="):
            await complete_async("p", tiny_model_path, db)  # type: ignore[arg-type]

    run(main())
    assert db.invalidate_cache(namespace="alice") == 1


# -- single-flight ---------------------------------------------------------------------------


def test_twenty_identical_requests_generate_once_without_holding_threads(
    tiny_model_path: Path, db: CyllamaDB
) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, **GREEDY)
    spy = Spy(llm.llm.llama, delay=0.005)  # long enough for all 20 to arrive while it runs
    executor = CountingExecutor()

    async def main() -> list[Any]:
        asyncio.get_running_loop().set_default_executor(executor)
        await llm("warm up")  # the model file is fingerprinted once, in a thread
        spy.calls.clear()
        before = executor.submitted
        results = await asyncio.gather(*[llm("Twenty at once") for _ in range(20)])
        # one worker thread job (the generation); the 19 others awaited a future
        assert executor.submitted - before == 1
        return results

    results = run(main())
    assert spy.calls == ["create_completion"]
    assert len({r.text for r in results}) == 1
    assert sorted(r.cache_hit for r in results) == [False] + [True] * 19
    assert db.get_stats_summary()["total_generations"] == 21


def test_identical_chats_and_streams_share_one_generation(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, **GREEDY)
    spy = Spy(llm.llm.llama, delay=0.005)

    async def read(stream: AsyncStream) -> str:
        return "".join([piece async for piece in stream])

    async def main() -> None:
        chats = await asyncio.gather(*[llm.chat(MSGS) for _ in range(5)])
        assert len({c.text for c in chats}) == 1 and spy.calls == ["create_chat_completion"]
        spy.calls.clear()
        texts = await asyncio.gather(read(llm.stream("Streamed once")), read(llm.stream("Streamed once")),
                                     llm("Streamed once"))
        assert spy.calls == ["create_completion"]
        assert texts[0] == texts[1] == texts[2].text  # type: ignore[union-attr]

    run(main())


def test_distinct_requests_wait_for_the_model_without_threads_and_all_succeed(
    tiny_model_path: Path, db: CyllamaDB
) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, **GREEDY)
    spy = Spy(llm.llm.llama)

    async def main() -> None:
        results = await asyncio.gather(*[llm(f"Distinct {i}") for i in range(6)])
        assert not any(r.cache_hit for r in results)

    run(main())
    assert spy.calls == ["create_completion"] * 6


def test_a_cancelled_leader_lets_its_followers_start_over(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=40)
    spy = Spy(llm.llm.llama, delay=0.01)

    async def main() -> None:
        leader = asyncio.create_task(llm("Leader goes"))
        await asyncio.sleep(0.05)
        follower = asyncio.create_task(llm("Leader goes"))
        await asyncio.sleep(0.05)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        response = await follower
        assert not response.cache_hit and response.finish_reason == "length"

    run(main())
    assert spy.calls == ["create_completion", "create_completion"]


def test_a_follower_waits_at_most_wait_timeout(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=60, wait_timeout=0.1)
    Spy(llm.llm.llama, delay=0.02)  # the leader takes over a second

    async def main() -> None:
        leader = asyncio.create_task(llm("Slow leader"))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        # it waits 0.1 s for the leader, then (going alone) 0.1 s for the model the leader holds
        with pytest.raises(ModelBusyError, match="a generation in task"):
            await llm("Slow leader")
        assert time.perf_counter() - started < 1
        assert not (await leader).cache_hit

    run(main())


# -- cancellation ----------------------------------------------------------------------------


def _not_cached(llm: AsyncLLM, prompt: str, **overrides: Any) -> bool:
    async def probe() -> bool:
        try:
            await llm(prompt, cache="only-if-cached", **overrides)
        except CacheMissError:
            return True
        return False

    return run(probe())


def test_leaving_a_stream_early_stops_generation_and_caches_nothing(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=200, wait_timeout=2)
    spy = Spy(llm.llm.llama)

    async def main() -> float:
        stream = llm.stream("Stop me early")
        received = 0
        async for _piece in stream:
            received += 1
            if received == 3:
                break
        produced = spy.chunks
        del stream  # dropped: the producer closes the generation
        started = time.perf_counter()
        after = await llm("Right after")  # the model is free again
        assert not after.cache_hit
        assert produced <= received + 1  # chunks are made on demand
        assert spy.chunks <= received + 2
        return time.perf_counter() - started

    elapsed = run(main())
    assert elapsed < 1.5
    assert _not_cached(llm, "Stop me early")
    history = db.get_generation_history(limit=10)
    assert "cancelled" in {row["finish_reason"] for row in history}
    assert not _stream_threads()


def test_cancelling_a_task_mid_stream(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=200, wait_timeout=2)
    spy = Spy(llm.llm.llama, delay=0.01)
    seen: list[str] = []

    async def consume() -> None:
        async for piece in llm.stream("Cancel the task"):
            seen.append(piece)

    async def main() -> None:
        task = asyncio.create_task(consume())
        while len(seen) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        at_cancel = spy.evals
        again = await asyncio.wait_for(llm("Next one"), 5)  # no ModelBusyError: released
        assert again.text
        assert spy.chunks <= len(seen) + 2
        assert at_cancel <= len(seen) + 3  # prompt eval + one per token, and the one being made

    run(main())
    assert _not_cached(llm, "Cancel the task")
    assert not _stream_threads()


def test_cancelling_an_awaited_generation_stops_it_within_a_token(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=200, wait_timeout=2)
    spy = Spy(llm.llm.llama, delay=0.02)

    async def main() -> None:
        task = asyncio.create_task(llm("Cancel me whole"))
        while spy.evals < 4:
            await asyncio.sleep(0.005)
        task.cancel()
        at_cancel = spy.evals
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.perf_counter()
        assert (await llm("Then this", max_tokens=3)).text
        assert time.perf_counter() - started < 1.5
        # the next call's prompt eval and tokens came after at most two more of the cancelled one
        assert spy.calls == ["create_completion", "create_completion"]
        assert at_cancel <= 6

    run(main())
    assert _not_cached(llm, "Cancel me whole")
    cancelled = [r for r in db.get_generation_history(limit=10) if r["finish_reason"] == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["generated_tokens"] < 20


def test_wait_for_timeouts_stop_completions_and_chats(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=200, wait_timeout=2)
    spy = Spy(llm.llm.llama, delay=0.02)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(llm("Too slow"), 0.15)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(llm.chat([{"role": "user", "content": "Too slow"}]), 0.15)

        async def read() -> None:
            async for _piece in llm.stream("Too slow stream"):
                pass

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(read(), 0.15)
        evals = spy.evals
        await asyncio.sleep(0.2)
        assert spy.evals <= evals + 2  # nothing keeps generating in the background
        spy_free = AsyncLLM(tiny_model_path, db=db, **GREEDY)
        assert (await asyncio.wait_for(spy_free("Fine"), 10)).text

    run(main())
    assert _not_cached(llm, "Too slow")
    assert _not_cached(llm, "Too slow stream")
    assert db.get_cached_response([{"role": "user", "content": "Too slow"}], llm.model_path,
                                  llm.config) is None


def test_stream_timeout_per_chunk(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=100)
    Spy(llm.llm.llama, delay=0.05)

    async def main() -> None:
        with pytest.raises(GenerationTimeoutError, match="timeout"):
            async for _piece in llm.stream("Slow chunks", timeout=0.01):
                pass
        with pytest.raises(ValueError, match="timeout"):
            llm.stream("x", timeout=-1)

    run(main())
    assert _not_cached(llm, "Slow chunks")


def test_the_loop_keeps_running_while_a_model_generates(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=60)
    Spy(llm.llm.llama, delay=0.01)  # ~0.6 s of generation per call

    async def main() -> float:
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - before - 0.005)

        tick = asyncio.create_task(ticker())
        await asyncio.gather(llm("Busy one"), llm.chat(MSGS),
                             _drain(llm.stream("Busy two")))
        done.set()
        await tick
        return max(lags)

    assert run(main()) < 0.25  # the generations take seconds; on the loop they would stall it


async def _drain(stream: AsyncStream) -> str:
    return "".join([piece async for piece in stream])


# -- streams and models ----------------------------------------------------------------------


def test_streams_replay_hits_and_report_like_sync_streams(tiny_model_path: Path, db: CyllamaDB) -> None:
    async def main() -> None:
        llm = AsyncLLM(tiny_model_path, db=db, **GREEDY)
        stream = llm.stream("Stream me")
        assert not stream.cache_hit and stream.response is None
        text = await _drain(stream)
        assert stream.response is not None and stream.response.text == text == stream.text
        replay = llm.stream("Stream me")
        assert await _drain(replay) == text and replay.cache_hit
        async with llm.stream_chat(MSGS) as chat:
            pieces = [piece async for piece in chat]
        assert "".join(pieces) == (await llm.chat(MSGS)).text
        module = [p async for p in stream_complete_async("Stream me", tiny_model_path, db=db, **GREEDY)]
        assert "".join(module) == text

    run(main())


def test_the_same_task_with_an_open_stream_gets_model_busy_at_once(tiny_model_path: Path, db: CyllamaDB) -> None:
    async def main() -> None:
        llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=50, wait_timeout=0.2)
        stream = llm.stream("Held open")
        await stream.__anext__()
        started = time.perf_counter()
        with pytest.raises(ModelBusyError, match="this task"):
            await llm("Other prompt")
        assert time.perf_counter() - started < 0.1
        # another task waits wait_timeout, then gives up naming the holder
        with pytest.raises(ModelBusyError, match="open stream in task"):
            await asyncio.create_task(llm("Other prompt"))
        await stream.aclose()
        assert (await llm("Other prompt")).text

    run(main())


def test_a_stream_dropped_inside_an_async_generator_is_not_busy(tiny_model_path: Path, db: CyllamaDB) -> None:
    async def numbered(stream: AsyncStream) -> Any:
        i = 0
        async for piece in stream:
            yield i, piece
            i += 1

    async def main() -> None:
        llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=100, wait_timeout=5)
        async for i, _piece in numbered(llm.stream("Wrapped stream")):
            if i == 2:
                break  # the wrapper is finalised by the loop a moment later
        started = time.perf_counter()
        assert (await llm("Straight after", max_tokens=3)).text
        assert time.perf_counter() - started < 2

    run(main())


def test_async_with_closes_streams_and_frees_the_model(tiny_model_path: Path, db: CyllamaDB) -> None:
    async def main() -> tuple[AsyncLLM, AsyncStream]:
        async with AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=100) as llm:
            stream = llm.stream("Open at exit")
            await stream.__anext__()
            assert llm.loaded and _stream_threads()
        assert not llm.loaded
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        return llm, stream

    llm, _stream = run(main())
    assert not _stream_threads()
    assert _not_cached(llm, "Open at exit")
    # a later call loads the model again
    assert run(llm("Again")).text


# -- @cached on async def --------------------------------------------------------------------


def test_cached_async_function_runs_once_and_persists(db: CyllamaDB) -> None:
    calls: list[int] = []

    @cached(db=db)
    async def slow_square(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.05)
        return x * x

    assert inspect.iscoroutinefunction(slow_square.__call__)
    assert asyncio.iscoroutinefunction(slow_square)

    async def main() -> list[int]:
        return list(await asyncio.gather(*[slow_square(4) for _ in range(10)], slow_square(5)))

    assert run(main()) == [16] * 10 + [25]
    assert sorted(calls) == [4, 5]
    assert run(slow_square(4)) == 16 and sorted(calls) == [4, 5]  # from the database, another loop
    assert slow_square.invalidate(4) and run(slow_square(4)) == 16 and sorted(calls) == [4, 4, 5]


def test_cached_async_cancelled_and_failing_calls(db: CyllamaDB) -> None:
    calls: list[str] = []

    @cached(db=db)
    async def fetch(name: str) -> str:
        calls.append(name)
        await asyncio.sleep(0.1)
        if name == "bad":
            raise ValueError("no such thing")
        return name.upper()

    async def main() -> None:
        first = asyncio.create_task(fetch("a"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(fetch("a"))
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == "A"  # ran again for the follower
        results = await asyncio.gather(fetch("bad"), fetch("bad"), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)

    run(main())
    assert calls == ["a", "a", "bad"]
    assert run(fetch("a")) == "A" and calls.count("a") == 2


def test_cached_async_method(db: CyllamaDB) -> None:
    class Greeter:
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        def __cache_key__(self) -> str:
            return self.greeting

        @cached(db=db)
        async def greet(self, name: str) -> str:
            return f"{self.greeting}, {name}"

    assert run(Greeter("Hi").greet("Ann")) == "Hi, Ann"
    assert run(Greeter("Yo").greet("Ann")) == "Yo, Ann"
    assert Greeter("Hi").greet.cache_key("Ann") != Greeter("Yo").greet.cache_key("Ann")


def test_cached_async_function_calling_the_async_llm(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, **GREEDY)

    @cached(db=db)
    async def summarise(model: AsyncLLM, text: str) -> str:
        return (await model(f"Summary of {text}:")).text

    async def main() -> None:
        first = await summarise(llm, "the news")
        assert await summarise(llm, "the news") == first

    run(main())


# -- wrap()'s acreate_* ----------------------------------------------------------------------


def test_wrap_acreate_completion_and_chat(tiny_model_path: Path, db: CyllamaDB) -> None:
    from llama_cpp import Llama

    llama = Llama(str(tiny_model_path), n_ctx=512, verbose=False)
    try:
        cached_llama = wrap(llama, db=db)
        expected = cached_llama.create_completion("Wrapped", max_tokens=8, temperature=0)
        spy = Spy(llama)

        async def main() -> None:
            hit = await cached_llama.acreate_completion("Wrapped", max_tokens=8, temperature=0)
            assert hit["cyllama_db"]["cache_hit"] and hit["choices"][0]["text"] == expected["choices"][0]["text"]
            outs = await asyncio.gather(*[
                cached_llama.acreate_chat_completion(MSGS, max_tokens=8, temperature=0) for _ in range(5)
            ])
            assert spy.calls == ["create_chat_completion"]
            assert len({o["choices"][0]["message"]["content"] for o in outs}) == 1
            assert outs[0]["object"] == "chat.completion"
            chunks = [c async for c in await cached_llama.acreate_completion(
                "Chunks please", max_tokens=6, temperature=0, stream=True)]
            assert chunks and all("cyllama_db" in c for c in chunks)
            assert not chunks[0]["cyllama_db"]["cache_hit"]
            replay = [c async for c in await cached_llama.acreate_completion(
                "Chunks please", max_tokens=6, temperature=0, stream=True)]
            assert replay[0]["cyllama_db"]["cache_hit"]
            assert "".join(c["choices"][0]["text"] for c in replay) == "".join(
                c["choices"][0]["text"] for c in chunks)
            chat_chunks = [c async for c in await cached_llama.acreate_chat_completion(
                MSGS, max_tokens=6, temperature=0, stream=True)]
            assert chat_chunks[0]["object"] == "chat.completion.chunk"
            # a token-list prompt goes to the model uncached, still off the loop
            tokens = llama.tokenize(b"Tokens")
            direct = await cached_llama.acreate_completion(tokens, max_tokens=4, temperature=0)
            assert "cyllama_db" not in direct
            with pytest.raises(TypeError, match="create_completion"):
                await cached_llama.acreate_completion("x", no_such_param=1)

        run(main())
    finally:
        llama.close()


# -- the store off the loop ------------------------------------------------------------------


def test_async_db_runs_store_operations_in_a_thread(db: CyllamaDB, tmp_path: Path) -> None:
    db.record_generation("m.gguf", {"text": "x"})
    db.set_config("k", 1)
    threads: list[int] = []
    real = db.get_stats_summary

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    db.get_stats_summary = spy  # type: ignore[method-assign]

    async def main() -> None:
        aio = db.aio
        assert isinstance(aio, AsyncCyllamaDB) and aio.path == db.path
        summary = await aio.get_stats_summary()
        assert summary["total_generations"] == 1
        assert threads and threads[0] != threading.get_ident()
        assert await aio.get_config("k") == 1  # any other method, as a coroutine
        assert len(await aio.get_generation_history(limit=5)) == 1
        await aio.log("INFO", "from a task")
        assert any(r["message"] == "from a task" for r in await aio.get_logs())
        await aio.export_database(tmp_path / "copy.db")
        other = CyllamaDB(tmp_path / "other.db")
        try:
            await other.aio.import_database(tmp_path / "copy.db")
            assert other.get_stats_summary()["total_generations"] == 1
        finally:
            other.close()
        await aio.cleanup_cache()
        await aio.vacuum()
        with pytest.raises(AttributeError):
            aio.no_such_method  # noqa: B018

    run(main())
    with pytest.raises(TypeError, match="db"):
        AsyncCyllamaDB("file.db")  # type: ignore[arg-type]


def test_a_hit_never_leaves_the_loop(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = AsyncLLM(tiny_model_path, db=db, **GREEDY)
    executor = CountingExecutor()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        await llm("Hit me")
        before = executor.submitted
        for _ in range(20):
            assert (await llm("Hit me")).cache_hit
        assert executor.submitted == before

    run(main())


def test_nothing_outlives_the_event_loop(tiny_model_path: Path, db: CyllamaDB) -> None:
    import gc

    from cyllama_db import aio

    llm = AsyncLLM(tiny_model_path, db=db, temperature=0.0, max_tokens=100)
    Spy(llm.llm.llama, delay=0.02)

    async def main(model: AsyncLLM) -> None:
        with pytest.raises(GenerationTimeoutError):
            async for _piece in model.stream("Left behind", timeout=0.001):
                pass  # the loop closes while the producer still finishes its chunk

    run(main(llm))
    path = llm.model_path
    del llm
    deadline = time.monotonic() + 5
    while _stream_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    gc.collect()
    assert not _stream_threads()
    assert path not in loaded_model_paths()  # the model was freed with its LLM
    assert not aio._states  # no event loop is kept alive by its gates or flights
