"""Shared fixtures: every test gets a private HOME, no CYLLAMA_* variables and no global DB."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import cyllama_db
import pgserver
from cyllama_db import CyllamaDB


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    for name in list(os.environ):
        if name.startswith("CYLLAMA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    cyllama_db.reset_db()
    yield
    cyllama_db.reset_db()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "cyllama.db"


@pytest.fixture
def file_db(db_path: Path) -> Iterator[CyllamaDB]:
    """A real database file in a temporary folder."""
    db = CyllamaDB(db_path)
    yield db
    db.close()


@pytest.fixture
def memory_db() -> Iterator[CyllamaDB]:
    """A private in-memory database."""
    db = CyllamaDB(":memory:")
    yield db
    db.close()


@pytest.fixture(params=["memory", "file"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CyllamaDB]:
    """Runs a test once on an in-memory and once on a file database (contract tests)."""
    db = CyllamaDB(":memory:" if request.param == "memory" else tmp_path / "contract.db")
    yield db
    db.close()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, tiny random-weight llama GGUF that llama.cpp loads in milliseconds.

    Tests that run it need llama-cpp-python; they are skipped (with the reason
    printed) only where it is not installed.
    """
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llama]')")
    from cyllama_db.testing import write_tiny_llama

    return Path(write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama.gguf"))


# -- PostgreSQL (issue 16): one throwaway server per session, started on first use ----------------

# Read at import: the autouse _isolate fixture removes every CYLLAMA_* variable from tests.
_PG_URL_FROM_ENV = os.environ.get("CYLLAMA_TEST_PG_URL", "").strip() or None
_pg_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pgserver.Server]:
    """A PostgreSQL server for this test session: ``$CYLLAMA_TEST_PG_URL``'s, or a throwaway one.

    The throwaway cluster (tests/pgserver.py) starts when the first test asks
    for it and stops at the end of the session. No server binaries: the
    tests that need one skip, saying so. Binaries that fail to start a
    server: those tests fail with the server's log (a broken CI must not pass).
    """
    if _PG_URL_FROM_ENV is not None:
        yield pgserver.external(_PG_URL_FROM_ENV)
        return
    try:
        server = pgserver.start(tmp_path_factory.mktemp("postgres"))
    except pgserver.NoServerBinaries as exc:
        pytest.skip(str(exc))
    except pgserver.ServerStartError as exc:
        pytest.fail(f"the PostgreSQL server binaries exist but the server did not start:\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: pgserver.Server) -> Iterator[str]:
    """The URL of a fresh, empty database on :func:`pg_server`, for this test alone."""
    external = _PG_URL_FROM_ENV is not None
    # An existing server outlives the session: names carry the process id and are dropped after.
    name = f"test_{os.getpid()}_{next(_pg_databases)}" if external else f"test_{next(_pg_databases)}"
    url = pg_server.create_database(name)
    yield url
    if external:
        pg_server.drop_database(name)
