"""``@cached``: persistent memoisation in the response cache.

Works on plain functions (``@cached`` or ``@cached(ttl=..., db=...)``), on
methods, and on an :class:`~cyllama_db.inference.LLM`
(``cached(ttl=...)(llm)("prompt")``). Function entries live in the same
``cache`` table as responses (kind ``'function'``), so TTL, the size limit,
invalidation and statistics apply to them too. Arguments and return values
are stored as JSON, never pickled.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import types
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ._cacheutil import (
    SingleFlight,
    callable_identity,
    canonical_json,
    check_text,
    function_key,
    keyable,
)
from ._time import parse_duration
from .errors import UncacheableError
from .inference import LLM, Response, Stream, _check_db_arg, _resolve_db

if TYPE_CHECKING:
    from .database import CyllamaDB

__all__ = ["BoundCachedFunction", "CachedFunction", "CachedLLM", "cached"]

logger = logging.getLogger("cyllama_db.cache")

R = TypeVar("R")

_RESPONSE_TAG = "__cyllama_db.Response__"
_flights: SingleFlight[Any] = SingleFlight()


def _check_ttl(ttl: Any) -> timedelta | None:
    if ttl is None:
        return None
    try:
        value = parse_duration(ttl)
    except TypeError as exc:
        raise TypeError(f"ttl {exc}") from None
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"ttl={ttl!r} is not a usable duration ({exc}): use a timedelta, seconds or '24h'") from exc
    if value.total_seconds() <= 0:
        raise ValueError(f"ttl={ttl!r} must be positive (None = the database's cache_ttl)")
    return value


def _encode_value(value: Any, owner: str) -> str:
    """``value`` as JSON that decodes to an equal value of the same type, else UncacheableError."""
    if isinstance(value, Response):
        return json.dumps({_RESPONSE_TAG: value.to_dict()}, ensure_ascii=False, allow_nan=False)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UncacheableError(
            f"{owner} returned a value of type {type(value).__name__}, which cannot be stored as JSON ({exc}). "
            "Return str, numbers, bool, None, lists or dicts with str keys (or a Response)."
        ) from exc
    if not _same(json.loads(text), value):
        raise UncacheableError(
            f"{owner} returned a value that would come back changed from JSON (tuples become "
            "lists, non-str dict keys become str); return lists and str-keyed dicts instead"
        )
    return text


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return False
    return bool(a == b)


def _function_name(fn: Callable[..., Any]) -> str:
    """What a function's entries are stored under: ``module.qualname``, plus a digest
    of its code and captured values for a lambda or local function."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
    name = f"{module}.{qualname}"
    if "<" in qualname and isinstance(fn, types.FunctionType):
        # Every lambda is "<lambda>" and a factory's closures share a
        # qualname: the name alone would let them serve each other's results.
        identity = canonical_json(callable_identity(fn))
        name += "@" + hashlib.sha256(identity.encode("ascii")).hexdigest()[:16]
    return name


class CachedFunction(Generic[R]):
    """A function whose results are kept in the database's cache (made by :func:`cached`)."""

    def __init__(
        self,
        fn: Callable[..., R],
        ttl: timedelta | None,
        db: Any,
        name: str | None = None,
        strict: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@cached needs a callable, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError("@cached does not support async functions")
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise TypeError(
                f"@cached does not support generator functions ({getattr(fn, '__qualname__', fn)!r}): "
                "a generator's values are produced lazily and cannot be stored; return a list instead"
            )
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.ttl = ttl
        self.strict = strict
        self._db = db
        self._warned = False
        #: What the entries are stored under: ``name=`` if given, else
        #: ``module.qualname`` (``@<digest>`` added for a lambda or local function).
        self.function_name = name if name is not None else _function_name(fn)
        # How a lambda or local function capturing this one identifies it.
        self._cyllama_cache_name = self.function_name
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None

    def _args_json(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self._signature is not None:
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.function_name}(): {exc}") from None
            bound.apply_defaults()
            # f(1), f(a=1) and f(1, b=<default>) are the same call.
            data: Any = {name: keyable(value, name) for name, value in bound.arguments.items()}
        else:
            data = {
                "args": [keyable(v, f"args[{i}]") for i, v in enumerate(args)],
                "kwargs": {k: keyable(v, k) for k, v in kwargs.items()},
            }
        return canonical_json(data)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The key a call with these arguments is stored under."""
        return function_key(self.function_name, self._args_json(args, kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        database = _resolve_db(self._db)
        if database is None:
            return self.__wrapped__(*args, **kwargs)
        args_json = self._args_json(args, kwargs)
        key = function_key(self.function_name, args_json)
        found, value = self._lookup(database, key)
        if found:
            return value

        def compute() -> Any:
            found_now, value_now = self._lookup(database, key)
            if found_now:
                return value_now
            result = self.__wrapped__(*args, **kwargs)
            try:
                text = _encode_value(result, self.function_name + "()")
            except UncacheableError as exc:
                if self.strict:
                    raise
                self._not_stored(exc)
                return result
            try:
                database._cache_put(
                    key=key,
                    kind="function",
                    prompt=args_json,
                    model_path=self.function_name,
                    identity="fn:" + self.function_name,
                    config_json="{}",
                    response_text=text,
                    response_json=None,
                    ttl=self.ttl,
                )
            except Exception as exc:
                logger.warning("could not cache the result of %s: %s", self.function_name, exc, exc_info=True)
            return result

        result, _shared = _flights.run(key, compute)
        return result

    @staticmethod
    def _lookup(database: CyllamaDB, key: str) -> tuple[bool, Any]:
        found, value = database._cache_get_value(key)
        if found and isinstance(value, dict) and len(value) == 1 and _RESPONSE_TAG in value:
            response = Response.from_dict(value[_RESPONSE_TAG])
            response.cache_hit = True
            return True, response
        return found, value

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the cached result of this call; returns whether there was one."""
        database = _resolve_db(self._db)
        if database is None:
            return False
        return database._cache_delete(key=self.cache_key(*args, **kwargs)) > 0

    def cache_clear(self) -> int:
        """Forget every cached result of this function; returns how many."""
        database = _resolve_db(self._db)
        if database is None:
            return 0
        return database._cache_delete(identity="fn:" + self.function_name)

    def _not_stored(self, exc: UncacheableError) -> None:
        # The work is done: hand the result back rather than lose it, and say
        # once (loudly) why it will be computed again next time.
        if self._warned:
            logger.debug("not caching a result of %s: %s", self.function_name, exc)
            return
        self._warned = True
        logger.warning(
            "%s (the result is returned, not cached, and computed again on the next call; "
            "cached(strict=True) raises instead)",
            exc,
        )

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # Decorating a method: bind like a function would, so that the
        # instance becomes the first argument (and must then be keyable).
        if instance is None:
            return self
        return BoundCachedFunction(self, instance)

    def __repr__(self) -> str:
        return f"<cached {self.function_name}>"


class BoundCachedFunction:
    """A :class:`CachedFunction` method bound to an instance: ``obj.method``.

    Calls, :meth:`cache_key` and :meth:`invalidate` pass the instance as the
    first argument (so it must be keyable, e.g. a dataclass);
    :meth:`cache_clear` forgets the results of every instance.
    """

    __slots__ = ("_function", "_instance")

    def __init__(self, function: CachedFunction[Any], instance: Any) -> None:
        self._function = function
        self._instance = instance

    @property
    def __self__(self) -> Any:
        return self._instance

    @property
    def __func__(self) -> CachedFunction[Any]:
        return self._function

    @property
    def __wrapped__(self) -> Any:
        return self._function.__wrapped__

    @property
    def function_name(self) -> str:
        """What the entries are stored under (the method's ``function_name``)."""
        return self._function.function_name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(self._instance, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The key a call with these arguments on this instance is stored under."""
        return self._function.cache_key(self._instance, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the cached result of this call on this instance; returns whether there was one."""
        return self._function.invalidate(self._instance, *args, **kwargs)

    def cache_clear(self) -> int:
        """Forget every cached result of the method (for every instance); returns how many."""
        return self._function.cache_clear()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoundCachedFunction):
            return NotImplemented
        return self._function is other._function and self._instance is other._instance

    def __hash__(self) -> int:
        return hash((id(self._function), id(self._instance)))

    def __repr__(self) -> str:
        return f"<bound cached {self._function.function_name} of {self._instance!r}>"


class CachedLLM:
    """An :class:`~cyllama_db.inference.LLM` view that always caches, with its own TTL and database."""

    def __init__(self, llm: LLM, ttl: timedelta | None, db: Any) -> None:
        self.llm = llm
        self.ttl = ttl
        self._db = db

    def _db_arg(self) -> Any:
        # db=None on the decorator means "the LLM's own database setting".
        return self.llm._db if self._db is None else self._db

    def __call__(self, prompt: str, stream: bool = False, **overrides: Any) -> Response | Stream:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__} (use .chat() for messages)")
        return self.llm._request("completion", prompt, stream, overrides, db=self._db_arg(), cache=True, ttl=self.ttl)

    def chat(self, messages: Sequence[Mapping[str, Any]], stream: bool = False, **overrides: Any) -> Response | Stream:
        return self.llm._request("chat", messages, stream, overrides, db=self._db_arg(), cache=True, ttl=self.ttl)

    def cache_key(self, prompt: str | Sequence[Mapping[str, Any]], **overrides: Any) -> str:
        return self.llm.cache_key(prompt, **overrides)

    def invalidate(self, prompt: str | Sequence[Mapping[str, Any]], **overrides: Any) -> bool:
        """Forget the cached response to this call; returns whether there was one."""
        database = _resolve_db(self._db_arg())
        if database is None:
            return False
        return database._cache_delete(key=self.cache_key(prompt, **overrides)) > 0

    def __repr__(self) -> str:
        return f"<cached {self.llm!r}>"


@overload
def cached(  # type: ignore[overload-overlap]
    fn: LLM, *, ttl: Any = ..., db: Any = ..., name: str | None = ..., strict: bool = ...
) -> CachedLLM: ...
@overload
def cached(
    fn: Callable[..., R], *, ttl: Any = ..., db: Any = ..., name: str | None = ..., strict: bool = ...
) -> CachedFunction[R]: ...
@overload
def cached(
    fn: None = ..., *, ttl: Any = ..., db: Any = ..., name: str | None = ..., strict: bool = ...
) -> Callable[[Any], Any]: ...


def cached(
    fn: Any = None, *, ttl: Any = None, db: Any = None, name: str | None = None, strict: bool = False
) -> Any:
    """Cache a function's results, or an LLM's responses, in the database.

    Use as ``@cached``, ``@cached(ttl=timedelta(days=1), db=my_db)``, or
    ``cached(ttl=...)(llm)``. ``ttl`` None = the database's ``cache_ttl``;
    ``db`` None = the global database (for an LLM: the LLM's own setting),
    ``False`` = do not cache.

    The key is the function's module and qualified name plus its arguments
    as canonical JSON (bound to the signature, so ``f(1)`` and ``f(a=1)``
    share an entry); an argument that cannot be keyed raises ``TypeError``.
    A lambda or a function defined inside another one is also keyed by its
    code and the values it captured (so ``cached(lambda x: x + 1)`` and
    ``cached(lambda x: x * 2)`` never share entries); a captured value that
    cannot be keyed raises ``TypeError`` at decoration. ``name="..."`` keys
    the entries by that name instead of the function's (captured values
    then do not count: the name is your promise that it identifies the
    computation).

    A cached ``None`` counts as a hit. A result that cannot be stored as
    JSON is returned and not cached, with a WARNING logged (the first time
    per function); ``strict=True`` raises ``UncacheableError`` instead.
    Generator and async functions are refused (``TypeError``).

    The wrapper has ``cache_key(*args, **kwargs)``, ``invalidate(*args,
    **kwargs)`` and ``cache_clear()``; so has a decorated method looked up
    on an instance (``obj.method.invalidate(2)``).
    """
    ttl_value = _check_ttl(ttl)
    _check_db_arg(db)
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        check_text(name, "name")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")

    def wrap(target: Any) -> Any:
        if isinstance(target, LLM):
            if name is not None or strict:
                raise TypeError("name= and strict= apply to functions; an LLM is keyed by its requests")
            return CachedLLM(target, ttl_value, db)
        if isinstance(target, (CachedFunction, CachedLLM, BoundCachedFunction)):
            raise TypeError("this is already cached; apply @cached once")
        if not callable(target):
            raise TypeError(f"cached() needs a function or an LLM, got {type(target).__name__}")
        return CachedFunction(target, ttl_value, db, name=name, strict=strict)

    if fn is None:
        return wrap
    return wrap(fn)
