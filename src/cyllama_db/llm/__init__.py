"""Inference: ``LLM`` and ``complete()``/``chat()``, with the response cache in front of llama.cpp.

The package's modules, one job each:

- :mod:`.model`: :class:`LLM`, the request path (key, cache lookup, single
  flight, generate, store, record) and the model's lifetime;
- :mod:`.shared`: the process-wide shared models behind :func:`complete`,
  :func:`chat`, :func:`unload_models`, :func:`loaded_model_paths`
  (``cyllama_db.llm.shared.MAX_SHARED_MODELS`` sets how many stay loaded);
- :mod:`.stream`: :class:`Stream`, :class:`ChunkStream`, replays and live streams;
- :mod:`.generation`: the llama.cpp side (loading, one generation, its figures, its errors);
- :mod:`.options`: load options, ``db=``/``cache=`` and sampling arguments, checked;
- :mod:`.locks`: model locks, wait timeouts, single flight;
- :mod:`.status`: statistics records, loaded models, registry status;
- :mod:`.wrap`: ``wrap(llama)``, a cached drop-in for a ``Llama`` (imported
  from there, so that ``cyllama_db.llm.wrap`` stays the module);
- :mod:`.openai`: llama-cpp-python's dicts; :mod:`.grammar`: GBNF and JSON-schema checks.

Value types (:class:`GenerationConfig`, :class:`GenerationStats`,
:class:`Response`) live in :mod:`cyllama_db.types`. Nothing here imports
``llama_cpp`` until a model is loaded or a grammar is built.
"""

from __future__ import annotations

from ..types import GenerationConfig, GenerationStats, Response
from .locks import DEFAULT_WAIT_TIMEOUT
from .model import LLM
from .options import LOAD_OPTIONS
from .shared import chat, complete, loaded_model_paths, unload_models
from .stream import ChunkStream, Stream

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "LLM",
    "LOAD_OPTIONS",
    "ChunkStream",
    "GenerationConfig",
    "GenerationStats",
    "Response",
    "Stream",
    "chat",
    "complete",
    "loaded_model_paths",
    "unload_models",
]
