"""The llama.cpp side of a request: loading a model, running one generation, reading its figures.

Everything here works on a ``llama_cpp.Llama`` whose lock the caller
(``LLM`` in :mod:`cyllama_db.llm.model`) holds; the response cache, single
flight and statistics stay with the caller. llama.cpp's failures become the
library's errors, which say what to fix, and are logged on the
``cyllama_db.inference.raised`` logger. ``llama_cpp`` is imported only
inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ContextOverflowError, GenerationError, ModelLoadError, ModelNotFoundError
from ..types import GenerationStats, Response
from .openai import accumulate_chunks, plain
from .options import Kind, _import_llama_cpp

# The user-facing log categories of inference (docs/logs.md), whichever module logs.
logger = logging.getLogger("cyllama_db.inference")
# Errors raised to the caller are logged here: the logs store keeps them
# (log_to_db), but with no logging configured nothing prints them (the
# NullHandler keeps Python's last-resort handler off): the caller got the
# exception and decides what to show.
raised_logger = logging.getLogger("cyllama_db.inference.raised")
raised_logger.addHandler(logging.NullHandler())


# -- loading -------------------------------------------------------------------------------------


def _stat_sig(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def load_llama(path: str, verbose: bool, options: Mapping[str, Any]) -> Any:
    """``llama_cpp.Llama(path, **options)``, or a ``ModelLoadError`` (logged) that says what is wrong."""
    llama_cpp = _import_llama_cpp()
    t0 = time.perf_counter()
    try:
        llama = llama_cpp.Llama(model_path=path, verbose=verbose, **options)
    except Exception as exc:
        error = _load_error(path, exc)
        # The traceback is llama_cpp's; the error raised says what is wrong and what to do.
        raised_logger.error("cannot load model: %s", error)
        raise error from exc
    logger.info("loaded model %s in %.0f ms", path, (time.perf_counter() - t0) * 1000)
    return llama


def _load_error(path: str, exc: Exception) -> ModelLoadError:
    """Why llama.cpp could not load ``path``, as the error to raise."""
    if not os.path.exists(path):
        return ModelNotFoundError(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as os_exc:
        return ModelLoadError(path, f"cannot read the file: {os_exc}")
    if head != b"GGUF":
        return ModelLoadError(
            path,
            f"not a GGUF file (it starts with {head!r}, a GGUF file with b'GGUF'); "
            "llama.cpp only loads .gguf models",
        )
    return ModelLoadError(
        path,
        f"llama.cpp rejected it ({type(exc).__name__}: {exc}); a truncated download, an "
        "architecture this llama.cpp build does not know, or too little memory are the usual causes",
    )


# -- generating ----------------------------------------------------------------------------------


def create(llama: Any, kind: Kind, payload: Any, kwargs: Mapping[str, Any], stream: bool) -> Any:
    """llama-cpp-python's ``create_completion`` or ``create_chat_completion`` for ``payload``."""
    if kind == "completion":
        return llama.create_completion(payload, stream=stream, **kwargs)
    return llama.create_chat_completion(messages=payload, stream=stream, **kwargs)


def generate(
    llama: Any,
    model_path: str,
    kind: Kind,
    payload: Any,
    kwargs: dict[str, Any],
    cancel: threading.Event | None = None,
) -> Response:
    """One generation, not streamed, as a :class:`Response` (a miss); stopped at the next token once ``cancel`` is set."""
    reset_perf(llama)
    t0 = time.perf_counter()
    try:
        if cancel is not None:
            out = _cancellable(llama, kind, payload, kwargs, cancel)
        else:
            out = create(llama, kind, payload, kwargs, stream=False)
    except Exception as exc:
        raise generation_error(model_path, exc, llama, payload) from exc
    wall_ms = (time.perf_counter() - t0) * 1000.0
    perf = _perf(llama)
    choice = out["choices"][0]
    if kind == "completion":
        text = choice.get("text") or ""
    else:
        text = (choice.get("message") or {}).get("content") or ""
    usage = out.get("usage") or {}
    response = Response(
        text=text,
        finish_reason=choice.get("finish_reason"),
        model_path=model_path,
        cache_hit=False,
        stats=_make_stats(usage.get("prompt_tokens"), usage.get("completion_tokens"), perf, wall_ms),
        kind=kind,
    )
    response._source = plain(out)
    return response


def chunk_text(chunk: Mapping[str, Any], kind: Kind) -> tuple[str, Mapping[str, Any]]:
    """``(text piece, choice)`` of one streamed chunk."""
    choice = chunk["choices"][0] if chunk.get("choices") else {}
    if kind == "completion":
        return choice.get("text") or "", choice
    return (choice.get("delta") or {}).get("content") or "", choice


def stream_response(
    model_path: str,
    kind: Kind,
    payload: Any,
    text: str,
    received: list[dict[str, Any]],
    completed: bool,
    llama: Any,
    t0: float,
    name: str,
) -> Response:
    """The :class:`Response` of a streamed generation (``"cancelled"`` unless ``completed``)."""
    wall_ms = (time.perf_counter() - t0) * 1000.0
    perf = _perf(llama)
    # Streams carry no usage block: count by re-tokenising, which matches
    # what was sampled for ordinary text (BPE round-trips).
    try:
        generated: int | None = len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0
        prompt_tokens: int | None = (
            len(llama.tokenize(payload.encode("utf-8"), add_bos=True, special=True))
            if kind == "completion"
            else None
        )
    except Exception:  # pragma: no cover - tokenising what the model produced cannot fail in practice
        generated = prompt_tokens = None
    source = plain(accumulate_chunks(received, kind, name))
    finish = source["choices"][0]["finish_reason"] if completed else "cancelled"
    source["choices"][0]["finish_reason"] = finish
    source["usage"] = {
        "prompt_tokens": prompt_tokens or 0,
        "completion_tokens": generated or 0,
        "total_tokens": (prompt_tokens or 0) + (generated or 0),
    }
    response = Response(
        text=text,
        finish_reason=finish,
        model_path=model_path,
        cache_hit=False,
        stats=_make_stats(prompt_tokens, generated, perf, wall_ms),
        kind=kind,
    )
    response._source = source
    return response


def generation_error(model_path: str, exc: Exception, llama: Any, payload: Any) -> Exception:
    """The library's error for llama.cpp's ``exc`` while generating ``payload``, logged."""
    message = str(exc)
    overflow = "exceed context window" in message
    if not overflow and "could not broadcast input array" in message:
        # llama-cpp-python sizes its token buffer by the n_ctx asked for,
        # while llama.cpp pads small contexts (to 256) and llama-cpp-python
        # checks against that: a prompt between the two surfaces as a
        # numpy error rather than its own check.
        overflow = True
        message = f"the prompt does not fit in n_ctx={len(llama.input_ids)}"
    if isinstance(exc, ValueError) and overflow:
        n_ctx = None
        with contextlib.suppress(Exception):
            n_ctx = min(int(llama.n_ctx()), len(llama.input_ids))
        error: Exception = ContextOverflowError(model_path, message, n_ctx)
    elif isinstance(exc, (ValueError, TypeError)) and "GenerationConfig" in message:
        error = exc
    else:
        error = GenerationError(f"generation with model {model_path!r} failed: {type(exc).__name__}: {exc}")
    # model_path and prompt fill the logs table's own columns (CyllamaDBHandler).
    prompt = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, sort_keys=True)
    raised_logger.error(
        "generation failed for %s: %s",
        model_path,
        error,
        # A too-long prompt is the caller's to fix and its message says how:
        # a llama_cpp traceback would only bury that line.
        exc_info=None if isinstance(error, ContextOverflowError) else exc,
        extra={"model_path": model_path, "prompt": prompt},
    )
    return error


def _perf(llama: Any) -> tuple[float, float] | None:
    """(prompt eval ms, generation ms) from llama.cpp's context counters, if it keeps them."""
    import llama_cpp

    try:
        data = llama_cpp.llama_perf_context(llama.ctx)
    except Exception:  # pragma: no cover - very old bindings without perf counters
        return None
    if data.t_p_eval_ms == 0 and data.t_eval_ms == 0:
        return None  # no_perf=True, or nothing was evaluated
    return float(data.t_p_eval_ms), float(data.t_eval_ms)


def reset_perf(llama: Any) -> None:
    """Zero llama.cpp's context counters, so that :func:`_perf` reads this generation's."""
    import llama_cpp

    with contextlib.suppress(Exception):
        llama_cpp.llama_perf_context_reset(llama.ctx)


def _cancellable(llama: Any, kind: Kind, payload: Any, kwargs: dict[str, Any], cancel: threading.Event) -> Any:
    """A non-streamed generation that stops at the next token once ``cancel`` is set.

    llama-cpp-python checks ``stopping_criteria`` after every sampled token;
    ``create_chat_completion`` has no such argument but hands its prompt to
    ``create_completion``, so for chat that method is wrapped, on this
    ``Llama`` only and only for the call (the caller holds the model lock).
    """
    stopping = _stop_when(cancel)
    if kind == "completion":
        kwargs = {**kwargs, "stopping_criteria": _with_criterion(kwargs.get("stopping_criteria"), stopping)}
        return llama.create_completion(payload, stream=False, **kwargs)
    own = llama.__dict__.get("create_completion")  # an instance override (a test spy) stays in place
    inner = llama.create_completion

    def create_completion(*args: Any, **kw: Any) -> Any:
        kw["stopping_criteria"] = _with_criterion(kw.get("stopping_criteria"), stopping)
        return inner(*args, **kw)

    llama.create_completion = create_completion
    try:
        return llama.create_chat_completion(messages=payload, stream=False, **kwargs)
    finally:
        if own is None:
            del llama.create_completion
        else:
            llama.create_completion = own


def _stop_when(cancel: threading.Event) -> Callable[[Any, Any], bool]:
    def stop(_tokens: Any, _logits: Any) -> bool:
        return cancel.is_set()

    return stop


def _with_criterion(existing: Any, criterion: Callable[[Any, Any], bool]) -> Any:
    from llama_cpp import StoppingCriteriaList

    return StoppingCriteriaList([*(existing or ()), criterion])


def _make_stats(
    prompt_tokens: int | None,
    generated: int | None,
    perf: tuple[float, float] | None,
    wall_ms: float,
) -> GenerationStats:
    if perf is None:
        prompt_ms, gen_ms = None, wall_ms
    else:
        prompt_ms, gen_ms = perf
    total = prompt_tokens + generated if prompt_tokens is not None and generated is not None else None
    tps = generated / (gen_ms / 1000.0) if generated and gen_ms and gen_ms > 0 else None
    return GenerationStats(
        prompt_tokens=prompt_tokens,
        generated_tokens=generated,
        total_tokens=total,
        prompt_time_ms=prompt_ms,
        generation_time_ms=gen_ms,
        total_time_ms=wall_ms,
        tokens_per_second=tps,
    )

