"""Shared fixtures: every test gets a private HOME, no CYLLAMA_* variables and no global DB."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import cyllama_db
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
