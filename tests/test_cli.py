"""The cyllama-db command line, run through main(argv) against real database files."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import CyllamaDB
from cyllama_db.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


class Run:
    """``run("info", "--json")`` -> (exit code, stdout, stderr) against one database file."""

    def __init__(self, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.path = path
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--db", str(self.path), *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def run(db_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(db_path, capsys)


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- framework -------------------------------------------------------------------------------


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "export" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert re.match(r"cyllama-db \d", capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["info", "--bogus"],
        ["history", "-n", "zero"],
        ["history", "-n", "0"],
        ["logs", "--since", "yesterday"],
        ["logs", "--level", "LOUD"],
        ["config", "set", "k", "abc", "--type", "int"],
        ["config", "set", "k", "maybe", "--type", "bool"],
        ["config", "set", "k", "{bad", "--type", "json"],
        ["export", "x.jsonl", "--format", "jsonl"],
        ["export", "x.db", "--table", "config"],
        ["cache", "invalidate"],
        ["models", "add", "m.gguf", "--param", "novalue"],
        ["dashboard", "--port", "70000"],
        ["metrics", "watch", "--interval", "-1"],
        # numbers too big for timedelta, SQLite or time.sleep() (were OverflowError tracebacks)
        ["stats", "--since", "999999999999999d"],
        ["stats", "--until", "9" * 400],
        ["logs", "--since", "999999999999999d"],
        ["cache", "invalidate", "--older-than", "999999999999999d"],
        ["cache", "list", "-n", "99999999999999999999"],
        ["history", "--offset", "99999999999999999999"],
        ["history", "-n", "99999999999999999999"],
        ["logs", "-n", "99999999999999999999"],
        ["models", "update", "m", "--param", "ctx_size=99999999999999999999999"],
        ["models", "add", "m.gguf", "--param", "gpu_layers=-99999999999999999999999"],
        ["metrics", "history", "--minutes", "1e300"],
        ["metrics", "history", "--minutes", "nan"],
        ["logs", "-f", "--interval", "1e300"],
        ["logs", "-f", "--interval", "inf"],
        ["dashboard", "--refresh", "1e300"],
        ["dashboard", "--interval", "0.01"],
        # a tight loop writing to the database
        ["metrics", "watch", "--interval", "1e-9"],
        ["metrics", "watch", "--interval", "0.09"],
        ["models", "update", "m", "--rename", ""],
        ["models", "update", "m", "--rename", " ", "--type", "llama"],
    ],
)
def test_usage_mistakes_exit_2_with_one_line(run: Run, argv: list[str]) -> None:
    code, _, err = run(*argv)
    assert code == 2
    line = _one_line_error(err)
    assert line.startswith("cyllama-db") and "error:" in line
    assert len(line) < 300  # a 400-digit value is not echoed in full


def test_arithmetic_errors_are_one_line_exit_1(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cyllama_db.cli.database as database

    def overflow(args: argparse.Namespace) -> int:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(database, "cmd_info", overflow)
    code, _, err = run("info")
    assert code == 1
    assert _one_line_error(err) == (
        "cyllama-db: error: Python int too large to convert to SQLite INTEGER"
    )


def test_errors_exit_1_with_one_line_and_no_traceback(run: Run, tmp_path: Path) -> None:
    code, _, err = run("config", "get", "missing")
    assert code == 1
    assert "'missing' is not set" in _one_line_error(err)
    code, _, err = run("import", str(tmp_path / "nope.db"))
    assert code == 1
    assert "does not exist" in _one_line_error(err)


def test_unopenable_database_is_an_error_not_a_silent_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("this is not sqlite")
    assert main(["--db", str(bad), "info"]) == 1
    assert "cannot open database" in _one_line_error(capsys.readouterr().err)
    assert bad.read_text() == "this is not sqlite"


@pytest.mark.parametrize("kind", ["corrupt", "directory", "empty"])
def test_unopenable_database_prints_exactly_one_line(tmp_path: Path, kind: str) -> None:
    # The library's "falling back to an in-memory database" warning used to
    # reach stderr too (logging's last-resort handler): two lines for one error.
    if kind == "corrupt":
        target = tmp_path / "bad.db"
        target.write_text("this is not sqlite")
    elif kind == "directory":
        target = tmp_path / "folder"
        target.mkdir()
    for command in (["info"], ["config", "list", "--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "cyllama_db", "--db", "" if kind == "empty" else str(target),
             *command],
            capture_output=True, text=True, check=False, cwd=tmp_path,
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == ""
        line = _one_line_error(proc.stderr)
        assert line.startswith("cyllama-db: error: ")
        assert "falling back" not in line
        if kind == "empty":
            assert "empty" in line
        else:
            assert str(target) in line
    if kind == "corrupt":
        assert target.read_text() == "this is not sqlite"


def test_other_warnings_while_opening_still_reach_the_log(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from cyllama_db.db import facade as database

    real_init = database.CyllamaDB.__init__

    def noisy_init(self: Any, *args: Any, **kwargs: Any) -> None:
        logging.getLogger("cyllama_db").warning("something else worth knowing")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(database.CyllamaDB, "__init__", noisy_init)
    caplog.set_level(logging.WARNING, logger="cyllama_db")
    assert main(["--db", str(db_path), "info"]) == 0
    assert [r.getMessage() for r in caplog.records] == ["something else worth knowing"]


def test_db_may_also_follow_the_command(
    db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "set", "k", "v", "--db", str(db_path)]) == 0
    assert main(["--db", str(tmp_path / "other.db"), "config", "get", "k", "--db", str(db_path)]) == 0
    assert capsys.readouterr().out.endswith("v\n")


def test_env_path_and_disabled_env(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CYLLAMA_DB_PATH", str(db_path))
    monkeypatch.setenv("CYLLAMA_DB_ENABLED", "0")  # the CLI is an explicit request: still works
    assert main(["config", "set", "k", "v"]) == 0
    capsys.readouterr()
    assert main(["config", "get", "k"]) == 0
    assert capsys.readouterr().out == "v\n"
    assert db_path.exists()


def test_python_dash_m_runs_the_cli(db_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cyllama_db", "--db", str(db_path), "info", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == str(db_path)
    proc = subprocess.run(
        [sys.executable, "-m", "cyllama_db", "nope"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


# -- info / vacuum / migrate -----------------------------------------------------------------


def test_info(run: Run, db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        db.set_config("a", 1)
        db.set_config("b", 2)
    info = run.json("info")
    assert info["path"] == str(db_path)
    assert info["schema_version"] == info["latest_schema_version"] >= 1
    assert info["counts"]["config_entries"] == 2
    assert info["file_bytes"] > 0
    code, out, _ = run("info")
    assert code == 0
    assert str(db_path) in out and re.search(r"config entries:\s+2", out)


def test_vacuum_shrinks_the_file(run: Run, db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        for i in range(200):
            db.set_config(f"k{i}", "x" * 4000)
        for i in range(200):
            db.delete_config(f"k{i}")
        db.vacuum()  # fold the WAL in so the file holds the free pages
        with db.pool.read() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = db_path.stat().st_size
    code, out, _ = run("vacuum")
    assert code == 0 and out.startswith("vacuumed")
    assert db_path.stat().st_size <= before


def test_migrate_status_does_not_touch_the_file(run: Run, db_path: Path) -> None:
    status = run.json("migrate", "--status")
    assert status["exists"] is False and status["schema_version"] == 0
    assert {m["status"] for m in status["migrations"]} == {"pending"}
    assert not db_path.exists()

    migrated = run.json("migrate")
    assert migrated["from_version"] == 0
    assert migrated["to_version"] == status["latest_version"]

    status = run.json("migrate", "--status")
    assert {m["status"] for m in status["migrations"]} == {"applied"}
    code, out, _ = run("migrate")
    assert code == 0 and "up to date" in out

    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO schema_version (version, name) VALUES (999, 'future')")
    conn.commit()
    conn.close()
    status = run.json("migrate", "--status")
    assert status["migrations"][-1] == {
        "version": 999, "name": "future", "status": "unknown (newer cyllama-db)",
        "applied_at": status["migrations"][-1]["applied_at"],
    }
    code, _, err = run("migrate")
    assert code == 1
    assert "schema version 999" in _one_line_error(err)


@pytest.mark.parametrize("kind", ["corrupt", "directory"])
def test_migrate_status_errors_name_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    target = tmp_path / "x.db"
    if kind == "corrupt":
        target.write_bytes(b"not a database at all, but long enough to have a header" * 100)
    else:
        target.mkdir()
    assert main(["--db", str(target), "migrate", "--status"]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert str(target) in line


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_name", "expected"),
    [
        ("hello", "str", "hello"),
        ("42", "int", 42),
        ("0.5", "float", 0.5),
        ("yes", "bool", True),
        ("off", "bool", False),
        ('{"a": [1, null]}', "json", {"a": [1, None]}),
    ],
)
def test_config_set_get_typed(run: Run, db_path: Path, value: str, type_name: str, expected: Any) -> None:
    code, _, err = run("config", "set", "key", value, "--type", type_name)
    assert code == 0, err
    with CyllamaDB(db_path) as db:
        assert db.get_config("key") == expected
        assert type(db.get_config("key")) is type(expected)
    assert run.json("config", "get", "key") == {"key": "key", "value": expected, "type": type_name}


@pytest.mark.parametrize(
    ("text", "shown", "as_json"),
    [("NaN", "nan", "NaN"), ("1e999", "inf", "Infinity"), ("-inf", "-inf", "-Infinity")],
)
def test_config_non_finite_floats_print_as_they_are(
    run: Run, db_path: Path, text: str, shown: str, as_json: str
) -> None:
    # The store keeps nan/inf; the CLI used to print them as "null".
    # "--": argparse would take "-inf" for an option
    code, out, err = run("config", "set", "--type", "float", "k", "--", text)
    assert code == 0, err
    assert out == f"k = {shown} (float)\n"
    assert run("config", "get", "k")[1] == f"{shown}\n"
    # what `config get` prints is accepted back by `config set --type float`
    assert run("config", "set", "--type", "float", "k2", "--", shown)[0] == 0
    with CyllamaDB(db_path) as db:
        a, b = db.get_config("k"), db.get_config("k2")
        assert isinstance(a, float) and math.isnan(a) == math.isnan(b)
        assert math.isnan(a) or a == b
    # --json: valid JSON (no NaN/Infinity literals), the value spelled as a string
    code, out, _ = run("config", "get", "k", "--json")
    assert code == 0
    assert json.loads(out, parse_constant=_no_constants) == {
        "key": "k", "value": as_json, "type": "float"
    }
    listed = json.loads(run("config", "list", "--json")[1], parse_constant=_no_constants)
    assert {"key": "k", "value": as_json, "type": "float"} in listed
    assert re.search(rf"^k\s+float\s+{re.escape(shown)}$", run("config", "list")[1], re.M)


def _no_constants(name: str) -> Any:
    raise AssertionError(f"invalid JSON constant {name}")


def test_config_list_get_unset(run: Run) -> None:
    run("config", "set", "name", "llama")
    run("config", "set", "n", "3", "--type", "int")
    code, out, _ = run("config", "list")
    assert code == 0
    assert re.search(r"^n\s+int\s+3$", out, re.M) and re.search(r"^name\s+str\s+llama$", out, re.M)
    assert run.json("config", "list") == [
        {"key": "n", "value": 3, "type": "int"},
        {"key": "name", "value": "llama", "type": "str"},
    ]
    assert run("config", "get", "name")[1] == "llama\n"
    assert run("config", "unset", "name")[0] == 0
    code, _, err = run("config", "unset", "name")
    assert code == 1 and "not set" in err
    assert run.json("config", "list") == [{"key": "n", "value": 3, "type": "int"}]


# -- export / import -------------------------------------------------------------------------


def test_export_and_import(run: Run, db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("config", "set", "shared", "mine")
    other = tmp_path / "other.db"
    with CyllamaDB(other) as db:
        db.set_config("shared", "theirs")
        db.set_config("new", 5)
    backup = tmp_path / "backup" / "copy.db"
    code, out, err = run("export", str(backup))
    assert code == 0, err
    assert "exported" in out and backup.exists()
    code, _, err = run("export", str(backup))
    assert code == 1 and "--force" in _one_line_error(err)
    assert run("export", str(backup), "--force")[0] == 0

    code, out, err = run("import", str(other))
    assert code == 0, err
    assert re.search(r"^config\s+by key\s+2\s+1\s+0\s+1\s+0$", out, re.M), out
    assert "1 conflicts" in out and "shared: kept" in out
    report = run.json("import", str(other), "--on-conflict", "replace")
    assert report["tables"]["config"]["replaced"] == 1
    assert run("config", "get", "shared")[1] == "theirs\n"


def test_export_jsonl_to_stdout_and_file(run: Run, tmp_path: Path) -> None:
    run("config", "set", "a", "1", "--type", "int")
    code, out, _ = run("export", "-", "--format", "jsonl", "--table", "config")
    assert code == 0
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["a"]
    result = run.json("export", str(tmp_path / "c.jsonl"), "--format", "jsonl", "--table", "config")
    assert result["rows"] == 1
    code, _, err = run("export", "-", "--format", "jsonl", "--table", "nope")
    assert code == 1 and "no table 'nope'" in err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_export_and_import_show_progress_on_a_terminal(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("config", "set", "a", "1")
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(["--db", str(run.path), "export", str(tmp_path / "p.db")]) == 0
    assert re.search(r"\rexporting: 100\.0% \(\d+/\d+\)\n$", tty.getvalue())
    tty.truncate(0)
    assert main(["--db", str(run.path), "import", str(tmp_path / "p.db")]) == 0
    assert "importing: 100.0%" in tty.getvalue()


def test_no_progress_when_not_a_terminal(run: Run, tmp_path: Path) -> None:
    code, _, err = run("export", str(tmp_path / "q.db"))
    assert code == 0 and err == ""


# -- cache -----------------------------------------------------------------------------------

CONFIG = {"temperature": 0.0, "max_tokens": 8}


def test_cache_commands(run: Run, db_path: Path, tiny_model_path: Path) -> None:
    model = str(tiny_model_path)
    with CyllamaDB(db_path) as db:
        db.clock = lambda: time.time() - 10 * 86400
        db.cache_response("old prompt", model, CONFIG, "old answer", ttl=None)
        db.clock = time.time
        db.cache_response("hello", model, CONFIG, "world")
        db.cache_response("multi\nline", model, CONFIG, "x")
        for _ in range(3):
            assert db.get_cached_response("hello", model, CONFIG) is not None

    entries = run.json("cache", "list")
    assert [e["prompt"] for e in entries] == ["multi\nline", "hello", "old prompt"]  # newest first
    assert run.json("cache", "list", "--sort", "hits")[0]["prompt"] == "hello"
    assert len(run.json("cache", "list", "-n", "1")) == 1
    assert len(run.json("cache", "list", "--model", model)) == 3
    assert run.json("cache", "list", "--model", "/other/model.gguf") == []
    hello = next(e for e in entries if e["prompt"] == "hello")
    assert hello["hit_count"] == 3
    assert re.match(r"\d{4}-\d\d-\d\dT", hello["created_at"])
    code, out, _ = run("cache", "list")
    assert code == 0 and re.search(r"^[0-9a-f]{16}\s+tiny-llama\.gguf\s+-\s+3\s", out, re.M), out

    with CyllamaDB(db_path) as db:
        db.cache_response("hello", model, CONFIG, "team answer", namespace="team-a")
    assert [e["response_text"] if "response_text" in e else e["prompt"] for e in
            run.json("cache", "list", "--namespace", "team-a")] == ["hello"]
    assert len(run.json("cache", "list")) == 4
    code, out, _ = run("cache", "invalidate", "--namespace", "team-a")
    assert code == 0 and "removed 1 cache entries" in out
    assert run.json("cache", "list", "--namespace", "team-a") == []
    assert len(run.json("cache", "list")) == 3

    shown = run.json("cache", "show", hello["cache_key"][:12])
    assert shown["response_text"] == "world" and shown["config"]["max_tokens"] == 8
    code, out, _ = run("cache", "show", hello["cache_key"])
    assert code == 0 and re.search(r"^response_text:\s+world$", out, re.M)
    code, _, err = run("cache", "show", "zzzz")
    assert code == 1 and "no cache entry" in _one_line_error(err)

    stats = run.json("cache", "stats")
    assert (stats["entries"], stats["hits"]) == (3, 3)
    assert stats["hit_rate"] is None  # no generations recorded yet
    code, out, _ = run("cache", "stats")
    assert re.search(r"^entries:\s+3$", out, re.M) and re.search(r"^hits served:\s+3$", out, re.M)

    assert run("cache", "invalidate", "--older-than", "7d")[1] == "removed 1 cache entries\n"
    assert run("cache", "invalidate", "--prompt", "hello")[1] == "removed 1 cache entries\n"
    assert run("cache", "cleanup")[0] == 0
    code, _, err = run("cache", "invalidate", "--all", "--prompt", "x")
    assert code == 2 and "--all" in _one_line_error(err)
    assert run("cache", "invalidate", "--model", model)[1] == "removed 1 cache entries\n"
    assert run.json("cache", "list") == []


def test_cache_show_takes_a_unique_key_prefix(run: Run, db_path: Path, tiny_model_path: Path) -> None:
    model = str(tiny_model_path)
    with CyllamaDB(db_path) as db:
        for i in range(17):  # 17 hex keys: at least two share their first digit
            db.cache_response(f"prompt {i}", model, CONFIG, f"answer {i}")
        keys = sorted(e["cache_key"] for e in db.list_cache_entries(limit=100))
        # The store method the command calls: key order, at most `limit`, no id, JSON parsed.
        found = db.cache.find(keys[3][:12], limit=2)
        assert [e["cache_key"] for e in found] == [keys[3]]
        assert "id" not in found[0] and "config_json" not in found[0]
        assert found[0]["config"]["max_tokens"] == 8 and found[0]["response_text"].startswith("answer")
        assert isinstance(found[0]["created_at"], datetime)
        assert [e["cache_key"] for e in db.cache.find(keys[0][:1], limit=1)] == keys[:1]
    shared = next(c for c, n in Counter(k[0] for k in keys).items() if n > 1)
    code, _, err = run("cache", "show", shared)
    assert code == 1 and "matches several entries" in _one_line_error(err)
    shown = run.json("cache", "show", keys[3][:12].upper())  # keys are hex: any case finds them
    assert shown["cache_key"] == keys[3] and shown["config"]["temperature"] == 0.0
    code, _, err = run("cache", "show", "  ")
    assert code == 2 and "must not be empty" in _one_line_error(err)


def test_cache_show_keeps_a_column_that_is_not_valid_json(
    run: Run, db_path: Path, tiny_model_path: Path
) -> None:
    with CyllamaDB(db_path) as db:
        db.cache_response("hello", str(tiny_model_path), CONFIG, "world")
        (key,) = [e["cache_key"] for e in db.list_cache_entries()]
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE cache SET config_json = '{not json' WHERE cache_key = ?", (key,))
    conn.commit()
    conn.close()
    shown = run.json("cache", "show", key)
    assert shown["config_json"] == "{not json" and "config" not in shown
    assert shown["response_text"] == "world"


def test_cli_reaches_the_database_through_store_methods_only() -> None:
    for path in sorted((ROOT / "src" / "cyllama_db" / "cli").glob("*.py")):
        text = path.read_text()
        for needle in ("SELECT ", "PRAGMA", ".pool", "sqlite3.connect", ".execute("):
            assert needle not in text, f"cli/{path.name} has {needle!r}: call a store method instead"


def test_the_dashboard_takes_only_formatting_from_the_cli() -> None:
    code = (
        "import sys, cyllama_db.dashboard\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('cyllama_db.cli'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ})
    assert out.stdout.split() == ["cyllama_db.cli", "cyllama_db.cli.format"]


def test_cache_cleanup_removes_expired(run: Run, db_path: Path, tiny_model_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        db.clock = lambda: time.time() - 3600
        db.cache_response("short-lived", str(tiny_model_path), CONFIG, "x", ttl=60)
        db.cache_response("long-lived", str(tiny_model_path), CONFIG, "y", ttl=None)
    assert run.json("cache", "stats")["expired"] == 1
    assert run("cache", "cleanup")[1].startswith("removed 1 ")
    assert [e["prompt"] for e in run.json("cache", "list")] == ["long-lived"]


# -- stats / history / logs ------------------------------------------------------------------


def _record(db: CyllamaDB, model: str, tokens: int, hit: bool = False) -> None:
    db.record_generation(
        model,
        {"finish_reason": "stop", "stats": {"prompt_tokens": 2, "generated_tokens": tokens,
                                            "total_tokens": tokens + 2, "total_time_ms": 100.0,
                                            "tokens_per_second": 40.0}},
        {"temperature": 0.7, "max_tokens": 64},
        cache_hit=hit,
    )


def test_stats_and_history(run: Run, db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        _record(db, "/models/a.gguf", 10)
        _record(db, "/models/a.gguf", 10, hit=True)
        _record(db, "/models/b.gguf", 5)
        db.clock = lambda: time.time() - 10 * 86400
        _record(db, "/models/b.gguf", 1)
    summary = run.json("stats")
    assert summary["total_generations"] == 4
    assert summary["by_model"]["/models/a.gguf"]["cache_hit_rate"] == 0.5
    recent = run.json("stats", "--since", "7d")
    assert recent["total_generations"] == 3
    assert run.json("stats", "--model", "/models/b.gguf")["total_generations"] == 2
    assert run.json("stats", "--until", "7d")["total_generations"] == 1
    code, out, _ = run("stats")
    assert code == 0
    assert re.search(r"^a\.gguf\s+2\s+24\s+50\.0%", out, re.M), out

    history = run.json("history", "-n", "2")
    assert len(history) == 2
    assert history[0]["model_path"] == "/models/b.gguf" and history[0]["generated_tokens"] == 5
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", history[0]["created_at"])
    assert [h["model_path"] for h in run.json("history", "--model", "/models/b.gguf")] == [
        "/models/b.gguf", "/models/b.gguf"
    ]
    assert len(run.json("history", "--offset", "3")) == 1
    code, out, _ = run("history")
    assert code == 0 and len(out.strip().splitlines()) == 2 + 4


def test_logs(run: Run, db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        db.log("INFO", "hello", category="app")
        db.log("WARNING", "careful", category="app.cache")
        try:
            raise KeyError("boom")
        except KeyError as exc:
            db.log("ERROR", "failed", category="other", error=exc)
    entries = run.json("logs")
    assert [e["message"] for e in entries] == ["hello", "careful", "failed"]  # oldest first
    assert [e["message"] for e in run.json("logs", "--level", "warning")] == ["careful", "failed"]
    assert [e["message"] for e in run.json("logs", "--category", "app")] == ["hello", "careful"]
    assert [e["message"] for e in run.json("logs", "-n", "1")] == ["failed"]
    assert run.json("logs", "--since", "1h") == entries
    code, out, _ = run("logs")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert "ERROR" in lines[2] and "other: failed [KeyError" in lines[2]


def _wait_for_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line
        if proc.poll() is not None:
            break
    raise AssertionError(f"no output (rc={proc.poll()})")


@pytest.fixture
def cli_process(db_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cyllama_db", "--db", str(db_path), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_logs_follow_prints_new_entries_until_ctrl_c(db_path: Path, cli_process: Any) -> None:
    with CyllamaDB(db_path) as db:
        db.log("INFO", "before")
        proc = cli_process("logs", "-f", "--interval", "0.05", "--json")
        assert json.loads(_wait_for_line(proc))["message"] == "before"
        for i in range(3):
            db.log("INFO", f"live {i}")
            assert json.loads(_wait_for_line(proc))["message"] == f"live {i}"
        db.log("DEBUG", "below the stored level")  # not stored: nothing to print
        db.log("WARNING", "last")
        assert json.loads(_wait_for_line(proc))["message"] == "last"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in proc.stderr.read()


# -- models ----------------------------------------------------------------------------------


def test_models_commands(run: Run, tiny_model_path: Path) -> None:
    code, out, err = run("models", "add", str(tiny_model_path), "--name", "tiny",
                         "--param", "ctx_size=2048", "--param", "flash_attn=on",
                         "--param", "api_key=s3cret", "--param", "gpu_layers=all")
    assert code == 0, err
    assert out.startswith("registered 'tiny'") and "llama" in out

    listed = run.json("models", "list")
    assert [m["name"] for m in listed] == ["tiny"]
    assert listed[0]["api_key"] == "***" and listed[0]["architecture"] == "llama"
    assert run.json("models", "list", "--show-secrets")[0]["api_key"] == "s3cret"
    code, out, _ = run("models", "list")
    assert re.search(r"^\s*1\s+tiny\s+llama\s+stopped", out, re.M), out
    assert "s3cret" not in out

    shown = run.json("models", "show", "tiny")
    assert (shown["ctx_size"], shown["flash_attn"], shown["gpu_layers"]) == (2048, "on", "all")
    assert shown["api_key"] == "***"
    code, out, _ = run("models", "show", "tiny")
    assert re.search(r"^ctx_size:\s+2048$", out, re.M) and "s3cret" not in out
    assert "s3cret" in run("models", "show", "tiny", "--show-secrets")[1]

    assert run("models", "update", "tiny", "--param", "ctx_size=4096", "--status", "running")[0] == 0
    assert [m["name"] for m in run.json("models", "list", "--status", "running")] == ["tiny"]
    assert run.json("models", "list", "--status", "stopped") == []
    assert run.json("models", "list", "--type", "llama")[0]["ctx_size"] == 4096

    code, out, _ = run("models", "args", "tiny")
    assert code == 0
    assert out.startswith("llama-server --model ") and "--ctx-size 4096" in out
    assert "--api-key '***'" in out and "s3cret" not in out
    assert "--api-key s3cret" in run("models", "args", "tiny", "--server", "--show-secrets")[1]
    argv = run.json("models", "args", "tiny")
    assert argv[argv.index("--ctx-size") + 1] == "4096"
    kwargs = run.json("models", "args", "tiny", "--llama-kwargs")
    assert kwargs["n_ctx"] == 4096 and kwargs["model_path"] == str(tiny_model_path)

    assert run("models", "update", "tiny", "--param", "ctx_size=null")[0] == 0
    assert run.json("models", "show", "tiny")["ctx_size"] is None
    assert run("models", "update", "tiny", "--rename", "tiny2")[0] == 0
    assert run("models", "rm", "tiny2")[0] == 0
    code, _, err = run("models", "show", "tiny2")
    assert code == 1 and "no model named 'tiny2'" in _one_line_error(err)


def test_models_mistakes(run: Run, tiny_model_path: Path) -> None:
    assert run("models", "add", str(tiny_model_path), "--name", "m")[0] == 0
    code, _, err = run("models", "update", "m", "--param", "flash_attn=maybe")
    assert code == 1 and "'flash_attn' does not allow 'maybe'" in _one_line_error(err)
    code, _, err = run("models", "update", "m", "--param", "ctx_sise=5")
    assert code == 1 and "unknown model parameter 'ctx_sise'" in _one_line_error(err)
    code, _, err = run("models", "update", "m", "--param", "ctx_size=big")
    assert code == 2 and "ctx_size" in _one_line_error(err)
    code, _, err = run("models", "update", "m")
    assert code == 2 and "nothing to change" in _one_line_error(err)
    code, _, err = run("models", "add", str(tiny_model_path.parent / "missing.gguf"))
    assert code == 1 and "missing.gguf" in _one_line_error(err)
    code, _, err = run("models", "args", "m", "--server", "--llama-kwargs")
    assert code == 2
    code, _, err = run("models", "update", "m", "--rename", "")
    assert code == 2 and "--rename" in _one_line_error(err)
    code, _, err = run("models", "update", "m", "--param", "ctx_size=99999999999999999999999")
    assert code == 2 and "ctx_size" in _one_line_error(err)
    assert run.json("models", "show", "m")["name"] == "m"


def test_status_choices_come_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from cyllama_db.stores import registry as registry

    monkeypatch.setattr(registry, "MODEL_STATUSES", ("running", "stopped", "paused"))
    parser = build_parser()
    for path, sub in _commands(parser):
        if path in (("models", "list"), ("models", "add"), ("models", "update")):
            (status,) = [a for a in sub._actions if "--status" in a.option_strings]
            assert tuple(status.choices or ()) == ("running", "stopped", "paused"), path


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_sample_and_history(run: Run) -> None:
    pytest.importorskip("psutil")
    sample = run.json("metrics", "sample")
    assert 0 <= sample["cpu_usage"] <= 100 and 0 <= sample["memory_usage"] <= 100
    assert run.json("metrics", "sample", "--no-save")["memory_usage"] >= 0
    history = run.json("metrics", "history", "--minutes", "5")
    assert len(history) == 1  # --no-save did not save
    assert history[0]["memory_usage"] == sample["memory_usage"]
    code, out, _ = run("metrics", "history")
    assert code == 0 and "cpu %" in out.splitlines()[0]


def test_metrics_watch_runs_until_ctrl_c(db_path: Path, cli_process: Any) -> None:
    pytest.importorskip("psutil")
    proc = cli_process("metrics", "watch", "--interval", "0.2", "--json")
    rows = [json.loads(_wait_for_line(proc)) for _ in range(2)]
    assert rows[0]["id"] != rows[1]["id"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    with CyllamaDB(db_path) as db:
        assert len(db.get_metrics_history()) >= 2


def test_metrics_watch_prints_an_aligned_table(cli_process: Any) -> None:
    pytest.importorskip("psutil")
    proc = cli_process("metrics", "watch", "--interval", "0.1")
    lines = [_wait_for_line(proc).rstrip("\n") for _ in range(4)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    header, rule, *rows = lines
    assert header.startswith("time") and set(rule) <= {"-", " "}
    # every column ends where its header (and its rule) ends: numbers right-aligned
    ends = [m.end() for m in re.finditer(r"-+", rule)]
    assert len(ends) == 10  # time and nine figures
    for line in [header, *rows]:
        assert len(line) == ends[-1], (line, ends)
        for end in ends[1:]:
            assert line[end - 1] != " ", (line, end)
            assert end == len(line) or line[end] == " ", (line, end)


def test_stream_table_widths() -> None:
    from cyllama_db.cli.format import StreamTable

    out = io.StringIO()
    table = StreamTable(["time", "cpu %", "models"], [5, 7, 1], [False, True, True], out)
    table.header()
    table.row(["12:00", 3.5, 1])
    table.row(["12:01", None, 12])
    assert out.getvalue().splitlines() == [
        "time     cpu %  models",
        "-----  -------  ------",
        "12:00     3.50       1",
        "12:01        -      12",
    ]


# -- documentation ---------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _commands(child, (*path, name))


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        out += action.option_strings or [action.metavar or action.dest]
    return out


def _doc_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "cli.md").read_text()
    sections: dict[str, str] = {}
    for match in re.finditer(r"^### `cyllama-db ([^`]+)`\n(.*?)(?=^#{1,3} |\Z)", text, re.M | re.S):
        name = re.sub(r"\s+[A-Z\[].*$", "", match.group(1)).strip()
        sections[name] = match.group(2) + match.group(1)
    return sections


def test_every_command_and_option_is_documented() -> None:
    parser = build_parser()
    text = (ROOT / "docs" / "cli.md").read_text()
    for option in _options(parser):
        assert f"`{option}" in text, f"global option {option} is not in docs/cli.md"
    sections = _doc_sections()
    global_options = set(_options(parser))
    commands = list(_commands(parser))
    assert len(commands) >= 25
    for path, sub in commands:
        name = " ".join(path)
        assert name in sections, f"`cyllama-db {name}` has no section in docs/cli.md"
        for option in _options(sub):
            if option in global_options:
                continue  # documented once, under "Global options"
            if option.startswith("-"):
                assert re.search(rf"`{re.escape(option)}\b", sections[name]), (
                    f"option {option} of `cyllama-db {name}` is not documented in its section"
                )
            else:
                assert option.upper() in sections[name] or option in sections[name], (
                    f"argument {option} of `cyllama-db {name}` is not documented"
                )


def test_every_read_command_has_json() -> None:
    writes = {"vacuum", "config set", "config unset", "cache invalidate", "cache cleanup",
              "models add", "models update", "models rm", "dashboard"}
    for path, sub in _commands(build_parser()):
        name = " ".join(path)
        if name not in writes:
            assert "--json" in _options(sub), f"{name} has no --json"


def test_console_script_is_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'cyllama-db = "cyllama_db.cli:main"' in text


def test_cli_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys; import cyllama_db.cli\n"
        "bad = [m for m in ('click', 'typer', 'rich', 'llama_cpp', 'psutil', 'numpy') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ})
    assert out.stdout.strip() == ""


# -- terminal escapes: shown, never run ---------------------------------------------------------

EVIL = "evil\x1b]52;c;ZXZpbA==\x07\x1b[2J\x9b31m\u202ename"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e")


@pytest.fixture
def hostile_db(tmp_path: Path) -> Path:
    """A database whose model names, prompts, log messages and config hold escape sequences."""
    from cyllama_db.testing import write_tiny_llama

    model = write_tiny_llama(tmp_path / "evil.gguf", extra_metadata={"general.name": EVIL})
    path = tmp_path / "hostile.db"
    with CyllamaDB(path) as db:
        db.register_model(model)  # named after the file's general.name
        db.cache_response(f"prompt {EVIL}", model, None, f"answer {EVIL}")
        db.record_generation(str(model), {"text": EVIL})
        db.log("WARNING", f"message {EVIL}\nsecond line", category=f"cat{EVIL}", context={"x": EVIL})
        db.set_config(f"key{EVIL}", f"value {EVIL}")
    return path


HOSTILE_VIEWS = [
    ("models", "list"), ("models", "show", EVIL), ("models", "args", EVIL),
    ("models", "args", EVIL, "--llama-kwargs"), ("cache", "list"), ("logs",), ("config", "list"),
    ("config", "get", f"key{EVIL}"), ("history",), ("stats",), ("info",),
]


@pytest.mark.parametrize("argv", HOSTILE_VIEWS, ids=lambda a: " ".join(x.replace(EVIL, "EVIL") for x in a))
def test_human_views_show_escape_sequences_instead_of_running_them(
    hostile_db: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = Run(hostile_db, capsys)(*argv)
    assert code == 0, err
    for char in RAW_CONTROLS:
        assert char not in out + err, f"{' '.join(argv)} sent {char!r} to the terminal"


def test_the_escapes_are_shown_as_their_letters(hostile_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Run(hostile_db, capsys)
    shown = "evil\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\x9b31m\\u202ename"
    assert shown in run("models", "list")[1]
    assert shown in run("models", "show", EVIL)[1]
    assert "prompt evil\\x1b]52;c;ZXZpbA==\\x07" in run("cache", "list")[1]  # a cut preview
    logs = run("logs")[1]
    assert f"message {shown}\nsecond line" in logs  # a newline in a message stays a newline
    assert f"value {shown}" in run("config", "get", f"key{EVIL}")[1]


@pytest.mark.parametrize(
    "argv", [("models", "list"), ("models", "show", EVIL), ("cache", "list"), ("logs",), ("config", "list")],
    ids=lambda a: " ".join(x.replace(EVIL, "EVIL") for x in a),
)
def test_json_views_escape_them_and_keep_the_value(
    hostile_db: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = Run(hostile_db, capsys)(*argv, "--json")
    assert code == 0, err
    for char in RAW_CONTROLS:
        assert char not in out
    assert any(EVIL in text for text in _strings(json.loads(out)))  # the data itself is intact


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def test_log_follow_lines_escape_them(hostile_db: Path) -> None:
    import io as _io

    from cyllama_db.cli.logs import emit_logs

    with CyllamaDB(hostile_db) as db:
        entries = db.get_logs()
    for as_json in (True, False):
        stream = _io.StringIO()
        emit_logs(entries, as_json, stream)
        assert not any(char in stream.getvalue() for char in RAW_CONTROLS)


def test_import_reports_skipped_rows_and_takes_a_time_limit(run: Run, tmp_path: Path) -> None:
    source = tmp_path / "crafted.db"
    with CyllamaDB(source) as other:
        other.set_config("fine", 1)
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("INSERT INTO config VALUES ('broken\x1b[2J', '{nope', 'json', 1, 1)")
    conn.close()
    code, out, err = run("import", str(source), "--timeout", "5m")
    assert code == 0, err
    assert "1 invalid rows skipped" in out and "config: 1 x value" in out and "\x1b" not in out
    report = run.json("import", str(source), "--no-timeout")
    assert report["skipped_row_count"] == 1 and report["skipped_rows"][0]["key"] == "broken\x1b[2J"
    code, out, err = run("import", str(source), "--timeout", "0")
    assert code == 1 and "timeout" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("info",), ("vacuum",), ("config", "set", "k", "5", "--type", "int"), ("config", "list"),
        ("cache", "cleanup"), ("cache", "invalidate", "--all"), ("cache", "list"), ("stats",),
        ("history",), ("logs",), ("migrate", "--status"), ("models", "list"), ("metrics", "history"),
    ],
)
def test_json_is_accepted_before_or_after_any_command(run: Run, argv: tuple[str, ...]) -> None:
    code, before, err = run("--json", *argv)
    assert code == 0, err
    json.loads(before)
    code, after, err = run(*argv, "--json")
    assert code == 0, err
    assert type(json.loads(after)) is type(json.loads(before))


def test_writes_report_in_json(run: Run, tiny_model_path: Path) -> None:
    assert run.json("config", "set", "k", "[1, 2]", "--type", "json") == {"key": "k", "value": [1, 2], "type": "json"}
    assert run.json("config", "unset", "k") == {"key": "k", "removed": True}
    added = run.json("models", "add", str(tiny_model_path), "--name", "tiny")
    assert added["name"] == "tiny" and added["id"] >= 1
    assert run.json("models", "update", "tiny", "--param", "ctx_size=256")["ctx_size"] == 256
    assert run.json("models", "rm", "tiny") == {"name": "tiny", "removed": True}
    vacuumed = run.json("vacuum")
    assert vacuumed["bytes_after"] > 0


def test_small_cli_fixes(run: Run, db_path: Path, tmp_path: Path) -> None:
    from cyllama_db import CyllamaDB

    with CyllamaDB(db_path) as db:
        db.save_metrics({"cpu_usage": 30.0, "memory_usage": 4.5})
        db.save_metrics({"cpu_usage": 42.1, "memory_usage": 4.5})
    code, out, _ = run("metrics", "history")
    assert code == 0 and "30.00" in out and "42.10" in out  # one precision per column
    existing = tmp_path / "exists.db"
    existing.write_bytes(b"")
    code, _, err = run("export", str(existing))
    assert code == 1 and "--force" in err and "overwrite=True" not in err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run("dashboard", "--port", str(port), "--no-sampler")
    assert code == 1 and f"port {port} is in use; try --port 0" in err


def test_stats_columns_are_aligned(run: Run, db_path: Path) -> None:
    from cyllama_db import CyllamaDB, Response

    with CyllamaDB(db_path) as db:
        for name, hits in (("/m/a.gguf", 0), ("/m/bbbbbbbbbbbbbbbb.gguf", 1)):
            db.record_generation(name, Response("x", stats={"generated_tokens": 3, "prompt_tokens": 2,
                                                            "total_time_ms": 12.5, "tokens_per_second": 240.0}))
            if hits:
                db.record_generation(name, Response("x"), cache_hit=True)
    code, out, _ = run("stats")
    assert code == 0
    table = [line for line in out.splitlines()[2:] if line.strip()]
    _header, rule, *rows = table
    # every column (the hit-rate percentages too) ends where its rule ends
    ends = [i + 1 for i, (a, b) in enumerate(zip(rule, rule[1:] + " ", strict=True)) if a == "-" and b == " "]
    for row in rows:
        for end in ends[1:]:
            assert row[end - 1] != " ", (row, end)
