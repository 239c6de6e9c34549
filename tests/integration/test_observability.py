"""Observability of the running platform: Server-Timing, request log, traces, usage, metrics."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest

from monitoring.metrics import STAGES
from tests.integration.conftest import ADMIN_KEY, KEYS, TINY, Platform

pytestmark = pytest.mark.integration
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _headers(key: str = KEYS["acme"]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def server_timing(value: str) -> dict[str, float]:
    """``auth;dur=0.1, generate;dur=12.0`` -> {stage: ms}."""
    out = {}
    for part in value.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def _chat(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


QUESTION = "Cats purr. Dogs bark loudly at strangers. Fish swim.\n\nWhat do dogs do?"


def test_unary_response_carries_server_timing_and_trace_id(platform: Platform) -> None:
    with httpx.Client(base_url=platform.url, headers=_headers(), timeout=60) as http:
        http.post("/v1/chat/completions", json=_chat("extractive", QUESTION))  # warm
        start = time.perf_counter()
        r = http.post("/v1/chat/completions", json=_chat("extractive", QUESTION))
        measured_ms = (time.perf_counter() - start) * 1000
    assert r.status_code == 200, r.text
    stages = server_timing(r.headers["server-timing"])
    assert {"auth", "guardrails", "generate", "serialize"} <= set(stages) <= set(STAGES)
    assert stages["generate"] > 0
    # the gateway's stages cover its whole handling; the rest is the ingress and the socket
    assert sum(stages.values()) <= measured_ms
    assert sum(stages.values()) >= 0.5 * measured_ms, (stages, measured_ms)
    assert HEX32.match(r.headers["x-trace-id"])


def test_streamed_timings_add_up_to_measured_latency(platform: Platform) -> None:
    """The header covers the stages up to the first token (it leaves with it); the
    final ``: server-timing`` comment covers the whole stream."""
    body = _chat(TINY, "Tell me a story", stream=True, max_tokens=24, temperature=0)
    with httpx.Client(base_url=platform.url, headers=_headers(), timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as warm:
            warm.read()
        start = time.perf_counter()
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            headers_ms = (time.perf_counter() - start) * 1000
            lines = [line for line in r.iter_lines() if line]
        total_ms = (time.perf_counter() - start) * 1000
    assert r.status_code == 200
    head = server_timing(r.headers["server-timing"])
    assert {"auth", "guardrails", "generate"} <= set(head)
    assert sum(head.values()) <= headers_ms
    comment = [line for line in lines if line.startswith(": server-timing ")]
    assert len(comment) == 1 and lines[-1] == "data: [DONE]"
    full = server_timing(comment[0].removeprefix(": server-timing "))
    assert full["generate"] > head["generate"]  # tokens kept coming after the headers
    assert abs(sum(full.values()) - total_ms) <= 0.10 * total_ms, (full, total_ms)


def test_rag_request_is_one_trace_across_deployments(platform: Platform) -> None:
    # tenant "ops": its document must not show up in other tests' (acme's) retrievals
    with httpx.Client(base_url=platform.url, headers=_headers(ADMIN_KEY), timeout=60) as http:
        http.post(
            "/v1/collections/docs/documents",
            json={"documents": [{"id": "obs-1", "text": "The Normans were led by Rollo in Normandy."}]},
        ).raise_for_status()
        r = http.post("/v1/chat/completions", json=_chat("rag-docs", "Who led the Normans?"))
    assert r.status_code == 200, r.text
    stages = server_timing(r.headers["server-timing"])
    assert stages["embed"] > 0 and stages["retrieve"] > 0 and stages["generate"] > 0
    trace_id = r.headers["x-trace-id"]
    wanted = {"gateway /v1/chat/completions", "rag", "retrieve", "embed", "generate"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not wanted <= {s.name for s in platform.spans.trace(trace_id)}:
        time.sleep(0.2)
    spans = {s.name: s for s in platform.spans.trace(trace_id)}
    assert wanted <= set(spans), sorted(spans)
    # parent links: gateway -> rag -> (retrieve -> embed, generate)
    assert spans["rag"].parent_id == spans["gateway /v1/chat/completions"].span_id
    assert spans["retrieve"].parent_id == spans["rag"].span_id
    assert spans["embed"].parent_id == spans["retrieve"].span_id
    assert spans["generate"].parent_id == spans["rag"].span_id
    assert spans["generate"].attributes["llmops.model"] == "extractive"


def test_incoming_traceparent_is_continued(platform: Platform) -> None:
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {**_headers(), "traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01"}
    r = httpx.post(
        f"{platform.url}/v1/chat/completions", json=_chat("extractive", QUESTION), headers=headers, timeout=60
    )
    assert r.headers["x-trace-id"] == parent_trace


def _log_lines(platform: Platform, request_id: str, timeout_s: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [
            rec
            for rec in map(json.loads, platform.request_log.read_text().splitlines())
            if rec["request_id"] == request_id
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_request_log_line_has_ids_and_timings_but_no_key_or_prompt(platform: Platform) -> None:
    secret_prompt = "my-private-question-7731 What do dogs do?"
    r = httpx.post(
        f"{platform.url}/v1/chat/completions",
        json=_chat("extractive", "Dogs bark. " + secret_prompt),
        headers={**_headers(), "X-Request-ID": "obs-log-1"},
        timeout=60,
    )
    assert r.status_code == 200
    [rec] = _log_lines(platform, "obs-log-1")
    assert rec["tenant"] == "acme" and rec["model"] == "extractive" and rec["status"] == 200
    assert rec["route"] == "/v1/chat/completions" and rec["trace_id"] == r.headers["x-trace-id"]
    assert set(rec["stages_ms"]) >= {"auth", "guardrails", "generate", "serialize"}
    usage = r.json()["usage"]
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    # token pricing: 0.5 $/1k prompt + 1.5 $/1k completion
    expected = usage["prompt_tokens"] * 0.5 / 1000 + usage["completion_tokens"] * 1.5 / 1000
    assert rec["cost_usd"] == pytest.approx(expected)
    text = platform.request_log.read_text()
    assert "7731" not in text and KEYS["acme"] not in text and "prompt" not in rec


def test_failed_requests_are_logged_with_status(platform: Platform) -> None:
    r = httpx.post(
        f"{platform.url}/v1/chat/completions",
        json=_chat("no-such-model", "hi"),
        headers={**_headers(), "X-Request-ID": "obs-log-404"},
        timeout=60,
    )
    assert r.status_code == 404
    [rec] = _log_lines(platform, "obs-log-404")
    assert rec["status"] == 404 and rec["model"] == "none"  # never the client's free text
    r = httpx.post(
        f"{platform.url}/v1/chat/completions",
        json=_chat("extractive", "hi"),
        headers={"Authorization": "Bearer wrong", "X-Request-ID": "obs-log-401"},
        timeout=60,
    )
    assert r.status_code == 401
    [rec] = _log_lines(platform, "obs-log-401")
    assert rec["status"] == 401 and rec["tenant"] is None and "wrong" not in json.dumps(rec)


def _usage(platform: Platform, key: str, **params: str) -> httpx.Response:
    return httpx.get(f"{platform.url}/v1/usage", params=params, headers=_headers(key), timeout=30)


def _usage_rows(platform: Platform, key: str, since: float) -> dict[str, dict[str, Any]]:
    body = _usage(platform, key, since=str(since)).json()
    return {row["model"]: row for row in body["data"]}


def _delta(after: dict[str, Any], before: dict[str, Any] | None, field: str) -> float:
    return float(after[field]) - float((before or {}).get(field, 0))


def test_usage_summarises_tokens_and_cost_per_tenant(platform: Platform) -> None:
    # minute granularity: compare before/after instead of assuming an empty minute
    since = time.time() - 120
    before = _usage_rows(platform, KEYS["globex"], since)
    client = platform.client(KEYS["globex"])
    a = client.chat.completions.create(model="extractive", messages=[{"role": "user", "content": QUESTION}])
    b = client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
    )
    assert a.usage and b.usage
    body = _usage(platform, KEYS["globex"], since=str(since)).json()
    assert body["tenant"] == "globex" and {row["tenant"] for row in body["data"]} == {"globex"}
    after = {row["model"]: row for row in body["data"]}
    ext, tiny = after["extractive"], after[TINY]
    assert _delta(ext, before.get("extractive"), "requests") == 1
    assert _delta(ext, before.get("extractive"), "prompt_tokens") == a.usage.prompt_tokens
    assert _delta(tiny, before.get(TINY), "completion_tokens") == b.usage.completion_tokens
    assert _delta(ext, before.get("extractive"), "cost_usd") == pytest.approx(
        a.usage.prompt_tokens * 0.5 / 1000 + a.usage.completion_tokens * 1.5 / 1000
    )
    # GPU-hour pricing (3.6 $/h = 0.001 $/s of busy time): a self-hosted model is never $0
    assert 0 < _delta(tiny, before.get(TINY), "cost_usd") < 0.001 * 60


def test_usage_is_tenant_isolated(platform: Platform) -> None:
    r = _usage(platform, KEYS["globex"], tenant="acme")
    assert r.status_code == 403 and r.json()["error"]["param"] == "tenant"
    r = _usage(platform, ADMIN_KEY, tenant="acme", since="2020-01-01T00:00:00Z")
    assert r.status_code == 200 and {row["tenant"] for row in r.json()["data"]} == {"acme"}
    assert r.json()["total"]["requests"] > 0
    everyone = _usage(platform, ADMIN_KEY, tenant="*", since="2020-01-01T00:00:00Z").json()
    assert {"acme", "globex"} <= {row["tenant"] for row in everyone["data"]}


def test_usage_rejects_bad_since(platform: Platform) -> None:
    r = _usage(platform, KEYS["acme"], since="yesterday")
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"
    r = _usage(platform, KEYS["acme"], since="2026-01-01T00:00:00")
    assert r.status_code == 400 and "time zone" in r.json()["error"]["message"]


def _scrape(platform: Platform) -> dict[str, float]:
    """Sum of each llmops sample name over all label sets, from Ray's metrics endpoint."""
    totals: dict[str, float] = {}
    for line in httpx.get(platform.metrics_url, timeout=10).text.splitlines():
        if line.startswith("ray_llmops_"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def test_scrape_url_shows_llmops_families(platform: Platform) -> None:
    client = platform.client()
    client.chat.completions.create(
        model="rag-docs", messages=[{"role": "user", "content": "Who led the Normans?"}]
    )
    client.embeddings.create(model="all-minilm-l6-v2", input=["a", "b"])
    wanted = {
        "ray_llmops_requests_total",
        "ray_llmops_request_duration_seconds_count",
        "ray_llmops_time_to_first_token_seconds_count",
        "ray_llmops_inter_token_latency_seconds_count",
        "ray_llmops_queue_time_seconds_count",
        "ray_llmops_stage_duration_seconds_count",
        "ray_llmops_prompt_tokens_total",
        "ray_llmops_completion_tokens_total",
        "ray_llmops_cost_usd_total",
        "ray_llmops_embedding_batch_size_texts_count",
        "ray_llmops_retrieval_results_chunks_count",
        "ray_llmops_retrieval_top_score_count",
        "ray_llmops_build_info",
    }
    deadline = time.monotonic() + 60
    while True:
        totals = _scrape(platform)
        missing = {n for n in wanted if totals.get(n, 0) <= 0}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"no non-zero samples for {sorted(missing)}"
    assert "ray_llmops_requests_in_flight" in totals and "ray_llmops_engine_requests_running" in totals
