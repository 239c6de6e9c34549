"""Every PromQL expression in the dashboards and alert rules, against a real Prometheus.

Debian's ``prometheus`` (``make test`` installs it) scrapes the running platform's
Ray metrics endpoint on 127.0.0.1, with the alert rules loaded, and a real Pushgateway
(Debian's ``prometheus-pushgateway``) with ``honor_labels``, wired the way ``llmops up
--with-prometheus`` wires them (:mod:`llmops.local_prometheus`). After traffic and two
pushes of a continuous-evaluation state (``monitoring.eval_metrics.push_state``, a few
seconds apart so ``rate()``/``increase()`` have data), each dashboard query (variables
set to match everything) and each rule expression is evaluated through the HTTP API. A
query that errors or returns no series fails: on-call engineers must never open an empty
panel. Alert expressions are checked operand by operand (the sides of
``>``/``and``/``or``, the inside of ``absent``), since a healthy platform rightly fires
no alert.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from llmops.local_prometheus import PUSHGATEWAY_JOB, LocalPrometheus, LocalPushgateway
from llmops.run_record import free_port
from monitoring.eval_metrics import EvalState, push_state
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
def pushgateway(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPushgateway]:
    require(platform.config.monitoring.pushgateway.binary, "receive the continuous-eval metrics")
    pgw = LocalPushgateway(platform.config.monitoring, tmp_path_factory.mktemp("pgw"), port=free_port())
    pgw.start()
    yield pgw
    pgw.stop()


@pytest.fixture(scope="module")
def prometheus(
    platform: Platform, pushgateway: LocalPushgateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPrometheus]:
    require("prometheus", "evaluate every dashboard and rule query against real data")
    prom = LocalPrometheus(
        platform.config.monitoring, tmp_path_factory.mktemp("prom"), pushgateway=pushgateway.address
    )
    prom.start()
    yield prom
    prom.stop()


# --- a continuous-evaluation state, as pipelines/continuous_eval pushes it -----------------

EVAL_GROUPS = [("extractive", "acme"), ("extractive", "globex"), ("rag-docs", "acme")]
SCORED_PER_GROUP = 12  # per push


def _add_one_run(state: EvalState) -> None:
    """One run's worth of everything continuous evaluation records. The same every time
    (fixed seed), so after n runs every counter is n times the first run's value."""
    rng = random.Random(7)
    for model, tenant in EVAL_GROUPS:
        group = {"model": model, "version": "v1", "tenant": tenant}
        state.inc("llmops_eval_samples_total", group, SCORED_PER_GROUP)
        metrics = ["answer_relevance", "refusal", "length", "judge_relevance"]
        metrics += ["context_support"] if model.startswith("rag") else []
        for metric in metrics:
            labels = {"metric": metric, **group}
            for _ in range(SCORED_PER_GROUP):
                state.observe("llmops_eval_score", labels, rng.random())
            if metric in ("answer_relevance", "judge_relevance"):  # no answer / judge budget spent
                state.inc("llmops_eval_unmeasured_total", labels, 2)
        state.inc("llmops_eval_judge_tokens_total", {"model": "extractive", "tenant": tenant}, 1500)
    scored = SCORED_PER_GROUP * len(EVAL_GROUPS)
    for outcome, n in (("scored", scored), ("skipped", 20), ("quarantined", 3)):
        state.inc("llmops_eval_records_total", {"outcome": outcome}, n)
    # gauges: the latest run's values
    state.set("llmops_eval_judge_budget_remaining_tokens", {"kind": "run", "tenant": "all"}, 95_500)
    state.set("llmops_eval_judge_budget_remaining_tokens", {"kind": "tenant", "tenant": "acme"}, 0)
    state.set("llmops_eval_last_run_timestamp_seconds", {}, time.time())
    for i, (model, tenant) in enumerate(EVAL_GROUPS):
        labels = {"model": model, "tenant": tenant}
        for name, value in (
            ("llmops_eval_drift_mmd2", 0.02 + 0.1 * i),
            ("llmops_eval_drift_p_value", 0.4 if i == 0 else 0.001),
            ("llmops_eval_drift_domain_auc", 0.52 + 0.1 * i),
            ("llmops_eval_drift_centroid_cosine", 0.99 - 0.05 * i),
            ("llmops_eval_drift_detected", 0.0 if i == 0 else 1.0),
        ):
            state.set(name, labels, value)
        for scalar in ("prompt_tokens", "completion_tokens", "latency_ms", "answer_relevance"):
            state.set("llmops_eval_drift_psi", {"metric": scalar, **labels}, 0.05 * (i + 1))
        for kind, n in (("reference", 700), ("current", 150)):
            state.set("llmops_eval_drift_samples", {"kind": kind, **labels}, n)


def _bad_share(state: EvalState, model: str, metric: str = "answer_relevance", le: int = 2) -> float:
    """Share of ``model``'s ``metric`` scores at or below bucket ``le`` (index; 2 = 0.3)."""
    hists = [
        h
        for key, h in state.histograms["llmops_eval_score"].items()
        if f"model={model}" in key.split("\x1f") and f"metric={metric}" in key.split("\x1f")
    ]
    return sum(h["buckets"][le] for h in hists) / sum(h["count"] for h in hists)


def _push_runs(pgw: LocalPushgateway, prom: LocalPrometheus, job: str) -> EvalState:
    """Two runs pushed a few seconds apart (PUT, as the job does); returns the first run's
    state. Waits until Prometheus has scraped each push, so every window holds both."""
    state = EvalState()
    _add_one_run(state)
    first = EvalState(state.to_json())
    push_state(state, pgw.url, job)
    _wait_for(prom, f'sum(llmops_eval_samples_total{{job="{job}"}}) == {SCORED_PER_GROUP * len(EVAL_GROUPS)}')
    time.sleep(2)  # more scrapes of the first push
    _add_one_run(state)
    push_state(state, pgw.url, job)
    _wait_for(
        prom, f'sum(llmops_eval_samples_total{{job="{job}"}}) == {2 * SCORED_PER_GROUP * len(EVAL_GROUPS)}'
    )
    return first


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
    platform: Platform, prometheus: LocalPrometheus, pushgateway: LocalPushgateway
) -> None:
    job = platform.config.monitoring.pushgateway.job
    _traffic(platform)
    _wait_for(prometheus, f'up{{job="{platform.config.monitoring.metrics.job}"}} == 1')
    _wait_for(prometheus, f'up{{job="{PUSHGATEWAY_JOB}"}} == 1')
    _wait_for(prometheus, "ray_llmops_cost_usd_total")
    _wait_for(prometheus, "ray_llmops_retrieval_top_score_bucket")
    first_run = _push_runs(pushgateway, prometheus, job)
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
    assert any("llmops_eval_" in q.expr for q in queries if q.kind == "panel")
    assert any("llmops_eval_" in q.expr for q in queries if q.kind == "alert")

    # honor_labels: the pushed series keep the job's own label, not the scrape job's
    assert prometheus.query(f'llmops_eval_last_run_timestamp_seconds{{job="{job}"}}')
    assert not prometheus.query(f'llmops_eval_last_run_timestamp_seconds{{job="{PUSHGATEWAY_JOB}"}}')
    # the quality SLI reads the threshold bucket as the Pushgateway exposes it: the second
    # push doubled every counter, so the ratio over any window is the first run's share
    for model in ("extractive", "rag-docs"):
        [sample] = prometheus.query(f'llmops:slo_quality_errors:ratio_rate30m{{model="{model}"}}')
        assert float(sample["value"][1]) == pytest.approx(_bad_share(first_run, model), rel=1e-6)
        assert 0 < _bad_share(first_run, model) < 1


def test_pushgateway_dies_with_its_parent(tmp_path: Path) -> None:
    """Like Prometheus: a SIGKILLed `llmops up` leaves no Pushgateway behind."""
    require("prometheus-pushgateway", "receive the continuous-eval metrics")
    port = free_port()
    code = (
        "import sys, time\n"
        "from llmops.local_prometheus import LocalPushgateway\n"
        "from monitoring.config import MonitoringConfig\n"
        f"pgw = LocalPushgateway(MonitoringConfig(), {str(tmp_path)!r}, port={port})\n"
        "pgw.start()\n"
        "print(pgw._proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child: psutil.Process | None = None
    try:
        child = psutil.Process(int(parent.stdout.readline()))  # type: ignore[union-attr]
        assert "pushgateway" in child.name()
        assert httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=5).status_code == 200
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        try:
            child.wait(timeout=15)
        except psutil.TimeoutExpired:
            pytest.fail(f"the Pushgateway (pid {child.pid}) outlived its SIGKILLed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None and child.is_running():  # a failed test leaves nothing behind
            child.kill()
