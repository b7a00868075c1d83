"""Database URLs (db/url.py): parsing, what is refused and why, and passwords never shown."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cyllama_db.db.url import DatabaseURL, is_url, parse_url, redact, redact_text
from cyllama_db.errors import ConfigurationError, CyllamaDBError

# -- SQLite ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:///data/sub/cache.db", "data/sub/cache.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("SQLITE:///Upper.db", "Upper.db"),
        ("sqlite:///my%20file.db", "my file.db"),
    ],
)
def test_sqlite_urls_give_the_path(url: str, path: str) -> None:
    parsed = parse_url(url)
    assert parsed.engine == "sqlite"
    assert parsed.path == path
    assert parsed.conninfo is None and parsed.host is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite://host/x.db", "names a host"),
        ("sqlite://", "names a host"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?mode=ro", "options"),
    ],
)
def test_malformed_sqlite_urls_say_what_is_accepted(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as info:
        parse_url(url)
    assert "sqlite:////absolute/path.db" in str(info.value)


# -- PostgreSQL -----------------------------------------------------------------------------------


def test_postgresql_url_parts() -> None:
    parsed = parse_url("postgresql://app:s3cret@db.internal:5433/cache?sslmode=require&connect_timeout=5")
    assert (parsed.engine, parsed.host, parsed.port, parsed.database, parsed.user) == (
        "postgresql", "db.internal", 5433, "cache", "app",
    )
    assert parsed.password == "s3cret"
    assert parsed.options == (("sslmode", "require"), ("connect_timeout", "5"))
    assert parsed.server == "db.internal:5433"
    assert parsed.conninfo is not None
    for word in ("host='db.internal'", "port='5433'", "dbname='cache'", "user='app'", "sslmode='require'"):
        assert word in parsed.conninfo


def test_postgres_scheme_and_defaults() -> None:
    parsed = parse_url("postgres://db")
    assert parsed.engine == "postgresql"
    assert (parsed.host, parsed.port, parsed.database, parsed.user, parsed.password) == ("db", None, None, None, None)
    assert parsed.server == "db:5432"
    assert parse_url("postgresql:///only_db").database == "only_db"


def test_percent_encoded_and_unencoded_at_in_the_password() -> None:
    assert parse_url("postgresql://u:p%40ss%2Fw@h/d").password == "p@ss/w"
    loose = parse_url("postgresql://u:p@ss@h:5432/d")  # libpq would choke on it; we take the last @
    assert (loose.password, loose.host, loose.port) == ("p@ss", "h", 5432)


def test_ipv6_unix_socket_and_query_host() -> None:
    assert parse_url("postgresql://u@[::1]:6543/d").server == "[::1]:6543"
    socket_url = parse_url("postgresql://%2Fvar%2Frun%2Fpostgresql/d")
    assert socket_url.host == "/var/run/postgresql"
    query = parse_url("postgresql:///d?host=/tmp&port=7000&user=me")
    assert (query.host, query.port, query.user) == ("/tmp", 7000, "me")


def test_conninfo_quotes_awkward_values() -> None:
    parsed = parse_url("postgresql://u:it%27s%20a%5Cpw@h/d")
    assert parsed.password == "it's a\\pw"
    assert parsed.conninfo is not None and "password='it\\'s a\\\\pw'" in parsed.conninfo


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://u@h/d", "unknown database URL scheme 'mysql'"),
        ("cache.db", "not a database URL"),
        ("postgresql://h:99999/d", "port '99999'"),
        ("postgresql://h:abc/d", "port 'abc'"),
        ("postgresql://h/d?sslmode", "malformed option"),
        ("postgresql://h/a/b", "holds a '/'"),
        ("postgresql://h/d#frag", "fragment"),
        ("postgresql://[::1/d", "IPv6"),
        ("postgresql://h/d?Bad-Key=1", "not a libpq connection option"),
    ],
)
def test_malformed_urls_raise_configuration_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as info:
        parse_url(url)
    assert isinstance(info.value, CyllamaDBError) and isinstance(info.value, ValueError)


def test_errors_about_a_url_do_not_show_its_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url("postgresql://u:TOPSECRET@h:70000/d")
    assert "TOPSECRET" not in str(info.value)
    assert "****" in str(info.value)


def test_is_url() -> None:
    assert is_url("postgresql://h/d") and is_url("sqlite:///x.db")
    assert not is_url("/var/lib/cache.db") and not is_url("C:\\data\\x.db") and not is_url(":memory:")


def test_a_non_string_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be a str"):
        parse_url(5)  # type: ignore[arg-type]


# -- redaction ---------------------------------------------------------------------------------


def test_repr_str_and_redacted_hide_the_password() -> None:
    parsed = parse_url("postgresql://app:hunter2@db:5432/cache")
    for shown in (repr(parsed), str(parsed), parsed.redacted, f"{parsed}"):
        assert "hunter2" not in shown
    assert parsed.redacted == "postgresql://app:****@db:5432/cache"
    assert isinstance(parsed, DatabaseURL)


def test_redact_query_and_conninfo_passwords() -> None:
    assert redact("postgresql://h/d?password=abc&sslmode=require") == "postgresql://h/d?password=****&sslmode=require"
    text = "could not connect with host='h' password='a b\\'c' dbname='d'"
    assert redact_text(text) == "could not connect with host='h' password=**** dbname='d'"
    assert redact_text("PASSWORD = plain rest") == "PASSWORD = **** rest"


def test_redact_text_in_a_message_and_known_secrets() -> None:
    text = "error: cannot open postgresql://u:pw1@h/d, then postgres://v:pw2@k/e failed"
    out = redact_text(text)
    assert "pw1" not in out and "pw2" not in out
    assert "postgresql://u:****@h/d," in out and "postgres://v:****@k/e" in out
    assert redact_text("the server said: bad secret 'Xy7'", secrets=["Xy7", ""]) == "the server said: bad secret '****'"


def test_urls_without_passwords_are_unchanged() -> None:
    for url in ("postgresql://u@h:5432/d", "postgresql://h/d", "sqlite:////a/b.db", "not a url at all"):
        assert redact(url) == url


def test_redact_never_raises() -> None:
    for junk in ("", "://", "postgresql://:@", "x://a:@", "password=", "@@@://::@@"):
        assert isinstance(redact(junk), str)


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    user=_names,
    password=st.text(min_size=1, max_size=40),
    host=_names,
    port=st.integers(1, 65535),
    database=_names,
    query=st.sampled_from(["", "?sslmode=require", "?application_name=x&connect_timeout=3"]),
)
def test_redaction_round_trip(user: str, password: str, host: str, port: int, database: str, query: str) -> None:
    encoded = quote(password, safe="")
    url = f"postgresql://{user}:{encoded}@{host}:{port}/{database}{query}"
    expected = f"postgresql://{user}:****@{host}:{port}/{database}{query}"
    shown = f"DatabaseURL({expected!r})"
    # A password that is also a piece of the rest ("0", "*", "postgresql") cannot be told apart from it.
    assume(encoded not in shown and password not in shown)
    parsed = parse_url(url)
    assert parsed.password == password
    out = redact(url)
    assert out == expected == parsed.redacted == str(parsed)
    assert repr(parsed) == shown
    assert encoded not in out and password not in out and password not in repr(parsed)
    again = parse_url(out)
    assert (again.user, again.host, again.port, again.database, again.password) == (user, host, port, database, "****")


@settings(max_examples=200, deadline=None)
@given(
    password=st.text(alphabet=st.characters(blacklist_categories=("Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=30),
    prefix=st.text(alphabet="abcdefghij ,.:", max_size=20),
)
def test_redaction_of_an_unencoded_password_inside_text(password: str, prefix: str) -> None:
    """Written without percent-encoding (``@``, ``/``, ``:`` and all), the password still goes."""
    expected = f"{prefix} failed: postgresql://app:****@db.example:5432/cache (refused)"
    assume(password not in expected)
    out = redact_text(f"{prefix} failed: postgresql://app:{password}@db.example:5432/cache (refused)")
    assert out == expected
