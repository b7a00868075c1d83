from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest

from cyllama_db import ConfigurationError, CyllamaDB, Settings
from cyllama_db._time import MAX_DURATION, parse_duration


def test_defaults_without_environment(tmp_path: Path) -> None:
    s = Settings.resolve(environ={})
    assert s.enabled is True
    assert s.cache_ttl == timedelta(days=7)
    assert s.max_cache_size_mb == 100.0
    assert s.log_level == "INFO"
    assert s.log_to_db is False
    assert s.metrics_retention == timedelta(minutes=10)
    assert s.path.endswith("cyllama/cyllama.db")


def test_default_path_is_under_user_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings.resolve().path == str(tmp_path / "xdg" / "cyllama" / "cyllama.db")


def test_environment_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYLLAMA_DB_PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("CYLLAMA_CACHE_TTL", "3600")
    monkeypatch.setenv("CYLLAMA_CACHE_MAX_SIZE_MB", "12.5")
    monkeypatch.setenv("CYLLAMA_LOG_LEVEL", "debug")
    monkeypatch.setenv("CYLLAMA_LOG_TO_DB", "1")
    monkeypatch.setenv("CYLLAMA_METRICS_RETENTION", "5m")
    s = Settings.resolve()
    assert s.path == str(tmp_path / "env.db")
    assert s.cache_ttl == timedelta(hours=1)
    assert s.max_cache_size_mb == 12.5
    assert s.log_level == "DEBUG"
    assert s.log_to_db is True
    assert s.metrics_retention == timedelta(minutes=5)


def test_argument_beats_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYLLAMA_DB_PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("CYLLAMA_CACHE_TTL", "3600")
    monkeypatch.setenv("CYLLAMA_DB_ENABLED", "0")
    s = Settings.resolve(path=tmp_path / "arg.db", cache_ttl=None, enabled=True)
    assert s.path == str(tmp_path / "arg.db")
    assert s.cache_ttl is None
    assert s.enabled is True


def test_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings.resolve(path="~/x/y.db").path == str(tmp_path / "x" / "y.db")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CYLLAMA_DB_ENABLED", "maybe"),
        ("CYLLAMA_CACHE_TTL", "soon"),
        ("CYLLAMA_CACHE_TTL", "-5"),
        ("CYLLAMA_CACHE_MAX_SIZE_MB", "big"),
        ("CYLLAMA_CACHE_MAX_SIZE_MB", "-1"),
        ("CYLLAMA_LOG_LEVEL", "LOUD"),
        ("CYLLAMA_LOG_TO_DB", "2"),
        ("CYLLAMA_METRICS_RETENTION", "10 parsecs"),
        ("CYLLAMA_DB_BUSY_TIMEOUT", "0"),
    ],
)
def test_malformed_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        Settings.resolve()
    # ConfigurationError is a ValueError, so generic handlers catch it too.
    with pytest.raises(ValueError):
        CyllamaDB(":memory:")


def test_ttl_none_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYLLAMA_CACHE_TTL", "never")
    assert Settings.resolve().cache_ttl is None


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="max_cache_size_mb"):
        Settings.resolve(max_cache_size_mb="lots")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="log_level"):
        Settings.resolve(log_level="chatty")
    with pytest.raises(ConfigurationError, match="path"):
        Settings.resolve(path=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="enabled"):
        Settings.resolve(enabled="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="log_to_db"):
        Settings.resolve(log_to_db="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must not be empty"):
        Settings.resolve(path="")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), ("2w", 1209600), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("7 days ago")


@pytest.mark.parametrize("value", ["none", "never", "0", "-5", "0s"])
def test_metrics_retention_must_be_a_positive_duration(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # 'none' used to mean 10 minutes silently: there is no "keep forever" for metrics.
    monkeypatch.setenv("CYLLAMA_METRICS_RETENTION", value)
    with pytest.raises(ConfigurationError, match=r"CYLLAMA_METRICS_RETENTION.*positive duration"):
        Settings.resolve()
    monkeypatch.delenv("CYLLAMA_METRICS_RETENTION")
    with pytest.raises(ConfigurationError, match=r"metrics_retention.*positive duration"):
        Settings.resolve(metrics_retention=value)
    with pytest.raises(ConfigurationError, match=r"metrics_retention.*positive duration"):
        Settings.resolve(metrics_retention=timedelta(0))


def test_cache_ttl_none_still_means_never(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYLLAMA_CACHE_TTL", "none")
    assert Settings.resolve().cache_ttl is None
    assert Settings.resolve(cache_ttl="none").cache_ttl is None


@pytest.mark.parametrize(
    "text", ["999999999999999d", "9" * 400, "365251d", math.inf, math.nan, 10**400, -1]
)
def test_parse_duration_rejects_absurd_values_with_value_error(text: object) -> None:
    # These used to escape as OverflowError (a traceback in the CLI, a 500 in the dashboard).
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)  # type: ignore[arg-type]


def test_parse_duration_accepts_up_to_about_1000_years() -> None:
    assert parse_duration("365250d") == MAX_DURATION == timedelta(days=365_250)


def test_absurd_durations_are_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYLLAMA_CACHE_TTL", "999999999999999d")
    with pytest.raises(ConfigurationError, match="CYLLAMA_CACHE_TTL"):
        Settings.resolve()


# -- readonly and fallback (issue 13) ------------------------------------------------------------


def test_fallback_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from cyllama_db.db.settings import Settings

    assert Settings.resolve(environ={}).fallback == "memory"
    assert Settings.resolve(environ={"CYLLAMA_DB_FALLBACK": " Raise "}).fallback == "raise"
    assert Settings.resolve(fallback="memory", environ={"CYLLAMA_DB_FALLBACK": "raise"}).fallback == "memory"
    # Read when the database is built, not at import.
    monkeypatch.setenv("CYLLAMA_DB_FALLBACK", "raise")
    assert Settings.resolve().fallback == "raise"


@pytest.mark.parametrize("bad", ["disk", "", "none"])
def test_bad_fallback_is_a_configuration_error(bad: str) -> None:
    from cyllama_db import ConfigurationError
    from cyllama_db.db.settings import Settings

    with pytest.raises(ConfigurationError, match="fallback"):
        Settings.resolve(fallback=bad, environ={})
    if bad:
        with pytest.raises(ConfigurationError, match="CYLLAMA_DB_FALLBACK"):
            Settings.resolve(environ={"CYLLAMA_DB_FALLBACK": bad})


def test_fallback_and_readonly_of_the_wrong_type_are_type_errors() -> None:
    from cyllama_db import ConfigurationTypeError
    from cyllama_db.db.settings import Settings

    with pytest.raises(ConfigurationTypeError):
        Settings.resolve(fallback=1, environ={})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationTypeError, match="readonly"):
        Settings.resolve(readonly="yes", environ={})  # type: ignore[arg-type]
    assert Settings.resolve(environ={}).readonly is False
