"""Every llmops metric, defined once, behind a small backend-agnostic facade.

Two backends take the same method calls:

* ``MetricSet("ray")`` records through :mod:`ray.util.metrics` (``Counter``,
  ``Histogram``, ``Gauge``). Use it inside Serve replicas. Ray's metrics
  endpoint exports every such metric with a ``ray_`` prefix, so
  ``llmops_requests_total`` is scraped as ``ray_llmops_requests_total``:
  **dashboards and alert rules must use the exported names** (see
  ``exported_name``). Ray adds its own labels (``WorkerId``, ``NodeAddress``,
  ``SessionName``, ``Component``, ``Version``, ``otel_scope_*``), so aggregate
  with ``sum by (...)``. Ray's histogram ``_sum`` is estimated from bucket
  midpoints (``_count`` and ``_bucket`` are exact): use quantiles, and counters
  for totals (tokens, cost), never ``_sum``. Ray metrics can be created and
  recorded without a running cluster; nothing is exported until the process
  joins one.
* ``MetricSet(CollectorRegistry())`` records into a ``prometheus_client``
  registry: for tests (one fresh registry per test) and for batch jobs that
  push to a Pushgateway (``MetricSet.push``).

Conventions (CONVENTIONS.md, "Metrics, traces, logs"): names are
``llmops_<what>_<unit>``, counters end in ``_total``, 0-1 values in ``_ratio``,
no colons; labels only from ``LABELS`` (plus ``version``/``python`` on
``llmops_build_info``); tenant values are bounded by ``TenantLabeler``.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, Protocol

from monitoring.metric_defs import (
    BUILD_INFO,
    COMPLETION_TOKENS,
    COST,
    COUNT_BUCKETS,
    DEFINITIONS,
    EMBED_BATCH,
    EMBED_BATCH_BUCKETS,
    ENGINE_KV_CACHE,
    ENGINE_RUNNING,
    ENGINE_WAITING,
    ENGINES,
    GUARDRAIL_DECISIONS,
    GUARDRAIL_DURATION,
    IN_FLIGHT,
    ITL,
    LABELS,
    LATENCY_BUCKETS,
    PROMPT_TOKENS,
    QUEUE_TIME,
    RAY_PREFIX,
    REPLICA_RETRIES,
    REQUEST_COMPLETION_TOKENS,
    REQUEST_DURATION,
    REQUEST_PROMPT_TOKENS,
    REQUESTS,
    RETRIEVAL_RESULTS,
    RETRIEVAL_TOP_SCORE,
    SCORE_BUCKETS,
    STAGE_DURATION,
    STAGES,
    TOKEN_BUCKETS,
    TTFT,
    MetricDef,
    exported_name,
)

__all__ = [
    "COUNT_BUCKETS",
    "DEFINITIONS",
    "EMBED_BATCH_BUCKETS",
    "ENGINES",
    "LABELS",
    "LATENCY_BUCKETS",
    "RAY_PREFIX",
    "SCORE_BUCKETS",
    "STAGES",
    "TOKEN_BUCKETS",
    "MetricDef",
    "MetricSet",
    "StageTimer",
    "TenantLabeler",
    "exported_name",
]

# --- tenant cardinality ----------------------------------------------------------


class TenantLabeler:
    """Maps tenant ids to bounded label values: allow-listed tenants keep their
    id, every other (or missing) tenant becomes ``other``."""

    OTHER = "other"

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed: frozenset[str] = frozenset(t for t in allowed if t)

    def __call__(self, tenant: str | None) -> str:
        if tenant is not None and tenant in self.allowed:
            return tenant
        return self.OTHER

    @property
    def values(self) -> frozenset[str]:
        """Every label value this labeler can produce."""
        return self.allowed | {self.OTHER}


# --- per-request stage timing ----------------------------------------------------


class StageTimer:
    """Times the stages of one request into ``durations`` (seconds per stage).

    A stage entered more than once (``serialize`` per streamed chunk) adds up
    into one entry, so each stage appears once, ready for a ``Server-Timing``
    header and ``MetricSet.observe_stages``.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.durations: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _check_stage(name)
        start = self._clock()
        try:
            yield
        finally:
            self.record(name, self._clock() - start)

    def record(self, name: str, seconds: float) -> None:
        """Add a duration measured elsewhere (e.g. reported by the engine)."""
        _check_stage(name)
        self.durations[name] = self.durations.get(name, 0.0) + max(0.0, seconds)

    def total(self) -> float:
        return sum(self.durations.values())

    def server_timing(self) -> str:
        """``Server-Timing`` header value, in stage order, durations in ms."""
        return ", ".join(f"{s};dur={self.durations[s] * 1000:.1f}" for s in STAGES if s in self.durations)


def _check_stage(name: str) -> None:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; expected one of {STAGES}")


# --- backends ------------------------------------------------------------------


class _Instrument(Protocol):
    def inc(self, value: float, labels: Mapping[str, str]) -> None: ...
    def observe(self, value: float, labels: Mapping[str, str]) -> None: ...
    def set(self, value: float, labels: Mapping[str, str]) -> None: ...
    def add(self, value: float, labels: Mapping[str, str]) -> None: ...


class _PromInstrument:
    def __init__(self, d: MetricDef, registry: Any) -> None:
        import prometheus_client as pc

        # prometheus_client adds "_total" to counter samples itself.
        name = d.name.removesuffix("_total") if d.kind == "counter" else d.name
        kw: dict[str, Any] = {"labelnames": d.labels, "registry": registry}
        if d.kind == "counter":
            self._m: Any = pc.Counter(name, d.description, **kw)
        elif d.kind == "histogram":
            self._m = pc.Histogram(name, d.description, buckets=d.buckets or (), **kw)
        else:
            self._m = pc.Gauge(name, d.description, **kw)
        self._labeled = bool(d.labels)

    def _child(self, labels: Mapping[str, str]) -> Any:
        return self._m.labels(**labels) if self._labeled else self._m

    def inc(self, value: float, labels: Mapping[str, str]) -> None:
        self._child(labels).inc(value)

    def observe(self, value: float, labels: Mapping[str, str]) -> None:
        self._child(labels).observe(value)

    def set(self, value: float, labels: Mapping[str, str]) -> None:
        self._child(labels).set(value)

    def add(self, value: float, labels: Mapping[str, str]) -> None:
        self._child(labels).inc(value)


class _RayInstrument:
    def __init__(self, d: MetricDef) -> None:
        from ray.util import metrics as rm

        if d.kind == "counter":
            self._m: Any = rm.Counter(d.name, d.description, tag_keys=d.labels)
        elif d.kind == "histogram":
            self._m = rm.Histogram(d.name, d.description, boundaries=list(d.buckets or ()), tag_keys=d.labels)
        else:
            self._m = rm.Gauge(d.name, d.description, tag_keys=d.labels)
        # Ray gauges only ``set``; ``add`` keeps this process's value here.
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, value: float, labels: Mapping[str, str]) -> None:
        self._m.inc(value, tags=dict(labels))

    def observe(self, value: float, labels: Mapping[str, str]) -> None:
        self._m.observe(value, tags=dict(labels))

    def set(self, value: float, labels: Mapping[str, str]) -> None:
        with self._lock:
            self._values[tuple(sorted(labels.items()))] = value
            self._m.set(value, tags=dict(labels))

    def refresh(self) -> None:
        """Set every label set's last value again (see :meth:`MetricSet.refresh`)."""
        with self._lock:
            for key, value in self._values.items():
                self._m.set(value, tags=dict(key))

    def add(self, value: float, labels: Mapping[str, str]) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            new = self._values.get(key, 0.0) + value
            self._values[key] = new
            self._m.set(new, tags=dict(labels))


# --- facade ----------------------------------------------------------------------


def _build_version() -> str:
    try:
        from importlib.metadata import version

        return version("llmops-platform")
    except Exception:
        return "unknown"


class MetricSet:
    """All llmops metrics on one backend: ``"ray"`` or a ``CollectorRegistry``.

    ``tenants`` is the allow-list for the ``tenant`` label (from config);
    anything else is recorded as ``other``. Creating a set records
    ``llmops_build_info`` = 1.

    On the Ray backend counters and the in-flight gauge are buffered in this process
    and reach Ray on :meth:`refresh`, which replicas call every few seconds: a Ray
    metric call costs tens of microseconds, and a request touches five of them
    (profiled at a tenth of the gateway's CPU unbuffered). Histograms are recorded at
    once. ``buffered=False`` records everything at once (the default for the
    prometheus_client backend, whose calls are cheap).
    """

    def __init__(
        self,
        backend: Literal["ray"] | Any,
        *,
        tenants: Iterable[str] = (),
        version: str | None = None,
        buffered: bool | None = None,
    ) -> None:
        if backend == "ray":
            self.backend = "ray"
            self.registry: Any = None
        else:
            from prometheus_client import CollectorRegistry

            if not isinstance(backend, CollectorRegistry):
                raise TypeError(
                    f"backend must be 'ray' or a prometheus_client CollectorRegistry, got {backend!r}"
                )
            self.backend = "prometheus"
            self.registry = backend
        self.tenant = TenantLabeler(tenants)
        self.buffered = self.registry is None if buffered is None else buffered
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._in_flight: dict[str, int] = {}
        self._m: dict[str, _Instrument] = {
            d.name: (_RayInstrument(d) if self.registry is None else _PromInstrument(d, self.registry))
            for d in DEFINITIONS
        }
        self._m[BUILD_INFO.name].set(
            1, {"version": version or _build_version(), "python": platform.python_version()}
        )

    def exported_name(self, name: str) -> str:
        return exported_name(name, self.backend)

    def refresh(self) -> None:
        """Send the buffered counters and in-flight counts, and re-report every gauge.

        Ray's metrics agent drops a gauge observation that is not reported again
        within two export intervals (Ray 2.60 ``gauge_metric_ttl``), so a gauge set
        once (``llmops_build_info``) or rarely (in-flight on an idle replica) would
        vanish from the scrape. Replicas call this every few seconds (and on shutdown).
        """
        pending, self._pending = self._pending, {}
        for (name, key), value in pending.items():
            self._m[name].inc(value, dict(key))
        for route, n in self._in_flight.items():
            self._m[IN_FLIGHT.name].set(n, {"route": route})
        for d in DEFINITIONS:
            instrument = self._m[d.name]
            if d.kind == "gauge" and isinstance(instrument, _RayInstrument):
                instrument.refresh()

    # requests
    def observe_request(self, route: str, model: str, status: int | str, seconds: float) -> None:
        """Count one finished request and record its end-to-end latency."""
        labels = {"route": route, "model": model, "status": str(status)}
        self._counter(REQUESTS, 1, labels)
        self._m[REQUEST_DURATION.name].observe(seconds, labels)

    def observe_ttft(self, route: str, model: str, seconds: float) -> None:
        self._m[TTFT.name].observe(seconds, {"route": route, "model": model})

    def observe_inter_token(self, model: str, seconds: float) -> None:
        self._m[ITL.name].observe(seconds, {"model": model})

    def observe_queue(self, model: str, seconds: float) -> None:
        self._m[QUEUE_TIME.name].observe(seconds, {"model": model})

    def observe_stage(self, stage: str, route: str, model: str, seconds: float) -> None:
        _check_stage(stage)
        self._m[STAGE_DURATION.name].observe(seconds, {"stage": stage, "route": route, "model": model})

    def observe_stages(self, durations: Mapping[str, float], route: str, model: str) -> None:
        """Record a ``StageTimer.durations`` dict."""
        for stage, seconds in durations.items():
            self.observe_stage(stage, route, model, seconds)

    def request_started(self, route: str) -> None:
        """One more request in flight on ``route`` (pair with :meth:`request_finished`)."""
        if self.buffered:
            self._in_flight[route] = self._in_flight.get(route, 0) + 1
        else:
            self._m[IN_FLIGHT.name].add(1, {"route": route})

    def request_finished(self, route: str) -> None:
        if self.buffered:
            self._in_flight[route] = self._in_flight.get(route, 0) - 1
        else:
            self._m[IN_FLIGHT.name].add(-1, {"route": route})

    @contextmanager
    def in_flight(self, route: str) -> Iterator[None]:
        """Counts the wrapped block in ``llmops_requests_in_flight``."""
        self.request_started(route)
        try:
            yield
        finally:
            self.request_finished(route)

    # tokens and cost
    def add_tokens(self, model: str, tenant: str | None, prompt: int, completion: int) -> None:
        """Count one request's tokens (totals by tenant, per-request histograms)."""
        labels = {"model": model, "tenant": self.tenant(tenant)}
        self._counter(PROMPT_TOKENS, prompt, labels)
        self._counter(COMPLETION_TOKENS, completion, labels)
        self._m[REQUEST_PROMPT_TOKENS.name].observe(prompt, {"model": model})
        self._m[REQUEST_COMPLETION_TOKENS.name].observe(completion, {"model": model})

    def add_cost(self, tenant: str | None, model: str, usd: float) -> None:
        self._counter(COST, usd, {"tenant": self.tenant(tenant), "model": model})

    def count_guardrail(self, check: str, direction: str, result: str, model: str, seconds: float) -> None:
        """One guardrail decision (and, when the check ran, how long it took)."""
        self._counter(
            GUARDRAIL_DECISIONS, 1, {"check": check, "direction": direction, "result": result, "model": model}
        )
        if seconds > 0:
            self._m[GUARDRAIL_DURATION.name].observe(seconds, {"check": check, "direction": direction})

    def count_replica_retry(self, route: str, model: str, outcome: str) -> None:
        self._counter(REPLICA_RETRIES, 1, {"route": route, "model": model, "outcome": outcome})

    # RAG
    def observe_embedding_batch(self, model: str, size: int) -> None:
        self._m[EMBED_BATCH.name].observe(size, {"model": model})

    def observe_retrieval(self, collection: str, results: int, top_score: float | None) -> None:
        """One retrieval query: result count, and the best score when there is one."""
        labels = {"collection": collection}
        self._m[RETRIEVAL_RESULTS.name].observe(results, labels)
        if top_score is not None:
            self._m[RETRIEVAL_TOP_SCORE.name].observe(top_score, labels)

    # engine pass-through
    def set_engine_stats(
        self,
        model: str,
        engine: str,
        *,
        kv_cache_usage: float | None = None,
        running: int | None = None,
        waiting: int | None = None,
    ) -> None:
        """Pass the engine's own gauges through (vLLM: kv cache usage, running, waiting)."""
        labels = {"model": model, "engine": engine}
        for d, value in (
            (ENGINE_KV_CACHE, kv_cache_usage),
            (ENGINE_RUNNING, running),
            (ENGINE_WAITING, waiting),
        ):
            if value is not None:
                self._m[d.name].set(float(value), labels)

    # batch jobs
    def push(self, gateway: str, job: str) -> None:
        """Push this registry to a Pushgateway (prometheus backend only)."""
        if self.registry is None:
            raise RuntimeError("push() needs a CollectorRegistry backend; Ray metrics are scraped")
        from prometheus_client import push_to_gateway

        push_to_gateway(gateway, job=job, registry=self.registry)

    def _counter(self, d: MetricDef, value: float, labels: Mapping[str, str]) -> None:
        # Ray rejects inc(0); a zero increment changes nothing on either backend.
        if value < 0:
            raise ValueError(f"{d.name}: counters only go up, got {value}")
        if value <= 0:
            return
        if self.buffered:
            key = (d.name, tuple(sorted(labels.items())))
            self._pending[key] = self._pending.get(key, 0.0) + value
        else:
            self._m[d.name].inc(value, labels)
