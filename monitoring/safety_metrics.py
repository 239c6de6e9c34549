"""The metrics of the safety and bias suites (``llmops safety run``), pushed to a Pushgateway.

A safety run is a batch job: after its reports are written, its results are PUT to the
Pushgateway as gauges, one group per model version (grouping key ``model``, ``version``
under job ``llmops-safety``): re-running a version replaces its numbers, other versions
keep theirs, so a dashboard can put versions side by side. The series carry ``model``
and ``version`` from the grouping key (scraped with ``honor_labels: true``) and no
``ray_`` prefix.

Labels: ``check`` is the suite (``bbq``, ``crows_pairs``, ``bold``, ``xstest``,
``advbench``, ``decodingtrust``); ``metric`` the suite's metric (``bias_amb``,
``refusal_safe``, ``sentiment_gap`` ...); ``kind`` the breakdown group (a BBQ category, a
CrowS bias type, a BOLD ``domain/group``; ``all`` for the suite as a whole). All three come
from the shipped datasets' fixed vocabularies, never from model output. A metric that
could not be measured (NaN) has no ``llmops_safety_score`` series, only its unmeasured
count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from monitoring.metrics import MetricDef

__all__ = ["SAFETY_DEFINITIONS", "SAFETY_JOB", "push_safety", "safety_registry"]

SAFETY_JOB = "llmops-safety"
_SCORE_LABELS = ("check", "metric", "kind")

SAFETY_SCORE = MetricDef(
    "llmops_safety_score", "gauge",
    "Last safety run's value of a suite metric (a mean of per-item scores, or a derived gap), by "
    "suite (check), metric and breakdown group (kind; 'all' for the whole suite).",
    _SCORE_LABELS,
)  # fmt: skip
SAFETY_CI_LOW = MetricDef(
    "llmops_safety_score_ci_low", "gauge", "Lower end of the score's 95 % bootstrap CI.", _SCORE_LABELS,
)  # fmt: skip
SAFETY_CI_HIGH = MetricDef(
    "llmops_safety_score_ci_high", "gauge", "Upper end of the score's 95 % bootstrap CI.", _SCORE_LABELS,
)  # fmt: skip
SAFETY_ITEMS = MetricDef(
    "llmops_safety_items", "gauge",
    "Items behind a suite metric in the last run, by outcome: measured, or unmeasured (failed "
    "request, unparsable answer, no classifier); unmeasured items are never averaged in.",
    ("check", "metric", "outcome"),
)  # fmt: skip
SAFETY_GATE = MetricDef(
    "llmops_safety_gate_passed", "gauge",
    "1 when the metric passed the gate (thresholds, and no significant regression against the "
    "baseline), else 0.",
    ("check", "metric"),
)  # fmt: skip
SAFETY_LAST_RUN = MetricDef(
    "llmops_safety_last_run_timestamp_seconds", "gauge", "Unix time this model version's safety run finished.",
    (),
)  # fmt: skip

SAFETY_DEFINITIONS: tuple[MetricDef, ...] = (
    SAFETY_SCORE, SAFETY_CI_LOW, SAFETY_CI_HIGH, SAFETY_ITEMS, SAFETY_GATE, SAFETY_LAST_RUN,
)  # fmt: skip


def _split(key: str) -> tuple[str, str]:
    check, _, metric = key.partition(".")
    return check, metric or check


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(float(v))


def safety_registry(report: Mapping[str, Any], gate_result: Mapping[str, Any], finished_at: float) -> Any:
    """A prometheus_client registry holding one safety report's results as gauges.

    Reads ``report["metrics"]`` (keys ``<suite>.<metric>``), ``report["breakdowns"]``
    (``{suite: {"groups": {group: {key: summary}}}}``) and the gate's per-metric verdicts.
    """
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    g = {d.name: Gauge(d.name, d.description, list(d.labels), registry=registry) for d in SAFETY_DEFINITIONS}

    def score(check: str, metric: str, kind: str, summary: Mapping[str, Any]) -> None:
        if _finite(summary.get("mean")):
            g["llmops_safety_score"].labels(check, metric, kind).set(float(summary["mean"]))
        for bound, name in (
            ("ci_low", "llmops_safety_score_ci_low"),
            ("ci_high", "llmops_safety_score_ci_high"),
        ):
            if _finite(summary.get(bound)):
                g[name].labels(check, metric, kind).set(float(summary[bound]))

    for key, m in report.get("metrics", {}).items():
        check, metric = _split(key)
        score(check, metric, "all", m)
        g["llmops_safety_items"].labels(check, metric, "measured").set(m.get("measured") or 0)
        g["llmops_safety_items"].labels(check, metric, "unmeasured").set(m.get("unmeasured") or 0)
    for suite, b in report.get("breakdowns", {}).items():
        for group, per in b.get("groups", {}).items():
            for key, summary in per.items():
                check, metric = _split(key)
                score(check or suite, metric, group, summary)
    for key, res in gate_result.get("metrics", {}).items():
        check, metric = _split(key)
        g["llmops_safety_gate_passed"].labels(check, metric).set(1.0 if res.get("passed") else 0.0)
    g["llmops_safety_last_run_timestamp_seconds"].set(finished_at)
    return registry


def push_safety(
    report: Mapping[str, Any],
    gate_result: Mapping[str, Any],
    gateway: str,
    *,
    job: str = SAFETY_JOB,
    finished_at: float,
    timeout_s: float = 10.0,
) -> None:
    """Replace this model version's group on the Pushgateway (HTTP PUT: idempotent).

    Raises:
        OSError: the Pushgateway is unreachable or refused the push.
    """
    from prometheus_client import push_to_gateway

    grouping = {"model": str(report.get("model")), "version": str(report.get("model_version") or "unknown")}
    push_to_gateway(
        gateway,
        job=job,
        registry=safety_registry(report, gate_result, finished_at),
        grouping_key=grouping,
        timeout=timeout_s,
    )
