"""Durations and dates as text ("7d", "90m", "2024-05-01") wherever a since/until/older_than is taken.

One parser (``_time.parse_when``) reads them for the API and the command line.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB, GenerationConfig
from cyllama_db._time import parse_when, time_arg, to_timestamp
from cyllama_db.cli import main
from cyllama_db.cli.args import duration

CONFIG = GenerationConfig(temperature=0.0, max_tokens=8)
NOW = 1_800_000_000.0  # a fixed "now" (2027-01-15)
HOUR = 3600.0
DAY = 86400.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("90m", timedelta(minutes=90)),
        (" 1h ", timedelta(hours=1)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
        ("3600", timedelta(hours=1)),
        ("1.5h", timedelta(minutes=90)),
        ("2024-05-01", datetime(2024, 5, 1)),
        ("2024-05-01T12:30", datetime(2024, 5, 1, 12, 30)),
        ("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
        ("2024-05-01 12:30:00+02:00", datetime(2024, 5, 1, 10, 30, tzinfo=timezone.utc)),
    ],
)
def test_parse_when(text: str, expected: timedelta | datetime) -> None:
    assert parse_when(text) == expected
    # The command line's type is the same function.
    assert duration(text) == expected


@pytest.mark.parametrize("text", ["", "z", "yesterday", "-5m", "7 days", "2024-13-01", "1e400h"])
def test_parse_when_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_when(text)
    with pytest.raises(Exception, match=r"not a duration|too long"):
        duration(text)


def test_to_timestamp_reads_text_relative_to_now() -> None:
    assert to_timestamp("7d", now=NOW) == NOW - 7 * DAY
    assert to_timestamp("2024-05-01T00:00:00Z") == datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp()
    assert time_arg("90m", "since", NOW) == NOW - 5400
    with pytest.raises(ValueError, match="since='soon' is not a usable time"):
        time_arg("soon", "since", NOW)
    with pytest.raises(TypeError, match="until must be a datetime, a timedelta, Unix seconds or text"):
        time_arg(b"1h", "until", NOW)


@pytest.fixture
def timeline(any_db: CyllamaDB) -> CyllamaDB:
    """Generations, logs, cache entries and metrics 2 h, 2 days and 10 days before NOW."""
    for age in (2 * HOUR, 2 * DAY, 10 * DAY):
        any_db.clock = lambda age=age: NOW - age  # type: ignore[method-assign]
        any_db.record_generation("m.gguf", {"text": "x", "stats": {"generated_tokens": 1}}, CONFIG)
        any_db.log("INFO", f"{age / HOUR:g} hours ago")
        any_db.cache_response(f"{age} prompt", "m.gguf", CONFIG, "answer", ttl=None)
    any_db.clock = lambda: NOW  # type: ignore[method-assign]
    return any_db


def test_stats_summary_and_history(timeline: CyllamaDB) -> None:
    assert timeline.get_stats_summary(since="7d")["total_generations"] == 2
    assert timeline.get_stats_summary(since="3h")["total_generations"] == 1
    assert timeline.get_stats_summary(until="1d")["total_generations"] == 2
    assert timeline.get_stats_summary(since="7d", until="1d")["total_generations"] == 1
    assert len(timeline.get_generation_history(since="7d")) == 2
    assert len(timeline.get_generation_history(until="3d")) == 1
    assert timeline.get_generation_history(since="1h") == []
    iso = datetime.fromtimestamp(NOW - 3 * DAY, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert timeline.get_stats_summary(since=iso)["total_generations"] == 2


def test_logs(timeline: CyllamaDB) -> None:
    assert [r["message"] for r in timeline.get_logs(since="1d")] == ["2 hours ago"]
    assert [r["message"] for r in timeline.get_logs(since="30d", until="1d")] == [
        "48 hours ago", "240 hours ago"
    ]
    assert timeline.prune_logs(older_than="7d") == 1
    assert len(timeline.get_logs()) == 2


def test_cache_invalidation_and_stats_pruning(timeline: CyllamaDB) -> None:
    assert timeline.invalidate_cache(older_than="7d") == 1
    assert timeline.invalidate_cache(older_than="1d") == 1
    assert timeline.get_cache_stats()["entries"] == 1
    assert timeline.prune_stats(older_than="1w") == 1
    assert timeline.get_stats_summary()["total_generations"] == 2
    timeline.stats_max_age = "90d"
    assert timeline.stats_max_age == timedelta(days=90)


def test_metrics_history() -> None:
    with CyllamaDB(":memory:", metrics_retention="30d") as db:
        for age in (3 * DAY, 90 * 60, 30):
            db.clock = lambda age=age: NOW - age  # type: ignore[method-assign]
            db.save_metrics({"cpu_usage": float(age)})
        db.clock = lambda: NOW  # type: ignore[method-assign]

        def ages(rows: list[dict]) -> list[float]:
            return [r["cpu_usage"] for r in rows]

        assert ages(db.get_metrics_history("1h")) == [30.0]
        assert ages(db.get_metrics_history(timedelta(hours=2))) == [5400.0, 30.0]
        assert ages(db.get_metrics_history("7d")) == [259200.0, 5400.0, 30.0]
        assert ages(db.get_metrics_history(since="2h")) == [5400.0, 30.0]
        assert ages(db.get_metrics_history(since="7d", until="1h")) == [259200.0, 5400.0]
        assert ages(db.get_metrics_history(91)) == [5400.0, 30.0]  # a number is still minutes
        with pytest.raises(TypeError, match="minutes"):
            db.get_metrics_history("90")  # text without a unit would be ambiguous


def test_cli_uses_the_same_parser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.db"
    with CyllamaDB(path) as db:
        db.record_generation("m.gguf", {"text": "x"}, CONFIG)
        db.log("INFO", "now")
        db.cache_response("p", "m.gguf", CONFIG, "r")
    base = ["--db", str(path)]
    assert main([*base, "stats", "--since", "2000-01-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_generations"] == 1
    assert main([*base, "stats", "--until", "2000-01-01T00:00Z", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_generations"] == 0
    assert main([*base, "history", "--since", "1h", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main([*base, "history", "--until", "1h", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main([*base, "logs", "--since", "90m", "--json"]) == 0
    assert [e["message"] for e in json.loads(capsys.readouterr().out)] == ["now"]
    assert main([*base, "cache", "invalidate", "--older-than", "2000-01-01"]) == 0
    assert "removed 0" in capsys.readouterr().out
    assert main([*base, "logs", "--since", "last tuesday"]) == 2
    assert "not a duration or a date" in capsys.readouterr().err
