"""What a call is built from: its arguments checked and turned into llama-cpp-python's.

``llama_cpp.Llama`` load options (checked before llama.cpp sees them), the
``db=`` and ``cache=`` arguments, llama-cpp-python's pass-through options,
the load options of an already loaded ``Llama``, and the sampling keyword
arguments of ``create_completion``/``create_chat_completion``, with their
grammars and JSON schemas checked (a bad grammar crashes llama.cpp).
``llama_cpp`` is imported only inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Union

from ..errors import MissingDependencyError
from ..types import (
    _CONFIG_FIELDS,
    GenerationConfig,
    _alias_stop,
    _unknown_message,
    response_format_schema,
)

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

Kind = Literal["completion", "chat"]
Messages = Sequence[Mapping[str, Any]]
DBArg = Union["CyllamaDB", None, bool]
#: ``cache=`` of a call: True, False, "refresh", "only-if-cached", or None (the default).
CacheArg = Union[bool, str, None]  # noqa: UP007 - a runtime alias on Python 3.10

# "Use the LLM's own db setting" (None already means "the global database").
_OWN_DB: Final = object()


# -- load options --------------------------------------------------------------------------------

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


def _split_kwargs(kwargs: Mapping[str, Any], owner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(load options, GenerationConfig fields and pass-through options)`` of a module-level call's kwargs."""
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


# -- an already loaded Llama ---------------------------------------------------------------------


def _is_llama(value: Any) -> bool:
    """Whether ``value`` is a loaded ``llama_cpp.Llama`` (without importing llama_cpp)."""
    from ..stores.keys import is_llama

    return is_llama(value) and isinstance(getattr(value, "model_path", None), (str, os.PathLike))


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


# -- db= and cache= ------------------------------------------------------------------------------


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


# -- sampling ------------------------------------------------------------------------------------


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

