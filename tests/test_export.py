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
from cyllama_db import migrations as _migrations


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
    from cyllama_db import _export

    def boom(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_export.ExportMixin, "_append", boom)
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
