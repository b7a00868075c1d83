"""The exceptions cyllama-db raises.

Everything derives from :class:`CyllamaDBError`, so ``except CyllamaDBError``
catches any failure of this library.  Where the meaning matches a built-in
exception, the class also derives from it (a malformed setting is a
``ValueError``, an unkeyable argument a ``TypeError``), so code that already
catches the built-in keeps working.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: collections.abc costs an import
    from collections.abc import Iterable
    from typing import Any

__all__ = [
    "AmbiguousModelError",
    "Cancelled",
    "CommandError",
    "ConfigurationError",
    "ContextOverflowError",
    "CyllamaDBError",
    "DatabaseBusyError",
    "DatabaseClosedError",
    "DatabaseError",
    "DatabaseFileError",
    "DatabaseIntegrityError",
    "DiskFullError",
    "ForeignDatabaseError",
    "GGUFFormatError",
    "GenerationError",
    "GenerationTimeoutError",
    "GrammarError",
    "ImportTimeoutError",
    "JSONSchemaError",
    "MigrationError",
    "MissingDependencyError",
    "ModelBusyError",
    "ModelExistsError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OutOfRangeError",
    "ParameterTypeError",
    "ParameterValueError",
    "ReadOnlyDatabaseError",
    "SchemaVersionError",
    "SearchUnavailableError",
    "ServerArgWarning",
    "UncacheableError",
    "UnknownModelError",
    "UnknownParameterError",
    "UsageError",
]


class CyllamaDBError(Exception):
    """Base class of every error raised by cyllama-db."""


class ConfigurationError(CyllamaDBError, ValueError):
    """A setting (constructor argument or environment variable) is malformed."""


class ConfigurationTypeError(ConfigurationError, TypeError):
    """A constructor argument of the wrong type (``enabled="yes"``, ``path=5``).

    Both a :class:`ConfigurationError` and a ``TypeError``, so either catches it.
    """


class SchemaVersionError(CyllamaDBError):
    """The database file was written by a newer cyllama-db than this one.

    The file is left untouched; upgrade cyllama-db (``pip install -U cyllama-db``)
    or point ``CYLLAMA_DB_PATH`` at another file.
    """

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"database {path!r} has schema version {found}, but this cyllama-db "
            f"only knows versions up to {supported}. The file was not modified. "
            "Upgrade cyllama-db (pip install -U cyllama-db) or use another "
            "database path (CYLLAMA_DB_PATH or CyllamaDB(path=...))."
        )


class MigrationError(CyllamaDBError):
    """A schema migration failed; the transaction was rolled back."""


class DatabaseClosedError(CyllamaDBError, RuntimeError):
    """The database was used after :meth:`CyllamaDB.close`."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"database {path!r} is closed. Open a new CyllamaDB(...) (or call "
            "configure_db()/get_db() again for the global database)."
        )


class ReadOnlyDatabaseError(CyllamaDBError, PermissionError):
    """A write was attempted on a database file the process cannot write."""


class MissingDependencyError(CyllamaDBError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ModelLoadError(CyllamaDBError, ValueError):
    """llama.cpp could not load a model file; the message names the file and the cause.

    A ``ValueError`` because that is what llama-cpp-python raises for the same failures.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot load model {path!r}: {reason}")


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model file does not exist."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "no such file. Check the path (relative paths are resolved against the current directory).")


class ContextOverflowError(CyllamaDBError, ValueError):
    """The prompt does not fit in the model's context window (``n_ctx``)."""

    def __init__(self, path: str, detail: str, n_ctx: int | None = None) -> None:
        self.path = path
        self.n_ctx = n_ctx
        super().__init__(
            f"prompt too long for model {path!r}: {detail}. Shorten the prompt or load the "
            "model with a larger context, e.g. LLM(path, n_ctx=4096)."
        )


class GenerationError(CyllamaDBError, RuntimeError):
    """llama.cpp failed while generating (tokenising or evaluating the prompt)."""


class GenerationTimeoutError(CyllamaDBError, TimeoutError):
    """An async stream's next chunk took longer than its ``timeout=`` (``AsyncLLM.stream``).

    The generation was stopped and nothing was cached. A ``TimeoutError``,
    so ``except asyncio.TimeoutError`` catches it too. Pass a larger
    ``timeout`` (seconds per chunk) or None to wait as long as it takes.
    """


class ModelBusyError(CyllamaDBError, RuntimeError):
    """The model is held by an unfinished stream or generation for longer than the wait allows.

    A llama.cpp context runs one generation at a time. Raised at once when
    this thread itself still has an open stream on the model (finish
    iterating it, or call its ``close()``), and after ``wait_timeout``
    seconds when another thread holds it; the message names the holder.
    """


class AmbiguousModelError(CyllamaDBError, ValueError):
    """A model name (registry, GGUF ``general.name`` or file name) belongs to several model files."""

    def __init__(self, name: str, candidates: list[str]) -> None:
        self.name = name
        self.candidates = candidates
        listed = "; ".join(candidates)
        super().__init__(
            f"model {name!r} is ambiguous: it names {len(candidates)} different model files ({listed}); "
            "give the full path of the one you mean"
        )


class CacheMissError(CyllamaDBError, LookupError):
    """``cache="only-if-cached"`` was asked for and the cache has no answer; nothing was generated."""


class Cancelled(CyllamaDBError):
    """A generation given up part-way because its caller went away (the async API's
    cancellation). Internal: the caller sees ``asyncio.CancelledError``. A
    single-flight leader that raises it abandons its flight, so its followers
    start over instead of sharing the error. ``response`` is what was produced
    (``finish_reason="cancelled"``), or None if generation never started."""

    def __init__(self, response: Any) -> None:
        super().__init__("the generation was cancelled by its caller")
        self.response = response


class UncacheableError(CyllamaDBError, TypeError):
    """A ``@cached`` argument or return value cannot be stored as JSON (the message says which)."""


class UnknownModelError(CyllamaDBError, KeyError):
    """No model is registered under that id or name (see ``db.get_models()``)."""

    def __init__(self, model: object, hint: str | None = None) -> None:
        self.model = model
        what = f"id {model}" if isinstance(model, int) else f"name {model!r}"
        self.message = f"no model registered under {what}; " + (
            hint
            or "list them with db.get_models() "
            "or add one with db.save_model(name, ...) / db.register_model(path)"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class ModelExistsError(CyllamaDBError, ValueError):
    """A model with that name is already registered (names are unique)."""

    def __init__(self, name: str, hint: str = "") -> None:
        self.name = name
        super().__init__(
            f"a model named {name!r} is already registered; "
            + (hint or "pick another name, or change it with db.update_model(id, ...)")
        )


# -- the model registry's parameter, file and launch errors (issue 15: moved here
# -- from stores/params.py and stores/gguf.py, which import them from here).


class UnknownParameterError(CyllamaDBError, KeyError, TypeError):
    """A parameter name that :data:`~cyllama_db.PARAMS` does not know.

    A ``KeyError`` (an unknown key) and a ``TypeError`` (like any unexpected
    keyword argument, e.g. to ``save_model(**params)``).
    """

    def __init__(self, name: str, suggestions: Iterable[str] = (), hint: str | None = None) -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        if hint is None:
            hint = (
                f"; did you mean {', '.join(map(repr, self.suggestions))}?"
                if self.suggestions
                else ""
            )
        else:
            hint = f"; {hint}"
        self.message = f"unknown model parameter {name!r}{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message, wrapping it in quotes.
        return self.message


def _shown(name: str, value: object) -> tuple[bool, object]:
    # The catalogue decides what is secret; imported here, when an error is
    # made, so that this module imports nothing of the library's.
    from .stores.params import shown_in_errors

    return shown_in_errors(name, value)


class ParameterTypeError(CyllamaDBError, TypeError):
    """A parameter value of the wrong Python type.

    The message shows the value, except for secret parameters (``hf_token``,
    ``api_key``: only its type) and ``custom_params`` (secret flags redacted).
    """

    def __init__(self, name: str, expected: str, value: object) -> None:
        self.name = name
        self.expected = expected
        self.got = type(value).__name__
        hidden, shown = _shown(name, value)
        detail = "" if hidden else f" ({shown!r})"
        super().__init__(f"model parameter {name!r} expects {expected}, got {self.got}{detail}")


class ParameterValueError(CyllamaDBError, ValueError):
    """A parameter value of the right type that the parameter does not allow.

    ``value`` (and the message) is the value given, except for secret
    parameters (:data:`~cyllama_db.stores.params.REDACTED`) and
    ``custom_params`` (secret flags redacted).
    """

    def __init__(self, name: str, value: object, allowed: str) -> None:
        hidden, shown = _shown(name, value)
        self.name = name
        self.value = shown
        self.allowed = allowed
        what = f"this {type(value).__name__} value" if hidden else repr(shown)
        super().__init__(f"model parameter {name!r} does not allow {what}; allowed: {allowed}")


class ServerArgWarning(UserWarning):
    """A set parameter could not be expressed on the llama-server command line."""


class GGUFFormatError(CyllamaDBError, ValueError):
    """The file is not a (supported, well-formed) GGUF file."""


class DatabaseBusyError(CyllamaDBError, TimeoutError):
    """Another connection held the write lock for longer than the busy timeout.

    Nothing was written. Retry, make the other writer's transactions shorter,
    or raise ``busy_timeout`` (``CYLLAMA_DB_BUSY_TIMEOUT``).
    """

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        super().__init__(
            f"database {path!r} is locked by another writer and stayed locked for the "
            f"whole busy timeout ({busy_timeout:g} s); nothing was written. Retry, keep the "
            "other writer's transactions short, or raise busy_timeout / CYLLAMA_DB_BUSY_TIMEOUT."
        )


# -- appended for the error contract (issue 13): every sqlite3 failure and every
# -- out-of-range number maps to one of these, never escapes raw.


class DatabaseError(CyllamaDBError):
    """SQLite failed on the database file itself (full disk, I/O error, file removed, corrupt).

    ``path`` is the database, ``sqlite_error`` SQLite's own message. The
    operation that raised wrote nothing (its transaction was rolled back).
    """

    def __init__(self, path: str, sqlite_error: str, hint: str) -> None:
        self.path = path
        self.sqlite_error = sqlite_error
        super().__init__(f"database {path!r}: {sqlite_error}. {hint}")


class DiskFullError(DatabaseError, OSError):
    """The disk (or the file system's quota) holding the database is full; nothing was written."""


class DatabaseFileError(DatabaseError, OSError):
    """The database file is gone, replaced, unreadable or corrupt under a running process."""


class DatabaseIntegrityError(DatabaseError, ValueError):
    """A row broke one of the schema's constraints (``NOT NULL``, ``CHECK``, ``UNIQUE``); nothing was written."""


class OutOfRangeError(CyllamaDBError, ValueError):
    """A number of the right type that is too large (or not finite) for what it stands for."""


class ImportTimeoutError(CyllamaDBError, TimeoutError):
    """``import_database`` ran past its time limit; the import was rolled back, nothing was written."""


# -- appended for opening (issue 13): files that belong to another application.


class ForeignDatabaseError(CyllamaDBError):
    """The file is another application's SQLite database; cyllama-db refuses to touch it.

    Nothing was written: not a byte of the file changed and no ``-wal`` or
    ``-shm`` file was left beside it. Point ``CYLLAMA_DB_PATH`` (or
    ``CyllamaDB(path=...)``) at a file of its own.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"database {path!r} belongs to another application ({reason}); cyllama-db left it "
            "untouched. Use a file of its own: CYLLAMA_DB_PATH or CyllamaDB(path=...)."
        )


class GrammarError(CyllamaDBError, ValueError):
    """A GBNF grammar that llama.cpp would refuse (or crash on); the message names the line and column.

    Raised before the grammar reaches llama.cpp, whose grammar sampler would
    otherwise fail at sampling time and bring the whole process down.
    """


class JSONSchemaError(GrammarError):
    """A JSON schema that cannot be turned into a grammar (not a schema, an unknown type, a ``$ref`` that does not resolve)."""


class SearchUnavailableError(CyllamaDBError, RuntimeError):
    """Full-text search was asked for, but the database has no search index.

    The index needs SQLite's FTS5 extension, which this Python's SQLite lacks
    (or lacked when the file was upgraded); the message says which, and how
    to get it. Everything else keeps working without it.
    """


# -- the command line (``cyllama-db``): how ``cli.main`` reports a failed command.


class UsageError(CyllamaDBError):
    """A malformed ``cyllama-db`` command line: reported on one line, exit code 2.

    ``prog`` is the command it belongs to (``"cyllama-db export"``), named in
    the message together with its ``--help``.
    """

    def __init__(self, message: str, prog: str = "cyllama-db") -> None:
        super().__init__(message)
        self.message = message
        self.prog = prog


class CommandError(CyllamaDBError):
    """A ``cyllama-db`` command cannot do what was asked: one line on stderr, exit code 1."""
