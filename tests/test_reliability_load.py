"""Load: many threads and processes writing one file, and nothing reported written is lost.

"database is locked" under threads or processes is the most common complaint
about SQLite-backed caches. Each worker here mixes every kind of write and
read the library does in real use, counts what each call reported as done,
and the file must hold exactly that afterwards.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import CyllamaDB, GenerationConfig, Response

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

THREADS = 8
OPS_PER_THREAD = 5_000
PROCESSES = 4
WRITES_PER_PROCESS = 2_000
CONFIG = GenerationConfig(temperature=0.0, max_tokens=16)


def _model(folder: Path) -> str:
    # Cache identity reads the file's header; any small file will do here.
    path = folder / "load-model.gguf"
    if not path.exists():
        path.write_bytes(b"GGUF" + bytes(60))
    return str(path)


def _run_worker(
    db: CyllamaDB, model: str, worker: int, ops: int, seed: int, *, reads: bool = True
) -> Counter[str]:
    """Do ``ops`` random operations; count every one the library reported done.

    Without ``reads`` every operation is a write (cache lookups are skipped).
    """
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    puts: list[str] = []
    for i in range(ops):
        roll = rng.random()
        if not reads and 0.25 <= roll < 0.45:
            roll = rng.choice((0.1, 0.5, 0.7, 0.9))
        if roll < 0.25:
            prompt = f"w{worker}-p{i}"
            db.cache_response(prompt, model, CONFIG, Response(text=f"answer {worker}/{i}"))
            puts.append(prompt)
            done["cache_put"] += 1
        elif roll < 0.45:
            if puts:
                prompt = rng.choice(puts)
                hit = db.get_cached_response(prompt, model, CONFIG)
                assert hit is not None and hit.text == f"answer {worker}/{prompt.split('-p')[1]}"
            else:
                assert db.get_cached_response(f"w{worker}-never", model, CONFIG) is None
            done["cache_get"] += 1
        elif roll < 0.65:
            row_id = db.record_generation(
                model,
                {"text": "x", "prompt_tokens": 3, "completion_tokens": 5, "total_time": 0.01},
                session_id=f"load-{worker}",
            )
            assert isinstance(row_id, int)
            done["generation"] += 1
        elif roll < 0.85:
            log_id = db.log("INFO", f"message {i}", category=f"load-{worker}", context={"i": i})
            assert isinstance(log_id, int)
            done["log"] += 1
        else:
            db.set_config(f"load-{worker}-{i}", {"i": i, "worker": worker})
            done["config"] += 1
    return done


def _assert_all_present(db: CyllamaDB, counts: dict[int, Counter[str]]) -> None:
    with db.pool.read() as conn:
        per_session = dict(
            conn.execute(
                "SELECT session_id, COUNT(*) FROM stats WHERE session_id LIKE 'load-%'"
                " GROUP BY session_id"
            ).fetchall()
        )
        per_category = dict(
            conn.execute(
                "SELECT category, COUNT(*) FROM logs WHERE category LIKE 'load-%' GROUP BY category"
            ).fetchall()
        )
        cache_rows = conn.execute("SELECT COUNT(*) FROM cache").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    config = db.get_all_config()
    for worker, done in counts.items():
        assert per_session.get(f"load-{worker}", 0) == done["generation"], worker
        assert per_category.get(f"load-{worker}", 0) == done["log"], worker
        assert sum(1 for k in config if k.startswith(f"load-{worker}-")) == done["config"], worker
    assert cache_rows == sum(done["cache_put"] for done in counts.values())


def test_eight_threads_of_mixed_operations(tmp_path: Path) -> None:
    model = _model(tmp_path)
    db = CyllamaDB(tmp_path / "threads.db", max_cache_size_mb=1024, cache_ttl=None)
    counts: dict[int, Counter[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def work(worker: int) -> None:
        try:
            barrier.wait()
            counts[worker] = _run_worker(db, model, worker, OPS_PER_THREAD, seed=worker)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert errors == []
    assert sorted(counts) == list(range(THREADS))
    assert sum(sum(c.values()) for c in counts.values()) == THREADS * OPS_PER_THREAD
    # Every kind of operation really ran (the mix is seeded, so this is stable).
    assert all(min(c[k] for k in ("cache_put", "cache_get", "generation", "log", "config")) > 100
               for c in counts.values())
    db.close()
    # Reopen: what was reported done is on disk, not only in this process.
    with CyllamaDB(tmp_path / "threads.db") as again:
        assert again.fallback_reason is None
        _assert_all_present(again, counts)


def _process_worker(path: str, model: str, worker: int, queue: Any) -> None:
    db = CyllamaDB(path, max_cache_size_mb=1024, cache_ttl=None)
    try:
        done = _run_worker(db, model, worker, WRITES_PER_PROCESS, seed=100 + worker, reads=False)
        db.close()
        queue.put((worker, dict(done), None))
    except BaseException as exc:
        queue.put((worker, {}, f"{type(exc).__name__}: {exc}"))


def test_four_processes_of_mixed_operations(tmp_path: Path) -> None:
    model = _model(tmp_path)
    path = str(tmp_path / "processes.db")
    CyllamaDB(path).close()  # created and migrated; the workers race on writes only
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(path, model, w, queue)) for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    assert [error for _, _, error in results if error] == []
    counts = {worker: Counter(done) for worker, done, _ in results}
    assert sum(sum(c.values()) for c in counts.values()) == PROCESSES * WRITES_PER_PROCESS
    assert all(c["cache_get"] == 0 for c in counts.values())
    with CyllamaDB(path) as db:
        _assert_all_present(db, counts)
