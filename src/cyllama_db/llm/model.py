"""``LLM``: a llama.cpp model with the persistent response cache in front of it.

A generation that was done once is not paid for again: every call first
looks its cache key up in the database (``db=None`` means the global
:func:`~cyllama_db.get_db`), and only on a miss reaches llama.cpp. Models
load lazily, on the first miss, so a process that only replays cached
answers never imports ``llama_cpp`` at all.

After every call, hit or miss, the result is handed to
``db.record_generation()`` (the statistics store) when the database is
enabled; a failure there is logged, never raised.

The request path is here; the llama.cpp side is in
:mod:`~cyllama_db.llm.generation`, argument checks in
:mod:`~cyllama_db.llm.options`, waiting in :mod:`~cyllama_db.llm.locks`,
streams in :mod:`~cyllama_db.llm.stream`, the registry status in
:mod:`~cyllama_db.llm.status`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from ..db.store import Closing
from ..errors import CacheMissError, ModelLoadError, ModelNotFoundError, UncacheableError
from ..stores.keys import (
    Cancelled,
    canonical_messages,
    chat_key,
    check_text,
    completion_key,
    load_options_json,
    model_identity,
)
from ..types import (
    _CONFIG_FIELDS,
    GenerationConfig,
    Response,
    _alias_stop,
    _as_hit,
    _unknown_message,
)
from . import generation, status
from .generation import _stat_sig, raised_logger
from .locks import _UNSET, _flight_key, _flights, _lock_for, _ModelLock, _wait_timeout
from .options import (
    _OWN_DB,
    LOAD_OPTIONS,
    CacheArg,
    DBArg,
    Kind,
    Messages,
    _adopted_load_options,
    _cache_mode,
    _check_db_arg,
    _check_load_option,
    _is_llama,
    _pop_passthrough,
    _resolve_db,
    _sampling_kwargs,
    _uncacheable,
)
from .status import _record
from .stream import Stream, live_stream, replay_stream

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

# The user-facing log category of inference (docs/logs.md), whichever module logs.
logger = logging.getLogger("cyllama_db.inference")


class LLM(Closing):
    """A llama.cpp model with a persistent response cache in front of it.

    Args:
        model_path: the ``.gguf`` file, or an already loaded
            ``llama_cpp.Llama`` (used as it is: never reloaded or freed by
            this object; its load options are read from it for cache keys).
        config: default :class:`GenerationConfig` (or a dict of its fields).
        db: the :class:`~cyllama_db.CyllamaDB` to cache in and record
            statistics to; ``None`` = the global database (:func:`~cyllama_db.get_db`,
            looked up at each call so a later ``configure_db()`` applies);
            ``False`` = no database at all.
        cache: ``False`` skips the response cache by default (statistics are
            still recorded); each call can say otherwise with ``cache=``.
        verbose: let llama.cpp print its load and timing logs to stderr.
        wait_timeout: seconds a call waits for the model while another
            thread's generation or open stream holds it, then
            ``ModelBusyError`` naming the holder; None waits forever. Default:
            ``$CYLLAMA_MODEL_WAIT_TIMEOUT`` or :data:`DEFAULT_WAIT_TIMEOUT`.
        **kwargs: ``llama_cpp.Llama`` load options (``n_ctx``,
            ``n_gpu_layers``, ``n_threads``, ``chat_format``...) go to the model;
            :class:`GenerationConfig` fields (and llama-cpp-python's ``stop``)
            override ``config``. Any other name raises ``TypeError``, and so
            does a load option of the wrong type. Those that change the output
            (``chat_format``, LoRA, RoPE, ``kv_overrides``...:
            ``cyllama_db.stores.cache.OUTPUT_LOAD_OPTIONS``) are part of the cache key.

    The model loads on the first call that misses the cache, and again if the
    file on disk changes. One generation runs at a time per ``LLM`` (llama.cpp
    contexts are not thread-safe); other threads wait. Identical concurrent
    misses generate once and share the result, streamed or not.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | Any,
        config: GenerationConfig | Mapping[str, Any] | None = None,
        db: DBArg = None,
        cache: bool = True,
        verbose: bool = False,
        *,
        wait_timeout: float | None = _UNSET,
        **kwargs: Any,
    ) -> None:
        adopted: Any = None
        if _is_llama(model_path):
            adopted = model_path
            model_path = os.fspath(adopted.model_path)
        elif not isinstance(model_path, (str, os.PathLike)):
            raise TypeError(
                "model_path must be a str, os.PathLike or a loaded llama_cpp.Llama, "
                f"got {type(model_path).__name__}"
            )
        path = os.path.abspath(os.fspath(model_path))
        if not os.path.isfile(path):
            raise ModelNotFoundError(path)
        _check_db_arg(db)
        base = GenerationConfig.coerce(config)
        if "stop" in kwargs:
            kwargs = _alias_stop(kwargs, "LLM()")
        load: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in _CONFIG_FIELDS:
                overrides[name] = value
            elif name in LOAD_OPTIONS and adopted is None:
                load[name] = value
            else:
                known = _CONFIG_FIELDS if adopted is not None else _CONFIG_FIELDS + tuple(LOAD_OPTIONS)
                hint = " (load options come from the Llama you passed)" if name in LOAD_OPTIONS else ""
                raise TypeError(_unknown_message("LLM()", name, sorted(known)) + hint)
        for flag, flag_value in (("cache", cache), ("verbose", verbose)):
            if not isinstance(flag_value, bool):
                raise TypeError(f"LLM() {flag} must be True or False, got {flag_value!r}")
        for name, value in load.items():
            load[name] = _check_load_option(name, value)
        if wait_timeout is not _UNSET:
            _wait_timeout(wait_timeout)  # checked now, resolved at each call
        self.model_path: str = path
        self.config: GenerationConfig = base.replace(**overrides)
        self.load_options: dict[str, Any] = load if adopted is None else _adopted_load_options(adopted)
        self.cache = cache
        self.verbose = verbose
        self.wait_timeout = wait_timeout
        # The load options that change the output are part of cache keys;
        # computed once, except with LoRA files, whose identity (like the
        # model's) is checked at each call.
        self._load_keys: dict[str, str] | None = (
            None
            if any(self.load_options.get(name) is not None for name in ("lora_base", "lora_path"))
            else {kind: load_options_json(self.load_options, kind) for kind in ("completion", "chat")}
        )
        self._db = db
        self._adopted = adopted is not None
        self._llama: Any = adopted
        self._loaded_sig: tuple[int, int, int, int] | None = _stat_sig(path) if adopted is not None else None
        self._lock = _lock_for(adopted) if adopted is not None else _ModelLock()
        self._active_stream: weakref.ref[Stream] | None = None
        # The registry entries this LLM serves (LLM.from_registry, complete(model=...)).
        self._registry = status.RegistryStatus(in_memory=adopted is not None)

    @classmethod
    def from_registry(
        cls,
        model: int | str,
        db: DBArg = None,
        config: GenerationConfig | Mapping[str, Any] | None = None,
        cache: bool = True,
        **overrides: Any,
    ) -> LLM:
        """An ``LLM`` for a registered model (``db.save_model``/``db.register_model``), by name or id.

        Its stored parameters become the ``llama_cpp.Llama`` load options
        (``ctx_size`` -> ``n_ctx``, ``gpu_layers``, cache types...) and the
        default :class:`GenerationConfig` (temperature, top_k, ``predict`` as
        max_tokens, seed...). ``config`` replaces the stored sampling defaults;
        ``overrides`` (load options, ``GenerationConfig`` fields, ``verbose``)
        win over both. ``db`` holds the registry and is used as for
        :class:`LLM` (``None`` = the global database).

        Registry bookkeeping: the entry's ``last_used_at`` is set now; its
        status becomes ``running`` when the model actually loads (the first
        call that misses the cache), ``stopped`` again when :meth:`close`
        frees it (or the ``with`` block ends), and ``error`` when its file is
        missing or llama.cpp cannot load it.
        """
        registry_db, record, kwargs, base = status._from_registry(model, db, config, "LLM.from_registry()")
        path = kwargs.pop("model_path")
        try:
            llm = cls(path, config=base, db=db, cache=cache, **{**kwargs, **overrides})
        except ModelLoadError:
            registry_db.mark_model_loaded(record["id"], status="error")
            raise
        registry_db.mark_model_loaded(record["id"], status=None)
        llm._registry.serve(registry_db, int(record["id"]))
        return llm

    # -- public API ------------------------------------------------------------------------------

    @overload
    def __call__(
        self,
        prompt: str,
        stream: Literal[False] = False,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Response: ...

    @overload
    def __call__(
        self,
        prompt: str,
        stream: Literal[True],
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Stream: ...

    def __call__(
        self,
        prompt: str,
        stream: bool = False,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Response | Stream:
        """Complete ``prompt`` (plain text, no chat template): a :class:`Response`, or a :class:`Stream` of text chunks.

        ``overrides`` are :class:`GenerationConfig` fields under their own or
        llama-cpp-python's names (``stop``, ``grammar``, ``suffix``, ``echo``,
        ``logprobs``, ``response_format``...), plus ``stopping_criteria`` and
        ``logits_processor`` (Python callables: such a call is never cached).
        ``cache``: None (this LLM's default), True, False, ``"refresh"``
        (generate and overwrite) or ``"only-if-cached"`` (a miss raises
        :class:`~cyllama_db.CacheMissError`); ``ttl`` overrides the
        database's ``cache_ttl`` for an entry this call stores; ``namespace``
        keeps entries apart (keys, listings, ``invalidate_cache(namespace=)``).
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__} (use llm.chat() for messages)")
        return self._call("completion", prompt, stream, overrides, cache, ttl, namespace)

    @overload
    def chat(
        self,
        messages: Messages,
        stream: Literal[False] = False,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Response: ...

    @overload
    def chat(
        self,
        messages: Messages,
        stream: Literal[True],
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Stream: ...

    def chat(
        self,
        messages: Messages,
        stream: bool = False,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Response | Stream:
        """Answer chat ``messages`` through the model's chat template: a :class:`Response` or :class:`Stream`.

        Takes the same options as :meth:`__call__`, including ``tools``,
        ``tool_choice``, ``response_format``, ``logprobs``/``top_logprobs``;
        tool calls come back in :attr:`Response.tool_calls` and
        :meth:`Response.to_openai`.
        """
        return self._call("chat", messages, stream, overrides, cache, ttl, namespace)

    def _call(
        self,
        kind: Kind,
        payload: Any,
        stream: bool,
        overrides: dict[str, Any],
        cache: CacheArg,
        ttl: Any,
        namespace: str | None,
        chunks: bool = False,
    ) -> Any:
        passthrough = _pop_passthrough(overrides)
        config = self.config.replace(**overrides) if overrides else self.config
        return self._request(
            kind, payload, stream, config=config, cache=cache, ttl=ttl, namespace=namespace,
            passthrough=passthrough, chunks=chunks,
        )  # fmt: skip

    @property
    def db(self) -> CyllamaDB | None:
        """The database this LLM uses right now (None when disabled or ``db=False``)."""
        return _resolve_db(self._db)

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._llama is not None

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (loads the model if needed)."""
        self._lock.acquire(self.model_path, _wait_timeout(self.wait_timeout))
        try:
            return self._load_locked()
        finally:
            self._lock.release()

    def cache_key(self, prompt: str | Messages, *, namespace: str | None = None, **overrides: Any) -> str:
        """The cache key a call with ``prompt`` (a str, or chat messages) and ``overrides`` uses."""
        from ..stores.cache import check_namespace

        config = self.config.replace(**overrides)
        identity = model_identity(self.model_path)
        space = check_namespace(namespace)
        if isinstance(prompt, str):
            check_text(prompt, "prompt")
            return completion_key(prompt, identity, config.cache_json(), self._load_key("completion"), space)
        return chat_key(canonical_messages(prompt), identity, config.cache_json(), self._load_key("chat"), space)

    def _load_key(self, kind: Kind) -> str:
        """:func:`load_options_json` of this LLM's load options for a ``kind`` request."""
        keys = self._load_keys
        return keys[kind] if keys is not None else load_options_json(self.load_options, kind)

    def _cyllama_cache_identity(self) -> dict[str, str]:
        # What a @cached lambda or local function that captures this LLM is keyed by.
        return {
            "model": model_identity(self.model_path),
            "load": self._load_key("chat"),
            "config": self.config.cache_json(),
        }

    def close(self) -> None:
        """Free the model's memory (a later call loads it again). Closes this thread's open stream.

        A ``Llama`` passed in by the caller is theirs: it is not freed.
        A registered model this LLM had marked ``running`` is marked
        ``stopped`` (unless another ``LLM`` of this process still has it
        loaded); that never raises, even when its database is closed.
        """
        stream = self._active_stream() if self._active_stream is not None else None
        if stream is not None and self._lock.owner == threading.get_ident():
            stream.close()
        if self._adopted:
            return
        self._lock.acquire(self.model_path, _wait_timeout(self.wait_timeout))
        try:
            self._free_locked()
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return f"LLM({self.model_path!r}, loaded={self.loaded})"

    # -- the request path ------------------------------------------------------------------------

    def _request(
        self,
        kind: Kind,
        payload: Any,
        stream: bool,
        overrides: Mapping[str, Any] | None = None,
        *,
        config: GenerationConfig | None = None,
        db: Any = _OWN_DB,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        passthrough: Mapping[str, Any] | None = None,
        chunks: bool = False,
    ) -> Response | Stream:
        plan = self._prepare(
            kind, payload, stream, overrides, config=config, db=db, cache=cache, ttl=ttl,
            namespace=namespace, passthrough=passthrough,
        )  # fmt: skip
        if plan.hit is not None:
            _record(plan.database, self.model_path, plan.hit, plan.config)
            return replay_stream(self, plan.hit, chunks, plan.extra) if stream else plan.hit
        return self._finish(plan, stream, chunks)

    def _prepare(
        self,
        kind: Kind,
        payload: Any,
        stream: bool,
        overrides: Mapping[str, Any] | None = None,
        *,
        config: GenerationConfig | None = None,
        db: Any = _OWN_DB,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        passthrough: Mapping[str, Any] | None = None,
    ) -> _Plan:
        """The first half of a request, which never touches the model: arguments checked,
        the key made and, unless the mode says not to, the cache looked up (``plan.hit``).

        A miss under ``cache="only-if-cached"`` raises ``CacheMissError`` here.
        The async API runs this half on the event loop and :meth:`_finish` in a thread.
        """
        started = time.perf_counter()
        if stream is not True and stream is not False:
            raise TypeError(f"stream must be True or False, got {stream!r}")
        if config is None:
            config = self.config.replace(**overrides) if overrides else self.config
        explicit = cache is not None
        mode = _cache_mode(self.cache if cache is None else cache)
        if ttl is not None:
            from ..stores.cache import _ttl_seconds

            _ttl_seconds(ttl)
        from ..stores.cache import check_namespace

        space = check_namespace(namespace)
        if kind == "chat":
            prompt_text = canonical_messages(payload)
            payload = json.loads(prompt_text)
        else:
            prompt_text = payload
            check_text(prompt_text, "prompt")
        extra = dict(passthrough or {})
        if _uncacheable(extra):
            if mode == "only":
                raise UncacheableError(
                    "cache='only-if-cached' cannot be answered: stopping_criteria/logits_processor "
                    "are Python callables, so such calls are never cached"
                )
            mode = "off"
        database = _resolve_db(self._db if db is _OWN_DB else db)
        if database is None and mode == "only":
            raise CacheMissError("cache='only-if-cached' but no database is in use (db=False or disabled)")
        if (
            mode == "use" and not explicit and database is not None
            and config.sampled and not database.settings.cache_sampled
        ):  # fmt: skip
            mode = "off"
        wait = _wait_timeout(self.wait_timeout)
        plan = _Plan(kind, payload, config, database, mode, extra, wait, started)
        if database is None or mode == "off":
            return plan

        identity = model_identity(self.model_path)
        if kind == "chat":
            key = chat_key(prompt_text, identity, config.cache_json(), self._load_key("chat"), space)
        else:
            key = completion_key(prompt_text, identity, config.cache_json(), self._load_key("completion"), space)
        plan.entry = _Entry(key, kind, prompt_text, identity, ttl, space)
        if mode == "refresh":
            return plan
        plan.hit = self._lookup(database, plan.entry, started)
        if plan.hit is None and mode == "only":
            raise CacheMissError(
                f"no cached answer for this {kind} request on {os.path.basename(self.model_path)!r} "
                f"(key {key[:16]}…) and cache='only-if-cached' forbids generating"
            )
        plan.flight_key = _flight_key(database, key)
        return plan

    def _finish(self, plan: _Plan, stream: bool, chunks: bool = False) -> Response | Stream:
        """The second half of a request :meth:`_prepare` did not answer: generate (blocking)."""
        kind, payload, config, database = plan.kind, plan.payload, plan.config, plan.database
        extra, wait, entry, cancel = plan.extra, plan.wait, plan.entry, plan.cancel
        if database is None or entry is None:
            if stream:
                return live_stream(self, kind, payload, config, database, None, extra, chunks, wait)
            response = self._generate(kind, payload, config, extra, wait, cancel)
            _record(database, self.model_path, response, config)
            return response
        if plan.flight_key is None:  # cache="refresh"
            if stream:
                return live_stream(self, kind, payload, config, database, entry, extra, chunks, wait, refresh=True)
            response = self._generate(kind, payload, config, extra, wait, cancel)
            response._key = entry.key
            self._store(database, entry, config, response)
            _record(database, self.model_path, response, config)
            return response

        flight_key, started = plan.flight_key, plan.started
        # A stream joins a generation of the same request already under way
        # (waiting for it, as it would wait for the model); otherwise it leads
        # from its first chunk on (see live_stream).
        if stream and not _flights.in_flight(flight_key):
            return live_stream(self, kind, payload, config, database, entry, extra, chunks, wait)

        def lead() -> Response:
            # Across machines too (PostgreSQL: an advisory lock; SQLite: nothing
            # more). Re-check under both flights: a leader that finished just
            # before this call registered (here or on another machine) has
            # already stored its answer.
            with database.backend.flight(entry.key, wait):
                again = self._lookup(database, entry, started)
                if again is not None:
                    return again
                response = self._generate(kind, payload, config, extra, wait, cancel)
                response._key = entry.key
                self._store(database, entry, config, response)
                return response

        response, shared = _flights.run(flight_key, lead, timeout=wait)
        if shared or response.cache_hit:
            response = _as_hit(response, started)
        _record(database, self.model_path, response, config)
        return replay_stream(self, response, chunks, extra) if stream else response

    def _lookup(self, db: CyllamaDB, entry: _Entry, started: float) -> Response | None:
        hit = db.cache.lookup(entry.key, self.model_path, started)
        if hit is not None:
            hit.kind = entry.kind
            hit._key = entry.key
        return hit

    def _store(self, db: CyllamaDB, entry: _Entry, config: GenerationConfig, response: Response) -> None:
        try:
            db.cache.store_response(
                key=entry.key,
                kind=entry.kind,
                prompt=entry.prompt_text,
                model_path=self.model_path,
                identity=entry.identity,
                config=config,
                response=response,
                ttl=entry.ttl,
                namespace=entry.namespace,
            )
        except Exception as exc:
            # Losing a cache write must not lose the generation it paid for.
            logger.warning("could not cache the response for %s: %s", self.model_path, exc, exc_info=True)

    # -- generation ------------------------------------------------------------------------------

    @contextmanager
    def _model(self, wait: float | None) -> Iterator[Any]:
        self._lock.acquire(self.model_path, wait)
        try:
            yield self._load_locked()
        finally:
            self._lock.release()

    def _generate(
        self,
        kind: Kind,
        payload: Any,
        config: GenerationConfig,
        extra: Mapping[str, Any],
        wait: float | None,
        cancel: threading.Event | None = None,
    ) -> Response:
        kwargs = {**_sampling_kwargs(config, kind), **extra}
        with self._model(wait) as llama:
            if cancel is not None and cancel.is_set():
                raise Cancelled(None)  # given up while it waited for the model: never started
            if config.grammar is not None:
                kwargs = {**_sampling_kwargs(config, kind, llama), **extra}
            response = generation.generate(llama, self.model_path, kind, payload, kwargs, cancel)
        if cancel is not None and cancel.is_set():
            # Stopped part-way: the caller is gone. Never stored; its statistics
            # are recorded by whoever catches this (as a closed stream's are).
            response.finish_reason = "cancelled"
            raise Cancelled(response)
        return response

    # -- loading ---------------------------------------------------------------------------------

    def _load_locked(self) -> Any:
        if self._adopted:
            return self._llama  # the caller's Llama: used as it is, never reloaded
        sig = _stat_sig(self.model_path)
        if self._llama is not None:
            if sig == self._loaded_sig:
                return self._llama
            logger.info("model file %s changed on disk; reloading it", self.model_path)
            self._free_locked()
        if sig is None:
            error: ModelLoadError = ModelNotFoundError(self.model_path)
            raised_logger.error("cannot load model: %s", error)
            self._registry.load_failed()
            raise error
        try:
            llama = generation.load_llama(self.model_path, self.verbose, self.load_options)
        except ModelLoadError:
            self._registry.load_failed()
            raise
        self._llama = llama
        self._loaded_sig = sig
        status.model_loaded(self)
        return llama

    def _free_locked(self) -> None:
        if self._adopted:
            return  # the caller's Llama is theirs to free
        llama, self._llama = self._llama, None
        self._loaded_sig = None
        try:
            if llama is not None:
                llama.close()
        finally:
            status.model_released(self)


@dataclass(frozen=True)
class _Entry:
    """What storing a miss needs, computed once on the lookup path."""

    key: str
    kind: Kind
    prompt_text: str
    identity: str
    ttl: Any
    namespace: str = ""


@dataclass
class _Plan:
    """A request between :meth:`LLM._prepare` (checked, keyed, looked up) and :meth:`LLM._finish`.

    ``entry`` is None when the cache is not used; ``flight_key`` None unless
    the call may share a generation (``cache=True`` on a database); ``hit``
    the cached answer, if one was found. ``cancel``, when set by the async
    API, stops the generation at its next token (see :func:`~cyllama_db.llm.generation.generate`).
    """

    kind: Kind
    payload: Any
    config: GenerationConfig
    database: CyllamaDB | None
    mode: str
    extra: dict[str, Any]
    wait: float | None
    started: float
    entry: _Entry | None = None
    hit: Response | None = None
    flight_key: str | None = None
    cancel: threading.Event | None = None
