"""Every PromQL expression in the dashboards and alert rules, against a real Prometheus.

Debian's ``prometheus`` (``make test`` installs it) scrapes the running platform's
Ray metrics endpoint on 127.0.0.1, with the alert rules loaded; after traffic, each
dashboard query (variables set to match everything) and each rule expression is
evaluated through the HTTP API. A query that errors or returns no series fails:
on-call engineers must never open an empty panel. Alert expressions are checked
operand by operand (the sides of ``>``/``and``/``or``, the inside of ``absent``),
since a healthy platform rightly fires no alert.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from llmops.local_prometheus import LocalPrometheus
from monitoring.promql import Query, dashboard_queries, operands, rule_queries, substitute
from tests.fixtures.prometheus_tools import require
from tests.integration.conftest import ADMIN_KEY, KEYS, TINY, Platform

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "monitoring" / "dashboards"
ALERTS = ROOT / "monitoring" / "alerts"
# Series only a vLLM engine produces; this suite runs no vLLM (no GPU). tests/gpu
# covers the engine's stats; these panels stay visible and say "vLLM only".
VLLM_ONLY = ("ray_llmops_engine_kv_cache_usage_ratio",)


@pytest.fixture(scope="module")
def prometheus(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> LocalPrometheus:
    require("prometheus", "evaluate every dashboard and rule query against real data")
    prom = LocalPrometheus(platform.config.monitoring, tmp_path_factory.mktemp("prom"))
    prom.start()
    yield prom  # type: ignore[misc]
    prom.stop()


def _traffic(platform: Platform) -> None:
    """A bit of everything the panels look at: chat (unary and streamed), a small LM,
    RAG, embeddings, retrieval, a client error."""
    # tenant "ops" writes and reads its own document: other tests' tenants never see it
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    httpx.post(
        f"{platform.url}/v1/collections/docs/documents",
        json={"documents": [{"id": "prom-1", "text": "The Normans were led by Rollo."}]},
        headers=auth,
        timeout=120,
    ).raise_for_status()
    client = platform.client(ADMIN_KEY)
    msgs = [{"role": "user", "content": "Who led the Normans?"}]
    for model in ("extractive", "rag-docs"):
        client.chat.completions.create(model=model, messages=msgs)  # type: ignore[arg-type]
        for _ in client.chat.completions.create(model=model, messages=msgs, stream=True):  # type: ignore[arg-type]
            pass
    client.chat.completions.create(model=TINY, messages=msgs, max_tokens=8)  # type: ignore[arg-type]
    platform.client(KEYS["globex"]).embeddings.create(model="all-minilm-l6-v2", input=["one", "two"])
    httpx.post(
        f"{platform.url}/v1/retrieve",
        json={"collection": "docs", "query": "Normans"},
        headers=auth,
        timeout=60,
    ).raise_for_status()
    httpx.post(f"{platform.url}/v1/chat/completions", json={"model": "nope"}, timeout=60)


def _wait_for(prom: LocalPrometheus, expr: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not prom.query(expr):
        if time.monotonic() > deadline:
            pytest.fail(f"no series for {expr} after {timeout_s:.0f}s: is Prometheus scraping {prom.target}?")
        time.sleep(1)


def _checks(queries: list[Query]) -> list[tuple[Query, str]]:
    out = []
    for q in queries:
        expr = substitute(q.expr)
        for part in operands(expr) if q.kind == "alert" else [expr]:
            out.append((q, part))
    return out


def test_every_dashboard_and_rule_query_returns_series(
    platform: Platform, prometheus: LocalPrometheus
) -> None:
    _traffic(platform)
    _wait_for(prometheus, f'up{{job="{platform.config.monitoring.metrics.job}"}} == 1')
    _wait_for(prometheus, "ray_llmops_cost_usd_total")
    _wait_for(prometheus, "ray_llmops_retrieval_top_score_bucket")
    time.sleep(3)  # two more scrapes, so every rate() window holds two samples
    _traffic(platform)
    rules = rule_queries(sorted(ALERTS.glob("*.yaml")))  # not tests/ (promtool unit tests)
    for q in rules:
        if q.kind == "record":  # the alert expressions read these
            _wait_for(prometheus, q.title)
    time.sleep(3)

    queries = dashboard_queries([DASHBOARDS]) + rules
    assert len(queries) > 40, "fewer queries than the dashboards and rules hold: extraction broke?"
    # Ray's agent evicts a gauge whose emitter has not re-reported within its TTL; a busy
    # Serve controller can miss that, one scrape lacks the series and Prometheus marks it
    # stale until the next. So a query without series is asked again for a while: what
    # fails is a series that never comes back, not one that blinked.
    pending = [(q, expr) for q, expr in _checks(queries) if not any(n in expr for n in VLLM_ONLY)]
    failures: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while pending:
        again = []
        for q, expr in pending:
            try:
                result = prometheus.query(expr)
            except RuntimeError as exc:
                failures[expr] = f"{q.source} / {q.title}: ERROR {exc}\n    {expr}"
                continue
            if result:
                failures.pop(expr, None)
            else:
                failures[expr] = f"{q.source} / {q.title}: no series\n    {expr}"
                again.append((q, expr))
        if not again or time.monotonic() > deadline:
            break
        pending = again
        time.sleep(2)
    assert not failures, f"{len(failures)} queries failed:\n" + "\n".join(failures.values())
