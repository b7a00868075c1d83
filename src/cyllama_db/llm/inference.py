"""The inference wrapper: ``LLM`` and ``complete()`` on llama-cpp-python, with the response cache.

A generation that was done once is not paid for again: every call first
looks its cache key up in the database (``db=None`` means the global
:func:`~cyllama_db.get_db`), and only on a miss reaches llama.cpp. Models
load lazily, on the first miss, so a process that only replays cached
answers never imports ``llama_cpp`` at all.

After every call, hit or miss, the result is handed to
``db.record_generation()`` (the statistics store) when the database is
enabled; a failure there is logged, never raised.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Union, overload

from .._validate import check_path
from ..db.store import Closing
from ..errors import (
    CacheMissError,
    ContextOverflowError,
    DatabaseClosedError,
    GenerationError,
    MissingDependencyError,
    ModelBusyError,
    ModelLoadError,
    ModelNotFoundError,
    UncacheableError,
)
from ..stores.keys import (
    Cancelled,
    SingleFlight,
    canonical_json,
    canonical_messages,
    chat_key,
    check_text,
    completion_key,
    keyable,
    load_options_json,
    model_identity,
)
from ..types import (  # noqa: F401 - re-exported: inference's names since before the split
    _CONFIG_FIELDS,
    _DEFAULT_CONFIG,
    _FLOAT_FIELDS,
    _JSON_FIELDS,
    _OPTIONAL_KEY_FIELDS,
    _REPLACED,
    _REPLACED_MAX,
    _STATS_FLOAT,
    _STATS_INT,
    _UNIT_FIELDS,
    GenerationConfig,
    GenerationStats,
    Response,
    _alias_stop,
    _as_hit,
    _carry_source,
    _check_choice,
    _check_float,
    _check_int,
    _check_request_fields,
    _check_response_format,
    _check_tool_list,
    _frozen_json,
    _normalise_bias,
    _normalise_stops,
    _unknown_message,
    hit_stats,
    response_format_schema,
)
from .openai import accumulate_chunks, plain, replay_chunks, split_text

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = [
    "LLM",
    "MAX_SHARED_MODELS",
    "GenerationConfig",
    "GenerationStats",
    "Response",
    "Stream",
    "chat",
    "complete",
    "loaded_model_paths",
    "unload_models",
]

logger = logging.getLogger("cyllama_db.inference")
# Errors this module raises to its caller are logged here: the logs store
# keeps them (log_to_db), but with no logging configured nothing prints them
# (the NullHandler keeps Python's last-resort handler off): the caller got
# the exception and decides what to show.
raised_logger = logging.getLogger("cyllama_db.inference.raised")
raised_logger.addHandler(logging.NullHandler())

Kind = Literal["completion", "chat"]
Messages = Sequence[Mapping[str, Any]]
DBArg = Union["CyllamaDB", None, bool]
#: ``cache=`` of a call: True, False, "refresh", "only-if-cached", or None (the default).
CacheArg = Union[bool, str, None]  # noqa: UP007 - a runtime alias on Python 3.10

#: How many models ``complete()``/``chat()`` keep loaded between calls (least
#: recently used beyond this are released). ``LLM`` objects own their model
#: and are not counted.
MAX_SHARED_MODELS: int = 2



def _replay_chunks(text: str) -> list[str]:
    """Split cached text into word-sized chunks that join back to exactly ``text``."""
    return split_text(text)


# What a stream's producer yields: the text piece and, for streams of
# chunk dicts (wrap()), the chunk dict itself.
Event = tuple[str, dict[str, Any] | None]


class _StreamState:
    """What a stream and its producer share.

    The producer (a generator) holds this, never the :class:`Stream`: a
    dropped stream must be freed at once by reference counting, which closes
    its generator and so releases the model; a cycle between the two would
    leave that to the garbage collector (seconds later, or never).
    """

    __slots__ = ("cache_hit", "chunks", "parts", "response")

    def __init__(self, cache_hit: bool, chunks: bool) -> None:
        self.cache_hit = cache_hit
        self.chunks = chunks
        self.parts: list[str] = []
        self.response: Response | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Stream(Closing):
    """An iterator of text chunks from ``llm(prompt, stream=True)``.

    ``cache_hit`` says whether the chunks are a replay of a cached response
    (a miss that finds, at its first chunk, that an identical generation
    answered it meanwhile replays that answer and becomes a hit then).
    ``response`` is the complete :class:`Response` once the stream is
    exhausted (at once for a hit), else None; ``text`` is what has been
    produced so far. A streamed miss is stored in the cache only when the
    stream runs to the end.

    The model is released the moment the stream ends, is closed, or is
    dropped: ``break`` out of the ``for`` loop, ``del``, or returning from
    the function that iterated it; no garbage collection is needed, and a
    partly read stream is never stored. ``with`` blocks close it too.
    """

    def __init__(
        self,
        model_path: str,
        cache_hit: bool,
        source: Callable[[_StreamState], Generator[Event, None, None]],
        *,
        chunks: bool = False,
    ) -> None:
        self.model_path = model_path
        self._state = _StreamState(cache_hit, chunks)
        self._source = source(self._state)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        while True:
            piece, _chunk = next(self._source)
            if piece:
                return piece

    @property
    def cache_hit(self) -> bool:
        """Whether this stream replays a cached (or another call's) answer."""
        return self._state.cache_hit

    @property
    def response(self) -> Response | None:
        """The complete :class:`Response` once the stream is exhausted (at once for a hit)."""
        return self._state.response

    @property
    def text(self) -> str:
        """The text received so far (all of it once the stream is exhausted)."""
        return self._state.text

    def close(self) -> None:
        """Stop the stream; an unfinished generation is abandoned and not cached."""
        self._source.close()

    def __del__(self) -> None:
        # Reached by reference counting as soon as the consumer lets go.
        source = self.__dict__.get("_source")
        if source is not None:
            source.close()

    def __repr__(self) -> str:
        state = "done" if self.response is not None else "open"
        return f"<{type(self).__name__} {os.path.basename(self.model_path)} cache_hit={self.cache_hit} {state}>"


class ChunkStream(Stream):
    """A :class:`Stream` of llama-cpp-python's chunk dicts (``wrap()``'s ``stream=True``).

    Each chunk is shaped like llama-cpp-python's own (``choices[0].text`` or
    ``choices[0].delta``) and carries the ``"cyllama_db"`` member saying
    whether it replays the cache.
    """

    def __next__(self) -> Any:
        while True:
            _piece, chunk = next(self._source)
            if chunk is not None:
                return chunk


# -- llama.cpp plumbing --------------------------------------------------------------------------

#: ``llama_cpp.Llama(...)`` load options (llama-cpp-python 0.3.x); ``seed`` is
#: deliberately absent: it is a per-call ``GenerationConfig`` field here.
LOAD_OPTIONS: Final = frozenset(
    {
        "attention_type", "chat_format", "chat_handler", "draft_model", "embedding", "flash_attn",
        "kv_overrides", "last_n_tokens_size", "logits_all", "lora_base", "lora_path", "lora_scale",
        "main_gpu", "n_batch", "n_ctx", "n_gpu_layers", "n_threads", "n_threads_batch", "n_ubatch",
        "no_perf", "numa", "offload_kqv", "op_offload", "pooling_type", "rope_freq_base",
        "rope_freq_scale", "rope_scaling_type", "split_mode", "spm_infill", "swa_full",
        "tensor_split", "tokenizer", "type_k", "type_v", "use_mlock", "use_mmap", "vocab_only",
        "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_ext_factor", "yarn_orig_ctx",
    }
)

# The types llama_cpp.Llama() takes, checked before it sees them: it reports
# a wrong one (n_ctx="big") as an error deep in its own code, which reads
# like a broken model file. Options absent here (handler objects) are not checked.
_INT_LOAD: Final = frozenset(
    {"n_ctx", "n_batch", "n_ubatch", "n_gpu_layers", "main_gpu", "split_mode", "yarn_orig_ctx",
     "pooling_type", "attention_type", "last_n_tokens_size"}
)
_OPTIONAL_INT_LOAD: Final = frozenset({"n_threads", "n_threads_batch", "rope_scaling_type", "type_k", "type_v"})
_FLOAT_LOAD: Final = frozenset(
    {"rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast",
     "yarn_beta_slow", "lora_scale"}
)
_BOOL_LOAD: Final = frozenset(
    {"vocab_only", "use_mmap", "use_mlock", "logits_all", "embedding", "offload_kqv", "flash_attn",
     "no_perf", "spm_infill"}
)
_OPTIONAL_BOOL_LOAD: Final = frozenset({"op_offload", "swa_full"})


def _check_load_option(name: str, value: Any) -> Any:
    """``value`` for load option ``name``, or ``TypeError``/``ValueError`` naming it."""

    def wrong(expected: str) -> TypeError:
        return TypeError(f"load option {name} must be {expected}, got {value!r} ({type(value).__name__})")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if name in _INT_LOAD:
        if not is_int:
            raise wrong("an int")
        if value < 0 and name in ("n_ctx", "n_batch", "n_ubatch", "last_n_tokens_size"):
            raise ValueError(f"load option {name} must be >= 0, got {value}")
    elif name in _OPTIONAL_INT_LOAD:
        if value is not None and not is_int:
            raise wrong("an int or None")
    elif name in _FLOAT_LOAD:
        if not is_int and not isinstance(value, float):
            raise wrong("a number")
        if not math.isfinite(value):
            raise ValueError(f"load option {name} must be finite, got {value!r}")
    elif name in _BOOL_LOAD:
        if not isinstance(value, bool):
            raise wrong("True or False")
    elif name in _OPTIONAL_BOOL_LOAD:
        if value is not None and not isinstance(value, bool):
            raise wrong("True, False or None")
    elif name in ("lora_base", "lora_path"):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if value is not None and not isinstance(value, str):
            raise wrong("a file path (str) or None")
    elif name == "chat_format":
        if value is not None and not isinstance(value, str):
            raise wrong("a chat format name (str) or None")
    elif name == "numa":
        if not isinstance(value, (bool, int)):
            raise wrong("a bool or an int")
    elif name == "tensor_split":
        if value is not None and (
            isinstance(value, (str, bytes))
            or not isinstance(value, Sequence)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise wrong("a list of numbers or None")
    elif name == "kv_overrides":
        if value is not None and (
            not isinstance(value, Mapping)
            or not all(isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in value.items())
        ):
            raise wrong("a dict of str keys to bool, int, float or str values, or None")
    elif name == "chat_handler" and value is not None and not callable(value):
        raise wrong("a chat completion handler (callable) or None")
    return value


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependencyError(
            "llama-cpp-python is needed to generate (cached answers replay without it): "
            "pip install 'cyllama-db[llama]'"
        ) from exc
    return llama_cpp


def _sampling_kwargs(config: GenerationConfig, kind: Kind = "completion", llama: Any = None) -> dict[str, Any]:
    """``create_completion``/``create_chat_completion`` arguments for ``config``.

    Grammars and JSON schemas are checked here, before llama.cpp sees them:
    llama.cpp parses a grammar while sampling and crashes the process on a
    bad one, so a bad grammar must never reach it. With the loaded ``llama``,
    token references (``<[id]>``, ``<|eos|>``) are checked against its
    vocabulary too.
    """
    kwargs: dict[str, Any] = {
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "top_k": config.top_k,
        "top_p": config.top_p,
        "min_p": config.min_p,
        "typical_p": config.typical_p,
        "repeat_penalty": config.repeat_penalty,
        "frequency_penalty": config.frequency_penalty,
        "presence_penalty": config.presence_penalty,
        "mirostat_mode": config.mirostat_mode,
        "mirostat_tau": config.mirostat_tau,
        "mirostat_eta": config.mirostat_eta,
        "stop": list(config.stop_sequences),
        "seed": config.seed,
        "tfs_z": config.tfs_z,
    }
    if config.logit_bias:
        kwargs["logit_bias"] = dict(config.logit_bias)
    grammar = config.grammar
    schema = response_format_schema(config.response_format)
    if kind == "completion":
        if config.suffix is not None:
            kwargs["suffix"] = config.suffix
        if config.echo:
            kwargs["echo"] = True
        if config.logprobs is not None:
            kwargs["logprobs"] = int(config.logprobs)
        if grammar is None and schema is not None:
            # Completions have no response_format in llama-cpp-python: it becomes the grammar.
            grammar = _schema_grammar(schema)
    else:
        for name in ("tools", "tool_choice", "functions", "function_call"):
            value = getattr(config, name)
            if value is not None:
                kwargs[name] = json.loads(json.dumps(value))
        for tool in (config.tools or ()):
            _check_tool_schema(tool.get("function") or {})
        for function in (config.functions or ()):
            _check_tool_schema(function)
        if schema is not None:
            _schema_grammar(schema)  # checked here; llama-cpp-python builds its own
            kwargs["response_format"] = (
                {"type": "json_object"} if schema == {} else {"type": "json_object", "schema": schema}
            )
        if config.logprobs is not None:
            kwargs["logprobs"] = bool(config.logprobs)
        if config.top_logprobs is not None:
            kwargs["top_logprobs"] = config.top_logprobs
    if grammar is not None:
        from llama_cpp import LlamaGrammar

        if llama is not None:
            from .grammar import check_gbnf

            check_gbnf(grammar, vocab=llama)
        kwargs["grammar"] = LlamaGrammar.from_string(grammar, verbose=False)
    return kwargs


def _schema_grammar(schema: Any) -> str:
    """GBNF for a JSON schema (``{}``: any JSON value), checked; JSONSchemaError otherwise."""
    from .grammar import check_json_schema

    if schema == {}:
        from llama_cpp.llama_grammar import JSON_GBNF

        return str(JSON_GBNF)
    return check_json_schema(schema)


def _check_tool_schema(function: Mapping[str, Any]) -> None:
    parameters = function.get("parameters")
    if isinstance(parameters, Mapping) and parameters:
        _schema_grammar(dict(parameters))


def _perf(llama: Any) -> tuple[float, float] | None:
    """(prompt eval ms, generation ms) from llama.cpp's context counters, if it keeps them."""
    import llama_cpp

    try:
        data = llama_cpp.llama_perf_context(llama.ctx)
    except Exception:  # pragma: no cover - very old bindings without perf counters
        return None
    if data.t_p_eval_ms == 0 and data.t_eval_ms == 0:
        return None  # no_perf=True, or nothing was evaluated
    return float(data.t_p_eval_ms), float(data.t_eval_ms)


def _reset_perf(llama: Any) -> None:
    import llama_cpp

    with contextlib.suppress(Exception):
        llama_cpp.llama_perf_context_reset(llama.ctx)


def _cancellable(llama: Any, kind: Kind, payload: Any, kwargs: dict[str, Any], cancel: threading.Event) -> Any:
    """A non-streamed generation that stops at the next token once ``cancel`` is set.

    llama-cpp-python checks ``stopping_criteria`` after every sampled token;
    ``create_chat_completion`` has no such argument but hands its prompt to
    ``create_completion``, so for chat that method is wrapped, on this
    ``Llama`` only and only for the call (the caller holds the model lock).
    """
    stopping = _stop_when(cancel)
    if kind == "completion":
        kwargs = {**kwargs, "stopping_criteria": _with_criterion(kwargs.get("stopping_criteria"), stopping)}
        return llama.create_completion(payload, stream=False, **kwargs)
    own = llama.__dict__.get("create_completion")  # an instance override (a test spy) stays in place
    inner = llama.create_completion

    def create_completion(*args: Any, **kw: Any) -> Any:
        kw["stopping_criteria"] = _with_criterion(kw.get("stopping_criteria"), stopping)
        return inner(*args, **kw)

    llama.create_completion = create_completion
    try:
        return llama.create_chat_completion(messages=payload, stream=False, **kwargs)
    finally:
        if own is None:
            del llama.create_completion
        else:
            llama.create_completion = own


def _stop_when(cancel: threading.Event) -> Callable[[Any, Any], bool]:
    def stop(_tokens: Any, _logits: Any) -> bool:
        return cancel.is_set()

    return stop


def _with_criterion(existing: Any, criterion: Callable[[Any, Any], bool]) -> Any:
    from llama_cpp import StoppingCriteriaList

    return StoppingCriteriaList([*(existing or ()), criterion])


def _make_stats(
    prompt_tokens: int | None,
    generated: int | None,
    perf: tuple[float, float] | None,
    wall_ms: float,
) -> GenerationStats:
    if perf is None:
        prompt_ms, gen_ms = None, wall_ms
    else:
        prompt_ms, gen_ms = perf
    total = prompt_tokens + generated if prompt_tokens is not None and generated is not None else None
    tps = generated / (gen_ms / 1000.0) if generated and gen_ms and gen_ms > 0 else None
    return GenerationStats(
        prompt_tokens=prompt_tokens,
        generated_tokens=generated,
        total_tokens=total,
        prompt_time_ms=prompt_ms,
        generation_time_ms=gen_ms,
        total_time_ms=wall_ms,
        tokens_per_second=tps,
    )


#: Seconds a call waits for a model that another thread's generation or
#: stream holds, and for an identical request already being generated,
#: before giving up (``ModelBusyError``) or generating on its own.
DEFAULT_WAIT_TIMEOUT: Final = 600.0


def _wait_timeout(value: Any) -> float | None:
    """``value`` (argument) > ``$CYLLAMA_MODEL_WAIT_TIMEOUT`` > :data:`DEFAULT_WAIT_TIMEOUT`; None = forever."""
    if value is _UNSET:
        raw = os.environ.get("CYLLAMA_MODEL_WAIT_TIMEOUT", "").strip()
        if not raw:
            return DEFAULT_WAIT_TIMEOUT
        if raw.lower() in ("none", "never", "forever", "inf"):
            return None
        try:
            value = float(raw)
        except ValueError:
            from ..errors import ConfigurationError

            raise ConfigurationError(
                f"CYLLAMA_MODEL_WAIT_TIMEOUT={raw!r} is not a number of seconds (or 'none')"
            ) from None
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value < 2**1023 if isinstance(value, int) else math.isfinite(value))  # 10**400: no float
        or value < 0
    ):
        raise ValueError(f"wait_timeout must be seconds >= 0 or None (wait forever), got {value!r}")
    return float(value)


_UNSET: Final[Any] = object()


class _ModelLock:
    """A model's lock that knows who holds it, so waits end with an error that says so."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None
        self.holder = ""
        self.since = 0.0

    def acquire(self, path: str, timeout: float | None = None, what: str = "a generation") -> None:
        if self.owner == threading.get_ident():
            raise ModelBusyError(
                f"this thread has an unfinished stream on {path!r}; exhaust it or call its "
                "close() (or break out of the loop and drop it) before starting another "
                "generation on the same model"
            )
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            held = time.monotonic() - self.since
            raise ModelBusyError(
                f"model {path!r} is busy: {self.holder or 'another call'} has held it for "
                f"{held:.1f} s and this call waited {timeout:g} s. Finish or close() that "
                "stream, or pass a larger wait_timeout= ($CYLLAMA_MODEL_WAIT_TIMEOUT)"
            )
        self.owner = threading.get_ident()
        self.holder = f"{what} in thread {threading.current_thread().name!r}"
        self.since = time.monotonic()

    def release(self) -> None:
        self.owner = None
        self.holder = ""
        self._lock.release()


def _stat_sig(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


# -- the database side ---------------------------------------------------------------------------


def _resolve_db(db: Any) -> CyllamaDB | None:
    """The database to use for one call, or None for "no database"."""
    if db is False:
        return None
    if db is None or db is True:
        from ..db.facade import get_db

        db = get_db()
    return db if db.enabled else None


def _check_db_arg(db: Any) -> None:
    from ..db.facade import CyllamaDB

    if db is None or isinstance(db, (bool, CyllamaDB)):
        return
    raise TypeError(f"db must be a CyllamaDB, None (the global database) or False, got {type(db).__name__}")


def _record(db: CyllamaDB | None, model_path: str, response: Response, config: GenerationConfig) -> None:
    """Hand one generation to the statistics store; never let it break the generation."""
    if db is None:
        return
    record = getattr(db, "record_generation", None)
    if record is None:
        return
    try:
        record(model_path, response, config, cache_hit=response.cache_hit)
    except Exception as exc:
        logger.warning("could not record generation statistics for %s: %s", model_path, exc, exc_info=True)


_flights: SingleFlight[Response] = SingleFlight()

# "Use the LLM's own db setting" (None already means "the global database").
_OWN_DB: Final = object()

# Every LLM that currently holds a loaded model (for loaded_model_paths()).
_loaded: weakref.WeakSet[LLM] = weakref.WeakSet()
_loaded_lock = threading.Lock()

# Registry status.  An LLM serving registered models (LLM.from_registry,
# complete/chat(model=...)) marks each entry "running" when llama.cpp loads
# the model and "stopped" when it lets the model go (close(), unload_models(),
# eviction).  Several LLMs of this process may serve one entry, keyed by
# (id(database), model id): only the last one to let go marks it stopped.
# The LLMs hold their databases, so those ids stay unique while they live,
# and an LLM dropped without close() simply leaves the weak set.
_RegistryKey = tuple[int, int]
_registry_lock = threading.Lock()
_registry_llms: weakref.WeakSet[LLM] = weakref.WeakSet()


def _set_registry_status(db: CyllamaDB, model_id: int, status: str) -> None:
    """Best effort: a status the registry cannot take must not fail a load or a close."""
    try:
        if status == "stopped":
            db.mark_model_unloaded(model_id)
        else:
            db.mark_model_loaded(model_id, status=status)
    except DatabaseClosedError:
        logger.debug("registry of model %s is closed; its status stays as it was", model_id)
    except Exception as exc:
        logger.warning(
            "could not set the registry status of model %s to %s: %s", model_id, status, exc
        )


# -- LLM -----------------------------------------------------------------------------------------


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
        # Registry entries this LLM serves / has marked running (see _registry_llms);
        # guarded by _registry_lock.
        self._registry_entries: dict[_RegistryKey, tuple[CyllamaDB, int]] = {}
        self._registry_running: set[_RegistryKey] = set()

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
        registry_db, record, kwargs, base = _from_registry(model, db, config, "LLM.from_registry()")
        path = kwargs.pop("model_path")
        try:
            llm = cls(path, config=base, db=db, cache=cache, **{**kwargs, **overrides})
        except ModelLoadError:
            registry_db.mark_model_loaded(record["id"], status="error")
            raise
        registry_db.mark_model_loaded(record["id"], status=None)
        llm._serve_registry_entry(registry_db, int(record["id"]))
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
            return self._replay(plan.hit, chunks, plan.extra) if stream else plan.hit
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
                return self._stream(kind, payload, config, database, None, extra, chunks, wait)
            response = self._generate(kind, payload, config, extra, wait, cancel)
            _record(database, self.model_path, response, config)
            return response
        if plan.flight_key is None:  # cache="refresh"
            if stream:
                return self._stream(kind, payload, config, database, entry, extra, chunks, wait, refresh=True)
            response = self._generate(kind, payload, config, extra, wait, cancel)
            response._key = entry.key
            self._store(database, entry, config, response)
            _record(database, self.model_path, response, config)
            return response

        flight_key, started = plan.flight_key, plan.started
        # A stream joins a generation of the same request already under way
        # (waiting for it, as it would wait for the model); otherwise it leads
        # from its first chunk on (see _stream).
        if stream and not _flights.in_flight(flight_key):
            return self._stream(kind, payload, config, database, entry, extra, chunks, wait)

        def lead() -> Response:
            # Re-check under the flight: a leader that finished just before
            # this call registered has already stored its answer.
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
        return self._replay(response, chunks, extra) if stream else response

    def _lookup(self, db: CyllamaDB, entry: _Entry, started: float) -> Response | None:
        hit = db.cache.lookup(entry.key, self.model_path, started)
        if hit is not None:
            hit.kind = entry.kind
            hit._key = entry.key
        return hit

    def _replay(self, response: Response, chunks: bool, extra: Mapping[str, Any]) -> Stream:
        """A stream that replays ``response`` (a hit, or another call's generation)."""
        name = _dict_model(self, extra)

        def produce(state: _StreamState) -> Generator[Event, None, None]:
            yield from _replay_events(state, response, chunks, name)

        replay = (ChunkStream if chunks else Stream)(response.model_path, response.cache_hit, produce, chunks=chunks)
        replay._state.response = response
        return replay

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
            _reset_perf(llama)
            t0 = time.perf_counter()
            try:
                if cancel is not None:
                    out = _cancellable(llama, kind, payload, kwargs, cancel)
                elif kind == "completion":
                    out = llama.create_completion(payload, stream=False, **kwargs)
                else:
                    out = llama.create_chat_completion(messages=payload, stream=False, **kwargs)
            except Exception as exc:
                raise self._generation_error(exc, llama, payload) from exc
            wall_ms = (time.perf_counter() - t0) * 1000.0
            perf = _perf(llama)
        choice = out["choices"][0]
        if kind == "completion":
            text = choice.get("text") or ""
        else:
            text = (choice.get("message") or {}).get("content") or ""
        usage = out.get("usage") or {}
        response = Response(
            text=text,
            finish_reason=choice.get("finish_reason"),
            model_path=self.model_path,
            cache_hit=False,
            stats=_make_stats(usage.get("prompt_tokens"), usage.get("completion_tokens"), perf, wall_ms),
            kind=kind,
        )
        response._source = plain(out)
        if cancel is not None and cancel.is_set():
            # Stopped part-way: the caller is gone. Never stored; its statistics
            # are recorded by whoever catches this (as a closed stream's are).
            response.finish_reason = "cancelled"
            raise Cancelled(response)
        return response

    def _stream(
        self,
        kind: Kind,
        payload: Any,
        config: GenerationConfig,
        db: CyllamaDB | None,
        entry: _Entry | None,
        extra: Mapping[str, Any],
        chunks: bool,
        wait: float | None,
        *,
        refresh: bool = False,
    ) -> Stream:
        # Load now, so a bad path or file (or grammar) fails at the call rather than at the first chunk.
        kwargs = {**_sampling_kwargs(config, kind), **extra}
        self._lock.acquire(self.model_path, wait)
        try:
            loaded = self._load_locked()
        finally:
            self._lock.release()
        if config.grammar is not None:
            kwargs = {**_sampling_kwargs(config, kind, loaded), **extra}
        name = _dict_model(self, extra)
        model_path = self.model_path

        # Everything below refers to the stream's state, never to the stream:
        # see _StreamState.
        def produce(state: _StreamState) -> Generator[Event, None, None]:
            # Single-flight from the first chunk on (not from the call: a
            # stream nobody iterates must not hold anyone up). Identical
            # requests arriving meanwhile wait for this one, as they would wait
            # for the model it holds; if it ends early (closed, dropped,
            # failed) they start over and generate themselves.
            if db is None or entry is None or refresh:
                yield from generate(state)
                return
            key = _flight_key(db, entry.key)
            role: bool | None = None
            while True:
                flight, role = _flights.join(key)
                if role is not False:
                    break
                done, result = _flights.wait(flight, wait)
                if done and result is not None:
                    yield from self._replay_into(state, result, db, config, name)
                    return
                if done is None:
                    role = None  # waited too long: generate on our own, outside the flight
                    break
            outcome: Response | None = None
            try:
                outcome = yield from generate(state)
            finally:
                if role:
                    _flights.settle(key, flight, result=outcome, abandoned=outcome is None)

        def generate(state: _StreamState) -> Generator[Event, None, Response | None]:
            """The stream's own generation: its Response if it ran to the end, else None."""
            self._lock.acquire(model_path, wait, "an open stream")
            source: Any = None
            received: list[dict[str, Any]] = []
            completed = False
            started_generation = False
            failed = False
            llama: Any = None
            hit: Response | None = None
            t0 = time.perf_counter()
            try:
                if db is not None and entry is not None and not refresh:
                    # Re-checked under the model lock: a generation of this
                    # request that ended while this stream waited has stored it.
                    hit = self._lookup(db, entry, t0)
                if hit is None:
                    llama = self._load_locked()
                    _reset_perf(llama)
                    t0 = time.perf_counter()
                    marker = {"cache_hit": False, "cache_key": None if entry is None else entry.key}
                    try:
                        if kind == "completion":
                            source = llama.create_completion(payload, stream=True, **kwargs)
                        else:
                            source = llama.create_chat_completion(messages=payload, stream=True, **kwargs)
                        started_generation = True
                        for chunk in source:
                            received.append(chunk)
                            choice = chunk["choices"][0] if chunk.get("choices") else {}
                            if kind == "completion":
                                piece = choice.get("text") or ""
                            else:
                                piece = (choice.get("delta") or {}).get("content") or ""
                            state.parts.append(piece)
                            if chunks:
                                chunk = plain(chunk) if choice.get("logprobs") is not None else dict(chunk)
                                chunk["cyllama_db"] = marker
                                yield piece, chunk
                            else:
                                yield piece, None
                    except GeneratorExit:
                        raise
                    except Exception as exc:
                        failed = True
                        raise self._generation_error(exc, llama, payload) from exc
                    completed = True
            finally:
                response = None
                # A failed generation is logged (ERROR) and raised, not recorded
                # as a result; one the consumer stopped is recorded as "cancelled".
                if started_generation and not failed:
                    if source is not None and hasattr(source, "close"):
                        source.close()
                    response = self._stream_response(
                        kind, payload, state.text, received, completed, llama, t0, name
                    )
                self._active_stream = None
                self._lock.release()
                if response is not None:
                    if completed:
                        state.response = response
                        if db is not None and entry is not None:
                            response._key = entry.key
                            self._store(db, entry, config, response)
                    _record(db, self.model_path, response, config)
            if hit is not None:
                yield from self._replay_into(state, hit, db, config, name)
                return hit
            return response if completed else None

        stream = (ChunkStream if chunks else Stream)(self.model_path, False, produce, chunks=chunks)
        self._active_stream = weakref.ref(stream)
        return stream

    def _replay_into(
        self, state: _StreamState, response: Response, db: CyllamaDB | None, config: GenerationConfig, name: str
    ) -> Iterator[Event]:
        """Make a stream a replay of ``response`` (another generation's, or a cache hit's)."""
        started = time.perf_counter()
        hit = _as_hit(response, started)
        state.cache_hit = True
        state.response = hit
        _record(db, self.model_path, hit, config)
        yield from _replay_events(state, hit, state.chunks, name)

    def _stream_response(
        self,
        kind: Kind,
        payload: Any,
        text: str,
        received: list[dict[str, Any]],
        completed: bool,
        llama: Any,
        t0: float,
        name: str,
    ) -> Response:
        wall_ms = (time.perf_counter() - t0) * 1000.0
        perf = _perf(llama)
        # Streams carry no usage block: count by re-tokenising, which matches
        # what was sampled for ordinary text (BPE round-trips).
        try:
            generated: int | None = len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0
            prompt_tokens: int | None = (
                len(llama.tokenize(payload.encode("utf-8"), add_bos=True, special=True))
                if kind == "completion"
                else None
            )
        except Exception:  # pragma: no cover - tokenising what the model produced cannot fail in practice
            generated = prompt_tokens = None
        source = plain(accumulate_chunks(received, kind, name))
        finish = source["choices"][0]["finish_reason"] if completed else "cancelled"
        source["choices"][0]["finish_reason"] = finish
        source["usage"] = {
            "prompt_tokens": prompt_tokens or 0,
            "completion_tokens": generated or 0,
            "total_tokens": (prompt_tokens or 0) + (generated or 0),
        }
        response = Response(
            text=text,
            finish_reason=finish,
            model_path=self.model_path,
            cache_hit=False,
            stats=_make_stats(prompt_tokens, generated, perf, wall_ms),
            kind=kind,
        )
        response._source = source
        return response

    def _generation_error(self, exc: Exception, llama: Any, payload: Any) -> Exception:
        message = str(exc)
        overflow = "exceed context window" in message
        if not overflow and "could not broadcast input array" in message:
            # llama-cpp-python sizes its token buffer by the n_ctx asked for,
            # while llama.cpp pads small contexts (to 256) and llama-cpp-python
            # checks against that: a prompt between the two surfaces as a
            # numpy error rather than its own check.
            overflow = True
            message = f"the prompt does not fit in n_ctx={len(llama.input_ids)}"
        if isinstance(exc, ValueError) and overflow:
            n_ctx = None
            with contextlib.suppress(Exception):
                n_ctx = min(int(llama.n_ctx()), len(llama.input_ids))
            error: Exception = ContextOverflowError(self.model_path, message, n_ctx)
        elif isinstance(exc, (ValueError, TypeError)) and "GenerationConfig" in message:
            error = exc
        else:
            error = GenerationError(f"generation with model {self.model_path!r} failed: {type(exc).__name__}: {exc}")
        # model_path and prompt fill the logs table's own columns (CyllamaDBHandler).
        prompt = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, sort_keys=True)
        raised_logger.error(
            "generation failed for %s: %s",
            self.model_path,
            error,
            # A too-long prompt is the caller's to fix and its message says how:
            # a llama_cpp traceback would only bury that line.
            exc_info=None if isinstance(error, ContextOverflowError) else exc,
            extra={"model_path": self.model_path, "prompt": prompt},
        )
        return error

    # -- registry status -------------------------------------------------------------------------

    def _serve_registry_entry(self, db: CyllamaDB, model_id: int) -> None:
        """Keep registry entry ``model_id`` of ``db`` ``running`` while this LLM has the model loaded."""
        with _registry_lock:
            self._registry_entries[(id(db), model_id)] = (db, model_id)
            if self._llama is not None:
                self._registry_loaded_locked()

    def _registry_loaded_locked(self) -> None:
        # Under _registry_lock: the model is in memory now.
        for key, (db, model_id) in self._registry_entries.items():
            if key in self._registry_running:
                continue
            self._registry_running.add(key)
            _registry_llms.add(self)
            _set_registry_status(db, model_id, "running")

    def _registry_released_locked(self) -> None:
        # Under _registry_lock: the model left memory (or this LLM stopped serving).
        others = [llm for llm in _registry_llms if llm is not self]
        for key in self._registry_running:
            if any(key in llm._registry_running for llm in others):
                continue  # another LLM of this process still has it loaded
            entry = self._registry_entries.get(key)
            if entry is not None:
                _set_registry_status(entry[0], entry[1], "stopped")
        self._registry_running.clear()
        _registry_llms.discard(self)

    def _stop_serving_registry(self) -> None:
        """Forget every registry entry (an evicted shared model): mark them stopped now."""
        with _registry_lock:
            self._registry_released_locked()
            self._registry_entries.clear()

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
            self._registry_load_failed()
            raise error
        llama_cpp = _import_llama_cpp()
        t0 = time.perf_counter()
        try:
            llama = llama_cpp.Llama(model_path=self.model_path, verbose=self.verbose, **self.load_options)
        except Exception as exc:
            error = self._load_error(exc)
            # The traceback is llama_cpp's; the error raised says what is wrong and what to do.
            raised_logger.error("cannot load model: %s", error)
            self._registry_load_failed()
            raise error from exc
        logger.info("loaded model %s in %.0f ms", self.model_path, (time.perf_counter() - t0) * 1000)
        self._llama = llama
        self._loaded_sig = sig
        with _loaded_lock:
            _loaded.add(self)
        if self._registry_entries:
            with _registry_lock:
                self._registry_loaded_locked()
        return llama

    def _registry_load_failed(self) -> None:
        with _registry_lock:
            entries = list(self._registry_entries.values())
        for db, model_id in entries:
            _set_registry_status(db, model_id, "error")

    def _load_error(self, exc: Exception) -> ModelLoadError:
        path = self.model_path
        if not os.path.exists(path):
            return ModelNotFoundError(path)
        try:
            with open(path, "rb") as handle:
                head = handle.read(4)
        except OSError as os_exc:
            return ModelLoadError(path, f"cannot read the file: {os_exc}")
        if head != b"GGUF":
            return ModelLoadError(
                path,
                f"not a GGUF file (it starts with {head!r}, a GGUF file with b'GGUF'); "
                "llama.cpp only loads .gguf models",
            )
        return ModelLoadError(
            path,
            f"llama.cpp rejected it ({type(exc).__name__}: {exc}); a truncated download, an "
            "architecture this llama.cpp build does not know, or too little memory are the usual causes",
        )

    def _free_locked(self) -> None:
        if self._adopted:
            return  # the caller's Llama is theirs to free
        llama, self._llama = self._llama, None
        self._loaded_sig = None
        with _loaded_lock:
            _loaded.discard(self)
        if llama is not None:
            llama.close()
        if self._registry_running:
            with _registry_lock:
                self._registry_released_locked()


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
    API, stops the generation at its next token (see :func:`_cancellable`).
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


def _flight_key(db: CyllamaDB, key: str) -> str:
    # Per database file (two CyllamaDB objects on one file share flights);
    # an in-memory database is its own object.
    path = db.path
    return f"{id(db)}:{key}" if path == ":memory:" else f"{path}:{key}"


def _replay_events(state: _StreamState, response: Response, chunks: bool, name: str) -> Iterator[Event]:
    """The events of a stream replaying ``response``: text pieces, and chunk dicts if asked for."""
    if not chunks:
        for piece in split_text(response.text):
            state.parts.append(piece)
            yield piece, None
        return
    kind = response.kind
    for chunk in replay_chunks(response.to_openai(name), kind):
        choice = chunk["choices"][0]
        text: str = ((choice.get("delta") or {}).get("content") if kind == "chat" else choice.get("text")) or ""
        state.parts.append(text)
        yield text, chunk


_CACHE_MODES: Final = {True: "use", False: "off", "refresh": "refresh", "only-if-cached": "only"}


def _cache_mode(value: Any) -> str:
    """``cache=`` as one of "use", "off", "refresh", "only"; TypeError/ValueError otherwise."""
    if value is True or value is False:
        return _CACHE_MODES[value]
    if isinstance(value, str):
        mode = _CACHE_MODES.get(value)
        if mode is not None:
            return mode
        raise ValueError(f"cache={value!r}: use True, False, 'refresh' or 'only-if-cached'")
    raise TypeError(f"cache must be True, False, 'refresh' or 'only-if-cached', got {value!r}")


# llama-cpp-python options that are Python objects: passed through, never cached.
_PASSTHROUGH: Final = ("stopping_criteria", "logits_processor")


def _pop_passthrough(overrides: dict[str, Any]) -> dict[str, Any]:
    return {name: overrides.pop(name) for name in _PASSTHROUGH if name in overrides}


def _uncacheable(extra: Mapping[str, Any]) -> bool:
    return any(extra.get(name) is not None for name in _PASSTHROUGH)


def _dict_model(llm: LLM, extra: Mapping[str, Any]) -> str:
    """The ``model`` of the dicts a call returns: llama-cpp-python's choice (the ``model=``
    argument, else the path the Llama was loaded from)."""
    name = extra.get("model")
    if isinstance(name, str):
        return name
    if llm._adopted and llm._llama is not None:
        return str(getattr(llm._llama, "model_path", llm.model_path))
    return llm.model_path


# -- existing Llama objects ----------------------------------------------------------------------


def _is_llama(value: Any) -> bool:
    """Whether ``value`` is a loaded ``llama_cpp.Llama`` (without importing llama_cpp)."""
    from ..stores.keys import is_llama

    return is_llama(value) and isinstance(getattr(value, "model_path", None), (str, os.PathLike))


# One lock per Llama object: two wrappers of one Llama must not run it at once.
_llama_locks: weakref.WeakKeyDictionary[Any, _ModelLock] = weakref.WeakKeyDictionary()
_llama_locks_guard = threading.Lock()


def _lock_for(llama: Any) -> _ModelLock:
    with _llama_locks_guard:
        lock = _llama_locks.get(llama)
        if lock is None:
            lock = _llama_locks[llama] = _ModelLock()
        return lock


def _auto_chat_format(llama: Any) -> str | None:
    """The chat_format llama-cpp-python picks by itself for this model (mirrors ``Llama.__init__``)."""
    try:
        from llama_cpp import llama_chat_format

        metadata = getattr(llama, "metadata", {}) or {}
        if "tokenizer.chat_template" in metadata:
            guessed = llama_chat_format.guess_chat_format_from_gguf_metadata(metadata)
            return guessed if guessed is not None else "chat_template.default"
    except Exception:  # pragma: no cover - an older llama-cpp-python
        return None
    return "llama-2"


def _adopted_load_options(llama: Any) -> dict[str, Any]:
    """The output-changing load options of a loaded Llama, as ``LLM(path, **options)`` would key them.

    Read back from the object (:func:`~cyllama_db.stores.keys.llama_load_options`),
    so that ``wrap(Llama(p, chat_format=X))`` and ``LLM(p, chat_format=X)``
    share cache entries. The chat format llama-cpp-python picked by itself is
    left out, as ``LLM(p)`` leaves it out.
    """
    from ..stores.keys import llama_load_options

    options = {name: value for name, value in llama_load_options(llama).items() if value is not None}
    if options.get("chat_handler") is None and options.get("chat_format") == _auto_chat_format(llama):
        options.pop("chat_format", None)
    return options


def loaded_model_paths() -> list[str]:
    """Absolute paths of the models this process has loaded through ``LLM``/``complete()``."""
    with _loaded_lock:
        return sorted({llm.model_path for llm in _loaded if llm.loaded})


@atexit.register
def _free_models_at_exit() -> None:
    """Free every loaded model while llama_cpp can still do it.

    Otherwise ``Llama.__del__`` runs during interpreter shutdown, after
    llama_cpp's module globals are gone, and prints an ignored TypeError.
    Registered models this process was serving are marked ``stopped``.
    """
    with _loaded_lock:
        loaded = list(_loaded)
    for llm in loaded:
        lock = llm._lock._lock
        if not lock.acquire(blocking=False):
            continue  # a generation is still running on another thread: leave it be
        try:
            llm._free_locked()
        except Exception as exc:  # pragma: no cover - exit is no time to raise
            logger.debug("could not free %s at exit: %s", llm.model_path, exc)
        finally:
            lock.release()


# -- complete() / chat() -------------------------------------------------------------------------

_shared: OrderedDict[tuple[Any, ...], LLM] = OrderedDict()
_shared_lock = threading.Lock()


def _option_token(value: Any) -> str:
    try:
        return canonical_json(keyable(value, "option"))
    except (UncacheableError, ValueError):
        return f"id:{id(value)}"


def _shared_llm(
    model_path: str | os.PathLike[str],
    load: dict[str, Any],
    verbose: bool,
    registry: tuple[CyllamaDB, int] | None = None,
) -> LLM:
    path = os.path.abspath(os.fspath(model_path))
    key = (path, verbose, tuple(sorted((k, _option_token(v)) for k, v in load.items())))
    evicted: list[LLM] = []
    with _shared_lock:
        llm = _shared.get(key)
        if llm is not None:
            _shared.move_to_end(key)
    if llm is None:
        new = LLM(path, db=False, cache=True, verbose=verbose, **load)
        with _shared_lock:
            llm = _shared.get(key)
            if llm is None:
                llm = _shared[key] = new
                while len(_shared) > max(1, MAX_SHARED_MODELS):
                    _key, old = _shared.popitem(last=False)
                    # Not closed here: a call in flight on another thread may still be
                    # using it; the model is freed when the last reference goes.
                    logger.debug("releasing shared model %s", old.model_path)
                    evicted.append(old)
    for old in evicted:
        # Released by this process, so no longer "running" in the registry.
        old._stop_serving_registry()
    if registry is not None:
        llm._serve_registry_entry(*registry)
    return llm


def _split_kwargs(kwargs: Mapping[str, Any], owner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    load: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    if "stop" in kwargs:
        kwargs = _alias_stop(kwargs, owner)
    for name, value in kwargs.items():
        if name in _CONFIG_FIELDS or name in _PASSTHROUGH:
            overrides[name] = value
        elif name in LOAD_OPTIONS:
            load[name] = value
        else:
            raise TypeError(_unknown_message(owner, name, sorted(_CONFIG_FIELDS + tuple(LOAD_OPTIONS))))
    return load, overrides


@overload
def complete(
    prompt: str,
    model_path: str | os.PathLike[str] | None = None,
    db: DBArg = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    stream: Literal[False] = False,
    *,
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    verbose: bool = False,
    **kwargs: Any,
) -> Response: ...


@overload
def complete(
    prompt: str,
    model_path: str | os.PathLike[str] | None = None,
    db: DBArg = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    *,
    stream: Literal[True],
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    verbose: bool = False,
    **kwargs: Any,
) -> Stream: ...


def complete(
    prompt: str,
    model_path: str | os.PathLike[str] | None = None,
    db: DBArg = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    stream: bool = False,
    *,
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    verbose: bool = False,
    **kwargs: Any,
) -> Response | Stream:
    """Complete ``prompt`` with the model at ``model_path``, through the response cache.

    Models stay loaded between calls (the :data:`MAX_SHARED_MODELS` most
    recently used). ``kwargs`` are ``GenerationConfig`` fields (overriding
    ``config``) or ``llama_cpp.Llama`` load options; other names raise
    ``TypeError``; llama-cpp-python's names (``stop``, ``grammar``,
    ``suffix``, ``echo``, ``logprobs``, ``response_format``...) are accepted.
    ``db`` as for :class:`LLM`; ``cache``, ``ttl`` and ``namespace`` as for
    :meth:`LLM.__call__`. Returns a :class:`Response`, or a :class:`Stream`
    when ``stream=True``.

    ``model=`` names (or gives the id of) a registered model instead of
    ``model_path``: its stored load options and sampling defaults apply
    (``config`` replaces the latter, ``kwargs`` win over both). Each call
    sets its ``last_used_at`` (a cache hit too); its status becomes
    ``running`` when the model is actually loaded, and ``stopped`` when it
    is evicted (see :data:`MAX_SHARED_MODELS`) or :func:`unload_models`
    releases it.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__} (use chat() for messages)")
    return _model_call(
        "completion", prompt, model_path, model, db, config, stream, (cache, ttl, namespace), verbose, kwargs,
        "complete()",
    )


def _model_call(
    kind: Kind,
    payload: Any,
    model_path: str | os.PathLike[str] | None,
    model: int | str | None,
    db: Any,
    config: Any,
    stream: bool,
    cache: tuple[CacheArg, Any, str | None],
    verbose: bool,
    kwargs: Mapping[str, Any],
    owner: str,
) -> Any:
    """Route a module-level call to a model file or to a registered model."""
    llm, request, registry = _model_target(model_path, model, db, config, cache, verbose, kwargs, owner)
    try:
        return llm._request(kind, payload, stream, **request)
    except ModelLoadError:
        if registry is not None:
            registry[0].mark_model_loaded(registry[1], status="error")
        raise


def _model_target(
    model_path: str | os.PathLike[str] | None,
    model: int | str | None,
    db: Any,
    config: Any,
    cache: tuple[CacheArg, Any, str | None],
    verbose: bool,
    kwargs: Mapping[str, Any],
    owner: str,
) -> tuple[LLM, dict[str, Any], tuple[CyllamaDB, int] | None]:
    """``(shared LLM, LLM._request keyword arguments, (registry db, model id) or None)`` of a
    module-level call. With ``model=`` this reads the registry and marks the model used."""
    if model is None:
        if model_path is None:
            raise TypeError(
                f"{owner} needs model_path (a .gguf file) or model= (a registered model's name or id)"
            )
        model_path = check_path(model_path, "model_path")
        llm, request = _shared_target(model_path, db, config, cache, verbose, kwargs, owner)
        return llm, request, None
    if model_path is not None:
        raise TypeError(f"{owner} takes model_path or model=, not both")
    registry_db, record, stored, base = _from_registry(model, db, config, owner)
    path = stored.pop("model_path")
    model_id = int(record["id"])
    # Every call is a use (last_used_at), a cache hit included; the status
    # becomes "running" only when the shared model actually loads.
    registry_db.mark_model_loaded(model_id, status=None)
    try:
        llm, request = _shared_target(
            path, db, base, cache, verbose, {**stored, **kwargs}, owner, registry=(registry_db, model_id)
        )
    except ModelLoadError:
        registry_db.mark_model_loaded(model_id, status="error")
        raise
    return llm, request, (registry_db, model_id)


def _from_registry(
    model: int | str, db: Any, config: Any, owner: str
) -> tuple[CyllamaDB, Mapping[str, Any], dict[str, Any], GenerationConfig]:
    """(registry database, record, ``LLM`` keyword arguments, base config) of a registered model."""
    from ..stores.registry import inference_arguments

    _check_db_arg(db)
    if db is False:
        raise TypeError(
            f"{owner}: a registered model needs its database; pass db=CyllamaDB(...) "
            "or leave db=None for the global one"
        )
    if db is None or db is True:
        from ..db.facade import get_db

        db = get_db()
    record, kwargs, sampling = inference_arguments(db, model)
    kwargs.pop("verbose", None)  # stored log_disable: quiet is already the default here
    base = GenerationConfig.coerce(config) if config is not None else GenerationConfig(**sampling)
    return db, record, kwargs, base


@overload
def chat(
    messages: Messages,
    model_path: str | os.PathLike[str] | None = None,
    db: DBArg = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    stream: Literal[False] = False,
    *,
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    verbose: bool = False,
    **kwargs: Any,
) -> Response: ...


@overload
def chat(
    messages: Messages,
    model_path: str | os.PathLike[str] | None = None,
    db: DBArg = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    *,
    stream: Literal[True],
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    verbose: bool = False,
    **kwargs: Any,
) -> Stream: ...


def chat(
    messages: Messages,
    model_path: str | os.PathLike[str] | None = None,
    db: DBArg = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    stream: bool = False,
    *,
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    verbose: bool = False,
    **kwargs: Any,
) -> Response | Stream:
    """Like :func:`complete` for chat ``messages`` (applies the model's chat template).

    ``model=`` selects a registered model instead of ``model_path``;
    ``tools``, ``tool_choice``, ``response_format``... are accepted as
    llama-cpp-python names them.
    """
    return _model_call(
        "chat", messages, model_path, model, db, config, stream, (cache, ttl, namespace), verbose, kwargs, "chat()"
    )


def _shared_target(
    model_path: str | os.PathLike[str],
    db: Any,
    config: Any,
    cache: tuple[CacheArg, Any, str | None],
    verbose: bool,
    kwargs: Mapping[str, Any],
    owner: str,
    registry: tuple[CyllamaDB, int] | None = None,
) -> tuple[LLM, dict[str, Any]]:
    """The shared ``LLM`` for a module-level call and its ``LLM._request`` keyword arguments."""
    _check_db_arg(db)
    load, overrides = _split_kwargs(kwargs, owner)
    passthrough = _pop_passthrough(overrides)
    call_config = GenerationConfig.coerce(config).replace(**overrides)
    llm = _shared_llm(model_path, load, verbose, registry)
    mode, ttl, namespace = cache
    request = {
        "config": call_config, "db": db, "cache": mode, "ttl": ttl, "namespace": namespace,
        "passthrough": passthrough,
    }
    return llm, request


def unload_models() -> int:
    """Release every model ``complete()``/``chat()`` keeps loaded; returns how many.

    Registered models they had marked ``running`` are marked ``stopped``.
    """
    with _shared_lock:
        models = list(_shared.values())
        _shared.clear()
    for llm in models:
        llm.close()
    return len(models)
