"""fork() while another thread writes: the child never hangs (issue 13, item 4).

A child of ``os.fork()`` inherits the parent's SQLite connections, including
one another thread may have been using at that very moment: its SQLite mutex
is then held by a thread that does not exist in the child. Closing
(finalizing) such a connection in the child blocks on that mutex forever, so
the pool never closes a connection it inherited; it opens its own instead.

The run happens in a fresh interpreter (a hang must not take pytest with it),
which forks 30 children while a writer thread loops writes. Each child uses
the same ``CyllamaDB`` object: writes, reads, and leaves with ``os._exit``
(and a second group leaves through a normal interpreter exit, which runs the
atexit hooks). The parent waits for each child with a timeout and kills the
ones that hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only"),
]

FORKS = 30

_SCRIPT = textwrap.dedent(
    r"""
    import faulthandler, json, os, signal, sys, threading, time, traceback, warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, on purpose
    from cyllama_db import CyllamaDB

    path, forks, exit_mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    db = CyllamaDB(path)
    stop = threading.Event()
    written = [0]

    def writer():
        i = 0
        while not stop.is_set():
            db.set_config(f"parent-{i % 50}", i)
            db.log("INFO", "parent writes", context={"i": i})
            i += 1
        written[0] = i

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.2)
    children = []
    for n in range(forks):
        time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            code = 1
            faulthandler.dump_traceback_later(20, exit=True)  # a hang shows where, on stderr
            try:
                db.set_config(f"child-{n}", n)
                db.log("INFO", "child", context={"n": n})
                code = 0 if db.get_config(f"child-{n}") == n else 2
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                if exit_mode == "exit" and code == 0:
                    db.close()
                    sys.exit(0)
                os._exit(code)
        children.append(pid)
    stop.set()
    thread.join()

    hung, failed = [], []
    deadline = time.monotonic() + 60
    for pid in children:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if os.waitstatus_to_exitcode(status) != 0:
                    failed.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hung.append(pid)
                break
            time.sleep(0.01)
    present = [n for n in range(forks) if db.get_config(f"child-{n}") == n]
    db.close()
    print(json.dumps({"hung": len(hung), "failed": failed, "present": present, "written": written[0]}))
    """
)


@pytest.mark.parametrize("exit_mode", ["_exit", "exit"])
def test_fork_with_a_writer_thread_never_hangs_the_child(tmp_path: Path, exit_mode: str) -> None:
    path = tmp_path / "fork.db"
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(path), str(FORKS), exit_mode],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["hung"] == 0, f"{result['hung']} of {FORKS} children hung: {result}"
    assert result["failed"] == [], result
    assert result["present"] == list(range(FORKS)), result
    assert result["written"] > 0


_PARENT_CLOSES_FIRST = textwrap.dedent(
    r"""
    import os, sqlite3, sys, time
    from cyllama_db import CyllamaDB

    path = sys.argv[1]
    db = CyllamaDB(path)
    db.set_config("parent", 1)
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            db.set_config("child-early", 1)
            os.read(go_r, 1)  # the parent has closed its database by now
            for i in range(50):
                db.set_config(f"child-late-{i}", i)
            code = 0
        finally:
            os._exit(code)  # no close(): what is committed must already be safe
    time.sleep(0.3)
    db.close()  # the parent's last connection: SQLite checkpoints and may delete the WAL
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT COUNT(*) FROM config WHERE key LIKE 'child-%'").fetchone()[0]
    print(os.waitstatus_to_exitcode(status), rows)
    """
)


def test_a_child_keeps_its_writes_when_the_parent_closes_first(tmp_path: Path) -> None:
    # A child that kept the inherited connections open shared SQLite's record
    # of the parent's file locks and so held no lock of its own: the parent's
    # close deleted the WAL it was still writing to, and its commits vanished.
    proc = subprocess.run(
        [sys.executable, "-c", _PARENT_CLOSES_FIRST, str(tmp_path / "f.db")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["0", "51"], proc.stdout


_FORK_IN_A_TRANSACTION = textwrap.dedent(
    r"""
    import os, signal, sys, threading, time
    import cyllama_db.db.pool as pool_module
    from cyllama_db import CyllamaDB, DatabaseBusyError

    pool_module.FORK_WAIT_SECONDS = 0.2  # the holder below outlasts it on purpose
    db = CyllamaDB(sys.argv[1], busy_timeout=1)
    inside, release = threading.Event(), threading.Event()

    def holder():
        with db.pool.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
            conn.execute("INSERT INTO scratch VALUES (1)")
            inside.set()
            release.wait()

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    if not inside.wait(10):
        sys.exit("the holder thread never got inside its transaction")
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                db.set_config("child", 1)
                code = 2  # the lock the parent's thread held cannot be free here
            except DatabaseBusyError:
                code = 0
        finally:
            os._exit(code)
    waited = time.monotonic() - started
    release.set()
    thread.join()
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print(os.waitstatus_to_exitcode(status), round(waited, 2))
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            print("hung")
            break
        time.sleep(0.01)
    db.close()
    """
)


def test_fork_inside_another_threads_transaction_fails_fast_in_the_child(tmp_path: Path) -> None:
    # fork() waits FORK_WAIT_SECONDS for the other thread; it does not end its
    # transaction, so the child inherits a held write lock it can never get:
    # a DatabaseBusyError after the busy timeout, never a hang.
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_IN_A_TRANSACTION, str(tmp_path / "f.db")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, waited = proc.stdout.split()
    assert code == "0", proc.stdout
    assert 0.15 <= float(waited) < 5, "fork() waits for the other thread, but not forever"
