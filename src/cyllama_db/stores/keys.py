"""Cache keys, model identity and single-flight: the parts of the response cache
that both the store (``cache.py``) and the callers (``inference.py``,
``decorators.py``) need, kept free of imports of either so there is no cycle.

Keys are SHA-256 over canonical JSON (sorted keys, no whitespace, ASCII), so
they are stable across processes, Python versions and platforms.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from time import monotonic as _monotonic
from typing import Any, Final, Generic, TypeVar

from .._validate import check_path, check_text
from ..errors import Cancelled, UncacheableError

__all__ = [
    "OUTPUT_LOAD_OPTIONS",
    "Cancelled",  # defined in errors.py; still importable from here for llm/
    "SingleFlight",
    "callable_identity",
    "canonical_json",
    "chat_key",
    "check_text",
    "completion_key",
    "function_key",
    "instance_identity",
    "key_material",
    "keyable",
    "llama_identity",
    "llama_load_options",
    "load_options_json",
    "model_identity",
    "recent_model_identity",
    "sha256_text",
]

logger = logging.getLogger("cyllama_db.cache")
T = TypeVar("T")

# What json.dumps(str, ensure_ascii=True) does, minus the Python-level calls
# around it (keys are on every hit's path).
_json_string = json.encoder.encode_basestring_ascii


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no whitespace, ASCII only, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_text(text: str) -> str:
    """Hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- model identity ----------------------------------------------------------------------------

# path string -> ((size, mtime_ns, inode, device), identity). A stat per lookup
# is the price of noticing a replaced file; the fingerprint itself (a read of
# the GGUF header) is only recomputed when the stat signature changes.
_identity_cache: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_IDENTITY_CACHE_MAX = 1024
_NON_GGUF_PREFIX_BYTES = 1 << 20

#: recent_model_identity() re-checks a path (one stat()) only if it was last
#: checked longer ago than this. The stat is about as costly as the cache
#: lookup's own SELECT, and within a millisecond a file change can already
#: go unnoticed (file systems stamp mtime with a coarse clock: ext4 ticks
#: every 1-4 ms), so a tight loop of lookups pays for one stat per ms.
RECHECK_SECONDS = 0.001
# path string -> (monotonic time of the last check, identity then).
_checked: dict[str, tuple[float, str]] = {}


def model_identity(model_path: str | os.PathLike[str]) -> str:
    """What a cache entry's model is: ``"<basename>@<fingerprint>"``.

    The fingerprint (128 bits of :func:`cyllama_db.stores.gguf.model_fingerprint`)
    covers the file size and the whole GGUF header and metadata section, so
    the same file at two paths shares cache entries, while a different file
    under the same name (re-quantised, re-converted, edited metadata) does not.
    A path that does not exist has the bare basename as its identity; a file
    that is not GGUF is fingerprinted by its size and first megabyte.
    """
    path = check_path(model_path, "model_path")
    checked_at = _monotonic()
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        identity = os.path.basename(path) or path
    else:
        sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        cached = _identity_cache.get(path)
        if cached is not None and cached[0] == sig:
            identity = cached[1]
        else:
            identity = f"{os.path.basename(path)}@{_fingerprint(path, st.st_size)[:32]}"
            if len(_identity_cache) >= _IDENTITY_CACHE_MAX:
                _identity_cache.clear()
            _identity_cache[path] = (sig, identity)
    if len(_checked) >= _IDENTITY_CACHE_MAX:
        _checked.clear()
    _checked[path] = (checked_at, identity)
    return identity


def recent_model_identity(model_path: str | os.PathLike[str]) -> str:
    """:func:`model_identity`, without its ``stat()`` if this path was checked in the last
    :data:`RECHECK_SECONDS` (by either function).

    For the cache's own lookups and stores, where the ``stat()`` would cost
    about as much as the lookup's ``SELECT``. A file replaced within that
    millisecond of a check may be seen under its previous identity until
    the millisecond is over; :func:`model_identity` (and
    :func:`clear_identity_cache`) always look at the file.
    """
    path = os.fspath(model_path)
    checked = _checked.get(path)
    if checked is not None and _monotonic() - checked[0] < RECHECK_SECONDS:
        return checked[1]
    return model_identity(path)


def _fingerprint(path: str, size: int) -> str:
    from .gguf import GGUFFormatError, model_fingerprint

    try:
        return model_fingerprint(path)
    except GGUFFormatError:
        pass
    except OSError:
        return "unreadable"
    digest = hashlib.sha256(b"cyllama-db/non-gguf/v1\x00")
    digest.update(size.to_bytes(8, "little"))
    try:
        with open(path, "rb") as handle:
            digest.update(handle.read(_NON_GGUF_PREFIX_BYTES))
    except OSError:
        return "unreadable"
    return digest.hexdigest()


def clear_identity_cache() -> None:
    """Forget remembered identities (e.g. after rewriting a model in place within one mtime tick)."""
    from .gguf import clear_fingerprint_cache

    _identity_cache.clear()
    _checked.clear()
    clear_fingerprint_cache()


# -- keys --------------------------------------------------------------------------------------


# (config_json, identity, load_json, namespace) -> sha256 state after
# '{"config":…[,"load":…],"model":…[,"namespace":…],"prompt":'.
_prefix_states: dict[tuple[str, str, str, str], Any] = {}


def completion_key(
    prompt: str, identity: str, config_json: str, load_json: str = "", namespace: str = ""
) -> str:
    """Key of a plain completion: sha256 of ``{"config":…,"load":…,"model":…,"prompt":…}``.

    ``load_json`` is :func:`load_options_json` of the model's load options;
    when empty (no load option that changes the output) the ``"load"`` member
    is left out, so such keys are the same as before load options counted.

    Hashed incrementally rather than via ``canonical_json`` of a dict because
    this is on every hit's path; the bytes hashed are identical
    (``config_json`` is itself canonical and the keys are in sorted order),
    and the state after the config, load options and model is reused.
    """
    state = _prefix_states.get((config_json, identity, load_json, namespace))
    if state is None:
        load = ',"load":' + load_json if load_json else ""
        space = ',"namespace":' + _json_string(namespace) if namespace else ""
        prefix = (
            '{"config":' + config_json + load + ',"model":' + _json_string(identity) + space + ',"prompt":'
        )
        state = hashlib.sha256(prefix.encode("ascii"))
        if len(_prefix_states) >= 256:
            _prefix_states.clear()
        _prefix_states[(config_json, identity, load_json, namespace)] = state
    digest = state.copy()
    digest.update(_json_string(prompt).encode("ascii"))
    digest.update(b"}")
    return digest.hexdigest()


def chat_key(
    messages_json: str, identity: str, config_json: str, load_json: str = "", namespace: str = ""
) -> str:
    """Key of a chat completion: ``{"config","kind":"chat","load","messages","model","namespace"}``
    (``"load"`` and ``"namespace"`` only when not empty, as for :func:`completion_key`)."""
    load = ',"load":' + load_json if load_json else ""
    space = ',"namespace":' + _json_string(namespace) if namespace else ""
    data = (
        '{"config":' + config_json + ',"kind":"chat"' + load + ',"messages":' + messages_json
        + ',"model":' + _json_string(identity) + space + "}"
    )
    return hashlib.sha256(data.encode("ascii")).hexdigest()


# -- load options in keys ----------------------------------------------------------------------

# llama_cpp.Llama() load options that change which tokens a generation
# produces, with llama-cpp-python 0.3.x's default for each (an option at its
# default is left out of the key, so LLM(m, lora_scale=1.0) shares entries
# with LLM(m)). Hard-coded: keys must not need llama_cpp imported, a hit
# never loads it. tests/test_cache.py checks them against Llama.__init__.
# Every other load option is infrastructure (where and how fast the same
# computation runs: n_ctx, n_gpu_layers, n_threads*, n_batch, n_ubatch,
# use_mmap, use_mlock, main_gpu, tensor_split, split_mode, offload_kqv,
# op_offload, flash_attn, swa_full, numa, no_perf, logits_all, vocab_only)
# and is not part of keys; docs/cache.md lists the decision for each.
_FLOAT_OPTIONS: Final = {
    "lora_scale": 1.0,
    "rope_freq_base": 0.0,
    "rope_freq_scale": 0.0,
    "yarn_ext_factor": -1.0,
    "yarn_attn_factor": 1.0,
    "yarn_beta_fast": 32.0,
    "yarn_beta_slow": 1.0,
}
_INT_OPTIONS: Final = {
    "rope_scaling_type": -1,
    "yarn_orig_ctx": 0,
    "pooling_type": -1,
    "attention_type": -1,
    "type_k": None,
    "type_v": None,
    # the window repeat/frequency/presence penalties look back over
    "last_n_tokens_size": 64,
}
_BOOL_OPTIONS: Final = {"embedding": False, "spm_infill": False}
# Files: keyed by their identity (as the model is), not their path.
_FILE_OPTIONS: Final = ("lora_base", "lora_path")
# Objects: keyed by callable_identity() / class and state.
_OBJECT_OPTIONS: Final = ("draft_model", "tokenizer")
# Only chat requests go through the chat template.
_CHAT_OPTIONS: Final = ("chat_format", "chat_handler")

#: The ``Llama()`` load options that are part of cache keys.
OUTPUT_LOAD_OPTIONS: Final = frozenset(
    {*_FLOAT_OPTIONS, *_INT_OPTIONS, *_BOOL_OPTIONS, *_FILE_OPTIONS, *_OBJECT_OPTIONS,
     *_CHAT_OPTIONS, "kv_overrides"}
)


def load_options_json(options: Mapping[str, Any], kind: str) -> str:
    """Canonical JSON of the load options in ``options`` that change a ``kind`` request's output.

    ``""`` when there are none (options at their llama-cpp-python default,
    infrastructure options such as ``n_ctx``, and ``chat_format`` /
    ``chat_handler`` for a plain completion do not count). Numbers are
    normalised (``rope_freq_base=10000`` and ``10000.0`` are one key), LoRA
    files are keyed by their identity like the model, and objects
    (``chat_handler``, ``draft_model``, ``tokenizer``) by
    :func:`object_identity`.
    """
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or name not in OUTPUT_LOAD_OPTIONS:
            continue
        if name in _FLOAT_OPTIONS:
            value = float(value)
            if value != _FLOAT_OPTIONS[name]:
                out[name] = keyable(value, name)
        elif name in _INT_OPTIONS:
            if int(value) != _INT_OPTIONS[name]:
                out[name] = int(value)
        elif name in _BOOL_OPTIONS:
            if bool(value) != _BOOL_OPTIONS[name]:
                out[name] = bool(value)
        elif name in _FILE_OPTIONS:
            out[name] = model_identity(value)
        elif name == "kv_overrides":
            if value:
                out[name] = keyable(dict(value), name)
        elif name in _CHAT_OPTIONS:
            if kind == "chat":
                out[name] = value if isinstance(value, str) else object_identity(value)
        else:
            out[name] = object_identity(value)
    return canonical_json(out) if out else ""


# Objects without a stable identity get a random token, the same for one
# object for its lifetime (so the entries made with it are reused in this
# process, and never mistaken for another object's, in any process).
_local_tokens: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_local_tokens_strong: dict[int, tuple[Any, str]] = {}
_local_lock = threading.Lock()


def _local_token(value: Any) -> str:
    with _local_lock:
        try:
            token = _local_tokens.get(value)
            if token is None:
                token = os.urandom(16).hex()
                _local_tokens[value] = token
            return token
        except TypeError:  # not weak-referenceable (or unhashable): keep it alive instead
            known = _local_tokens_strong.get(id(value))
            if known is None or known[0] is not value:
                known = (value, os.urandom(16).hex())
                _local_tokens_strong[id(value)] = known
            return known[1]


def object_identity(value: Any) -> Any:
    """A JSON value identifying a load-option object (a chat handler, a draft model...).

    An object with a ``__cache_key__()`` method is keyed by what it returns
    (see :func:`instance_identity`); a function by :func:`callable_identity`;
    an object by its class
    and its attributes when all of them can be keyed (``keyable``), so two
    ``LlamaPromptLookupDecoding(num_pred_tokens=10)`` share entries. Anything
    else gets a random token for the object's lifetime: its entries are
    reused in this process only.
    """
    if getattr(type(value), "__cache_key__", None) is not None:
        return instance_identity(value, type(value).__qualname__)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        try:
            return callable_identity(value)
        except UncacheableError:
            pass
    elif isinstance(value, types.MethodType):
        return {"__method__": object_identity(value.__func__), "self": object_identity(value.__self__)}
    elif _plain_class(type(value)):
        cls = type(value)
        name = f"{cls.__module__}.{cls.__qualname__}"
        try:
            return {"__object__": name, "state": keyable(vars(value), name)}
        except (UncacheableError, ValueError, RecursionError):
            pass
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return {"__object__": str(name), "local": _local_token(value)}


# A class statement makes a heap type that is not immutable; C types are
# static, or (converted ones, like functools.partial) heap types marked
# immutable (Py_TPFLAGS_HEAPTYPE, Py_TPFLAGS_IMMUTABLETYPE).
_HEAPTYPE: Final = 1 << 9
_IMMUTABLETYPE: Final = 1 << 8


def _plain_class(cls: type) -> bool:
    """Whether an instance's whole state is its ``__dict__``: a module-level Python class,
    without ``__slots__`` and without a C base class (like ``functools.partial``) that
    keeps state of its own."""
    if "<" in cls.__qualname__:
        return False  # a local class: its name says nothing about its code
    for klass in cls.__mro__:
        if klass is object:
            continue
        flags = klass.__flags__
        if not flags & _HEAPTYPE or flags & _IMMUTABLETYPE or "__slots__" in vars(klass):
            return False
    return True


# -- objects in @cached keys -------------------------------------------------------------------

#: ``bound_instance()`` of a callable that is not bound to an instance.
_UNBOUND: Final[Any] = object()


def bound_instance(fn: Any) -> Any:
    """The object a bound method computes with (``obj`` for ``obj.method``, also for a
    builtin method such as ``some_dict.get``), or ``_UNBOUND`` for anything else (a
    function, a class, a static method, a module-level builtin function like ``len``)."""
    if isinstance(fn, types.MethodType):
        return fn.__self__
    if isinstance(fn, types.BuiltinMethodType):
        owner = fn.__self__
        if owner is not None and not isinstance(owner, types.ModuleType):
            return owner
    return _UNBOUND


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_llama(value: Any) -> bool:
    """Whether ``value`` is a ``llama_cpp.Llama`` (or a subclass), checked by class name
    and module so that llama_cpp need not be imported."""
    for klass in type(value).__mro__:
        module = getattr(klass, "__module__", "") or ""
        if klass.__name__ == "Llama" and (module == "llama_cpp" or module.startswith("llama_cpp.")):
            return True
    return False


def _llama_like(value: Any) -> bool:
    """A ``llama_cpp.Llama``, or an object standing for one: a ``model_path`` and a
    callable ``create_completion`` (a wrapper that delegates to a Llama)."""
    if is_llama(value):
        return True
    try:
        path = getattr(value, "model_path", None)
        create = getattr(value, "create_completion", None)
    except Exception:  # a property or __getattr__ that fails: not one
        return False
    return isinstance(path, (str, os.PathLike)) and callable(create)


# Llama.context_params fields that are load options of the same name.
_CONTEXT_OPTIONS: Final = (
    "rope_scaling_type",
    "pooling_type",
    "attention_type",
    "rope_freq_base",
    "rope_freq_scale",
    "yarn_ext_factor",
    "yarn_attn_factor",
    "yarn_beta_fast",
    "yarn_beta_slow",
    "yarn_orig_ctx",
    "type_k",
    "type_v",
)
# Llama attributes that are load options of the same name.
_LLAMA_ATTRIBUTE_OPTIONS: Final = (
    "last_n_tokens_size",
    "spm_infill",
    "lora_base",
    "lora_path",
    "lora_scale",
    "kv_overrides",
    "chat_format",
    "chat_handler",
    "draft_model",
)
_default_kv_type: list[int] = []


def _kv_type_default() -> int:
    """llama.cpp's default KV cache type (F16), what ``type_k=None`` leaves in place."""
    if not _default_kv_type:
        module = sys.modules.get("llama_cpp")  # imported already: a Llama exists
        try:
            _default_kv_type.append(int(module.llama_context_default_params().type_k))  # type: ignore[union-attr]
        except Exception:
            return 1  # GGML_TYPE_F16
    return _default_kv_type[0]


def llama_load_options(llama: Any) -> dict[str, Any]:
    """The load options of a ``llama_cpp.Llama`` (or an object standing for one) that
    are in :data:`OUTPUT_LOAD_OPTIONS`, named as ``Llama()`` takes them, for
    :func:`load_options_json`.

    An object with a ``load_options`` mapping (an ``LLM``) gives that. A
    ``Llama`` is read: RoPE/YaRN, pooling, attention and KV cache types from
    its ``context_params`` (a KV type at llama.cpp's default counts as not
    given), and ``chat_format`` (as llama-cpp-python settled it at load),
    ``chat_handler``, LoRA, ``kv_overrides``, ``draft_model``,
    ``last_n_tokens_size``, ``spm_infill`` and a tokenizer other than its
    default from its attributes.
    """
    given = getattr(llama, "load_options", None)
    if isinstance(given, Mapping):
        return dict(given)
    out: dict[str, Any] = {}
    params = getattr(llama, "context_params", None)
    if params is not None:
        for name in _CONTEXT_OPTIONS:
            value = getattr(params, name, None)
            if name in ("type_k", "type_v") and value is not None and int(value) == _kv_type_default():
                value = None
            out[name] = value
        out["embedding"] = getattr(params, "embeddings", None)
    for name in _LLAMA_ATTRIBUTE_OPTIONS:
        out[name] = getattr(llama, name, None)
    tokenizer = getattr(llama, "tokenizer_", None)
    if tokenizer is not None and not (
        type(tokenizer).__name__ == "LlamaTokenizer" and type(tokenizer).__module__.startswith("llama_cpp")
    ):
        out["tokenizer"] = tokenizer
    return {name: value for name, value in out.items() if value is not None}


def llama_identity(llama: Any) -> dict[str, Any]:
    """What a ``llama_cpp.Llama``'s answers depend on, apart from each call's arguments:
    its model's :func:`model_identity` (the GGUF fingerprint the response cache
    uses, never a path or a repr) and the load options that change the output
    (:func:`llama_load_options`, as :func:`load_options_json` keys them for chat,
    the wider of the two kinds). A ``config`` with ``cache_json()`` (an
    ``LLM``'s :class:`GenerationConfig`) counts too."""
    identity: dict[str, Any] = {"model": model_identity(llama.model_path)}
    load = load_options_json(llama_load_options(llama), "chat")
    if load:
        identity["load"] = json.loads(load)
    cache_json = getattr(getattr(llama, "config", None), "cache_json", None)
    if callable(cache_json):
        identity["config"] = json.loads(cache_json())
    return identity


def _no_identity(value: Any, name: str, why: str) -> UncacheableError:
    cls = type(value)
    error = UncacheableError(
        f"{name!r} (a {_class_name(cls)}) cannot be part of a cache key: {why}, so its results "
        f"could be served for another object's call. Give {cls.__qualname__} a __cache_key__() "
        "method returning JSON-able data that identifies what its results depend on (its "
        "settings, a model path...), or pass cached(key=...) a function that returns the key "
        "material for a call"
    )
    # What an enclosing object's message quotes, without the advice twice.
    error.cyllama_reason = f"{name!r} is a {_class_name(cls)}: {why}"  # type: ignore[attr-defined]
    return error


def instance_identity(value: Any, name: str) -> Any:
    """A JSON value identifying an object in ``@cached`` keys (the ``self`` of a cached
    method, an argument, a captured value), the same in every process.

    In this order: an object whose class has ``__cache_key__()`` is keyed by
    its class and what that returns (JSON-able data: :func:`keyable`); a
    ``cyllama_db`` object that says what identifies it (an ``LLM``: model,
    load options and config); a ``llama_cpp.Llama``, or an object with a
    ``model_path`` and a ``create_completion`` (a wrapper of one), by
    :func:`llama_identity`; a module-level class (a classmethod's ``cls``) by
    its name; an instance of a plain module-level class by its
    class and its ``__dict__``, when every attribute is itself keyable. Never
    by ``repr``, ``id`` or memory address: anything else (a lock, a file, a
    socket, a C object, an instance of a local class) raises
    :class:`~cyllama_db.errors.UncacheableError` naming ``__cache_key__`` and
    ``cached(key=...)``.
    """
    cls = type(value)
    hook = getattr(cls, "__cache_key__", None)
    if hook is not None:
        if not callable(hook):
            raise UncacheableError(f"{_class_name(cls)}.__cache_key__ must be a method, got {type(hook).__name__}")
        material = value.__cache_key__()
        try:
            key = keyable(material, f"{cls.__qualname__}.__cache_key__()")
        except (UncacheableError, ValueError, RecursionError) as exc:
            raise UncacheableError(
                f"{_class_name(cls)}.__cache_key__() must return JSON-able data (str, numbers, "
                f"bool, None, lists, dicts with str keys): {exc}"
            ) from None
        return {"__object__": _class_name(cls), "key": key}
    identify = getattr(cls, "_cyllama_cache_identity", None)
    if identify is not None:
        return {"__object__": _class_name(cls), "identity": identify(value)}
    if isinstance(value, type):  # a classmethod's class: by name, like a module-level function
        if "<" in value.__qualname__:
            raise _no_identity(value, name, "it is a class defined inside a function (its name does not say which one)")
        return {"__class__": _class_name(value)}
    if _llama_like(value):
        return {"__llama__": llama_identity(value)}
    if not _plain_class(cls) or not isinstance(getattr(value, "__dict__", None), dict):
        why = (
            "it is an instance of a class defined inside a function (its name does not say which one)"
            if "<" in cls.__qualname__
            else "it has no stable identity (state outside a plain __dict__: a C object, __slots__...)"
        )
        raise _no_identity(value, name, why)
    try:
        state = key_material(vars(value), f"{name}.__dict__")
    except UncacheableError as exc:
        reason = getattr(exc, "cyllama_reason", None) or str(exc)
        raise _no_identity(value, name, f"its state holds something without a stable identity ({reason})") from None
    except (ValueError, RecursionError):
        raise _no_identity(value, name, "its state refers back to itself") from None
    return {"__object__": _class_name(cls), "state": state}


# -- callables in keys -------------------------------------------------------------------------


def _const_text(value: Any) -> str:
    """A stable text for a code constant (frozenset order varies with hash seeds)."""
    if isinstance(value, frozenset):
        return "frozenset(" + ",".join(sorted(_const_text(v) for v in value)) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(_const_text(v) for v in value) + ")"
    return repr(value)


def _hash_code(code: types.CodeType, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(
        repr(
            (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount,
             code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)
        ).encode("utf-8", "surrogatepass")
    )
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            digest.update(b"<code>")
            _hash_code(const, digest)
        else:
            digest.update(_const_text(const).encode("utf-8", "surrogatepass") + b"\x00")


def callable_identity(fn: Any, _seen: set[int] | None = None) -> Any:
    """A JSON value identifying a function across processes, for cache keys.

    A function with a plain qualified name (defined at module level, or a
    method of a module-level class) is ``module.qualname``. A lambda or a
    function defined inside another one (``<lambda>`` / ``<locals>`` in its
    qualified name) is not identified by its name, since many share it: its
    code (bytecode, constants, names) and the values its closure captured
    and its defaults are added. Captured functions are identified the same
    way, classes and modules by name, objects by :func:`key_material`. A
    bound method is its function plus its instance's :func:`key_material`.

    Raises :class:`~cyllama_db.errors.UncacheableError` naming a captured
    variable whose value cannot be keyed.
    """
    owner = bound_instance(fn)
    if owner is not _UNBOUND:
        # A method bound to an object computes with that object: two
        # instances' methods are two computations (never one name).
        func = getattr(fn, "__func__", None)
        method = (
            callable_identity(func, _seen)
            if func is not None
            else {"__callable__": f"{type(owner).__module__}.{getattr(fn, '__qualname__', '?')}"}
        )
        return {"__method__": method, "self": key_material(owner, "self")}
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    name = f"{module}.{qualname}"
    marker = getattr(fn, "_cyllama_cache_name", None)
    if isinstance(marker, str):  # a @cached function: what its entries are stored under
        return {"__cached__": marker}
    if isinstance(fn, types.ModuleType):
        return {"__module__": fn.__name__}
    if "<" not in qualname or not isinstance(fn, types.FunctionType):
        return {"__callable__": name}
    seen = set() if _seen is None else _seen
    if id(fn) in seen:  # mutually recursive local functions
        return {"__callable__": name, "recursive": True}
    seen.add(id(fn))
    digest = hashlib.sha256()
    _hash_code(fn.__code__, digest)
    captured: dict[str, Any] = {}
    for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet (e.g. the decorated name itself)
            captured[var] = {"__empty__": True}
            continue
        captured[var] = _captured(value, var, name, seen)
    defaults = {
        "args": [_captured(v, f"default {i}", name, seen) for i, v in enumerate(fn.__defaults__ or ())],
        "kwargs": {k: _captured(v, k, name, seen) for k, v in (fn.__kwdefaults__ or {}).items()},
    }
    return {"__callable__": name, "code": digest.hexdigest(), "closure": captured, "defaults": defaults}


def _captured(value: Any, var: str, owner: str, seen: set[int]) -> Any:
    try:
        if isinstance(
            value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, type)
        ) or isinstance(getattr(value, "_cyllama_cache_name", None), str):
            return callable_identity(value, seen)
        # Values as arguments are keyed; objects by what identifies them
        # (__cache_key__, an LLM's or Llama's model, a plain object's state).
        return key_material(value, var)
    except (UncacheableError, ValueError, RecursionError) as exc:
        raise UncacheableError(
            f"{owner} captures {var!r} (a {type(value).__name__}), which cannot be part of a cache "
            f"key: the entries of a lambda or local function depend on what it captures ({exc}). Pass "
            f"name='...' to cached() to key it by that name alone, make {var!r} an argument, or give "
            f"its class a __cache_key__() method"
        ) from None


def function_key(function: str, args_json: str) -> str:
    """Key of a ``@cached`` function call: ``{"args","function","kind":"function"}``."""
    data = '{"args":' + args_json + ',"function":' + _json_string(function) + ',"kind":"function"}'
    return hashlib.sha256(data.encode("ascii")).hexdigest()


def canonical_messages(messages: Any) -> str:
    """Validate chat ``messages`` and return their canonical JSON (the chat prompt)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"got {type(messages).__name__} (a completion prompt is a str)"
        )
    if not messages:
        raise ValueError("messages must not be empty")
    for i, message in enumerate(messages):
        check_message(message, i)
    try:
        text = canonical_json([dict(m) for m in messages])
    except (TypeError, ValueError) as exc:
        raise TypeError(f"messages must contain only JSON values: {exc}") from exc
    # ASCII JSON writes every surrogate as \udXXX (a pair for characters
    # beyond the BMP); only then is the exact, slower check needed.
    if "\\ud" in text:
        for i, message in enumerate(messages):
            _check_strings(message, f"messages[{i}]")
    return text


_ROLES: Final = ("system", "developer", "user", "assistant", "tool", "function")


def check_message(message: Any, i: int) -> None:
    """Check one chat message's shape (OpenAI's, as llama-cpp-python takes it).

    Roles, content types (a str, a list of content parts, or None where a
    tool call stands for it) and tool-call shapes; a ``TypeError`` for a
    value of the wrong type, a ``ValueError`` for a missing or unknown one,
    each naming ``messages[i]`` and what is expected. Checked before any
    generation: a malformed message would otherwise be rendered by the chat
    template into junk the model happily continues.
    """
    where = f"messages[{i}]"
    if not isinstance(message, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(message).__name__}")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise ValueError(f"{where} needs a non-empty str 'role' (e.g. 'user')")
    if role not in _ROLES:
        raise ValueError(f"{where} has role {role!r}; use one of {', '.join(_ROLES)}")
    tool_calls = message.get("tool_calls")
    calls_content = role == "assistant" and (tool_calls or message.get("function_call"))
    if "content" not in message and not calls_content:
        raise ValueError(f"{where} ({role}) needs 'content': a str (or a list of content parts)")
    content = message.get("content")
    if content is None:
        if not calls_content:
            raise TypeError(f"{where}['content'] is None; only an assistant message with tool_calls may omit it")
    elif isinstance(content, list):
        for j, part in enumerate(content):
            _check_part(part, f"{where}['content'][{j}]")
    elif not isinstance(content, str):
        raise TypeError(
            f"{where}['content'] must be a str or a list of content parts, got {type(content).__name__}"
        )
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{where}['name'] must be a str, got {type(name).__name__}")
    if tool_calls is not None:
        if role != "assistant":
            raise ValueError(f"{where}: only assistant messages carry tool_calls (this one is {role!r})")
        if not isinstance(tool_calls, list):
            raise TypeError(f"{where}['tool_calls'] must be a list, got {type(tool_calls).__name__}")
        for j, call in enumerate(tool_calls):
            _check_tool_call(call, f"{where}['tool_calls'][{j}]")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise ValueError(f"{where} (tool) needs a str 'tool_call_id' naming the call it answers")


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, Mapping):
        raise TypeError(f"{where} must be a dict like {{'type': 'text', 'text': ...}}, got {type(part).__name__}")
    kind = part.get("type")
    if not isinstance(kind, str):
        raise ValueError(f"{where} needs a str 'type' ('text', 'image_url'...)")
    if kind == "text" and not isinstance(part.get("text"), str):
        raise TypeError(f"{where} of type 'text' needs a str 'text'")
    if kind == "image_url" and not isinstance(part.get("image_url"), (str, Mapping)):
        raise TypeError(f"{where} of type 'image_url' needs 'image_url' (a URL str or {{'url': ...}})")


def _check_tool_call(call: Any, where: str) -> None:
    if not isinstance(call, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(call).__name__}")
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, Mapping):
        raise ValueError(f"{where} must be {{'id': ..., 'type': 'function', 'function': {{'name', 'arguments'}}}}")
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise ValueError(f"{where}['function'] needs a non-empty str 'name'")
    if not isinstance(function.get("arguments", ""), str):
        raise TypeError(f"{where}['function']['arguments'] must be a JSON str, got {type(function['arguments']).__name__}")


def _check_strings(value: Any, name: str) -> None:
    if isinstance(value, str):
        check_text(value, name)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_strings(k, f"{name} key")
            _check_strings(v, f"{name}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_strings(v, f"{name}[{i}]")


def keyable(value: Any, name: str) -> Any:
    """``value`` as a JSON value that identifies it, for ``@cached`` keys.

    Raises :class:`~cyllama_db.errors.UncacheableError` (a ``TypeError``)
    naming ``name`` for values that have no stable identity (open files,
    arbitrary objects, lambdas...).
    """
    return _keyable(value, name, None)


def key_material(value: Any, name: str) -> Any:
    """What identifies ``value`` in a ``@cached`` key: :func:`keyable` values as it keys
    them (same JSON, so existing keys do not change), other objects, and objects
    with a ``__cache_key__()`` method, by :func:`instance_identity`, also inside
    lists, dicts and dataclasses.

    Raises :class:`~cyllama_db.errors.UncacheableError` naming ``name`` for an
    object with no stable identity.
    """
    return _keyable(value, name, instance_identity)


def _keyable(value: Any, name: str, objects: Callable[[Any, str], Any] | None) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if objects is not None and getattr(type(value), "__cache_key__", None) is not None:
        return objects(value, name)  # an explicit identity wins over the structure
    if isinstance(value, (list, tuple)):
        return [_keyable(v, f"{name}[{i}]", objects) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UncacheableError(
                    f"argument {name!r} cannot be part of a cache key: dict key {k!r} is not a str"
                )
            out[k] = _keyable(v, f"{name}[{k!r}]", objects)
        return out
    if isinstance(value, (set, frozenset)):
        items = [canonical_json(_keyable(v, f"{name} item", objects)) for v in value]
        return {"__set__": sorted(items)}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": bytes(value).hex()}
    if isinstance(value, enum.Enum):
        return {"__enum__": f"{type(value).__module__}.{type(value).__qualname__}", "name": value.name}
    if isinstance(value, (datetime, date, time)):
        return {"__" + type(value).__name__ + "__": value.isoformat()}
    if isinstance(value, timedelta):
        return {"__timedelta__": value.total_seconds()}
    if isinstance(value, os.PathLike):
        return {"__path__": os.fspath(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {
            "__dataclass__": f"{cls.__module__}.{cls.__qualname__}",
            "fields": {
                f.name: _keyable(getattr(value, f.name), f"{name}.{f.name}", objects)
                for f in dataclasses.fields(value)
            },
        }
    if objects is not None:
        return objects(value, name)
    raise UncacheableError(
        f"argument {name!r} cannot be part of a cache key: {type(value).__name__} values have "
        "no stable identity. Pass JSON-like values (str, numbers, bool, None, lists, dicts with "
        "str keys), dataclasses, enums, dates or paths instead."
    )


# -- single-flight -----------------------------------------------------------------------------


class _Flight(Generic[T]):
    __slots__ = ("abandoned", "done", "error", "owner", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.owner = threading.get_ident()


class SingleFlight(Generic[T]):
    """Concurrent calls with the same key run once; the others wait for its result.

    Like Go's ``singleflight.Group``: the first caller of a key (the leader)
    runs ``fn``; callers arriving while it runs block and receive the same
    result, or the same exception. A leader calling itself recursively with
    the same key runs ``fn`` again rather than waiting on itself forever.

    A leader that is not a function call (a stream, which produces its result
    as its consumer iterates) takes part with :meth:`join` and
    :meth:`settle`; it may *abandon* its flight (the consumer stopped early),
    and then its followers start over: one of them leads, the others wait
    for it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[T]] = {}

    def join(self, key: str) -> tuple[_Flight[T], bool | None]:
        """``(flight, role)`` for ``key``. ``role`` True: the caller leads the new flight
        and must :meth:`settle` it; False: another thread leads it, :meth:`wait` for it;
        None: this thread already leads ``key`` (recursion: go ahead without a flight)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = _Flight()
                self._flights[key] = flight
                return flight, True
            if flight.owner == threading.get_ident():
                return flight, None
            return flight, False

    def settle(
        self,
        key: str,
        flight: _Flight[T],
        *,
        result: T | None = None,
        error: BaseException | None = None,
        abandoned: bool = False,
    ) -> None:
        """End a flight led with :meth:`join`: with its result, an error, or abandoned."""
        flight.result = result
        flight.error = error
        flight.abandoned = abandoned
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    @staticmethod
    def wait(flight: _Flight[T], timeout: float | None = None) -> tuple[bool | None, T | None]:
        """Wait for another thread's flight: ``(True, result)``, ``(False, None)`` if it
        was abandoned (start over), ``(None, None)`` after ``timeout`` seconds (stop
        waiting: go ahead alone), or its exception raised."""
        if not flight.done.wait(timeout):
            return None, None
        if flight.abandoned:
            return False, None
        if flight.error is not None:
            raise flight.error
        return True, flight.result

    def run(self, key: str, fn: Callable[[], T], timeout: float | None = None) -> tuple[T, bool]:
        """``(result, shared)``: ``shared`` is True when another caller computed it.

        A follower waits at most ``timeout`` seconds for the leader (an idle
        open stream can lead for ever), then runs ``fn`` itself, unshared.
        """
        while True:
            flight, role = self.join(key)
            if role is None:
                return fn(), False
            if role:
                break
            done, result = self.wait(flight, timeout)
            if done:
                return result, True  # type: ignore[return-value]
            if done is None:
                logger.info("gave up waiting %ss for an identical request; running it separately", timeout)
                return fn(), False
            # The leader gave up: start over (lead, or follow a newer leader).
        try:
            result = fn()
        except Cancelled:
            self.settle(key, flight, abandoned=True)  # the followers start over
            raise
        except BaseException as exc:
            self.settle(key, flight, error=exc)
            raise
        self.settle(key, flight, result=result)
        return result, False

    def in_flight(self, key: str) -> bool:
        """Whether a leader is running ``key`` right now."""
        return key in self._flights
