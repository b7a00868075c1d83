"""Each store's EXPORT_POLICY: complete, consistent with the schema, and what export/import apply."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from cyllama_db import CyllamaDB
from cyllama_db.db.policy import RowCheck, TablePolicy, by_table
from cyllama_db.db.store import Store
from cyllama_db.stores import (
    cache,
    config,
    export,
    importer,
    logs,
    metadata,
    metrics,
    registry,
    stats,
)

STORE_MODULES = (config, metadata, registry, cache, stats, logs, metrics)


def _schema(db: CyllamaDB) -> dict[str, list[str]]:
    with db.pool.read() as conn:
        return {t: [c[0] for c in export._columns(conn, "main", t)] for t in export._user_tables(conn)}


def test_policies_are_the_store_modules_policies_in_merge_order() -> None:
    collected = export.policies()
    assert collected == [p for module in STORE_MODULES for p in module.EXPORT_POLICY]
    assert all("EXPORT_POLICY" in module.__all__ for module in STORE_MODULES)
    keyed_or_appended = [p.table for p in collected if p.merge != "derived"]
    assert keyed_or_appended == ["config", "metadata", "models", "cache", "stats", "logs", "metrics_history"]
    by_table(collected)  # no table is declared twice


def test_every_table_of_a_new_database_has_a_policy_or_is_rebuilt_by_triggers(memory_db: CyllamaDB) -> None:
    found = export.policy_map(memory_db)
    schema = _schema(memory_db)
    with memory_db.pool.read() as conn:
        derived = export._derived_tables(conn, found.values())
    undeclared = [t for t in schema if t not in found and t not in derived]
    assert undeclared == [], "declare these tables in their store's EXPORT_POLICY"
    assert [t for t in found if t not in schema] == [], "a policy names a table the schema lacks"


def test_every_column_a_policy_names_exists(memory_db: CyllamaDB) -> None:
    schema = _schema(memory_db)
    for policy in export.policies():
        named = {
            *policy.key, *policy.content, *policy.bookkeeping, *policy.time_columns,
            *policy.ms_time_columns, *policy.json_columns, *policy.secret_columns,
            *policy.secret_flag_columns, *(policy.redact_text_except or ()),
            *([policy.newer_by] if policy.newer_by else []),
            *(c for check in policy.row_checks for c in check.columns),
            *policy.recompute_inputs(),
        }
        missing = named - set(schema[policy.table])
        assert not missing, f"{policy.table}: {sorted(missing)} are not columns"
        if policy.merge == "keyed":
            assert policy.newer_by, f"{policy.table}: on_conflict='newer' needs newer_by"


def test_every_time_column_is_checked_on_import(memory_db: CyllamaDB) -> None:
    for policy in export.policies():
        if policy.merge == "derived":
            continue
        columns = _schema(memory_db)[policy.table]
        times = [c for c in columns if c.endswith("_at") or c == "timestamp"]
        assert set(times) <= set(policy.checked_times), f"{policy.table}: declare its time columns"


def test_store_objects_declare_the_tables_they_own() -> None:
    for module in STORE_MODULES:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Store) and cls.__module__ == module.__name__ and cls.tables:
                declared = {p.table for p in module.EXPORT_POLICY}  # derived tables too: rebuilt on import
                assert set(cls.tables) == declared, cls.__name__


def test_the_metadata_policy_never_imports_the_reserved_keys() -> None:
    [policy] = metadata.EXPORT_POLICY
    assert policy.local_keys == metadata.RESERVED_METADATA_KEYS


def test_the_models_policy_redacts_every_secret_parameter() -> None:
    from cyllama_db.stores.params import PARAMS

    [policy] = registry.EXPORT_POLICY
    assert set(policy.secret_columns) == {p.name for p in PARAMS if p.secret} == {"hf_token", "api_key"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"merge": "merge"}, "must be one of"),
        ({"merge": "append", "key": ("id",)}, "merge='keyed' only"),
        ({"merge": "derived", "local_keys": ("x",)}, "merge='keyed' only"),
        ({"merge": "append", "newer_by": "created_at"}, "merge='keyed' only"),
        ({"key": ("a", "b"), "local_keys": ("x",)}, "one-column key"),
        ({"time_columns": ("t",), "ms_time_columns": ("t",)}, "seconds and milliseconds"),
        ({"secret_columns": ("token",)}, "need merge='keyed' with a key"),
        ({"merge": "append", "redact_text_except": ()}, "need merge='keyed' with a key"),
    ],
)
def test_a_contradictory_policy_is_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TablePolicy("t", **fields)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TablePolicy("")
    with pytest.raises(ValueError, match="two export policies"):
        by_table([TablePolicy("t"), TablePolicy("t")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        TablePolicy("t").table = "u"  # type: ignore[misc]


def _string_constants(path: Path) -> list[str]:
    """The string literals of a module, without its docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_export_and_import_name_no_table_and_no_column_of_a_store() -> None:
    """Every table rule lives in a store's policy: the exporter and importer are generic."""
    names = {p.table for p in export.policies()}
    for policy in export.policies():
        names.update(policy.key, policy.content, policy.bookkeeping, policy.secret_columns,
                     policy.secret_flag_columns, policy.json_columns, policy.local_keys)
    names -= {"key", "name"}  # also ordinary words of the reports and of SQLite's catalogue
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b")
    for module in (export, importer):
        assert module.__file__ is not None
        found = {m for text in _string_constants(Path(module.__file__)) for m in pattern.findall(text)}
        assert not found, f"{module.__name__} names {sorted(found)}: put the rule in the store's EXPORT_POLICY"


def test_import_applies_a_policy_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local keys, secrets and row checks come from the policies, for any table."""
    mine = CyllamaDB(tmp_path / "mine.db")
    theirs = CyllamaDB(tmp_path / "theirs.db")
    try:
        mine.set_config("token", "my-token")
        theirs.set_config("token", "their-token")
        theirs.set_config("local", "theirs")
        theirs.set_config("odd", "x")
        theirs.close()

        [config_policy] = config.EXPORT_POLICY
        changed = dataclasses.replace(
            config_policy,
            local_keys=("local",),
            secret_columns=("value",),
            row_checks=(
                *config_policy.row_checks,
                RowCheck(("key",), lambda k: int(k != "odd"), "key: not this one"),
            ),
        )
        original = export.policies

        def with_changed(db: object = None) -> list[TablePolicy]:
            return [changed if p.table == "config" else p for p in original()]

        monkeypatch.setattr(export, "policies", with_changed)
        exported = tmp_path / "redacted.db"
        with CyllamaDB(tmp_path / "theirs.db") as again:
            again.export_database(exported)
        values = dict(_rows(exported, "SELECT key, value FROM config"))
        assert set(values.values()) == {"***"}  # every config value was a secret
        report = mine.import_database(exported, on_conflict="replace")
        assert mine.get_config("local") is None  # a local key: never imported
        assert mine.get_config("token") == "my-token"  # "***" never replaces a stored secret
        assert mine.get_config("odd") is None
        assert report["tables"]["config"]["skipped_reasons"] == {"key: not this one": 1}
    finally:
        mine.close()
        theirs.close()


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
