"""The async API: an awaited cache hit next to a sync one, and the event loop's lag under load.

    python benchmarks/aio_bench.py            # needs llama-cpp-python (the tiny test model)
    python benchmarks/aio_bench.py --quick    # fewer iterations

Targets (issue 17): ``await llm(prompt)`` answering from the cache costs at
most 3x the sync ``llm(prompt)`` hit; and while 8 distinct async generations
and a stats summary over 100k rows run together, a task that sleeps 5 ms at
a time is never late by 20 ms or more at p99.

Hits are timed interleaved (sync, async, async through ``asyncio.to_thread``:
the lookup-in-a-thread design this one was chosen against), call by call and
in a turning order, so load from other processes hits all three alike. The lag is measured twice:
through the async API, and with the same work called synchronously from the
loop (what an asyncio app does without it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _util import pct

from cyllama_db import AsyncLLM, CyllamaDB

GENERATIONS = 8
TICK_S = 0.005


def measure_hits(model: str | Path, folder: Path, hits: int) -> dict[str, Any]:
    """Microseconds per hit: ``sync`` (``llm.llm(p)``), ``async`` (``await llm(p)``, the
    lookup on the loop) and ``thread`` (``await asyncio.to_thread(llm.llm, p)``)."""
    db = CyllamaDB(folder / "aio-hits.db")
    llm = AsyncLLM(model, db=db, temperature=0.0, max_tokens=16, n_ctx=512)
    prompts = [f"Async {i}: what is a llama? Answer:" for i in range(8)]

    async def run() -> dict[str, list[float]]:
        for prompt in prompts:
            await llm(prompt)  # generated once (and the model file fingerprinted)
        out: dict[str, list[float]] = {"sync": [], "async": [], "thread": []}
        sync = llm.llm

        async def call(kind: str, prompt: str) -> Any:
            if kind == "sync":
                return sync(prompt)
            if kind == "async":
                return await llm(prompt)
            return await asyncio.to_thread(sync, prompt)

        kinds = ("sync", "async", "thread")
        for i in range(hits):
            prompt = prompts[i % len(prompts)]
            texts = set()
            # The order turns each round: a call right after a thread's has to win the GIL back.
            for kind in kinds[i % 3:] + kinds[: i % 3]:
                start = time.perf_counter()
                response = await call(kind, prompt)
                out[kind].append((time.perf_counter() - start) * 1e6)
                assert response.cache_hit
                texts.add(response.text)
            assert len(texts) == 1
        return out

    try:
        return asyncio.run(run())
    finally:
        db.close()


def _fill(db: CyllamaDB, rows: int) -> None:
    import stats_bench

    stats_bench.fill(db, rows)


def measure_loop_lag(model: str | Path, folder: Path, rows: int, repeat: int = 3) -> dict[str, Any]:
    """How late a 5 ms ticker task wakes up (ms) while 8 distinct generations (32 tokens
    each) and ``get_stats_summary()`` over ``rows`` rows run together: ``async`` through
    ``AsyncLLM`` and ``db.aio``; ``sync`` the same calls made on the loop itself."""
    db = CyllamaDB(folder / f"aio-lag-{rows}.db")
    _fill(db, rows)
    db.get_stats_summary()  # the page cache warm, as in the summary benchmark
    llm = AsyncLLM(model, db=db, temperature=0.0, max_tokens=32, n_ctx=512)

    async def ticker(lags: list[float], stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            lags.append((time.perf_counter() - before - TICK_S) * 1000)

    async def scenario(round_: int, use_async: bool) -> tuple[list[float], float]:
        prompts = [f"Lag {use_async} {round_} {i}: tell me about llamas." for i in range(GENERATIONS)]
        lags: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(lags, stop))
        await asyncio.sleep(TICK_S * 2)
        start = time.perf_counter()
        if use_async:
            await asyncio.gather(*(llm(p) for p in prompts), db.aio.get_stats_summary())
        else:
            for p in prompts:
                llm.llm(p)
            db.get_stats_summary()
            await asyncio.sleep(0)
        wall = time.perf_counter() - start
        stop.set()
        await tick
        return lags, wall

    async def run() -> dict[str, Any]:
        await llm("warm up")  # the model loaded before the timings
        out: dict[str, Any] = {"async": [], "sync": [], "async_wall": [], "sync_wall": []}
        for round_ in range(repeat):
            for use_async in (True, False):
                lags, wall = await scenario(round_, use_async)
                name = "async" if use_async else "sync"
                out[name].extend(lags)
                out[f"{name}_wall"].append(wall)
        return out

    try:
        result = asyncio.run(run())
    finally:
        db.close()
        for f in folder.glob(f"aio-lag-{rows}.db*"):
            f.unlink()
    result["ticks"] = len(result["async"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    from cyllama_db.testing import write_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = write_tiny_llama(folder / "tiny.gguf")
        h = measure_hits(model, folder, 300 if args.quick else 2000)
        sync, aio, thread = (statistics.median(h[k]) for k in ("sync", "async", "thread"))
        print(f"hit p50: sync {sync:.1f} µs, await llm() {aio:.1f} µs ({aio / sync:.2f}x),"
              f" asyncio.to_thread {thread:.1f} µs ({thread / sync:.2f}x)")
        lag = measure_loop_lag(model, folder, 100_000, 2 if args.quick else 5)
        for name in ("async", "sync"):
            values = lag[name]
            print(f"loop lag ({name}): p50 {pct(values, 0.5):.2f} ms, p99 {pct(values, 0.99):.2f} ms,"
                  f" max {max(values):.2f} ms over {len(values)} ticks;"
                  f" the work took {statistics.median(lag[name + '_wall']) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
