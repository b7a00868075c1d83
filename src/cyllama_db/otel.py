"""OpenTelemetry for every recorded generation, hit or miss (opt-in).

Enabled with ``CyllamaDB(..., opentelemetry=True)`` or ``CYLLAMA_OTEL=1``;
then each generation the statistics store records (``LLM``, ``complete()``,
``wrap()``, ``@cached`` on a model call, or your own
``db.record_generation()``) emits, through the *global* providers that your
application configures (``opentelemetry-sdk``, an OTLP exporter, ...):

* one span named ``"{gen_ai.operation.name} {gen_ai.request.model}"`` (kind
  ``INTERNAL``: the model runs in this process), covering the generation's
  wall time, with the GenAI semantic-convention attributes
  ``gen_ai.operation.name`` (``text_completion`` or ``chat``),
  ``gen_ai.provider.name`` (``llama.cpp``), ``gen_ai.request.model``,
  ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens`` (for a hit:
  those of the answer it replayed), ``gen_ai.response.finish_reasons`` and
  the request parameters that were set (``gen_ai.request.temperature``,
  ``max_tokens``, ``top_p``, ``top_k``, ``seed``, ``stop_sequences``, and
  ``frequency_penalty``/``presence_penalty`` when not 0), plus
  ``cyllama_db.cache_hit`` and ``cyllama_db.model_path``;
* the ``gen_ai.client.operation.duration`` histogram (unit ``s``) for every
  generation and the ``gen_ai.client.token.usage`` histogram (unit
  ``{token}``, one record per ``gen_ai.token.type``, ``input``/``output``)
  for real generations only (a hit uses no tokens: the conventions ask for
  billable tokens), with the bucket boundaries the conventions advise.

``opentelemetry-api`` is imported on the first generation recorded with it
enabled, never before; without it a WARNING says what to install and
nothing is emitted. Emitting never fails a generation: an error is logged
once at WARNING.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

__all__ = ["emit_generation"]

logger = logging.getLogger("cyllama_db.otel")

#: ``gen_ai.provider.name`` of every span and measurement.
PROVIDER = "llama.cpp"
#: Instrumentation scope name.
SCOPE = "cyllama_db"

# Bucket boundaries advised by the GenAI semantic conventions.
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

# GenerationConfig field -> gen_ai.request.* attribute (set only when not None).
_REQUEST_PARAMS = (
    ("temperature", "gen_ai.request.temperature"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("seed", "gen_ai.request.seed"),
)
# Set only when not zero (their default: no penalty).
_PENALTIES = (
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
)
_STOP_FIELDS = ("stop_sequences", "stop")


class _Instruments:
    """The tracer and histograms, made once (the API's proxies follow a provider set later)."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace

        from . import __version__

        self.trace = trace
        self.tracer = trace.get_tracer(SCOPE, __version__)
        meter = metrics.get_meter(SCOPE, __version__)
        self.tokens = _histogram(
            meter, "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.", _TOKEN_BUCKETS
        )
        self.duration = _histogram(
            meter, "gen_ai.client.operation.duration", "s", "GenAI operation duration.", _DURATION_BUCKETS
        )


def _histogram(meter: Any, name: str, unit: str, description: str, buckets: tuple[float, ...]) -> Any:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=list(buckets)
        )
    except TypeError:  # opentelemetry-api < 1.23: no bucket advice
        return meter.create_histogram(name, unit=unit, description=description)


_lock = threading.Lock()
_instruments: _Instruments | None = None
_unavailable = False
_warned: set[str] = set()


def _get() -> _Instruments | None:
    global _instruments, _unavailable
    if _instruments is not None or _unavailable:
        return _instruments
    with _lock:
        if _instruments is None and not _unavailable:
            try:
                _instruments = _Instruments()
            except ImportError:
                _unavailable = True
                logger.warning(
                    "OpenTelemetry is enabled (opentelemetry=True or CYLLAMA_OTEL=1) but "
                    "opentelemetry-api is not installed: pip install opentelemetry-api "
                    "(and opentelemetry-sdk plus an exporter to send the data anywhere)"
                )
    return _instruments


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _operation(kind: Any) -> str:
    return "chat" if kind in ("chat", "chat.completion") else "text_completion"


def emit_generation(
    *,
    model_path: str,
    model_name: str | None,
    kind: Any,
    input_tokens: float | None,
    output_tokens: float | None,
    finish_reason: str | None,
    cache_hit: bool,
    duration_ms: float | None,
    config: Any,
) -> None:
    """Emit one generation's span and measurements; never raises."""
    instruments = _get()
    if instruments is None:
        return
    try:
        _emit(instruments, model_path, model_name, kind, input_tokens, output_tokens, finish_reason,
              cache_hit, duration_ms, config)
    except Exception as exc:  # telemetry must never break a generation
        key = type(exc).__name__
        if key not in _warned:
            _warned.add(key)
            logger.warning("could not emit OpenTelemetry data for a generation: %s", exc, exc_info=True)


def _emit(
    instruments: _Instruments,
    model_path: str,
    model_name: str | None,
    kind: Any,
    input_tokens: float | None,
    output_tokens: float | None,
    finish_reason: str | None,
    cache_hit: bool,
    duration_ms: float | None,
    config: Any,
) -> None:
    operation = _operation(kind)
    model = model_name or os.path.basename(model_path) or model_path
    common: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": model,
        "cyllama_db.cache_hit": bool(cache_hit),
    }
    attributes = dict(common)
    attributes["cyllama_db.model_path"] = model_path
    if input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = int(input_tokens)
    if output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = int(output_tokens)
    if finish_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [str(finish_reason)]
    for field, name in _REQUEST_PARAMS:
        value = _field(config, field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[name] = value
    for field, name in _PENALTIES:
        value = _field(config, field)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            attributes[name] = value
    for field in _STOP_FIELDS:
        stop = _field(config, field)
        if isinstance(stop, str):
            stop = [stop]
        if isinstance(stop, (list, tuple)) and stop and all(isinstance(s, str) for s in stop):
            attributes["gen_ai.request.stop_sequences"] = list(stop)
            break

    end = time.time_ns()
    seconds = None if duration_ms is None else max(0.0, duration_ms) / 1000.0
    start = end if seconds is None else end - int(seconds * 1e9)
    span = instruments.tracer.start_span(
        f"{operation} {model}",
        kind=instruments.trace.SpanKind.INTERNAL,
        attributes=attributes,
        start_time=start,
    )
    span.end(end_time=end)

    # A hit used (and billed) no tokens: token usage is recorded for real generations
    # only, as the conventions ask for billable tokens.
    if not cache_hit:
        if input_tokens is not None:
            instruments.tokens.record(int(input_tokens), {**common, "gen_ai.token.type": "input"})
        if output_tokens is not None:
            instruments.tokens.record(int(output_tokens), {**common, "gen_ai.token.type": "output"})
    if seconds is not None:
        instruments.duration.record(seconds, common)
