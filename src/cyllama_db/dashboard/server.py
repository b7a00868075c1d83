"""The dashboard's HTTP server: the page, its static files and the JSON routes (see the package docstring).

Standard library only (``http.server``). Each ``/api/...`` route answers
one section of :mod:`cyllama_db.dashboard.data`.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any

from .._time import parse_duration
from ..cli.format import plain
from ..stores.metrics import MAX_HISTORY_MINUTES
from . import data

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = ["REQUEST_TIMEOUT", "DashboardServer", "is_loopback", "make_server"]

logger = logging.getLogger("cyllama_db.dashboard")

#: Seconds a dashboard connection may stay silent (mid-request or idle between requests).
REQUEST_TIMEOUT = 10.0

_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

# Nothing but this server: the page must work offline and cannot leak data elsewhere.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cyllama-db dashboard</title>
<link rel="stylesheet" href="static/dashboard.css">
</head>
<body data-refresh="{refresh}">
<header>
  <h1>cyllama-db</h1>
  <span class="meta">database <code id="db-path">{path}</code></span>
  <span class="meta">size <span id="db-size">–</span></span>
  <span class="meta">schema <span id="db-schema">–</span></span>
  <nav id="range" aria-label="time range">
    <a href="#range=10m" data-range="10m">10 min</a><a href="#range=1h" data-range="1h">1 h</a><a
      href="#range=24h" data-range="24h">24 h</a><a href="#range=7d" data-range="7d">7 d</a>
  </nav>
  <span id="status">loading…</span>
</header>
<main>
  <div class="section-title"><h2>Generations</h2>
    <p class="note" id="series-window">tokens/s and latency per model</p>
    <p class="note" id="loads"></p></div>
  <div class="grid" id="gen-charts"><noscript><p class="note">The charts need JavaScript;
    the data is at <a href="api/summary">api/summary</a>.</p></noscript></div>
  <div class="grid wide-left">
    <section class="card"><h2>Generations per model</h2><div id="stats"></div></section>
    <section class="card"><h2>Response cache</h2><div id="cache"></div></section>
  </div>
  <div class="grid wide-left">
    <section class="card"><h2>Recent generations</h2><div id="recent"></div></section>
    <section class="card"><h2>Warnings and errors</h2><div id="logs"></div></section>
  </div>
  <div class="section-title"><h2>System metrics</h2>
    <p class="note" id="metrics-window">host and inference process</p></div>
  <div class="grid" id="charts"></div>
  <section class="card"><h2>Models <span class="value" id="models-count"></span></h2>
    <div id="models"></div></section>
</main>
<script src="static/dashboard.js"></script>
</body>
</html>
"""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to listen on) is this machine only."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# -- the server ----------------------------------------------------------------------------


class DashboardServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one database; ``url`` is where it listens."""

    # Handler threads are joined by server_close() (each is bounded by the
    # request timeout): the database closes right after, and closing a
    # connection under a thread still reading from it can crash SQLite.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(
        self,
        db: CyllamaDB,
        host: str,
        port: int,
        *,
        refresh_seconds: float = 5.0,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.db = db
        self.refresh_seconds = float(refresh_seconds)
        self.request_timeout = float(request_timeout)
        self.host = host
        self.loopback = is_loopback(host)
        # IPv6 literals need an AF_INET6 socket.
        if ":" in host.strip("[]"):
            import socket

            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.host.strip("[]")
        shown = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        return f"http://{shown}:{self.port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or stalled is routine: one DEBUG line, no traceback on stderr."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            logger.debug("dashboard client %s went away: %s", client_address, exc)
            return
        logger.warning("dashboard request from %s failed", client_address, exc_info=True)

    def start_background(self) -> threading.Thread:
        """Serve from a daemon thread (tests, notebooks); stop with ``shutdown()``."""
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="cyllama-dashboard", daemon=True
        )
        thread.start()
        return thread


def make_server(
    db: CyllamaDB | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    refresh_seconds: float = 5.0,
    request_timeout: float = REQUEST_TIMEOUT,
) -> DashboardServer:
    """A :class:`DashboardServer` for ``db`` (default: the global database), not yet serving.

    ``port=0`` picks a free port (see ``server.url``). Call ``serve_forever()``
    to serve, or ``start_background()`` to serve from a daemon thread.
    ``request_timeout`` (seconds, default 10) closes a connection that sends
    nothing for that long, half-sent requests and idle keep-alive ones alike,
    so stalled clients cannot pile up threads.
    """
    if not (request_timeout > 0):
        raise ValueError(f"request_timeout must be positive, got {request_timeout!r}")
    if db is None:
        from ..db.facade import get_db

        db = get_db()
    if not (refresh_seconds > 0):
        raise ValueError(f"refresh_seconds must be positive, got {refresh_seconds!r}")
    return DashboardServer(db, host, port, refresh_seconds=refresh_seconds, request_timeout=request_timeout)


def _allowed_host(header: str | None) -> bool:
    if not header:
        return True  # HTTP/1.0 clients send none; nothing to rebind
    host = header.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return is_loopback(host)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "cyllama-db-dashboard"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # The socket timeout applies to every read and write of this connection.
        self.connection.settimeout(self.server.request_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    # -- responses -------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = HTTPStatus.OK) -> None:
        body = json.dumps(plain(payload), ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    # -- routing ---------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.server.loopback and not _allowed_host(self.headers.get("Host")):
            self._error(HTTPStatus.FORBIDDEN, "this dashboard only answers requests for localhost")
            return
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        route = parsed.path.rstrip("/") or "/"
        db = self.server.db
        started = time.perf_counter()
        try:
            if route in ("/", "/index.html"):
                page = _PAGE.format(
                    refresh=f"{self.server.refresh_seconds:g}", path=html.escape(db.path)
                )
                self._send(HTTPStatus.OK, page.encode("utf-8"), "text/html; charset=utf-8")
            elif route.startswith("/static/"):
                self._static(route[len("/static/"):])
            elif route == "/api/summary":
                self._json(data.dashboard_data(db, _range(query)))
            elif route == "/api/series":
                range_key = _range(query)
                self._json(data.section(lambda: data.series(db, range_key)))
            elif route == "/api/recent":
                limit = _limit(query)
                self._json(data.section(lambda: data.recent(db, limit)))
            elif route == "/api/info":
                self._json(data.info(db))
            elif route == "/api/metrics":
                minutes = _minutes(query)
                self._json(data.section(lambda: data.metrics(db, minutes)))
            elif route == "/api/stats":
                since = _since(query)
                self._json(data.section(lambda: data.stats(db, since)))
            elif route == "/api/cache":
                self._json(data.section(lambda: data.cache(db)))
            elif route == "/api/models":
                self._json(data.section(lambda: data.models(db)))
            elif route == "/metrics":
                from ..prometheus import CONTENT_TYPE, prometheus_text

                self._send(HTTPStatus.OK, prometheus_text(db).encode("utf-8"), CONTENT_TYPE)
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such page: {parsed.path}")
        except _BadRequest as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except (ConnectionError, TimeoutError) as exc:  # the client went away mid-answer
            logger.debug("dashboard client left during %s: %s", self.path, exc)
            self.close_connection = True
        except Exception as exc:  # report, keep serving
            logger.warning("dashboard request %s failed: %s", self.path, exc, exc_info=True)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, data.error_text(exc))
        finally:
            logger.debug("%s served in %.1f ms", self.path, (time.perf_counter() - started) * 1000)

    def _static(self, name: str) -> None:
        content_type = _STATIC.get(name)
        if content_type is None:  # also rejects any path with '/' or '..'
            self._error(HTTPStatus.NOT_FOUND, f"no such file: {name}")
            return
        body = resources.files("cyllama_db").joinpath("dashboard").joinpath("static").joinpath(name).read_bytes()
        self._send(HTTPStatus.OK, body, content_type)


class _BadRequest(ValueError):
    pass


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _minutes(query: dict[str, list[str]]) -> float | None:
    raw = _one(query, "minutes")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _BadRequest(f"minutes must be a number, got {raw[:40]!r}") from None
    # Checked here, not left to get_metrics_history(): a bad value is the
    # client's mistake (400), not a failing store (a logged warning).
    if not 0 < value <= MAX_HISTORY_MINUTES:  # also rejects nan and inf
        raise _BadRequest(
            f"minutes must be a positive number up to {MAX_HISTORY_MINUTES}, got {raw[:40]!r}"
        )
    return value


def _range(query: dict[str, list[str]]) -> str:
    raw = _one(query, "range")
    if raw is None:
        return data.DEFAULT_RANGE
    if raw not in data.RANGES:
        raise _BadRequest(f"range must be one of {', '.join(data.RANGES)}, got {raw[:40]!r}")
    return raw


def _limit(query: dict[str, list[str]]) -> int:
    raw = _one(query, "limit")
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise _BadRequest(f"limit must be a whole number from 1 to 1000, got {raw[:40]!r}")
    return int(raw)


def _since(query: dict[str, list[str]]) -> Any:
    raw = _one(query, "since")
    if raw is None:
        return None
    try:
        return parse_duration(raw)
    except (ValueError, OverflowError) as exc:
        raise _BadRequest(f"since: {exc}") from None
