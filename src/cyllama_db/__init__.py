"""cyllama-db: one SQLite file for everything local llama.cpp inference should remember.

Importing this package is cheap: llama_cpp, psutil and pynvml are imported
only by the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cached import cached
from .db.facade import CyllamaDB, configure_db, get_db, reset_db
from .db.settings import ENV_VARS, Settings
from .errors import (
    AmbiguousModelError,
    CacheMissError,
    ConfigurationError,
    ConfigurationTypeError,
    ContextOverflowError,
    CyllamaDBError,
    DatabaseBusyError,
    DatabaseClosedError,
    DatabaseError,
    DatabaseFileError,
    DatabaseIntegrityError,
    DiskFullError,
    ForeignDatabaseError,
    GenerationError,
    GenerationTimeoutError,
    GrammarError,
    ImportTimeoutError,
    JSONSchemaError,
    MigrationError,
    MissingDependencyError,
    ModelBusyError,
    ModelExistsError,
    ModelLoadError,
    ModelNotFoundError,
    OutOfRangeError,
    ReadOnlyDatabaseError,
    SchemaVersionError,
    UncacheableError,
    UnknownModelError,
)
from .llm import LLM, ChunkStream, Stream, chat, complete, loaded_model_paths, unload_models
from .llm.wrap import CachedLlama, wrap
from .stores.cache import generate_cache_key, model_identity
from .stores.logs import CyllamaDBHandler
from .stores.metrics import MetricsSampler, sample_metrics
from .stores.params import (
    PARAMS,
    PARAMS_BY_NAME,
    Param,
    ParameterTypeError,
    ParameterValueError,
    ServerArgWarning,
    UnknownParameterError,
    to_llama_kwargs,
    to_sampling_kwargs,
    to_server_args,
    validate_params,
)
from .stores.registry import MODEL_STATUSES, ModelRecord
from .types import GenerationConfig, GenerationStats, Response

if TYPE_CHECKING:
    from .aio import (
        AsyncCyllamaDB,
        AsyncLLM,
        AsyncStream,
        chat_async,
        complete_async,
        stream_complete_async,
    )

__version__ = "0.1.0"

# The async API imports asyncio (~25 ms): loaded on first use, so that
# `import cyllama_db` stays cheap for the scripts that never await.
_LAZY = {
    "AsyncCyllamaDB", "AsyncLLM", "AsyncStream", "chat_async", "complete_async", "stream_complete_async",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import aio

        value = getattr(aio, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cyllama_db' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)

__all__ = [
    "ENV_VARS",
    "LLM",
    "MODEL_STATUSES",
    "PARAMS",
    "PARAMS_BY_NAME",
    "AmbiguousModelError",
    "AsyncCyllamaDB",
    "AsyncLLM",
    "AsyncStream",
    "CacheMissError",
    "CachedLlama",
    "ChunkStream",
    "ConfigurationError",
    "ConfigurationTypeError",
    "ContextOverflowError",
    "CyllamaDB",
    "CyllamaDBError",
    "CyllamaDBHandler",
    "DatabaseBusyError",
    "DatabaseClosedError",
    "DatabaseError",
    "DatabaseFileError",
    "DatabaseIntegrityError",
    "DiskFullError",
    "ForeignDatabaseError",
    "GenerationConfig",
    "GenerationError",
    "GenerationStats",
    "GenerationTimeoutError",
    "GrammarError",
    "ImportTimeoutError",
    "JSONSchemaError",
    "MetricsSampler",
    "MigrationError",
    "MissingDependencyError",
    "ModelBusyError",
    "ModelExistsError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRecord",
    "OutOfRangeError",
    "Param",
    "ParameterTypeError",
    "ParameterValueError",
    "ReadOnlyDatabaseError",
    "Response",
    "SchemaVersionError",
    "ServerArgWarning",
    "Settings",
    "Stream",
    "UncacheableError",
    "UnknownModelError",
    "UnknownParameterError",
    "__version__",
    "cached",
    "chat",
    "chat_async",
    "complete",
    "complete_async",
    "configure_db",
    "generate_cache_key",
    "get_db",
    "loaded_model_paths",
    "model_identity",
    "reset_db",
    "sample_metrics",
    "stream_complete_async",
    "to_llama_kwargs",
    "to_sampling_kwargs",
    "to_server_args",
    "unload_models",
    "validate_params",
    "wrap",
]
