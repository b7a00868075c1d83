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
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from time import monotonic as _monotonic
from typing import Any, Generic, TypeVar

from .errors import UncacheableError

__all__ = [
    "SingleFlight",
    "canonical_json",
    "chat_key",
    "completion_key",
    "function_key",
    "keyable",
    "model_identity",
    "recent_model_identity",
    "sha256_text",
]

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

    The fingerprint (128 bits of :func:`cyllama_db._gguf.model_fingerprint`)
    covers the file size and the whole GGUF header and metadata section, so
    the same file at two paths shares cache entries, while a different file
    under the same name (re-quantised, re-converted, edited metadata) does not.
    A path that does not exist has the bare basename as its identity; a file
    that is not GGUF is fingerprinted by its size and first megabyte.
    """
    path = os.fspath(model_path)
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
    from ._gguf import GGUFFormatError, model_fingerprint

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
    from ._gguf import clear_fingerprint_cache

    _identity_cache.clear()
    _checked.clear()
    clear_fingerprint_cache()


# -- keys --------------------------------------------------------------------------------------


# (config_json, identity) -> sha256 state after '{"config":…,"model":…,"prompt":'.
_prefix_states: dict[tuple[str, str], Any] = {}


def completion_key(prompt: str, identity: str, config_json: str) -> str:
    """Key of a plain completion: sha256 of ``{"config":…,"model":…,"prompt":…}``.

    Hashed incrementally rather than via ``canonical_json`` of a dict because
    this is on every hit's path; the bytes hashed are identical
    (``config_json`` is itself canonical and the three keys are in sorted
    order), and the state after the config and model is reused.
    """
    state = _prefix_states.get((config_json, identity))
    if state is None:
        prefix = '{"config":' + config_json + ',"model":' + _json_string(identity) + ',"prompt":'
        state = hashlib.sha256(prefix.encode("ascii"))
        if len(_prefix_states) >= 256:
            _prefix_states.clear()
        _prefix_states[(config_json, identity)] = state
    digest = state.copy()
    digest.update(_json_string(prompt).encode("ascii"))
    digest.update(b"}")
    return digest.hexdigest()


def chat_key(messages_json: str, identity: str, config_json: str) -> str:
    """Key of a chat completion: ``{"config","kind":"chat","messages","model"}``."""
    data = (
        '{"config":' + config_json + ',"kind":"chat","messages":' + messages_json
        + ',"model":' + _json_string(identity) + "}"
    )
    return hashlib.sha256(data.encode("ascii")).hexdigest()


def function_key(function: str, args_json: str) -> str:
    """Key of a ``@cached`` function call: ``{"args","function","kind":"function"}``."""
    data = '{"args":' + args_json + ',"function":' + _json_string(function) + ',"kind":"function"}'
    return hashlib.sha256(data.encode("ascii")).hexdigest()


def canonical_messages(messages: Any) -> str:
    """Validate chat ``messages`` and return their canonical JSON (the chat prompt)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError("messages must not be empty")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}] needs a non-empty str 'role' (e.g. 'user')")
    try:
        return canonical_json([dict(m) for m in messages])
    except (TypeError, ValueError) as exc:
        raise TypeError(f"messages must contain only JSON values: {exc}") from exc


def keyable(value: Any, name: str) -> Any:
    """``value`` as a JSON value that identifies it, for ``@cached`` keys.

    Raises :class:`~cyllama_db.errors.UncacheableError` (a ``TypeError``)
    naming ``name`` for values that have no stable identity (open files,
    arbitrary objects, lambdas...).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (list, tuple)):
        return [keyable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UncacheableError(
                    f"argument {name!r} cannot be part of a cache key: dict key {k!r} is not a str"
                )
            out[k] = keyable(v, f"{name}[{k!r}]")
        return out
    if isinstance(value, (set, frozenset)):
        items = [canonical_json(keyable(v, f"{name} item")) for v in value]
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
                f.name: keyable(getattr(value, f.name), f"{name}.{f.name}")
                for f in dataclasses.fields(value)
            },
        }
    raise UncacheableError(
        f"argument {name!r} cannot be part of a cache key: {type(value).__name__} values have "
        "no stable identity. Pass JSON-like values (str, numbers, bool, None, lists, dicts with "
        "str keys), dataclasses, enums, dates or paths instead."
    )


# -- single-flight -----------------------------------------------------------------------------


class _Flight(Generic[T]):
    __slots__ = ("done", "error", "owner", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.owner = threading.get_ident()


class SingleFlight(Generic[T]):
    """Concurrent calls with the same key run once; the others wait for its result.

    Like Go's ``singleflight.Group``: the first caller of a key (the leader)
    runs ``fn``; callers arriving while it runs block and receive the same
    result, or the same exception. A leader calling itself recursively with
    the same key runs ``fn`` again rather than waiting on itself forever.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[T]] = {}

    def run(self, key: str, fn: Callable[[], T]) -> tuple[T, bool]:
        """``(result, shared)``: ``shared`` is True when another caller computed it."""
        with self._lock:
            flight = self._flights.get(key)
            leader: bool | None = flight is None
            if flight is None:
                flight = _Flight()
                self._flights[key] = flight
            elif flight.owner == threading.get_ident():
                leader = None  # recursion: run without registering
        if leader is False:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result, True  # type: ignore[return-value]
        if leader is None:
            return fn(), False
        try:
            flight.result = fn()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()
        return flight.result, False

    def in_flight(self, key: str) -> bool:
        """Whether a leader is running ``key`` right now."""
        return key in self._flights
