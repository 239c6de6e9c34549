"""OpenTelemetry tracing: provider setup and context propagation across Ray Serve handles.

One request is one trace from the gateway through retrieval and generation. Ray
deployment handles do not carry OpenTelemetry context, so the caller puts a W3C
``traceparent`` carrier into the call and the callee opens its span from it::

    # gateway
    with tracer.start_as_current_span("gateway"):
        await generation.remote(request, trace_carrier=inject_context())

    # generation replica (another process)
    with span_from_carrier("generate", trace_carrier, {"llmops.model": model}):
        ...

Tracing is off by default. :func:`setup_tracing` must run once in every process that
creates spans (the gateway and each replica's ``__init__``); until then, and when
disabled, every span is OpenTelemetry's no-op span and costs next to nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "OTLP_EXPORTER_PACKAGE",
    "TracingConfig",
    "TracingSetupError",
    "carrier_of",
    "current_trace_id",
    "extract_context",
    "get_tracer",
    "inject_context",
    "setup_tracing",
    "span_from_carrier",
    "start_span",
    "trace_id_of",
]

OTLP_EXPORTER_PACKAGE = "opentelemetry-exporter-otlp-proto-http"
TRACER_NAME = "llmops"

# W3C Trace Context only (no baggage): independent of the OTEL_PROPAGATORS env var, so
# both ends of a Ray handle call always agree on the carrier format.
_PROPAGATOR = TraceContextTextMapPropagator()


class _StrictModel(BaseModel):
    # monitoring/ imports no other area, so it keeps its own copy of the strict base.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TracingConfig(_StrictModel):
    """OpenTelemetry tracing: off by default; spans go to an OTLP/HTTP collector when set."""

    enabled: bool = Field(False, description="Create spans; when false every span is a no-op.")
    otlp_endpoint: str | None = Field(
        None,
        max_length=2048,
        description="OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces. Unset: spans "
        "are created (trace ids reach logs and headers) but not exported.",
    )
    sampling_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Fraction of new traces recorded (0-1); a request that arrives with a "
        "traceparent follows its caller's sampling decision.",
    )
    service_name: str = Field(
        "llmops", min_length=1, max_length=128, description="service.name resource attribute of spans."
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f'Got "{v}" for otlp_endpoint; it must start with http:// or https://')
        return v


class TracingSetupError(RuntimeError):
    """Tracing cannot start as configured (e.g. the OTLP exporter package is missing)."""


def _otlp_exporter(endpoint: str) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise TracingSetupError(
            f"tracing.otlp_endpoint is set to {endpoint!r} but the OTLP exporter is not installed; "
            f"install the {OTLP_EXPORTER_PACKAGE} package or unset otlp_endpoint"
        ) from exc
    exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint)
    return exporter


def setup_tracing(
    config: TracingConfig,
    *,
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> TracerProvider | None:
    """Builds this process's tracer provider from ``config``.

    Sampling is ``ParentBased(TraceIdRatioBased(sampling_ratio))``: new traces are kept
    with probability ``sampling_ratio``, continued traces follow their parent.

    Args:
        config: the tracing section of the config.
        exporter: an extra exporter (tests pass an ``InMemorySpanExporter``), added
            next to the OTLP exporter.
        set_global: install the provider as OpenTelemetry's global one (once per
            process; OpenTelemetry ignores later attempts). Tests pass False and hand
            the provider to :func:`get_tracer` / :func:`span_from_carrier`.

    Returns:
        The provider (call ``shutdown()`` on exit to flush spans), or None when
        tracing is disabled.

    Raises:
        TracingSetupError: ``otlp_endpoint`` is set and ``opentelemetry-exporter-otlp-proto-http``
            is not installed.
    """
    if not config.enabled:
        return None
    exporters: list[SpanExporter] = []
    if config.otlp_endpoint is not None:
        exporters.append(_otlp_exporter(config.otlp_endpoint))
    if exporter is not None:
        exporters.append(exporter)
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: config.service_name}),
        sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)),
    )
    for exp in exporters:
        # Batched: exporting never blocks the request path.
        provider.add_span_processor(BatchSpanProcessor(exp))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


# weak keys: an id() key could be reused by a later provider once the first is freed
_tracers: weakref.WeakKeyDictionary[trace.TracerProvider, trace.Tracer] = weakref.WeakKeyDictionary()


def get_tracer(tracer_provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """The llmops tracer from ``tracer_provider`` (default: the global provider).

    Cached per provider: creating a tracer per span cost as much as the span.
    """
    provider = tracer_provider or trace.get_tracer_provider()
    tracer = _tracers.get(provider)
    if tracer is None:
        tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)
        if not isinstance(provider, trace.ProxyTracerProvider):
            # the proxy hands out proxies until a real provider is set: do not pin those
            _tracers[provider] = tracer
    return tracer


def inject_context(context: Context | None = None) -> dict[str, str]:
    """A W3C carrier (``traceparent``, maybe ``tracestate``) for the current span.

    Pass it along a Ray handle call; empty when there is no valid current span.
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_context(carrier: Mapping[str, str] | None) -> Context:
    """The OpenTelemetry context a carrier from :func:`inject_context` describes.

    An empty, missing or malformed carrier gives an empty context (a new trace starts).
    """
    return _PROPAGATOR.extract(dict(carrier or {}), context=Context())


@contextmanager
def span_from_carrier(
    name: str,
    carrier: Mapping[str, str] | None,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    tracer_provider: trace.TracerProvider | None = None,
) -> Iterator[Span]:
    """Opens span ``name`` as the child of the span ``carrier`` came from, and makes it current.

    Use at the top of a deployment method called through a handle; spans opened inside
    (and :func:`current_trace_id`) then belong to the caller's trace.
    """
    tracer = get_tracer(tracer_provider)
    with tracer.start_as_current_span(
        name, context=extract_context(carrier), kind=kind, attributes=_attrs(attributes)
    ) as span:
        yield span


def start_span(
    name: str,
    carrier: Mapping[str, str] | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    parent: Span | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    tracer_provider: trace.TracerProvider | None = None,
) -> Span:
    """Starts span ``name`` without making it current; the caller must ``end()`` it.

    For async generators (a stream's span outlives many ``yield``s, and a context
    attached in one could not be detached in another); the parent is ``parent`` if
    given, else the span ``carrier`` came from. Pass the span on with :func:`carrier_of`.
    """
    context = trace.set_span_in_context(parent) if parent is not None else extract_context(carrier)
    return get_tracer(tracer_provider).start_span(
        name, context=context, kind=kind, attributes=_attrs(attributes)
    )


def carrier_of(span: Span) -> dict[str, str]:
    """The W3C carrier naming ``span`` as the parent (empty for an invalid span)."""
    return inject_context(trace.set_span_in_context(span))


def trace_id_of(span: Span) -> str | None:
    """``span``'s trace id as 32 lowercase hex digits, or None for an invalid span."""
    span_context = span.get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


def _attrs(attributes: Mapping[str, AttributeValue] | None) -> dict[str, Any] | None:
    return dict(attributes) if attributes else None


def current_trace_id() -> str | None:
    """The current trace id as 32 lowercase hex digits, or None outside any trace.

    With tracing enabled it is set for unsampled traces too, so logs and the response
    header always carry an id; with tracing disabled, only a trace continued from a
    carrier (the caller's trace id) has one.
    """
    return trace_id_of(trace.get_current_span())
