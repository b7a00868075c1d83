"""The async API: ``AsyncLLM``, ``complete_async``, ``chat_async``, ``stream_complete_async``.

The names and signatures are cyllama's, with the response cache, statistics,
per-call options and errors of the sync API (:mod:`cyllama_db.llm`)::

    async with AsyncLLM("model.gguf", temperature=0.0) as llm:
        response = await llm("What is Python?")
        async for chunk in llm.stream("Tell me a story"):
            print(chunk, end="")

What runs where:

* Checking the arguments, making the cache key and looking it up run on the
  event loop: a hit costs tens of microseconds, less than handing it to a
  thread (the figures are in docs/inference.md). The first call on a model
  fingerprints its file in a worker thread, and a lookup that is due to write
  the buffered hit counts runs in one too.
* Generation never runs on the event loop: a miss runs in a worker thread, a
  stream in a producer thread of its own that makes one chunk each time the
  consumer asks for one.
* Among the tasks of one event loop, one generation or open stream at a time
  uses a model; the others wait for it without holding a thread, for at most
  ``wait_timeout`` seconds (then :class:`~cyllama_db.ModelBusyError`).
* Identical concurrent misses generate once: the first task leads, the others
  await an asyncio future (no thread) and receive its answer as a hit.
* Cancelling a task (``task.cancel()``, ``asyncio.wait_for`` timing out) or
  leaving an ``async for`` early stops the generation at its next token and
  releases the model; nothing partial is cached.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .errors import Cancelled, GenerationTimeoutError, ModelBusyError
from .llm.locks import _UNSET, _ModelLock, _wait_timeout
from .llm.model import LLM, _Plan
from .llm.options import CacheArg, DBArg, Messages, _pop_passthrough
from .llm.shared import _model_target
from .llm.status import _record
from .llm.stream import replay_stream
from .types import GenerationConfig, Response, _as_hit

if TYPE_CHECKING:
    from .db.facade import CyllamaDB
    from .llm.wrap import CachedLlama, _Call

__all__ = [
    "AsyncCyllamaDB",
    "AsyncLLM",
    "AsyncStream",
    "chat_async",
    "complete_async",
    "stream_complete_async",
]

logger = logging.getLogger("cyllama_db.inference")

T = TypeVar("T")

# -- per-loop state: single-flight futures and model gates ---------------------------------------


class _Failed:
    """A leader's exception, handed to its followers (they raise it, as sync followers do)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_ABANDONED: Final = object()  # the leader gave up (cancelled, stream closed early): start over
_TIMED_OUT: Final = object()  # waited wait_timeout for the leader: go ahead alone


class _Gate:
    """One generation or open stream at a time per model among one loop's tasks.

    A FIFO of futures rather than an ``asyncio.Lock``: waiting holds no
    thread, a wait ends after ``timeout`` seconds with ``ModelBusyError``
    naming the holder, and the gate keeps no reference to its loop once idle.
    """

    __slots__ = ("_waiters", "holder", "link", "locked", "owner", "since")

    def __init__(self) -> None:
        self.locked = False
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        # The task whose open stream holds the gate (None for a generation) and that
        # stream's link: the same task asking again would wait for itself forever.
        self.owner: asyncio.Task[Any] | None = None
        self.link: weakref.ref[_Link] | None = None  # weak: the gate outlives streams and loops
        self.holder = ""
        self.since = 0.0

    def _own_open_stream(self, task: asyncio.Task[Any] | None) -> bool:
        return self.locked and task is not None and self.owner is task and not self._closing()

    async def acquire(self, path: str, timeout: float | None, what: str, *, stream: bool = False) -> None:
        task = asyncio.current_task()
        for _ in range(4):
            if not self._own_open_stream(task):
                break
            # A stream left inside a dropped async generator is closed by the loop's
            # finaliser a few iterations later (an `async for` over a wrapper, then break).
            await asyncio.sleep(0)
        if self._own_open_stream(task):
            raise ModelBusyError(
                f"this task has an unfinished stream on {path!r}; read it to the end or "
                "await its aclose() (or leave the async for and drop it) before starting "
                "another generation on the same model"
            )
        if self.locked or self._waiters:
            loop = asyncio.get_running_loop()
            granted: asyncio.Future[bool] = loop.create_future()
            self._waiters.append(granted)
            timer = None if timeout is None else loop.call_later(timeout, self._expire, granted)
            try:
                ok = await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled() and granted.result():
                    self.release()  # granted just as we were cancelled: pass it on
                else:
                    self._forget(granted)
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if not ok:
                held = time.monotonic() - self.since
                raise ModelBusyError(
                    f"model {path!r} is busy: {self.holder or 'another task'} has held it for "
                    f"{held:.1f} s and this call waited {timeout:g} s. Finish or aclose() that "
                    "stream, or pass a larger wait_timeout= ($CYLLAMA_MODEL_WAIT_TIMEOUT)"
                )
        else:
            self.locked = True
        self.owner = task if stream else None
        self.link = None
        name = task.get_name() if task is not None else "?"
        self.holder = f"{what} in task {name!r}"
        self.since = time.monotonic()

    def _closing(self) -> bool:
        """Whether the holder is a stream already asked to close (it releases the model soon)."""
        link = None if self.link is None else self.link()
        return link is None or link.closing

    def release(self) -> None:
        self.owner = None
        self.link = None
        self.holder = ""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # handed over: stays locked
                return
        self.locked = False

    def _expire(self, granted: asyncio.Future[bool]) -> None:
        if not granted.done():
            granted.set_result(False)
        self._forget(granted)

    def _forget(self, granted: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(granted)


class _LoopState:
    __slots__ = ("__weakref__", "flights", "gates")

    def __init__(self) -> None:
        # Identical requests in flight: flight key -> the future their followers await.
        self.flights: dict[str, asyncio.Future[Any]] = {}
        # A model's gate, by the model's lock (shared by every LLM of one Llama).
        self.gates: weakref.WeakKeyDictionary[_ModelLock, _Gate] = weakref.WeakKeyDictionary()


_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def _state() -> _LoopState:
    loop = asyncio.get_running_loop()
    state = _states.get(loop)
    if state is None:
        with _states_lock:
            state = _states.setdefault(loop, _LoopState())
    return state


def _gate(state: _LoopState, llm: LLM) -> _Gate:
    gate = state.gates.get(llm._lock)
    if gate is None:
        gate = state.gates[llm._lock] = _Gate()
    return gate


def _settle_flight(state: _LoopState, key: str, flight: asyncio.Future[Any], outcome: Any) -> None:
    if state.flights.get(key) is flight:
        del state.flights[key]
    if not flight.done():
        flight.set_result(outcome)


async def _follow(flight: asyncio.Future[Any], wait: float | None) -> Any:
    """The outcome of another task's flight (no thread is held), or ``_TIMED_OUT``."""
    try:
        if wait is None:
            return await asyncio.shield(flight)
        return await asyncio.wait_for(asyncio.shield(flight), wait)
    except TimeoutError:
        logger.info("gave up waiting %ss for an identical request; running it separately", wait)
        return _TIMED_OUT


# -- running blocking work off the loop ----------------------------------------------------------


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Mark an abandoned worker's exception as seen (no "never retrieved" log).
    if not future.cancelled():
        future.exception()


async def _off_loop(
    fn: Callable[[], T], cancel: threading.Event | None = None, done: Callable[[], None] | None = None
) -> T:
    """``fn()`` in a worker thread. ``done`` runs on the loop once the thread has
    finished, even if the caller was cancelled long before; cancelling the
    caller sets ``cancel`` (the worker stops at its next token) and returns at once."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    try:
        future = loop.run_in_executor(None, context.run, fn)
    except BaseException:
        if done is not None:
            done()
        raise

    def finished(f: asyncio.Future[Any]) -> None:
        _retrieve(f)
        if done is not None:
            done()

    future.add_done_callback(finished)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if cancel is not None:
            cancel.set()
        raise


_warm_paths: set[str] = set()


async def _warm(llm: LLM) -> None:
    """Fingerprint the model file (and read its name) in a thread the first time:
    reading a large GGUF header takes milliseconds, later calls only ``stat()`` it."""
    path = llm.model_path
    if path in _warm_paths:
        return

    def warm() -> None:
        from .stores.keys import model_identity
        from .stores.stats import model_name_for

        model_identity(path)
        model_name_for(path)

    await asyncio.to_thread(warm)
    _warm_paths.add(path)


async def _plan(llm: LLM, kind: str, payload: Any, stream: bool, request: Mapping[str, Any]) -> _Plan:
    """:meth:`LLM._prepare` (arguments, key, lookup) on the loop: a lookup is one indexed read."""
    await _warm(llm)
    # A lookup never writes (its hit is counted by db.deferred's thread): it
    # runs on the loop, as fast as the SELECT that finds it.
    return llm._prepare(kind, payload, stream, **request)  # type: ignore[arg-type]


# -- requests ------------------------------------------------------------------------------------


def _finish(llm: LLM, plan: _Plan) -> Response:
    """The generating half of a request, in a worker thread."""
    try:
        response = llm._finish(plan, False)
    except Cancelled as exc:
        if exc.response is not None:  # stopped part-way: recorded as a closed stream is
            _record(plan.database, llm.model_path, exc.response, plan.config)
        raise
    assert isinstance(response, Response)
    return response


def _alone(llm: LLM, plan: _Plan) -> Response:
    """A follower that waited ``wait_timeout`` for its leader: look up once more, else
    generate and store outside the flight (what the sync follower does)."""
    entry, database = plan.entry, plan.database
    assert entry is not None and database is not None
    response = llm._lookup(database, entry, plan.started)
    if response is None:
        try:
            response = llm._generate(plan.kind, plan.payload, plan.config, plan.extra, plan.wait, plan.cancel)
        except Cancelled as exc:
            if exc.response is not None:
                _record(database, llm.model_path, exc.response, plan.config)
            raise
        response._key = entry.key
        llm._store(database, entry, plan.config, response)
    _record(database, llm.model_path, response, plan.config)
    return response


async def _generate(llm: LLM, plan: _Plan, *, alone: bool = False) -> Response:
    """Wait for the model (no thread), then generate in a worker thread."""
    gate = _gate(_state(), llm)
    await gate.acquire(llm.model_path, plan.wait, "a generation")
    plan.cancel = threading.Event()
    work = functools.partial(_alone if alone else _finish, llm, plan)
    return await _off_loop(work, plan.cancel, gate.release)


async def _request(llm: LLM, kind: str, payload: Any, request: Mapping[str, Any]) -> Response:
    """An awaited (non-streamed) request: a hit on the loop, a miss generated once per key."""
    plan = await _plan(llm, kind, payload, False, request)
    if plan.hit is not None:
        _record(plan.database, llm.model_path, plan.hit, plan.config)
        return plan.hit
    key = plan.flight_key
    if key is None:  # the cache is off for this call, or cache="refresh"
        return await _generate(llm, plan)
    state = _state()
    while True:
        flight = state.flights.get(key)
        if flight is None:
            break
        outcome = await _follow(flight, plan.wait)
        if outcome is _TIMED_OUT:
            return await _generate(llm, plan, alone=True)
        if outcome is _ABANDONED:
            continue  # the leader was cancelled: lead, or follow a newer leader
        if isinstance(outcome, _Failed):
            raise outcome.error
        hit = _as_hit(outcome, plan.started)
        _record(plan.database, llm.model_path, hit, plan.config)
        return hit
    flight = state.flights[key] = asyncio.get_running_loop().create_future()
    outcome = _ABANDONED
    try:
        response = await _generate(llm, plan)
        outcome = response
        return response
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        outcome = _Failed(exc)
        raise
    finally:
        _settle_flight(state, key, flight, outcome)


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be seconds per chunk (a number) or None, got {timeout!r}")
    try:
        seconds = float(timeout)
    except OverflowError:  # an int beyond a double's range
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"timeout must be a positive number of seconds per chunk or None, got {timeout!r}")
    return seconds


# -- streams -------------------------------------------------------------------------------------

_NEXT: Final = "next"
_CLOSE: Final = "close"
_END: Final = object()


class _Link:
    """What an :class:`AsyncStream` and its producer thread share (never the stream itself,
    so dropping the stream closes it at once, by reference counting)."""

    __slots__ = (
        "__weakref__", "closing", "factory", "finished", "loop", "on_finished", "on_stop", "requests", "stream",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, factory: Callable[[], Any]) -> None:
        self.loop = loop
        self.factory: Callable[[], Any] | None = factory
        self.requests: queue.SimpleQueue[tuple[str, asyncio.Future[Any] | None]] = queue.SimpleQueue()
        self.stream: Any = None  # the sync Stream (or llama-cpp-python iterator), made by the producer
        self.finished: asyncio.Future[None] = loop.create_future()
        self.on_finished: Callable[[Any], None] | None = None
        self.on_stop: Callable[[], None] | None = None  # on the loop, when the consumer stops early
        self.closing = False

    def close_soon(self) -> None:
        """Ask the producer to close the stream after the chunk it is making (thread-safe)."""
        if not self.closing:
            self.closing = True
            self.requests.put((_CLOSE, None))


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(fn, *args)


def _produce(link: _Link) -> None:
    """The producer thread: one chunk per request, then close the sync stream, which
    releases the model (and stores the answer only if it ran to the end)."""
    stream = None
    try:
        while True:
            op, reply = link.requests.get()
            if op == _CLOSE or reply is None:
                break
            try:
                if stream is None:
                    assert link.factory is not None
                    stream = link.stream = link.factory()
                item = next(stream)
            except StopIteration:
                _post(link.loop, _resolve, reply, _END)
                break
            except BaseException as exc:
                _post(link.loop, _resolve, reply, _Failed(exc))
                break
            _post(link.loop, _resolve, reply, item)
    finally:
        link.factory = None  # the LLM is not kept alive by a finished stream
        response = None
        if stream is not None:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # pragma: no cover - closing our own generators does not fail
                    logger.warning("closing a stream failed: %s", exc)
            response = getattr(stream, "response", None)
        if link.on_finished is not None:
            _post(link.loop, link.on_finished, response)


class AsyncStream:
    """An async iterator of text chunks (``AsyncLLM.stream``), or of llama-cpp-python
    chunk dicts (``wrap(llama).acreate_completion(..., stream=True)``).

    Like the sync :class:`~cyllama_db.Stream`: ``cache_hit`` says whether it
    replays a cached (or another task's) answer, ``text`` is what arrived so
    far, ``response`` the whole :class:`~cyllama_db.Response` once the stream
    ran to the end, and a streamed miss is cached only if it ran to the end.
    Nothing happens until the first ``__anext__``: then the cache is looked up
    and, on a miss, a producer thread generates one chunk each time one is
    asked for.

    Leaving the ``async for`` early (``break``, an exception, the task being
    cancelled, a ``timeout`` expiring) stops the generation after the chunk
    being made and releases the model: at once when the stream is dropped,
    and :meth:`aclose` (or ``async with``) also waits for it.
    """

    def __init__(
        self,
        model_path: str,
        start: Callable[[AsyncStream], Awaitable[None]] | None,
        *,
        chunks: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.model_path = model_path
        self._start = start
        self._chunks = chunks
        self._timeout = timeout
        self._replay: Any = None  # a sync replay Stream: a hit, iterated on the loop
        self._link: _Link | None = None
        self._done = False

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        if self._start is not None:
            start, self._start = self._start, None
            try:
                await start(self)
            except BaseException:
                self._done = True
                raise
        if self._replay is not None:
            try:
                return next(self._replay)
            except StopIteration:
                self._done = True
                raise StopAsyncIteration from None
        link = self._link
        if link is None:  # started and ended without a source (cannot happen)
            raise StopAsyncIteration
        reply: asyncio.Future[Any] = link.loop.create_future()
        link.requests.put((_NEXT, reply))
        try:
            if self._timeout is None:
                value = await reply
            else:
                value = await asyncio.wait_for(reply, self._timeout)
        except TimeoutError:
            self._stop()
            raise GenerationTimeoutError(
                f"no chunk from {os.path.basename(self.model_path)!r} within timeout={self._timeout:g} s; "
                "the generation was stopped and nothing was cached (pass a larger timeout, or None)"
            ) from None
        except BaseException:
            self._stop()  # cancelled: the producer stops after the chunk it is making
            raise
        if value is _END:
            self._done = True
            await asyncio.shield(link.finished)  # the model is released when iteration ends
            raise StopAsyncIteration
        if isinstance(value, _Failed):
            self._done = True
            await asyncio.shield(link.finished)
            raise value.error
        return value

    def _stop(self) -> None:
        self._done = True
        self._start = None
        link = self._link
        if link is not None:
            link.close_soon()
            if link.on_stop is not None:
                link.on_stop()

    async def aclose(self) -> None:
        """Stop the stream and wait until the model is released; an unfinished
        generation is not cached."""
        self._stop()
        link = self._link
        if link is not None and not link.finished.done():
            await asyncio.shield(link.finished)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Reached by reference counting as soon as the consumer lets go.
        link = self.__dict__.get("_link")
        if link is not None:
            link.close_soon()
            if link.on_stop is not None:
                _post(link.loop, link.on_stop)

    def _source(self) -> Any:
        if self._replay is not None:
            return self._replay
        return None if self._link is None else self._link.stream

    @property
    def cache_hit(self) -> bool:
        """Whether this stream replays a cached (or another call's) answer."""
        return bool(getattr(self._source(), "cache_hit", False))

    @property
    def response(self) -> Response | None:
        """The complete :class:`~cyllama_db.Response` once the stream ran to the end."""
        return getattr(self._source(), "response", None)

    @property
    def text(self) -> str:
        """The text received so far."""
        return str(getattr(self._source(), "text", ""))

    def __repr__(self) -> str:
        state = "done" if self._done else "open"
        return f"<AsyncStream {os.path.basename(self.model_path)} cache_hit={self.cache_hit} {state}>"


def _stream(
    llm: LLM | None,
    kind: str,
    payload: Any,
    request: Mapping[str, Any] | None,
    *,
    chunks: bool = False,
    timeout: float | None = None,
    target: Callable[[], Awaitable[tuple[LLM, dict[str, Any]]]] | None = None,
    streams: weakref.WeakSet[AsyncStream] | None = None,
) -> AsyncStream:
    """An :class:`AsyncStream` of a request; ``target`` (instead of ``llm`` and
    ``request``) resolves them at the first chunk."""

    async def start(stream: AsyncStream) -> None:
        if target is not None:
            model, args = await target()
        else:
            assert llm is not None and request is not None
            model, args = llm, dict(request)
        stream.model_path = model.model_path
        plan = await _plan(model, kind, payload, True, args)
        if plan.hit is not None:
            _record(plan.database, model.model_path, plan.hit, plan.config)
            stream._replay = replay_stream(model, plan.hit, chunks, plan.extra)
            return
        await _begin(stream, model, plan, chunks)

    stream = AsyncStream("" if llm is None else llm.model_path, start, chunks=chunks, timeout=timeout)
    if streams is not None:
        streams.add(stream)
    return stream


async def _begin(stream: AsyncStream, llm: LLM, plan: _Plan, chunks: bool) -> None:
    """Start a streamed miss: follow an identical request in flight (replaying its answer),
    or take the model and start the producer thread, leading the flight."""
    state = _state()
    key = plan.flight_key
    flight: asyncio.Future[Any] | None = None
    if key is not None:
        while True:
            current = state.flights.get(key)
            if current is None:
                flight = state.flights[key] = asyncio.get_running_loop().create_future()
                break
            outcome = await _follow(current, plan.wait)
            if outcome is _TIMED_OUT:
                break  # generate on our own, outside the flight
            if outcome is _ABANDONED:
                continue
            if isinstance(outcome, _Failed):
                raise outcome.error
            hit = _as_hit(outcome, plan.started)
            _record(plan.database, llm.model_path, hit, plan.config)
            stream._replay = replay_stream(llm, hit, chunks, plan.extra)
            return
    await _start_producer(
        stream, llm, functools.partial(llm._finish, plan, True, chunks), plan.wait, state, key, flight
    )


async def _start_producer(
    stream: AsyncStream,
    llm: LLM,
    factory: Callable[[], Any],
    wait: float | None,
    state: _LoopState,
    key: str | None,
    flight: asyncio.Future[Any] | None,
) -> None:
    gate = _gate(state, llm)
    try:
        await gate.acquire(llm.model_path, wait, "an open stream", stream=True)
    except BaseException:
        if key is not None and flight is not None:
            _settle_flight(state, key, flight, _ABANDONED)
        raise
    link = _Link(asyncio.get_running_loop(), factory)

    def finished(response: Any) -> None:
        gate.release()
        if key is not None and flight is not None:
            # A stream read to the end answers its followers; one closed early lets them start over.
            _settle_flight(state, key, flight, response if isinstance(response, Response) else _ABANDONED)
        _resolve(link.finished, None)

    def stopped() -> None:
        # Identical requests waiting for this stream start over now, not a token later.
        if key is not None and flight is not None:
            _settle_flight(state, key, flight, _ABANDONED)

    link.on_finished = finished
    link.on_stop = stopped
    gate.link = weakref.ref(link)
    stream._link = link
    try:
        threading.Thread(target=_produce, args=(link,), name="cyllama-db stream", daemon=True).start()
    except BaseException:
        finished(None)
        raise


# -- AsyncLLM ------------------------------------------------------------------------------------


class AsyncLLM:
    """:class:`~cyllama_db.LLM` for asyncio: the same cache, statistics, options and errors,
    and generation never on the event loop.

    ``AsyncLLM(model_path, config=None, db=None, cache=True, verbose=False,
    *, wait_timeout=..., **kwargs)`` takes exactly :class:`~cyllama_db.LLM`'s
    arguments (a model file or a loaded ``llama_cpp.Llama``, load options and
    :class:`~cyllama_db.GenerationConfig` fields in ``kwargs``) and keeps one
    as :attr:`llm`; the model loads on the first miss, in a worker thread.

    * ``await llm(prompt)`` / ``await llm.chat(messages)``: a
      :class:`~cyllama_db.Response`.
    * ``async for chunk in llm.stream(prompt)`` / ``llm.stream_chat(messages)``:
      text chunks (an :class:`AsyncStream`).
    * ``async with AsyncLLM(...) as llm:`` closes open streams and frees the
      model at the end (:meth:`close`).

    Every call takes ``config=`` (a config for this call instead of the
    default), ``cache=``, ``ttl=``, ``namespace=`` and ``GenerationConfig``
    fields, as the sync calls do. Identical concurrent requests generate
    once; cancelling a call or leaving a stream early stops the generation at
    its next token and caches nothing.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | Any,
        config: GenerationConfig | Mapping[str, Any] | None = None,
        db: DBArg = None,
        cache: bool = True,
        verbose: bool = False,
        *,
        wait_timeout: float | None = _UNSET,
        **kwargs: Any,
    ) -> None:
        self._llm = LLM(model_path, config, db, cache, verbose, wait_timeout=wait_timeout, **kwargs)
        self._streams: weakref.WeakSet[AsyncStream] = weakref.WeakSet()

    # -- calls -----------------------------------------------------------------------------------

    async def __call__(
        self,
        prompt: str,
        config: GenerationConfig | Mapping[str, Any] | None = None,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Response:
        """Complete ``prompt`` (plain text, no chat template): a :class:`~cyllama_db.Response`.

        ``config`` replaces this LLM's default config for the call;
        ``overrides`` are :class:`~cyllama_db.GenerationConfig` fields (and
        llama-cpp-python's names for them); ``cache``, ``ttl`` and
        ``namespace`` as for :meth:`LLM.__call__ <cyllama_db.LLM.__call__>`.
        """
        _check_prompt(prompt, "llm.chat()")
        return await _request(self._llm, "completion", prompt, self._args(config, overrides, cache, ttl, namespace))

    async def generate(
        self,
        prompt: str,
        config: GenerationConfig | Mapping[str, Any] | None = None,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Response:
        """The same as ``await llm(prompt, ...)`` (cyllama's other name for it)."""
        return await self(prompt, config, cache=cache, ttl=ttl, namespace=namespace, **overrides)

    async def chat(
        self,
        messages: Messages,
        config: GenerationConfig | Mapping[str, Any] | None = None,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> Response:
        """Answer chat ``messages`` through the model's chat template: a :class:`~cyllama_db.Response`.

        Takes the options of :meth:`__call__`, and ``tools``, ``tool_choice``,
        ``response_format``... as :meth:`LLM.chat <cyllama_db.LLM.chat>` does.
        """
        return await _request(self._llm, "chat", messages, self._args(config, overrides, cache, ttl, namespace))

    def stream(
        self,
        prompt: str,
        config: GenerationConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> AsyncStream:
        """``async for chunk in llm.stream(prompt)``: the completion's text chunks.

        ``timeout``: the most seconds to wait for each chunk (then
        :class:`~cyllama_db.GenerationTimeoutError`, and the generation is
        stopped); None waits as long as it takes. Other options as for
        :meth:`__call__`. A cache hit replays the stored text.
        """
        _check_prompt(prompt, "llm.stream_chat()")
        args = self._args(config, overrides, cache, ttl, namespace)
        return _stream(self._llm, "completion", prompt, args, timeout=_check_timeout(timeout), streams=self._streams)

    def stream_chat(
        self,
        messages: Messages,
        config: GenerationConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        *,
        cache: CacheArg = None,
        ttl: Any = None,
        namespace: str | None = None,
        **overrides: Any,
    ) -> AsyncStream:
        """``async for chunk in llm.stream_chat(messages)``: a chat answer's text chunks
        (options as for :meth:`stream`)."""
        args = self._args(config, overrides, cache, ttl, namespace)
        return _stream(self._llm, "chat", messages, args, timeout=_check_timeout(timeout), streams=self._streams)

    def _args(
        self, config: Any, overrides: dict[str, Any], cache: CacheArg, ttl: Any, namespace: str | None
    ) -> dict[str, Any]:
        if "stream" in overrides:
            raise TypeError(
                "AsyncLLM calls take no stream=: use `async for chunk in llm.stream(prompt)` "
                "(or llm.stream_chat(messages))"
            )
        passthrough = _pop_passthrough(overrides)
        base = self._llm.config if config is None else GenerationConfig.coerce(config)
        return {
            "config": base.replace(**overrides) if overrides else base,
            "cache": cache, "ttl": ttl, "namespace": namespace, "passthrough": passthrough,
        }  # fmt: skip

    # -- the rest of LLM -------------------------------------------------------------------------

    @property
    def llm(self) -> LLM:
        """The sync :class:`~cyllama_db.LLM` this object drives (same model, cache and database)."""
        return self._llm

    @property
    def config(self) -> GenerationConfig:
        """The default :class:`~cyllama_db.GenerationConfig`."""
        return self._llm.config

    @property
    def model_path(self) -> str:
        """The model file's absolute path."""
        return self._llm.model_path

    @property
    def db(self) -> CyllamaDB | None:
        """The database in use right now (None when disabled or ``db=False``)."""
        return self._llm.db

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._llm.loaded

    def cache_key(self, prompt: str | Messages, *, namespace: str | None = None, **overrides: Any) -> str:
        """The cache key a call with ``prompt`` (a str, or chat messages) and ``overrides`` uses."""
        return self._llm.cache_key(prompt, namespace=namespace, **overrides)

    def _cyllama_cache_identity(self) -> dict[str, str]:
        # An AsyncLLM passed to (or captured by) a @cached function is keyed as its LLM.
        return self._llm._cyllama_cache_identity()

    async def close(self) -> None:
        """Close this object's open streams, wait for a generation under way, and free
        the model (in a worker thread). A later call loads it again."""
        for stream in list(self._streams):
            await stream.aclose()
        gate = _gate(_state(), self._llm)
        await gate.acquire(self._llm.model_path, _wait(self._llm), "close()")
        try:
            await asyncio.to_thread(self._llm.close)
        finally:
            gate.release()

    async def __aenter__(self) -> AsyncLLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncLLM({self.model_path!r}, loaded={self.loaded})"


def _wait(llm: LLM) -> float | None:
    return _wait_timeout(llm.wait_timeout)


def _check_prompt(prompt: Any, other: str) -> None:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__} (use {other} for messages)")


# -- module functions ----------------------------------------------------------------------------


async def _target(
    model_path: Any, model: Any, db: Any, config: Any, cache: tuple[Any, Any, Any], verbose: bool,
    kwargs: Mapping[str, Any], owner: str,
) -> tuple[LLM, dict[str, Any]]:
    """The shared LLM and request of a module-level call; a registered ``model=`` is read
    (and marked used) in a worker thread."""
    if isinstance(config, _db_type()):
        raise TypeError(f"{owner}: config must be a GenerationConfig or a dict; pass the database as db=")
    if model is None:
        llm, request, _registry = _model_target(model_path, model, db, config, cache, verbose, kwargs, owner)
    else:
        llm, request, _registry = await asyncio.to_thread(
            _model_target, model_path, model, db, config, cache, verbose, kwargs, owner
        )
    return llm, request


def _db_type() -> type:
    from .db.facade import CyllamaDB

    return CyllamaDB


async def complete_async(
    prompt: str,
    model_path: str | os.PathLike[str] | None = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    verbose: bool = False,
    *,
    db: DBArg = None,
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    **kwargs: Any,
) -> Response:
    """``await complete_async(prompt, model_path)``: :func:`~cyllama_db.complete` for asyncio.

    The positional order is cyllama's (prompt, model_path, config, verbose);
    ``db=``, ``model=`` (a registered model), ``cache=``, ``ttl=``,
    ``namespace=``, load options and ``GenerationConfig`` fields are keywords,
    as for :func:`~cyllama_db.complete`. Models are shared with
    ``complete()``; generation runs in a worker thread.
    """
    _check_prompt(prompt, "chat_async()")
    llm, request = await _target(
        model_path, model, db, config, (cache, ttl, namespace), verbose, kwargs, "complete_async()"
    )
    return await _request(llm, "completion", prompt, request)


async def chat_async(
    messages: Messages,
    model_path: str | os.PathLike[str] | None = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    verbose: bool = False,
    *,
    db: DBArg = None,
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    **kwargs: Any,
) -> Response:
    """``await chat_async(messages, model_path)``: :func:`~cyllama_db.chat` for asyncio
    (arguments as for :func:`complete_async`)."""
    llm, request = await _target(
        model_path, model, db, config, (cache, ttl, namespace), verbose, kwargs, "chat_async()"
    )
    return await _request(llm, "chat", messages, request)


def stream_complete_async(
    prompt: str,
    model_path: str | os.PathLike[str] | None = None,
    config: GenerationConfig | Mapping[str, Any] | None = None,
    verbose: bool = False,
    *,
    db: DBArg = None,
    model: int | str | None = None,
    cache: CacheArg = True,
    ttl: Any = None,
    namespace: str | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> AsyncStream:
    """``async for chunk in stream_complete_async(prompt, model_path)``: a streamed
    :func:`~cyllama_db.complete` (arguments as for :func:`complete_async`;
    ``timeout`` as for :meth:`AsyncLLM.stream`).

    The arguments are checked at the call; the cache is looked up at the
    first chunk. A registered ``model=`` is read then, in a worker thread.
    """
    _check_prompt(prompt, "AsyncLLM.stream_chat()")
    per_chunk = _check_timeout(timeout)
    options = (cache, ttl, namespace)
    owner = "stream_complete_async()"
    if model is None:
        if isinstance(config, _db_type()):
            raise TypeError(f"{owner}: config must be a GenerationConfig or a dict; pass the database as db=")
        llm, request, _registry = _model_target(model_path, None, db, config, options, verbose, kwargs, owner)
        return _stream(llm, "completion", prompt, request, timeout=per_chunk)

    async def target() -> tuple[LLM, dict[str, Any]]:
        return await _target(model_path, model, db, config, options, verbose, kwargs, owner)

    return _stream(None, "completion", prompt, None, timeout=per_chunk, target=target)


# -- wrap()'s acreate_* --------------------------------------------------------------------------


async def _wrapped_call(wrapper: CachedLlama, call: _Call) -> Any:
    """``wrap(llama).acreate_completion``/``acreate_chat_completion`` once parsed."""
    llm = wrapper._llm
    if call.direct is not None:
        # Uncached (a token-list prompt, an unknown parameter): straight to the model.
        if call.stream:
            stream = AsyncStream(llm.model_path, None, chunks=True)

            async def start(this: AsyncStream) -> None:
                await _start_producer(this, llm, call.direct, _wait(llm), _state(), None, None)

            stream._start = start
            return stream
        gate = _gate(_state(), llm)
        await gate.acquire(llm.model_path, _wait(llm), "a generation")
        return await _off_loop(call.direct, None, gate.release)
    request = {
        "config": call.config, "cache": call.cache, "ttl": call.ttl, "namespace": call.namespace,
        "passthrough": call.passthrough,
    }  # fmt: skip
    if call.stream:
        return _stream(llm, call.kind, call.payload, request, chunks=True)
    response = await _request(llm, call.kind, call.payload, request)
    return wrapper._as_dict(response, call.passthrough)


# -- the store, off the loop ---------------------------------------------------------------------


class AsyncCyllamaDB:
    """A :class:`~cyllama_db.CyllamaDB`'s methods as coroutines that run in a worker thread.

    ``AsyncCyllamaDB(db)`` or ``db.aio``: ``await db.aio.get_stats_summary()``,
    ``await db.aio.export_database("backup.db")``... Every public method of
    the database is here under its own name, with its own arguments and
    result; the event loop keeps running while SQLite works (a summary over
    a million rows, a VACUUM, an export). ``progress`` callbacks of
    export/import are called in that worker thread. Attributes that are not
    methods (``path``, ``settings``...) are the database's own.
    """

    def __init__(self, db: CyllamaDB) -> None:
        if not isinstance(db, _db_type()):
            raise TypeError(f"AsyncCyllamaDB needs a CyllamaDB (db), got {type(db).__name__}")
        self.db = db

    async def get_stats_summary(self, *args: Any, **kwargs: Any) -> Any:
        """``db.get_stats_summary(...)`` in a worker thread."""
        return await asyncio.to_thread(self.db.get_stats_summary, *args, **kwargs)

    async def get_generation_history(self, *args: Any, **kwargs: Any) -> Any:
        """``db.get_generation_history(...)`` in a worker thread."""
        return await asyncio.to_thread(self.db.get_generation_history, *args, **kwargs)

    async def get_logs(self, *args: Any, **kwargs: Any) -> Any:
        """``db.get_logs(...)`` in a worker thread."""
        return await asyncio.to_thread(self.db.get_logs, *args, **kwargs)

    async def export_database(self, *args: Any, **kwargs: Any) -> Any:
        """``db.export_database(...)`` in a worker thread."""
        return await asyncio.to_thread(self.db.export_database, *args, **kwargs)

    async def import_database(self, *args: Any, **kwargs: Any) -> Any:
        """``db.import_database(...)`` in a worker thread."""
        return await asyncio.to_thread(self.db.import_database, *args, **kwargs)

    async def vacuum(self) -> Any:
        """``db.vacuum()`` in a worker thread."""
        return await asyncio.to_thread(self.db.vacuum)

    async def cleanup_cache(self) -> Any:
        """``db.cleanup_cache()`` in a worker thread."""
        return await asyncio.to_thread(self.db.cleanup_cache)

    async def close(self) -> None:
        """``db.close()`` (writes buffered bookkeeping) in a worker thread."""
        await asyncio.to_thread(self.db.close)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not defined above: every other method, as a coroutine.
        if name == "db":
            raise AttributeError(name)
        value = getattr(self.db, name)
        if name.startswith("_") or not callable(value) or not inspect.ismethod(value):
            return value

        @functools.wraps(value)
        async def method(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(value, *args, **kwargs)

        return method

    def __repr__(self) -> str:
        return f"AsyncCyllamaDB({self.db!r})"
