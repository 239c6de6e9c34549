"""The gateway's per-request observability, on a small ASGI app and its own registry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry.trace import INVALID_SPAN
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from monitoring.config import MonitoringConfig
from monitoring.metrics import MetricSet
from monitoring.redact import redact
from monitoring.request_log import RequestLog
from services.gateway.observe import (
    GatewayObserver,
    ObservabilityMiddleware,
    RequestObservation,
    RouteLabels,
    current,
)
from services.generation.protocol import GenerationStats, StageTimings

pytestmark = pytest.mark.unit


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class _Usage:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def add(self, *row: Any) -> None:
        self.rows.append(row)


def _app(observer: GatewayObserver) -> FastAPI:
    app = FastAPI()
    app.add_middleware(ObservabilityMiddleware, root=app)
    app.state.observer = observer

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        obs = current()
        assert obs is not None
        obs.tenant = "acme"
        with obs.stage("auth"):
            pass
        with obs.stage("generate"):
            await asyncio.sleep(0.02)
        obs.model, obs.prompt_tokens, obs.completion_tokens, obs.cost_usd = "m1", 10, 5, 0.25
        return JSONResponse({"ok": True})

    @app.get("/v1/collections/{name}/documents/{doc_id:path}")
    async def doc(name: str, doc_id: str) -> StreamingResponse:
        async def body() -> Any:
            yield b"a"
            yield b"b"

        return StreamingResponse(body())

    return app


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def observer(registry: CollectorRegistry, tmp_path: Path) -> GatewayObserver:
    obs = GatewayObserver(
        MonitoringConfig(),
        MetricSet(registry, tenants=["acme"]),
        RequestLog(str(tmp_path / "requests.jsonl")),
        _Usage(),
    )
    yield obs  # type: ignore[misc]
    obs.close()


async def _call(app: FastAPI, method: str, path: str, **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.request(method, path, **kw)


async def test_request_is_timed_counted_logged_and_billed(
    observer: GatewayObserver, registry: CollectorRegistry, tmp_path: Path
) -> None:
    r = await _call(_app(observer), "POST", "/v1/chat/completions", headers={"x-request-id": "r1"})
    assert r.status_code == 200
    timing = dict(p.strip().split(";dur=") for p in r.headers["server-timing"].split(","))
    assert set(timing) == {"auth", "generate"} and float(timing["generate"]) >= 20
    route = {"route": "/v1/chat/completions", "model": "m1"}
    assert _sample(registry, "llmops_requests_total", **route, status="200") == 1
    assert _sample(registry, "llmops_stage_duration_seconds_count", **route, stage="generate") == 1
    assert _sample(registry, "llmops_prompt_tokens_total", model="m1", tenant="acme") == 10
    assert _sample(registry, "llmops_cost_usd_total", model="m1", tenant="acme") == 0.25
    assert _sample(registry, "llmops_requests_in_flight", route="/v1/chat/completions") == 0
    assert observer.usage.rows == [("acme", "m1", 10, 5, 0.25)]
    observer.close()
    [line] = (tmp_path / "requests.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["request_id"] == "r1" and rec["status"] == 200 and rec["tenant"] == "acme"
    assert rec["stages_ms"]["generate"] >= 20 and rec["cost_usd"] == 0.25
    assert "prompt" not in rec and rec["trace_id"] is None  # tracing off, no traceparent sent


async def test_route_label_is_the_template_never_the_path(
    observer: GatewayObserver, registry: CollectorRegistry
) -> None:
    r = await _call(_app(observer), "GET", "/v1/collections/docs/documents/secret-doc-id")
    assert r.text == "ab"
    labels = {"route": "/v1/collections/{name}/documents/{doc_id:path}", "model": "none", "status": "200"}
    assert _sample(registry, "llmops_requests_total", **labels) == 1
    await _call(_app(observer), "GET", "/no/such/thing")
    assert _sample(registry, "llmops_requests_total", route="unmatched", model="none", status="404") == 1
    assert observer.usage.rows == []  # no model route: nothing billed


async def test_incoming_traceparent_is_echoed_as_trace_id(observer: GatewayObserver) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = await _call(
        _app(observer),
        "POST",
        "/v1/chat/completions",
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert r.headers["x-trace-id"] == trace_id


def test_route_labels_of_the_gateway_app() -> None:
    from services.gateway.app import api

    labels = RouteLabels(api)
    assert labels("/v1/chat/completions") == "/v1/chat/completions"
    assert labels("/v1/collections/docs/documents/a/b") == "/v1/collections/{name}/documents/{doc_id:path}"
    assert labels("/v1/usage") == "/v1/usage"
    assert labels("/etc/passwd") == "unmatched"


def test_rag_timings_move_out_of_generate() -> None:
    obs = RequestObservation(request_id="r", route="/v1/chat/completions", span=INVALID_SPAN)
    obs.timer.record("generate", 0.5)
    obs.absorb(StageTimings({"embed": 0.1, "retrieve": 0.15}))
    assert obs.timer.durations == pytest.approx({"generate": 0.25, "embed": 0.1, "retrieve": 0.15})
    obs.absorb(GenerationStats(0.0, obs.started_wall + 0.05, 0.3, 10, 4, cost_usd=0.002))
    obs.absorb(GenerationStats(0.0, None, 0.3, 10, 4, cost_usd=0.003))
    assert obs.cost_usd == pytest.approx(0.005)
    assert 0 <= obs.ttft_s <= obs.elapsed()  # type: ignore[operator]


def test_prompts_are_logged_only_when_configured_and_then_redacted(registry: CollectorRegistry) -> None:
    obs = RequestObservation(request_id="r", route="/v1/chat/completions", span=INVALID_SPAN)
    obs.prompt_text = "mail me at jane.doe@example.com or call +1 415 555 0132"
    quiet = GatewayObserver(MonitoringConfig(), None)
    assert "prompt" not in quiet.record(obs, 200, 0.1)
    loud = GatewayObserver(
        MonitoringConfig(request_log={"include_prompts": True, "max_text_chars": 40}), None
    )
    rec = loud.record(obs, 200, 0.1)
    assert "jane" not in rec["prompt"] and "[EMAIL]" in rec["prompt"]
    assert len(rec["prompt"]) <= 40 and rec["completion"] is None


def test_a_broken_recorder_never_fails_the_request(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def add(self, *row: Any) -> None:
            raise ValueError("boom")

    observer = GatewayObserver(MonitoringConfig(), None, None, Broken())
    obs = RequestObservation(request_id="r9", route="/v1/chat/completions", span=INVALID_SPAN, status=200)
    obs.model = "m"
    observer.finish(obs)
    assert "r9" in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to a.b@example.org today", "write to [EMAIL] today"),
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("order 1234 5678 9012 3456", "order 1234 5678 9012 3456"),  # fails the Luhn check: kept
        ("ssn 123-45-6789", "ssn [SSN]"),
        ("from 10.1.2.3", "from [IP]"),
        ("key sk-abcdefghijklmnopqrstuv and Bearer abc.def.ghi123", "key [SECRET] and [SECRET]"),
        ("nothing personal here", "nothing personal here"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_monitoring_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="ttft_threshold_seconds"):
        MonitoringConfig(slo={"ttft_threshold_seconds": 1.7})
    with pytest.raises(ValidationError, match="both 9090"):
        MonitoringConfig(metrics={"export_port": 9090})
    with pytest.raises(ValidationError, match="otlp_endpoint"):
        MonitoringConfig(tracing={"otlp_endpoint": "collector:4318"})
