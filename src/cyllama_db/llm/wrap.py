"""``wrap(llama)``: an existing ``llama_cpp.Llama`` behind the response cache, as a drop-in.

::

    llm = Llama("model.gguf", n_ctx=2048)       # your code, unchanged
    llm = cyllama_db.wrap(llm)                  # the one added line
    out = llm.create_completion("Q: 2+2? A:", max_tokens=8)
    out["choices"][0]["text"]                   # the same dict llama-cpp-python returns

``create_completion``, ``create_chat_completion`` and ``__call__`` take
exactly llama-cpp-python's parameters (checked against the wrapped object's
own signatures, defaults included) and return exactly its types; every other
attribute is the wrapped ``Llama``'s. The cache, statistics and keys are
those of :class:`~cyllama_db.LLM`: a request made through ``wrap`` and the
same request through ``LLM``/``complete()`` on the same model file share
one entry.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..types import _CONFIG_FIELDS, GenerationConfig, Response
from .model import LLM
from .options import CacheArg, DBArg, _is_llama, _sampling_kwargs

__all__ = ["CachedLlama", "wrap"]

# llama-cpp-python parameters that are not sampling options: the request
# itself, and what is passed through to the model as it is.
_REQUEST = frozenset({"self", "prompt", "messages", "stream"})
_PASSED = frozenset({"model", "stopping_criteria", "logits_processor"})
_OURS = ("cache", "ttl", "namespace")


def _defaults(method: Any) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(method).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


class CachedLlama:
    """A ``llama_cpp.Llama`` with the response cache in front of it (made by :func:`wrap`).

    ``create_completion(prompt, ...)``, ``create_chat_completion(messages, ...)``
    and ``llm(prompt, ...)`` behave as the wrapped ``Llama``'s, plus three
    keyword arguments of cyllama-db's: ``cache`` (True, False, ``"refresh"``,
    ``"only-if-cached"``), ``ttl`` and ``namespace``. The returned dicts carry
    ``"cyllama_db": {"cache_hit": bool, "cache_key": str}``. Calls with a
    token-list prompt, ``stopping_criteria`` or ``logits_processor`` go to
    the model uncached. The wrapped ``Llama`` is :attr:`llama` (and
    ``__wrapped__``); it is never freed by this object.
    """

    def __init__(
        self,
        llama: Any,
        *,
        db: DBArg = None,
        cache: bool = True,
        wait_timeout: Any = None,
        **defaults: Any,
    ) -> None:
        if not _is_llama(llama):
            raise TypeError(
                f"wrap() needs a loaded llama_cpp.Llama, got {type(llama).__name__} "
                "(for a model file use cyllama_db.LLM(path))"
            )
        self.__wrapped__ = llama
        kinds = {
            "completion": _defaults(type(llama).create_completion),
            "chat": _defaults(type(llama).create_chat_completion),
        }
        ours = {name: defaults.pop(name) for name in _OURS if name in defaults}
        unknown = [name for name in defaults if not any(name in d for d in kinds.values())]
        if unknown:
            raise TypeError(
                f"wrap() got an unexpected keyword argument {unknown[0]!r}: defaults must be "
                "parameters of Llama.create_completion or create_chat_completion"
            )
        if "cache" in ours:
            cache = ours.pop("cache")
        self._call_defaults = ours
        self._signatures = {
            "completion": inspect.signature(type(llama).create_completion),
            "chat": inspect.signature(type(llama).create_chat_completion),
        }
        self._names = {
            kind: frozenset(sig.parameters) - {"self", "prompt", "messages"}
            for kind, sig in self._signatures.items()
        }
        # Each kind's base config: llama-cpp-python's own defaults (max_tokens=16
        # for completions, temperature=0.2 for chat...), then wrap()'s defaults.
        self._bases: dict[str, tuple[GenerationConfig, dict[str, Any]]] = {}
        for kind, base in kinds.items():
            merged = {**base, **{k: v for k, v in defaults.items() if k in base}}
            self._bases[kind] = _split(merged)
        extra: dict[str, Any] = {} if wait_timeout is None else {"wait_timeout": wait_timeout}
        self._llm = LLM(llama, db=db, cache=cache, **extra)

    # -- llama-cpp-python's API ------------------------------------------------------------------

    def create_completion(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_completion`` through the cache (same parameters, same return types)."""
        return self._run("completion", prompt, args, kwargs)

    def __call__(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        """``Llama.__call__`` (``create_completion``) through the cache."""
        return self._run("completion", prompt, args, kwargs)

    def create_chat_completion(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_chat_completion`` through the cache (same parameters, same return types)."""
        return self._run("chat", messages, args, kwargs)

    def __cache_key__(self) -> dict[str, Any]:
        """What ``@cached`` keys a wrapped method by: the model, its load options and this
        wrapper's defaults per kind (``wrap(l, max_tokens=2)`` is not ``wrap(l, max_tokens=8)``)."""
        from ..stores.keys import llama_identity

        return {
            "llama": llama_identity(self.__wrapped__),
            "defaults": {kind: base.cache_json() for kind, (base, _extra) in self._bases.items()},
            "call": {k: v for k, v in self._call_defaults.items() if k != "cache"},
        }

    @property
    def llama(self) -> Any:
        """The wrapped ``llama_cpp.Llama``."""
        return self.__wrapped__

    @property
    def llm(self) -> LLM:
        """The :class:`~cyllama_db.LLM` serving this wrapper (cache keys, database)."""
        return self._llm

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: tokenize, n_ctx, metadata...
        if name == "__wrapped__":
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return f"wrap({self.__wrapped__!r})"

    # -- the call --------------------------------------------------------------------------------

    def _run(self, kind: str, payload: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = self._parse(kind, payload, args, kwargs)
        if call.direct is not None:
            return call.direct()
        result = self._llm._request(
            call.kind, call.payload, call.stream, config=call.config, cache=call.cache, ttl=call.ttl,
            namespace=call.namespace, passthrough=call.passthrough, chunks=True,
        )  # fmt: skip
        if call.stream or not isinstance(result, Response):
            return result
        return self._as_dict(result, call.passthrough)

    def _as_dict(self, response: Response, passthrough: Mapping[str, Any]) -> Any:
        name = passthrough.get("model")
        return response.to_openai(model=name if isinstance(name, str) else str(self.__wrapped__.model_path))

    def _parse(self, kind: str, payload: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        """A llama-cpp-python call as a cached request, or as a ``direct`` call to the model
        (uncached: a token-list prompt, or a parameter cyllama-db does not know)."""
        ours = {**self._call_defaults, **{name: kwargs.pop(name) for name in _OURS if name in kwargs}}
        names = self._names[kind]
        if args or not names.issuperset(kwargs):
            signature = self._signatures[kind]
            try:
                bound = signature.bind(self.__wrapped__, payload, *args, **kwargs)
            except TypeError as exc:
                method = "create_completion" if kind == "completion" else "create_chat_completion"
                raise TypeError(f"Llama.{method}() {exc}") from None
            given = dict(bound.arguments)
            given.pop("self", None)
            payload = given.pop("prompt" if kind == "completion" else "messages")
        else:
            given = kwargs  # the common case: keywords only, all of them known
        stream = bool(given.pop("stream", False))
        config, extra = self._bases[kind]
        changes, call_extra = _split(given, config)
        passthrough = {**extra, **call_extra}
        direct: Any = None
        if kind == "completion" and not isinstance(payload, str):
            # A token-list prompt: llama-cpp-python's own path, uncached.
            method = self.__wrapped__.create_completion
            call_kwargs = _llama_kwargs(config.replace(**changes), passthrough, kind)
            direct = functools.partial(method, payload, stream=stream, **call_kwargs)
        elif any(k not in _PASSED for k in passthrough):
            # A parameter this version of cyllama-db does not know: pass it on, uncached.
            method = getattr(self.__wrapped__, "create_completion" if kind == "completion" else "create_chat_completion")
            key = "prompt" if kind == "completion" else "messages"
            call_kwargs = _llama_kwargs(config.replace(**changes), passthrough, kind)
            direct = functools.partial(method, **{key: payload}, stream=stream, **call_kwargs)
        call_config = config.replace(**changes) if changes else config
        return _Call(
            kind, payload, stream, call_config, ours.get("cache"), ours.get("ttl"), ours.get("namespace"),
            passthrough, direct,
        )  # fmt: skip

    # -- async -----------------------------------------------------------------------------------

    async def acreate_completion(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        """``create_completion`` for asyncio: the same parameters and dicts, through the same cache.

        Generation runs in a worker thread, never on the event loop; identical
        concurrent requests generate once. With ``stream=True`` the result is an
        async iterator of chunk dicts (:class:`~cyllama_db.aio.AsyncStream`).
        Cancelling the awaiting task stops the generation at its next token.
        """
        from ..aio import _wrapped_call

        return await _wrapped_call(self, self._parse("completion", prompt, args, kwargs))

    async def acreate_chat_completion(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        """``create_chat_completion`` for asyncio (see :meth:`acreate_completion`)."""
        from ..aio import _wrapped_call

        return await _wrapped_call(self, self._parse("chat", messages, args, kwargs))


class _Call(NamedTuple):
    """One parsed llama-cpp-python call (see :meth:`CachedLlama._parse`)."""

    kind: Any
    payload: Any
    stream: bool
    config: GenerationConfig
    cache: Any
    ttl: Any
    namespace: Any
    passthrough: dict[str, Any]
    direct: Any  # a partial calling the model uncached, or None


def _split(values: Mapping[str, Any], base: GenerationConfig | None = None) -> Any:
    """(config or changes, passthrough) from llama-cpp-python keyword arguments.

    With ``base`` None: a :class:`GenerationConfig` built from ``values``;
    otherwise the changes to apply to ``base`` (only those that differ).
    """
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in values.items():
        if name in _REQUEST:
            continue
        if name in _PASSED:
            if value is not None:
                extra[name] = value
            continue
        target = "stop_sequences" if name == "stop" else name
        if target == "max_tokens" and isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            value = None  # llama-cpp-python: <= 0 means "until the context is full"
        if target not in _CONFIG_FIELDS:
            extra[name] = value
            continue
        fields[target] = value
    if base is None:
        return GenerationConfig(**fields), extra
    changes = {k: v for k, v in fields.items() if _differs(getattr(base, k), v)}
    return changes, extra


def _differs(current: Any, value: Any) -> bool:
    if isinstance(current, tuple) and isinstance(value, (list, tuple, str)):
        if isinstance(value, str):
            value = [value]
        # The same stops in another order or container are no change.
        return not (all(isinstance(v, str) for v in value) and current == tuple(sorted(set(value))))
    return bool(current != value or type(current) is not type(value))


def _llama_kwargs(config: GenerationConfig, passthrough: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {**_sampling_kwargs(config, kind), **passthrough}  # type: ignore[arg-type]


def wrap(llama: Any, *, db: DBArg = None, cache: CacheArg = True, **defaults: Any) -> CachedLlama:
    """An existing ``llama_cpp.Llama`` as a cached drop-in: the one-line migration.

    Args:
        llama: a loaded ``llama_cpp.Llama``; it is used as it is (no second
            load) and never freed by the wrapper.
        db: the database (``None``: the global one, ``False``: none).
        cache: the default for calls that do not pass ``cache=``.
        **defaults: defaults for the wrapped methods' parameters
            (``temperature=0``, ``max_tokens=64``...), applied where the
            method has that parameter; ``ttl=``, ``namespace=`` and
            ``wait_timeout=`` are cyllama-db's.

    The cache key is the model file's fingerprint (the same file elsewhere
    shares entries), the load options that change the output (read from the
    ``Llama``), and every parameter that changes the output; ``seed`` is
    not part of it.
    """
    wait = defaults.pop("wait_timeout", None)
    return CachedLlama(llama, db=db, cache=cache, wait_timeout=wait, **defaults)  # type: ignore[arg-type]
