"""What the metrics store and its sampler cost.

    python benchmarks/metrics_bench.py [--seconds 30] [--interval 1.0]

1. One ``save_metrics`` (insert + retention delete) at the steady state of a
   10-minute window filled at 1 Hz, next to a raw sqlite3 insert of the same
   row; one ``sample_metrics`` next to the raw psutil calls it makes.
2. The sampler at 1 Hz for ``--seconds``: CPU time of the process (and of the
   sampler thread alone) against wall time, after a baseline of the same
   process idle for a third of that time, and next to a minimal hand-written
   sampler (psutil + a raw sqlite3 INSERT) for half of it. Target: <= 1% of
   one core.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import header, interleaved, row, timings_us

from cyllama_db import CyllamaDB, sample_metrics
from cyllama_db.stores.metrics import METRICS_FIELDS

N = 2000
WINDOW_ROWS = 600  # 10 minutes at 1 Hz


def _sample() -> dict[str, float | int]:
    values: dict[str, float | int] = {k: 42.5 for k in METRICS_FIELDS}
    values["active_models"] = 1
    values["uptime"] = 3600
    return values


def measure_per_call(tmp: str, n: int = N) -> dict[str, list[float] | None]:
    """Per-call timings in microseconds: ``raw_insert`` / ``save``, interleaved; ``history``
    (n // 10 reads of the window); ``raw_psutil`` / ``sample`` (n // 4 each, interleaved; None
    without psutil)."""
    raw = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    cols = ", ".join(METRICS_FIELDS)
    raw.execute(f"CREATE TABLE m (id INTEGER PRIMARY KEY, timestamp INTEGER, {cols}, created_at INTEGER)")
    sample = _sample()
    params = [sample[k] for k in METRICS_FIELDS]
    marks = ", ".join("?" * (len(METRICS_FIELDS) + 2))

    def raw_insert(i: int) -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute(f"INSERT INTO m (timestamp, {cols}, created_at) VALUES ({marks})", (i, *params, i))
        raw.execute("COMMIT")

    db = CyllamaDB(Path(tmp) / "cyllama.db")
    try:
        start = 1_700_000_000.0
        now = {"t": start}
        db.clock = lambda: now["t"]
        for i in range(WINDOW_ROWS):  # a full window, one row a second
            db.save_metrics({**sample, "timestamp": int((start - WINDOW_ROWS + i) * 1000)})

        def save(i: int) -> None:
            now["t"] = start + i + 1  # each insert pushes one row out of the window
            db.save_metrics(sample)

        raw_w, ours_w = interleaved([raw_insert, save], n)
        assert db.get_db_stats()["metrics_samples"] in (WINDOW_ROWS, WINDOW_ROWS + 1)

        hist = timings_us(lambda i: db.get_metrics_history(), max(5, n // 10))
        try:
            import psutil
        except ImportError:  # sampling needs it; the store does not
            raw_s = ours_s = None
        else:
            folder = os.path.dirname(db.path)
            psutil.cpu_percent(interval=None)

            def raw_psutil(_: int) -> None:
                psutil.cpu_percent(interval=None)
                psutil.virtual_memory()
                psutil.disk_usage(folder)

            def ours_sample(_: int) -> None:
                sample_metrics(db)

            sample_metrics(db)  # prime the CPU window and NVML
            raw_s, ours_s = interleaved([raw_psutil, ours_sample], max(1, n // 4))
    finally:
        db.close()
        raw.close()
    return {"raw_insert": raw_w, "save": ours_w, "raw_psutil": raw_s, "sample": ours_s, "history": hist}


def per_call(tmp: str) -> None:
    t = measure_per_call(tmp)
    assert t["raw_insert"] and t["save"] and t["raw_psutil"] and t["sample"] and t["history"]
    print(header(f"metrics store, WAL file, {WINDOW_ROWS}-row window"))
    print(row("raw sqlite3 INSERT (BEGIN IMMEDIATE)", t["raw_insert"]))
    print(row("db.save_metrics (insert + retention delete)", t["save"], t["raw_insert"]))
    print(row("raw psutil cpu/memory/disk", t["raw_psutil"]))
    print(row("sample_metrics(db)", t["sample"], t["raw_psutil"]))
    print(row(f"db.get_metrics_history() ({WINDOW_ROWS} rows)", t["history"]))


def measure_sampler(tmp: str, seconds: float, interval: float) -> dict[str, float]:
    """The sampler's CPU cost, from process CPU time (``time.process_time``).

    First the same process idle for a third of ``seconds`` (the baseline),
    then a sampler at ``interval``: its start and first sample (psutil's CPU
    priming, the NVML probe) are measured apart as ``startup_cpu``, then
    ``seconds`` of steady state. Returns ``base_cpu``/``base_wall`` and
    ``cpu``/``wall`` (seconds, steady state), the sampler thread's own CPU
    time in that window (``thread_cpu``), ``samples`` (taken in it) and
    ``rows``.
    """
    import psutil  # noqa: F401 - imported before the windows: a one-off, not the steady cost

    idle = threading.Event()
    baseline_wall = seconds / 3
    c0, w0 = time.process_time(), time.perf_counter()
    idle.wait(baseline_wall)
    base_cpu, base_wall = time.process_time() - c0, time.perf_counter() - w0

    db = CyllamaDB(Path(tmp) / "sampler.db")
    try:
        c0 = time.process_time()
        sampler = db.start_metrics_sampler(interval=interval)
        # cpu_seconds is set once the first tick is over (just after samples_taken).
        deadline = time.monotonic() + 10 * interval + 10
        while sampler.cpu_seconds == 0 and sampler.running and time.monotonic() < deadline:
            idle.wait(min(0.01, interval / 10))
        c1, w1, t1, n1 = time.process_time(), time.perf_counter(), sampler.cpu_seconds, sampler.samples_taken
        idle.wait(seconds)
        sampler.stop()
        cpu, wall = time.process_time() - c1, time.perf_counter() - w1
        rows = db.get_db_stats()["metrics_samples"]
    finally:
        db.close()
    return {
        "base_cpu": base_cpu, "base_wall": base_wall, "cpu": cpu, "wall": wall,
        "startup_cpu": c1 - c0, "thread_cpu": sampler.cpu_seconds - t1,
        "samples": sampler.samples_taken - n1, "rows": rows,
    }


def measure_minimal_sampler(tmp: str, seconds: float, interval: float) -> dict[str, float]:
    """The least a sampler at ``interval`` can cost: a thread reading psutil's CPU, memory and
    disk use and storing them with a raw sqlite3 INSERT (its own transaction, WAL file).

    Process CPU time (``cpu``) over ``seconds`` (``wall``) after its first sample, as
    :func:`measure_sampler` measures the real one; ``samples`` taken in that window.
    """
    import psutil

    stop, first = threading.Event(), threading.Event()
    taken = [0]
    path = Path(tmp) / "minimal-sampler.db"

    def run() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, timestamp INTEGER, cpu_usage REAL,"
                     " memory_usage REAL, disk_usage REAL)")
        psutil.cpu_percent(interval=None)
        deadline = time.monotonic()
        try:
            while True:
                deadline += interval
                if stop.wait(max(0.0, deadline - time.monotonic())):
                    break
                values = (psutil.cpu_percent(interval=None), psutil.virtual_memory().percent,
                          psutil.disk_usage(tmp).percent)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO m (timestamp, cpu_usage, memory_usage, disk_usage)"
                             " VALUES (?, ?, ?, ?)", (int(time.time() * 1000), *values))
                conn.execute("COMMIT")
                taken[0] += 1
                first.set()
        finally:
            conn.close()

    thread = threading.Thread(target=run, name="minimal-sampler", daemon=True)
    thread.start()
    first.wait(10 * interval + 10)
    c1, w1, n1 = time.process_time(), time.perf_counter(), taken[0]
    stop.wait(seconds)
    stop.set()
    thread.join()
    return {"cpu": time.process_time() - c1, "wall": time.perf_counter() - w1, "samples": taken[0] - n1}


def sampler_cost(tmp: str, seconds: float, interval: float) -> None:
    t = measure_sampler(tmp, seconds, interval)
    base_cpu, base_wall, cpu, wall = t["base_cpu"], t["base_wall"], t["cpu"], t["wall"]
    thread_cpu, samples = t["thread_cpu"], t["samples"]
    print(f"\nsampler at {1 / interval:g} Hz for {wall:.1f} s after its first sample"
          f" ({samples:g} samples, {t['rows']:g} rows; start + first sample: "
          f"{1000 * t['startup_cpu']:.1f} ms CPU)")
    print(f"{'what':<44} {'CPU s':>10} {'% of a core':>12}")
    print(f"{'baseline: idle process':<44} {base_cpu:10.4f} {100 * base_cpu / base_wall:11.3f}%")
    print(f"{'process with the sampler':<44} {cpu:10.4f} {100 * cpu / wall:11.3f}%")
    print(f"{'sampler thread alone (thread_time)':<44} {thread_cpu:10.4f} {100 * thread_cpu / wall:11.3f}%")
    m = measure_minimal_sampler(tmp, seconds / 2, interval)
    print(f"{'minimal psutil + sqlite3 INSERT thread':<44} {m['cpu']:10.4f} {100 * m['cpu'] / m['wall']:11.3f}%")
    per_sample_ms = 1000 * thread_cpu / max(1, samples)
    print(f"CPU per sample: {per_sample_ms:.2f} ms; target <= 1% of one core: "
          f"{'met' if cpu / wall <= 0.01 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        per_call(tmp)
        sampler_cost(tmp, args.seconds, args.interval)


if __name__ == "__main__":
    main()
