"""Database URLs: which engine, where, and how to show one without its password.

Accepted forms (``docs/configuration.md``)::

    sqlite:///relative/path.db          a file, relative to the current directory
    sqlite:////absolute/path.db         a file, absolute path (four slashes)
    sqlite:///:memory:                  a private in-memory database
    postgresql://user:password@host:5432/database?option=value
    postgres://...                      the same (libpq's short scheme)

A PostgreSQL URL follows libpq's rules: every part is optional (libpq's
defaults apply: a local Unix socket, port 5432, the user's name for user
and database), parts are percent-encoded (``%40`` for ``@`` in a password),
and the query holds libpq connection options (``sslmode=require``,
``connect_timeout=5``, ``host=/var/run/postgresql``...).

:func:`redact` and :func:`redact_text` hide passwords (``****``) in a URL or
in any text holding URLs or ``password=`` options; every repr, log line,
error message and CLI view of a database URL goes through them. This
module imports no driver.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from ..errors import ConfigurationError

__all__ = ["REDACTED", "SCHEMES", "DatabaseURL", "is_url", "parse_url", "redact", "redact_text"]

#: What replaces a password.
REDACTED = "****"

#: URL schemes and the engine each selects.
SCHEMES: dict[str, Literal["sqlite", "postgresql"]] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}

_ACCEPTED = (
    "sqlite:///relative.db, sqlite:////absolute/path.db, sqlite:///:memory: "
    "or postgresql://user:password@host:5432/database (postgres:// works too)"
)

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")

# ``scheme://user:PASSWORD@``: the password runs to the last ``@`` before
# white space, so an unencoded ``@`` or ``/`` in it is hidden as well (at
# worst more than the password is hidden, never less).
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):(?P<password>\S*)@"
)
# libpq's ``password=...`` (keyword/value strings, URL query options), quoted or not.
_OPTION_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'?|[^\s&'\"]+)", re.IGNORECASE
)


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL (:func:`parse_url`); its repr never shows the password.

    ``engine`` is ``"sqlite"`` or ``"postgresql"``. For SQLite, ``path`` is
    the file path (as written, relative paths are not resolved) or
    ``":memory:"``. For PostgreSQL, ``conninfo`` is the libpq keyword/value
    connection string to connect with (it holds the password: never show
    it), and ``host``, ``port``, ``database``, ``user`` are what the URL
    says (None where it leaves libpq's default).
    """

    engine: Literal["sqlite", "postgresql"]
    url: str = field(repr=False)
    path: str | None = None
    conninfo: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def redacted(self) -> str:
        """The URL with its password replaced by ``****``: safe to print and log."""
        return redact_text(self.url)

    @property
    def server(self) -> str:
        """``host:port`` as libpq will try it (``localhost:5432`` style), for messages."""
        host = self.host or "localhost (Unix socket)"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port or 5432}"

    def __repr__(self) -> str:
        return f"DatabaseURL({self.redacted!r})"

    def __str__(self) -> str:
        return self.redacted


def is_url(text: str) -> bool:
    """Whether ``text`` looks like a URL (``scheme://...``) rather than a file path."""
    return bool(_SCHEME.match(text))


def parse_url(url: str) -> DatabaseURL:
    """Parse a database URL; raises :class:`~cyllama_db.ConfigurationError` saying what is accepted.

    >>> parse_url("sqlite:///:memory:").path
    ':memory:'
    >>> parse_url("postgresql://app:pw@db.internal:5433/cache").server
    'db.internal:5433'
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a database URL must be a str, got {type(url).__name__}: use {_ACCEPTED}")
    text = url.strip()
    match = _SCHEME.match(text)
    if match is None:
        raise ConfigurationError(
            f"{redact(text)!r} is not a database URL (it has no scheme://): use {_ACCEPTED}"
        )
    scheme = match.group("scheme").lower()
    engine = SCHEMES.get(scheme)
    if engine is None:
        raise ConfigurationError(
            f"unknown database URL scheme {scheme!r} in {redact(text)!r}: use {_ACCEPTED}"
        )
    rest = text[match.end():]
    if engine == "sqlite":
        return _parse_sqlite(text, rest)
    return _parse_postgres(text, rest)


def _parse_sqlite(url: str, rest: str) -> DatabaseURL:
    if "?" in rest or "#" in rest:
        raise ConfigurationError(
            f"SQLite URL {url!r} has options (?...) or a fragment (#...), which SQLite URLs do not "
            f"take; percent-encode ? and # in file names (%3F, %23). Accepted: {_ACCEPTED}"
        )
    if not rest.startswith("/"):
        raise ConfigurationError(
            f"SQLite URL {url!r} names a host ({rest.split('/', 1)[0]!r}); SQLite URLs have three "
            f"slashes before a relative path and four before an absolute one. Accepted: {_ACCEPTED}"
        )
    path = unquote(rest[1:])
    if path in ("", "/"):
        raise ConfigurationError(f"SQLite URL {url!r} names no file. Accepted: {_ACCEPTED}")
    if "\0" in path:
        raise ConfigurationError(f"SQLite URL {url!r} holds a NUL character in its path")
    return DatabaseURL(engine="sqlite", url=url, path=path)


def _split_hostport(url: str, hostport: str) -> tuple[str | None, int | None]:
    if "," in hostport:  # libpq's multi-host form: h1:5432,h2:5433 (kept whole for libpq)
        return unquote(hostport), None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ConfigurationError(f"database URL {redact(url)!r}: unclosed '[' in the IPv6 host")
        host, after = hostport[1:end], hostport[end + 1:]
        if after and not after.startswith(":"):
            raise ConfigurationError(f"database URL {redact(url)!r}: unexpected {after!r} after the IPv6 host")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = hostport.partition(":")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigurationError(
                f"database URL {redact(url)!r}: port {port_text!r} is not a number from 1 to 65535 "
                "(e.g. postgresql://user@host:5432/database)"
            )
        port = int(port_text)
    return (unquote(host) or None), port


def _parse_postgres(url: str, rest: str) -> DatabaseURL:
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ConfigurationError(
            f"database URL {redact(url)!r} has a fragment (#...); percent-encode # as %23"
        )
    rest, _, query = rest.partition("?")
    netloc, slash, db_path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    user = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        user = unquote(user_text) or None
        password = unquote(password_text) if colon else None
    host, port = _split_hostport(url, hostport)
    database = unquote(db_path) if slash and db_path else None
    if database is not None and "/" in db_path:
        raise ConfigurationError(
            f"database URL {redact(url)!r}: the database name {database!r} holds a '/'; "
            "a PostgreSQL URL ends with one database name (percent-encode '/' as %2F)"
        )
    options: list[tuple[str, str]] = []
    for item in query.split("&") if query else ():
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ConfigurationError(
                f"database URL {redact(url)!r}: malformed option {redact_text(item)!r} after '?'; "
                "write options as name=value&name=value (e.g. ?sslmode=require&connect_timeout=5)"
            )
        options.append((unquote(key), unquote(value)))
    words: dict[str, str] = {}
    parts: tuple[tuple[str, object], ...] = (
        ("host", host), ("port", port), ("dbname", database), ("user", user), ("password", password)
    )
    for word, part in parts:
        if part is not None:
            words[word] = str(part)
    for key, value in options:
        if not re.fullmatch(r"[a-z_]+", key):
            raise ConfigurationError(
                f"database URL {redact(url)!r}: {key!r} is not a libpq connection option "
                "(see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS)"
            )
        words[key] = value
    # Options in the query win over the URL's parts, as in libpq.
    if "host" in words:
        host = words["host"]
    if "port" in words:
        if not words["port"].isdigit() or not 0 < int(words["port"]) < 65536:
            raise ConfigurationError(
                f"database URL {redact(url)!r}: port {words['port']!r} is not a number from 1 to 65535"
            )
        port = int(words["port"])
    database = words.get("dbname", database)
    user = words.get("user", user)
    password = words.get("password", password)
    conninfo = " ".join(f"{key}={_quote_conninfo(value)}" for key, value in words.items())
    return DatabaseURL(
        engine="postgresql", url=url, conninfo=conninfo, host=host, port=port,
        database=database, user=user, password=password, options=tuple(options),
    )


def _quote_conninfo(value: str) -> str:
    """A libpq keyword/value string's value: single-quoted, with ``\\`` and ``'`` escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def redact(url: str) -> str:
    """``url`` with its password (``user:PASSWORD@``, ``?password=``) replaced by ``****``.

    Never raises, whatever ``url`` holds: it is used on the way to error messages.

    >>> redact("postgresql://app:s3cret@db:5432/cache")
    'postgresql://app:****@db:5432/cache'
    """
    return redact_text(url)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL's password and every ``password=`` option replaced by ``****``.

    ``secrets``: strings known to be passwords, replaced wherever they occur
    (a driver's message may quote one outside any URL); empty ones are ignored.
    """
    if not isinstance(text, str):
        text = str(text)
    if "@" in text and "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    if "=" in text and "password" in text.lower():
        text = _OPTION_PASSWORD.sub(lambda m: f"{m.group('head')}{REDACTED}", text)
    for secret in secrets:
        if secret and secret != REDACTED:
            text = text.replace(secret, REDACTED)
    return text
