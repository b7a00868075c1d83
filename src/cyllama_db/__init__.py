"""cyllama-db: one database for everything local llama.cpp inference should remember.

``import cyllama_db`` is cheap: it loads the error classes and nothing else.
Every other public name is loaded on first use (PEP 562), so a script that
only needs ``cached`` never pays for the CLI, the async API or the stores it
does not touch, and llama_cpp, psutil, pynvml, psycopg and opentelemetry are
imported only by the functions that need them.

The public API is exactly ``__all__``; everything under the subpackages
(``db``, ``stores``, ``llm``, ``cli``, ``dashboard``) is internal unless its
page in docs/ says otherwise.
"""

from __future__ import annotations

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

# typing costs ~10 ms to import; mypy reads any name TYPE_CHECKING as True.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from .aio import (
        AsyncCyllamaDB,
        AsyncLLM,
        AsyncStream,
        chat_async,
        complete_async,
        stream_complete_async,
    )
    from .db.facade import (
        CyllamaDB,
        configure_db,
        get_db,
        reset_db,
    )
    from .db.settings import (
        ENV_VARS,
        Settings,
    )
    from .decorators import (
        cached,
    )
    from .llm import (
        LLM,
        ChunkStream,
        Stream,
        chat,
        complete,
        loaded_model_paths,
        unload_models,
    )
    from .llm.wrap import (
        CachedLlama,
        wrap,
    )
    from .stores.cache import (
        generate_cache_key,
        model_identity,
    )
    from .stores.logs import (
        CyllamaDBHandler,
    )
    from .stores.metrics import (
        MetricsSampler,
        sample_metrics,
    )
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
    from .stores.registry import (
        MODEL_STATUSES,
        ModelRecord,
    )
    from .types import (
        GenerationConfig,
        GenerationStats,
        Response,
    )

__version__ = "0.1.0"

# Where each lazily loaded public name lives.
_LAZY: dict[str, str] = {
    "AsyncCyllamaDB": ".aio",
    "AsyncLLM": ".aio",
    "AsyncStream": ".aio",
    "chat_async": ".aio",
    "complete_async": ".aio",
    "stream_complete_async": ".aio",
    "CyllamaDB": ".db.facade",
    "configure_db": ".db.facade",
    "get_db": ".db.facade",
    "reset_db": ".db.facade",
    "ENV_VARS": ".db.settings",
    "Settings": ".db.settings",
    "cached": ".decorators",
    "ChunkStream": ".llm",
    "LLM": ".llm",
    "Stream": ".llm",
    "chat": ".llm",
    "complete": ".llm",
    "loaded_model_paths": ".llm",
    "unload_models": ".llm",
    "CachedLlama": ".llm.wrap",
    "wrap": ".llm.wrap",
    "generate_cache_key": ".stores.cache",
    "model_identity": ".stores.cache",
    "CyllamaDBHandler": ".stores.logs",
    "MetricsSampler": ".stores.metrics",
    "sample_metrics": ".stores.metrics",
    "PARAMS": ".stores.params",
    "PARAMS_BY_NAME": ".stores.params",
    "Param": ".stores.params",
    "ParameterTypeError": ".stores.params",
    "ParameterValueError": ".stores.params",
    "ServerArgWarning": ".stores.params",
    "UnknownParameterError": ".stores.params",
    "to_llama_kwargs": ".stores.params",
    "to_sampling_kwargs": ".stores.params",
    "to_server_args": ".stores.params",
    "validate_params": ".stores.params",
    "MODEL_STATUSES": ".stores.registry",
    "ModelRecord": ".stores.registry",
    "GenerationConfig": ".types",
    "GenerationStats": ".types",
    "Response": ".types",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cyllama_db' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
