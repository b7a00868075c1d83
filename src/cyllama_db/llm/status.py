"""Which models this process has loaded, and the registry status of the registered ones.

An ``LLM`` calls :func:`model_loaded` when llama.cpp has loaded its model and
:func:`model_released` when it lets the model go; :func:`loaded_llms` lists
those holding one now (``loaded_model_paths()``, the exit hook).

Registry status. An ``LLM`` serving registered models (``LLM.from_registry``,
``complete``/``chat(model=...)``) holds a :class:`RegistryStatus` that marks
each entry ``running`` when the model loads and ``stopped`` when it lets the
model go (``close()``, ``unload_models()``, eviction). Several LLMs of this
process may serve one entry, keyed by ``(id(database), model id)``: only the
last one to let go marks it stopped. The entries hold their databases, so
those ids stay unique while they live, and an ``LLM`` dropped without
``close()`` simply leaves the weak set. Every status write is best effort:
a status the registry cannot take must not fail a load or a close.

:func:`_from_registry` reads what a registered model is loaded and sampled with.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import DatabaseClosedError
from ..types import GenerationConfig, Response
from .options import _check_db_arg

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB
    from .model import LLM

# The user-facing log category of inference (docs/logs.md), whichever module logs.
logger = logging.getLogger("cyllama_db.inference")

# -- statistics ----------------------------------------------------------------------------------


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


# -- loaded models -------------------------------------------------------------------------------

# Every LLM that currently holds a loaded model (for loaded_model_paths()).
_loaded: weakref.WeakSet[LLM] = weakref.WeakSet()
_loaded_lock = threading.Lock()


def model_loaded(llm: LLM) -> None:
    """``llm`` has its model in memory now: listed, and its registry entries marked ``running``."""
    with _loaded_lock:
        _loaded.add(llm)
    llm._registry.loaded()


def model_released(llm: LLM) -> None:
    """``llm`` let its model go: no longer listed, its registry entries ``stopped`` (if no other LLM has them)."""
    with _loaded_lock:
        _loaded.discard(llm)
    llm._registry.released()


def loaded_llms() -> list[LLM]:
    """The LLMs of this process that hold a loaded model (or did, until a moment ago)."""
    with _loaded_lock:
        return list(_loaded)


# -- registry status -----------------------------------------------------------------------------

_RegistryKey = tuple[int, int]
_registry_lock = threading.Lock()
# The RegistryStatus objects with an entry marked running.
_serving: weakref.WeakSet[RegistryStatus] = weakref.WeakSet()


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


class RegistryStatus:
    """The registry entries one ``LLM`` serves, and those it has marked ``running``.

    Its methods are the hooks the ``LLM`` calls: :meth:`serve` (a new
    entry), :meth:`loaded` / :meth:`released` (the model entered or left
    memory), :meth:`stop` (an evicted shared model), :meth:`load_failed`.
    """

    __slots__ = ("__weakref__", "entries", "in_memory", "running")

    def __init__(self, in_memory: bool = False) -> None:
        # Guarded by _registry_lock.
        self.entries: dict[_RegistryKey, tuple[CyllamaDB, int]] = {}
        self.running: set[_RegistryKey] = set()
        self.in_memory = in_memory

    def serve(self, db: CyllamaDB, model_id: int) -> None:
        """Keep entry ``model_id`` of ``db`` ``running`` while the model is loaded."""
        with _registry_lock:
            self.entries[(id(db), model_id)] = (db, model_id)
            if self.in_memory:
                self._mark_running_locked()

    def loaded(self) -> None:
        """The model is in memory now."""
        with _registry_lock:
            self.in_memory = True
            self._mark_running_locked()

    def released(self) -> None:
        """The model left memory."""
        with _registry_lock:
            self.in_memory = False
            self._mark_stopped_locked()

    def stop(self) -> None:
        """Forget every entry (an evicted shared model): mark them stopped now."""
        with _registry_lock:
            self._mark_stopped_locked()
            self.entries.clear()

    def load_failed(self) -> None:
        """The model could not be loaded: every entry served is marked ``error``."""
        with _registry_lock:
            entries = list(self.entries.values())
        for db, model_id in entries:
            _set_registry_status(db, model_id, "error")

    def _mark_running_locked(self) -> None:
        for key, (db, model_id) in self.entries.items():
            if key in self.running:
                continue
            self.running.add(key)
            _serving.add(self)
            _set_registry_status(db, model_id, "running")

    def _mark_stopped_locked(self) -> None:
        if not self.running:
            return
        others = [status for status in _serving if status is not self]
        for key in self.running:
            if any(key in other.running for other in others):
                continue  # another LLM of this process still has it loaded
            entry = self.entries.get(key)
            if entry is not None:
                _set_registry_status(entry[0], entry[1], "stopped")
        self.running.clear()
        _serving.discard(self)


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
