"""Per-request observability of the gateway.

:class:`ObservabilityMiddleware` (plain ASGI, so streams are not buffered) opens a
:class:`RequestObservation` for every HTTP request. Handlers and the serving logic
time their stages into it (``auth``, ``guardrails``, ``embed``, ``retrieve``,
``generate``, ``serialize``) and fill in model, tenant, tokens and cost. When the
response starts, the middleware adds ``Server-Timing`` (the stages so far) and
``X-Trace-Id``; when the last byte is sent, :meth:`GatewayObserver.finish` records
the metrics, writes the JSON request-log line, adds the usage row and ends the span.

A streamed response's headers leave with its first token, so its ``Server-Timing``
header covers the stages up to the first token; the whole stream's timings are in
the last SSE event (a ``: server-timing`` comment line), the request log and metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitoring.config import MonitoringConfig
from monitoring.inference_table import InferenceTable
from monitoring.metrics import MetricSet, StageTimer
from monitoring.redact import redact
from monitoring.request_log import RequestLog
from monitoring.tracing import carrier_of, start_span, trace_id_of
from services.generation.protocol import GenerationStats, StageTimings
from services.guardrails.chain import Decision, header_value
from services.rag.types import RagMeta

__all__ = [
    "GatewayObserver",
    "ObservabilityMiddleware",
    "RequestObservation",
    "current",
]

#: routes whose requests carry a model and tokens (counted in usage and cost)
MODEL_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
#: routes whose requests the inference table samples (prompt in, text out)
GENERATION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
UNMATCHED = "unmatched"  # route label of paths no route matches (never the raw path)
NO_MODEL = "none"

logger = logging.getLogger("llmops.gateway")
_current: ContextVar[RequestObservation | None] = ContextVar("llmops_request", default=None)


def current() -> RequestObservation | None:
    """The observation of the request being handled (None outside a request)."""
    return _current.get()


@dataclass(eq=False)
class RequestObservation:
    """What the gateway learns about one request while handling it."""

    request_id: str
    route: str
    span: Span
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    timer: StageTimer = field(default_factory=StageTimer)
    model: str = NO_MODEL
    tenant: str | None = None
    status: int = 0
    stream: bool = False
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    error: str | None = None
    #: a replica died under the request: recovered | failed | stream_broken (services.gateway.retry)
    retry: str | None = None
    #: True when the request log includes prompts: then the text is kept (and redacted when written)
    capture_text: bool = False
    prompt_text: str | None = None
    completion_text: str | None = None
    #: the model's version and engine (from its deployment's info) and a RAG model's citations
    version: str | None = None
    engine: str | None = None
    rag: RagMeta | None = None
    #: every guardrail decision on the request (input, context, output), in order
    guardrails: list[Decision] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self.timer.stage(name):
            yield

    def take_rag(self, meta: RagMeta) -> RagMeta:
        """Keep a RAG model's citations, and its context scan as a guardrail decision."""
        from services.rag.context_scan import decision_of

        self.rag = meta
        decision = decision_of(meta)
        if decision is not None:
            self.guardrails.append(decision)
        return meta

    def trace_carrier(self) -> dict[str, str]:
        """The carrier to pass along deployment handle calls."""
        return carrier_of(self.span)

    @property
    def trace_id(self) -> str | None:
        return trace_id_of(self.span)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def first_token(self) -> None:
        """Mark the first token arriving at the gateway (streams)."""
        if self.ttft_s is None:
            self.ttft_s = self.elapsed()

    def absorb(self, item: GenerationStats | StageTimings) -> None:
        """Take in what a downstream deployment measured.

        ``StageTimings`` (a RAG model's embed and retrieve) were spent while the
        gateway waited under ``generate``: that time moves to its own stages.
        """
        if isinstance(item, StageTimings):
            durations = self.timer.durations
            moved = sum(item.stages.values())
            durations["generate"] = max(0.0, durations.get("generate", 0.0) - moved)
            for name, seconds in item.stages.items():
                self.timer.record(name, seconds)
            return
        if self.ttft_s is None and item.first_token_at is not None:
            self.ttft_s = min(max(0.0, item.first_token_at - self.started_wall), self.elapsed())
        if item.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + item.cost_usd


class GatewayObserver:
    """Records finished requests: metrics, request log, usage and the span."""

    def __init__(
        self,
        config: MonitoringConfig,
        metrics: MetricSet | None,
        request_log: RequestLog | None = None,
        usage: Any = None,
        table: InferenceTable | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.request_log = request_log
        self.usage = usage  # a UsageRecorder, or None
        self.table = table
        self.include_prompts = config.request_log.include_prompts
        self._max_chars = config.request_log.max_text_chars

    def begin(self, request_id: str, route: str, parent: dict[str, str]) -> RequestObservation:
        span = start_span(
            f"gateway {route}",
            parent,  # the client's traceparent/tracestate, if it sent them
            {"http.route": route, "llmops.request_id": request_id},
            kind=SpanKind.SERVER,
        )
        obs = RequestObservation(
            request_id=request_id,
            route=route,
            span=span,
            # the inference table samples at the end, when model and tenant are known
            capture_text=self.include_prompts or (self.table is not None and route in GENERATION_ROUTES),
        )
        if self.metrics is not None:
            self.metrics.request_started(route)
        return obs

    def finish(self, obs: RequestObservation) -> None:
        """Record a finished request; an error here is logged, never the request's failure."""
        try:
            self._finish(obs)
        except Exception:
            logger.exception("request %s: recording its metrics/log failed", obs.request_id)

    def _finish(self, obs: RequestObservation) -> None:
        total = obs.elapsed()
        status = obs.status or 500
        m = self.metrics
        if m is not None:
            m.request_finished(obs.route)
            m.observe_request(obs.route, obs.model, status, total)
            m.observe_stages(obs.timer.durations, obs.route, obs.model)
            if obs.ttft_s is not None:
                m.observe_ttft(obs.route, obs.model, obs.ttft_s)
            if obs.prompt_tokens or obs.completion_tokens:
                m.add_tokens(obs.model, obs.tenant, obs.prompt_tokens, obs.completion_tokens)
            if obs.cost_usd:
                m.add_cost(obs.tenant, obs.model, obs.cost_usd)
            if obs.retry:
                m.count_replica_retry(obs.route, obs.model, obs.retry)
            for d in obs.guardrails:  # input and output decisions are counted where they are made
                if d.direction == "context":
                    m.count_guardrail(d.check, d.direction, d.result, obs.model, d.seconds)
        if self.usage is not None and obs.route in MODEL_ROUTES and obs.model != NO_MODEL and status < 400:
            self.usage.add(
                obs.tenant or "", obs.model, obs.prompt_tokens, obs.completion_tokens, obs.cost_usd or 0.0
            )
        span = obs.span
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("llmops.model", obs.model)
        if obs.tenant:
            span.set_attribute("llmops.tenant", obs.tenant)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, obs.error or str(status)))
        span.end()
        if self.request_log is not None:
            self.request_log.write(self.record(obs, status, total))
        if (
            self.table is not None
            and obs.route in GENERATION_ROUTES
            and obs.model != NO_MODEL
            and self.table.sampled(obs.request_id, obs.model, obs.tenant)
        ):
            self.table.write(self.table_record(obs, status, total))

    def table_record(self, obs: RequestObservation, status: int, total: float) -> dict[str, Any]:
        """The inference-table row (raw text: the table redacts it on its writer thread)."""
        rag = obs.rag
        return {
            "request_id": obs.request_id,
            "ts": obs.started_wall,
            "tenant": obs.tenant,
            "model": obs.model,
            "version": obs.version,
            "engine": obs.engine,
            "route": obs.route,
            "status": status,
            "stream": obs.stream,
            "prompt": obs.prompt_text,
            "completion": obs.completion_text,
            "chunk_ids": [c.chunk_id for c in rag.citations] if rag else [],
            "chunk_texts": list(rag.texts) if rag else [],
            "citations": [c.as_dict() for c in rag.citations] if rag else [],
            "latency_ms": round(total * 1000, 3),
            "ttft_ms": None if obs.ttft_s is None else round(obs.ttft_s * 1000, 3),
            "prompt_tokens": obs.prompt_tokens,
            "completion_tokens": obs.completion_tokens,
            "cost_usd": obs.cost_usd,
            "error": obs.error,
            "guardrails": json.dumps([d.as_dict() for d in obs.guardrails]) if obs.guardrails else None,
        }

    def record(self, obs: RequestObservation, status: int, total: float) -> dict[str, Any]:
        """The request-log line: never the key, prompt text only if configured (redacted)."""
        rec: dict[str, Any] = {
            "ts": datetime.fromtimestamp(obs.started_wall, UTC).isoformat(timespec="milliseconds"),
            "request_id": obs.request_id,
            "trace_id": obs.trace_id,
            "tenant": obs.tenant,
            "route": obs.route,
            "model": obs.model,
            "status": status,
            "stream": obs.stream,
            "duration_ms": round(total * 1000, 2),
            "ttft_ms": None if obs.ttft_s is None else round(obs.ttft_s * 1000, 2),
            "stages_ms": {k: round(v * 1000, 2) for k, v in obs.timer.durations.items()},
            "prompt_tokens": obs.prompt_tokens,
            "completion_tokens": obs.completion_tokens,
            "cost_usd": obs.cost_usd,
            "error": obs.error,
            "retry": obs.retry,
            "version": obs.version,
        }
        if obs.guardrails:
            rec["guardrails"] = [d.as_dict() for d in obs.guardrails]
        if self.include_prompts:
            rec["prompt"] = self._text(obs.prompt_text)
            rec["completion"] = self._text(obs.completion_text)
        return rec

    def _text(self, text: str | None) -> str | None:
        if text is None:
            return None
        return redact(text[: self._max_chars])

    def close(self) -> None:
        if self.request_log is not None:
            self.request_log.close()
        if self.table is not None:
            self.table.close()


def _route_paths(router: Any, prefix: str = "") -> Iterator[str]:
    """Every route path under ``router``. FastAPI >= 0.137 keeps an included router as
    one node (``original_router``, prefix in ``include_context``); Serve's ingress
    re-mounts the gateway's class-based routes that way."""
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _route_paths(inner, prefix + (getattr(context, "prefix", "") or ""))
        elif isinstance(getattr(route, "path", None), str):
            yield prefix + route.path


class RouteLabels:
    """Maps a request path to its route template: a bounded ``route`` label.

    Never the raw path: it can hold ids (``/v1/collections/{name}/documents/{doc_id}``).
    """

    def __init__(self, app: Any) -> None:
        self._routes = [(compile_path(path)[0], path) for path in _route_paths(app.router)]

    def __call__(self, path: str) -> str:
        for regex, template in self._routes:
            if regex.match(path):
                return template
        return UNMATCHED


class ObservabilityMiddleware:
    """Opens, annotates and finishes each request's :class:`RequestObservation`.

    The observer is read from ``app.state.observer`` (set by the gateway replica); with
    none set, requests pass straight through.
    """

    def __init__(self, app: ASGIApp, root: Any) -> None:
        self.app = app
        self.root = root  # the FastAPI app: its state holds the observer
        self._labels: RouteLabels | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        observer: GatewayObserver | None = getattr(self.root.state, "observer", None)
        if scope["type"] != "http" or observer is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1") or scope.get("state", {}).get(
            "request_id", "unknown"
        )
        parent = {}
        if b"traceparent" in headers:
            parent["traceparent"] = headers[b"traceparent"].decode("latin-1")
            if b"tracestate" in headers:
                parent["tracestate"] = headers[b"tracestate"].decode("latin-1")
        if self._labels is None:
            self._labels = RouteLabels(self.root)
        obs = observer.begin(rid, self._labels(scope["path"]), parent)
        token = _current.set(obs)

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                obs.status = message["status"]
                extra = [(b"server-timing", obs.timer.server_timing().encode())]
                trace_id = obs.trace_id
                if trace_id:
                    extra.append((b"x-trace-id", trace_id.encode()))
                if obs.retry:
                    extra.append((b"x-llmops-retry", obs.retry.encode()))
                if obs.guardrails:  # a stream's output decisions come in its last SSE comment
                    extra.append((b"x-guardrails", header_value(obs.guardrails).encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except BaseException as exc:
            obs.error = obs.error or type(exc).__name__
            if not obs.status:
                obs.status = 500
            raise
        finally:
            _current.reset(token)
            observer.finish(obs)
