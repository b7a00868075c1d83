"""``@cached``: persistent memoisation in the response cache.

Works on plain functions (``@cached`` or ``@cached(ttl=..., db=...)``) and on
an :class:`~cyllama_db.inference.LLM` (``cached(ttl=...)(llm)("prompt")``).
Function entries live in the same ``cache`` table as responses (kind
``'function'``), so TTL, the size limit, invalidation and statistics apply to
them too. Arguments and return values are stored as JSON, never pickled.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ._cacheutil import SingleFlight, canonical_json, function_key, keyable
from ._time import parse_duration
from .errors import UncacheableError
from .inference import LLM, Response, Stream, _check_db_arg, _resolve_db

if TYPE_CHECKING:
    from .database import CyllamaDB

__all__ = ["CachedFunction", "CachedLLM", "cached"]

logger = logging.getLogger("cyllama_db.cache")

R = TypeVar("R")

_RESPONSE_TAG = "__cyllama_db.Response__"
_flights: SingleFlight[Any] = SingleFlight()


def _check_ttl(ttl: Any) -> timedelta | None:
    if ttl is None:
        return None
    try:
        value = parse_duration(ttl)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ttl={ttl!r} is not a duration: use a timedelta, seconds or '24h'") from exc
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
            f"{owner} returned a {type(value).__name__}, which cannot be stored as JSON ({exc}). "
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


class CachedFunction(Generic[R]):
    """A function whose results are kept in the database's cache (made by :func:`cached`)."""

    def __init__(self, fn: Callable[..., R], ttl: timedelta | None, db: Any) -> None:
        if inspect.iscoroutinefunction(fn):
            raise TypeError("@cached does not support async functions")
        if not callable(fn):
            raise TypeError(f"@cached needs a callable, got {type(fn).__name__}")
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.ttl = ttl
        self._db = db
        module = getattr(fn, "__module__", None) or "?"
        qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
        #: ``module.qualname``: what the entries are stored under.
        self.function_name = f"{module}.{qualname}"
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
            text = _encode_value(result, self.function_name + "()")
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

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # Decorating a method: bind like a function would, so that the
        # instance becomes the first argument (and must then be keyable).
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    def __repr__(self) -> str:
        return f"<cached {self.function_name}>"


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
def cached(fn: LLM, *, ttl: Any = ..., db: Any = ...) -> CachedLLM: ...  # type: ignore[overload-overlap]
@overload
def cached(fn: Callable[..., R], *, ttl: Any = ..., db: Any = ...) -> CachedFunction[R]: ...
@overload
def cached(fn: None = ..., *, ttl: Any = ..., db: Any = ...) -> Callable[[Any], Any]: ...


def cached(fn: Any = None, *, ttl: Any = None, db: Any = None) -> Any:
    """Cache a function's results, or an LLM's responses, in the database.

    Use as ``@cached``, ``@cached(ttl=timedelta(days=1), db=my_db)``, or
    ``cached(ttl=...)(llm)``. ``ttl`` None = the database's ``cache_ttl``;
    ``db`` None = the global database (for an LLM: the LLM's own setting),
    ``False`` = do not cache.

    The key is the function's module and qualified name plus its arguments
    as canonical JSON (bound to the signature, so ``f(1)`` and ``f(a=1)``
    share an entry); an argument that cannot be keyed raises ``TypeError``.
    A cached ``None`` counts as a hit. The wrapper has ``cache_key(*args,
    **kwargs)``, ``invalidate(*args, **kwargs)`` and ``cache_clear()``.
    """
    ttl_value = _check_ttl(ttl)
    _check_db_arg(db)

    def wrap(target: Any) -> Any:
        if isinstance(target, LLM):
            return CachedLLM(target, ttl_value, db)
        if isinstance(target, (CachedFunction, CachedLLM)):
            raise TypeError("this is already cached; apply @cached once")
        if not callable(target):
            raise TypeError(f"cached() needs a function or an LLM, got {type(target).__name__}")
        return CachedFunction(target, ttl_value, db)

    if fn is None:
        return wrap
    return wrap(fn)
