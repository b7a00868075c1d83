"""Structured logs: db.log, get_logs, prune_logs, CyllamaDBHandler and the library logger."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import cyllama_db
from cyllama_db import CyllamaDB, CyllamaDBHandler
from cyllama_db.stores.logs import level_name

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc).timestamp()


def at(db: CyllamaDB, ts: float) -> None:
    db.clock = lambda: ts  # type: ignore[method-assign]


@pytest.fixture
def debug_db() -> Iterator[CyllamaDB]:
    db = CyllamaDB(":memory:", log_level="DEBUG")
    yield db
    db.close()


@pytest.fixture
def app_logger() -> Iterator[logging.Logger]:
    """A private logger outside logging's registry: pytest's capture handlers never join it."""
    logger = logging.Logger("testapp", logging.DEBUG)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


# -- db.log ------------------------------------------------------------------------------------


def test_log_stores_every_field(any_db: CyllamaDB) -> None:
    at(any_db, T0)
    prompt = "p" * 150
    rid = any_db.log(
        "warning",
        "slow generation",
        category="generation",
        context={"model_path": "/m/a.gguf", "prompt": prompt, "tokens": 12, "tags": ["x"]},
    )
    assert isinstance(rid, int)
    [row] = any_db.get_logs()
    assert row == {
        "id": rid,
        "level": "WARNING",
        "category": "generation",
        "message": "slow generation",
        "context": {"tokens": 12, "tags": ["x"]},
        "model_path": "/m/a.gguf",
        "prompt_preview": "p" * 100,
        "error_type": None,
        "error_message": None,
        "stack_trace": None,
        "created_at": datetime.fromtimestamp(T0, timezone.utc),
    }


def test_context_values_json_cannot_hold_are_kept_as_text(memory_db: CyllamaDB) -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    memory_db.log("INFO", "m", context={"obj": Thing(), "path": Path("/x"), "t": (1, 2)})
    assert memory_db.get_logs()[0]["context"] == {"obj": "<thing>", "path": "/x", "t": [1, 2]}


def _fail_deep() -> None:
    raise KeyError("missing-key")


def test_log_captures_an_exception(memory_db: CyllamaDB) -> None:
    try:
        _fail_deep()
    except KeyError as exc:
        memory_db.log("ERROR", "lookup failed", category="error", error=exc)
    row = memory_db.get_logs()[0]
    assert row["error_type"] == "KeyError"
    assert row["error_message"] == "'missing-key'"
    assert "_fail_deep" in row["stack_trace"]
    assert row["stack_trace"].startswith("Traceback")


def test_library_exception_type_is_qualified(memory_db: CyllamaDB) -> None:
    memory_db.log("ERROR", "closed", error=cyllama_db.DatabaseClosedError("x.db"))
    assert memory_db.get_logs()[0]["error_type"] == "cyllama_db.errors.DatabaseClosedError"


def test_levels_and_bad_arguments(memory_db: CyllamaDB) -> None:
    assert level_name("warn") == "WARNING"
    assert level_name(logging.ERROR) == "ERROR"
    assert level_name(" critical ") == "CRITICAL"
    for bad in ("TRACE", "", 25):
        with pytest.raises(ValueError, match="level"):
            memory_db.log(bad, "x")
    for wrong_type in (True, None, 1.5):
        with pytest.raises(TypeError, match="level"):
            memory_db.log(wrong_type, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message"):
        memory_db.log("INFO", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="context"):
        memory_db.log("INFO", "x", context=["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="error"):
        memory_db.log("INFO", "x", error="boom")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="category"):
        memory_db.log("INFO", "x", category=3)  # type: ignore[arg-type]
    assert memory_db.get_logs() == []


def test_levels_below_log_level_are_not_stored() -> None:
    with CyllamaDB(":memory:", log_level="WARNING") as db:
        assert db.log_level == "WARNING"
        assert db.log("DEBUG", "d") is None
        assert db.log(logging.INFO, "i") is None
        assert db.log("WARNING", "w") is not None
        assert db.log("CRITICAL", "c") is not None
        assert [r["message"] for r in db.get_logs()] == ["c", "w"]
    with CyllamaDB(":memory:") as db:  # default INFO
        assert db.log("DEBUG", "d") is None
        assert db.log("INFO", "i") is not None


# -- get_logs ----------------------------------------------------------------------------------


def test_get_logs_filters(debug_db: CyllamaDB) -> None:
    entries = [
        ("DEBUG", "cyllama_db.cache", "miss"),
        ("INFO", "cyllama_db", "opened"),
        ("WARNING", "cyllama_db.cache", "evicted"),
        ("ERROR", "app", "crash"),
        ("CRITICAL", "cyllama_dbx", "not a child"),
    ]
    for k, (level, category, message) in enumerate(entries):
        at(debug_db, T0 + k * 60)
        debug_db.log(level, message, category=category)

    def messages(**kw: Any) -> list[str]:
        return [r["message"] for r in debug_db.get_logs(**kw)]

    assert messages() == ["not a child", "crash", "evicted", "opened", "miss"]
    assert messages(level="WARNING") == ["not a child", "crash", "evicted"]
    assert messages(level=logging.ERROR) == ["not a child", "crash"]
    assert messages(category="cyllama_db") == ["evicted", "opened", "miss"]
    assert messages(category="cyllama_db.cache") == ["evicted", "miss"]
    assert messages(category="cyllama_db", level="INFO") == ["evicted", "opened"]
    assert messages(since=T0 + 120) == ["not a child", "crash", "evicted"]
    assert messages(since=T0 + 60, until=T0 + 180) == ["evicted", "opened"]
    at(debug_db, T0 + 4 * 60 + 1)
    assert messages(since=timedelta(seconds=90)) == ["not a child", "crash"]
    assert messages(limit=2) == ["not a child", "crash"]
    assert messages(limit=2, offset=2) == ["evicted", "opened"]
    with pytest.raises(ValueError, match="level"):
        debug_db.get_logs(level="LOUD")
    with pytest.raises(ValueError, match="limit"):
        debug_db.get_logs(limit=-1)


# -- prune_logs --------------------------------------------------------------------------------


def test_prune_logs(any_db: CyllamaDB) -> None:
    for k in range(10):
        at(any_db, T0 + k * 3600)
        any_db.log("INFO", f"m{k}")
    at(any_db, T0 + 10 * 3600)
    assert any_db.prune_logs(older_than=timedelta(hours=7)) == 3  # m0, m1, m2
    assert any_db.prune_logs(keep_last=5) == 2  # m3, m4
    assert [r["message"] for r in any_db.get_logs()] == [f"m{k}" for k in range(9, 4, -1)]
    # Either limit removes a row: m5 is too old, m9..m8 beyond keep_last=2 keep m9, m8.
    assert any_db.prune_logs(older_than=T0 + 6 * 3600, keep_last=2) == 3
    assert [r["message"] for r in any_db.get_logs()] == ["m9", "m8"]
    assert any_db.prune_logs(keep_last=0) == 2
    assert any_db.get_db_stats()["log_entries"] == 0
    with pytest.raises(TypeError, match="older_than"):
        any_db.prune_logs()
    with pytest.raises(ValueError, match="keep_last"):
        any_db.prune_logs(keep_last=-1)
    with pytest.raises(TypeError, match="keep_last"):
        any_db.prune_logs(keep_last="5")  # type: ignore[arg-type]


def test_disabled_database() -> None:
    db = CyllamaDB(enabled=False)
    assert db.log("ERROR", "x") is None
    assert db.get_logs() == []
    assert db.prune_logs(keep_last=0) == 0
    logger = logging.Logger("test.disabled")
    handler = CyllamaDBHandler(db)
    logger.addHandler(handler)
    try:
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            logger.error("dropped quietly")
        assert stderr.getvalue() == ""
    finally:
        logger.removeHandler(handler)


def test_db_stats_counts_log_rows(memory_db: CyllamaDB) -> None:
    assert memory_db.get_db_stats()["log_entries"] == 0
    memory_db.log("INFO", "x")
    memory_db.log("DEBUG", "not stored")
    assert memory_db.get_db_stats()["log_entries"] == 1


# -- CyllamaDBHandler --------------------------------------------------------------------------


def test_handler_writes_records(debug_db: CyllamaDB, app_logger: logging.Logger) -> None:
    app_logger.addHandler(CyllamaDBHandler(debug_db))
    app_logger.info(
        "loaded %s in %d ms", "m.gguf", 12, extra={"model_path": "m.gguf", "n_ctx": 512}
    )
    try:
        _fail_deep()
    except KeyError:
        app_logger.exception("generation failed", extra={"prompt": "Hello " * 40})
    app_logger.log(25, "custom level")  # between INFO and WARNING: stored as INFO
    app_logger.debug("with stack", stack_info=True)

    rows = {r["message"]: r for r in debug_db.get_logs()}
    loaded = rows["loaded m.gguf in 12 ms"]
    assert loaded["level"] == "INFO"
    assert loaded["category"] == app_logger.name
    assert loaded["model_path"] == "m.gguf"
    assert loaded["context"] == {"n_ctx": 512}
    failed = rows["generation failed"]
    assert failed["level"] == "ERROR"
    assert failed["error_type"] == "KeyError"
    assert "_fail_deep" in failed["stack_trace"]
    assert failed["prompt_preview"] == ("Hello " * 40)[:100]
    assert rows["custom level"]["level"] == "INFO"
    assert "test_handler_writes_records" in rows["with stack"]["stack_trace"]


def test_handler_respects_db_level_and_own_level(app_logger: logging.Logger) -> None:
    with CyllamaDB(":memory:", log_level="WARNING") as db:
        app_logger.addHandler(CyllamaDBHandler(db))
        app_logger.info("below the database's level")
        app_logger.warning("kept")
        assert [r["message"] for r in db.get_logs()] == ["kept"]
    with CyllamaDB(":memory:", log_level="DEBUG") as db:
        app_logger.handlers.clear()
        app_logger.addHandler(CyllamaDBHandler(db, level="ERROR"))
        app_logger.warning("below the handler's level")
        app_logger.error("kept")
        assert [r["message"] for r in db.get_logs()] == ["kept"]


def test_handler_from_several_threads(file_db: CyllamaDB, app_logger: logging.Logger) -> None:
    app_logger.addHandler(CyllamaDBHandler(file_db))
    stderr = io.StringIO()

    def worker(k: int) -> None:
        for i in range(40):
            app_logger.warning("thread %d record %d", k, i, extra={"k": k, "i": i})

    with redirect_stderr(stderr):
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert stderr.getvalue() == ""  # no write failed
    rows = file_db.get_logs(limit=1000)
    assert len(rows) == 200
    assert {(r["context"]["k"], r["context"]["i"]) for r in rows} == {
        (k, i) for k in range(5) for i in range(40)
    }
    assert {r["message"] for r in rows} == {
        f"thread {k} record {i}" for k in range(5) for i in range(40)
    }


def test_handler_never_raises(app_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    db = CyllamaDB(":memory:")
    handler = CyllamaDBHandler(db)
    app_logger.addHandler(handler)
    calls: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", calls.append)
    db.close()
    app_logger.error("after close")  # DatabaseClosedError inside emit
    app_logger.error("bad format %d", "not a number")  # formatting error inside emit
    assert [r.msg for r in calls] == ["after close", "bad format %d"]


def test_handler_reports_through_handle_error(app_logger: logging.Logger) -> None:
    db = CyllamaDB(":memory:")
    app_logger.addHandler(CyllamaDBHandler(db))
    db.close()
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        app_logger.error("after close")  # logging.raiseExceptions: traceback to stderr
    assert "DatabaseClosedError" in stderr.getvalue()


def test_handler_does_not_recurse_when_the_database_logs(debug_db: CyllamaDB) -> None:
    # Every SQL statement the database runs logs on the library logger, which
    # the handler itself listens to: without the guard, writing a row would
    # log, which would write a row, and so on.
    lib = logging.getLogger("cyllama_db.sqltrace")
    lib.setLevel(logging.DEBUG)
    handler = CyllamaDBHandler(debug_db)
    lib.addHandler(handler)
    seen: list[str] = []
    with debug_db.pool.read() as conn:
        conn.set_trace_callback(lambda sql: (seen.append(sql), lib.debug("sql: %s", sql)))
    try:
        lib.warning("outside event")
    finally:
        with debug_db.pool.read() as conn:
            conn.set_trace_callback(None)
        lib.removeHandler(handler)
    assert any(s.startswith("INSERT INTO logs") for s in seen)  # the trace did fire
    assert [r["message"] for r in debug_db.get_logs()] == ["outside event"]


def test_handler_with_the_global_database(app_logger: logging.Logger) -> None:
    db = cyllama_db.configure_db(path=":memory:")
    app_logger.addHandler(CyllamaDBHandler())  # no db: get_db() at each record
    app_logger.warning("to the global db")
    assert [r["message"] for r in db.get_logs()] == ["to the global db"]


# -- the library logger ------------------------------------------------------------------------


def test_log_to_db_attaches_the_library_logger() -> None:
    lib = logging.getLogger("cyllama_db")
    before_level, before_handlers = lib.level, list(lib.handlers)
    db = CyllamaDB(":memory:", log_to_db=True, log_level="DEBUG")
    try:
        assert any(isinstance(h, CyllamaDBHandler) for h in lib.handlers)
        assert lib.getEffectiveLevel() == logging.DEBUG
        logging.getLogger("cyllama_db.cache").debug("cache miss", extra={"prompt": "Hi"})
        logging.getLogger("cyllama_db.inference").error("generation failed")
        logging.getLogger("elsewhere").error("not the library")
        rows = db.get_logs()
        messages = [r["message"] for r in rows]
        assert messages[:2] == ["generation failed", "cache miss"]
        assert "not the library" not in messages
        assert rows[1]["category"] == "cyllama_db.cache"
        assert rows[1]["prompt_preview"] == "Hi"
        # The migrations of this open were logged before the handler existed:
        # they are written when it is attached.
        migrations = db.get_logs(category="cyllama_db.migrations")
        assert len(migrations) == db.schema_version() == len(db.migration_status())
    finally:
        db.close()
    assert lib.handlers == before_handlers
    assert lib.level == before_level


def test_library_logger_level_follows_log_level() -> None:
    with CyllamaDB(":memory:", log_to_db=True) as db:  # INFO
        logging.getLogger("cyllama_db.cache").debug("not created at INFO")
        logging.getLogger("cyllama_db.cache").info("stored")
        assert [r["message"] for r in db.get_logs(category="cyllama_db.cache")] == ["stored"]


def test_no_handler_without_log_to_db() -> None:
    with CyllamaDB(":memory:") as db:
        assert not any(
            isinstance(h, CyllamaDBHandler) for h in logging.getLogger("cyllama_db").handlers
        )
        logging.getLogger("cyllama_db.cache").warning("not stored")
        assert db.get_logs() == []


def test_env_and_configure_db_enable_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYLLAMA_LOG_TO_DB", "1")
    monkeypatch.setenv("CYLLAMA_DB_PATH", str(tmp_path / "env.db"))
    db = cyllama_db.get_db()
    logging.getLogger("cyllama_db").warning("from env")
    assert "from env" in [r["message"] for r in db.get_logs()]
    monkeypatch.delenv("CYLLAMA_LOG_TO_DB")
    db2 = cyllama_db.configure_db(path=":memory:", log_to_db=True)
    logging.getLogger("cyllama_db").warning("from configure_db")
    assert "from configure_db" in [r["message"] for r in db2.get_logs()]
    assert db.closed  # configure_db closed the previous global db and detached it
    handlers = [
        h for h in logging.getLogger("cyllama_db").handlers if isinstance(h, CyllamaDBHandler)
    ]
    assert [h.db for h in handlers] == [db2]


def test_migrations_logged_once_per_file(db_path: Path) -> None:
    with CyllamaDB(db_path, log_to_db=True) as db:
        first = db.get_logs(category="cyllama_db.migrations")
        assert len(first) == db.schema_version()
    with CyllamaDB(db_path, log_to_db=True) as db:  # nothing new to migrate
        assert len(db.get_logs(category="cyllama_db.migrations")) == len(first)


def test_fallback_is_logged(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not sqlite" * 10)
    with CyllamaDB(bad, log_to_db=True) as db:
        assert db.fallback_reason is not None
        [row] = db.get_logs(level="WARNING", category="cyllama_db")
        assert "fell back to an in-memory database" in row["message"]
        assert row["context"]["reason"] == db.fallback_reason
    assert bad.read_bytes() == b"this is not sqlite" * 10


def test_open_events_respect_log_level(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"x" * 100)
    with CyllamaDB(tmp_path / "fresh.db", log_to_db=True, log_level="WARNING") as db:
        assert db.get_logs() == []  # migrations are INFO
    with CyllamaDB(bad, log_to_db=True, log_level="ERROR") as db:
        assert db.fallback_reason is not None
        assert db.get_logs() == []  # the fallback is a WARNING


# -- the application's console is not affected -------------------------------------------------

_CONSOLE_SCRIPT = """
import logging, sys
{setup}
from cyllama_db import CyllamaDB

with CyllamaDB(":memory:", log_to_db=True, log_level="DEBUG") as db:
    log = logging.getLogger("cyllama_db.cache")
    log.debug("library debug line")
    log.info("library info line")
    log.warning("library warning line")
    logging.getLogger("cyllama_db").error("library error line")
    stored = sorted(r["message"] for r in db.get_logs())
    print("|".join(m for m in stored if m.startswith("library")))
lib = logging.getLogger("cyllama_db")
print(lib.level, lib.propagate, len(lib.handlers))
"""


@pytest.mark.parametrize(
    "setup",
    ["logging.basicConfig(level=logging.WARNING)", "pass  # no handler: logging's last resort"],
    ids=["basicConfig", "no-handler"],
)
def test_log_to_db_debug_does_not_reach_the_console(setup: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CONSOLE_SCRIPT.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    stored, restored = done.stdout.strip().splitlines()
    assert stored.split("|") == [
        "library debug line",
        "library error line",
        "library info line",
        "library warning line",
    ]
    # The console shows what it shows without log_to_db: WARNING and above.
    assert "library debug line" not in done.stderr
    assert "library info line" not in done.stderr
    assert "library warning line" in done.stderr
    assert "library error line" in done.stderr
    assert restored == "0 True 0"


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """A WARNING-level root logger with a level-less stream handler, as basicConfig sets up."""
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    saved = root.level
    root.setLevel(logging.WARNING)
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)
    root.setLevel(saved)


def test_app_levels_still_decide_what_the_console_shows(console: io.StringIO) -> None:
    lib = logging.getLogger("cyllama_db")
    before = (lib.level, lib.propagate, list(lib.handlers))
    chatty = logging.getLogger("cyllama_db.inference")
    chatty.setLevel(logging.DEBUG)  # the application wants this one's debug lines
    try:
        with CyllamaDB(":memory:", log_to_db=True, log_level="DEBUG") as db:
            logging.getLogger("cyllama_db.cache").debug("cache debug")
            logging.getLogger("cyllama_db.cache").info("cache info")
            chatty.debug("inference debug")
            logging.getLogger("cyllama_db").warning("top warning")
            assert {r["message"] for r in db.get_logs()} >= {
                "cache debug",
                "cache info",
                "inference debug",
                "top warning",
            }
            # A second database storing only INFO: the first still gets DEBUG.
            with CyllamaDB(":memory:", log_to_db=True, log_level="INFO") as other:
                logging.getLogger("cyllama_db.cache").debug("second debug")
                assert "second debug" in [r["message"] for r in db.get_logs()]
                assert "second debug" not in [r["message"] for r in other.get_logs()]
            logging.getLogger("cyllama_db.cache").debug("after other closed")
            assert "after other closed" in [r["message"] for r in db.get_logs()]
    finally:
        chatty.setLevel(logging.NOTSET)
    lines = console.getvalue().splitlines()
    assert lines == ["inference debug", "top warning"]
    assert (lib.level, lib.propagate, list(lib.handlers)) == before


# -- bad input -----------------------------------------------------------------------------------


def test_time_and_paging_errors_name_the_argument(debug_db: CyllamaDB) -> None:
    debug_db.log("INFO", "one")
    with pytest.raises(ValueError, match="since='yesterday'"):
        debug_db.get_logs(since="yesterday")
    with pytest.raises(ValueError, match="until='now'"):
        debug_db.get_logs(until="now")
    with pytest.raises(TypeError, match="since"):
        debug_db.get_logs(since=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="since"):
        debug_db.get_logs(since=float("nan"))
    with pytest.raises(TypeError, match="older_than"):
        debug_db.prune_logs(older_than=b"30d")  # type: ignore[arg-type]
    # Beyond SQLite's integers: "no limit", "past the end", "keep everything".
    assert len(debug_db.get_logs(limit=10**30)) == 1
    assert debug_db.get_logs(offset=10**30) == []
    assert debug_db.prune_logs(keep_last=10**30) == 0
    with pytest.raises(ValueError, match="keep_last"):
        debug_db.prune_logs(keep_last=-1)


# -- the store object ----------------------------------------------------------------------------


def test_the_store_object(debug_db: CyllamaDB) -> None:
    from cyllama_db.stores.logs import LogStore

    logs = debug_db.logs
    assert isinstance(logs, LogStore) and logs in debug_db.stores and logs.name == "logs"
    assert logs.level == debug_db.log_level == "DEBUG"
    at(debug_db, T0)
    first = logs.log("info", "started", category="app", context={"model_path": "m.gguf", "n": 1})
    second = debug_db.log("ERROR", "failed", category="app.sub", error=ValueError("bad"))
    assert isinstance(first, int) and isinstance(second, int) and second > first
    rows = logs.query(category="app")
    assert rows == debug_db.get_logs(category="app")
    assert [r["message"] for r in rows] == ["failed", "started"]
    assert rows[1]["model_path"] == "m.gguf" and rows[1]["context"] == {"n": 1}
    assert rows[0]["error_type"] == "ValueError"
    assert [r["message"] for r in logs.query(level="ERROR")] == ["failed"]
    assert logs.prune(keep_last=1) == 1
    assert [r["message"] for r in debug_db.get_logs()] == ["failed"]
    assert debug_db.get_db_stats()["log_entries"] == 1


def test_write_is_what_handlers_use(memory_db: CyllamaDB) -> None:
    # write() stores the row as given: no threshold (the handler applies it), the record's own time.
    row_id = memory_db.logs.write("DEBUG", "as given", category="x", created_at=T0)
    assert isinstance(row_id, int)
    (row,) = memory_db.logs.query()
    assert row["level"] == "DEBUG" and row["created_at"] == datetime.fromtimestamp(T0, timezone.utc)
    logger = logging.Logger("writeapp", logging.DEBUG)
    logger.addHandler(CyllamaDBHandler(memory_db))
    logger.warning("through the handler")
    assert memory_db.logs.query(level="WARNING")[0]["message"] == "through the handler"
    with pytest.raises(TypeError, match="CyllamaDB"):
        CyllamaDBHandler(object())


def test_log_to_db_logs_the_migrations_it_applied(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "new.db", log_to_db=True) as db:
        messages = [r["message"] for r in db.logs.query(category="cyllama_db.migrations", limit=1000)]
    assert messages and all(m.startswith("applied migration ") for m in messages)
    assert any(m.startswith("applied migration 1 (config and metadata tables)") for m in messages)
    with CyllamaDB(tmp_path / "new.db", log_to_db=True) as again:  # nothing new to apply
        assert len(again.logs.query(category="cyllama_db.migrations", limit=1000)) == len(messages)
