"""PostgreSQL: the response cache against raw psycopg on the same server, in the same run.

    python benchmarks/pg_bench.py                 # starts a throwaway server (tests/pgserver.py)
    python benchmarks/pg_bench.py --quick         # fewer iterations
    CYLLAMA_BENCH_PG_URL=postgresql://... python benchmarks/pg_bench.py   # an existing server

Issue 16's targets: a cache hit (``db.get_cached_response``) <= 1.5x a raw
``SELECT`` by key, and a put (``db.cache_response``) <= 2x a raw upsert.
The baselines: one psycopg connection in autocommit on a table keyed like
the response cache (sha256 hex keys, ~1 KB values), ``SELECT value WHERE
key = %s`` and ``INSERT ... ON CONFLICT DO UPDATE`` (autocommit: its own
transaction in one round trip, the least a put can cost). The cache is a
``CyllamaDB(url=...)`` warmed with the same number of entries. Also timed:
the same bare statements through
:class:`~cyllama_db.db.postgres.PostgresBackend` (``read()`` /
``transaction()`` and the sqlite3-style wrapper), what the storage seam
costs before any store logic. Every pair is timed interleaved, call by
call, so load from other processes hits both alike. Needs psycopg
(``.[postgres]``) and a server: without either it says so and exits 0.

An existing server (``$CYLLAMA_BENCH_PG_URL``, else ``$CYLLAMA_TEST_PG_URL``)
should name a scratch database: the benchmark creates the library's tables
there, and its table ``bench_kv``; it removes its own cache entries and that
table afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # pgserver
from _util import header, interleaved, row, timings_us

ENTRIES = 10_000
N = 5000
VALUE_BYTES = 1000  # prompt + response ~ 1 KB per entry, as in cache_bench
NO_SERVER = "no PostgreSQL server binaries (initdb, pg_ctl); set CYLLAMA_BENCH_PG_URL to a server"


def _keys(n: int) -> list[str]:
    return [hashlib.sha256(f"k{i}".encode()).hexdigest() for i in range(n)]


def measure(url: str, n: int = N, entries: int = ENTRIES) -> dict[str, list[float]]:
    """Per-call microseconds on the database ``url`` (its table ``bench_kv`` is replaced).

    Keys: ``raw_select`` / ``seam_select`` (interleaved) and ``raw_upsert`` /
    ``seam_upsert`` (interleaved).
    """
    import psycopg

    from cyllama_db.db.postgres import PostgresBackend

    keys = _keys(entries + 2 * n)
    value = "x" * VALUE_BYTES
    raw = psycopg.connect(url, autocommit=True)
    raw.execute("DROP TABLE IF EXISTS bench_kv")
    raw.execute("CREATE TABLE bench_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, hits BIGINT NOT NULL DEFAULT 0)")
    with raw.cursor() as cur:
        cur.executemany("INSERT INTO bench_kv (key, value) VALUES (%s, %s)", [(keys[i], value) for i in range(entries)])
    raw.execute("ANALYZE bench_kv")
    order = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=4).digest(), "big") % entries for i in range(n)]

    def raw_select(i: int) -> None:
        assert raw.execute("SELECT value FROM bench_kv WHERE key = %s", (keys[order[i]],)).fetchone()

    upsert_pg = (
        "INSERT INTO bench_kv (key, value) VALUES (%s, %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )

    def raw_upsert(i: int) -> None:
        with raw.transaction():  # BEGIN ... COMMIT, as a put's own transaction
            raw.execute(upsert_pg, (keys[entries + i], value))

    backend = PostgresBackend(url, busy_timeout=30)
    upsert_seam = backend.upsert("bench_kv", ["key", "value"], ["key"])

    def seam_select(i: int) -> None:
        with backend.read() as conn:
            assert conn.execute("SELECT value FROM bench_kv WHERE key = ?", (keys[order[i]],)).fetchone()

    def seam_upsert(i: int) -> None:
        with backend.transaction() as conn:
            conn.execute(upsert_seam, (keys[entries + n + i], value))

    try:
        for fn in (raw_select, seam_select):  # warm up: prepared statements, caches
            timings_us(fn, min(200, n))
        t_raw_select, t_seam_select = interleaved([raw_select, seam_select], n)
        t_raw_upsert, t_seam_upsert = interleaved([raw_upsert, seam_upsert], n)
    finally:
        backend.close()
        raw.execute("DROP TABLE IF EXISTS bench_kv")
        raw.close()
    return {
        "raw_select": t_raw_select,
        "seam_select": t_seam_select,
        "raw_upsert": t_raw_upsert,
        "seam_upsert": t_seam_upsert,
    }


def measure_cache(url: str, folder: Path, n: int = N, entries: int = ENTRIES) -> dict[str, list[float]]:
    """The response cache on ``url`` against raw psycopg, per call in microseconds.

    Keys: ``raw_select`` / ``hit`` (interleaved: a raw ``SELECT`` by key, and
    ``db.get_cached_response`` finding a live entry) and ``raw_upsert`` /
    ``put`` (interleaved: a raw autocommit upsert, and ``db.cache_response``
    of a new entry). Both sides hold ``entries`` rows of ~1 KB.
    """
    import psycopg
    from cache_bench import PROMPT_CHARS, RESPONSE_CHARS, _model_file, _text

    from cyllama_db import CyllamaDB, GenerationConfig, Response
    from cyllama_db.types import GenerationStats

    rng = random.Random(0)
    prompts = [f"{i}: " + _text(rng, PROMPT_CHARS) for i in range(entries + n)]
    bodies = [_text(rng, RESPONSE_CHARS) for _ in range(64)]
    keys = _keys(entries + n)
    value = "x" * (PROMPT_CHARS + RESPONSE_CHARS)
    order = [rng.randrange(entries) for _ in range(n)]

    raw = psycopg.connect(url, autocommit=True)
    raw.execute("DROP TABLE IF EXISTS bench_kv")
    raw.execute("CREATE TABLE bench_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    with raw.cursor() as cur:
        cur.executemany("INSERT INTO bench_kv (key, value) VALUES (%s, %s)", [(keys[i], value) for i in range(entries)])
    raw.execute("ANALYZE bench_kv")

    def raw_select(i: int) -> None:
        assert raw.execute("SELECT value FROM bench_kv WHERE key = %s", (keys[order[i]],)).fetchone()

    def raw_upsert(i: int) -> None:
        raw.execute(
            "INSERT INTO bench_kv (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (keys[entries + i], value),
        )

    model = _model_file(folder)
    config = GenerationConfig(temperature=0.0, max_tokens=32)
    stats = GenerationStats(prompt_tokens=50, generated_tokens=32, total_tokens=82,
                            prompt_time_ms=12.5, generation_time_ms=800.0, total_time_ms=815.0,
                            tokens_per_second=40.0)
    responses = [Response(body, "length", str(model), False, stats) for body in bodies]
    db = CyllamaDB(url=url, max_cache_size_mb=1000)
    try:
        for i in range(entries):
            db.cache_response(prompts[i], model, config, responses[i % 64])
        with db.backend.read() as conn:
            conn.execute("ANALYZE cache")

        def hit(i: int) -> None:
            assert db.get_cached_response(prompts[order[i]], model, config) is not None

        def put(i: int) -> None:
            db.cache_response(prompts[entries + i], model, config, responses[i % 64])

        for fn in (raw_select, hit):  # warm up: prepared statements, caches
            timings_us(fn, min(200, n))
        t_raw_select, t_hit = interleaved([raw_select, hit], n)
        t_raw_upsert, t_put = interleaved([raw_upsert, put], n)
    finally:
        with contextlib.suppress(Exception):
            db.invalidate_cache(model_path=model)
        db.close()
        raw.execute("DROP TABLE IF EXISTS bench_kv")
        raw.close()
    return {"raw_select": t_raw_select, "hit": t_hit, "raw_upsert": t_raw_upsert, "put": t_put}


def server_url(folder: str) -> tuple[str | None, Any, str]:
    """(URL, server to stop or None, how it was found); URL None with the reason when there is none."""
    for name in ("CYLLAMA_BENCH_PG_URL", "CYLLAMA_TEST_PG_URL"):
        given = os.environ.get(name, "").strip()
        if given:
            return given, None, name
    import pgserver

    try:
        server = pgserver.start(folder)
    except pgserver.NoServerBinaries:
        return None, None, NO_SERVER
    return server.url, server, f"a throwaway PostgreSQL server started in {server.startup_s:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000 operations instead of 5000")
    args = parser.parse_args()
    n = 1000 if args.quick else N
    try:
        import psycopg  # noqa: F401
    except ImportError:
        print("skipped: psycopg not installed (pip install '.[postgres]')")
        return
    with tempfile.TemporaryDirectory() as tmp:
        url, server, how = server_url(tmp)
        if url is None:
            print(f"skipped: {how}")
            return
        try:
            print(f"server: {how}", file=sys.stderr)
            c = measure_cache(url, Path(tmp), n)
            t = measure(url, n)
        finally:
            if server is not None:
                server.stop()
    print(header(f"PostgreSQL response cache vs raw psycopg, {ENTRIES} entries of ~1 KB, {n} ops each"))
    print(row("raw psycopg SELECT value WHERE key=%s", c["raw_select"]))
    print(row("db.get_cached_response (hit, target <= 1.5x)", c["hit"], c["raw_select"]))
    print(row("raw psycopg upsert (autocommit)", c["raw_upsert"]))
    print(row("db.cache_response (target <= 2x)", c["put"], c["raw_upsert"]))
    print(header(f"PostgreSQL, cache-like table of {ENTRIES} rows of ~1 KB, {n} ops each, loopback TCP"))
    print(row("raw psycopg SELECT value WHERE key=%s", t["raw_select"]))
    print(row("backend.read() + SELECT (the seam)", t["seam_select"], t["raw_select"]))
    print(row("raw psycopg upsert (BEGIN ... COMMIT)", t["raw_upsert"]))
    print(row("backend.transaction() + upsert (the seam)", t["seam_upsert"], t["raw_upsert"]))


if __name__ == "__main__":
    main()
