"""The process-wide shared models: ``complete()``, ``chat()``, ``unload_models()``, ``loaded_model_paths()``.

``complete()`` and ``chat()`` keep their models loaded between calls in a
least-recently-used table of ``LLM`` objects (keyed by path, verbosity and
load options; :data:`MAX_SHARED_MODELS` of them); ``model=`` routes a call to
a registered model. At exit every model this process loaded is freed while
llama_cpp can still do it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from .._validate import check_path
from ..errors import ModelLoadError, UncacheableError
from ..stores.keys import canonical_json, keyable
from ..types import GenerationConfig, Response
from . import status
from .model import LLM
from .options import CacheArg, DBArg, Kind, Messages, _check_db_arg, _pop_passthrough, _split_kwargs
from .stream import Stream

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

__all__ = ["MAX_SHARED_MODELS", "chat", "complete", "loaded_model_paths", "unload_models"]

# The user-facing log category of inference (docs/logs.md), whichever module logs.
logger = logging.getLogger("cyllama_db.inference")

#: How many models ``complete()``/``chat()`` keep loaded between calls (least
#: recently used beyond this are released). ``LLM`` objects own their model
#: and are not counted.
MAX_SHARED_MODELS: int = 2


def loaded_model_paths() -> list[str]:
    """Absolute paths of the models this process has loaded through ``LLM``/``complete()``."""
    return sorted({llm.model_path for llm in status.loaded_llms() if llm.loaded})


@atexit.register
def _free_models_at_exit() -> None:
    """Free every loaded model while llama_cpp can still do it.

    Otherwise ``Llama.__del__`` runs during interpreter shutdown, after
    llama_cpp's module globals are gone, and prints an ignored TypeError.
    Registered models this process was serving are marked ``stopped``.
    """
    for llm in status.loaded_llms():
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
        old._registry.stop()
    if registry is not None:
        llm._registry.serve(*registry)
    return llm



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
    registry_db, record, stored, base = status._from_registry(model, db, config, owner)
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
