"""A local web page showing what the database knows: ``cyllama-db dashboard``.

Standard library only (``http.server``), no build step and nothing fetched
from the internet: the page is one HTML document plus a small script and
style sheet shipped inside the package (``cyllama_db/dashboard/static``); the script
asks this server for JSON and draws the charts as inline SVG.

Routes (all ``GET``):

==================  ============================================================
``/``               the page
``/static/<file>``  ``dashboard.js`` / ``dashboard.css``
``/api/summary``    everything the page shows, in one document
``/api/info``       path, size, schema version, row counts
``/api/metrics``    metrics history (``?minutes=N``, default: the retention window)
``/api/stats``      the statistics summary (``?since=7d``), ``by_model`` as a list
``/api/cache``      cache entries, size, limit and hit rate
``/api/models``     registered models (secrets always redacted)
``/api/series``     tok/s, p50/p95 latency and generations over time per model
                    (``?range=10m|1h|24h|7d``)
``/api/recent``     the latest generations and warnings/errors (``?limit=N``)
``/metrics``        Prometheus text exposition (see :mod:`cyllama_db.prometheus`)
==================  ============================================================

It listens on 127.0.0.1 by default. It has no authentication: serve it on
another address only on a network you trust. While bound to loopback it
answers only requests whose ``Host`` is a loopback name, which stops other
web sites from reading it through DNS rebinding.

Use it from Python::

    server = make_server(db, port=0)          # 0: any free port
    print(server.url)
    server.serve_forever()
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any

from .._time import parse_duration
from ..stores.metrics import MAX_HISTORY_MINUTES, METRICS_FIELDS, PROCESS_FIELDS

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = ["DashboardServer", "dashboard_data", "is_loopback", "make_server"]

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


_MODEL_FIELDS = (
    "id",
    "name",
    "type",
    "status",
    "model_path",
    "architecture",
    "quantization",
    "size_label",
    "parameter_count",
    "context_length",
    "ctx_size",
    "size_bytes",
    "last_used_at",
    "updated_at",
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


def _error_text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _section(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one data provider; a failing store yields an error note, not a broken page."""
    try:
        return {"available": True, **fn()}
    except _Unavailable:
        return {"available": False}
    except Exception as exc:  # one store's failure must not blank the whole page
        logger.warning("dashboard data failed: %s", exc, exc_info=True)
        return {"available": False, "error": _error_text(exc)}


class _Unavailable(Exception):
    """The store behind a section does not exist in this cyllama-db."""


def _method(db: Any, name: str) -> Callable[..., Any]:
    fn = getattr(db, name, None)
    if not callable(fn):
        raise _Unavailable(name)
    return fn


# -- data ----------------------------------------------------------------------------------


def _info(db: CyllamaDB) -> dict[str, Any]:
    import os

    stats = db.get_db_stats()
    if db.is_memory:
        file_bytes = db.get_database_size()
    else:
        file_bytes = sum(os.path.getsize(p) for p in (db.path, db.path + "-wal") if os.path.exists(p))
    counts = {
        k: v for k, v in stats.items()
        if isinstance(v, int) and not isinstance(v, bool) and k != "schema_version"
    }
    return {
        "path": db.path,
        "file_bytes": file_bytes,
        "schema_version": stats.get("schema_version"),
        "counts": counts,
    }


def _window_minutes(db: CyllamaDB) -> float:
    return max(db.settings.metrics_retention.total_seconds() / 60.0, 1 / 60)


def _metrics(db: CyllamaDB, minutes: float | None = None) -> dict[str, Any]:
    history = _method(db, "get_metrics_history")
    window = _window_minutes(db) if minutes is None else minutes
    rows = []
    for row in history(minutes=window):
        compact = {"t": row.get("timestamp_ms")}
        if compact["t"] is None and row.get("timestamp") is not None:
            compact["t"] = int(row["timestamp"].timestamp() * 1000)
        compact.update({k: row.get(k) for k in METRICS_FIELDS + PROCESS_FIELDS})
        rows.append(compact)
    return {"window_minutes": window, "rows": rows}


def _stats(db: CyllamaDB, since: Any = None) -> dict[str, Any]:
    summary = dict(_method(db, "get_stats_summary")(since=since))
    by_model = summary.pop("by_model", {}) or {}
    summary["by_model"] = [
        {"model_path": path, **figures}
        for path, figures in sorted(
            by_model.items(), key=lambda item: -(item[1].get("generations") or 0)
        )
    ]
    return summary


def _cache(db: CyllamaDB) -> dict[str, Any]:
    get_stats = getattr(db, "get_cache_stats", None)
    if callable(get_stats):
        data = dict(get_stats())
    elif callable(getattr(db, "get_cached_response", None)):
        counts = db.get_db_stats()
        data = {"entries": counts.get("cache_entries")}
    else:
        raise _Unavailable("cache")
    data.setdefault("max_size_bytes", int(db.settings.max_cache_size_mb * 1_048_576))
    if data.get("hit_rate") is None and callable(getattr(db, "get_stats_summary", None)):
        data["hit_rate"] = db.get_stats_summary().get("cache_hit_rate")
    return data


def _models(db: CyllamaDB) -> dict[str, Any]:
    from ..stores.params import redact

    rows = []
    for model in _method(db, "get_models")():
        shown = redact(dict(model))  # secrets never leave the process through the dashboard
        rows.append({k: shown.get(k) for k in _MODEL_FIELDS})
    return {"rows": rows}


#: The time ranges of the page's picker: (seconds, step of a chart point in seconds).
#: Steps under 15 minutes read raw rows; the longer ones read the stats rollup.
RANGES: dict[str, tuple[int, int]] = {
    "10m": (600, 15),
    "1h": (3600, 60),
    "24h": (86_400, 900),
    "7d": (604_800, 3600),
}
DEFAULT_RANGE = "1h"

_LOAD_MESSAGE = re.compile(r"^loaded model (?P<path>.+) in (?P<ms>\d+(?:\.\d+)?) ms$")


def _series(db: CyllamaDB, range_key: str = DEFAULT_RANGE) -> dict[str, Any]:
    """tok/s, p50/p95 latency and generations over ``range_key``, per model and overall (ms times)."""
    seconds, step = RANGES[range_key]
    data = _method(db, "get_stats_series")(timedelta(seconds=seconds), step)
    window = _stats(db, since=timedelta(seconds=seconds))

    def points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**{k: v for k, v in r.items() if k != "t"}, "t": int(r["t"] * 1000)} for r in rows]

    return {
        "range": range_key,
        "range_seconds": seconds,
        "step_seconds": data["step_seconds"],
        "exact": data["exact"],
        "models": [
            {"model_path": m["model_path"], "model_name": m["model_name"], "points": points(m["points"])}
            for m in data["models"]
        ],
        "overall": points(data["overall"]),
        "window": {k: window.get(k) for k in (
            "total_generations", "total_tokens", "cache_hit_rate", "tokens_per_second", "by_model")},
    }


def _recent(db: CyllamaDB, limit: int = 20) -> dict[str, Any]:
    """The latest generations, warnings/errors and model loads (from the logs store)."""
    generations = []
    for row in _method(db, "get_generation_history")(limit=limit):
        generations.append({
            "created_at": row["created_at"],
            "model_path": row["model_path"],
            "model_name": row["model_name"],
            "prompt_tokens": row["prompt_tokens"],
            "generated_tokens": row["generated_tokens"],
            "tokens_per_second": row["tokens_per_second"],
            "cache_hit": row["cache_hit"],
            "total_time_ms": row["total_time_ms"],
            "finish_reason": row["finish_reason"],
        })
    logs: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    get_logs = getattr(db, "get_logs", None)
    if callable(get_logs):
        for row in get_logs(level="WARNING", limit=limit):
            logs.append({k: row.get(k) for k in (
                "created_at", "level", "category", "message", "error_type", "model_path")})
        # Model loading is not part of any generation's latency: its own figure.
        for row in get_logs(category="cyllama_db.llm.inference", limit=200):
            match = _LOAD_MESSAGE.match(str(row.get("message") or ""))
            if match and len(loads) < limit:
                loads.append({"created_at": row["created_at"], "model_path": match["path"],
                              "load_ms": float(match["ms"])})
    return {"generations": generations, "logs": logs, "model_loads": loads}


def dashboard_data(db: CyllamaDB, range_key: str = DEFAULT_RANGE) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (``/api/summary?range=1h``)."""
    from ..cli.format import plain

    if range_key not in RANGES:
        raise ValueError(f"range must be one of {', '.join(RANGES)}, got {range_key!r}")
    return plain(
        {
            "generated_at_ms": int(db.clock() * 1000),
            "database": _section(lambda: _info(db)),
            "metrics": _section(lambda: _metrics(db)),
            "stats": _section(lambda: _stats(db)),
            "series": _section(lambda: _series(db, range_key)),
            "recent": _section(lambda: _recent(db)),
            "cache": _section(lambda: _cache(db)),
            "models": _section(lambda: _models(db)),
        }
    )


# -- the server ----------------------------------------------------------------------------


class DashboardServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one database; ``url`` is where it listens."""

    daemon_threads = True
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

    def _json(self, data: Any, status: int = HTTPStatus.OK) -> None:
        from ..cli.format import plain

        body = json.dumps(plain(data), ensure_ascii=False, allow_nan=False).encode("utf-8")
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
                self._json(dashboard_data(db, _range(query)))
            elif route == "/api/series":
                range_key = _range(query)
                self._json(_section(lambda: _series(db, range_key)))
            elif route == "/api/recent":
                limit = _limit(query)
                self._json(_section(lambda: _recent(db, limit)))
            elif route == "/api/info":
                self._json(_info(db))
            elif route == "/api/metrics":
                minutes = _minutes(query)
                self._json(_section(lambda: _metrics(db, minutes)))
            elif route == "/api/stats":
                since = _since(query)
                self._json(_section(lambda: _stats(db, since)))
            elif route == "/api/cache":
                self._json(_section(lambda: _cache(db)))
            elif route == "/api/models":
                self._json(_section(lambda: _models(db)))
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
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, _error_text(exc))
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
        return DEFAULT_RANGE
    if raw not in RANGES:
        raise _BadRequest(f"range must be one of {', '.join(RANGES)}, got {raw[:40]!r}")
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
