"""One model, one name: registry name, GGUF general.name, file name and path select the same rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyllama_db import LLM, AmbiguousModelError, CyllamaDB, complete, wrap
from cyllama_db.llm import unload_models

pytestmark = pytest.mark.llama


@pytest.fixture(autouse=True)
def _no_shared_models() -> None:
    yield
    unload_models()


def _cli(db: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "cyllama_db", "--db", str(db), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_name_of_a_model_selects_the_same_rows(tiny_model_path: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "names.db"
    with CyllamaDB(db_path) as db:
        db.register_model(tiny_model_path, name="tiny")
        for i in range(3):
            complete(f"prompt {i}", tiny_model_path, db=db, max_tokens=3, temperature=0)
        complete("prompt 0", tiny_model_path, db=db, max_tokens=3, temperature=0)  # a hit
        names = ["tiny", "tiny-test-llama", tiny_model_path.name, str(tiny_model_path)]
        for name in names:
            assert db.get_stats_summary(model_path=name)["total_generations"] == 4, name
            assert len(db.get_generation_history(model_path=name)) == 4, name
            assert len(db.list_cache_entries(model_path=name)) == 3, name
        assert db.get_stats_summary(model_path="no-such-model")["total_generations"] == 0
    for name in names:
        out = json.loads(_cli(db_path, "stats", "--model", name, "--json"))
        assert out["total_generations"] == 4, (name, out)
        assert len(json.loads(_cli(db_path, "history", "--model", name, "--json"))) == 4, name
        assert len(json.loads(_cli(db_path, "cache", "list", "--model", name, "--json"))) == 3, name


def test_the_same_file_elsewhere_is_the_same_model(tiny_model_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copies" / tiny_model_path.name
    copy.parent.mkdir()
    copy.write_bytes(tiny_model_path.read_bytes())
    with CyllamaDB(tmp_path / "copies.db") as db:
        complete("one", tiny_model_path, db=db, max_tokens=2, temperature=0)
        complete("two", copy, db=db, max_tokens=2, temperature=0)
        assert db.get_stats_summary(model_path=tiny_model_path)["total_generations"] == 2
        assert db.get_stats_summary(model_path="tiny-test-llama")["total_generations"] == 2
        assert db.invalidate_cache(model_path="tiny-test-llama") == 2


def test_an_ambiguous_name_lists_the_candidates(tmp_path: Path) -> None:
    from cyllama_db.testing import write_tiny_llama

    a = write_tiny_llama(tmp_path / "a" / "model.gguf", seed=1)
    b = write_tiny_llama(tmp_path / "b" / "model.gguf", seed=2)
    with CyllamaDB(tmp_path / "amb.db") as db:
        complete("x", a, db=db, max_tokens=2, temperature=0)
        complete("x", b, db=db, max_tokens=2, temperature=0)
        with pytest.raises(AmbiguousModelError, match="ambiguous") as info:
            db.get_stats_summary(model_path="model.gguf")
        assert isinstance(info.value, ValueError)
        assert sorted(info.value.candidates) == sorted([str(a), str(b)])
        assert db.get_stats_summary(model_path=a)["total_generations"] == 1


def test_the_registry_follows_every_generation_however_loaded(tiny_model_path: Path, tmp_path: Path) -> None:
    from llama_cpp import Llama

    with CyllamaDB(tmp_path / "usage.db") as db:
        model_id = db.register_model(tiny_model_path, name="tiny")
        assert db.get_model(model_id)["use_count"] == 0
        assert db.get_model(model_id)["last_used_at"] is None
        complete("a", tiny_model_path, db=db, max_tokens=2, temperature=0)
        llm = LLM.from_registry("tiny", db=db, max_tokens=2, temperature=0)
        first = db.get_model(model_id)["last_used_at"]
        for i in range(3):
            llm(f"more {i}")
        wrap(Llama(os.fspath(tiny_model_path), verbose=False), db=db).create_completion("w", max_tokens=2)
        record = db.get_model(model_id)
        assert record["use_count"] == 5
        assert record["last_used_at"] > first
        # a record passed back in is still accepted (use_count is derived, not a parameter)
        assert db.update_model(record, ctx_size=256)["ctx_size"] == 256
