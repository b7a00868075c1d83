"""A throwaway PostgreSQL server for the tests, CI and benchmarks.

    server = pgserver.start(base_dir)   # initdb + pg_ctl start on a free loopback port
    server.url                          # postgresql://postgres@127.0.0.1:PORT/cyllama
    server.create_database("test_1")    # a fresh database; returns its URL
    server.stop()                       # pg_ctl stop -m fast, then the directory is removed

The binaries come from ``pg_config --bindir`` (Debian's ``postgresql-15``
package puts them in /usr/lib/postgresql/15/bin), else the newest
/usr/lib/postgresql/*/bin, else ``initdb`` on PATH. The cluster is made
with trust authentication for the user ``postgres``, listens on 127.0.0.1
only (its Unix socket lives in its own directory), and runs with
``fsync=off``: it is for tests, its data is thrown away. As root the
cluster runs as the ``postgres`` OS user (PostgreSQL refuses to run as
root). ``python tests/pgserver.py`` starts one, prints its URL and waits
for Ctrl-C.

No driver is needed to start or stop it; :meth:`Server.create_database`
uses psycopg when it is installed, else ``psql``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NoServerBinaries", "Server", "ServerStartError", "external", "find_bindir", "start"]

DATABASE = "cyllama"
STARTUP_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; ".s.PGSQL.NNNNN" goes after the folder


class NoServerBinaries(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine: tests that need one skip."""


class ServerStartError(RuntimeError):
    """The binaries exist but the server did not start; the message holds the server's log."""


def find_bindir() -> str | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None if there is none."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(out)

    def version(path: str) -> tuple[int, ...]:
        parts = Path(path).parent.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for folder in candidates:
        if all(os.access(os.path.join(folder, exe), os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _others_can_enter(path: Path) -> bool:
    """Whether another user (``postgres``) can reach ``path``: every folder above it is o+x."""
    for folder in [path, *path.parents]:
        try:
            mode = folder.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


@dataclass
class Server:
    """A running PostgreSQL cluster (or an external one, :func:`external`)."""

    host: str
    port: int
    user: str = "postgres"
    database: str = DATABASE
    password: str | None = None
    #: The database :meth:`admin` connects to (CREATE/DROP DATABASE run from there).
    admin_database: str = "postgres"
    #: The cluster's folder (data, socket, log); None for an external server.
    root: Path | None = None
    bindir: str | None = None
    #: Seconds initdb and pg_ctl start took together.
    startup_s: float = 0.0
    run_as: list[str] = field(default_factory=list)
    #: The ``pg_ctl -o`` options it was started with (for :meth:`resume`).
    options: str = ""
    _stopped: bool = False

    @property
    def url(self) -> str:
        """The URL of the server's main database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The URL of ``database`` on this server."""
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    @property
    def log_path(self) -> Path | None:
        return None if self.root is None else self.root / "server.log"

    def log(self) -> str:
        """The server's log so far ("" for an external server)."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return path.read_text(encoding="utf-8", errors="replace")

    @property
    def running(self) -> bool:
        return not self._stopped

    def admin(self, sql: str) -> None:
        """Run one statement (CREATE/DROP DATABASE...) in autocommit on :attr:`admin_database`."""
        try:
            import psycopg
        except ImportError:
            psql = os.path.join(self.bindir or "", "psql") if self.bindir else shutil.which("psql")
            if not psql or not os.access(psql, os.X_OK):
                raise RuntimeError("neither psycopg nor psql is available to talk to the server") from None
            env = dict(os.environ)
            if self.password is not None:
                env["PGPASSWORD"] = self.password
            subprocess.run(
                [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port),
                 "-U", self.user, "-d", self.admin_database, "-c", sql],
                check=True, capture_output=True, timeout=60, env=env,
            )
            return
        with psycopg.connect(self.url_for(self.admin_database), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # a test-only statement

    def create_database(self, name: str) -> str:
        """Create the empty database ``name``; returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        self.admin(f"CREATE DATABASE {name}")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` (closing its connections first); missing is fine."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _cmd(self, *argv: str) -> list[str]:
        if not self.run_as:
            return list(argv)
        if self.run_as[0] == "su":
            return ["su", self.run_as[1], "-s", "/bin/sh", "-c", shlex.join(argv)]
        return [*self.run_as, *argv]

    def _pg_ctl(self, action: str, *args: str) -> None:
        if self.root is None or self.bindir is None:
            raise RuntimeError("an external server is not ours to stop or start")
        _run(
            self._cmd(os.path.join(self.bindir, "pg_ctl"), "-D", str(self.root / "data"), action, *args),
            f"pg_ctl {action}", self.log_path,
        )

    def pause(self) -> None:
        """Stop the server (``-m fast``: clients are disconnected) but keep its data, for :meth:`resume`."""
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", "30")

    def resume(self) -> None:
        """Start a paused server again, on the same port, with the same data."""
        self._pg_ctl("start", "-l", str(self.log_path), "-w", "-t", str(STARTUP_TIMEOUT), "-o", self.options)

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and remove its folder; idempotent.

        An external server (:func:`external`) is left running.
        """
        if self._stopped:
            return
        self._stopped = True
        if self.root is None or self.bindir is None:
            return
        data = str(self.root / "data")
        pg_ctl = os.path.join(self.bindir, "pg_ctl")
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            proc = subprocess.run(
                self._cmd(pg_ctl, "-D", data, "stop", "-m", "fast", "-w", "-t", "30"),
                capture_output=True, text=True, timeout=60,
            )
            if proc.returncode != 0 and os.path.exists(os.path.join(data, "postmaster.pid")):
                subprocess.run(
                    self._cmd(pg_ctl, "-D", data, "stop", "-m", "immediate", "-w", "-t", "30"),
                    capture_output=True, text=True, timeout=60,
                )
        shutil.rmtree(self.root, ignore_errors=True)


def external(url: str) -> Server:
    """A :class:`Server` for an existing server's URL (``$CYLLAMA_TEST_PG_URL``): never started or stopped."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// URL: {parts.scheme}://...")
    database = unquote(parts.path.lstrip("/")) or "postgres"
    return Server(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password) if parts.password is not None else None,
        database=database,
        admin_database=database,
    )


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        server_log = log.read_text(errors="replace") if log is not None and log.exists() else ""
        raise ServerStartError(
            f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\nserver log:\n{server_log}"
        )


def start(base_dir: str | os.PathLike[str] | None = None, database: str = DATABASE) -> Server:
    """Make and start a throwaway cluster under ``base_dir`` (a temp folder if None).

    Raises :class:`NoServerBinaries` when the machine has no server, and
    :class:`ServerStartError` (with the commands' output and the server's
    log) when it has one that does not start.
    """
    bindir = find_bindir()
    if bindir is None:
        raise NoServerBinaries(
            "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package "
            "(or put pg_config on PATH), or set CYLLAMA_TEST_PG_URL to an existing server"
        )
    began = time.perf_counter()
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    run_as: list[str] = []
    parent: str | None = os.fspath(base_dir) if base_dir is not None else None
    if as_root:
        # PostgreSQL refuses to run as root: the cluster belongs to the postgres user,
        # who must be able to reach its folder (pytest's own tmp folders are 0700 root).
        if shutil.which("runuser"):
            run_as = ["runuser", "-u", "postgres", "--"]
        elif shutil.which("su"):
            run_as = ["su", "postgres"]
        else:
            raise ServerStartError("running as root, and neither runuser nor su exists to become postgres")
        if parent is not None and not _others_can_enter(Path(parent)):
            parent = None
    root = Path(tempfile.mkdtemp(prefix="cyllama-pg-", dir=parent))
    if len(str(root / "s" / ".s.PGSQL.65535")) > _SOCKET_PATH_MAX:
        shutil.rmtree(root, ignore_errors=True)
        root = Path(tempfile.mkdtemp(prefix="cyllama-pg-"))
    data, sockets, log = root / "data", root / "s", root / "server.log"
    sockets.mkdir()
    log.touch()
    server = Server(host="127.0.0.1", port=0, database=database, root=root, bindir=bindir, run_as=run_as)
    try:
        if as_root:
            shutil.chown(root, "postgres")
            shutil.chown(sockets, "postgres")
            shutil.chown(log, "postgres")
            os.chmod(root, 0o700)
        _run(
            server._cmd(os.path.join(bindir, "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8", "--locale=C"),
            "initdb",
        )
        for attempt in range(3):  # the free port may be taken between the probe and the bind
            server.port = _free_port()
            options = " ".join([
                "-c listen_addresses=127.0.0.1", f"-p {server.port}",
                f"-c unix_socket_directories={sockets}", "-c fsync=off",
                "-c synchronous_commit=off", "-c full_page_writes=off", "-c max_connections=200",
            ])
            server.options = options
            try:
                server.resume()
                break
            except ServerStartError as exc:
                if attempt == 2 or "could not bind" not in str(exc):
                    raise
        server.create_database(database)
    except BaseException as exc:
        text = server.log()
        server.stop()
        if isinstance(exc, ServerStartError):
            raise
        if isinstance(exc, (OSError, subprocess.SubprocessError, RuntimeError)):
            raise ServerStartError(f"starting PostgreSQL failed: {exc}\nserver log:\n{text}") from exc
        raise
    server.startup_s = time.perf_counter() - began
    atexit.register(server.stop)  # a run that dies before its teardown leaves no server behind
    return server


if __name__ == "__main__":
    srv = start()
    print(srv.url, f"(started in {srv.startup_s:.2f} s; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
