"""The readable SQL views (generations, cache_entries, log_entries, metrics), read by sqlite3 and Datasette."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import CyllamaDB, GenerationConfig
from cyllama_db.stores.views import VIEWS

DATA = Path(__file__).parent / "data"
CONFIG = GenerationConfig(temperature=0.0, max_tokens=8)
#: 2024-05-31T16:08:37.123Z
T0 = 1717171717.123


def _fill(db: CyllamaDB, model: str) -> None:
    db.clock = lambda: T0  # type: ignore[method-assign]
    response = {
        "text": "hi", "finish_reason": "stop",
        "stats": {"prompt_tokens": 3, "generated_tokens": 2, "total_time_ms": 5.0, "tokens_per_second": 400.0},
    }
    db.record_generation(model, response, CONFIG, cache_hit=False)
    db.record_generation(model, response, CONFIG, cache_hit=True)
    db.cache_response("hello", model, CONFIG, "world", ttl=60)
    db.cache_response("old", model, CONFIG, "gone", ttl=1)
    db.cache_response("forever", model, CONFIG, "kept", ttl=None)
    db.log("WARNING", "a warning", category="tests", context={"k": 1})
    db.save_metrics({"cpu_usage": 12.5, "timestamp": int(T0 * 1000)})


def _rows(conn: sqlite3.Connection, view: str, order: str = "id") -> list[dict[str, Any]]:
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute(f"SELECT * FROM {view} ORDER BY {order}")]


def test_views_spell_out_times_models_and_flags(tmp_path: Path) -> None:
    model = str(tmp_path / "models" / "tiny-Q4.gguf")
    path = tmp_path / "views.db"
    with CyllamaDB(path, cache_ttl=None) as db:
        _fill(db, model)
    conn = sqlite3.connect(path)  # a plain sqlite3 connection, as a user's would be
    try:
        gens = _rows(conn, "generations")
        assert [g["cache"] for g in gens] == ["miss", "hit"]
        assert gens[0]["created_at"] == "2024-05-31T16:08:37.123Z"
        assert gens[0]["model_file"] == "tiny-Q4.gguf" and gens[0]["model"] == "tiny-Q4.gguf"
        assert gens[0]["model_path"] == model and gens[0]["registry_name"] is None
        assert gens[0]["tokens_per_second"] == 400.0 and gens[0]["total_tokens"] == 5

        entries = {e["prompt"]: e for e in _rows(conn, "cache_entries")}
        assert entries["hello"]["created_at"] == "2024-05-31T16:08:37.123Z"
        assert entries["hello"]["expires_at"] == "2024-05-31T16:09:37.123Z"
        assert entries["forever"]["expires_at"] is None
        # Measured against the real clock: 2024 is long gone for every entry with a TTL.
        assert {p: e["status"] for p, e in entries.items()} == {
            "hello": "expired", "old": "expired", "forever": "live"
        }
        assert entries["hello"]["model_file"] == "tiny-Q4.gguf" and entries["hello"]["namespace"] is None
        assert entries["hello"]["response_text"] == "world"

        [log] = _rows(conn, "log_entries")
        assert log["created_at"] == "2024-05-31T16:08:37.123Z"
        assert (log["level"], log["category"], log["message"], log["context_json"]) == (
            "WARNING", "tests", "a warning", '{"k": 1}'
        )

        [sample] = _rows(conn, "metrics")
        assert sample["time"] == "2024-05-31T16:08:37.123Z" and sample["cpu_usage"] == 12.5
    finally:
        conn.close()


def test_registry_names_and_gguf_names_show_in_the_views(tmp_path: Path, tiny_model_path: Path) -> None:
    path = tmp_path / "reg.db"
    with CyllamaDB(path) as db:
        model_id = db.register_model(tiny_model_path, name="tiny")
        db.record_generation(str(tiny_model_path), {"text": "x"}, CONFIG)
        db.cache_response("p", tiny_model_path, CONFIG, "r")
        record = db.get_model(model_id)
        assert record is not None
        registered_path = record["model_path"]
        [history] = db.get_generation_history()
    conn = sqlite3.connect(path)
    try:
        [gen] = _rows(conn, "generations")
        assert gen["model_file"] == tiny_model_path.name
        assert registered_path == gen["model_path"]
        assert gen["registry_name"] == "tiny"
        # The GGUF's general.name, as the statistics recorded it.
        assert gen["model"] == history["model_name"] and gen["model"] not in (None, tiny_model_path.name)
        [entry] = _rows(conn, "cache_entries")
        assert entry["registry_name"] == "tiny"
    finally:
        conn.close()


def test_views_are_in_upgraded_files_and_do_not_clash(tmp_path: Path) -> None:
    copy = tmp_path / "v7.db"
    shutil.copyfile(DATA / "schema_v7.db", copy)
    CyllamaDB(copy).close()
    conn = sqlite3.connect(copy)
    try:
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master"))
        for view, table in VIEWS.items():
            assert kinds[view] == "view" and kinds[table] == "table"
            assert conn.execute(f"SELECT COUNT(*) FROM {view}").fetchone() == conn.execute(
                f"SELECT COUNT(*) FROM {table}"
            ).fetchone()
        # The sample's rows, readable: no NULL times where the table has them.
        assert conn.execute("SELECT COUNT(*) FROM log_entries WHERE created_at IS NULL").fetchone() == (0,)
        assert conn.execute("SELECT MIN(created_at) FROM generations").fetchone()[0].startswith("2024-05-31T")
    finally:
        conn.close()


def test_datasette_lists_and_queries_the_views(tmp_path: Path) -> None:
    datasette_app = pytest.importorskip("datasette.app")
    path = tmp_path / "site.db"
    with CyllamaDB(path) as db:
        _fill(db, "/models/tiny.gguf")

    async def inspect() -> tuple[list[str], list[str], list[str], dict[str, Any], dict[str, Any]]:
        ds = datasette_app.Datasette([str(path)])
        await ds.invoke_startup()
        database = ds.get_database("site")
        views = await database.view_names()
        tables = await database.table_names()
        hidden = await database.hidden_table_names()
        generations = (await ds.client.get("/site/generations.json?_shape=array")).json()
        searched = (await ds.client.get("/site/logs.json?_search=warning&_shape=array")).json()
        return views, tables, hidden, generations, searched

    views, tables, hidden, generations, searched = asyncio.run(inspect())
    assert set(VIEWS) <= set(views)
    assert [g["cache"] for g in generations] == ["miss", "hit"]
    assert generations[0]["created_at"] == "2024-05-31T16:08:37.123Z"
    # Datasette finds the logs' full-text index itself and hides the FTS shadow tables.
    assert [r["message"] for r in searched] == ["a warning"]
    assert "logs_fts_data" in hidden and "cache_fts_idx" in hidden
    assert "logs" in tables and "logs" not in hidden
