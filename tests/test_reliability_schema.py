"""Old schema versions migrate with every row intact; a newer one is refused untouched (issue 8).

The frozen sample files in ``tests/data/`` (one per schema version, made by
``tests/data/make_schema_samples.py``, described in ``tests/data/README.md``)
are copied to a temporary folder before being opened: the fixtures
themselves are never written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import cyllama_db
from cyllama_db import CyllamaDB, SchemaVersionError, cached
from cyllama_db.db.migrations import latest_version

pytestmark = pytest.mark.reliability

DATA = Path(__file__).resolve().parent / "data"
MANIFEST = json.loads((DATA / "schema_samples.json").read_text(encoding="utf-8"))
SAMPLES: dict[int, dict[str, Any]] = {int(v): s for v, s in MANIFEST["samples"].items()}
#: When the sample rows were written (Unix seconds).
SAMPLE_CLOCK: float = MANIFEST["clock"]
REGENERATE = "run `python tests/data/make_schema_samples.py` to add the missing sample file(s)"

_TIMESTAMPS = frozenset({"created_at", "updated_at", "first_seen_at", "last_used_at"})
#: A history window that reaches back far enough to include the samples' time.
MANIFEST_WINDOW_MINUTES = 60 * 24 * 365 * 10


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _same_time(got: datetime | None, seconds: float) -> bool:
    return got is not None and abs(got.timestamp() - seconds) < 1e-5


def _tables(sample: dict[str, Any]) -> set[str]:
    return set(sample["tables"])


@pytest.fixture(params=sorted(SAMPLES), ids=lambda v: f"v{v}")
def sample(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """(manifest entry, path of a private copy) for each sample version."""
    entry = SAMPLES[request.param]
    original = DATA / entry["file"]
    copy = tmp_path / "copy" / entry["file"]
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    yield entry, copy
    # Opening the copy must never have reached the frozen fixture.
    assert _sha(original) == entry["sha256"], f"{original.name} was modified"
    assert sorted(p.name for p in DATA.glob(entry["file"] + "*")) == [entry["file"]]


# -- the fixture set ---------------------------------------------------------------------------


def test_every_schema_version_has_a_sample() -> None:
    wanted = set(range(1, latest_version() + 1))
    have = set(SAMPLES)
    assert have == wanted, (
        f"schema samples cover versions {sorted(have)}, but this code has migrations 1..{latest_version()}: "
        f"{REGENERATE} (and commit them with tests/data/schema_samples.json)"
    )
    for version, entry in SAMPLES.items():
        path = DATA / entry["file"]
        assert entry["file"] == f"schema_v{version}.db"
        assert path.is_file(), f"{path} is missing: {REGENERATE}"


def test_sample_files_are_frozen_small_and_standalone() -> None:
    for entry in SAMPLES.values():
        path = DATA / entry["file"]
        assert _sha(path) == entry["sha256"], (
            f"{path.name} changed since it was made: released samples must never be rebuilt "
            "(restore it from git)"
        )
        assert path.stat().st_size < 100_000
        data = path.read_bytes()
        assert data[:16] == b"SQLite format 3\x00"
        assert data[18:20] == b"\x01\x01", "samples are rollback-journal files (no -wal needed)"


def test_samples_are_at_their_version(tmp_path: Path) -> None:
    for version, entry in SAMPLES.items():
        copy = tmp_path / entry["file"]
        shutil.copyfile(DATA / entry["file"], copy)
        conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        try:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            }
        finally:
            conn.close()
        assert versions == list(range(1, version + 1))
        assert tables == _tables(entry)


# -- old files migrate with their rows ---------------------------------------------------------


def _check_config(db: CyllamaDB, rows: list[dict[str, Any]]) -> None:
    types = {"str": str, "int": int, "float": float, "bool": bool}
    for row in rows:
        got = db.get_config(row["key"], default=KeyError)
        assert got is not KeyError, f"config {row['key']!r} is gone"
        assert got == row["value"], row["key"]
        if row["type"] in types:
            assert type(got) is types[row["type"]], (row["key"], type(got))
        if row["type"] == "float":
            assert math.copysign(1, got) == math.copysign(1, row["value"])
    everything = db.get_all_config()
    assert {r["key"] for r in rows} <= set(everything)


def _check_metadata(db: CyllamaDB, rows: list[dict[str, Any]], reserved: list[dict[str, Any]]) -> None:
    for row in rows:
        assert db.get_metadata(row["key"]) == row["value"], row["key"]
    values = {r["key"]: r["value"] for r in reserved}
    # The library's own keys: the version is brought up to date, the start time kept.
    assert db.get_metadata("db_version") == str(latest_version())
    assert db.get_metadata("server_start_time") == values["server_start_time"]


def _check_cache(db: CyllamaDB, rows: list[dict[str, Any]]) -> None:
    stats = db.get_cache_stats()
    assert stats["entries"] == len(rows)
    assert stats["expired"] == sum(1 for r in rows if not r["live"])
    assert stats["hits"] == sum(r["hit_count"] for r in rows)
    for kind in ("completion", "chat", "function"):
        assert stats["by_kind"][kind] == sum(1 for r in rows if r["kind"] == kind)
    assert _same_time(stats["oldest"], SAMPLE_CLOCK)

    new_hits = 0
    for row in rows:
        if row["kind"] == "function":
            spec = row["prompt"]

            assert set(spec["args"]) == {"word"}

            def never(word: str) -> Any:
                raise AssertionError("a @cached function was recomputed: its stored result was not found")

            fn = cached(name=spec["function"], db=db)(never)
            assert fn.cache_key(**spec["args"]) == row["cache_key"]
            assert fn(**spec["args"]) == row["value"]
            new_hits += 1
            continue
        key = cyllama_db.generate_cache_key(row["prompt"], row["model_path"], row["config"])
        assert key == row["cache_key"], (
            "the cache key scheme changed: every response stored by an older cyllama-db "
            "would silently miss (keep keys stable, or make this a deliberate, documented break)"
        )
        got = db.get_cached_response(row["prompt"], row["model_path"], row["config"])
        if not row["live"]:
            assert got is None, "an entry that expired in the old file must read as a miss"
            continue
        assert got is not None, (
            f"cache entry {row['cache_key'][:12]} written by an older cyllama-db is no longer found: "
            "the cache key scheme changed, so every stored response would silently miss"
        )
        new_hits += 1
        assert got.cache_hit is True
        assert got.text == row["response_text"]
        assert got.finish_reason == row["finish_reason"]
        assert got.stats.prompt_tokens == row["prompt_tokens"]
        assert got.stats.generated_tokens == row["tokens_generated"]
    after = db.get_cache_stats()  # flushes the hit counts: a write into the migrated table
    assert after["hits"] == stats["hits"] + new_hits


def _check_rows_by_id(got_rows: list[dict[str, Any]], rows: list[dict[str, Any]], *, types: bool) -> None:
    """Every manifest row is there, by id, with every value (and, if asked, its type)."""
    by_id = {r["id"]: r for r in got_rows}
    assert set(by_id) == {r["id"] for r in rows}
    for row in rows:
        got = by_id[row["id"]]
        for key, value in row.items():
            if key == "created_at":
                assert _same_time(got[key], value), key
            else:
                assert got[key] == value, key
                assert not types or type(got[key]) is type(value), key


def _check_stats(db: CyllamaDB, rows: list[dict[str, Any]]) -> None:
    _check_rows_by_id(db.get_generation_history(limit=1000), rows, types=True)
    by_session = db.get_generation_history(session_id=rows[0]["session_id"])
    assert [r["id"] for r in by_session] == sorted(
        (r["id"] for r in rows if r["session_id"] == rows[0]["session_id"]), reverse=True
    )
    summary = db.get_stats_summary()
    assert summary["total_generations"] == len(rows)
    assert summary["cache_hits"] == sum(r["cache_hit"] for r in rows)
    assert summary["total_tokens"] == sum(r["total_tokens"] or 0 for r in rows)
    assert set(summary["by_model"]) == {r["model_path"] for r in rows}


def _check_logs(db: CyllamaDB, rows: list[dict[str, Any]]) -> None:
    _check_rows_by_id(db.get_logs(limit=1000), rows, types=False)
    errors = db.get_logs(level="ERROR")
    assert {r["id"] for r in errors} == {
        r["id"] for r in rows if r["level"] in ("ERROR", "CRITICAL")
    }
    sample_cat = db.get_logs(category="sample")
    assert {r["id"] for r in sample_cat} == {
        r["id"] for r in rows if (r["category"] or "").split(".")[0] == "sample"
    }


def _check_models(db: CyllamaDB, rows: list[dict[str, Any]]) -> None:
    models = db.get_models()
    assert [m["id"] for m in models] == [r["id"] for r in rows]
    for row in rows:
        got = db.get_model_by_name(row["name"])
        assert got is not None, row["name"]
        assert db.get_model(row["id"]) == got
        for key, value in row.items():
            if key in _TIMESTAMPS:
                assert _same_time(got[key], value), key
            else:
                assert got[key] == value, key
                if value is not None:
                    assert type(got[key]) is type(value), key
        # Every other parameter column reads as unset.
        assert set(got.params) <= set(row)
    running = db.get_models(status="running")
    assert [m["name"] for m in running] == [r["name"] for r in rows if r["status"] == "running"]


def _check_metrics(db: CyllamaDB, rows: list[dict[str, Any]]) -> None:
    # History is relative to now: look from just after the samples were taken.
    db.clock = lambda: SAMPLE_CLOCK + 60
    try:
        history = db.get_metrics_history(minutes=10)
    finally:
        del db.clock
    assert [h["id"] for h in history] == [r["id"] for r in rows]
    for got, row in zip(history, rows, strict=True):
        for key, value in row.items():
            if key == "created_at_ms":
                assert _same_time(got["created_at"], value / 1000)
            elif key == "timestamp_ms":
                assert got["timestamp_ms"] == value
                assert _same_time(got["timestamp"], value / 1000)
            else:
                assert got[key] == value, key


def test_old_sample_migrates_with_every_row_intact(
    sample: tuple[dict[str, Any], Path], caplog: pytest.LogCaptureFixture
) -> None:
    entry, path = sample
    rows = entry["rows"]
    with caplog.at_level("WARNING", logger="cyllama_db"):
        db = CyllamaDB(path)
    try:
        assert db.fallback_reason is None, db.fallback_reason
        assert not db.is_memory
        assert db.path == str(path)
        assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], caplog.text
        assert db.schema_version() == latest_version()
        assert all(m["applied"] for m in db.migration_status())

        _check_config(db, rows["config"])
        _check_metadata(db, rows["metadata"], rows["reserved_metadata"])
        tables = _tables(entry)
        if "cache" in tables:
            _check_cache(db, rows["cache"])
        else:
            assert db.get_cache_stats()["entries"] == 0
        if "stats" in tables:
            _check_stats(db, rows["stats"])
        else:
            assert db.get_generation_history() == []
        if "logs" in tables:
            _check_logs(db, rows["logs"])
        else:
            assert db.get_logs() == []
        if "models" in tables:
            _check_models(db, rows["models"])
        else:
            assert db.get_models() == []
        if "metrics_history" in tables:
            _check_metrics(db, rows["metrics_history"])
        else:
            assert db.get_metrics_history(minutes=MANIFEST_WINDOW_MINUTES) == []

        with db.pool.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()


def test_every_store_writes_after_migration(sample: tuple[dict[str, Any], Path]) -> None:
    entry, path = sample
    rows = entry["rows"]
    model = str(path.parent / "new-model.gguf")
    with CyllamaDB(path) as db:
        db.set_config("after.upgrade", {"ok": True})
        db.set_metadata("after.upgrade", "yes")
        db.cache_response("new prompt ü", model, {"temperature": 0.0}, "new answer")
        assert db.get_cached_response("new prompt ü", model, {"temperature": 0.0}).text == "new answer"
        new_generation = db.record_generation(model, {"finish_reason": "stop", "stats": None})
        assert isinstance(new_generation, int)
        new_log = db.log("WARNING", "after the upgrade", category="upgrade", context={"v": 1})
        saved = db.save_model("after-upgrade", model_path=model, ctx_size=4096)
        db.update_model(saved, temperature=0.5)
        new_metric = db.save_metrics({"cpu_usage": 1.5})
        assert isinstance(new_metric, int)
        db.vacuum()

    # Everything, old and new, is there after reopening the migrated file.
    with CyllamaDB(path) as db:
        assert db.fallback_reason is None
        assert db.get_config("after.upgrade") == {"ok": True}
        assert db.get_metadata("after.upgrade") == "yes"
        assert db.get_cached_response("new prompt ü", model, {"temperature": 0.0}) is not None
        history = db.get_generation_history(limit=1000)
        assert history[0]["id"] == new_generation
        assert len(history) == len(rows.get("stats", [])) + 1
        logs = db.get_logs(limit=1000)
        assert logs[0]["id"] == new_log and logs[0]["context"] == {"v": 1}
        assert len(logs) == len(rows.get("logs", [])) + 1
        model_row = db.get_model_by_name("after-upgrade")
        assert model_row is not None
        assert (model_row["ctx_size"], model_row["temperature"]) == (4096, 0.5)
        assert len(db.get_models()) == len(rows.get("models", [])) + 1
        assert [h["id"] for h in db.get_metrics_history()] == [new_metric]
        cache_rows = rows.get("cache", [])
        assert db.get_cache_stats()["entries"] == len(cache_rows) + 1
        for row in rows["config"]:
            assert db.get_config(row["key"]) == row["value"]
        with db.pool.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# -- a newer file is refused untouched ---------------------------------------------------------


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    newest = SAMPLES[max(SAMPLES)]
    folder = tmp_path / "future"
    folder.mkdir()
    path = folder / "cyllama.db"
    shutil.copyfile(DATA / newest["file"], path)
    conn = sqlite3.connect(path)
    with conn:
        # Recorded the way migrations.migrate() records an applied version.
        conn.execute(
            "INSERT INTO schema_version (version, name) VALUES (?, ?)",
            (latest_version() + 1, "from a newer cyllama-db"),
        )
    conn.close()
    before = _sha(path)
    listing = sorted(os.listdir(folder))

    with pytest.raises(SchemaVersionError) as caught:
        CyllamaDB(path)
    assert caught.value.found == latest_version() + 1
    assert caught.value.supported == latest_version()
    assert "not modified" in str(caught.value) and "Upgrade" in str(caught.value)
    assert isinstance(caught.value, cyllama_db.CyllamaDBError)

    assert _sha(path) == before
    assert sorted(os.listdir(folder)) == listing == ["cyllama.db"]
    # Still refused the second time, and still a valid database for the newer code.
    with pytest.raises(SchemaVersionError):
        CyllamaDB(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (latest_version() + 1,)
    finally:
        conn.close()
    assert _sha(path) == before
