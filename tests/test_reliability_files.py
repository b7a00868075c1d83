"""Corrupt and unusable database files: a warning, the in-memory fallback, the file untouched (issue 8).

Every case below opens ``CyllamaDB(path)`` on something it cannot use and
expects the same outcome: one WARNING from the ``cyllama_db`` logger saying
it is "falling back", ``db.is_memory`` with ``db.fallback_reason`` set, every
store working in memory, and the original bytes and the folder's listing
exactly as they were (no ``-wal``/``-shm``/``-journal`` left behind).

With ``fallback="raise"`` (or ``CYLLAMA_DB_FALLBACK=raise``) every one of
them raises ``DatabaseFileError`` instead, with the same untouched folder.

Neighbours with a different, defined outcome (issue 13: a valid database is
never silently replaced by an empty one):

* another application's SQLite file raises ``ForeignDatabaseError`` and is
  left byte-for-byte as it was, with no ``-wal``/``-shm``;
* a valid database this user cannot write (or in a folder it cannot write)
  raises ``ReadOnlyDatabaseError``; ``readonly=True`` reads it;
* a full disk raises ``DiskFullError`` (a new path leaves no file behind);

* a zero-length file (made by ``sqlite3.connect`` or ``touch``) is an empty
  database, and is adopted: it becomes a working cyllama database;
* a garbage ``-wal`` beside a valid database is ignored by SQLite (bad
  header or checksums): the database opens normally with every checkpointed
  row, and only what lived solely in the destroyed WAL frames is gone.

tests/test_database.py has single examples of some of these; this is the
complete matrix.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB, CyllamaDBError, ReadOnlyDatabaseError
from cyllama_db.db.migrations import APPLICATION_ID
from cyllama_db.errors import DatabaseFileError, DiskFullError, ForeignDatabaseError

pytestmark = pytest.mark.reliability

MAGIC = b"SQLite format 3\x00"
MODEL = "/nonexistent/reliability/model.gguf"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, str | None]:
    """Every entry under ``folder``: its sha256 (files) or None (folders)."""
    found: dict[str, str | None] = {}
    for entry in sorted(folder.rglob("*")):
        found[str(entry.relative_to(folder))] = None if entry.is_dir() else _sha(entry)
    return found


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` unwritable for this process, undone on the way out.

    Mode bits do not bind root, so as root the folder gets the immutable
    attribute (``chattr +i``), which does.
    """
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root and chattr is not installed: cannot make a folder read-only")
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and chattr +i fails on this filesystem: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.fixture(scope="module")
def real_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real, closed cyllama database (WAL mode) with rows in every store."""
    path = tmp_path_factory.mktemp("real") / "real.db"
    with CyllamaDB(path) as db:
        for i in range(150):
            db.set_config(f"key-{i}", "value " * 20)
        db.cache_response("a prompt", MODEL, None, "an answer")
        db.record_generation(MODEL, {"finish_reason": "stop", "stats": None})
        db.log("INFO", "hello")
    data = path.read_bytes()
    assert data[:16] == MAGIC and data[18:20] == b"\x02\x02"  # WAL mode, like every real file
    assert len(data) > 8 * _page_size(data)
    return data


def _page_size(data: bytes) -> int:
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else size


def _noise(n: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(n)
    return b"\x01" + data[1:]  # never starts like the SQLite magic


@dataclass(frozen=True)
class Case:
    """A bad database path: ``make(folder, real_db_bytes)`` builds it and returns the path."""

    make: Callable[[Path, bytes], Path]
    read_only: bool = False


def _file(content: Callable[[bytes], bytes]) -> Callable[[Path, bytes], Path]:
    def make(folder: Path, real: bytes) -> Path:
        path = folder / "cyllama.db"
        path.write_bytes(content(real))
        return path

    return make


def _directory(folder: Path, real: bytes) -> Path:
    path = folder / "cyllama.db"
    path.mkdir()
    (path / "inside.txt").write_text("someone's file")
    return path


def _missing(folder: Path, real: bytes) -> Path:
    return folder / "cyllama.db"


CASES = {
    "random-bytes": Case(_file(lambda real: _noise(8192, 1))),
    "random-after-sqlite-header": Case(_file(lambda real: MAGIC + _noise(8192 - len(MAGIC), 2))),
    "truncated-at-half": Case(_file(lambda real: real[: len(real) // 2])),
    "truncated-at-one-page": Case(_file(lambda real: real[: _page_size(real)])),
    "truncated-inside-page-1": Case(_file(lambda real: real[:50])),
    "truncated-inside-magic": Case(_file(lambda real: real[:10])),
    "page-1-zeroed-after-header": Case(
        _file(lambda real: real[:100] + bytes(_page_size(real) - 100) + real[_page_size(real) :])
    ),
    "random-page-1-after-header": Case(
        _file(lambda real: real[:100] + _noise(_page_size(real) - 100, 3) + real[_page_size(real) :])
    ),
    "directory-in-place-of-file": Case(_directory),
    "read-only-folder-no-db-yet": Case(_missing, read_only=True),
}


def _exercise_every_store(db: CyllamaDB) -> None:
    db.set_config("still", {"works": [1, "ü"]})
    assert db.get_config("still") == {"works": [1, "ü"]}
    db.set_metadata("theme", "dark")
    assert db.get_metadata("theme") == "dark"
    db.cache_response("prompt ü", MODEL, {"temperature": 0.0}, "answer")
    hit = db.get_cached_response("prompt ü", MODEL, {"temperature": 0.0})
    assert hit is not None and hit.text == "answer"
    row_id = db.record_generation(MODEL, {"finish_reason": "stop", "stats": None})
    assert isinstance(row_id, int)
    assert [r["id"] for r in db.get_generation_history()] == [row_id]
    log_id = db.log("ERROR", "logged in memory", category="reliability")
    assert isinstance(log_id, int)
    assert [r["message"] for r in db.get_logs(category="reliability")] == ["logged in memory"]
    model_id = db.save_model("in-memory", model_path=MODEL)
    assert db.get_model(model_id) is not None
    assert isinstance(db.save_metrics({"cpu_usage": 1.0}), int)
    assert db.get_db_stats()["path"] == ":memory:"


@pytest.mark.parametrize("name", list(CASES))
def test_unusable_file_falls_back_to_memory_untouched(
    name: str, tmp_path: Path, real_db: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES[name]
    folder = tmp_path / "store"
    folder.mkdir()
    path = case.make(folder, real_db)
    before = _snapshot(folder)

    with contextlib.ExitStack() as stack:
        if case.read_only:
            stack.enter_context(_read_only(folder))
        with caplog.at_level(logging.WARNING, logger="cyllama_db"):
            db = CyllamaDB(path)
        try:
            warnings = [
                r
                for r in caplog.records
                if r.name == "cyllama_db" and r.levelno == logging.WARNING and "falling back" in r.getMessage()
            ]
            assert len(warnings) == 1, caplog.text
            assert str(path) in warnings[0].getMessage()
            assert db.is_memory
            assert db.path == ":memory:"
            assert db.fallback_reason, "the reason for the fallback must be kept"
            assert db.fallback_reason.split(":")[0] in {
                "DatabaseError",
                "OperationalError",
                "IsADirectoryError",
                "PermissionError",
            }, db.fallback_reason
            _exercise_every_store(db)
        finally:
            db.close()
        # The fallback starts empty each time and still leaves the file alone.
        with CyllamaDB(path) as again:
            assert again.is_memory
            assert again.get_config("still") is None

    assert _snapshot(folder) == before, "the unusable file or its folder was changed"


def test_zero_length_file_is_adopted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "cyllama.db"
    sqlite3.connect(path).close()  # someone else made it: an empty file is an empty database
    assert path.stat().st_size == 0
    with caplog.at_level(logging.WARNING, logger="cyllama_db"):
        db = CyllamaDB(path)
    try:
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert db.fallback_reason is None
        assert not db.is_memory and db.path == str(path)
        db.set_config("adopted", True)
        db.log("INFO", "first row")
    finally:
        db.close()
    assert path.read_bytes()[:16] == MAGIC
    with CyllamaDB(path) as db:
        assert db.get_config("adopted") is True
        assert [r["message"] for r in db.get_logs()] == ["first row"]
        with db.pool.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- a garbage WAL beside a valid database ------------------------------------------------------


def _fill(path: Path, count: int) -> None:
    with CyllamaDB(path) as db:
        for i in range(count):
            db.set_config(f"row-{i}", i)
        db.log("INFO", "checkpointed")
        db.cache_response("kept prompt", MODEL, None, "kept answer", ttl=None)


def _check_checkpointed(db: CyllamaDB, count: int) -> None:
    assert db.fallback_reason is None and not db.is_memory
    assert {k: v for k, v in db.get_all_config().items() if k.startswith("row-")} == {
        f"row-{i}": i for i in range(count)
    }
    assert [r["message"] for r in db.get_logs()] == ["checkpointed"]
    hit = db.get_cached_response("kept prompt", MODEL, None)
    assert hit is not None and hit.text == "kept answer"
    with db.pool.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_random_bytes_wal_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cyllama.db"
    _fill(path, 100)
    wal = Path(str(path) + "-wal")
    assert not wal.exists(), "a clean close checkpoints and removes the WAL"
    wal.write_bytes(_noise(64 * 1024, 4))
    with CyllamaDB(path) as db:
        _check_checkpointed(db, 100)
        db.set_config("after", "garbage wal")
    with CyllamaDB(path) as db:
        _check_checkpointed(db, 100)
        assert db.get_config("after") == "garbage wal"


def test_wal_with_valid_header_and_garbage_frames_is_ignored(tmp_path: Path) -> None:
    """Frames that fail their checksums are dropped: only the rows that lived in them are lost."""
    live = tmp_path / "live" / "cyllama.db"
    live.parent.mkdir()
    _fill(live, 100)
    # A writer whose last commit is still only in the WAL (no checkpoint yet).
    writer = sqlite3.connect(live, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute(
            "INSERT INTO config (key, value, value_type, created_at, updated_at)"
            " VALUES ('wal-only', '1', 'int', 0, 0)"
        )
        wal_bytes = Path(str(live) + "-wal").read_bytes()
        main_bytes = live.read_bytes()
    finally:
        writer.close()
    assert len(wal_bytes) > 32
    # The copy a crash could leave: the main file and a WAL whose frames are torn.
    path = tmp_path / "copy" / "cyllama.db"
    path.parent.mkdir()
    path.write_bytes(main_bytes)
    Path(str(path) + "-wal").write_bytes(wal_bytes[:32] + _noise(len(wal_bytes) - 32, 5))
    with CyllamaDB(path) as db:
        _check_checkpointed(db, 100)
        assert db.get_config("wal-only") is None  # its only copy was the destroyed frame
        db.set_config("after", "torn wal")
    with CyllamaDB(path) as db:
        _check_checkpointed(db, 100)
        assert db.get_config("after") == "torn wal"


# -- fallback="raise" ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "environment"])
@pytest.mark.parametrize("name", list(CASES))
def test_fallback_raise_refuses_every_unusable_file(
    name: str, how: str, tmp_path: Path, real_db: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    folder = tmp_path / "store"
    folder.mkdir()
    path = case.make(folder, real_db)
    before = _snapshot(folder)
    kwargs: dict[str, str] = {}
    if how == "argument":
        kwargs["fallback"] = "raise"
        monkeypatch.setenv("CYLLAMA_DB_FALLBACK", "memory")  # the argument wins
    else:
        monkeypatch.setenv("CYLLAMA_DB_FALLBACK", "raise")
    with contextlib.ExitStack() as stack:
        if case.read_only:
            stack.enter_context(_read_only(folder))
        with pytest.raises(DatabaseFileError, match="fallback='raise'") as caught:
            CyllamaDB(path, **kwargs)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, CyllamaDBError) and isinstance(caught.value, OSError)
    assert _snapshot(folder) == before


# -- another application's file (issue 13, item 1) ----------------------------------------------


def _flyway(conn: sqlite3.Connection) -> None:
    conn.execute(
        'CREATE TABLE "flyway_schema_history" (installed_rank INT NOT NULL PRIMARY KEY, '
        "version VARCHAR(50), description VARCHAR(200) NOT NULL, script VARCHAR(1000) NOT NULL, "
        "success BOOLEAN NOT NULL)"
    )
    conn.execute("INSERT INTO flyway_schema_history VALUES (1, '1', 'init', 'V1__init.sql', 1)")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
    conn.execute("INSERT INTO accounts (owner) VALUES ('alice')")


def _flyway_schema_version(conn: sqlite3.Connection) -> None:
    # Older Flyway (and other tools) call their history table schema_version.
    conn.execute(
        "CREATE TABLE schema_version (version TEXT, installed_rank INT PRIMARY KEY, "
        "description TEXT, installed_on TEXT)"
    )
    conn.execute("INSERT INTO schema_version VALUES ('1', 1, 'init', '2020-01-01')")


def _our_shape_plus_their_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
        "applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, name TEXT)"
    )
    conn.execute("INSERT INTO schema_version (version, name) VALUES (1, 'theirs')")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")


def _other_application_id(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT)")


def _only_a_view(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE VIEW answer AS SELECT 42")


FOREIGN = {
    "flyway-history": (_flyway, "no cyllama-db schema_version table"),
    "flyway-style-schema-version": (_flyway_schema_version, "its schema_version table has the columns"),
    "our-shape-plus-their-table": (_our_shape_plus_their_table, "invoices"),
    "another-application-id": (_other_application_id, "application_id is 0x000004d2"),
    "only-a-view": (_only_a_view, "no cyllama-db schema_version table"),
}


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
@pytest.mark.parametrize("name", list(FOREIGN))
def test_another_applications_file_is_refused_byte_for_byte_untouched(
    name: str, wal: bool, tmp_path: Path
) -> None:
    make, reason = FOREIGN[name]
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "theirs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    make(conn)
    if wal:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = _snapshot(folder)
    for fallback in ("memory", "raise"):
        with pytest.raises(ForeignDatabaseError, match="another application") as caught:
            CyllamaDB(path, fallback=fallback)
        assert str(path) in str(caught.value) and reason in str(caught.value)
        assert isinstance(caught.value, CyllamaDBError)
        # Read-only too: refusing is not about writing.
        with pytest.raises(ForeignDatabaseError):
            CyllamaDB(path, readonly=True)
    assert _snapshot(folder) == before, "another application's file or its folder changed"
    assert sorted(p.name for p in folder.iterdir()) == ["theirs.db"]


def test_our_files_are_stamped_and_old_ones_adopted(tmp_path: Path, real_db: bytes) -> None:
    path = tmp_path / "old.db"
    path.write_bytes(real_db)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.execute("PRAGMA application_id = 0")  # as written by a cyllama-db before the stamp
    conn.commit()
    conn.close()
    with CyllamaDB(path) as db:
        assert not db.is_memory and db.get_config("key-3") == "value " * 20
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID == 0x43794442
    conn.close()
    assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID  # in the header


def test_an_empty_file_and_a_new_path_are_ours(tmp_path: Path) -> None:
    for path in (tmp_path / "new.db", tmp_path / "empty.db"):
        if path.name == "empty.db":
            path.touch()
        with CyllamaDB(path, fallback="raise") as db:
            db.set_config("mine", True)
        assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID


# -- files we may read but not write -----------------------------------------------------------


def test_valid_file_in_a_read_only_folder_is_refused_and_readable(tmp_path: Path, real_db: bytes) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "cyllama.db"
    path.write_bytes(real_db)
    before = _snapshot(folder)
    with _read_only(folder):
        with pytest.raises(ReadOnlyDatabaseError, match="readonly=True") as caught:
            CyllamaDB(path)
        assert "not writable" in str(caught.value)
        with CyllamaDB(path, readonly=True) as db:
            assert db.get_config("key-7") == "value " * 20
            assert db.get_db_stats()["config_entries"] == 150
            with pytest.raises(ReadOnlyDatabaseError):
                db.set_config("x", 1)
    assert _snapshot(folder) == before


def _exercise_every_writer(db: CyllamaDB) -> None:
    writers: list[Callable[[], object]] = [
        lambda: db.set_config("x", 1),
        lambda: db.delete_config("key-1"),
        lambda: db.set_metadata("theme", "dark"),
        lambda: db.cache_response("p", MODEL, None, "r"),
        lambda: db.invalidate_cache(),
        lambda: db.cleanup_cache(),
        lambda: db.record_generation(MODEL, {"finish_reason": "stop", "stats": None}),
        lambda: db.prune_stats(older_than=0),
        lambda: db.log("ERROR", "no"),
        lambda: db.save_model("m", model_path=MODEL),
        lambda: db.save_metrics({"cpu_usage": 1.0}),
        db.vacuum,
    ]
    for write in writers:
        with pytest.raises(ReadOnlyDatabaseError):
            write()


def test_readonly_reads_everything_and_refuses_every_write(tmp_path: Path, real_db: bytes) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "cyllama.db"
    path.write_bytes(real_db)
    before = _sha(path)
    with CyllamaDB(path, readonly=True) as db:
        assert db.settings.readonly and db.pool.readonly
        assert db.get_config("key-0") == "value " * 20
        assert db.get_cached_response("a prompt", MODEL, None) is not None
        assert [r["message"] for r in db.get_logs()] == ["hello"]
        assert db.get_cache_stats()["entries"] == 1
        assert db.get_db_stats()["stats_entries"] == 1
        _exercise_every_writer(db)
        exported = db.export_database(tmp_path / "copy.db")
        assert exported
    assert _sha(path) == before, "readonly=True changed the file"
    with pytest.raises(DatabaseFileError, match="no such file"):
        CyllamaDB(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


# -- a full disk, and a lost -shm (issue 13, item 3) ---------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test (root only; skipped where mount is not allowed)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a tiny tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill_disk(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)


def test_full_disk_raises_and_never_falls_back(tiny_disk: Path) -> None:
    path = tiny_disk / "cyllama.db"
    with CyllamaDB(path) as db:
        db.set_config("kept", "before the disk filled up")
    _fill_disk(tiny_disk)

    # Opening a valid file: SQLite cannot create the -shm it needs.
    with pytest.raises((DiskFullError, DatabaseFileError)) as caught:
        CyllamaDB(path)
    assert str(path) in str(caught.value)
    # A new path: a clear error and no 0-byte file left behind.
    new = tiny_disk / "new.db"
    with pytest.raises(DiskFullError):
        CyllamaDB(new)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["cyllama.db", "filler"]

    (tiny_disk / "filler").unlink()
    with CyllamaDB(path) as db:  # room again: open, then fill up while open
        _fill_disk(tiny_disk)
        # (A statement inside a transaction failing raw is the error contract's
        # part of issue 13, mapped by db_op; the COMMIT's failure maps here.)
        with pytest.raises((CyllamaDBError, sqlite3.OperationalError), match="full"):
            db.set_config("big", "x" * 500_000)
        # Reads still work and never write; the value is not silently "saved" in memory.
        assert db.get_config("kept") == "before the disk filled up"
        assert db.get_config("big") is None
        assert db.get_db_stats()["config_entries"] >= 1
        assert not db.is_memory
    (tiny_disk / "filler").unlink()
    with CyllamaDB(path) as db:
        assert db.get_config("kept") == "before the disk filled up"
        assert db.get_config("big") is None


def test_a_deleted_shm_is_recreated_not_a_fallback(tmp_path: Path) -> None:
    path = tmp_path / "cyllama.db"
    writer = CyllamaDB(path)
    writer.set_config("in the wal", 1)
    (tmp_path / "cyllama.db-shm").unlink()  # as after a reboot that wiped it
    try:
        with CyllamaDB(path, fallback="raise") as db:
            assert not db.is_memory
            assert db.get_config("in the wal") == 1
            db.set_config("after", 2)
    finally:
        writer.close()
    with CyllamaDB(path) as db:
        assert db.get_config("after") == 2


def test_a_deleted_shm_on_a_full_disk_is_an_error_not_an_empty_database(tiny_disk: Path) -> None:
    path = tiny_disk / "cyllama.db"
    with CyllamaDB(path) as db:
        db.set_config("kept", 1)
    for side in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            (tiny_disk / f"cyllama.db{side}").unlink()
    _fill_disk(tiny_disk)
    with pytest.raises((DiskFullError, DatabaseFileError)):
        CyllamaDB(path)
    (tiny_disk / "filler").unlink()
    with CyllamaDB(path) as db:
        assert db.get_config("kept") == 1


@contextlib.contextmanager
def _unwritable_file(path: Path) -> Iterator[None]:
    """Make ``path`` readable but not writable for this process (chattr +i as root)."""
    if os.geteuid() != 0:
        path.chmod(0o400)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root and chattr is not installed: cannot make a file read-only")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and chattr +i fails on this filesystem: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_cli_read_commands_open_an_unwritable_file_read_only(
    tmp_path: Path, real_db: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    from cyllama_db.cli import main

    path = tmp_path / "cyllama.db"
    path.write_bytes(real_db)
    before = _sha(path)
    with _unwritable_file(path):
        for command in (
            ["info"],
            ["config", "list", "--json"],
            ["config", "get", "key-1"],
            ["stats"],
            ["history"],
            ["logs"],
            ["cache", "list"],
            ["cache", "stats"],
            ["models", "list"],
            ["metrics", "history"],
            ["export", str(tmp_path / "copy.db")],
        ):
            code = main(["--db", str(path), *command])
            _out, err = capsys.readouterr()
            assert code == 0, (command, err)
        # A write is refused with one line that says how to read it instead.
        assert main(["--db", str(path), "config", "set", "x", "1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "readonly=True" in err
    assert _sha(path) == before
    with CyllamaDB(tmp_path / "copy.db", readonly=True) as copy:
        assert copy.get_config("key-1") == "value " * 20
