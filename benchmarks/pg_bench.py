"""PostgreSQL baselines: raw psycopg on a cache-like table, next to the same statements through the backend.

    python benchmarks/pg_bench.py                 # starts a throwaway server (tests/pgserver.py)
    python benchmarks/pg_bench.py --quick         # fewer iterations
    CYLLAMA_TEST_PG_URL=postgresql://... python benchmarks/pg_bench.py   # an existing server

The baselines for issue 16's targets (a cache hit <= 1.5x a raw SELECT by
key, a put <= 2x a raw upsert): one psycopg connection in autocommit on a
table keyed like the response cache (sha256 hex keys, ~1 KB values), a
``SELECT value WHERE key = %s`` and an ``INSERT ... ON CONFLICT DO UPDATE``
(its own transaction, as a put is). Next to each, the same statement
through :class:`~cyllama_db.db.postgres.PostgresBackend` (``read()`` /
``transaction()`` and the sqlite3-style wrapper): what the storage seam
costs before any store logic. Timed interleaved, call by call, so load
from other processes hits both alike. Needs psycopg (``.[postgres]``) and
a server: without either it says so and exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import os
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


def server_url(folder: str) -> tuple[str | None, Any, str]:
    """(URL, server to stop or None, how it was found); URL None with the reason when there is none."""
    given = os.environ.get("CYLLAMA_TEST_PG_URL", "").strip()
    if given:
        return given, None, "CYLLAMA_TEST_PG_URL"
    import pgserver

    try:
        server = pgserver.start(folder)
    except pgserver.NoServerBinaries as exc:
        return None, None, str(exc)
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
            t = measure(url, n)
        finally:
            if server is not None:
                server.stop()
    print(header(f"PostgreSQL, cache-like table of {ENTRIES} rows of ~1 KB, {n} ops each, loopback TCP"))
    print(row("raw psycopg SELECT value WHERE key=%s", t["raw_select"]))
    print(row("backend.read() + SELECT (the seam)", t["seam_select"], t["raw_select"]))
    print(row("raw psycopg upsert (BEGIN ... COMMIT)", t["raw_upsert"]))
    print(row("backend.transaction() + upsert (the seam)", t["seam_upsert"], t["raw_upsert"]))


if __name__ == "__main__":
    main()
