from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyllama_db import CyllamaDB
from cyllama_db.stores.config import decode_value, encode_value

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
config_values = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers()  # big ints are stored as text, so they round-trip too
    | st.floats(allow_nan=False)
    | st.text()
    | st.none()
    | st.lists(json_values, max_size=4)
    | st.dictionaries(st.text(), json_values, max_size=4)
)


@given(value=config_values)
@settings(max_examples=200, deadline=None)
def test_encode_decode_round_trip(value: Any) -> None:
    text, value_type = encode_value("k", value)
    back = decode_value(text, value_type)
    assert back == value
    assert type(back) is type(value)


@given(value=config_values)
@settings(max_examples=60, deadline=None)
def test_round_trip_through_database(value: Any) -> None:
    with CyllamaDB(":memory:") as db:
        db.set_config("key", value)
        back = db.get_config("key")
        assert back == value
        assert type(back) is type(value)


@pytest.mark.parametrize(
    ("value", "value_type"),
    [(True, "bool"), (False, "bool"), (0, "int"), (1.0, "float"), ("1", "str"), ({"a": 1}, "json"), ([1], "json"), (None, "json")],
)
def test_value_types_as_in_the_design(any_db: CyllamaDB, value: Any, value_type: str) -> None:
    any_db.set_config("k", value)
    with any_db.pool.read() as conn:
        assert conn.execute("SELECT value_type FROM config WHERE key='k'").fetchone()[0] == value_type
    got = any_db.get_config("k")
    assert got == value and type(got) is type(value)


def test_special_floats(memory_db: CyllamaDB) -> None:
    memory_db.set_config("inf", math.inf)
    memory_db.set_config("nan", math.nan)
    assert memory_db.get_config("inf") == math.inf
    assert math.isnan(memory_db.get_config("nan"))


@pytest.mark.parametrize("bad", [object(), b"bytes", {1, 2}, (1, 2), {1: "int key"}, {"x": object()}, 3 + 4j])
def test_unsupported_value_raises_type_error_naming_key(memory_db: CyllamaDB, bad: Any) -> None:
    with pytest.raises(TypeError, match=r"'my\.key'"):
        memory_db.set_config("my.key", bad)
    assert memory_db.get_config("my.key") is None


def test_bad_keys(memory_db: CyllamaDB) -> None:
    with pytest.raises(TypeError, match="key must be a str"):
        memory_db.set_config(1, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        memory_db.get_config("")


def test_overwrite_changes_type_and_keeps_created_at(any_db: CyllamaDB) -> None:
    any_db.clock = lambda: 1000.0
    any_db.set_config("k", 1)
    any_db.clock = lambda: 2000.0
    any_db.set_config("k", "now a string")
    assert any_db.get_config("k") == "now a string"
    with any_db.pool.read() as conn:
        created, updated = conn.execute("SELECT created_at, updated_at FROM config").fetchone()
    assert (created, updated) == (1000.0, 2000.0)


def test_get_all_and_delete(any_db: CyllamaDB) -> None:
    any_db.set_config("b", 2)
    any_db.set_config("a", [1, "x"])
    assert any_db.get_all_config() == {"a": [1, "x"], "b": 2}
    assert list(any_db.get_all_config()) == ["a", "b"]
    assert any_db.delete_config("a") is True
    assert any_db.delete_config("a") is False
    assert any_db.get_config("a", "gone") == "gone"


def test_default_returned_when_absent(memory_db: CyllamaDB) -> None:
    assert memory_db.get_config("nope") is None
    assert memory_db.get_config("nope", 42) == 42


def test_config_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with CyllamaDB(path) as db:
        db.set_config("defaults", {"temperature": 0.7, "n_gpu_layers": 99, "stop": ["\n"]})
    with CyllamaDB(path) as db:
        assert db.get_config("defaults") == {"temperature": 0.7, "n_gpu_layers": 99, "stop": ["\n"]}


def test_int_and_float_subclasses_are_stored_as_their_numbers(memory_db: CyllamaDB) -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 7

    class Meters(float):
        def __repr__(self) -> str:
            return f"{float(self)} m"

    memory_db.set_config("color", Color.RED)
    memory_db.set_config("length", Meters(2.5))
    assert memory_db.get_config("color") == 7 and type(memory_db.get_config("color")) is int
    assert memory_db.get_config("length") == 2.5 and type(memory_db.get_config("length")) is float
