"""``@cached``: persistent memoisation in the response cache.

Works on plain functions (``@cached`` or ``@cached(ttl=..., db=...)``), on
methods, and on an :class:`~cyllama_db.LLM`
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

from ._time import parse_duration
from .errors import UncacheableError
from .llm.model import LLM
from .llm.options import _check_db_arg, _resolve_db
from .llm.stream import Stream
from .stores.keys import (
    _UNBOUND,
    SingleFlight,
    bound_instance,
    callable_identity,
    canonical_json,
    check_text,
    function_key,
    key_material,
    keyable,
)
from .types import Response

if TYPE_CHECKING:
    from .db.facade import CyllamaDB

__all__ = ["AsyncCachedFunction", "BoundCachedFunction", "CachedFunction", "CachedLLM", "cached"]

logger = logging.getLogger("cyllama_db.cache")

R = TypeVar("R")

_RESPONSE_TAG = "__cyllama_db.Response__"
_flights: SingleFlight[Any] = SingleFlight()


def _flight_wait() -> float | None:
    """How long a miss waits for another machine computing the same call: the model wait timeout."""
    from .llm.locks import _UNSET, _wait_timeout

    return _wait_timeout(_UNSET)


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


def _function_name(fn: Callable[..., Any], owner: Any = _UNBOUND) -> str:
    """What a function's entries are stored under: ``module.qualname``, plus a digest
    of its code and captured values for a lambda or local function. ``owner``: the
    object a builtin method is bound to (its module is the owner class's)."""
    module = getattr(fn, "__module__", None) or (type(owner).__module__ if owner is not _UNBOUND else "?")
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(qualname, str):
        # Never a repr: it holds a memory address, and would differ in every process.
        raise UncacheableError(
            f"cached(): cannot tell what {type(fn).__name__} object is called (it has no "
            "__qualname__); pass name='...' to key its entries by that name"
        )
    name = f"{module}.{qualname}"
    if "<" in qualname and isinstance(fn, types.FunctionType):
        # Every lambda is "<lambda>" and a factory's closures share a
        # qualname: the name alone would let them serve each other's results.
        identity = canonical_json(callable_identity(fn))
        name += "@" + hashlib.sha256(identity.encode("ascii")).hexdigest()[:16]
    return name


def _target(fn: Any) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any]:
    """What calling ``fn`` computes: ``(function, leading args, keywords, owner)``.

    ``obj.method(x)`` is ``method(obj, x)``, ``partial(f, 1)(x)`` is ``f(1, x)``
    and a callable object's ``obj(x)`` is ``type(obj).__call__(obj, x)``: the
    object (and a partial's arguments) are then part of every key, exactly as
    when the method itself is decorated in its class body. ``owner`` is the
    object a builtin method (``some_dict.get``) is bound to, else ``_UNBOUND``.
    """
    lead: tuple[Any, ...] = ()
    keywords: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        lead = fn.args + lead
        keywords = {**fn.keywords, **keywords}
        fn = fn.func
    if isinstance(fn, types.MethodType):
        return fn.__func__, (fn.__self__, *lead), keywords, _UNBOUND
    owner = bound_instance(fn)
    if owner is not _UNBOUND or isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type)):
        return fn, lead, keywords, owner
    call = inspect.getattr_static(type(fn), "__call__", None)
    if isinstance(call, types.FunctionType):
        return call, (fn, *lead), keywords, _UNBOUND
    return fn, lead, keywords, fn  # a C-level __call__: the object is the owner


class CachedFunction(Generic[R]):
    """A function whose results are kept in the database's cache (made by :func:`cached`).

    Also a bound method, a ``functools.partial`` or a callable object: the
    object it is bound to is then part of every key (see :func:`cached`).
    """

    def __init__(
        self,
        fn: Callable[..., R],
        ttl: timedelta | None,
        db: Any,
        name: str | None = None,
        strict: bool = False,
        key: Callable[..., Any] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@cached needs a callable, got {type(fn).__name__}")
        callee, lead, keywords, owner = _target(fn)
        for candidate in (fn, callee):
            if inspect.iscoroutinefunction(candidate) and not isinstance(self, AsyncCachedFunction):
                raise TypeError("an async function is cached by AsyncCachedFunction: use cached(fn)")
            if inspect.isasyncgenfunction(candidate) or inspect.isgeneratorfunction(candidate):
                raise TypeError(
                    f"@cached does not support generator functions ({getattr(candidate, '__qualname__', fn)!r}): "
                    "a generator's values are produced lazily and cannot be stored; return a list instead"
                )
        if isinstance(fn, (types.FunctionType, types.MethodType)):
            functools.update_wrapper(self, fn)
        else:
            # Not an object's __dict__ (a Llama's would copy its whole state).
            functools.update_wrapper(self, fn, updated=())
        self.__wrapped__ = fn
        self.ttl = ttl
        self.strict = strict
        self._db = db
        self._warned = False
        self._callee = callee
        self._lead = lead
        self._keywords = keywords
        self._owner = owner
        self._key_fn = key
        #: What the entries are stored under: ``name=`` if given, else
        #: ``module.qualname`` (``@<digest>`` added for a lambda or local function).
        self.function_name = name if name is not None else _function_name(callee, owner)
        try:
            self._signature: inspect.Signature | None = inspect.signature(callee)
        except (TypeError, ValueError):
            self._signature = None
        if key is None and self._is_bound():
            self._bound_material()  # an object with no stable identity is refused now

    def _is_bound(self) -> bool:
        return bool(self._lead or self._keywords) or self._owner is not _UNBOUND

    def _bound_material(self) -> Any:
        """The key material of what this callable is bound to (its object, a partial's arguments)."""
        data: dict[str, Any] = {
            "args": [key_material(v, "self" if i == 0 else f"args[{i}]") for i, v in enumerate(self._lead)],
            "kwargs": {k: key_material(v, k) for k, v in self._keywords.items()},
        }
        if self._owner is not _UNBOUND:
            data["self"] = key_material(self._owner, "self")
        return data

    @property
    def _cyllama_cache_name(self) -> str:
        # How a lambda or local function capturing this one identifies it.
        if not self._is_bound():
            return self.function_name
        bound = canonical_json(self._bound_material())
        return self.function_name + "@" + hashlib.sha256(bound.encode("ascii")).hexdigest()[:16]

    def _args_json(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self._lead:
            args = self._lead + args
        if self._keywords:
            kwargs = {**self._keywords, **kwargs}
        bound = None
        if self._signature is not None:
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.function_name}(): {exc}") from None
        if self._key_fn is not None:
            # key= wins over everything: what it returns is the whole key material.
            owner = () if self._owner is _UNBOUND else (self._owner,)
            material = self._key_fn(*owner, *args, **kwargs)
            try:
                return canonical_json({"__key__": keyable(material, "key()")})
            except (UncacheableError, ValueError, RecursionError) as exc:
                raise UncacheableError(
                    f"{self.function_name}: the key= function must return JSON-able data (str, "
                    f"numbers, bool, None, lists, dicts with str keys): {exc}"
                ) from None
        if bound is not None:
            bound.apply_defaults()
            # f(1), f(a=1) and f(1, b=<default>) are the same call.
            data: Any = {name: key_material(value, name) for name, value in bound.arguments.items()}
        else:
            data = {
                "args": [key_material(v, f"args[{i}]") for i, v in enumerate(args)],
                "kwargs": {k: key_material(v, k) for k, v in kwargs.items()},
            }
        if self._owner is not _UNBOUND:
            data["__self__"] = key_material(self._owner, "self")
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
            # Across machines too (PostgreSQL: an advisory lock, waited for as
            # long as a model is: $CYLLAMA_MODEL_WAIT_TIMEOUT); re-checked under it.
            with database.backend.flight("@cached:" + key, _flight_wait()):
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
                self._store(database, key, args_json, text)
                return result

        result, _shared = _flights.run(key, compute)
        return result

    def _store(self, database: CyllamaDB, key: str, args_json: str, text: str) -> None:
        """Write one result; a failed write is logged, never raised (the call already paid for it)."""
        try:
            database.cache.put_value(
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

    @staticmethod
    def _lookup(database: CyllamaDB, key: str) -> tuple[bool, Any]:
        found, value = database.cache.get_value(key)
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
        return database.cache.delete(key=self.cache_key(*args, **kwargs)) > 0

    def cache_clear(self) -> int:
        """Forget every cached result of this function; returns how many."""
        database = _resolve_db(self._db)
        if database is None:
            return 0
        return database.cache.delete(identity="fn:" + self.function_name)

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
        # instance becomes the first argument (and part of the key). What a
        # function would not bind (a bound method, a partial...) does not.
        if instance is None or not isinstance(self.__wrapped__, types.FunctionType):
            return self
        return BoundCachedFunction(self, instance)

    def __repr__(self) -> str:
        return f"<cached {self.function_name}>"


class AsyncCachedFunction(CachedFunction[R]):
    """A cached ``async def`` function (made by :func:`cached`): ``await f(...)``.

    Keys, storage, ``cache_key``/``invalidate``/``cache_clear`` are those of
    :class:`CachedFunction`. The lookup runs on the event loop (a hit costs
    tens of microseconds; one due to write the buffered hit counts runs in a
    thread), the function itself runs as the coroutine it is, and its result
    is stored from a worker thread. Concurrent identical calls in one event
    loop run the function once: the others await the first one's result
    without holding a thread (if that first call is cancelled, one of them
    runs it instead).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _mark_coroutine_function(self)

    async def __call__(self, *args: Any, **kwargs: Any) -> R:  # type: ignore[override]
        import asyncio

        from . import aio

        fn: Any = self.__wrapped__
        database = _resolve_db(self._db)
        if database is None:
            return await fn(*args, **kwargs)
        args_json = self._args_json(args, kwargs)
        key = function_key(self.function_name, args_json)
        found, value = self._lookup(database, key)  # never writes: runs on the loop
        if found:
            return value
        state = aio._state()
        flight_key = "@cached:" + key
        while True:
            flight = state.flights.get(flight_key)
            if flight is None:
                break
            outcome = await asyncio.shield(flight)
            if outcome is aio._ABANDONED:
                continue  # the first caller was cancelled: run it (or follow a newer one)
            if isinstance(outcome, aio._Failed):
                raise outcome.error
            return outcome
        flight = state.flights[flight_key] = asyncio.get_running_loop().create_future()
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            aio._settle_flight(state, flight_key, flight, aio._ABANDONED)
            raise
        except BaseException as exc:
            aio._settle_flight(state, flight_key, flight, aio._Failed(exc))
            raise
        try:
            text = _encode_value(result, self.function_name + "()")
        except UncacheableError as exc:
            if self.strict:
                aio._settle_flight(state, flight_key, flight, aio._Failed(exc))
                raise
            self._not_stored(exc)
            text = None
        if not flight.done():
            flight.set_result(result)  # followers go on now; new callers still find it until stored
        try:
            if text is not None:
                await asyncio.to_thread(self._store, database, key, args_json, text)
        finally:
            aio._settle_flight(state, flight_key, flight, result)
        return result

    def __repr__(self) -> str:
        return f"<cached async {self.function_name}>"


def _mark_coroutine_function(obj: Any) -> None:
    """Make ``inspect``/``asyncio.iscoroutinefunction(obj)`` true (frameworks check it)."""
    import asyncio.coroutines

    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:  # Python 3.12+
        mark(obj)
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    if marker is not None:  # asyncio.iscoroutinefunction before 3.14
        obj._is_coroutine = marker


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` (a function, bound method, partial or callable object) makes a coroutine."""
    try:
        callee = _target(fn)[0]
    except Exception:
        return False
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(callee)


class BoundCachedFunction:
    """A :class:`CachedFunction` method bound to an instance: ``obj.method``.

    Calls, :meth:`cache_key` and :meth:`invalidate` pass the instance as the
    first argument, so it is part of the key (by its ``__cache_key__()``, its
    model for a ``Llama``, or its fields or plain state: see :func:`cached`);
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

    @property
    def _cyllama_cache_name(self) -> str:
        # How a lambda or local function capturing this bound method identifies it.
        identity = canonical_json(key_material(self._instance, "self"))
        return self._function._cyllama_cache_name + "@" + hashlib.sha256(identity.encode("ascii")).hexdigest()[:16]

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
    """An :class:`~cyllama_db.LLM` view that always caches, with its own TTL and database."""

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
        return database.cache.delete(key=self.cache_key(prompt, **overrides)) > 0

    def __repr__(self) -> str:
        return f"<cached {self.llm!r}>"


@overload
def cached(  # type: ignore[overload-overlap]
    fn: LLM,
    *,
    ttl: Any = ...,
    db: Any = ...,
    name: str | None = ...,
    strict: bool = ...,
    key: Callable[..., Any] | None = ...,
) -> CachedLLM: ...
@overload
def cached(
    fn: Callable[..., R],
    *,
    ttl: Any = ...,
    db: Any = ...,
    name: str | None = ...,
    strict: bool = ...,
    key: Callable[..., Any] | None = ...,
) -> CachedFunction[R]: ...
@overload
def cached(
    fn: None = ...,
    *,
    ttl: Any = ...,
    db: Any = ...,
    name: str | None = ...,
    strict: bool = ...,
    key: Callable[..., Any] | None = ...,
) -> Callable[[Any], Any]: ...


def cached(
    fn: Any = None,
    *,
    ttl: Any = None,
    db: Any = None,
    name: str | None = None,
    strict: bool = False,
    key: Callable[..., Any] | None = None,
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
    Generator functions (sync or async) are refused (``TypeError``).

    An ``async def`` function gives an :class:`AsyncCachedFunction`: ``await
    f(...)``, with the lookup on the event loop, the store in a worker
    thread, and concurrent identical calls in one loop run once.

    The wrapper has ``cache_key(*args, **kwargs)``, ``invalidate(*args,
    **kwargs)`` and ``cache_clear()``; so has a decorated method looked up
    on an instance (``obj.method.invalidate(2)``).

    Objects never share entries. A method decorated in its class body, a
    bound method (``cached(obj.method)``), a callable object
    (``cached(llama)``, keyed as ``type(obj).__call__(obj, ...)``) and an
    object passed as an argument are keyed by the object, in this order:
    its class's ``__cache_key__()`` (JSON-able data that identifies what its
    results depend on); for a ``llama_cpp.Llama``, or an object with a
    ``model_path`` and a ``create_completion`` (an ``LLM``, a wrapper), its
    model's GGUF fingerprint and the load options that change the output;
    for a dataclass its fields; for an instance of a plain module-level
    class its ``__dict__``, when every attribute can be keyed. Anything else
    (state holding a lock, a file, a C object...) raises ``UncacheableError``
    naming ``__cache_key__`` and ``key=``. Never a ``repr`` or an address:
    keys are the same in every process. A ``functools.partial`` is keyed as
    the call it makes (``partial(f, 1)(2)`` is ``f(1, 2)``).

    ``key=fn`` replaces all of that: ``fn`` is called with the call's
    arguments (and, for a method or callable object, the object first) and
    returns the JSON-able key material for the call (with the function's
    name, the whole key). Arguments are still checked against the signature.
    """
    ttl_value = _check_ttl(ttl)
    _check_db_arg(db)
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        check_text(name, "name")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a function returning the key material for a call, got {type(key).__name__}")

    def wrap(target: Any) -> Any:
        if isinstance(target, LLM):
            if name is not None or strict or key is not None:
                raise TypeError("name=, strict= and key= apply to functions; an LLM is keyed by its requests")
            return CachedLLM(target, ttl_value, db)
        if isinstance(target, (CachedFunction, CachedLLM, BoundCachedFunction)):
            raise TypeError("this is already cached; apply @cached once")
        if not callable(target):
            raise TypeError(f"cached() needs a function or an LLM, got {type(target).__name__}")
        cls = AsyncCachedFunction if _is_async(target) else CachedFunction
        return cls(target, ttl_value, db, name=name, strict=strict, key=key)

    if fn is None:
        return wrap
    return wrap(fn)
