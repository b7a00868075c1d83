"""export_database / import_database: consistent copies and merge rules."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyllama_db import CyllamaDB, SchemaVersionError
from cyllama_db.db import migrations as _migrations


def _rows(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- export ----------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from cyllama_db import CyllamaDB
    db = CyllamaDB(sys.argv[1])
    payload = "x" * 2000
    i = 0
    print("ready", flush=True)
    while True:
        db.set_config(f"w{i:09d}", payload)
        i += 1
    """
)


def _committed(path: Path) -> int:
    return _rows(path, "SELECT COUNT(*) FROM config WHERE key LIKE 'w%'")[0][0]


def test_export_while_another_process_writes(db_path: Path, tmp_path: Path) -> None:
    db = CyllamaDB(db_path)
    # ~25 MB of rows, so the backup takes many steps.
    with db.pool.transaction() as conn:
        conn.executemany(
            "INSERT INTO config (key, value, value_type, created_at, updated_at)"
            " VALUES (?, ?, 'str', 0, 0)",
            ((f"base{i:06d}", "y" * 2000) for i in range(12_000)),
        )
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while _committed(db_path) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = _committed(db_path)
        assert before >= 20, "the writer process did not start writing"
        during: list[int] = []

        def progress(done: int, total: int) -> None:
            if not during:
                # Prove the writer commits while the copy is in progress.
                start = _committed(db_path)
                limit = time.monotonic() + 30
                while _committed(db_path) < start + 20 and time.monotonic() < limit:
                    time.sleep(0.005)
            during.append(_committed(db_path))

        result = db.export_database(tmp_path / "backup.db", progress=progress)
        after = _committed(db_path)
    finally:
        writer.kill()
        writer.wait()
    db.close()

    copy = Path(result["path"])
    assert len(during) > 1, "the backup should have taken several steps"
    assert during[-1] >= before + 20, "no write landed while the export ran"
    assert _rows(copy, "PRAGMA integrity_check") == [("ok",)]
    keys = [r[0] for r in _rows(copy, "SELECT key FROM config WHERE key LIKE 'w%' ORDER BY key")]
    # Every row committed before the export began is there, as a gap-free prefix.
    assert len(keys) >= before
    assert keys == [f"w{i:09d}" for i in range(len(keys))]
    assert len(keys) < after  # the copy is a snapshot, not a moving target
    assert _rows(copy, "SELECT COUNT(*) FROM config WHERE key LIKE 'base%'") == [(12_000,)]
    assert _rows(copy, "PRAGMA journal_mode") == [("delete",)]
    assert result["schema_version"] == _migrations.latest_version()
    assert oct(os.stat(copy).st_mode & 0o777) == "0o600"


def test_export_refuses_to_overwrite_unless_asked(file_db: CyllamaDB, tmp_path: Path) -> None:
    target = tmp_path / "out.db"
    target.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        file_db.export_database(target)
    assert target.read_text() == "keep me"
    file_db.set_config("a", 1)
    file_db.export_database(target, overwrite=True)
    assert _rows(target, "SELECT value FROM config WHERE key='a'") == [("1",)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_onto_itself_is_refused(file_db: CyllamaDB) -> None:
    with pytest.raises(ValueError, match="onto itself"):
        file_db.export_database(file_db.path, overwrite=True)


def test_export_of_memory_database(memory_db: CyllamaDB, tmp_path: Path) -> None:
    memory_db.set_config("k", [1, 2])
    calls: list[tuple[int, int]] = []
    memory_db.export_database(tmp_path / "m.db", progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] > 0
    with CyllamaDB(tmp_path / "m.db") as copy:
        assert copy.get_config("k") == [1, 2]
        copy.set_config("from_file", True)
    report = memory_db.import_database(tmp_path / "m.db")
    assert report["tables"]["config"]["inserted"] == 1
    assert memory_db.get_all_config() == {"from_file": True, "k": [1, 2]}


def test_export_jsonl_one_table(file_db: CyllamaDB, tmp_path: Path) -> None:
    file_db.set_config("a", 1)
    file_db.set_config("b", "two")
    result = file_db.export_database(tmp_path / "config.jsonl", format="jsonl", table="config")
    lines = (tmp_path / "config.jsonl").read_text().splitlines()
    assert result["rows"] == 2 and len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert [(r["key"], r["value"], r["value_type"]) for r in rows] == [
        ("a", "1", "int"),
        ("b", "two", "str"),
    ]
    stream = io.StringIO()
    file_db.export_database(stream, format="jsonl", table="config")
    assert stream.getvalue().splitlines() == lines


def test_export_jsonl_blobs_are_base64(memory_db: CyllamaDB) -> None:
    with memory_db.pool.transaction() as conn:
        conn.execute("CREATE TABLE extra (id INTEGER PRIMARY KEY, data BLOB)")
        conn.execute("INSERT INTO extra (data) VALUES (?)", (b"\x00\xff",))
    stream = io.StringIO()
    memory_db.export_database(stream, format="jsonl", table="extra")
    assert json.loads(stream.getvalue()) == {"id": 1, "data": {"$base64": "AP8="}}


def test_export_argument_errors(memory_db: CyllamaDB, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no table 'nope'.*config"):
        memory_db.export_database(tmp_path / "x.jsonl", format="jsonl", table="nope")
    with pytest.raises(ValueError, match="needs table"):
        memory_db.export_database(tmp_path / "x.jsonl", format="jsonl")
    with pytest.raises(ValueError, match="format must be"):
        memory_db.export_database(tmp_path / "x.csv", format="csv")
    with pytest.raises(ValueError, match="only applies"):
        memory_db.export_database(tmp_path / "x.db", table="config")
    with pytest.raises(TypeError, match="unexpected keyword"):
        memory_db.export_database(tmp_path / "x.db", tables="config")  # type: ignore[call-arg]


def test_disabled_database_exports_nothing(tmp_path: Path) -> None:
    db = CyllamaDB(tmp_path / "off.db", enabled=False)
    assert db.export_database(tmp_path / "copy.db") is None
    assert not (tmp_path / "copy.db").exists()


_CUSTOM = {"--api-key": "SK-CUSTOM", "hf-token": "HF-CUSTOM", "-hft": "HFT-SHORT", "--spec-type": "ngram"}
_CUSTOM_REDACTED = {"--api-key": "***", "hf-token": "***", "-hft": "***", "--spec-type": "ngram"}


def test_export_redacts_secrets_unless_asked(file_db: CyllamaDB, tmp_path: Path) -> None:
    file_db.save_model("m", model_path="/x.gguf", api_key="sk-123", hf_token="hf_abc", custom_params=_CUSTOM)
    file_db.save_model("plain", custom_params={"--spec-type": "ngram"})  # nothing secret: untouched
    result = file_db.export_database(tmp_path / "redacted.db")
    assert result["redacted_secrets"] == 3  # two columns and one custom_params value
    assert _rows(tmp_path / "redacted.db", "SELECT api_key, hf_token FROM models WHERE name = 'm'") == [
        ("***", "***")
    ]
    custom = _rows(tmp_path / "redacted.db", "SELECT custom_params FROM models ORDER BY id")
    assert [json.loads(c[0]) for c in custom] == [_CUSTOM_REDACTED, {"--spec-type": "ngram"}]
    raw = (tmp_path / "redacted.db").read_bytes()
    for secret in (b"sk-123", b"hf_abc", b"SK-CUSTOM", b"HF-CUSTOM", b"HFT-SHORT"):
        assert secret not in raw, secret  # not even in free pages
    file_db.export_database(tmp_path / "full.db", include_secrets=True)
    assert _rows(tmp_path / "full.db", "SELECT api_key, hf_token FROM models WHERE name = 'm'") == [
        ("sk-123", "hf_abc")
    ]
    full_custom = _rows(tmp_path / "full.db", "SELECT custom_params FROM models WHERE name = 'm'")
    assert json.loads(full_custom[0][0]) == _CUSTOM
    stream = io.StringIO()
    file_db.export_database(stream, format="jsonl", table="models")
    first = json.loads(stream.getvalue().splitlines()[0])
    assert first["api_key"] == "***"
    assert json.loads(first["custom_params"]) == _CUSTOM_REDACTED
    for secret in ("sk-123", "hf_abc", "SK-CUSTOM", "HF-CUSTOM", "HFT-SHORT"):
        assert secret not in stream.getvalue(), secret
    stream = io.StringIO()
    file_db.export_database(stream, format="jsonl", table="models", include_secrets=True)
    assert json.loads(json.loads(stream.getvalue().splitlines()[0])["custom_params"]) == _CUSTOM


def test_export_redacts_invalid_stored_custom_params(file_db: CyllamaDB, tmp_path: Path) -> None:
    # Hand-written, not valid JSON: it cannot be redacted flag by flag, so it goes whole.
    file_db.save_model("m")
    with file_db.pool.transaction() as conn:
        conn.execute("UPDATE models SET custom_params = '--api-key SK-RAW'")
    file_db.export_database(tmp_path / "redacted.db")
    assert _rows(tmp_path / "redacted.db", "SELECT custom_params FROM models") == [("***",)]
    assert b"SK-RAW" not in (tmp_path / "redacted.db").read_bytes()
    stream = io.StringIO()
    file_db.export_database(stream, format="jsonl", table="models")
    assert "SK-RAW" not in stream.getvalue()


def test_import_of_redacted_custom_params_keeps_stored_secrets(
    file_db: CyllamaDB, tmp_path: Path
) -> None:
    other = CyllamaDB(tmp_path / "other.db")
    other.save_model("shared", custom_params=_CUSTOM, ctx_size=4096)
    other.save_model("new", custom_params=_CUSTOM)
    other.save_model("wholly", custom_params={"--x": 1})
    other.export_database(tmp_path / "redacted.db")
    other.close()
    file_db.save_model("shared", custom_params={"--api-key": "MINE", "--spec-type": "ngram"}, ctx_size=2048)

    file_db.import_database(tmp_path / "redacted.db", on_conflict="replace")
    shared = file_db.get_model_by_name("shared")
    new = file_db.get_model_by_name("new")
    assert shared is not None and new is not None
    assert shared["ctx_size"] == 4096  # replaced...
    # ...but a redacted flag keeps this database's value, or is dropped: never "***"
    assert shared["custom_params"] == {"--api-key": "MINE", "--spec-type": "ngram"}
    assert new["custom_params"] == {"--spec-type": "ngram"}
    # re-exporting what was imported brings no secret back in clear either
    file_db.export_database(tmp_path / "again.db")
    raw = (tmp_path / "again.db").read_bytes()
    assert b"MINE" not in raw and b"SK-CUSTOM" not in raw

    # the same file imported twice: the restored rows match, so no new conflict
    report = file_db.import_database(tmp_path / "redacted.db")
    assert report["tables"]["models"]["conflicts"] == 0


def test_import_of_wholly_redacted_custom_params(file_db: CyllamaDB, tmp_path: Path) -> None:
    other = CyllamaDB(tmp_path / "other.db")
    other.save_model("m")
    other.save_model("n")
    with other.pool.transaction() as conn:
        conn.execute("UPDATE models SET custom_params = '--api-key SK-RAW'")
    other.export_database(tmp_path / "redacted.db")
    other.close()
    file_db.save_model("m", custom_params={"--api-key": "MINE"})
    file_db.import_database(tmp_path / "redacted.db", on_conflict="replace")
    assert file_db.get_model_by_name("m")["custom_params"] == {"--api-key": "MINE"}  # type: ignore[index]
    assert file_db.get_model_by_name("n")["custom_params"] is None  # type: ignore[index]


# -- import ----------------------------------------------------------------------------------


@pytest.fixture
def other(tmp_path: Path) -> Any:
    """A second database file to import from."""
    db = CyllamaDB(tmp_path / "other" / "other.db")
    yield db
    db.close()


def test_import_merges_config_by_key_and_reports_conflicts(
    file_db: CyllamaDB, other: CyllamaDB
) -> None:
    file_db.set_config("same", 1)
    file_db.set_config("differs", "mine")
    file_db.set_config("only_here", True)
    other.set_config("same", 1)
    other.set_config("differs", "theirs")
    other.set_config("only_there", {"x": 1})
    other.close()

    report = file_db.import_database(other.path)

    assert file_db.get_all_config() == {
        "differs": "mine",  # kept: on_conflict="keep" is the default
        "only_here": True,
        "only_there": {"x": 1},
        "same": 1,
    }
    entry = report["tables"]["config"]
    assert (entry["inserted"], entry["unchanged"], entry["conflicts"], entry["replaced"]) == (1, 1, 1, 0)
    assert report["conflicts"] == [{"table": "config", "key": "differs", "resolution": "kept"}]
    assert report["conflict_count"] == 1
    assert report["source"] == other.path


def test_import_replace_and_newer(file_db: CyllamaDB, other: CyllamaDB) -> None:
    file_db.clock = lambda: 1000.0
    other.clock = lambda: 2000.0
    file_db.set_config("older_here", "mine")
    other.set_config("older_here", "theirs")
    other.clock = lambda: 500.0
    other.set_config("newer_here", "theirs")
    file_db.set_config("newer_here", "mine")
    other.close()

    report = file_db.import_database(other.path, on_conflict="newer")
    assert file_db.get_config("older_here") == "theirs"
    assert file_db.get_config("newer_here") == "mine"
    assert sorted((c["key"], c["resolution"]) for c in report["conflicts"]) == [
        ("newer_here", "kept"),
        ("older_here", "replaced"),
    ]

    report = file_db.import_database(other.path, on_conflict="replace")
    assert file_db.get_config("newer_here") == "theirs"
    assert report["tables"]["config"]["replaced"] == 1


def test_import_metadata_by_key_but_never_the_library_keys(
    file_db: CyllamaDB, other: CyllamaDB
) -> None:
    other.set_metadata("theme_preference", "dark")
    other.set_metadata("server_start_time", "1")
    other.close()
    start = file_db.get_metadata("server_start_time")
    file_db.import_database(other.path)
    assert file_db.get_metadata("theme_preference") == "dark"
    assert file_db.get_metadata("server_start_time") == start


def _response(tokens: int) -> dict[str, Any]:
    return {
        "finish_reason": "length",
        "stats": {"prompt_tokens": 3, "generated_tokens": tokens, "total_time_ms": 10.0 * tokens,
                  "tokens_per_second": 50.0},
    }


def test_import_appends_stats_and_logs_once(file_db: CyllamaDB, other: CyllamaDB) -> None:
    file_db.clock = lambda: 10_000.0
    file_db.record_generation("/m/a.gguf", _response(4))
    file_db.log("INFO", "mine")
    for i in range(3):
        other.clock = lambda i=i: 20_000.0 + i
        other.record_generation("/m/b.gguf", _response(i + 1))
        other.log("WARNING", f"theirs {i}", category="test")
    other.close()

    report = file_db.import_database(other.path)
    assert report["tables"]["stats"]["inserted"] == 3
    assert report["tables"]["logs"]["inserted"] == 3
    assert "stats_rollup" not in report["tables"]  # derived by triggers, not copied
    summary = file_db.get_stats_summary()
    assert summary["total_generations"] == 4
    assert summary["by_model"]["/m/b.gguf"]["generations"] == 3
    assert summary["by_model"]["/m/b.gguf"]["tokens"] == 3 + 1 + 3 + 2 + 3 + 3
    assert sorted(e["message"] for e in file_db.get_logs()) == ["mine", "theirs 0", "theirs 1", "theirs 2"]

    again = file_db.import_database(other.path)
    assert again["tables"]["stats"]["inserted"] == 0
    assert again["tables"]["stats"]["duplicates"] == 3
    assert file_db.get_stats_summary()["total_generations"] == 4
    assert len(file_db.get_logs()) == 4


def test_import_models_by_name_keeping_stored_secrets(
    file_db: CyllamaDB, other: CyllamaDB, tmp_path: Path
) -> None:
    file_db.save_model("shared", model_path="/a.gguf", api_key="mine", ctx_size=2048)
    other.save_model("shared", model_path="/a.gguf", api_key="theirs", ctx_size=4096)
    other.save_model("new", model_path="/b.gguf", api_key="secret-b", status="running")
    other.save_model("same", model_path="/c.gguf")
    file_db.save_model("same", model_path="/c.gguf")
    other.export_database(tmp_path / "redacted.db")  # secrets become "***"
    other.close()

    report = file_db.import_database(tmp_path / "redacted.db", on_conflict="replace")
    models = {m["name"]: m for m in file_db.get_models()}
    assert set(models) == {"shared", "new", "same"}
    assert models["shared"]["ctx_size"] == 4096  # replaced...
    assert models["shared"]["api_key"] == "mine"  # ...but a redacted secret never overwrites
    assert models["new"]["api_key"] is None and models["new"]["status"] == "running"
    entry = report["tables"]["models"]
    assert entry["key"] == ["name"]
    assert (entry["inserted"], entry["conflicts"], entry["unchanged"]) == (1, 1, 1)
    assert report["conflicts"] == [{"table": "models", "key": "shared", "resolution": "replaced"}]

    file_db.import_database(other.path)  # the original, secrets included
    assert file_db.get_model_by_name("new")["api_key"] is None  # kept: on_conflict="keep"
    file_db.import_database(other.path, on_conflict="replace")
    assert file_db.get_model_by_name("new")["api_key"] == "secret-b"


def test_import_cache_by_key(file_db: CyllamaDB, other: CyllamaDB, tiny_model_path: Path) -> None:
    model = str(tiny_model_path)
    config = {"temperature": 0.0, "max_tokens": 8}
    file_db.cache_response("same", model, config, "answer")
    file_db.cache_response("differs", model, config, "mine")
    other.cache_response("same", model, config, "answer")
    other.cache_response("differs", model, config, "theirs")
    other.cache_response("new", model, config, "fresh")
    for _ in range(2):  # hit bookkeeping is no conflict
        other.get_cached_response("same", model, config)
    other.close()

    report = file_db.import_database(other.path)
    entry = report["tables"]["cache"]
    assert entry["key"] == ["cache_key"]
    assert (entry["inserted"], entry["unchanged"], entry["conflicts"]) == (1, 1, 1)
    assert "cache_totals" not in report["tables"]  # kept by triggers
    assert str(file_db.get_cached_response("new", model, config)) == "fresh"
    assert str(file_db.get_cached_response("differs", model, config)) == "mine"
    assert file_db.get_cache_stats()["entries"] == 3  # the trigger-kept totals agree
    [conflict] = report["conflicts"]
    assert conflict["table"] == "cache" and conflict["resolution"] == "kept"

    file_db.import_database(other.path, on_conflict="replace")
    assert str(file_db.get_cached_response("differs", model, config)) == "theirs"
    assert file_db.get_cache_stats()["entries"] == 3


def test_import_keeps_the_cache_size_limit(
    tmp_path: Path, other: CyllamaDB, tiny_model_path: Path
) -> None:
    for i in range(60):
        other.cache_response(f"prompt {i}", str(tiny_model_path), None, "x" * 20_000)
    other.close()
    with CyllamaDB(tmp_path / "small.db", max_cache_size_mb=0.5) as small:
        report = small.import_database(other.path)
        assert report["tables"]["cache"]["inserted"] == 60
        assert report["cache_evicted"] > 0
        stats = small.get_cache_stats()
        assert stats["size_bytes"] <= 0.5 * 1_048_576
        assert stats["entries"] == 60 - report["cache_evicted"]


def test_import_refuses_a_newer_schema(file_db: CyllamaDB, other: CyllamaDB) -> None:
    other.set_config("x", 1)
    with other.pool.transaction() as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (999, 'future')")
    other.close()
    with pytest.raises(SchemaVersionError, match="999"):
        file_db.import_database(other.path)
    assert file_db.get_config("x") is None
    assert _rows(Path(other.path), "SELECT MAX(version) FROM schema_version") == [(999,)]


def test_import_upgrades_an_older_file_without_touching_it(
    file_db: CyllamaDB, tmp_path: Path
) -> None:
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    # A file from a cyllama-db that knew only migration 1.
    conn.execute("BEGIN")
    _migrations.registered_migrations()[0].apply(conn)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                 " applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, name TEXT)")
    conn.execute("INSERT INTO schema_version (version, name) VALUES (1, 'config and metadata tables')")
    conn.execute("INSERT INTO config VALUES ('legacy', '7', 'int', 1, 1)")
    conn.execute("COMMIT")
    conn.close()

    report = file_db.import_database(old)
    assert report["source_schema_version"] == 1
    assert file_db.get_config("legacy") == 7
    assert _rows(old, "SELECT MAX(version) FROM schema_version") == [(1,)]


def test_import_is_all_or_nothing(
    file_db: CyllamaDB, other: CyllamaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    other.set_config("a", 1)
    other.log("INFO", "x")
    other.close()
    from cyllama_db.stores import importer as _importer

    def boom(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_importer.Importer, "_append", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        file_db.import_database(other.path)
    assert file_db.get_config("a") is None  # config was merged before logs, then rolled back
    monkeypatch.undo()
    file_db.import_database(other.path)  # the failed attempt left nothing attached
    assert file_db.get_config("a") == 1


def test_import_argument_errors(file_db: CyllamaDB, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        file_db.import_database(tmp_path / "missing.db")
    (tmp_path / "text.db").write_text("hello")
    with pytest.raises(ValueError, match="not a SQLite database"):
        file_db.import_database(tmp_path / "text.db")
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="not a cyllama-db database"):
        file_db.import_database(plain)
    with pytest.raises(ValueError, match="into itself"):
        file_db.import_database(file_db.path)
    with pytest.raises(ValueError, match="on_conflict"):
        file_db.import_database(plain, on_conflict="merge")


def test_import_skips_tables_it_does_not_have(file_db: CyllamaDB, other: CyllamaDB) -> None:
    with other.pool.transaction() as conn:
        conn.execute("CREATE TABLE plugin_data (id INTEGER PRIMARY KEY, v TEXT)")
    other.close()
    report = file_db.import_database(other.path)
    assert report["skipped_tables"] == ["plugin_data"]


def test_import_progress_reaches_the_total(file_db: CyllamaDB, other: CyllamaDB) -> None:
    for i in range(5):
        other.set_config(f"k{i}", i)
    other.close()
    calls: list[tuple[int, int]] = []
    file_db.import_database(other.path, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] >= 5
    assert all(d <= t for d, t in calls)


config_values = st.one_of(
    st.integers(min_value=-(2**62), max_value=2**62),
    st.booleans(),
    st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(min_size=1, max_size=15), config_values, max_size=8))
def test_export_then_import_round_trips_config(tmp_path: Path, entries: dict[str, Any]) -> None:
    work = tmp_path / f"rt{time.monotonic_ns()}"
    with CyllamaDB(work / "src.db") as src:
        for key, value in entries.items():
            src.set_config(key, value)
        src.export_database(work / "copy.db")
    with CyllamaDB(work / "dst.db") as dst:
        report = dst.import_database(work / "copy.db")
        assert dst.get_all_config() == dict(sorted(entries.items()))
        assert report["tables"]["config"]["inserted"] == len(entries)


# -- untrusted imports: the file's code never runs, and its bad rows are never stored -----------


# The views over the cache table must go before an attacker can swap the table itself.
_DROP_CACHE_VIEWS = ("DROP VIEW IF EXISTS cache_fts_source", "DROP VIEW IF EXISTS cache_entries")


def _crafted(tmp_path: Path, name: str, *statements: str, checks: bool = True) -> Path:
    """An export of a small, valid database, then edited with raw SQL as an attacker would."""
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    source = CyllamaDB(tmp_path / f"{name}-source.db")
    source.set_config("good", "kept")
    source.log("INFO", "a good line")
    source.cache_response("good prompt", tmp_path / "m.gguf", None, "good answer")
    source.record_generation(str(tmp_path / "m.gguf"), {"text": "x"})
    source.save_model("good-model", ctx_size=512)
    path = tmp_path / f"{name}.db"
    source.export_database(path)
    source.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if not checks:
            conn.execute("PRAGMA ignore_check_constraints = ON")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()
    return path


def _store_still_works(db: CyllamaDB, tmp_path: Path) -> None:
    """Every reader of every store answers, without an error, after the import."""
    assert db.get_config("good") == "kept"
    for key in db.get_all_config():
        db.get_config(key)
    assert any(entry["message"] == "a good line" for entry in db.get_logs(limit=1000))
    hit = db.get_cached_response("good prompt", tmp_path / "m.gguf")
    assert hit is not None and hit.text == "good answer"
    summary = db.get_stats_summary()
    assert summary["total_generations"] >= 1
    db.get_generation_history()
    assert db.get_model_by_name("good-model") is not None
    db.get_models()
    db.get_cache_stats()
    db.get_db_stats()
    db.get_all_metadata()
    db.get_metrics_history()
    with db.pool.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


SLOW = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000000) SELECT max(i) FROM n"


def test_import_never_runs_the_files_triggers_or_views(file_db: CyllamaDB, tmp_path: Path) -> None:
    source = _crafted(
        tmp_path, "trigger",
        # Fires when the import edits its copy (it deletes the library's own metadata keys there).
        "CREATE TRIGGER evil AFTER DELETE ON metadata BEGIN"
        " INSERT OR REPLACE INTO config VALUES ('pwned', 'yes', 'str', 0, 0);"
        f" {SLOW}; END",
        f"CREATE TRIGGER evil_insert AFTER INSERT ON config BEGIN {SLOW}; END",
        "CREATE TRIGGER evil_update AFTER UPDATE ON models BEGIN"
        " INSERT OR REPLACE INTO config VALUES ('pwned2', 'yes', 'str', 0, 0); END",
        "CREATE VIEW cache_view AS SELECT * FROM cache",
    )
    started = time.perf_counter()
    report = file_db.import_database(source)
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"the file's trigger ran: the import took {elapsed:.1f} s"
    assert file_db.get_config("pwned") is None and file_db.get_config("pwned2") is None
    assert report["tables"]["config"]["inserted"] == 1
    with file_db.pool.read() as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('trigger', 'view')")}
    assert not {"evil", "evil_insert", "evil_update", "cache_view"} & names
    _store_still_works(file_db, tmp_path)


def test_import_holds_the_write_lock_only_for_the_merge(file_db: CyllamaDB, tmp_path: Path) -> None:
    """Another writer is never starved by the file: a write during the import waits < 2 s."""
    import threading

    source = _crafted(tmp_path, "lock", f"CREATE TRIGGER slow AFTER DELETE ON metadata BEGIN {SLOW}; END")
    waits: list[float] = []
    done = threading.Event()

    def writer() -> None:
        with CyllamaDB(file_db.path) as other:
            while not done.is_set():
                started = time.perf_counter()
                other.set_config("tick", started)
                waits.append(time.perf_counter() - started)
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        file_db.import_database(source)
    finally:
        done.set()
        thread.join(30)
    assert waits and max(waits) < 2.0


BAD_ROWS = {
    "invalid JSON in config": (
        "INSERT INTO config VALUES ('bad-json', '{not json', 'json', 1, 1)", "config", "bad-json", "value"),
    "a blob value": (
        "INSERT INTO config VALUES ('bad-blob', X'00FF', 'str', 1, 1)", "config", "bad-blob", "blob"),
    "an int config that is not one": (
        "INSERT INTO config VALUES ('bad-int', 'many', 'int', 1, 1)", "config", "bad-int", "value_type"),
    "created_at=1e300": (
        "INSERT INTO logs (level, message, created_at) VALUES ('INFO', 'far future', 1e300)",
        "logs", None, "created_at"),
    "updated_at=9e18": (
        "INSERT INTO config VALUES ('bad-time', '\"x\"', 'json', 1, 9e18)", "config", "bad-time", "updated_at"),
    "a bad context_json": (
        "INSERT INTO logs (level, message, context_json, created_at) VALUES ('INFO', 'ctx', '{oops', 1)",
        "logs", None, "context_json"),
    "an unknown log level": (
        "INSERT INTO logs (level, message, created_at) VALUES ('LOUD', 'lvl', 1)", "logs", None, "CHECK"),
    "a cache hit flag of 5": (
        "INSERT INTO stats (model_path, cache_hit, created_at) VALUES ('m', 5, 1)", "stats", None, "CHECK"),
    "a text token count": (
        "INSERT INTO stats (model_path, prompt_tokens, cache_hit, created_at) VALUES ('m', 'lots', 0, 1)",
        "stats", None, "prompt_tokens"),
    "an infinite speed": (
        "INSERT INTO stats (model_path, tokens_per_second, cache_hit, created_at) VALUES ('m', 9e999, 0, 1)",
        "stats", None, "tokens_per_second"),
    "a model with broken GGUF metadata": (
        "INSERT INTO models (name, created_at, updated_at, metadata_json) VALUES ('bad-meta', 1, 1, '[')",
        "models", "bad-meta", "metadata_json"),
    "a model with a text context size": (
        "INSERT INTO models (name, created_at, updated_at, ctx_size) VALUES ('bad-ctx', 1, 1, 'huge')",
        "models", "bad-ctx", "ctx_size"),
    "a cache entry with NULL prompt": ((
        *_DROP_CACHE_VIEWS, "CREATE TABLE loose AS SELECT * FROM cache", "DROP TABLE cache",
        "ALTER TABLE loose RENAME TO cache",
        "INSERT INTO cache (cache_key, kind, prompt, prompt_hash, model_path, model_name, model_identity,"
        " config_json, response_text, size_bytes, created_at, hit_count, last_used_at)"
        " VALUES ('k-null', 'completion', NULL, 'h', 'm', 'm', 'i', '{}', 'r', 1, 1, 0, 1)"), "cache", "k-null", "prompt"),
    "two cache entries with one key": ((
        *_DROP_CACHE_VIEWS, "CREATE TABLE loose AS SELECT * FROM cache", "DROP TABLE cache",
        "ALTER TABLE loose RENAME TO cache",
        "INSERT INTO cache SELECT * FROM cache"), "cache", None, "same cache_key"),
}


@pytest.mark.parametrize("case", BAD_ROWS, ids=list(BAD_ROWS))
def test_import_skips_and_reports_each_bad_row(file_db: CyllamaDB, tmp_path: Path, case: str) -> None:
    statement, table, key, reason = BAD_ROWS[case]
    statements = statement if isinstance(statement, tuple) else (statement,)
    source = _crafted(tmp_path, "bad", *statements, checks=False)
    before = file_db.get_db_stats()
    report = file_db.import_database(source)
    assert report["skipped_row_count"] == 1, report["skipped_rows"]
    [row] = report["skipped_rows"]
    assert row["table"] == table and reason in row["reason"]
    if key is not None:
        assert row["key"] == key
    assert report["tables"][table]["skipped"] == 1
    assert sum(report["tables"][table]["skipped_reasons"].values()) == 1
    # The good rows of the same file came in; the bad one did not.
    assert file_db.get_config("good") == "kept"
    if table == "config":
        assert file_db.get_config(key) is None
    if table == "models":
        assert file_db.get_model_by_name(key) is None
    after = file_db.get_db_stats()
    assert after.get("stats_rows", 0) - before.get("stats_rows", 0) <= 1
    _store_still_works(file_db, tmp_path)


def test_import_recomputes_cache_sizes(file_db: CyllamaDB, tmp_path: Path) -> None:
    """A size_bytes that lies (tiny, negative or huge) is replaced by the store's own formula."""
    source = _crafted(tmp_path, "sizes", "UPDATE cache SET size_bytes = -1000000, prompt_hash = 'lie'")
    with CyllamaDB(tmp_path / "reference.db") as reference:
        reference.cache_response("good prompt", tmp_path / "m.gguf", None, "good answer")
        with reference.pool.read() as conn:
            [(true_size, true_hash)] = conn.execute("SELECT size_bytes, prompt_hash FROM cache").fetchall()
    file_db.import_database(source)
    with file_db.pool.read() as conn:
        [(size, prompt_hash)] = conn.execute("SELECT size_bytes, prompt_hash FROM cache").fetchall()
    assert (size, prompt_hash) == (true_size, true_hash)  # the same formula as cache.py's writes
    assert file_db.get_cache_stats()["size_bytes"] == true_size
    assert file_db.invalidate_cache(prompt="good prompt") == 1  # found by its real hash


def test_import_of_huge_lying_cache_sizes_does_not_evict_the_store(
    tmp_path: Path
) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    db = CyllamaDB(tmp_path / "mine.db", max_cache_size_mb=1)
    try:
        db.cache_response("mine", tmp_path / "m.gguf", None, "my answer")
        source = _crafted(tmp_path, "huge", "UPDATE cache SET size_bytes = 9000000000000")
        report = db.import_database(source)
        assert report["cache_evicted"] == 0
        assert db.get_cached_response("mine", tmp_path / "m.gguf") is not None
        assert db.get_cached_response("good prompt", tmp_path / "m.gguf") is not None
    finally:
        db.close()


def test_import_time_is_bounded(file_db: CyllamaDB, tmp_path: Path) -> None:
    from cyllama_db.errors import CyllamaDBError, ImportTimeoutError

    source = _crafted(tmp_path, "slow")
    before = file_db.get_all_config()
    with pytest.raises(ImportTimeoutError, match="timeout") as info:
        file_db.import_database(source, timeout=1e-9)
    assert isinstance(info.value, (CyllamaDBError, TimeoutError))
    assert file_db.get_all_config() == before
    with pytest.raises(ValueError, match="timeout"):
        file_db.import_database(source, timeout=0)
    with pytest.raises(TypeError, match="timeout"):
        file_db.import_database(source, timeout="1m")  # type: ignore[arg-type]
    assert file_db.import_database(source, timeout=None)["tables"]["config"]["inserted"] == 1


def test_import_of_a_file_with_a_table_missing_required_columns(file_db: CyllamaDB, tmp_path: Path) -> None:
    source = _crafted(
        tmp_path, "columns",
        "DROP TABLE logs",
        "CREATE TABLE logs (id INTEGER PRIMARY KEY, message TEXT, created_at REAL)",
        "INSERT INTO logs (message, created_at) VALUES ('no level', 1)",
    )
    report = file_db.import_database(source)
    assert report["tables"]["logs"]["skipped"] == 1
    assert "level" in report["skipped_rows"][0]["reason"]
    assert file_db.get_config("good") == "kept"
    file_db.get_logs()


# -- leftovers of killed exports and imports ---------------------------------------------------

KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from cyllama_db import CyllamaDB
    db = CyllamaDB(sys.argv[1])
    def die(done, total):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-way: after the first pages or rows
    if sys.argv[2] == "export":
        db.export_database(sys.argv[3], progress=die)
    else:
        db.import_database(sys.argv[3], progress=die)
    """
)


def _killed(*argv: str, tmpdir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED, *argv], capture_output=True, text=True, timeout=120,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )
    assert proc.returncode == -9, proc.stderr


def test_a_killed_export_leaves_a_temp_file_that_the_next_export_removes(file_db: CyllamaDB, tmp_path: Path) -> None:
    file_db.set_config("k", "v" * 10_000)
    out = tmp_path / "exports"
    for i in range(3):
        _killed(file_db.path, "export", str(out / f"copy{i}.db"), tmpdir=tmp_path)
    # Each run removed the one before it left: three kills, one leftover.
    leftovers = sorted(p.name for p in out.iterdir())
    assert len(leftovers) == 1 and leftovers[0].endswith(".cyllama-export.tmp"), leftovers
    # Someone else's file that looks alike, and a temp file of a live export, stay.
    (out / "notes.tmp").write_text("mine")
    live = out / f".other.db.{os.getpid()}.cyllama-export.tmp"
    live.write_text("in progress")
    file_db.export_database(out / "final.db")
    assert sorted(p.name for p in out.iterdir()) == sorted(["final.db", "notes.tmp", live.name])


def test_a_killed_import_leaves_a_working_copy_that_the_next_import_removes(
    file_db: CyllamaDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    source = tmp_path / "source.db"
    with CyllamaDB(source) as other:
        other.set_config("imported", 1)
    for _ in range(3):
        _killed(file_db.path, "import", str(source), tmpdir=temp)
    leftovers = [p.name for p in temp.iterdir()]  # each run removed the one before
    assert len(leftovers) == 1 and leftovers[0].startswith("cyllama-import-"), leftovers
    assert file_db.get_config("imported") is None  # the killed merges wrote nothing
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    file_db.import_database(source)
    assert list(temp.iterdir()) == []
    assert file_db.get_config("imported") == 1
