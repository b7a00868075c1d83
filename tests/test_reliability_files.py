"""Corrupt and unusable database files: a warning, the in-memory fallback, the file untouched (issue 8).

Every case below opens ``CyllamaDB(path)`` on something it cannot use and
expects the same outcome: one WARNING from the ``cyllama_db`` logger saying
it is "falling back", ``db.is_memory`` with ``db.fallback_reason`` set, every
store working in memory, and the original bytes and the folder's listing
exactly as they were (no ``-wal``/``-shm``/``-journal`` left behind).

Two neighbours with a different, defined outcome:

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

from cyllama_db import CyllamaDB

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
    "read-only-folder-existing-db": Case(_file(lambda real: real), read_only=True),
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
