"""Moving data between engines (issue 16 item 4): a SQLite file into and out of PostgreSQL.

Every test runs against a real server (``pg_url``, tests/pgserver.py) and
skips, saying why, only where no server binaries exist.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import CyllamaDB, SchemaVersionError
from cyllama_db.cli import main

PASSWORD = "s3cret-pw"
TABLES = ("config", "metadata", "models", "cache", "stats", "stats_rollup", "stats_totals", "logs", "metrics_history")
LOCAL_METADATA = ("db_version", "server_start_time")
CUSTOM = {"--api-key": "SK-CUSTOM", "--spec-type": "ngram"}


def _with_password(url: str) -> str:
    # The test cluster trusts local connections: a password is accepted and ignored.
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def _response(tokens: int) -> dict[str, Any]:
    return {
        "finish_reason": "length",
        "stats": {"prompt_tokens": 3, "generated_tokens": tokens, "total_time_ms": 10.0 * tokens,
                  "tokens_per_second": 50.0},
    }


def _populate(path: Path, model: Path) -> None:
    """A SQLite database with rows in every store."""
    model.write_bytes(b"GGUF" + bytes(60))
    with CyllamaDB(path) as db:
        db.set_config("answer", 42)
        db.set_config("name", "cyllama")
        db.set_metadata("team", "red")
        db.save_model("m", model_path=str(model), api_key="sk-123", hf_token="hf_abc",
                      custom_params=CUSTOM, ctx_size=512)
        db.cache_response("a prompt", model, None, "an answer")
        db.cache_response("another", model, {"temperature": 0.0}, "more")
        for i in range(5):
            db.clock = lambda i=i: 1_700_000_000.0 + 600 * i
            db.record_generation(str(model), _response(i + 1))
            db.log("WARNING" if i % 2 else "INFO", f"line {i}", category="test")
        db.save_metrics({"cpu_usage": 12.5, "memory_usage": 40.0})


def _rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        # ids are given anew on import; every other column must survive.
        keep = ['"' + c + '"' for c in cols if c != "id"]
        where = f" WHERE key NOT IN {LOCAL_METADATA!r}" if table == "metadata" else ""
        return sorted(
            conn.execute(f"SELECT {', '.join(keep)} FROM {table}{where}").fetchall(), key=repr
        )
    finally:
        conn.close()


def _server_counts(db: CyllamaDB) -> dict[str, int]:
    with db.pool.read() as conn:
        return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES}


def test_round_trip_sqlite_postgresql_sqlite_keeps_every_store(pg_url: str, tmp_path: Path) -> None:
    source = tmp_path / "local.db"
    _populate(source, tmp_path / "m.gguf")
    with CyllamaDB(url=pg_url) as pg:
        report = pg.import_database(source)
        assert report["skipped_row_count"] == 0 and report["skipped_tables"] == []
        assert report["tables"]["stats"]["inserted"] == 5
        assert report["tables"]["logs"]["inserted"] == 5
        assert report["tables"]["cache"]["inserted"] == 2
        assert report["tables"]["models"]["inserted"] == 1
        assert "stats_rollup" not in report["tables"]  # derived: rebuilt, never copied
        assert pg.get_config("answer") == 42
        assert pg.get_model_by_name("m")["api_key"] == "sk-123"
        assert pg.get_cache_stats()["entries"] == 2

        again = pg.import_database(source)  # harmless twice
        assert again["tables"]["stats"]["inserted"] == 0 and again["tables"]["stats"]["duplicates"] == 5
        assert again["tables"]["config"]["unchanged"] == 2
        assert _server_counts(pg)["stats"] == 5

        result = pg.export_database(tmp_path / "back.db", include_secrets=True)
        assert result["format"] == "sqlite" and result["redacted_secrets"] == 0
        # (a hit changes the entry's bookkeeping: after the export)
        assert str(pg.get_cached_response("a prompt", tmp_path / "m.gguf")) == "an answer"
    back = tmp_path / "back.db"
    for table in TABLES:
        assert _rows(back, table) == _rows(source, table), table
    # The file is an ordinary cyllama-db database: every store reads it.
    with CyllamaDB(back) as db:
        assert db.get_stats_summary()["total_generations"] == 5
        assert [e["message"] for e in db.get_logs(search="line 3")] == ["line 3"]
        assert db.get_cache_stats()["entries"] == 2
        assert str(db.get_cached_response("another", tmp_path / "m.gguf", {"temperature": 0.0})) == "more"
        assert db.get_model_by_name("m")["custom_params"] == CUSTOM
        with db.pool.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_on_conflict_keep_replace_newer_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "file.db") as other:
        other.clock = lambda: 2_000.0
        other.set_config("newer-there", "theirs")
        other.set_config("new", "fresh")
        other.clock = lambda: 500.0
        other.set_config("older-there", "theirs")
        other.save_model("shared", ctx_size=4096, api_key="theirs")
        other.export_database(tmp_path / "redacted.db")  # api_key becomes "***"
    with CyllamaDB(url=pg_url) as pg:
        pg.clock = lambda: 1_000.0
        pg.set_config("newer-there", "mine")
        pg.set_config("older-there", "mine")
        pg.save_model("shared", ctx_size=2048, api_key="mine")

        keep = pg.import_database(tmp_path / "redacted.db")
        assert keep["tables"]["config"]["inserted"] == 1 and keep["tables"]["config"]["conflicts"] == 2
        assert {(c["key"], c["resolution"]) for c in keep["conflicts"]} == {
            ("newer-there", "kept"), ("older-there", "kept"), ("shared", "kept")
        }
        assert pg.get_config("newer-there") == "mine" and pg.get_config("new") == "fresh"

        newer = pg.import_database(tmp_path / "redacted.db", on_conflict="newer")
        resolved = {c["key"]: c["resolution"] for c in newer["conflicts"]}
        assert resolved["newer-there"] == "replaced" and resolved["older-there"] == "kept"
        assert pg.get_config("newer-there") == "theirs" and pg.get_config("older-there") == "mine"

        replace = pg.import_database(tmp_path / "redacted.db", on_conflict="replace")
        assert replace["tables"]["config"]["replaced"] == 1
        assert pg.get_config("older-there") == "theirs"
        shared = pg.get_model_by_name("shared")
        assert shared["ctx_size"] == 4096  # replaced...
        assert shared["api_key"] == "mine"  # ...but a redacted secret never overwrites the stored one


def _counts_unchanged(pg: CyllamaDB, before: dict[str, int]) -> None:
    assert _server_counts(pg) == before


def test_foreign_newer_and_non_database_files_are_refused(pg_url: str, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE config (key TEXT, value TEXT)")
    conn.execute("INSERT INTO config VALUES ('x', 'y')")
    conn.commit()
    conn.close()
    newer = tmp_path / "newer.db"
    with CyllamaDB(newer) as db:
        db.set_config("from-the-future", 1)
        with db.pool.transaction() as c:
            c.execute("INSERT INTO schema_version (version, name) VALUES (999, 'future')")
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    with CyllamaDB(url=pg_url) as pg:
        pg.set_config("mine", 1)
        before = _server_counts(pg)
        with pytest.raises(ValueError, match="not a cyllama-db database"):
            pg.import_database(foreign)
        with pytest.raises(SchemaVersionError):
            pg.import_database(newer)
        with pytest.raises(ValueError, match="not a SQLite database"):
            pg.import_database(text)
        _counts_unchanged(pg, before)
        assert pg.get_config("from-the-future") is None


def test_hostile_file_into_postgresql(pg_url: str, tmp_path: Path) -> None:
    """The file's code never runs; rows the server could not hold are skipped, the rest come in."""
    path = tmp_path / "hostile.db"
    _populate(path, tmp_path / "m.gguf")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TRIGGER evil AFTER DELETE ON metadata BEGIN"
                 " INSERT OR REPLACE INTO config VALUES ('pwned', '\"yes\"', 'json', 0, 0); END")
    conn.execute("INSERT INTO logs (level, message, created_at) VALUES ('INFO', 'nul' || char(0) || 'here', 1)")
    conn.execute("INSERT INTO logs (level, message, created_at) VALUES ('INFO', CAST(X'FFFE41' AS TEXT), 2)")
    conn.execute("INSERT INTO config VALUES ('bad-json', '{not json', 'json', 1, 1)")
    conn.close()
    with CyllamaDB(url=pg_url) as pg:
        report = pg.import_database(path)
        reasons = sorted(r["reason"] for r in report["skipped_rows"])
        assert report["skipped_row_count"] == 3, reasons
        assert any("NUL" in r for r in reasons) and any("UTF-8" in r for r in reasons)
        assert pg.get_config("pwned") is None and pg.get_config("bad-json") is None
        assert report["tables"]["logs"]["inserted"] == 5
        assert pg.get_config("answer") == 42


def test_import_into_postgresql_is_all_or_nothing(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "local.db"
    _populate(source, tmp_path / "m.gguf")
    from cyllama_db.stores import transfer

    def boom(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(transfer._Merge, "append", boom)  # after config, models and cache went in
    with CyllamaDB(url=pg_url) as pg:
        before = _server_counts(pg)
        with pytest.raises(Exception, match="disk on fire"):
            pg.import_database(source)
        _counts_unchanged(pg, before)


def test_export_from_postgresql_redacts_secrets(pg_url: str, tmp_path: Path) -> None:
    with CyllamaDB(url=pg_url) as pg:
        pg.save_model("m", model_path="/x.gguf", api_key="sk-123", hf_token="hf_abc", custom_params=CUSTOM)
        pg.save_model("plain", custom_params={"--spec-type": "ngram"})
        result = pg.export_database(tmp_path / "redacted.db")
        assert result["redacted_secrets"] == 3
        raw = (tmp_path / "redacted.db").read_bytes()
        for secret in (b"sk-123", b"hf_abc", b"SK-CUSTOM"):
            assert secret not in raw, secret  # never written, not even to free pages
        conn = sqlite3.connect(tmp_path / "redacted.db")
        assert conn.execute("SELECT api_key, hf_token FROM models WHERE name = 'm'").fetchall() == [("***", "***")]
        conn.close()
        with pytest.raises(FileExistsError):
            pg.export_database(tmp_path / "redacted.db")
        full = pg.export_database(tmp_path / "full.db", include_secrets=True)
        assert full["redacted_secrets"] == 0
        conn = sqlite3.connect(tmp_path / "full.db")
        assert conn.execute("SELECT api_key FROM models WHERE name = 'm'").fetchall() == [("sk-123",)]
        conn.close()
        lines = tmp_path / "models.jsonl"
        pg.export_database(lines, format="jsonl", table="models")
        assert "sk-123" not in lines.read_text() and len(lines.read_text().splitlines()) == 2
    # The redacted file imported back never stores "***" over the server's secrets.
    with CyllamaDB(url=pg_url) as pg:
        pg.import_database(tmp_path / "redacted.db", on_conflict="replace")
        assert pg.get_model_by_name("m")["api_key"] == "sk-123"


def test_cli_import_and_export_with_a_postgresql_url(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "local.db"
    _populate(source, tmp_path / "m.gguf")
    url = _with_password(pg_url)
    assert main(["--db", url, "import", str(source)]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "stats" in out and "added" in out and "postgresql://" in out
    assert PASSWORD not in out
    assert main(["--db", url, "import", str(source), "--json"]) == 0
    captured = capsys.readouterr()
    pg_report = json.loads(captured.out)
    assert PASSWORD not in captured.out + captured.err
    with CyllamaDB(tmp_path / "other.db") as other:
        sqlite_report = other.import_database(source)
    assert set(pg_report) == set(sqlite_report)
    assert set(pg_report["tables"]) == set(sqlite_report["tables"])
    assert pg_report["tables"]["stats"]["duplicates"] == 5

    assert main(["--db", url, "export", str(tmp_path / "backup.db")]) == 0
    captured = capsys.readouterr()
    assert "exported postgresql://" in captured.out and "secrets redacted" in captured.out
    assert PASSWORD not in captured.out + captured.err
    assert _rows(tmp_path / "backup.db", "stats") == _rows(source, "stats")
