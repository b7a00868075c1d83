"""Prometheus exposition: /metrics on a running dashboard, parsed with prometheus_client's parser."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import CyllamaDB
from cyllama_db.prometheus import CONTENT_TYPE, prometheus_text
from cyllama_db.stores.stats import LATENCY_BUCKETS

parser = pytest.importorskip("prometheus_client.parser")

ROOT = Path(__file__).resolve().parent.parent


def _parse(text: str) -> dict[str, Any]:
    """``{family name: family}``; the parser rejects malformed exposition text."""
    return {family.name: family for family in parser.text_string_to_metric_families(text)}


def _value(families: dict[str, Any], sample: str, **labels: str) -> float:
    family_name = re.sub(r"_(total|bucket|sum|count)$", "", sample)
    found = [
        s.value
        for s in families[family_name].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample, labels, found)
    return float(found[0])


def _miss(tokens: int, ms: float) -> dict[str, Any]:
    return {"finish_reason": "stop", "stats": {"prompt_tokens": 4, "generated_tokens": tokens,
                                               "generation_time_ms": ms * 0.8, "total_time_ms": ms}}


def test_counters_histogram_and_gauges(file_db: CyllamaDB) -> None:
    clock = [1_800_000_000.0]
    file_db.clock = lambda: clock[0]  # type: ignore[method-assign]
    for ms in (40.0, 300.0, 2500.0):
        file_db.record_generation("/models/a.gguf", _miss(10, ms))
    file_db.record_generation("/models/a.gguf", {**_miss(10, 0.4), "cache_hit": True})
    file_db.record_generation("/models/b.gguf", _miss(7, 700.0))
    file_db.save_metrics({
        "cpu_usage": 25.0, "memory_usage": 50.0, "process_rss_bytes": 123456789, "process_cpu_usage": 150.0,
        "process_pid": 4242,
        "gpus": [{"index": 0, "name": "H200", "gpu_usage": 80.0, "gpu_memory_used": 1024.0,
                  "gpu_memory_total": 2048.0, "gpu_temperature": 61.0, "gpu_power_usage": 300.5}],
    })
    for i in range(3):
        file_db.cache_response(f"prompt {i}", "/models/a.gguf", None, "answer")

    families = _parse(prometheus_text(file_db))
    assert families["cyllama_generations"].type == "counter"
    assert _value(families, "cyllama_generations_total", model="a.gguf", cache="miss") == 3
    assert _value(families, "cyllama_generations_total", model="a.gguf", cache="hit") == 1
    assert _value(families, "cyllama_generations_total", model="b.gguf", cache="miss") == 1
    assert _value(families, "cyllama_tokens_total", model="a.gguf", cache="miss", kind="generated") == 30
    assert _value(families, "cyllama_tokens_total", model="a.gguf", cache="miss", kind="prompt") == 12
    assert _value(families, "cyllama_tokens_predicted_total", model="a.gguf") == 30
    assert _value(families, "cyllama_tokens_predicted_seconds_total", model="a.gguf") == pytest.approx(
        (40 + 300 + 2500) * 0.8 / 1000)

    hist = families["cyllama_generation_duration_seconds"]
    assert hist.type == "histogram"
    buckets = {
        s.labels["le"]: s.value for s in hist.samples
        if s.name.endswith("_bucket") and s.labels["model"] == "a.gguf" and s.labels["cache"] == "miss"
    }
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert (buckets["0.025"], buckets["0.05"], buckets["0.25"], buckets["0.5"]) == (0, 1, 1, 2)
    assert (buckets["2.0"], buckets["3.0"], buckets["+Inf"]) == (2, 3, 3)
    assert _value(families, "cyllama_generation_duration_seconds_count", model="a.gguf", cache="miss") == 3
    assert _value(families, "cyllama_generation_duration_seconds_sum", model="a.gguf", cache="miss") == \
        pytest.approx(2.84)
    assert _value(families, "cyllama_generation_duration_seconds_bucket", model="a.gguf", cache="hit",
                  le="0.001") == 1

    assert _value(families, "cyllama_cache_entries") == 3
    assert _value(families, "cyllama_cache_size_bytes") > 0
    assert _value(families, "cyllama_cache_max_size_bytes") == 100 * 1024 * 1024
    assert _value(families, "cyllama_cache_evictions_total") == 0
    assert _value(families, "cyllama_cpu_usage_ratio") == 0.25
    assert _value(families, "cyllama_memory_usage_ratio") == 0.5
    assert _value(families, "cyllama_gpu_utilization_ratio", gpu="0", name="H200") == 0.8
    assert _value(families, "cyllama_gpu_memory_used_bytes", gpu="0") == 1024 * 1024 * 1024
    assert _value(families, "cyllama_gpu_temperature_celsius", gpu="0") == 61
    assert _value(families, "cyllama_gpu_power_watts", gpu="0") == 300.5
    assert _value(families, "cyllama_process_resident_memory_bytes", pid="4242") == 123456789
    assert _value(families, "cyllama_process_cpu_usage_ratio", pid="4242") == 1.5


def test_counters_never_go_down_when_rows_are_pruned(file_db: CyllamaDB) -> None:
    clock = [1_800_000_000.0]
    file_db.clock = lambda: clock[0]  # type: ignore[method-assign]
    for _ in range(5):
        file_db.record_generation("/models/a.gguf", _miss(10, 100.0))
    before = _parse(prometheus_text(file_db))
    clock[0] += 86_400 * 10
    assert file_db.prune_stats(older_than=timedelta(days=1)) == 5
    assert file_db.get_stats_summary()["total_generations"] == 0
    file_db.record_generation("/models/a.gguf", _miss(10, 100.0))
    after = _parse(prometheus_text(file_db))
    assert _value(before, "cyllama_generations_total", model="a.gguf", cache="miss") == 5
    assert _value(after, "cyllama_generations_total", model="a.gguf", cache="miss") == 6
    assert _value(after, "cyllama_tokens_total", model="a.gguf", cache="miss", kind="generated") == 60
    assert _value(after, "cyllama_generation_duration_seconds_count", model="a.gguf", cache="miss") == 6


def test_evictions_are_counted(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "small.db", max_cache_size_mb=0.01) as db:
        for i in range(40):
            db.cache_response(f"prompt {i}", "/models/a.gguf", None, "x" * 1000)
        left = db.get_cache_stats()["entries"]
        families = _parse(prometheus_text(db))
    assert 0 < left < 40
    assert _value(families, "cyllama_cache_evictions_total") == 40 - left
    assert _value(families, "cyllama_cache_entries") == left


def test_labels_are_escaped(file_db: CyllamaDB) -> None:
    odd = '/models/we"ird\\na\nme.gguf'
    file_db.record_generation(odd, _miss(3, 10.0))
    families = _parse(prometheus_text(file_db))
    assert _value(families, "cyllama_generations_total", model_path=odd, cache="miss") == 1


def test_empty_and_disabled_databases(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "empty.db") as db:
        families = _parse(prometheus_text(db))
    assert "cyllama_cache_entries" in families and not families["cyllama_generations"].samples
    assert prometheus_text(CyllamaDB(enabled=False)) == ""


def test_scrape_a_running_dashboard_after_real_generations(tiny_model_path: Path, db_path: Path) -> None:
    """The issue's check: real generations on the tiny model, then `cyllama-db dashboard`'s /metrics."""
    from cyllama_db import LLM

    with CyllamaDB(db_path) as db:
        llm = LLM(str(tiny_model_path), db=db, temperature=0.0, max_tokens=5)
        try:
            answers = [llm(p) for p in ("one", "two", "one")]
        finally:
            llm.close()
    assert [a.cache_hit for a in answers] == [False, False, True]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyllama_db", "--db", str(db_path), "dashboard", "--port", "0", "--no-sampler"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
        assert match
        started = time.perf_counter()
        with urllib.request.urlopen(match.group(1) + "metrics", timeout=30) as response:
            assert response.headers["Content-Type"] == CONTENT_TYPE
            text = response.read().decode()
        assert time.perf_counter() - started < 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    families = _parse(text)
    model = {s.labels["model"] for s in families["cyllama_generations"].samples}
    assert len(model) == 1
    assert _value(families, "cyllama_generations_total", cache="miss") == 2
    assert _value(families, "cyllama_generations_total", cache="hit") == 1
    generated = sum(a.stats.generated_tokens for a in answers)
    assert _value(families, "cyllama_tokens_total", cache="miss", kind="generated") + _value(
        families, "cyllama_tokens_total", cache="hit", kind="generated") == generated
    assert _value(families, "cyllama_cache_entries") == 2


def test_a_missing_table_leaves_its_metrics_out(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "edited.db"
    with CyllamaDB(path) as db:
        db.record_generation("m.gguf", {"stats": None}, None)
        db.save_metrics({"cpu_usage": 10.0})
        assert "cyllama_generations_total" in prometheus_text(db)
        assert "cyllama_cpu_usage_ratio" in prometheus_text(db)
    with sqlite3.connect(path) as conn:  # edited by hand
        conn.execute("DROP TRIGGER stats_totals_insert")
        conn.execute("DROP TABLE stats_totals")
        conn.execute("DROP VIEW IF EXISTS metrics")
        conn.execute("DROP TABLE metrics_history")
    with CyllamaDB(path) as db:
        text = prometheus_text(db)
    assert "cyllama_generations_total{" not in text and "cyllama_cpu_usage_ratio" not in text
    assert "cyllama_cache_entries 0" in text
