"""Security: owner-only files, no pickle, secrets redacted everywhere they leave, no SQL injection."""

from __future__ import annotations

import ast
import json
import os
import sqlite3
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import cyllama_db
from cyllama_db import CyllamaDB
from cyllama_db.cli import main
from cyllama_db.errors import CyllamaDBError

pytestmark = pytest.mark.reliability

PACKAGE = Path(cyllama_db.__file__).parent
SECRETS = (
    "sk-live-SECRET-1", "hf_SECRET_2", "custom-SECRET-3",
    "URL-PW-SECRET-4",  # a password in a URL
    "sk-INLINE-SECRET-5",  # a secret flag written with its value in one custom_params key
    "TOKEN-SECRET-6",  # a token as a URL's user name
    "hf_TEXT-SECRET-7",  # a secret flag and its value inside a custom value's text
)
HOSTILE = (
    "x'; DROP TABLE models; --",
    "\" OR 1=1 --",
    "name) VALUES ('pwned'); --",
    "%' OR '%'='",
    "models]; DELETE FROM config; --",
)


# -- file permissions ------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_database_and_its_wal_and_shm_are_owner_only(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = tmp_path / "private.db"
        db = CyllamaDB(path)
        db.set_config("written", True)  # makes SQLite create -wal and -shm
        db.cache_response("p", "m.gguf", None, "r")
        sides = [Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(side.exists() for side in sides)
        for file in (path, *sides):
            mode = stat.S_IMODE(file.stat().st_mode)
            assert mode == 0o600, f"{file.name} is {oct(mode)}"
        db.close()
        exported = tmp_path / "copy.db"
        with CyllamaDB(path) as again:
            again.export_database(exported)
            again.export_database(tmp_path / "rows.jsonl", format="jsonl", table="config")
        for file in (exported, tmp_path / "rows.jsonl"):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    finally:
        os.umask(old)


# -- no pickle -------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def _package_sources() -> Iterator[tuple[Path, ast.Module]]:
    for file in sorted(PACKAGE.rglob("*.py")):
        yield file, ast.parse(file.read_text(encoding="utf-8"), filename=str(file))


def test_no_module_of_the_package_can_unpickle() -> None:
    """A database file is data from disk: loading it must never run code."""
    files = list(_package_sources())
    assert len(files) > 20  # the walk really found the package
    for file, tree in files:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                # __import__("pickle") / eval / exec would get around the import check
                names = {node.func.id} & {"eval", "exec", "__import__"}
                if names:
                    pytest.fail(f"{file.name}:{node.lineno} calls {names.pop()}()")
                continue
            else:
                continue
            unsafe = names & UNSAFE_MODULES
            assert not unsafe, f"{file.name}:{node.lineno} imports {unsafe.pop()}"
        source = file.read_text(encoding="utf-8")
        assert "yaml.load(" not in source, file.name


def test_the_check_would_catch_an_unpickling_module() -> None:
    tree = ast.parse("import json\nfrom pickle import loads\n")
    found = [
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ]
    assert set(found) & UNSAFE_MODULES == {"pickle"}


# -- secrets ---------------------------------------------------------------------------------


@pytest.fixture
def with_secrets(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.db"
    with CyllamaDB(path) as db:
        db.save_model(
            "guarded",
            model_path=str(tmp_path / "guarded.gguf"),
            api_key=SECRETS[0],
            hf_token=SECRETS[1],
            custom_params={
                "--api-key-file": "/keys", "--hf-token": SECRETS[2], f"--api-key={SECRETS[4]}": True,
                "--mmproj-url": f"https://{SECRETS[5]}@hf.example/proj.gguf",
                "--extra": f"--hf-token {SECRETS[6]}",
            },
            model_url=f"https://user:{SECRETS[3]}@models.example/m.gguf",
            ctx_size=2048,
        )
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


SHOWING_COMMANDS = [
    ("info",),
    ("info", "--json"),
    ("models", "list"),
    ("models", "list", "--json"),
    ("models", "show", "guarded"),
    ("models", "show", "guarded", "--json"),
    ("models", "args", "guarded"),
    ("models", "args", "guarded", "--json"),
    ("models", "args", "guarded", "--llama-kwargs", "--json"),
    ("models", "update", "guarded", "--param", "api_key=12"),
    ("logs", "--json"),
]


@pytest.mark.parametrize("argv", SHOWING_COMMANDS, ids=" ".join)
def test_cli_output_never_shows_a_secret_unless_asked(
    with_secrets: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, output = _cli(capsys, "--db", str(with_secrets), *argv)
    assert output.strip(), "the command printed nothing"
    assert code == 0, output
    for secret in SECRETS:
        assert secret not in output, f"{' '.join(argv)} printed {secret}"


def test_cli_shows_secrets_only_with_the_flag(with_secrets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _cli(capsys, "--db", str(with_secrets), "models", "show", "guarded", "--show-secrets")
    assert code == 0 and SECRETS[0] in output and SECRETS[1] in output


@pytest.mark.parametrize("fmt", ["sqlite", "jsonl"])
def test_exports_hold_no_secret_bytes_unless_asked(
    with_secrets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    out = tmp_path / f"export.{fmt}"
    extra = ["--table", "models"] if fmt == "jsonl" else []
    code, output = _cli(capsys, "--db", str(with_secrets), "export", str(out), "--format", fmt, *extra)
    assert code == 0, output
    raw = out.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in raw, secret  # not even in a free page
        assert secret not in output
    full = tmp_path / f"full.{fmt}"
    code, _ = _cli(
        capsys, "--db", str(with_secrets), "export", str(full), "--format", fmt, *extra, "--include-secrets"
    )
    assert code == 0
    assert all(secret.encode() in full.read_bytes() for secret in SECRETS)


def test_dashboard_api_redacts_secrets(with_secrets: Path) -> None:
    import threading

    from cyllama_db.dashboard import make_server

    with CyllamaDB(with_secrets) as db:
        server = make_server(db, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            host, port = server.server_address[:2]
            for route in ("/api/models", "/api/summary"):
                with urllib.request.urlopen(f"http://{host}:{port}{route}", timeout=10) as reply:
                    body = reply.read().decode()
                assert "guarded" in body, route
                for secret in SECRETS:
                    assert secret not in body, (route, secret)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


def test_repr_and_errors_of_records_hide_secrets(with_secrets: Path) -> None:
    with CyllamaDB(with_secrets) as db:
        record = db.get_model_by_name("guarded")
        assert record is not None
        for secret in SECRETS:
            assert secret not in repr(record)
        with pytest.raises(CyllamaDBError) as info:
            db.update_model("guarded", api_key=["not", "a", "str", SECRETS[0]])
        assert SECRETS[0] not in str(info.value)


def test_every_python_view_of_a_record_hides_url_passwords_and_inline_flags(with_secrets: Path) -> None:
    with CyllamaDB(with_secrets) as db:
        record = db.get_model_by_name("guarded")
        assert record is not None
        views = {
            "repr": repr(record),
            "str": str(record),
            "to_dict": json.dumps(record.to_dict(), default=str),
            "to_server_args(redact_secrets=True)": " ".join(db.to_server_args("guarded", redact_secrets=True)),
            "redact(to_llama_kwargs)": json.dumps(cyllama_db.stores.params.redact(db.to_llama_kwargs("guarded")), default=str),
        }
        for view, text in views.items():
            for secret in SECRETS:
                assert secret not in text, f"{view} shows {secret}"
        # pip's form: the user stays, the password is ****
        assert "https://user:****@models.example/m.gguf" in views["to_dict"]
        assert "https://****@hf.example/proj.gguf" in views["to_server_args(redact_secrets=True)"]
        assert "--api-key=***" in views["to_server_args(redact_secrets=True)"]
        # ...and the real values are there for launching
        argv = db.to_server_args("guarded")
        assert f"--api-key={SECRETS[4]}" in argv and f"https://user:{SECRETS[3]}@models.example/m.gguf" in argv
        assert record["model_url"] == f"https://user:{SECRETS[3]}@models.example/m.gguf"


def test_a_redacted_export_imported_back_keeps_the_stored_secrets(with_secrets: Path, tmp_path: Path) -> None:
    with CyllamaDB(with_secrets) as db:
        db.export_database(tmp_path / "redacted.db")
        before = dict(db.get_model_by_name("guarded") or {})
        report = db.import_database(tmp_path / "redacted.db", on_conflict="replace")
        after = dict(db.get_model_by_name("guarded") or {})
    assert report["tables"]["models"]["conflicts"] == 0
    for column in ("model_url", "custom_params", "api_key", "hf_token"):
        assert after[column] == before[column], column
    with CyllamaDB(tmp_path / "fresh.db") as fresh:
        fresh.import_database(tmp_path / "redacted.db")
        model = fresh.get_model_by_name("guarded")
        assert model is not None
        stored = json.dumps(dict(model), default=str)
        for secret in SECRETS:
            assert secret not in stored
        # A redacted secret is "not exported", never the value "***" ...
        assert model["api_key"] is None and model["hf_token"] is None
        assert "--hf-token" not in model["custom_params"] and "--api-key=***" not in model["custom_params"]
        # ... while text that only had a secret inside it keeps the rest, pip-style
        assert model["model_url"] == "https://user:****@models.example/m.gguf"


# -- SQL injection ---------------------------------------------------------------------------


def _tables_and_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}
    finally:
        conn.close()


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_names_and_values_are_only_ever_data(tmp_path: Path, hostile: str) -> None:
    path = tmp_path / "hostile.db"
    with CyllamaDB(path) as db:
        db.save_model("innocent", model_path="/m/innocent.gguf")
        db.set_config("innocent", 1)
        before = _tables_and_counts(path)
        # As a filter key: not a column, refused by name.
        with pytest.raises(TypeError) as info:
            db.get_models(**{hostile: 1})
        assert hostile in str(info.value)
        # As filter values and lookups: matched literally, so nothing matches.
        assert db.get_models(name=hostile) == []
        assert db.get_models(type=hostile) == []
        assert db.get_model_by_name(hostile) is None
        assert db.get_logs(category=hostile) == []
        assert db.get_generation_history(session_id=hostile) == []
        assert db.invalidate_cache(prompt=hostile) == 0
        assert db.delete_config(hostile) is False
        assert _tables_and_counts(path) == before
        # Stored as data, read back as written.
        db.save_model(hostile, model_path="/m/h.gguf", chat_template=hostile)
        db.set_config(hostile, hostile)
        db.log("INFO", hostile, category=hostile)
        assert db.get_model_by_name(hostile)["chat_template"] == hostile  # type: ignore[index]
        assert db.get_config(hostile) == hostile
        assert [e["message"] for e in db.get_logs(category=hostile)] == [hostile]
        assert {m["name"] for m in db.get_models()} == {"innocent", hostile}
        with pytest.raises(ValueError):
            db.export_database(tmp_path / "t.jsonl", format="jsonl", table=hostile)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_cli_arguments_are_only_ever_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hostile: str
) -> None:
    path = tmp_path / "cli.db"
    with CyllamaDB(path) as db:
        db.save_model("innocent", model_path="/m/innocent.gguf")
        db.set_config("innocent", 1)
    before = _tables_and_counts(path)
    db_arg = ("--db", str(path))
    for argv in (
        ("models", "show", hostile),
        ("models", "rm", hostile),
        ("models", "args", hostile),
        ("models", "list", "--type", hostile),
        ("config", "get", hostile),
        ("config", "unset", hostile),
        ("logs", "--category", hostile),
        ("history", "--model", hostile),
        ("stats", "--model", hostile, "--json"),
        ("cache", "invalidate", "--model", hostile),
        ("cache", "invalidate", "--prompt", hostile),
        ("cache", "show", hostile),
        ("export", str(tmp_path / "x.jsonl"), "--format", "jsonl", "--table", hostile),
    ):
        code, output = _cli(capsys, *db_arg, *argv)
        assert code in (0, 1, 2), (argv, code)
        assert "Traceback" not in output, argv
        assert "syntax error" not in output.lower(), argv
    after = _tables_and_counts(path)
    after.pop("logs", None)  # the CLI may log its own errors
    before.pop("logs", None)
    assert after == before
    code, output = _cli(capsys, *db_arg, "models", "update", "innocent", "--rename", hostile)
    assert code == 0, output
    code, output = _cli(capsys, *db_arg, "models", "show", hostile, "--json")
    assert code == 0 and json.loads(output)["name"] == hostile


# -- folders and files the library creates or adopts -----------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_every_folder_the_library_creates_is_owner_only(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        db = CyllamaDB(tmp_path / "a" / "b" / "db.sqlite")
        db.set_config("k", 1)
        db.export_database(tmp_path / "exports" / "deep" / "copy.db")
        db.export_database(tmp_path / "rows" / "config.jsonl", format="jsonl", table="config")
        db.import_database(tmp_path / "exports" / "deep" / "copy.db")
        db.close()
        for folder in ("a", "a/b", "exports", "exports/deep", "rows"):
            mode = stat.S_IMODE((tmp_path / folder).stat().st_mode)
            assert mode == 0o700, f"{folder} is {oct(mode)}"
    finally:
        os.umask(old)


def test_import_working_folder_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    seen: list[int] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*args: object, **kwargs: object) -> str:
        folder = real_mkdtemp(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(stat.S_IMODE(os.stat(folder).st_mode))
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    with CyllamaDB(tmp_path / "db.sqlite") as db:
        db.export_database(tmp_path / "copy.db")
        db.import_database(tmp_path / "copy.db")
    assert seen == [0o700]


def test_a_world_readable_database_is_tightened_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "loose.db"
    CyllamaDB(path).close()
    os.chmod(path, 0o644)
    Path(f"{path}-wal").write_bytes(b"")
    os.chmod(f"{path}-wal", 0o666)
    with CyllamaDB(path) as db:
        db.set_config("k", 1)
        assert not db.is_memory
        assert stat.S_IMODE(os.stat(f"{path}-wal").st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_readable_file_we_cannot_tighten_is_named_in_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shared.db"
    CyllamaDB(path).close()
    os.chmod(path, 0o644)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(path).st_uid + 1)  # as if another user's file
    with caplog.at_level("WARNING", logger="cyllama_db"), CyllamaDB(path) as db:
        db.set_config("k", 1)
    assert any(str(path) in r.getMessage() and "chmod 600" in r.getMessage() for r in caplog.records)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not ours to change
