"""A process killed in the middle of a write loses only its open transaction.

Every test here SIGKILLs a real writer process: the file must pass
``PRAGMA integrity_check`` afterwards and hold every row the writer had
reported committed.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB
from cyllama_db.db.migrations import latest_version

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL"),
]

CHILD = textwrap.dedent(
    """
    import sys, time
    from cyllama_db import CyllamaDB

    db = CyllamaDB(sys.argv[1])
    for i in range(50):
        db.set_config(f"committed-{i}", i)
    with db.pool.transaction() as conn:
        for i in range(1000):
            conn.execute(
                "INSERT INTO config (key, value, value_type, created_at, updated_at)"
                " VALUES (?, ?, 'int', 0, 0)",
                (f"doomed-{i}", str(i)),
            )
        print("mid-write", flush=True)
        time.sleep(60)  # killed here, inside the transaction
    """
)


def test_sigkill_mid_transaction_keeps_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "mid-write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with CyllamaDB(path) as db:
        assert db.path == str(path)  # opened normally, no fallback
        config = db.get_all_config()
        assert {k for k in config if k.startswith("committed-")} == {f"committed-{i}" for i in range(50)}
        assert not any(k.startswith("doomed-") for k in config)
        with db.pool.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # the dead writer's lock is gone: writing works at once
        db.set_config("after", True)
        assert db.get_config("after") is True


def test_sigkill_while_another_process_waits_for_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "killed2.db"
    CyllamaDB(path).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "mid-write"
    with CyllamaDB(path, busy_timeout=30) as db:
        # This writer blocks on the child's lock until the child dies.
        killer = threading.Timer(0.5, os.kill, args=(proc.pid, signal.SIGKILL))
        killer.start()
        db.set_config("waited", 1)
        killer.join()
        proc.wait(timeout=30)
        assert db.get_config("waited") == 1
        assert db.get_config("doomed-0") is None
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# Writes through every store in a loop and, only after each call has returned
# (i.e. committed), appends the row's marker to a side file.
LOOP_CHILD = textwrap.dedent(
    """
    import os, sys
    from cyllama_db import CyllamaDB, GenerationConfig, Response

    path, side, model, run = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    db = CyllamaDB(path, max_cache_size_mb=1024, cache_ttl=None)
    config = GenerationConfig(temperature=0.0)
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    print("ready", flush=True)
    i = 0
    while True:
        marker = f"{run}-{i}"
        kind = i % 4
        if kind == 0:
            db.set_config(f"crash-{marker}", {"i": i, "pad": "x" * 300})
        elif kind == 1:
            db.cache_response(f"crash-{marker}", model, config, Response(text="y" * 3000))
        elif kind == 2:
            db.record_generation(model, {"text": "z", "completion_tokens": 1}, session_id=f"crash-{marker}")
        else:
            db.log("WARNING", f"crash-{marker}", category="crash")
        os.write(fd, f"{kind} {marker}\\n".encode())
        i += 1
    """
)


def _wait_for_lines(path: Path, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"the writer did not report {count} commits in {timeout:g} s")


def test_random_sigkills_lose_no_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "crashy.db"
    side = tmp_path / "committed.txt"
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    rng = random.Random(8)
    before = 0
    for run in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", LOOP_CHILD, str(path), str(side), str(model), str(run)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        # At least a few commits first (however slow the machine), then the kill
        # lands at a random moment of the loop.
        _wait_for_lines(side, before + 8)
        threading.Event().wait(rng.uniform(0.0, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

        reported = [
            line.split(" ", 1) for line in side.read_text().split("\n")[:-1]  # last: maybe torn
        ]
        assert len(reported) >= before + 8
        before = len(reported)
        with CyllamaDB(path) as db:
            assert db.fallback_reason is None
            with db.pool.read() as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                sessions = {r[0] for r in conn.execute("SELECT session_id FROM stats")}
                messages = {r[0] for r in conn.execute("SELECT message FROM logs WHERE category = 'crash'")}
            config = db.get_all_config()
            for kind, marker in reported:
                name = f"crash-{marker}"
                if kind == "0":
                    assert config[name]["pad"] == "x" * 300, name
                elif kind == "1":
                    hit = db.get_cached_response(name, model, {"temperature": 0.0})
                    assert hit is not None and hit.text == "y" * 3000, name
                elif kind == "2":
                    assert name in sessions, name
                else:
                    assert name in messages, name


# Opens (creates and migrates) a database, killing itself with SIGKILL just
# before its k-th SQL statement (k=0: never), so the kills land at every stage
# of creation and migration deterministically, not by timing luck.
OPEN_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    kill_at = int(sys.argv[2])
    seen = 0

    def count_statements(frame, event, arg):
        global seen
        if event == "c_call" and getattr(arg, "__name__", "") in ("execute", "executescript", "commit"):
            seen += 1
            if seen == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(count_statements)
    from cyllama_db import CyllamaDB
    CyllamaDB(sys.argv[1]).close()
    sys.setprofile(None)
    print(seen)
    """
)


def test_sigkill_at_every_stage_of_creating_a_file(tmp_path: Path) -> None:
    counted = subprocess.run(
        [sys.executable, "-c", OPEN_CHILD, str(tmp_path / "count.db"), "0"],
        capture_output=True, text=True, check=True,
    )
    statements = int(counted.stdout)
    assert statements > 20  # creating and migrating runs many statements
    stages = sorted({1, 2, 3, statements} | set(random.Random(9).sample(range(1, statements), 9)))
    for kill_at in stages:
        path = tmp_path / f"fresh-{kill_at}.db"
        proc = subprocess.run(
            [sys.executable, "-c", OPEN_CHILD, str(path), str(kill_at)], capture_output=True
        )
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stderr)
        with CyllamaDB(path) as db:
            assert db.fallback_reason is None, (kill_at, db.fallback_reason)
            assert db.schema_version() == latest_version()
            with db.pool.read() as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            db.set_config("after", kill_at)
            assert db.get_config("after") == kill_at
