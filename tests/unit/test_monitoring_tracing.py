"""Tracing: one trace across a handle call, sampling, trace ids; no global provider touched."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from monitoring.tracing import (
    OTLP_EXPORTER_PACKAGE,
    TracingConfig,
    TracingSetupError,
    current_trace_id,
    extract_context,
    get_tracer,
    inject_context,
    setup_tracing,
    span_from_carrier,
)

pytestmark = pytest.mark.unit


class Process:
    """One simulated process: its own provider and exporter, as a Serve replica would have."""

    def __init__(self, name: str, ratio: float = 1.0) -> None:
        self.exporter = InMemorySpanExporter()
        cfg = TracingConfig(enabled=True, sampling_ratio=ratio, service_name=name)
        provider = setup_tracing(cfg, exporter=self.exporter, set_global=False)
        assert provider is not None
        self.provider: TracerProvider = provider

    def spans(self) -> list[ReadableSpan]:
        self.provider.force_flush()
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def process() -> Iterator[Callable[..., Process]]:
    """Makes simulated processes; shuts their providers down afterwards."""
    made: list[Process] = []

    def make(name: str, ratio: float = 1.0) -> Process:
        made.append(Process(name, ratio))
        return made[-1]

    yield make
    for p in made:
        p.provider.shutdown()


def test_span_from_carrier_continues_the_trace_in_another_process(process: Callable[..., Process]) -> None:
    gateway, generation = process("gateway"), process("generation")
    global_before = trace.get_tracer_provider()

    with get_tracer(gateway.provider).start_as_current_span("gateway") as root:
        carrier = inject_context()
        gateway_trace_id = current_trace_id()
    assert set(carrier) == {"traceparent"}

    # "Another process": nothing shared with the gateway but the carrier.
    with span_from_carrier(
        "generate", carrier, {"llmops.model": "m"}, tracer_provider=generation.provider
    ) as child:
        assert current_trace_id() == gateway_trace_id
        with get_tracer(generation.provider).start_as_current_span("engine"):
            pass
    assert current_trace_id() is None  # nothing leaks out of the block

    (g,) = gateway.spans()
    gen = {s.name: s for s in generation.spans()}
    assert set(gen) == {"generate", "engine"}
    root_ctx = root.get_span_context()
    assert g.context.trace_id == root_ctx.trace_id
    assert gateway_trace_id == format(root_ctx.trace_id, "032x")
    assert gen["generate"].context.trace_id == root_ctx.trace_id
    assert gen["generate"].parent is not None and gen["generate"].parent.span_id == root_ctx.span_id
    assert gen["generate"].parent.is_remote
    assert gen["engine"].parent is not None
    assert gen["engine"].parent.span_id == child.get_span_context().span_id
    assert gen["generate"].attributes == {"llmops.model": "m"}
    assert gen["generate"].resource.attributes["service.name"] == "generation"
    assert trace.get_tracer_provider() is global_before


def test_sampling_ratio_zero_records_nothing_but_keeps_a_trace_id(process: Callable[..., Process]) -> None:
    gateway, generation = process("gateway", ratio=0.0), process("generation")
    with get_tracer(gateway.provider).start_as_current_span("gateway") as root:
        assert not root.is_recording()
        trace_id = current_trace_id()
        carrier = inject_context()
    assert trace_id is not None and len(trace_id) == 32
    flags = int(carrier["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 0x01 == 0  # the "not sampled" decision travels with the carrier
    # The callee samples everything new, but follows its parent's "no".
    with span_from_carrier("generate", carrier, tracer_provider=generation.provider):
        assert current_trace_id() == trace_id
    assert gateway.spans() == [] and generation.spans() == []


def test_callee_follows_a_sampled_parent_despite_ratio_zero(process: Callable[..., Process]) -> None:
    gateway, generation = process("gateway"), process("generation", ratio=0.0)
    with get_tracer(gateway.provider).start_as_current_span("gateway"):
        carrier = inject_context()
    with span_from_carrier("generate", carrier, tracer_provider=generation.provider):
        pass
    assert [s.name for s in generation.spans()] == ["generate"]


def test_empty_or_bad_carrier_starts_a_new_trace(process: Callable[..., Process]) -> None:
    proc = process("generation")
    assert inject_context() == {}  # no current span: nothing to carry
    assert current_trace_id() is None
    for carrier in (None, {}, {"traceparent": "garbage"}):
        assert not trace.get_current_span(extract_context(carrier)).get_span_context().is_valid
        with span_from_carrier("generate", carrier, tracer_provider=proc.provider):
            assert current_trace_id() is not None
    spans = proc.spans()
    assert len(spans) == 3 and all(s.parent is None for s in spans)
    assert len({s.context.trace_id for s in spans}) == 3


def test_disabled_is_a_no_op() -> None:
    before = trace.get_tracer_provider()
    assert setup_tracing(TracingConfig()) is None
    assert trace.get_tracer_provider() is before


def test_endpoint_without_exporter_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail whether or not the package is installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    cfg = TracingConfig(enabled=True, otlp_endpoint="http://collector:4318/v1/traces")
    with pytest.raises(TracingSetupError, match=OTLP_EXPORTER_PACKAGE):
        setup_tracing(cfg, set_global=False)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"sampling_ratio": 1.5}, "sampling_ratio"),
        ({"sampling_ratio": -0.1}, "sampling_ratio"),
        ({"otlp_endpoint": "collector:4318"}, 'Got "collector:4318" for otlp_endpoint'),
        ({"service_name": ""}, "service_name"),
        ({"endpoint": "http://x"}, "endpoint"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        TracingConfig.model_validate(data)


def test_tracer_cache_never_hands_out_a_freed_providers_tracer() -> None:
    import gc

    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    for _ in range(20):  # freed providers' ids get reused: each new one must get its own tracer
        exporter = InMemorySpanExporter()
        provider = TracerProvider(shutdown_on_exit=False)  # no atexit hook keeping it alive
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        get_tracer(provider).start_span("x").end()
        assert [s.name for s in exporter.get_finished_spans()] == ["x"]
        del provider
        gc.collect()
