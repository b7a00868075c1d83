"""What the metrics store and its sampler cost.

    python benchmarks/metrics_bench.py [--seconds 30] [--interval 1.0]

1. One ``save_metrics`` (insert + retention delete) at the steady state of a
   10-minute window filled at 1 Hz, next to a raw sqlite3 insert of the same
   row; one ``sample_metrics`` next to the raw psutil calls it makes.
2. The sampler at 1 Hz for ``--seconds``: CPU time of the process (and of the
   sampler thread alone) against wall time, after a baseline of the same
   process idle for a third of that time. Target: <= 1% of one core.
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
from _util import header, row, timings_us

from cyllama_db import CyllamaDB, sample_metrics
from cyllama_db.metrics import METRICS_FIELDS

N = 2000
WINDOW_ROWS = 600  # 10 minutes at 1 Hz


def _sample() -> dict[str, float | int]:
    values: dict[str, float | int] = {k: 42.5 for k in METRICS_FIELDS}
    values["active_models"] = 1
    values["uptime"] = 3600
    return values


def per_call(tmp: str) -> None:
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
    start = 1_700_000_000.0
    now = {"t": start}
    db.clock = lambda: now["t"]
    for i in range(WINDOW_ROWS):  # a full window, one row a second
        db.save_metrics({**sample, "timestamp": int((start - WINDOW_ROWS + i) * 1000)})

    def save(i: int) -> None:
        now["t"] = start + i + 1  # each insert pushes one row out of the window
        db.save_metrics(sample)

    raw_w = timings_us(raw_insert, N)
    ours_w = timings_us(save, N)
    assert db.get_db_stats()["metrics_samples"] in (WINDOW_ROWS, WINDOW_ROWS + 1)

    import psutil

    folder = os.path.dirname(db.path)
    psutil.cpu_percent(interval=None)

    def raw_psutil(_: int) -> None:
        psutil.cpu_percent(interval=None)
        psutil.virtual_memory()
        psutil.disk_usage(folder)

    sample_metrics(db)  # prime the CPU window and NVML
    raw_s = timings_us(raw_psutil, N // 4)
    ours_s = timings_us(lambda i: sample_metrics(db), N // 4)
    hist = timings_us(lambda i: db.get_metrics_history(), 200)

    print(header(f"metrics store, WAL file, {WINDOW_ROWS}-row window"))
    print(row("raw sqlite3 INSERT (BEGIN IMMEDIATE)", raw_w))
    print(row("db.save_metrics (insert + retention delete)", ours_w, raw_w))
    print(row("raw psutil cpu/memory/disk", raw_s))
    print(row("sample_metrics(db)", ours_s, raw_s))
    print(row(f"db.get_metrics_history() ({WINDOW_ROWS} rows)", hist))
    db.close()
    raw.close()


def sampler_cost(tmp: str, seconds: float, interval: float) -> None:
    idle = threading.Event()
    baseline_wall = seconds / 3
    c0, w0 = time.process_time(), time.perf_counter()
    idle.wait(baseline_wall)
    base_cpu, base_wall = time.process_time() - c0, time.perf_counter() - w0

    db = CyllamaDB(Path(tmp) / "sampler.db")
    c0, w0 = time.process_time(), time.perf_counter()
    sampler = db.start_metrics_sampler(interval=interval)
    idle.wait(seconds)
    sampler.stop()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    rows = db.get_db_stats()["metrics_samples"]
    db.close()

    print(f"\nsampler at {1 / interval:g} Hz for {wall:.1f} s ({sampler.samples_taken} samples, {rows} rows)")
    print(f"{'what':<44} {'CPU s':>10} {'% of a core':>12}")
    print(f"{'baseline: idle process':<44} {base_cpu:10.4f} {100 * base_cpu / base_wall:11.3f}%")
    print(f"{'process with the sampler':<44} {cpu:10.4f} {100 * cpu / wall:11.3f}%")
    print(f"{'sampler thread alone (thread_time)':<44} {sampler.cpu_seconds:10.4f} {100 * sampler.cpu_seconds / wall:11.3f}%")
    per_sample_ms = 1000 * sampler.cpu_seconds / max(1, sampler.samples_taken)
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
