"""Waiting for a model or for an identical request: model locks, wait timeouts, single flight.

One generation runs at a time per model (llama.cpp contexts are not
thread-safe): each ``LLM`` has a :class:`_ModelLock`, and every wrapper of
one already loaded ``Llama`` shares that object's lock (:func:`_lock_for`).
Identical concurrent misses on one database generate once (``_flights``).
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

from ..errors import ModelBusyError
from ..stores.keys import SingleFlight
from ..types import Response

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB

#: Seconds a call waits for a model that another thread's generation or
#: stream holds, and for an identical request already being generated,
#: before giving up (``ModelBusyError``) or generating on its own.
DEFAULT_WAIT_TIMEOUT: Final = 600.0

# "Not given" (None means "wait forever"): the environment or the default decides.
_UNSET: Final[Any] = object()


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


# One lock per Llama object: two wrappers of one Llama must not run it at once.
_llama_locks: weakref.WeakKeyDictionary[Any, _ModelLock] = weakref.WeakKeyDictionary()
_llama_locks_guard = threading.Lock()


def _lock_for(llama: Any) -> _ModelLock:
    with _llama_locks_guard:
        lock = _llama_locks.get(llama)
        if lock is None:
            lock = _llama_locks[llama] = _ModelLock()
        return lock


# Identical requests under way, by :func:`_flight_key`: the first generates, the others wait for it.
_flights: SingleFlight[Response] = SingleFlight()


def _flight_key(db: CyllamaDB, key: str) -> str:
    # Per database file (two CyllamaDB objects on one file share flights);
    # an in-memory database is its own object.
    path = db.path
    return f"{id(db)}:{key}" if path == ":memory:" else f"{path}:{key}"
