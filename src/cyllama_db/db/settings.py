"""Resolution of every setting: constructor argument > environment variable > default.

The environment is read when a :class:`Settings` is built (at ``CyllamaDB()``
time, not at import), so tests and scripts can set variables late.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from .._time import parse_duration
from ..errors import ConfigurationError, ConfigurationTypeError
from .url import SCHEMES, DatabaseURL, is_url, parse_url

__all__ = ["DEFAULT", "ENV_VARS", "FALLBACKS", "LOG_LEVELS", "Settings", "default_db_path"]

#: Every environment variable cyllama-db reads, with what it means.
ENV_VARS: dict[str, str] = {
    "CYLLAMA_DB_PATH": "database file (default: the platform's user data dir /cyllama/cyllama.db)",
    "CYLLAMA_DB_URL": (
        "database URL instead of a path: postgresql://user:password@host:5432/db (a server shared "
        "by several machines) or sqlite:///path.db; set this or CYLLAMA_DB_PATH, not both"
    ),
    "CYLLAMA_DB_ENABLED": "1 (default) or 0: 0 makes every call a no-op and creates no file",
    "CYLLAMA_CACHE_TTL": "default cache entry lifetime: seconds or 30m/24h/7d; 'none' = never expires",
    "CYLLAMA_CACHE_MAX_SIZE_MB": "cache size limit in MB (default 100)",
    "CYLLAMA_LOG_LEVEL": "lowest level stored in the logs table: DEBUG, INFO, WARNING, ERROR, CRITICAL",
    "CYLLAMA_LOG_TO_DB": "1 to attach the library's own logger to the logs table (default 0)",
    "CYLLAMA_METRICS_RETENTION": (
        "how long metrics samples are kept: a positive duration, seconds or 10m/1h (default 10m)"
    ),
    "CYLLAMA_DB_BUSY_TIMEOUT": "seconds a writer waits for another writer's lock (default 30)",
    "CYLLAMA_CACHE_SAMPLED": (
        "1 (default) or 0: whether sampled calls (temperature > 0, no fixed seed) are cached"
    ),
    "CYLLAMA_OTEL": (
        "1 or 0 (default): emit an OpenTelemetry span and gen_ai metrics for every generation"
    ),
    "CYLLAMA_AUTO_VACUUM": (
        "1 (default) or 0: new files use incremental auto-vacuum, and space freed by deletes "
        "(cleanup, eviction, pruning) is given back to the file system"
    ),
    "CYLLAMA_DB_FALLBACK": (
        "memory (default) or raise: what to do when the file is unusable (not SQLite, corrupt, "
        "a directory); raise refuses to run on an in-memory database"
    ),
}

#: The answers to an unusable database file (``fallback=``, ``$CYLLAMA_DB_FALLBACK``).
FALLBACKS = ("memory", "raise")

LOG_LEVELS: dict[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_NEVER = {"none", "never", "forever", "inf"}


class _Default:
    """Marks "argument not given" where ``None`` is itself a meaningful value."""

    _instance: _Default | None = None

    def __new__(cls) -> _Default:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"

    def __bool__(self) -> bool:
        return False


DEFAULT: Any = _Default()


def default_db_path() -> Path:
    """The platform's per-user data location: ``<user_data_dir>/cyllama/cyllama.db``."""
    import platformdirs

    return Path(platformdirs.user_data_dir("cyllama", appauthor=False)) / "cyllama.db"


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean: use 1 or 0 (true/false, yes/no)")


def _parse_ttl(name: str, raw: Any) -> timedelta | None:
    if raw is None:
        return None
    if isinstance(raw, str) and raw.strip().lower() in _NEVER:
        return None
    try:
        ttl = parse_duration(raw)
    except (ValueError, TypeError) as exc:
        raise _error_for(raw)(
            f"{name}={raw!r} is not a duration: use seconds (604800), 30m, 24h, 7d or 'none'"
        ) from exc
    if ttl.total_seconds() <= 0:
        raise ConfigurationError(f"{name}={raw!r} must be positive (or 'none' for no expiry)")
    return ttl


def _parse_retention(name: str, raw: Any) -> timedelta:
    # Unlike the cache TTL there is no "never": every metrics insert deletes
    # what is older than this, which is what keeps the table a few hundred rows.
    message = (
        f"{name}={raw!r}: metrics retention must be a positive duration, e.g. 600, 10m or 1h "
        "(there is no 'none': the metrics table is meant to stay small)"
    )
    if isinstance(raw, str) and raw.strip().lower() in _NEVER:
        raise ConfigurationError(message)
    try:
        retention = parse_duration(raw)
    except (ValueError, TypeError) as exc:
        raise _error_for(raw)(message) from exc
    if retention.total_seconds() <= 0:
        raise ConfigurationError(message)
    return retention


_MAX_BUSY_TIMEOUT = 2_147_483.0


def _parse_positive_float(name: str, raw: Any) -> float:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
    except OverflowError:  # an int beyond a double's range
        value = float("inf")
    except (TypeError, ValueError) as exc:
        raise _error_for(raw)(f"{name}={raw!r} is not a number") from exc
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(f"{name}={raw!r} must be a positive, finite number")
    return value


def _resolve_bool(value: Any, name: str, environ: Mapping[str, str], env_name: str, *, default: bool) -> bool:
    """A switch: the argument (True/False) > ``env_name`` (1/0, true/false...) > ``default``."""
    if value is None:
        raw = _env(environ, env_name)
        return default if raw is None else _parse_bool(env_name, raw)
    if isinstance(value, bool):
        return value
    raise ConfigurationTypeError(f"{name} must be True or False, got {value!r}")


def _parse_level(name: str, raw: Any) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool):
        for level_name, number in LOG_LEVELS.items():
            if number == raw:
                return level_name
    if isinstance(raw, str) and raw.strip().upper() in LOG_LEVELS:
        return raw.strip().upper()
    raise _error_for(raw)(
        f"{name}={raw!r} is not a log level: use one of {', '.join(LOG_LEVELS)}"
    )


def _parse_fallback(name: str, raw: Any) -> str:
    if isinstance(raw, str) and raw.strip().lower() in FALLBACKS:
        return raw.strip().lower()
    raise (ConfigurationError if isinstance(raw, str) else ConfigurationTypeError)(
        f"{name}={raw!r} is not a fallback: use 'memory' (run on an in-memory database when the "
        "file is unusable) or 'raise' (refuse to run)"
    )


def _error_for(raw: Any) -> type[ConfigurationError]:
    """The error for a malformed setting: a TypeError too when it is not even text or a number."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float, timedelta)):
        return ConfigurationTypeError
    return ConfigurationError


@dataclass(frozen=True)
class Settings:
    """Every setting of one :class:`~cyllama_db.CyllamaDB`, resolved once."""

    path: str  #: resolved file path, or ":memory:"
    enabled: bool
    cache_ttl: timedelta | None
    max_cache_size_mb: float
    log_level: str
    log_to_db: bool
    metrics_retention: timedelta
    busy_timeout: float
    cache_sampled: bool = True
    opentelemetry: bool = False
    #: opened read-only: reads work, every write raises ReadOnlyDatabaseError
    readonly: bool = False
    #: "memory" or "raise": the answer to a file that is not SQLite, corrupt or a directory
    fallback: str = "memory"
    #: new files get incremental auto-vacuum; freed pages are returned after deletes
    auto_vacuum: bool = True
    #: the parsed ``postgresql://`` URL of a server database (``path`` is then its
    #: redacted form), None for SQLite; its repr never shows the password
    url: DatabaseURL | None = None

    @property
    def engine(self) -> str:
        """``"sqlite"`` or ``"postgresql"``: the engine the database runs on."""
        return "sqlite" if self.url is None else self.url.engine

    @classmethod
    def resolve(
        cls,
        *,
        path: str | os.PathLike[str] | None = None,
        enabled: bool | None = None,
        cache_ttl: Any = DEFAULT,
        url: str | None = None,
        max_cache_size_mb: float | None = None,
        log_level: str | int | None = None,
        log_to_db: bool | None = None,
        metrics_retention: Any = None,
        busy_timeout: float | None = None,
        cache_sampled: bool | None = None,
        opentelemetry: bool | None = None,
        readonly: bool = False,
        fallback: str | None = None,
        auto_vacuum: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build settings from arguments, then the environment, then defaults.

        The database is ``url`` or ``path`` (giving both is an error), else
        ``$CYLLAMA_DB_URL`` or ``$CYLLAMA_DB_PATH`` (both set is an error),
        else the default file. A ``sqlite:///`` URL is the same as its path;
        a path argument that is a URL is read as one.
        """
        env = os.environ if environ is None else environ
        server_url: DatabaseURL | None = None
        if url is not None:
            if path is not None:
                raise ConfigurationError(
                    "give path= or url=, not both: path names a SQLite file, url= a database "
                    "URL (postgresql://... or sqlite:///...)"
                )
            if not isinstance(url, str):
                raise ConfigurationTypeError(f"url must be a str, got {type(url).__name__}")
            path, server_url = _from_url(url)
        elif isinstance(path, str) and is_url(path) and path.split("://", 1)[0].lower() in SCHEMES:
            path, server_url = _from_url(path)
        elif path is None:
            raw_url = _env(env, "CYLLAMA_DB_URL")
            if raw_url is not None:
                if _env(env, "CYLLAMA_DB_PATH") is not None:
                    raise ConfigurationError(
                        "both CYLLAMA_DB_URL and CYLLAMA_DB_PATH are set: unset one of them "
                        "(or pass path= or url=, which take precedence)"
                    )
                path, server_url = _from_url(raw_url)

        if enabled is None:
            raw = _env(env, "CYLLAMA_DB_ENABLED")
            enabled = True if raw is None else _parse_bool("CYLLAMA_DB_ENABLED", raw)
        elif not isinstance(enabled, bool):
            raise ConfigurationTypeError(f"enabled must be True or False, got {enabled!r}")

        if path is None:
            raw = _env(env, "CYLLAMA_DB_PATH")
            resolved = raw if raw is not None else str(default_db_path())
        elif isinstance(path, (str, os.PathLike)):
            resolved = os.fspath(path)
            if not str(resolved).strip():
                raise ConfigurationError(
                    "path must not be empty: give a file path, ':memory:', or None for the default"
                )
        else:
            raise ConfigurationTypeError(
                f"path must be a str or os.PathLike, got {type(path).__name__}"
            )
        if server_url is not None:
            resolved = server_url.redacted
        elif resolved != ":memory:":
            resolved = os.path.abspath(os.path.expanduser(resolved))

        if cache_ttl is DEFAULT:
            raw = _env(env, "CYLLAMA_CACHE_TTL")
            ttl = timedelta(days=7) if raw is None else _parse_ttl("CYLLAMA_CACHE_TTL", raw)
        else:
            ttl = _parse_ttl("cache_ttl", cache_ttl)

        if max_cache_size_mb is None:
            raw = _env(env, "CYLLAMA_CACHE_MAX_SIZE_MB")
            size = 100.0 if raw is None else _parse_positive_float("CYLLAMA_CACHE_MAX_SIZE_MB", raw)
        else:
            size = _parse_positive_float("max_cache_size_mb", max_cache_size_mb)

        if log_level is None:
            raw = _env(env, "CYLLAMA_LOG_LEVEL")
            level = "INFO" if raw is None else _parse_level("CYLLAMA_LOG_LEVEL", raw)
        else:
            level = _parse_level("log_level", log_level)

        to_db = _resolve_bool(log_to_db, "log_to_db", env, "CYLLAMA_LOG_TO_DB", default=False)

        if metrics_retention is None:
            raw = _env(env, "CYLLAMA_METRICS_RETENTION")
            retention = (
                timedelta(minutes=10)
                if raw is None
                else _parse_retention("CYLLAMA_METRICS_RETENTION", raw)
            )
        else:
            retention = _parse_retention("metrics_retention", metrics_retention)

        if busy_timeout is None:
            raw = _env(env, "CYLLAMA_DB_BUSY_TIMEOUT")
            busy = 30.0 if raw is None else _parse_positive_float("CYLLAMA_DB_BUSY_TIMEOUT", raw)
        else:
            busy = _parse_positive_float("busy_timeout", busy_timeout)
        if busy > _MAX_BUSY_TIMEOUT:  # SQLite takes the timeout as a C int of milliseconds
            raise ConfigurationError(
                f"busy_timeout={busy:g} s is too long (at most {_MAX_BUSY_TIMEOUT:g} s, about 24 days)"
            )

        sampled = _resolve_bool(cache_sampled, "cache_sampled", env, "CYLLAMA_CACHE_SAMPLED", default=True)
        if not isinstance(readonly, bool):
            raise ConfigurationTypeError(f"readonly must be True or False, got {readonly!r}")

        if fallback is None:
            raw = _env(env, "CYLLAMA_DB_FALLBACK")
            answer = "memory" if raw is None else _parse_fallback("CYLLAMA_DB_FALLBACK", raw)
        else:
            answer = _parse_fallback("fallback", fallback)

        otel = _resolve_bool(opentelemetry, "opentelemetry", env, "CYLLAMA_OTEL", default=False)

        vacuum = _resolve_bool(auto_vacuum, "auto_vacuum", env, "CYLLAMA_AUTO_VACUUM", default=True)

        return cls(
            path=resolved,
            enabled=enabled,
            cache_ttl=ttl,
            max_cache_size_mb=size,
            log_level=level,
            log_to_db=to_db,
            metrics_retention=retention,
            busy_timeout=busy,
            cache_sampled=sampled,
            opentelemetry=otel,
            readonly=readonly,
            fallback=answer,
            auto_vacuum=vacuum,
            url=server_url,
        )


def _from_url(url: str) -> tuple[str | None, DatabaseURL | None]:
    """``(path, None)`` for a ``sqlite:///`` URL, ``(None, parsed)`` for a server URL."""
    parsed = parse_url(url)
    if parsed.engine == "sqlite":
        return parsed.path, None
    return None, parsed
