"""Cache hits per second with 1, 4 and 8 client processes, on SQLite and on PostgreSQL.

    python benchmarks/scale_bench.py              # SQLite, and PostgreSQL on a throwaway server
    python benchmarks/scale_bench.py --quick      # shorter windows
    CYLLAMA_BENCH_PG_URL=postgresql://... python benchmarks/scale_bench.py   # an existing server

One warm cache of ``entries`` entries (~1 KB each, as in cache_bench) per
engine. Each client is its own process (``spawn``) with its own
``CyllamaDB`` on the same file or database, as separate workers or
machines would be; it makes a few hits to warm up, waits until every
client is ready, then makes hits (random live keys, every one asserted a
hit) for a fixed time. The figure is the clients' hits per second summed;
each engine's baseline is its own one-process figure, so the ratio is the
speed-up. Hit counts are written behind, as always, so the writes they
cause are part of what is measured. On PostgreSQL the server runs on the
same machine and shares its cores with the clients.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

PROCESSES = (1, 4, 8)
ENTRIES = 10_000
SECONDS = 3.0
START_TIMEOUT = 180.0  # seconds for every client to start (8 interpreters on 2 busy cores)


def _prompts(entries: int) -> list[str]:
    from cache_bench import PROMPT_CHARS, _text

    rng = random.Random(0)
    return [f"{i}: " + _text(rng, PROMPT_CHARS) for i in range(entries)]


def fill(target: dict[str, Any], model: str, entries: int) -> None:
    """Store ``entries`` entries (the prompts of :func:`_prompts`) in the cache ``target`` opens."""
    from cache_bench import RESPONSE_CHARS, _text

    from cyllama_db import CyllamaDB, GenerationConfig, Response

    rng = random.Random(1)
    bodies = [_text(rng, RESPONSE_CHARS) for _ in range(64)]
    config = GenerationConfig(temperature=0.0, max_tokens=32)
    with CyllamaDB(**target, max_cache_size_mb=1000) as db:
        for i, prompt in enumerate(_prompts(entries)):
            db.cache_response(prompt, model, config, Response(bodies[i % 64], "length", model))


def _client(
    target: dict[str, Any], model: str, entries: int, seconds: float, index: int,
    barrier: Any, results: Any,
) -> None:
    """One client process: warm up, wait for the others, hit for ``seconds``; puts (index, hits, elapsed)."""
    try:
        from cyllama_db import CyllamaDB, GenerationConfig

        prompts = _prompts(entries)
        rng = random.Random(100 + index)
        order = [rng.randrange(entries) for _ in range(4096)]
        config = GenerationConfig(temperature=0.0, max_tokens=32)
        db = CyllamaDB(**target)
        try:
            get = db.get_cached_response
            for i in range(50):
                assert get(prompts[order[i]], model, config) is not None
            barrier.wait(START_TIMEOUT)
            hits = 0
            start = now = time.perf_counter()
            deadline = start + seconds
            while now < deadline:
                if get(prompts[order[hits & 4095]], model, config) is None:
                    raise AssertionError("a warm entry was a miss")
                hits += 1
                now = time.perf_counter()
            results.put((index, hits, now - start, None))
        finally:
            db.close()
    except BaseException as exc:  # the parent raises it
        barrier.abort()
        results.put((index, 0, 0.0, f"{type(exc).__name__}: {exc}"))


def hits_per_second(target: dict[str, Any], model: str, entries: int, processes: int, seconds: float) -> float:
    """The summed hits per second of ``processes`` clients on the warm cache ``target`` opens.

    Raises RuntimeError if a client fails or dies (or they do not all start
    within ``START_TIMEOUT``).
    """
    import queue

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(target, model, entries, seconds, i, barrier, results), daemon=True)
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        rates: dict[int, float] = {}
        deadline = time.monotonic() + START_TIMEOUT + seconds + 60
        while len(rates) < processes:
            try:
                index, hits, elapsed, error = results.get(timeout=0.5)
            except queue.Empty:
                dead = [i for i, proc in enumerate(procs) if i not in rates and proc.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"client {dead[0]} of {processes} died (exit code {procs[dead[0]].exitcode})"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {processes} clients did not finish in time") from None
                continue
            if error is not None:
                raise RuntimeError(f"client {index} of {processes} failed: {error}")
            rates[index] = hits / elapsed
        return sum(rates.values())
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def measure(
    target: dict[str, Any], model: str, entries: int = ENTRIES, seconds: float = SECONDS,
    processes: tuple[int, ...] = PROCESSES,
) -> dict[int, float]:
    """Fill the cache ``target`` opens (``path=`` or ``url=``) with ``entries``; then
    hits per second summed over each number of client ``processes``."""
    fill(target, model, entries)
    try:
        return {n: hits_per_second(target, model, entries, n, seconds) for n in processes}
    finally:
        if "url" in target:  # a server's database outlives the run: take our entries out
            from cyllama_db import CyllamaDB

            with CyllamaDB(**target) as db:
                db.invalidate_cache(model_path=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1.5 s per measurement instead of 3")
    args = parser.parse_args()
    seconds = 1.5 if args.quick else SECONDS
    from cache_bench import _model_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = str(_model_file(folder))
        engines: list[tuple[str, dict[str, Any]]] = [("SQLite", {"path": str(folder / "scale.db")})]
        server = None
        try:
            import psycopg  # noqa: F401
        except ImportError:
            print("PostgreSQL: skipped: psycopg not installed (pip install '.[postgres]')")
        else:
            import pg_bench

            url, server, how = pg_bench.server_url(tmp)
            if url is None:
                print(f"PostgreSQL: skipped: {how}")
            else:
                engines.append(("PostgreSQL", {"url": url}))
        try:
            for name, target in engines:
                figures = measure(target, model, seconds=seconds)
                one = figures[1]
                line = ", ".join(f"{n} process{'es' if n > 1 else ''}: {v:,.0f} hits/s ({v / one:.2f}x)"
                                 for n, v in figures.items())
                print(f"{name}: {line}")
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
