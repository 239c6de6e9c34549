"""Metric definitions and the MetricSet facade (issue 4, item 1).

Every test uses its own CollectorRegistry; the Ray backend needs no cluster
(ray.util.metrics objects are created and recorded without ``ray.init``).
"""

from __future__ import annotations

import itertools
import platform
import re

import pytest
from prometheus_client import CollectorRegistry

from monitoring.metrics import (
    DEFINITIONS,
    LABELS,
    LATENCY_BUCKETS,
    STAGES,
    TOKEN_BUCKETS,
    MetricSet,
    StageTimer,
    TenantLabeler,
    exported_name,
)

NAME_RE = re.compile(r"^llmops_[a-z][a-z0-9_]*[a-z0-9]$")
# Allowed name endings per type; counters of tokens/dollars carry the unit before _total.
COUNTER_RE = re.compile(r"_total$")
HISTOGRAM_UNITS = re.compile(r"_(seconds|tokens|texts|chunks|score)$")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> MetricSet:
    return MetricSet(registry, tenants=["acme", "globex"], version="1.2.3")


def test_names_follow_conventions() -> None:
    names = [d.name for d in DEFINITIONS]
    assert len(names) == len(set(names)), "a metric is defined twice"
    for d in DEFINITIONS:
        assert NAME_RE.match(d.name), d.name
        assert ":" not in d.name
        if d.kind == "counter":
            assert COUNTER_RE.search(d.name), d.name
        else:
            assert not d.name.endswith("_total"), d.name
        if d.kind == "histogram":
            assert HISTOGRAM_UNITS.search(d.name), d.name
        if "latency" in d.name or "duration" in d.name or "time" in d.name:
            assert d.name.endswith("_seconds"), d.name
        if "tokens" in d.name and d.kind == "counter":
            assert d.name.endswith("_tokens_total"), d.name
        if "cost" in d.name:
            assert d.name.endswith("_usd_total"), d.name
        if "usage" in d.name:
            assert d.name.endswith("_ratio"), d.name
        if d.name != "llmops_build_info":
            assert set(d.labels) <= LABELS, d.name
            assert "user" not in "".join(d.labels)


def test_required_families_defined() -> None:
    names = {d.name for d in DEFINITIONS}
    assert {
        "llmops_requests_total",
        "llmops_request_duration_seconds",
        "llmops_time_to_first_token_seconds",
        "llmops_inter_token_latency_seconds",
        "llmops_queue_time_seconds",
        "llmops_stage_duration_seconds",
        "llmops_prompt_tokens_total",
        "llmops_completion_tokens_total",
        "llmops_requests_in_flight",
        "llmops_cost_usd_total",
        "llmops_build_info",
        "llmops_engine_kv_cache_usage_ratio",
        "llmops_engine_requests_running",
        "llmops_engine_requests_waiting",
    } <= names
    assert STAGES == ("auth", "guardrails", "embed", "retrieve", "generate", "serialize")
    assert exported_name("llmops_requests_total") == "ray_llmops_requests_total"
    assert exported_name("llmops_requests_total", "prometheus") == "llmops_requests_total"


def test_buckets_increasing_and_sized() -> None:
    for d in DEFINITIONS:
        if d.kind != "histogram":
            continue
        assert d.buckets
        assert all(b > 0 for b in d.buckets), d.name  # Ray rejects non-positive bounds
        assert all(a < b for a, b in itertools.pairwise(d.buckets)), d.name
        if d.name == "llmops_guardrail_check_duration_seconds":  # one check: 0.1 ms up to a judge call
            assert d.buckets[0] <= 0.0001 and d.buckets[-1] >= 30, d.name
        elif d.name.endswith("_seconds"):
            assert d.buckets[0] <= 0.01 and d.buckets[-1] >= 300, d.name
    assert LATENCY_BUCKETS[-1] >= 300
    assert TOKEN_BUCKETS[:6] == (1, 2, 5, 10, 20, 50)
    assert TOKEN_BUCKETS[-1] >= 100_000


def test_recording_shows_in_registry(registry: CollectorRegistry, metrics: MetricSet) -> None:
    get = registry.get_sample_value
    assert get("llmops_build_info", {"version": "1.2.3", "python": platform.python_version()}) == 1

    metrics.observe_request("/v1/chat/completions", "m1", 200, 0.8)
    metrics.observe_request("/v1/chat/completions", "m1", 200, 400.0)
    metrics.observe_request("/v1/chat/completions", "m1", 429, 0.01)
    req = {"route": "/v1/chat/completions", "model": "m1", "status": "200"}
    assert get("llmops_requests_total", req) == 2
    assert get("llmops_requests_total", {**req, "status": "429"}) == 1
    assert get("llmops_request_duration_seconds_count", req) == 2
    assert get("llmops_request_duration_seconds_bucket", {**req, "le": "1.0"}) == 1
    assert get("llmops_request_duration_seconds_bucket", {**req, "le": "600.0"}) == 2

    metrics.observe_ttft("/v1/chat/completions", "m1", 0.3)
    metrics.observe_inter_token("m1", 0.02)
    metrics.observe_queue("m1", 0.1)
    assert (
        get("llmops_time_to_first_token_seconds_sum", {"route": "/v1/chat/completions", "model": "m1"}) == 0.3
    )
    assert get("llmops_inter_token_latency_seconds_count", {"model": "m1"}) == 1
    assert get("llmops_queue_time_seconds_count", {"model": "m1"}) == 1

    metrics.observe_stages({"auth": 0.001, "generate": 0.5}, "/v1/chat/completions", "m1")
    stage = {"route": "/v1/chat/completions", "model": "m1"}
    assert get("llmops_stage_duration_seconds_sum", {**stage, "stage": "generate"}) == 0.5
    assert get("llmops_stage_duration_seconds_count", {**stage, "stage": "auth"}) == 1
    with pytest.raises(ValueError):
        metrics.observe_stage("bogus", "/r", "m1", 1.0)

    metrics.add_tokens("m1", "acme", prompt=120, completion=0)
    metrics.add_tokens("m1", "acme", prompt=30, completion=7)
    assert get("llmops_prompt_tokens_total", {"model": "m1", "tenant": "acme"}) == 150
    assert get("llmops_completion_tokens_total", {"model": "m1", "tenant": "acme"}) == 7
    assert get("llmops_request_prompt_tokens_bucket", {"model": "m1", "le": "200.0"}) == 2
    with pytest.raises(ValueError):
        metrics.add_tokens("m1", "acme", prompt=-1, completion=0)

    metrics.add_cost("acme", "m1", 0.25)
    metrics.add_cost("unknown-tenant", "m1", 0.5)
    assert get("llmops_cost_usd_total", {"tenant": "acme", "model": "m1"}) == 0.25
    assert get("llmops_cost_usd_total", {"tenant": "other", "model": "m1"}) == 0.5
    assert get("llmops_cost_usd_total", {"tenant": "unknown-tenant", "model": "m1"}) is None

    with metrics.in_flight("/v1/embeddings"), metrics.in_flight("/v1/embeddings"):
        assert get("llmops_requests_in_flight", {"route": "/v1/embeddings"}) == 2
    assert get("llmops_requests_in_flight", {"route": "/v1/embeddings"}) == 0

    metrics.observe_embedding_batch("minilm", 32)
    metrics.observe_retrieval("docs", 0, None)
    metrics.observe_retrieval("docs", 5, 0.82)
    assert get("llmops_embedding_batch_size_texts_bucket", {"model": "minilm", "le": "32.0"}) == 1
    assert get("llmops_retrieval_results_chunks_bucket", {"collection": "docs", "le": "0.5"}) == 1
    assert get("llmops_retrieval_results_chunks_count", {"collection": "docs"}) == 2
    assert get("llmops_retrieval_top_score_count", {"collection": "docs"}) == 1

    metrics.set_engine_stats("m1", "vllm", kv_cache_usage=0.42, running=3, waiting=7)
    eng = {"model": "m1", "engine": "vllm"}
    assert get("llmops_engine_kv_cache_usage_ratio", eng) == 0.42
    assert get("llmops_engine_requests_running", eng) == 3
    assert get("llmops_engine_requests_waiting", eng) == 7


def test_only_fixed_labels_exported(registry: CollectorRegistry, metrics: MetricSet) -> None:
    metrics.observe_request("/r", "m", 200, 0.1)
    metrics.add_tokens("m", "someone", 1, 1)
    for family in registry.collect():
        for sample in family.samples:
            keys = set(sample.labels) - {"le"}
            if family.name == "llmops_build_info":
                assert keys == {"version", "python"}
            else:
                assert keys <= LABELS, (family.name, keys)


def test_tenant_labeler_bounds_cardinality(registry: CollectorRegistry) -> None:
    labeler = TenantLabeler(["acme", "globex", ""])
    assert labeler("acme") == "acme"
    assert labeler("initech") == "other"
    assert labeler(None) == "other"
    assert labeler("") == "other"
    assert labeler.values == {"acme", "globex", "other"}

    m = MetricSet(registry, tenants=["acme"])
    for i in range(500):
        m.add_cost(f"tenant-{i}", "m", 0.01)
    m.add_cost("acme", "m", 1.0)
    tenants = {
        s.labels["tenant"]
        for fam in registry.collect()
        if fam.name == "llmops_cost_usd"
        for s in fam.samples
        if s.name == "llmops_cost_usd_total"
    }
    assert tenants == {"acme", "other"}
    assert registry.get_sample_value(
        "llmops_cost_usd_total", {"tenant": "other", "model": "m"}
    ) == pytest.approx(5.0)


def test_stage_timer_records_each_stage_once() -> None:
    ticks = iter([0.0, 0.010, 0.010, 0.030, 0.030, 0.530, 0.530, 0.531, 0.600, 0.602])
    timer = StageTimer(clock=lambda: next(ticks))
    with timer.stage("auth"):
        pass
    with timer.stage("retrieve"):
        pass
    with timer.stage("generate"):
        pass
    with timer.stage("serialize"):
        pass
    with timer.stage("serialize"):  # streamed: serialize per chunk adds up
        pass
    assert list(timer.durations) == ["auth", "retrieve", "generate", "serialize"]
    assert timer.durations["auth"] == pytest.approx(0.010)
    assert timer.durations["generate"] == pytest.approx(0.5)
    assert timer.durations["serialize"] == pytest.approx(0.003)
    assert timer.total() == pytest.approx(0.533)
    assert timer.server_timing() == "auth;dur=10.0, retrieve;dur=20.0, generate;dur=500.0, serialize;dur=3.0"

    timer.record("embed", 0.004)
    assert timer.durations["embed"] == pytest.approx(0.004)
    with pytest.raises(ValueError):
        timer.record("total", 1.0)
    with pytest.raises(ValueError), timer.stage("nope"):
        pass


def test_stage_timer_real_clock_sums_within_wall_time() -> None:
    import time

    timer = StageTimer()
    start = time.perf_counter()
    for stage in STAGES:
        with timer.stage(stage):
            time.sleep(0.001)
    wall = time.perf_counter() - start
    assert set(timer.durations) == set(STAGES)
    assert all(v >= 0.001 for v in timer.durations.values())
    assert timer.total() <= wall


def test_stage_timer_records_on_exception() -> None:
    timer = StageTimer()
    with pytest.raises(RuntimeError), timer.stage("generate"):
        raise RuntimeError("engine failed")
    assert "generate" in timer.durations


def test_push_needs_registry() -> None:
    pytest.importorskip("ray")
    m = MetricSet("ray")
    with pytest.raises(RuntimeError):
        m.push("127.0.0.1:9091", "job")


def test_ray_backend_constructs_and_records_without_cluster() -> None:
    ray = pytest.importorskip("ray")
    was_initialized = ray.is_initialized()  # other tests in this process may have started Ray
    m = MetricSet("ray", tenants=["acme"], version="test")
    assert ray.is_initialized() == was_initialized
    assert m.exported_name("llmops_requests_total") == "ray_llmops_requests_total"
    # Same calls as the prometheus backend; Ray validates tags on every record.
    m.observe_request("/v1/chat/completions", "m1", 200, 0.5)
    m.observe_ttft("/v1/chat/completions", "m1", 0.1)
    m.observe_inter_token("m1", 0.01)
    m.observe_queue("m1", 0.0)
    m.observe_stages({"auth": 0.001, "generate": 0.4}, "/v1/chat/completions", "m1")
    m.add_tokens("m1", "stranger", prompt=10, completion=0)  # zero increments are skipped
    m.add_cost("acme", "m1", 0.001)
    with m.in_flight("/v1/chat/completions"):
        pass
    m.observe_embedding_batch("minilm", 8)
    m.observe_retrieval("docs", 3, 0.7)
    m.set_engine_stats("m1", "vllm", kv_cache_usage=0.1, running=1, waiting=0)
    assert ray.is_initialized() == was_initialized  # recording never starts a cluster


def test_bad_backend_rejected() -> None:
    with pytest.raises(TypeError):
        MetricSet("prometheus")


def test_buffered_counters_and_in_flight_reach_the_backend_on_refresh(registry: CollectorRegistry) -> None:
    m = MetricSet(registry, tenants=["acme"], buffered=True)
    m.observe_request("/v1/completions", "m", 200, 0.2)
    m.observe_request("/v1/completions", "m", 200, 0.3)
    m.add_tokens("m", "acme", 7, 3)
    m.request_started("/v1/completions")
    labels = {"route": "/v1/completions", "model": "m", "status": "200"}
    assert registry.get_sample_value("llmops_requests_total", labels) is None  # buffered
    assert (
        registry.get_sample_value("llmops_request_duration_seconds_count", labels) == 2
    )  # histograms are not
    m.refresh()
    assert registry.get_sample_value("llmops_requests_total", labels) == 2
    assert registry.get_sample_value("llmops_prompt_tokens_total", {"model": "m", "tenant": "acme"}) == 7
    assert registry.get_sample_value("llmops_requests_in_flight", {"route": "/v1/completions"}) == 1
    m.request_finished("/v1/completions")
    m.refresh()
    m.refresh()  # nothing pending: nothing counted twice
    assert registry.get_sample_value("llmops_requests_total", labels) == 2
    assert registry.get_sample_value("llmops_requests_in_flight", {"route": "/v1/completions"}) == 0
