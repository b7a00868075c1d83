"""A process killed in the middle of a write loses only its open transaction."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

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
        import threading

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
