"""Statistics store: record_generation cost, and summary time as the table grows.

    python benchmarks/stats_bench.py            # 10k, 100k and 1M rows
    python benchmarks/stats_bench.py --quick    # 10k and 100k only

1. ``record_generation`` p50/p99 next to a raw ``INSERT`` of the same row on
   the same file (the baseline: what the table itself costs), and a raw
   ``INSERT`` into a copy of the table without indexes and rollup trigger.
   Then a cache hit's ``record_generation(..., cache_hit=True)`` (buffered,
   written in batches) next to one plain indexed ``SELECT`` on the same file,
   also while another connection holds the write lock.
2. ``get_stats_summary`` at 10k, 100k and 1M rows (spread over 90 days,
   4 models, 10% cache hits), next to the plain SQL a summary without the
   rollup table would run (GROUP BY model, GROUP BY local day, ORDER BY
   latency for percentiles). Target: <= 250 ms at 1M rows.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _util import header, interleaved, row, timings_us

from cyllama_db import CyllamaDB

MODELS = [f"/models/model-{i}.gguf" for i in range(4)]
DAY = 86400.0
SPAN_DAYS = 90
INSERT_SQL = (
    "INSERT INTO stats (session_id, model_path, model_name, prompt_tokens, generated_tokens,"
    " total_tokens, prompt_time_ms, generation_time_ms, total_time_ms, tokens_per_second,"
    " temperature, max_tokens, finish_reason, cache_hit, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

RESPONSE = {
    "finish_reason": "stop",
    "stats": {
        "prompt_tokens": 12,
        "generated_tokens": 64,
        "total_tokens": 76,
        "prompt_time_ms": 15.0,
        "generation_time_ms": 900.0,
        "total_time_ms": 915.0,
        "tokens_per_second": 71.1,
    },
}
CONFIG = {"temperature": 0.7, "max_tokens": 128}


def measure_record(folder: str, n: int) -> dict[str, list[float]]:
    """Time one generation's row and one cache hit's row; every list is in microseconds.

    Keys: ``raw`` (a raw INSERT of the same row into ``stats``, own
    transaction), ``bare`` (the same into a copy of the table without indexes
    and trigger), ``record`` (``record_generation``), the three interleaved;
    then ``select`` (one indexed SELECT) and ``hit`` (``record_generation(...,
    cache_hit=True)``), interleaved; ``locked``: ``hit`` while another
    connection holds the write lock.
    """
    db = CyllamaDB(os.path.join(folder, "record.db"))
    path = MODELS[0]
    db.record_generation(path, RESPONSE, CONFIG)  # warm the model-name cache
    raw_row = ("s", path, "model-0.gguf", 12, 64, 76, 15.0, 900.0, 915.0, 71.1, 0.7, 128, "stop", 0)
    with db.pool.transaction() as conn:
        # The same columns without indexes or rollup trigger: what they cost.
        conn.execute("CREATE TABLE bare AS SELECT * FROM stats WHERE 0")
    bare_sql = INSERT_SQL.replace("INTO stats", "INTO bare")

    def raw(i: int) -> None:
        with db.pool.transaction() as conn:
            conn.execute(INSERT_SQL, (*raw_row, time.time()))

    def bare(i: int) -> None:
        with db.pool.transaction() as conn:
            conn.execute(bare_sql, (*raw_row, time.time()))

    def record(i: int) -> None:
        db.record_generation(path, RESPONSE, CONFIG)

    def select(i: int) -> None:
        with db.pool.read() as conn:
            conn.execute(
                "SELECT id FROM stats WHERE model_path = ? ORDER BY created_at DESC LIMIT 1",
                (path,),
            ).fetchone()

    def hit(i: int) -> None:
        db.record_generation(path, RESPONSE, CONFIG, cache_hit=True)

    try:
        raw(0)
        bare(0)
        # Interleaved (same i, same moment): load from other processes hits all alike.
        base, bare_t, rec = interleaved([raw, bare, record], n)
        sel, hits = interleaved([select, hit], n)
        db.stats.flush()
        other = sqlite3.connect(os.path.join(folder, "record.db"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        try:
            locked = timings_us(hit, n)
        finally:
            other.execute("ROLLBACK")
            other.close()
    finally:
        db.close()
    return {"raw": base, "bare": bare_t, "record": rec, "select": sel, "hit": hits, "locked": locked}


def bench_record(folder: str, n: int) -> None:
    t = measure_record(folder, n)
    print(header(f"one generation row, file database ({n} calls each)"))
    print(row("raw INSERT into stats (own transaction)", t["raw"]))
    print(row("raw INSERT, table without indexes/trigger", t["bare"], t["raw"]))
    print(row("record_generation(model, response, config)", t["record"], t["raw"]))
    print(header(f"one cache hit's row, file database ({n} calls each)"))
    print(row("indexed SELECT on stats (one row)", t["select"]))
    print(row("record_generation(..., cache_hit=True)", t["hit"], t["select"]))
    print(row("  the same, file write-locked elsewhere", t["locked"], t["select"]))


def fill(db: CyllamaDB, n: int, seed: int = 0) -> None:
    """n rows in one transaction with executemany (the trigger keeps the rollup)."""
    rng = random.Random(seed)
    end = time.time()
    start = end - SPAN_DAYS * DAY

    def rows() -> Iterator[tuple[Any, ...]]:
        for _ in range(n):
            model = rng.randrange(len(MODELS))
            hit = 1 if rng.random() < 0.1 else 0
            gen = rng.randint(8, 256)
            total_ms = rng.lognormvariate(6.5, 0.6) * (1 + model * 0.3)
            yield (
                "bench",
                MODELS[model],
                f"model-{model}",
                rng.randint(5, 200),
                gen,
                gen + 50,
                total_ms * 0.05,
                total_ms * 0.95,
                total_ms,
                gen / (total_ms / 1000),
                0.7,
                256,
                "stop",
                hit,
                rng.uniform(start, end),
            )

    with db.pool.transaction() as conn:
        conn.executemany(INSERT_SQL, rows())


def naive_summary(db: CyllamaDB) -> dict[str, Any]:
    """What a summary costs without the rollup: the same answers from the raw rows.

    Returns ``by_model`` ({path: (generations, cache_hits, tokens, avg tps)}),
    ``by_day`` ([(local date, generations, cache_hits, tokens, avg tps)]) and
    ``latency`` ({path: (p50, p95)} of total_time_ms over real generations).
    """
    with db.pool.read() as conn:
        by_model = conn.execute(
            "SELECT model_path, COUNT(*), SUM(cache_hit), SUM(total_tokens),"
            " AVG(CASE WHEN cache_hit = 0 THEN tokens_per_second END)"
            " FROM stats GROUP BY model_path"
        ).fetchall()
        by_day = conn.execute(
            "SELECT date(created_at, 'unixepoch', 'localtime') AS d, COUNT(*), SUM(cache_hit),"
            " SUM(total_tokens), AVG(CASE WHEN cache_hit = 0 THEN tokens_per_second END)"
            " FROM stats GROUP BY d ORDER BY d"
        ).fetchall()
        latency: dict[str, tuple[float, float]] = {}
        for (model, *_rest) in by_model:
            values = [
                r[0]
                for r in conn.execute(
                    "SELECT total_time_ms FROM stats WHERE model_path = ? AND cache_hit = 0"
                    " ORDER BY total_time_ms",
                    (model,),
                )
            ]
            if len(values) >= 2:
                cuts = statistics.quantiles(values, n=20, method="inclusive")
                latency[model] = (cuts[9], cuts[18])
    return {
        "by_model": {r[0]: tuple(r[1:]) for r in by_model},
        "by_day": [tuple(r) for r in by_day],
        "latency": latency,
    }


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return statistics.median(out)


def measure_summary(folder: str, n: int, repeat: int) -> dict[str, float]:
    """Fill a database with ``n`` rows, then time summaries (median of ``repeat``, in ms).

    Keys: ``fill_s`` (seconds), ``full`` (``get_stats_summary()``), ``week``
    (last 7 days), ``one`` (one model), ``hist`` (a 100-row history page),
    ``naive`` (:func:`naive_summary`, median of ``max(1, repeat // 2)``),
    ``scrape`` (``prometheus_text(db)``: a ``/metrics`` scrape).
    """
    db = CyllamaDB(os.path.join(folder, f"summary-{n}.db"))
    try:
        started = time.perf_counter()
        fill(db, n)
        fill_s = time.perf_counter() - started
        db.get_stats_summary()  # warm the page cache
        naive_summary(db)
        full = median_ms(db.get_stats_summary, repeat)
        week = median_ms(lambda: db.get_stats_summary(since=timedelta(days=7)), repeat)
        one = median_ms(lambda: db.get_stats_summary(model_path=MODELS[1]), repeat)
        hist = median_ms(lambda: db.get_generation_history(limit=100, model_path=MODELS[2]), repeat)
        naive = median_ms(lambda: naive_summary(db), max(1, repeat // 2))
        from cyllama_db.prometheus import prometheus_text

        prometheus_text(db)
        scrape = median_ms(lambda: prometheus_text(db), repeat)
    finally:
        db.close()
    return {"fill_s": fill_s, "full": full, "week": week, "one": one, "hist": hist, "naive": naive,
            "scrape": scrape}


def bench_summary(folder: str, sizes: list[int], repeat: int) -> None:
    print(
        f"\nget_stats_summary over N rows ({SPAN_DAYS} days, {len(MODELS)} models, median of {repeat})"
    )
    print(
        f"{'rows':>9} {'fill s':>7} {'summary ms':>11} {'last 7d ms':>11} {'1 model ms':>11}"
        f" {'history ms':>11} {'naive SQL ms':>13} {'speed-up':>9}"
    )
    for n in sizes:
        t = measure_summary(folder, n, repeat)
        print(
            f"{n:>9} {t['fill_s']:>7.1f} {t['full']:>11.1f} {t['week']:>11.1f} {t['one']:>11.1f}"
            f" {t['hist']:>11.2f} {t['naive']:>13.1f} {t['naive'] / t['full']:>8.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1M-row case")
    parser.add_argument("--calls", type=int, default=2000, help="record_generation calls")
    parser.add_argument("--repeat", type=int, default=7, help="summary repetitions")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as folder:
        bench_record(folder, args.calls)
        bench_summary(folder, sizes, args.repeat)


if __name__ == "__main__":
    main()
