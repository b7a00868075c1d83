"""OpenTelemetry (opt-in): a span and the gen_ai histograms for each generation, hit or miss."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyllama_db import ConfigurationError, ConfigurationTypeError, CyllamaDB

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

# The global providers can be set once per process: one pair for this module.
_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def _providers() -> None:
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    _READER.collect()  # start from here (cumulative temporality: tests compare differences)
    yield _EXPORTER
    _EXPORTER.clear()


def _histograms() -> dict[str, list[Any]]:
    data = _READER.get_metrics_data()
    out: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def test_a_miss_and_a_hit_of_a_real_model_each_emit_a_span(
    tiny_model_path: Path, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    from cyllama_db import LLM

    with CyllamaDB(tmp_path / "otel.db", opentelemetry=True) as db:
        llm = LLM(str(tiny_model_path), db=db, temperature=0.0, max_tokens=6, seed=3)
        try:
            first = llm("Hello there")
            again = llm("Hello there")
        finally:
            llm.close()
        assert not first.cache_hit and again.cache_hit
    miss, hit = spans.get_finished_spans()
    name = os.path.basename(str(tiny_model_path))
    for span, response in ((miss, first), (hit, again)):
        attrs = dict(span.attributes or {})
        model = attrs["gen_ai.request.model"]
        assert span.name == f"text_completion {model}"
        assert span.kind == trace.SpanKind.INTERNAL
        assert attrs["gen_ai.operation.name"] == "text_completion"
        assert attrs["gen_ai.provider.name"] == "llama.cpp"
        assert attrs["cyllama_db.model_path"].endswith(name)
        assert attrs["gen_ai.usage.input_tokens"] == response.stats.prompt_tokens > 0
        assert attrs["gen_ai.usage.output_tokens"] == response.stats.generated_tokens > 0
        assert attrs["gen_ai.response.finish_reasons"] == (response.finish_reason,)
        assert attrs["gen_ai.request.temperature"] == 0.0
        assert attrs["gen_ai.request.max_tokens"] == 6
        assert attrs["gen_ai.request.seed"] == 3
        assert attrs["cyllama_db.cache_hit"] is response.cache_hit
        # The span covers the generation's wall time.
        duration_ms = (span.end_time - span.start_time) / 1e6
        assert duration_ms == pytest.approx(response.stats.total_time_ms, abs=0.01)
    assert (miss.end_time - miss.start_time) > (hit.end_time - hit.start_time)

    points = _histograms()
    tokens = {
        (p.attributes["gen_ai.token.type"], p.attributes["cyllama_db.cache_hit"]): p
        for p in points["gen_ai.client.token.usage"]
    }
    assert tokens[("input", False)].sum == first.stats.prompt_tokens
    assert tokens[("output", False)].sum == first.stats.generated_tokens
    assert set(tokens) == {("input", False), ("output", False)}  # a hit uses (bills) no tokens
    assert all(p.attributes["gen_ai.operation.name"] == "text_completion" for p in tokens.values())
    durations = {p.attributes["cyllama_db.cache_hit"]: p for p in points["gen_ai.client.operation.duration"]}
    assert durations[False].count == 1 and durations[True].count == 1
    assert durations[False].sum == pytest.approx(first.stats.total_time_ms / 1000)
    assert list(durations[False].explicit_bounds)[:3] == [0.01, 0.02, 0.04]  # the conventions' advice


def test_chat_and_openai_dicts_record_the_operation(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    with CyllamaDB(tmp_path / "chat.db", opentelemetry=True) as db:
        db.record_generation(
            "/models/m.gguf",
            {"object": "chat.completion", "usage": {"prompt_tokens": 5, "completion_tokens": 2},
             "choices": [{"finish_reason": "length"}]},
            {"temperature": 0.5, "stop_sequences": ["###"]},
        )
    [span] = spans.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert span.name == "chat m.gguf"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.response.finish_reasons"] == ("length",)
    assert attrs["gen_ai.request.stop_sequences"] == ("###",)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (5, 2)


def test_off_by_default_and_the_environment_turns_it_on(
    tmp_path: Path, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = {"finish_reason": "stop", "stats": {"prompt_tokens": 1, "generated_tokens": 1}}
    monkeypatch.delenv("CYLLAMA_OTEL", raising=False)
    with CyllamaDB(tmp_path / "a.db") as db:
        assert db.settings.opentelemetry is False
        db.record_generation("/models/m.gguf", response)
    assert spans.get_finished_spans() == ()
    monkeypatch.setenv("CYLLAMA_OTEL", "1")
    with CyllamaDB(tmp_path / "b.db") as db:  # the environment is read when the database is made
        db.record_generation("/models/m.gguf", response)
    assert len(spans.get_finished_spans()) == 1
    with CyllamaDB(tmp_path / "c.db", opentelemetry=False) as db:  # the argument wins
        db.record_generation("/models/m.gguf", response)
    assert len(spans.get_finished_spans()) == 1
    monkeypatch.setenv("CYLLAMA_OTEL", "maybe")
    with pytest.raises(ConfigurationError, match="CYLLAMA_OTEL"):
        CyllamaDB(":memory:")
    with pytest.raises(ConfigurationTypeError, match="opentelemetry"):
        CyllamaDB(":memory:", opentelemetry="yes")  # type: ignore[arg-type]


def test_a_broken_exporter_never_breaks_a_generation(
    tmp_path: Path, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cyllama_db import otel

    instruments = otel._get()
    assert instruments is not None

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(instruments.tracer, "start_span", broken)
    with CyllamaDB(tmp_path / "x.db", opentelemetry=True) as db:
        row = db.record_generation("/models/m.gguf", {"finish_reason": "stop", "stats": {}})
        assert row is not None and db.get_stats_summary()["total_generations"] == 1
    assert "exporter exploded" in caplog.text


def test_opentelemetry_is_imported_only_when_enabled(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from cyllama_db import CyllamaDB\n"
        f"db = CyllamaDB({str(tmp_path / 'i.db')!r})\n"
        "db.record_generation('/m.gguf', {'finish_reason': 'stop', 'stats': {}})\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules), 'imported while off'\n"
        f"db2 = CyllamaDB({str(tmp_path / 'j.db')!r}, opentelemetry=True)\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules), 'imported before use'\n"
        "db2.record_generation('/m.gguf', {'finish_reason': 'stop', 'stats': {}})\n"
        "assert 'opentelemetry.trace' in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYLLAMA_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
