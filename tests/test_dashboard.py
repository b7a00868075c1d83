"""The dashboard: its HTTP endpoints, and the page rendered by a real headless Chromium."""

from __future__ import annotations

import html.parser
import json
import logging
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import CyllamaDB
from cyllama_db.dashboard import DashboardServer, dashboard_data, is_loopback, make_server

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SECRET = "sk-do-not-leak-1234"
MODELS = {
    "/models/llama-3-8b.Q4_K_M.gguf": (8, 40.0),
    "/models/gemma-3-270m.gguf": (5, 120.0),
}


def _fill(db: CyllamaDB, samples: int = 60) -> None:
    """Known metrics over the last ~9 minutes, generations for two models, three registry models."""
    now = time.time()
    for i in range(samples):
        db.save_metrics(
            {
                "timestamp": int((now - 540 + i * 540 / samples) * 1000),
                "cpu_usage": 40 + 30 * math.sin(i / 6),
                "memory_usage": 50 + i * 0.2,
                "disk_usage": 30.0,
                "gpu_usage": 60 + 20 * math.cos(i / 5),
                "gpu_temperature": 60.0,
                "active_models": 1,
                "requests_per_minute": float(i % 12),
                "process_rss_bytes": (300 + i) * 1024 * 1024,
                "process_cpu_usage": 90.0 + i,
                "process_pid": 4242,
            }
        )
    # Generations spread over the last 50 minutes (the default range is an hour).
    real_clock = db.clock
    for path, (count, tps) in MODELS.items():
        for k in range(count):
            hit = k % 4 == 0
            db.clock = lambda k=k, path=path: now - 3000 + k * 360 + len(path)  # type: ignore[method-assign]
            db.record_generation(
                path,
                {"finish_reason": "stop", "stats": {"prompt_tokens": 10, "generated_tokens": 32,
                                                    "generation_time_ms": 0.0 if hit else 32_000 / tps,
                                                    "total_time_ms": 2.0 if hit else 32_000 / tps + 50,
                                                    "tokens_per_second": None if hit else tps}},
                {"temperature": 0.7, "max_tokens": 32},
                cache_hit=hit,
            )
    db.clock = real_clock  # type: ignore[method-assign]
    db.log("WARNING", "disk almost full", category="myapp")
    db.log("ERROR", "generation failed: context overflow", category="cyllama_db.inference")
    db.log("INFO", "loaded model /models/gemma-3-270m.gguf in 1234 ms", category="cyllama_db.inference")
    for i in range(4):
        db.cache_response(f"prompt {i}", "/models/llama-3-8b.Q4_K_M.gguf", None, "answer " * 50)
    for _ in range(3):
        db.get_cached_response("prompt 0", "/models/llama-3-8b.Q4_K_M.gguf", None)
    db.save_model("llama-3-8b", type="llama", status="running",
                  model_path="/models/llama-3-8b.Q4_K_M.gguf", ctx_size=8192, api_key=SECRET)
    db.save_model("gemma-3-270m", type="gemma3", status="stopped", model_path="/models/gemma-3-270m.gguf")
    db.save_model("qwen-7b", type="qwen2", status="error", model_path="/models/qwen.gguf")


@pytest.fixture
def server(file_db: CyllamaDB) -> Iterator[DashboardServer]:
    _fill(file_db)
    srv = make_server(file_db, "127.0.0.1", 0, refresh_seconds=2)
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _json(url: str) -> Any:
    status, headers, body = _get(url)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body)


# -- HTTP ------------------------------------------------------------------------------------


def test_page_and_static_files_are_self_contained(server: DashboardServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/"
    status, headers, body = _get(server.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert '<script src="static/dashboard.js">' in page
    assert 'href="static/dashboard.css"' in page
    # Nothing from the network: every src/href is relative to this server.
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert not re.match(r"[a-z]+:|//", ref), ref
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"

    status, headers, js = _get(server.url + "static/dashboard.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"api/summary" in js and not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", js)
    status, headers, css = _get(server.url + "static/dashboard.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    assert b"@import" not in css and b"url(" not in css
    for bad in ("static/../cli.py", "static/%2e%2e/cli.py", "static/nope.js"):
        assert _get(server.url + bad)[0] == 404


def test_summary_endpoint(server: DashboardServer, file_db: CyllamaDB) -> None:
    data = _json(server.url + "api/summary")
    assert data["database"]["path"] == file_db.path
    assert data["database"]["counts"]["metrics_samples"] == 60
    metrics = data["metrics"]
    assert metrics["available"] and metrics["window_minutes"] == 10
    assert len(metrics["rows"]) == 60
    ts = [r["t"] for r in metrics["rows"]]
    assert ts == sorted(ts) and ts[-1] <= data["generated_at_ms"]
    assert metrics["rows"][0]["memory_usage"] == pytest.approx(50.0)

    stats = data["stats"]
    assert stats["total_generations"] == 13
    by_model = {m["model_path"]: m for m in stats["by_model"]}
    assert set(by_model) == set(MODELS)
    assert by_model["/models/llama-3-8b.Q4_K_M.gguf"]["generations"] == 8
    assert by_model["/models/llama-3-8b.Q4_K_M.gguf"]["cache_hit_rate"] == pytest.approx(2 / 8)
    assert stats["by_model"][0]["model_path"] == "/models/llama-3-8b.Q4_K_M.gguf"  # busiest first

    models = {m["name"]: m for m in data["models"]["rows"]}
    assert {n: m["status"] for n, m in models.items()} == {
        "llama-3-8b": "running", "gemma-3-270m": "stopped", "qwen-7b": "error",
    }
    assert models["llama-3-8b"]["ctx_size"] == 8192
    cache = data["cache"]
    assert cache["available"] and (cache["entries"], cache["hits"]) == (4, 3)
    assert cache["size_bytes"] > 4 * 350 and cache["max_size_bytes"] == 100 * 1_048_576
    assert cache["hit_rate"] == pytest.approx(stats["cache_hits"] / 13)


def test_secrets_never_reach_the_dashboard(server: DashboardServer) -> None:
    for route in ("api/summary", "api/models", ""):
        assert SECRET.encode() not in _get(server.url + route)[2]


def test_data_endpoints(server: DashboardServer) -> None:
    info = _json(server.url + "api/info")
    assert info["schema_version"] >= 6 and info["file_bytes"] > 0
    recent = _json(server.url + "api/metrics?minutes=2")
    assert recent["window_minutes"] == 2
    assert 0 < len(recent["rows"]) < 60
    assert all(set(r) >= {"t", "cpu_usage", "gpu_usage", "requests_per_minute"} for r in recent["rows"])
    stats = _json(server.url + "api/stats?since=1h")
    assert stats["total_generations"] == 13
    assert _json(server.url + "api/models")["rows"][0]["name"] == "llama-3-8b"
    assert _json(server.url + "api/cache")["entries"] == 4


def test_bad_requests(server: DashboardServer) -> None:
    status, _, body = _get(server.url + "api/metrics?minutes=abc")
    assert status == 400 and "minutes" in json.loads(body)["error"]
    status, _, body = _get(server.url + "api/stats?since=soon")
    assert status == 400
    status, _, body = _get(server.url + "api/nothing")
    assert status == 404 and json.loads(body)["error"].startswith("no such page")
    assert _get(server.url, method="HEAD")[0] == 200


@pytest.mark.parametrize(
    "query",
    [
        "api/metrics?minutes=1e300",  # used to log a WARNING traceback per request
        "api/metrics?minutes=inf",
        "api/metrics?minutes=nan",
        "api/metrics?minutes=-1",
        "api/metrics?minutes=0",
        "api/stats?since=999999999999999d",  # used to be a 500 with a traceback
        "api/stats?since=" + "9" * 400,
        "api/stats?since=-5m",
    ],
)
def test_absurd_query_values_are_400_without_a_logged_traceback(
    server: DashboardServer, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="cyllama_db")
    status, headers, body = _get(server.url + query)
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/json")
    name = "minutes" if "minutes" in query else "since"
    assert name in json.loads(body)["error"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records)


def test_long_but_sane_windows_are_served(server: DashboardServer) -> None:
    assert len(_json(server.url + "api/metrics?minutes=525960000")["rows"]) == 60
    assert _json(server.url + "api/stats?since=365250d")["total_generations"] == 13


def test_foreign_host_header_is_refused_on_loopback(server: DashboardServer) -> None:
    """A page on another site resolving its name to 127.0.0.1 (DNS rebinding) gets nothing."""
    status, _, body = _get(server.url + "api/summary", headers={"Host": "evil.example:8765"})
    assert status == 403 and b"localhost" in body
    assert _get(server.url + "api/info", headers={"Host": f"localhost:{server.port}"})[0] == 200
    assert _get(server.url + "api/info", headers={"Host": f"[::1]:{server.port}"})[0] == 200


def test_a_failing_store_does_not_break_the_page(
    file_db: CyllamaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(file_db, samples=3)

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("stats exploded")

    monkeypatch.setattr(file_db, "get_stats_summary", broken)
    data = dashboard_data(file_db)
    assert data["stats"] == {"available": False, "error": "stats exploded"}
    assert data["metrics"]["available"] and len(data["metrics"]["rows"]) == 3
    assert data["models"]["available"]


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        assert not is_loopback(host), host


def test_dashboard_command_serves_until_ctrl_c(db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        _fill(db, samples=5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyllama_db", "--db", str(db_path), "dashboard", "--port", "0",
         "--no-sampler"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert match, line
        info = _json(match.group(1) + "api/info")
        assert info["path"] == str(db_path)
        proc.send_signal(signal.SIGTERM)  # a service manager stopping it: clean exit too
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


def test_dashboard_command_samples_metrics(db_path: Path) -> None:
    pytest.importorskip("psutil")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyllama_db", "--db", str(db_path), "dashboard", "--port", "0",
         "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = re.search(r"(http://\S+/)", proc.stdout.readline())
        assert url
        deadline = time.monotonic() + 30
        rows: list[Any] = []
        while len(rows) < 2 and time.monotonic() < deadline:
            rows = _json(url.group(1) + "api/metrics")["rows"]
            time.sleep(0.1)
        assert len(rows) >= 2 and rows[-1]["cpu_usage"] is not None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# -- a real browser --------------------------------------------------------------------------


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    reason = (
        "Chromium is not installed and could not be installed here; "
        "scripts/test.sh installs Debian's `chromium` package (apt-get install -y chromium)"
    )
    print(f"SKIPPED browser test: {reason}")
    pytest.skip(reason)


def _chromium_args(binary: str, profile: Path) -> list[str]:
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        # Let the page's requests and script run before the DOM/screenshot is taken.
        "--virtual-time-budget=8000",
    ]


class _DomIndex(html.parser.HTMLParser):
    """Collects every element's tag and attributes, and the text inside <td>/<span>."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = (tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())

    def svg_paths(self) -> dict[str, dict[str, str]]:
        """``{metric: attributes of its path.series}``, in document order."""
        out: dict[str, dict[str, str]] = {}
        metric = None
        for tag, attrs in self.elements:
            if tag == "svg" and "data-metric" in attrs:
                metric = attrs["data-metric"]
            elif tag == "path" and attrs.get("class") == "series" and metric:
                out[metric] = attrs
        return out


def _png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and number of distinct row-bytes (a blank page has very few)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    chunks, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            chunks.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    return width, height, len(set(raw[i:i + 64] for i in range(0, len(raw), 4096)))


@pytest.mark.slow
def test_headless_chromium_renders_the_charts(server: DashboardServer, tmp_path: Path) -> None:
    binary = _chromium()
    profile = tmp_path / "profile"
    profile.mkdir()
    dom = subprocess.run(
        [*_chromium_args(binary, profile), "--dump-dom", server.url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _DomIndex()
    parsed.feed(dom.stdout)
    body = next(attrs for tag, attrs in parsed.elements if tag == "body")
    assert body.get("data-loaded") == "1", f"the page never rendered its data: {body}"
    assert "data-error" not in body

    paths = parsed.svg_paths()
    assert set(paths) == {"cpu_usage", "memory_usage", "gpu_usage", "requests_per_minute",
                          "process_cpu_usage", "process_rss_bytes"}
    for metric, attrs in paths.items():
        assert attrs["data-points"] == "60", (metric, attrs)
        # One move and 59 line segments through 60 points, all inside the chart.
        assert attrs["d"].count("M") == 1 and attrs["d"].count("L") == 59, metric
        xs = [float(x) for x in re.findall(r"[ML]([\d.]+),", attrs["d"])]
        assert xs == sorted(xs) and 40 <= xs[0] < xs[-1] <= 600
    memory_ys = [float(y) for y in re.findall(r",([\d.]+)", paths["memory_usage"]["d"])]
    assert memory_ys[0] > memory_ys[-1]  # memory rises 50% -> 62%: the line goes up the SVG

    text = " ".join(parsed.text)
    assert "llama-3-8b" in text and "gemma-3-270m" in text and "qwen-7b" in text
    badges = [attrs.get("class") for tag, attrs in parsed.elements if "badge" in attrs.get("class", "")]
    assert sorted(badges) == ["badge error", "badge running", "badge stopped"]
    tiles: dict[str, str] = {}
    for label, value in zip(parsed.text, parsed.text[1:], strict=False):
        tiles.setdefault(label, value)  # a tile's label comes first, its value next
    assert tiles["generations"] == "13" and tiles["entries"] == "4" and tiles["hits served"] == "3"
    # Weighted by tokens: 9 real generations, 288 tokens in 5.6 s (the mean of their speeds is 66.7).
    assert tiles["tokens/s"] == "51.4"
    assert SECRET not in dom.stdout

    _check_monitoring_panels(parsed, _json(server.url + "api/series?range=1h"))

    shot = tmp_path / "dashboard.png"
    run = subprocess.run(
        [*_chromium_args(binary, profile), "--window-size=1280,1400", f"--screenshot={shot}",
         server.url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    width, height, variety = _png_size_and_colours(shot)
    assert (width, height) == (1280, 1400)
    assert variety > 50, "the screenshot looks blank"
    target = os.environ.get("DASHBOARD_SCREENSHOT")
    if target:  # DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes the docs' picture
        shutil.copyfile(shot, target)


def _chart_series(parsed: _DomIndex, chart: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """``({series name: path attributes}, hover read-outs)`` of the chart ``data-chart=chart``."""
    series: dict[str, dict[str, str]] = {}
    titles: list[str] = []
    inside = False
    for tag, attrs in parsed.elements:
        if tag == "svg":
            inside = attrs.get("data-chart") == chart
        elif inside and tag == "path" and attrs.get("class") == "series":
            series[attrs["data-series"]] = attrs
        elif inside and tag == "rect" and attrs.get("class") == "hit":
            titles.append(attrs["data-t"])
    return series, titles


def _check_monitoring_panels(parsed: _DomIndex, series: dict[str, Any]) -> None:
    body = next(attrs for tag, attrs in parsed.elements if tag == "body")
    assert body["data-range"] == "1h"
    tps, moments = _chart_series(parsed, "tokens_per_second")
    assert set(tps) == {"llama-3-8b.Q4_K_M.gguf", "gemma-3-270m.gguf"}
    assert tps["llama-3-8b.Q4_K_M.gguf"]["data-points"] == "6"  # its 6 real generations (hits have no speed)
    assert tps["gemma-3-270m.gguf"]["data-points"] == "3"
    # Hover columns: one per minute with a real generation (a speed), at its time.
    assert sorted(int(t) for t in moments) == sorted(
        {p["t"] for m in series["models"] for p in m["points"] if p["tokens_per_second"] is not None})
    assert 5 <= len(moments) <= 9
    latency, _ = _chart_series(parsed, "latency")
    assert set(latency) == {f"{m} {q}" for m in ("llama-3-8b.Q4_K_M.gguf", "gemma-3-270m.gguf")
                            for q in ("p50", "p95")}
    assert latency["gemma-3-270m.gguf p95"]["stroke-dasharray"]
    text = " ".join(parsed.text)
    # Hover read-outs (each chart's columns carry a <title>), with the exact values.
    assert "llama-3-8b.Q4_K_M.gguf: 40 tok/s" in text
    assert "gemma-3-270m.gguf p50: 317 ms" in text  # 32000 / 120 + 50
    assert "Inference process memory (RSS): 359.0 MB" in text  # the latest sample's RSS
    hover_charts = [attrs for tag, attrs in parsed.elements if tag == "g" and attrs.get("class") == "hover"]
    assert len(hover_charts) == 8  # every chart: 2 generation charts and 6 metrics charts
    # Recent generations (newest first) and the warnings/errors panel.
    badges = [attrs.get("class") for tag, attrs in parsed.elements if attrs.get("class") in ("pill hit", "pill miss")]
    assert len(badges) == 13 and badges.count("pill hit") == 4
    assert "disk almost full" in text and "generation failed: context overflow" in text
    assert "loaded model" not in text  # INFO is not a warning...
    assert "model load 1.23 s (gemma-3-270m.gguf, not part of any latency)" in text  # ...but its own figure


@pytest.mark.slow
def test_the_range_picker_changes_the_query(server: DashboardServer, tmp_path: Path) -> None:
    binary = _chromium()
    profile = tmp_path / "profile"
    profile.mkdir()
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    dash_logger = logging.getLogger("cyllama_db.dashboard")
    dash_logger.addHandler(handler)
    old_level = dash_logger.level
    dash_logger.setLevel(logging.DEBUG)
    try:
        dom = subprocess.run(
            [*_chromium_args(binary, profile), "--dump-dom", server.url + "#range=24h"],
            capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        dash_logger.removeHandler(handler)
        dash_logger.setLevel(old_level)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _DomIndex()
    parsed.feed(dom.stdout)
    body = next(attrs for tag, attrs in parsed.elements if tag == "body")
    assert body.get("data-loaded") == "1" and body["data-range"] == "24h"
    assert any("/api/summary?range=24h" in line for line in seen), seen
    active = [attrs["data-range"] for tag, attrs in parsed.elements if tag == "a" and attrs.get("class") == "active"]
    assert active == ["24h"]
    note = next(t for t in parsed.text if "generations in the last" in t)
    assert note.startswith("13 generations in the last 24 hours, one point per 15 min")
    tps, _ = _chart_series(parsed, "tokens_per_second")
    # From the rollup: one 15-minute point per bucket holding real generations.
    assert 1 <= int(tps["llama-3-8b.Q4_K_M.gguf"]["data-points"]) <= 6


def test_series_and_recent_endpoints(server: DashboardServer) -> None:
    for key, step in (("10m", 15), ("1h", 60), ("24h", 900), ("7d", 3600)):
        data = _json(server.url + f"api/series?range={key}")
        assert data["range"] == key and data["step_seconds"] == step
    hour = _json(server.url + "api/series?range=1h")
    assert hour["exact"] and sum(p["generations"] for p in hour["overall"]) == 13
    gemma = next(m for m in hour["models"] if m["model_path"] == "/models/gemma-3-270m.gguf")
    assert {p["tokens_per_second"] for p in gemma["points"]} == {120.0, None}
    assert hour["window"]["tokens_per_second"] == pytest.approx(288 / 5.6)
    week = _json(server.url + "api/series?range=7d")
    assert not week["exact"] and sum(p["generations"] for p in week["overall"]) == 13
    recent = _json(server.url + "api/recent?limit=5")
    assert len(recent["generations"]) == 5 and recent["generations"][0]["created_at"] >= \
        recent["generations"][-1]["created_at"]
    assert [r["level"] for r in recent["logs"]] == ["ERROR", "WARNING"]
    assert recent["model_loads"][0]["load_ms"] == 1234
    for bad in ("api/series?range=2h", "api/summary?range=x", "api/recent?limit=0", "api/recent?limit=abc"):
        status, _, body = _get(server.url + bad)
        assert status == 400, (bad, body)


# -- stalled and vanishing clients ------------------------------------------------------------


def _raw_socket(port: int) -> Any:
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _reset(sock: Any) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashed or gave up does."""
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_half_sent_requests_time_out_and_free_their_threads(file_db: CyllamaDB) -> None:
    import threading

    srv = make_server(file_db, "127.0.0.1", 0, request_timeout=1.0)
    srv.start_background()
    base = threading.active_count()
    sockets = []
    try:
        for _ in range(30):
            sock = _raw_socket(srv.port)
            sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            sockets.append((time.monotonic(), sock))
        # ...a normal request is served meanwhile
        assert _json(srv.url + "api/info")["path"] == file_db.path
        for sent, sock in sockets:  # the server hangs up on each, after the timeout
            sock.settimeout(15)
            assert sock.recv(65536) == b""
            assert time.monotonic() - sent >= 0.9
        deadline = time.monotonic() + 10
        while threading.active_count() > base and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= base, "stalled clients still hold threads"
    finally:
        for _, sock in sockets:
            sock.close()
        srv.shutdown()
        srv.server_close()


def test_the_default_request_timeout_is_ten_seconds(file_db: CyllamaDB) -> None:
    srv = make_server(file_db, "127.0.0.1", 0)
    try:
        assert srv.request_timeout == 10.0
    finally:
        srv.server_close()
    with pytest.raises(ValueError, match="request_timeout"):
        make_server(file_db, "127.0.0.1", 0, request_timeout=0)


def test_clients_that_disconnect_early_leave_no_traceback(db_path: Path) -> None:
    with CyllamaDB(db_path) as db:
        _fill(db, samples=30)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyllama_db", "--db", str(db_path), "dashboard", "--port", "0", "--no-sampler"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())
        assert match
        port = int(match.group(1))
        for i in range(60):
            sock = _raw_socket(port)
            if i % 3 == 0:  # asks for the biggest answer and resets before reading it
                sock.sendall(b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            elif i % 3 == 1:  # resets halfway through its request
                sock.sendall(b"GET /api/summ")
            _reset(sock)
        # still serving
        assert _json(f"http://127.0.0.1:{port}/api/info")["path"] == str(db_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "ConnectionReset" not in stderr, stderr
