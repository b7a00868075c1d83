"""Streams: :class:`Stream` (text pieces) and :class:`ChunkStream` (llama-cpp-python chunk dicts).

A stream pulls from a producer (a generator) that shares only a
:class:`_StreamState` with it. :func:`replay_stream` makes the stream of an
answer already there (a cache hit, or another call's generation);
:func:`live_stream` the stream of a new generation, which ``LLM`` calls with
its model lock, its loader and its cache lookup and store
(``llm._lock``, ``_load_locked``, ``_lookup``, ``_store``).
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..db.store import Closing
from ..types import GenerationConfig, Response, _as_hit
from . import generation
from .locks import _flight_key, _flights
from .openai import plain, replay_chunks, split_text
from .options import Kind, _sampling_kwargs
from .status import _record

if TYPE_CHECKING:
    from ..db.facade import CyllamaDB
    from .model import LLM, _Entry

# What a stream's producer yields: the text piece and, for streams of
# chunk dicts (wrap()), the chunk dict itself.
Event = tuple[str, dict[str, Any] | None]


class _StreamState:
    """What a stream and its producer share.

    The producer (a generator) holds this, never the :class:`Stream`: a
    dropped stream must be freed at once by reference counting, which closes
    its generator and so releases the model; a cycle between the two would
    leave that to the garbage collector (seconds later, or never).
    """

    __slots__ = ("cache_hit", "chunks", "parts", "response")

    def __init__(self, cache_hit: bool, chunks: bool) -> None:
        self.cache_hit = cache_hit
        self.chunks = chunks
        self.parts: list[str] = []
        self.response: Response | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Stream(Closing):
    """An iterator of text chunks from ``llm(prompt, stream=True)``.

    ``cache_hit`` says whether the chunks are a replay of a cached response
    (a miss that finds, at its first chunk, that an identical generation
    answered it meanwhile replays that answer and becomes a hit then).
    ``response`` is the complete :class:`Response` once the stream is
    exhausted (at once for a hit), else None; ``text`` is what has been
    produced so far. A streamed miss is stored in the cache only when the
    stream runs to the end.

    The model is released the moment the stream ends, is closed, or is
    dropped: ``break`` out of the ``for`` loop, ``del``, or returning from
    the function that iterated it; no garbage collection is needed, and a
    partly read stream is never stored. ``with`` blocks close it too.
    """

    def __init__(
        self,
        model_path: str,
        cache_hit: bool,
        source: Callable[[_StreamState], Generator[Event, None, None]],
        *,
        chunks: bool = False,
    ) -> None:
        self.model_path = model_path
        self._state = _StreamState(cache_hit, chunks)
        self._source = source(self._state)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        while True:
            piece, _chunk = next(self._source)
            if piece:
                return piece

    @property
    def cache_hit(self) -> bool:
        """Whether this stream replays a cached (or another call's) answer."""
        return self._state.cache_hit

    @property
    def response(self) -> Response | None:
        """The complete :class:`Response` once the stream is exhausted (at once for a hit)."""
        return self._state.response

    @property
    def text(self) -> str:
        """The text received so far (all of it once the stream is exhausted)."""
        return self._state.text

    def close(self) -> None:
        """Stop the stream; an unfinished generation is abandoned and not cached."""
        self._source.close()

    def __del__(self) -> None:
        # Reached by reference counting as soon as the consumer lets go.
        source = self.__dict__.get("_source")
        if source is not None:
            source.close()

    def __repr__(self) -> str:
        state = "done" if self.response is not None else "open"
        return f"<{type(self).__name__} {os.path.basename(self.model_path)} cache_hit={self.cache_hit} {state}>"


class ChunkStream(Stream):
    """A :class:`Stream` of llama-cpp-python's chunk dicts (``wrap()``'s ``stream=True``).

    Each chunk is shaped like llama-cpp-python's own (``choices[0].text`` or
    ``choices[0].delta``) and carries the ``"cyllama_db"`` member saying
    whether it replays the cache.
    """

    def __next__(self) -> Any:
        while True:
            _piece, chunk = next(self._source)
            if chunk is not None:
                return chunk


def _replay_events(state: _StreamState, response: Response, chunks: bool, name: str) -> Iterator[Event]:
    """The events of a stream replaying ``response``: text pieces, and chunk dicts if asked for."""
    if not chunks:
        for piece in split_text(response.text):
            state.parts.append(piece)
            yield piece, None
        return
    kind = response.kind
    for chunk in replay_chunks(response.to_openai(name), kind):
        choice = chunk["choices"][0]
        text: str = ((choice.get("delta") or {}).get("content") if kind == "chat" else choice.get("text")) or ""
        state.parts.append(text)
        yield text, chunk


def replay_stream(llm: LLM, response: Response, chunks: bool, extra: Mapping[str, Any]) -> Stream:
    """A stream that replays ``response`` (a hit, or another call's generation)."""
    name = _dict_model(llm, extra)

    def produce(state: _StreamState) -> Generator[Event, None, None]:
        yield from _replay_events(state, response, chunks, name)

    replay = (ChunkStream if chunks else Stream)(response.model_path, response.cache_hit, produce, chunks=chunks)
    replay._state.response = response
    return replay


def live_stream(
    llm: LLM,
    kind: Kind,
    payload: Any,
    config: GenerationConfig,
    db: CyllamaDB | None,
    entry: _Entry | None,
    extra: Mapping[str, Any],
    chunks: bool,
    wait: float | None,
    *,
    refresh: bool = False,
) -> Stream:
    """A stream of a new generation for ``llm``'s request (``entry`` None: the cache is not used).

    The model is loaded now; the generation starts at the first chunk: it
    joins an identical request's generation if one is under way (a replay
    then), else leads it, and stores its answer if it runs to the end.
    """
    # Load now, so a bad path or file (or grammar) fails at the call rather than at the first chunk.
    kwargs = {**_sampling_kwargs(config, kind), **extra}
    llm._lock.acquire(llm.model_path, wait)
    try:
        loaded = llm._load_locked()
    finally:
        llm._lock.release()
    if config.grammar is not None:
        kwargs = {**_sampling_kwargs(config, kind, loaded), **extra}
    name = _dict_model(llm, extra)
    model_path = llm.model_path

    # Everything below refers to the stream's state, never to the stream:
    # see _StreamState.
    def produce(state: _StreamState) -> Generator[Event, None, None]:
        # Single-flight from the first chunk on (not from the call: a
        # stream nobody iterates must not hold anyone up). Identical
        # requests arriving meanwhile wait for this one, as they would wait
        # for the model it holds; if it ends early (closed, dropped,
        # failed) they start over and generate themselves.
        if db is None or entry is None or refresh:
            yield from generate(state)
            return
        key = _flight_key(db, entry.key)
        role: bool | None = None
        while True:
            flight, role = _flights.join(key)
            if role is not False:
                break
            done, result = _flights.wait(flight, wait)
            if done and result is not None:
                yield from _replay_into(state, result, db, config, name, model_path)
                return
            if done is None:
                role = None  # waited too long: generate on our own, outside the flight
                break
        outcome: Response | None = None
        try:
            outcome = yield from generate(state)
        finally:
            if role:
                _flights.settle(key, flight, result=outcome, abandoned=outcome is None)

    def generate(state: _StreamState) -> Generator[Event, None, Response | None]:
        """The stream's own generation: its Response if it ran to the end, else None."""
        llm._lock.acquire(model_path, wait, "an open stream")
        source: Any = None
        received: list[dict[str, Any]] = []
        completed = False
        started_generation = False
        failed = False
        llama: Any = None
        hit: Response | None = None
        t0 = time.perf_counter()
        try:
            if db is not None and entry is not None and not refresh:
                # Re-checked under the model lock: a generation of this
                # request that ended while this stream waited has stored it.
                hit = llm._lookup(db, entry, t0)
            if hit is None:
                llama = llm._load_locked()
                generation.reset_perf(llama)
                t0 = time.perf_counter()
                marker = {"cache_hit": False, "cache_key": None if entry is None else entry.key}
                try:
                    source = generation.create(llama, kind, payload, kwargs, stream=True)
                    started_generation = True
                    for chunk in source:
                        received.append(chunk)
                        piece, choice = generation.chunk_text(chunk, kind)
                        state.parts.append(piece)
                        if chunks:
                            chunk = plain(chunk) if choice.get("logprobs") is not None else dict(chunk)
                            chunk["cyllama_db"] = marker
                            yield piece, chunk
                        else:
                            yield piece, None
                except GeneratorExit:
                    raise
                except Exception as exc:
                    failed = True
                    raise generation.generation_error(model_path, exc, llama, payload) from exc
                completed = True
        finally:
            response = None
            # A failed generation is logged (ERROR) and raised, not recorded
            # as a result; one the consumer stopped is recorded as "cancelled".
            if started_generation and not failed:
                if source is not None and hasattr(source, "close"):
                    source.close()
                response = generation.stream_response(
                    model_path, kind, payload, state.text, received, completed, llama, t0, name
                )
            llm._active_stream = None
            llm._lock.release()
            if response is not None:
                if completed:
                    state.response = response
                    if db is not None and entry is not None:
                        response._key = entry.key
                        llm._store(db, entry, config, response)
                _record(db, llm.model_path, response, config)
        if hit is not None:
            yield from _replay_into(state, hit, db, config, name, model_path)
            return hit
        return response if completed else None

    stream = (ChunkStream if chunks else Stream)(llm.model_path, False, produce, chunks=chunks)
    llm._active_stream = weakref.ref(stream)
    return stream


def _replay_into(
    state: _StreamState,
    response: Response,
    db: CyllamaDB | None,
    config: GenerationConfig,
    name: str,
    model_path: str,
) -> Iterator[Event]:
    """Make a stream a replay of ``response`` (another generation's, or a cache hit's)."""
    started = time.perf_counter()
    hit = _as_hit(response, started)
    state.cache_hit = True
    state.response = hit
    _record(db, model_path, hit, config)
    yield from _replay_events(state, hit, state.chunks, name)


def _dict_model(llm: LLM, extra: Mapping[str, Any]) -> str:
    """The ``model`` of the dicts a call returns: llama-cpp-python's choice (the ``model=``
    argument, else the path the Llama was loaded from)."""
    name = extra.get("model")
    if isinstance(name, str):
        return name
    if llm._adopted and llm._llama is not None:
        return str(getattr(llm._llama, "model_path", llm.model_path))
    return llm.model_path
