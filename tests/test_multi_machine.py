"""Several machines on one database (issue 16, item 7): each machine is a separate process.

Every "machine" is a ``python -c`` subprocess (with a timeout) holding its own
copy of the tiny model at a path of its own, all against one database: a
fresh database of the throwaway PostgreSQL server (``pg_url``), and, where
the behaviour is the same, one SQLite file that the processes share. The
cache's identity is the model file's fingerprint, so the copies share
entries; PostgreSQL's single flight (an advisory lock per request) makes
two machines missing the same prompt at once generate it once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cyllama_db
from cyllama_db import CyllamaDB

SRC = str(Path(cyllama_db.__file__).resolve().parents[1])
TIMEOUT = 120.0
MAX_TOKENS = 48  # the measured call's; warm-up calls use other values, so stats rows tell them apart

# One machine: opens the database, does ``op`` and prints one JSON line.
WORKER = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
from cyllama_db import CyllamaDB, LLM, Response
target = {"url": args["url"]} if args.get("url") else {"path": args["path"]}
db = CyllamaDB(**target)
out = {}
try:
    if args["op"] == "generate":
        llm = LLM(args["model"], db=db, temperature=0.0, max_tokens=args["max_tokens"])
        if args.get("ready"):
            llm("warm up", max_tokens=1, cache=False)  # loaded before the start line
            open(args["ready"], "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(args["go"]):
                if time.monotonic() > deadline:
                    raise SystemExit("no start signal")
                time.sleep(0.001)
        r = llm(args["prompt"])
        out = {"text": r.text, "cache_hit": r.cache_hit}
    elif args["op"] == "writes":
        me, n = args["me"], args["n"]
        for i in range(n):
            db.cache_response(f"prompt {me}-{i}", args["model"], None, f"answer {me}-{i}")
            db.record_generation(
                args["model"], Response(text=f"answer {me}-{i}", finish_reason="stop"),
                session_id=f"machine-{me}",
            )
            db.log("info", f"write {me}-{i}", "multi-machine", {"machine": me, "i": i})
        out = {"done": n}
    db.flush()
finally:
    db.close()
print(json.dumps(out))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYLLAMA_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(**args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"a machine did not finish in {TIMEOUT:g} s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"a machine failed (exit {proc.returncode}):\n{err[-3000:]}"
    lines = out.strip().splitlines()
    assert lines, f"a machine printed nothing:\n{err[-3000:]}"
    return dict(json.loads(lines[-1]))


def _run(**args: Any) -> dict[str, Any]:
    return _result(_start(**args))


@pytest.fixture
def machines(tiny_model_path: Path, tmp_path: Path) -> Callable[[int], list[str]]:
    """``machines(n)``: n copies of the tiny model, each at a path of its own (one per machine).

    The copies keep the file's name in folders of their own, as the same
    download on several machines would: a cache entry's identity is
    ``<basename>@<fingerprint>`` (stores/keys.py ``model_identity``), so a
    renamed copy would not share entries.
    """

    def copies(n: int) -> list[str]:
        paths = []
        for i in range(n):
            target = tmp_path / f"machine-{i}" / "models" / tiny_model_path.name
            target.parent.mkdir(parents=True)
            shutil.copyfile(tiny_model_path, target)
            paths.append(str(target))
        return paths

    return copies


@pytest.fixture(params=["postgresql", "sqlite"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Where the machines' database is: a fresh PostgreSQL database, or one shared SQLite file."""
    if request.param == "postgresql":
        return {"url": request.getfixturevalue("pg_url")}
    return {"path": str(tmp_path / "shared.db")}


def _open(target: dict[str, str]) -> CyllamaDB:
    return CyllamaDB(**target)


def _scalar(db: CyllamaDB, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
    with db.backend.read() as conn:
        row = conn.execute(sql, parameters).fetchone()
    return row[0]


# -- (a) one generates, the other hits ------------------------------------------------------------


def test_one_machine_generates_and_the_other_hits(
    target: dict[str, str], machines: Callable[[int], list[str]]
) -> None:
    first_model, second_model = machines(2)
    prompt = "Two machines, one answer:"
    first = _run(op="generate", model=first_model, prompt=prompt, max_tokens=MAX_TOKENS, **target)
    second = _run(op="generate", model=second_model, prompt=prompt, max_tokens=MAX_TOKENS, **target)
    assert first["cache_hit"] is False
    assert second["cache_hit"] is True, "the second machine generated again: the model copies do not share entries"
    assert second["text"] == first["text"]
    db = _open(target)
    try:
        assert db.get_cache_stats()["entries"] == 1
        assert _scalar(db, "SELECT COUNT(*) FROM stats WHERE cache_hit = 0") == 1
        assert _scalar(db, "SELECT COUNT(*) FROM stats WHERE cache_hit = 1") == 1
        # Each machine's statistics name its own copy of the model.
        paths = {row["model_path"] for row in db.get_generation_history(limit=10)}
        assert paths == {first_model, second_model}
    finally:
        db.close()


# -- (b) 4 machines x 300 writes lose nothing -----------------------------------------------------


def test_four_machines_writing_at_once_lose_nothing(pg_url: str, machines: Callable[[int], list[str]]) -> None:
    n_machines, per_kind = 4, 100  # 100 cache puts + 100 statistics rows + 100 log entries each
    models = machines(n_machines)
    procs = [
        _start(op="writes", url=pg_url, model=models[i], me=i, n=per_kind) for i in range(n_machines)
    ]
    for proc in procs:
        assert _result(proc) == {"done": per_kind}
    db = CyllamaDB(url=pg_url)
    try:
        assert _scalar(db, "SELECT COUNT(*) FROM cache") == n_machines * per_kind
        assert _scalar(db, "SELECT COUNT(*) FROM stats") == n_machines * per_kind
        assert _scalar(db, "SELECT COUNT(*) FROM logs WHERE category = ?", ("multi-machine",)) == n_machines * per_kind
        for i in range(n_machines):
            # Every machine's every row, readable through the API.
            assert _scalar(db, "SELECT COUNT(*) FROM stats WHERE session_id = ?", (f"machine-{i}",)) == per_kind
            for j in (0, per_kind // 2, per_kind - 1):
                hit = db.get_cached_response(f"prompt {i}-{j}", models[i])
                assert hit is not None and hit.text == f"answer {i}-{j}"
    finally:
        db.close()


# -- (c) two machines missing the same prompt at once generate once ------------------------------


def _race(target: dict[str, str], models: list[str], tmp_path: Path, prompt: str) -> list[dict[str, Any]]:
    """Start one machine per model, let them all load, then ask them ``prompt`` at the same moment."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(len(models))]
    procs = [
        _start(
            op="generate", model=model, prompt=prompt, max_tokens=MAX_TOKENS,
            ready=str(ready[i]), go=str(go), **target,
        )
        for i, model in enumerate(models)
    ]
    deadline = time.monotonic() + TIMEOUT
    while not all(r.exists() for r in ready):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            errors = "\n".join(p.communicate()[1][-2000:] for p in procs)
            pytest.fail(f"the machines did not get ready:\n{errors}")
        time.sleep(0.01)
    go.touch()
    return [_result(p) for p in procs]


def test_two_machines_missing_the_same_prompt_at_once_generate_once(
    pg_url: str, machines: Callable[[int], list[str]], tmp_path: Path
) -> None:
    target = {"url": pg_url}
    results = _race(target, machines(2), tmp_path, "The same new prompt on two machines:")
    assert results[0]["text"] == results[1]["text"]
    assert sorted(r["cache_hit"] for r in results) == [False, True]
    db = CyllamaDB(url=pg_url)
    try:
        generated = "SELECT COUNT(*) FROM stats WHERE cache_hit = 0 AND max_tokens = ?"
        assert _scalar(db, generated, (MAX_TOKENS,)) == 1
        assert _scalar(db, "SELECT COUNT(*) FROM stats WHERE cache_hit = 1 AND max_tokens = ?", (MAX_TOKENS,)) == 1
        assert db.get_cache_stats()["entries"] == 1
    finally:
        db.close()


def test_many_rounds_of_racing_machines_generate_each_prompt_once(
    pg_url: str, machines: Callable[[int], list[str]], tmp_path: Path
) -> None:
    # Three machines, three prompts one after another: the lock is released after each.
    models = machines(3)
    target = {"url": pg_url}
    for round_ in range(3):
        rounds = tmp_path / f"round-{round_}"
        rounds.mkdir()
        results = _race(target, models, rounds, f"Prompt of round {round_}:")
        assert len({r["text"] for r in results}) == 1
        assert sorted(r["cache_hit"] for r in results) == [False, True, True]
    db = CyllamaDB(url=pg_url)
    try:
        assert _scalar(db, "SELECT COUNT(*) FROM stats WHERE cache_hit = 0 AND max_tokens = ?", (MAX_TOKENS,)) == 3
    finally:
        db.close()


# -- the lock itself ---------------------------------------------------------------------------


def test_the_flight_lock_is_held_across_connections_and_waits_bounded(pg_url: str) -> None:
    # Two CyllamaDB objects: two backends, two server sessions (as two machines have).
    one, two = CyllamaDB(url=pg_url), CyllamaDB(url=pg_url)
    try:
        with one.backend.flight("some key", 5.0) as held:
            assert held is True
            started = time.monotonic()
            with two.backend.flight("some key", 0.3) as held_too:
                waited = time.monotonic() - started
                assert held_too is False  # gave up: the block runs without the lock
            assert 0.25 <= waited < 3.0
            with two.backend.flight("another key", 0.3) as other:
                assert other is True  # one lock per request
        started = time.monotonic()
        with two.backend.flight("some key", 5.0) as held:
            assert held is True and time.monotonic() - started < 1.0  # released at the end of the block
        # Released even when the block raises.
        with pytest.raises(RuntimeError), two.backend.flight("some key", 5.0):
            raise RuntimeError("generation failed")
        with one.backend.flight("some key", 0.5) as held:
            assert held is True
    finally:
        one.close()
        two.close()


def test_sqlite_flight_is_a_no_op(tmp_path: Path) -> None:
    # One machine holds a SQLite file: the in-process single flight covers it.
    db = CyllamaDB(tmp_path / "one.db")
    try:
        with db.backend.flight("k", 0.0) as held, db.backend.flight("k", 0.0) as again:
            assert held is True and again is True
    finally:
        db.close()


def test_metrics_samples_of_several_hosts_on_one_server(pg_url: str) -> None:
    db = CyllamaDB(url=pg_url)
    try:
        first = db.save_metrics({"cpu_usage": 1.0, "host": "box-a"})
        second = db.save_metrics({"cpu_usage": 2.0, "host": "box-b"})
        assert [(h["id"], h["host"]) for h in db.get_metrics_history()] == [(first, "box-a"), (second, "box-b")]
        assert [h["cpu_usage"] for h in db.get_metrics_history(host="box-b")] == [2.0]
    finally:
        db.close()
