"""``@cached`` on functions and on an LLM."""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

import cyllama_db
from cyllama_db import LLM, CyllamaDB, Response, UncacheableError, cached

T0 = 1_700_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CyllamaDB]:
    database = CyllamaDB(tmp_path / "decorators.db", cache_ttl=timedelta(hours=1))
    now = [T0]
    database.clock = lambda: now[0]  # type: ignore[method-assign]
    database.now = now  # type: ignore[attr-defined]
    yield database
    database.close()


def test_plain_decorator_uses_the_global_database(tmp_path: Path) -> None:
    cyllama_db.configure_db(path=tmp_path / "global.db")
    calls: list[int] = []

    @cached
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert square(4) == 16 and square(4) == 16 and square(5) == 25
    assert calls == [4, 5]
    assert square.__name__ == "square" and square.__wrapped__ is not None
    assert cyllama_db.get_db().get_cache_stats()["by_kind"]["function"] == 2


def test_values_come_back_with_their_types(db: CyllamaDB) -> None:
    values: dict[str, Any] = {
        "str": "text",
        "int": 3,
        "float": 2.5,
        "bool": True,
        "list": [1, "a", None, [2.0]],
        "dict": {"a": {"b": [1, 2]}, "c": None},
        "unicode": "naïve ☃",
    }
    calls: list[str] = []

    @cached(db=db)
    def get(name: str) -> Any:
        calls.append(name)
        return values[name]

    for name, value in values.items():
        assert get(name) == value
        again = get(name)
        assert again == value and type(again) is type(value)
    assert len(calls) == len(values)


def test_a_cached_none_is_a_hit(db: CyllamaDB) -> None:
    calls: list[int] = []

    @cached(db=db)
    def nothing(x: int) -> None:
        calls.append(x)

    assert nothing(1) is None and nothing(1) is None
    assert calls == [1]


def test_ttl_expires_entries(db: CyllamaDB) -> None:
    calls: list[int] = []

    @cached(ttl=timedelta(minutes=5), db=db)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    db.now[0] = T0 + 299  # type: ignore[attr-defined]
    f(1)
    db.now[0] = T0 + 300  # type: ignore[attr-defined]
    f(1)
    assert calls == [1, 1]


def test_default_ttl_comes_from_the_database(db: CyllamaDB) -> None:
    calls: list[int] = []

    @cached(db=db)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    db.now[0] = T0 + 3600  # type: ignore[attr-defined]
    f(1)
    assert calls == [1, 1]


def test_arguments_are_bound_to_the_signature(db: CyllamaDB) -> None:
    calls: list[tuple[int, int]] = []

    @cached(db=db)
    def add(a: int, b: int = 10) -> int:
        calls.append((a, b))
        return a + b

    assert add(1) == add(a=1) == add(1, 10) == add(1, b=10) == 11
    assert add(1, 2) == 3
    assert calls == [(1, 10), (1, 2)]
    assert add.cache_key(1) == add.cache_key(a=1, b=10) != add.cache_key(1, 2)


def test_keyable_argument_types(db: CyllamaDB) -> None:
    class Colour(enum.Enum):
        RED = 1

    @dataclass(frozen=True)
    class Point:
        x: int
        y: int

    calls: list[Any] = []

    @cached(db=db)
    def f(value: Any) -> str:
        calls.append(value)
        return repr(value)

    args = [(1, 2), {"k": [1, 2]}, {1, 2}, b"\x00\x01", Colour.RED, Point(1, 2), date(2024, 1, 2),
            timedelta(hours=1), Path("/tmp/x"), float("inf")]
    for arg in args:
        f(arg)
        f(arg)
    assert len(calls) == len(args)
    assert f.cache_key(1) != f.cache_key(1.0) != f.cache_key(True)


def test_unkeyable_argument_raises_type_error_naming_it(db: CyllamaDB) -> None:
    @cached(db=db)
    def f(data: Any, *, options: Any = None) -> int:
        return 1

    with pytest.raises(TypeError, match=r"'data'.*object"):
        f(object())
    with pytest.raises(UncacheableError, match="options"):
        f(1, options={"fn": lambda: 1})
    with pytest.raises(UncacheableError, match="dict key 1"):
        f({1: "a"})
    with pytest.raises(TypeError, match="unexpected keyword"):
        f(1, nope=2)


def test_methods_need_a_keyable_self(db: CyllamaDB) -> None:
    class Service:
        @cached(db=db)
        def answer(self, x: int) -> int:
            return x

    # a local class: its name does not say which class it is
    with pytest.raises(UncacheableError, match=r"'self'.*__cache_key__"):
        Service().answer(1)


@dataclass(frozen=True)
class Scaler:
    factor: int

    @cached
    def scale(self, x: int) -> int:
        CALLS.append((self.factor, x))
        return self.factor * x


CALLS: list[tuple[int, int]] = []


def test_bound_methods_expose_cache_key_and_invalidate(tmp_path: Path) -> None:
    cyllama_db.configure_db(path=tmp_path / "methods.db")
    CALLS.clear()
    a, b = Scaler(2), Scaler(3)
    assert a.scale(5) == 10 and a.scale(5) == 10 and b.scale(5) == 15
    assert CALLS == [(2, 5), (3, 5)]
    assert a.scale.cache_key(5) == Scaler.scale.cache_key(a, 5) != b.scale.cache_key(5)
    assert a.scale.invalidate(5) is True and a.scale.invalidate(5) is False
    assert a.scale(5) == 10 and CALLS[-1] == (2, 5)
    assert a.scale.__self__ is a and a.scale.__func__ is Scaler.__dict__["scale"]
    assert a.scale == a.scale and a.scale != b.scale
    assert a.scale.cache_clear() == 2


def test_unstorable_results_are_returned_with_a_warning(
    db: CyllamaDB, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    @cached(db=db)
    def returns_object() -> object:
        calls.append(1)
        return {1, 2}  # a set: no JSON form

    with caplog.at_level(logging.DEBUG, logger="cyllama_db.cache"):
        assert returns_object() == {1, 2}
        assert returns_object() == {1, 2}  # not stored: computed again
    assert len(calls) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per function, then DEBUG
    assert "returns_object" in warnings[0].getMessage() and "strict=True" in warnings[0].getMessage()
    assert db.get_cache_stats()["entries"] == 0


def test_strict_raises_for_unstorable_results(db: CyllamaDB) -> None:
    @cached(db=db, strict=True)
    def returns_object() -> object:
        return object()

    @cached(db=db, strict=True)
    def returns_tuple() -> tuple[int, int]:
        return (1, 2)

    with pytest.raises(UncacheableError, match="returns_object"):
        returns_object()
    with pytest.raises(TypeError, match="tuples become lists"):
        returns_tuple()
    with pytest.raises(TypeError, match="strict"):
        cached(strict="yes")  # type: ignore[call-overload]


def test_generator_functions_are_refused_at_decoration(db: CyllamaDB) -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def stream() -> AsyncIterator[int]:  # pragma: no cover - never iterated
        yield 1

    with pytest.raises(TypeError, match=r"generator functions.*return a list"):
        cached(db=db)(numbers)
    with pytest.raises(TypeError, match="generator functions"):
        cached(db=db)(stream)


def test_lambdas_do_not_share_entries(db: CyllamaDB) -> None:
    assert cached(lambda x: x + 1, db=db)(5) == 6
    assert cached(lambda x: x * 100, db=db)(5) == 500
    assert cached(lambda x: x + 1, db=db)(5) == 6
    # the same lambda again is the same computation: it shares its entries
    assert db.get_cache_stats()["by_kind"]["function"] == 2
    assert cached(lambda x: OFFSET + x, db=db).cache_key(1) != cached(lambda x: x + OFFSET, db=db).cache_key(1)


OFFSET = 3


def test_closures_are_keyed_by_what_they_capture(db: CyllamaDB) -> None:
    CALLS.clear()  # a global: captured values are part of the key, globals are not

    def make(k: int) -> Any:
        def scale(x: int) -> int:
            CALLS.append((k, x))
            return k * x

        return cached(scale, db=db)

    assert make(2)(5) == 10 and make(3)(5) == 15
    assert make(2)(5) == 10  # a new closure over the same value shares the entry
    assert CALLS == [(2, 5), (3, 5)]
    assert make(2).cache_key(5) != make(3).cache_key(5)

    def with_default(k: int) -> Any:
        return cached(lambda x, k=k: k + x, db=db)

    assert with_default(1)(1) == 2 and with_default(10)(1) == 11


def test_unkeyable_captures_need_a_name(db: CyllamaDB) -> None:
    lock = threading.Lock()

    def guarded(x: int) -> int:
        with lock:
            return x

    with pytest.raises(UncacheableError, match=r"captures 'lock'.*name="):
        cached(guarded, db=db)
    named = cached(guarded, db=db, name="guarded-v1")
    assert named(4) == 4 and named.function_name == "guarded-v1"
    assert named.cache_key(4) == cached(lambda x: x, db=db, name="guarded-v1").cache_key(4)


def test_name_sets_the_key_prefix(db: CyllamaDB) -> None:
    calls: list[int] = []

    @cached(db=db, name="reports.total")
    def total(x: int) -> int:
        calls.append(x)
        return x

    assert total(1) == 1 and total(1) == 1 and calls == [1]
    assert total.function_name == "reports.total"
    assert total.cache_clear() == 1
    for bad in ("", "  ", 5):
        with pytest.raises(TypeError, match="name"):
            cached(name=bad)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="name"):
        cached(name="bad \ud800")


def test_functions_do_not_share_entries(db: CyllamaDB) -> None:
    @cached(db=db)
    def one(x: int) -> str:
        return "one"

    @cached(db=db)
    def two(x: int) -> str:
        return "two"

    assert (one(1), two(1)) == ("one", "two")
    assert one.cache_key(1) != two.cache_key(1)
    # a local function: its qualified name, plus a digest of its code and captures
    name, _, digest = one.function_name.rpartition("@")
    assert name.endswith("test_functions_do_not_share_entries.<locals>.one") and len(digest) == 16


def test_invalidate_and_cache_clear(db: CyllamaDB) -> None:
    calls: list[int] = []

    @cached(db=db)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    f(2)
    assert f.invalidate(1) is True and f.invalidate(1) is False
    f(1)
    assert calls == [1, 2, 1]
    assert f.cache_clear() == 2
    f(2)
    assert calls == [1, 2, 1, 2]


def test_entries_share_the_cache_table(db: CyllamaDB) -> None:
    @cached(db=db)
    def f(x: int) -> str:
        return "v" * 100

    f(1)
    stats = db.get_cache_stats()
    assert stats["by_kind"]["function"] == 1 and stats["size_bytes"] > 100
    assert db.invalidate_cache() == 1
    db.now[0] = T0 + 3600  # type: ignore[attr-defined]
    f(2)
    db.now[0] = T0 + 7200  # type: ignore[attr-defined]
    assert db.cleanup_cache() == 1


def test_size_limit_applies_to_function_entries(tmp_path: Path) -> None:
    with CyllamaDB(tmp_path / "small.db", max_cache_size_mb=0.01) as small:

        @cached(db=small)
        def f(x: int) -> str:
            return "x" * 1000

        for i in range(50):
            f(i)
        assert small.get_cache_stats()["size_bytes"] <= 0.01 * 1_048_576


def test_db_false_and_disabled_database_pass_through() -> None:
    calls: list[int] = []

    @cached(db=False)
    def f(x: int) -> int:
        calls.append(x)
        return x

    @cached(db=CyllamaDB(enabled=False))
    def g(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    f(1)
    g(2)
    g(2)
    assert calls == [1, 1, 2, 2]
    assert f.invalidate(1) is False and g.cache_clear() == 0


def test_concurrent_identical_calls_run_once(db: CyllamaDB) -> None:
    calls: list[int] = []
    barrier = threading.Barrier(4)

    @cached(db=db)
    def slow(x: int) -> int:
        calls.append(x)
        time.sleep(0.05)  # widen the race window; correctness is asserted on `calls`
        return x * 2

    results: list[int] = []

    def worker() -> None:
        barrier.wait()
        results.append(slow(21))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [42] * 4 and calls == [21]


def test_errors_are_not_cached(db: CyllamaDB) -> None:
    calls: list[int] = []

    @cached(db=db)
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise RuntimeError("first call fails")
        return x

    with pytest.raises(RuntimeError):
        flaky(1)
    assert flaky(1) == 1 and flaky(1) == 1
    assert calls == [1, 1]


def test_bad_decorator_arguments() -> None:
    with pytest.raises(ValueError, match="ttl"):
        cached(ttl=-1)
    with pytest.raises(ValueError, match="ttl"):
        cached(ttl="whenever")
    for huge in (10**30, float("inf")):
        with pytest.raises(ValueError, match=r"ttl=.*too long"):
            cached(ttl=huge)
    with pytest.raises(TypeError, match="db must be"):
        cached(db="file.db")
    with pytest.raises(TypeError, match="function or an LLM"):
        cached(42)

    async def coroutine() -> None:  # pragma: no cover - never awaited
        pass

    # async functions are cached too (tests/test_aio.py); not refused
    assert type(cached(coroutine)).__name__ == "AsyncCachedFunction"


# -- on an LLM -------------------------------------------------------------------------------


def test_cached_llm(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = LLM(tiny_model_path, db=db, cache=False, temperature=0.0, max_tokens=8)
    wrapped = cached(ttl=timedelta(minutes=10), db=db)(llm)
    first = wrapped("Expensive prompt")
    assert not first.cache_hit
    second = wrapped("Expensive prompt")
    assert second.cache_hit and second.text == first.text
    assert not llm("Expensive prompt").cache_hit  # the LLM itself still does not cache
    db.now[0] = T0 + 600  # type: ignore[attr-defined]
    assert not wrapped("Expensive prompt").cache_hit  # the decorator's TTL, not the db's hour
    assert wrapped.cache_key("Expensive prompt") == llm.cache_key("Expensive prompt")
    assert wrapped.invalidate("Expensive prompt") is True
    chat = wrapped.chat([{"role": "user", "content": "hi"}])
    assert wrapped.chat([{"role": "user", "content": "hi"}]).text == chat.text
    llm.close()


def test_seed_example_function_returning_a_response(tiny_model_path: Path, db: CyllamaDB) -> None:
    llm = LLM(tiny_model_path, db=False, temperature=0.0, max_tokens=8)
    calls: list[str] = []

    @cached(ttl=timedelta(days=1), db=db)
    def generate_summary(text: str) -> Response:
        calls.append(text)
        return llm(f"Summarize: {text}")

    first = generate_summary("a long text")
    second = generate_summary("a long text")
    assert isinstance(second, Response) and second.text == first.text
    assert second.cache_hit and not first.cache_hit
    assert second.stats == first.stats
    assert calls == ["a long text"]
    llm.close()


# -- objects never share entries ----------------------------------------------------------------


class PlainScaler:
    """A plain class: keyed by its __dict__."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.calls: list[int] = []

    def scale(self, x: int) -> int:
        return self.factor * x


class Locked:
    """State that cannot be keyed: a lock."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.lock = threading.Lock()

    def scale(self, x: int) -> int:
        with self.lock:
            return self.factor * x

    @cached
    def decorated(self, x: int) -> int:
        return self.factor * x


class Keyed:
    """Unkeyable state, but a __cache_key__ saying what the results depend on."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.lock = threading.Lock()
        self.seen: list[int] = []

    def __cache_key__(self) -> dict[str, int]:
        return {"factor": self.factor}

    def scale(self, x: int) -> int:
        self.seen.append(x)
        return self.factor * x

    @cached
    def decorated(self, x: int) -> int:
        self.seen.append(x)
        return self.factor * x


class Slotted:
    __slots__ = ("factor",)

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def scale(self, x: int) -> int:
        return self.factor * x


class Adder:
    """A callable object."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x: int) -> int:
        return self.k + x


def test_bound_methods_key_on_their_instance(db: CyllamaDB) -> None:
    two, ten = PlainScaler(2), PlainScaler(10)
    assert cached(db=db)(two.scale)(5) == 10
    assert cached(db=db)(ten.scale)(5) == 50  # not the 10 stored for PlainScaler(2)
    assert cached(db=db)(PlainScaler(2).scale).cache_key(5) == cached(db=db)(two.scale).cache_key(5)
    assert db.get_cache_stats()["by_kind"]["function"] == 2
    ten.factor = 11  # the state is read at each call
    assert cached(db=db)(ten.scale)(5) == 55
    # cached(obj.method) keys exactly as a method decorated in its class body would
    assert cached(db=db)(two.scale).cache_key(5) != cached(db=db)(PlainScaler.scale).cache_key(ten, 5)
    assert cached(db=db)(two.scale).cache_key(5) == cached(db=db)(PlainScaler.scale).cache_key(two, 5)


def test_cache_key_protocol_identifies_the_instance(db: CyllamaDB) -> None:
    keyed = Keyed(3)  # holds a lock, but says what identifies it
    scale = cached(db=db)(keyed.scale)
    assert scale(2) == 6 and scale(2) == 6 and keyed.seen == [2]
    first_key = scale.cache_key(2)
    keyed.factor = 4  # __cache_key__ changes: so does the key
    assert scale.cache_key(2) != first_key
    assert scale(2) == 8 and keyed.seen == [2, 2]
    assert Keyed(4).decorated(2) == 8  # @cached in the class body: the same protocol
    other = Keyed(4)
    assert other.decorated(2) == 8 and other.seen == []  # a hit: same key material
    assert Keyed(5).decorated(2) == 10

    class NotJSON:
        def __cache_key__(self) -> object:
            return object()

        def m(self) -> int:
            return 1

    with pytest.raises(UncacheableError, match=r"__cache_key__\(\) must return JSON-able"):
        cached(db=db)(NotJSON().m)


def test_key_function_wins_over_everything(db: CyllamaDB) -> None:
    seen: list[tuple[Any, ...]] = []

    def key(self: Any, x: int) -> list[int]:
        seen.append((type(self).__name__, x))
        return [x]  # deliberately ignores the instance: key= is the user's promise

    assert cached(db=db, key=key)(Keyed(2).scale)(5) == 10
    assert cached(db=db, key=key)(Keyed(3).scale)(5) == 10  # served by key=, not __cache_key__
    # an unkeyable instance is fine (another method: its own entries)
    assert cached(db=db, key=key)(Locked(7).scale)(5) == 35
    assert cached(db=db, key=key)(Locked(8).scale)(5) == 35
    assert seen == [("Keyed", 5), ("Keyed", 5), ("Locked", 5), ("Locked", 5)]
    by_factor = cached(db=db, key=lambda self, x: {"f": self.factor, "x": x})
    assert by_factor(Locked(7).scale)(5) == 35 and by_factor(Locked(8).scale)(5) == 40

    @cached(db=db, key=lambda text, **_: text.lower())
    def shout(text: str, *, times: int = 1) -> str:
        return text.upper() * times

    assert shout("Hi") == "HI" and shout("hi", times=2) == "HI"  # the key says case and times do not count
    with pytest.raises(TypeError, match="unexpected keyword"):
        shout("hi", nope=1)  # still checked against the signature
    with pytest.raises(UncacheableError, match="key= function must return JSON-able"):
        cached(db=db, key=lambda x: object())(lambda x: x)(1)
    with pytest.raises(TypeError, match="key must be a function"):
        cached(key="x")  # type: ignore[call-overload]


def test_an_instance_without_stable_identity_is_refused(db: CyllamaDB) -> None:
    with pytest.raises(UncacheableError, match=r"'self' \(a .*Locked\).*lock.*__cache_key__.*key="):
        cached(db=db)(Locked(2).scale)  # at decoration, not after serving a wrong answer
    with pytest.raises(UncacheableError, match=r"__cache_key__"):
        Locked(2).decorated(1)  # in the class body: at the call
    with pytest.raises(UncacheableError, match=r"Slotted.*__cache_key__"):
        cached(db=db)(Slotted(2).scale)
    with pytest.raises(UncacheableError, match=r"'data'.*__cache_key__"):
        cached(db=db)(lambda data: 1)(Locked(1))  # an argument: the same rules
    assert db.get_cache_stats()["entries"] == 0


def test_callable_objects_partials_and_builtin_methods(db: CyllamaDB) -> None:
    assert cached(db=db)(Adder(1))(1) == 2 and cached(db=db)(Adder(100))(1) == 101
    assert cached(db=db)(Adder(1)).function_name == f"{__name__}.Adder.__call__"

    def sub(a: int, b: int) -> int:
        return a - b

    part = cached(db=db)(functools.partial(sub, 10))
    assert part(3) == 7 and cached(db=db)(functools.partial(sub, 20))(3) == 17
    assert part.cache_key(3) == cached(db=db)(sub).cache_key(10, 3)  # the same call: the same entry
    one, two = {"a": 1}, {"a": 2}
    assert cached(db=db)(one.get)("a") == 1 and cached(db=db)(two.get)("a") == 2
    with pytest.raises(UncacheableError, match="__cache_key__"):
        cached(db=db)(threading.Lock().acquire)


def test_captured_bound_methods_key_on_their_instance(db: CyllamaDB) -> None:
    def doubled(method: Any) -> Any:
        return cached(lambda x: method(x) * 2, db=db)

    assert doubled(PlainScaler(2).scale)(5) == 20 and doubled(PlainScaler(10).scale)(5) == 100
    assert doubled(Keyed(2).decorated)(1) == 4 and doubled(Keyed(3).decorated)(1) == 6
    with pytest.raises(UncacheableError, match=r"captures 'method'.*__cache_key__"):
        doubled(Locked(2).scale)


# -- a llama_cpp.Llama: its model, never its repr ------------------------------------------------


@pytest.fixture(scope="module")
def other_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("llama_cpp")
    from cyllama_db.testing import write_tiny_llama

    return Path(write_tiny_llama(tmp_path_factory.mktemp("models") / "other.gguf", seed=2))


def _llama(path: Path, **options: Any) -> Any:
    import llama_cpp

    return llama_cpp.Llama(str(path), verbose=False, n_ctx=256, **options)


def test_llama_methods_never_mix_models(
    tiny_model_path: Path, other_model_path: Path, tmp_path: Path, db: CyllamaDB
) -> None:
    first, second = _llama(tiny_model_path), _llama(other_model_path)
    call = {"prompt": "Hello", "max_tokens": 6, "temperature": 0.0}
    a = cached(db=db)(first.create_completion)(**call)
    b = cached(db=db)(second.create_completion)(**call)
    assert b["id"] != a["id"]  # generated, not served from the first model's entry
    raw = second.create_completion(**call)
    assert b["choices"][0]["text"] == raw["choices"][0]["text"] != a["choices"][0]["text"]
    assert cached(db=db)(first.create_completion)(**call)["id"] == a["id"]  # a hit
    assert db.get_cache_stats()["by_kind"]["function"] == 2
    # The model's identity is its name and GGUF fingerprint: the same file elsewhere, loaded
    # again, shares entries ...
    (tmp_path / "elsewhere").mkdir()
    copy = shutil.copy(tiny_model_path, tmp_path / "elsewhere" / tiny_model_path.name)
    again = _llama(Path(copy))
    assert cached(db=db)(again.create_completion)(**call)["id"] == a["id"]
    # ... and load options that change the output do not.
    chatml = _llama(tiny_model_path, chat_format="chatml")
    assert cached(db=db)(chatml.create_completion).cache_key(**call) != cached(db=db)(
        first.create_completion
    ).cache_key(**call)
    assert cached(db=db)(first).cache_key("Hello") != cached(db=db)(second).cache_key("Hello")
    for llama in (first, second, again, chatml):
        llama.close()


def test_llama_load_options_read_from_the_object(tiny_model_path: Path) -> None:
    from cyllama_db.stores.keys import (
        OUTPUT_LOAD_OPTIONS,
        llama_identity,
        llama_load_options,
        model_identity,
    )

    plain = _llama(tiny_model_path)
    tuned = _llama(tiny_model_path, rope_freq_base=20000.0, type_k=0, last_n_tokens_size=32, kv_overrides={"x.y": 1})
    assert set(llama_load_options(plain)) <= OUTPUT_LOAD_OPTIONS
    identity = llama_identity(plain)
    assert identity["model"] == model_identity(tiny_model_path)
    assert set(identity.get("load", {})) <= {"chat_format"}  # every option at its default: left out
    load = llama_identity(tuned)["load"]
    assert load["rope_freq_base"] == 20000.0 and load["type_k"] == 0 and load["last_n_tokens_size"] == 32
    assert load["kv_overrides"] == {"x.y": 1}
    plain.close()
    tuned.close()


_CROSS_PROCESS = textwrap.dedent(
    """
    import json, sys
    import llama_cpp
    from cyllama_db import CyllamaDB, cached

    model, db_path = sys.argv[1], sys.argv[2]
    db = CyllamaDB(db_path)
    llama = llama_cpp.Llama(model, verbose=False, n_ctx=256)
    whole = cached(db=db)(llama)("Hello", max_tokens=6, temperature=0.0)
    method = cached(db=db)(llama.create_completion)("Hi there", max_tokens=6, temperature=0.0)
    print(json.dumps({"whole": whole["id"], "method": method["id"], "entries": db.get_cache_stats()["entries"]}))
    db.close()
    """
)


def test_a_wrapped_llama_hits_in_another_process(tiny_model_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", _CROSS_PROCESS, str(tiny_model_path), str(tmp_path / "shared.db")],
            capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["entries"] == 2 and second["entries"] == 2
    # create_completion gives each generation a random id: the same id is the stored answer
    assert second["whole"] == first["whole"] and second["method"] == first["method"]


def test_cached_llm_methods_key_on_the_llm(tiny_model_path: Path, db: CyllamaDB) -> None:
    cold = LLM(tiny_model_path, db=False, temperature=0.0, max_tokens=4)
    longer = LLM(tiny_model_path, db=False, temperature=0.0, max_tokens=8)
    assert cached(db=db)(cold.chat).cache_key([{"role": "user", "content": "hi"}]) != cached(db=db)(
        longer.chat
    ).cache_key([{"role": "user", "content": "hi"}])
    short = cached(db=db)(cold.__call__)("Hello")
    long = cached(db=db)(longer.__call__)("Hello")
    assert long.stats.generated_tokens > short.stats.generated_tokens
    cold.close()
    longer.close()
