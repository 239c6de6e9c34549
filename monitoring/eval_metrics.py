"""The metrics of continuous evaluation, pushed to a Prometheus Pushgateway.

Batch jobs are not scraped while they run, so ``pipelines.continuous_eval`` keeps
its cumulative totals in its checkpoint and, after each committed batch, pushes
the whole state with ``PUT`` (``push_to_gateway``): pushing the same state twice
changes nothing, so a crashed and re-run job never counts a record twice. The
Pushgateway is scraped with ``honor_labels: true``; the series carry
``job=<pushgateway job>`` (default ``llmops-continuous-eval``) and no ``ray_``
prefix.

Names follow monitoring/metrics.py (``llmops_<what>_<unit>``, labels from
``LABELS``); they are defined here because they never come from a Serve replica.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from monitoring.metrics import MetricDef

__all__ = [
    "EVAL_DEFINITIONS",
    "EVAL_SCORE_BUCKETS",
    "EvalState",
    "push_state",
    "registry_of",
]

#: scores of reference-free metrics are in [0, 1] (cosines below 0 land in the first bucket)
EVAL_SCORE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_GROUP = ("model", "version", "tenant")

EVAL_SCORE = MetricDef(
    "llmops_eval_score", "histogram",
    "Per-request quality scores of sampled live traffic (continuous evaluation), 0-1, by metric.",
    ("metric", *_GROUP), EVAL_SCORE_BUCKETS,
)  # fmt: skip
EVAL_SAMPLES = MetricDef(
    "llmops_eval_samples_total", "counter", "Requests scored by continuous evaluation.", _GROUP,
)  # fmt: skip
EVAL_UNMEASURED = MetricDef(
    "llmops_eval_unmeasured_total", "counter",
    "Scores that could not be computed (NaN: no answer, no context, judge budget spent); never "
    "averaged or counted as failed.",
    ("metric", *_GROUP),
)  # fmt: skip
EVAL_RECORDS = MetricDef(
    "llmops_eval_records_total", "counter",
    "Inference-table records read by continuous evaluation, by outcome: scored, skipped (not "
    "sampled), quarantined (failed validation).",
    ("outcome",),
)  # fmt: skip
EVAL_JUDGE_TOKENS = MetricDef(
    "llmops_eval_judge_tokens_total", "counter", "Tokens spent by the LLM judge, by judge model and tenant.",
    ("model", "tenant"),
)  # fmt: skip
EVAL_JUDGE_BUDGET = MetricDef(
    "llmops_eval_judge_budget_remaining_tokens", "gauge",
    "Judge tokens left in the last run's budget: kind=run (whole run) or kind=tenant (per tenant).",
    ("kind", "tenant"),
)  # fmt: skip
EVAL_LAST_RUN = MetricDef(
    "llmops_eval_last_run_timestamp_seconds", "gauge",
    "Unix time continuous evaluation last committed a batch (staleness alert).", (),
)  # fmt: skip
DRIFT_MMD2 = MetricDef(
    "llmops_eval_drift_mmd2", "gauge",
    "Prompt-embedding MMD² between the reference and the current window.", ("model", "tenant"),
)  # fmt: skip
DRIFT_P_VALUE = MetricDef(
    "llmops_eval_drift_p_value", "gauge", "Permutation p-value of the MMD² drift test.", ("model", "tenant"),
)  # fmt: skip
DRIFT_AUC = MetricDef(
    "llmops_eval_drift_domain_auc", "gauge",
    "Cross-validated AUC of a classifier telling the windows' prompts apart (0.5: alike).",
    ("model", "tenant"),
)  # fmt: skip
DRIFT_CENTROID = MetricDef(
    "llmops_eval_drift_centroid_cosine", "gauge",
    "Cosine between the windows' mean prompt embeddings (1: same centre).", ("model", "tenant"),
)  # fmt: skip
DRIFT_PSI = MetricDef(
    "llmops_eval_drift_psi", "gauge",
    "Population stability index of a scalar (metric=prompt_tokens, completion_tokens, latency_ms, "
    "a score) between the windows.",
    ("metric", "model", "tenant"),
)  # fmt: skip
DRIFT_DETECTED = MetricDef(
    "llmops_eval_drift_detected", "gauge",
    "1 when the MMD² test rejects 'same distribution', else 0; absent with too few samples.",
    ("model", "tenant"),
)  # fmt: skip
DRIFT_SAMPLES = MetricDef(
    "llmops_eval_drift_samples", "gauge",
    "Prompts in the drift windows: kind=reference or kind=current.", ("kind", "model", "tenant"),
)  # fmt: skip

EVAL_DEFINITIONS: tuple[MetricDef, ...] = (
    EVAL_SCORE, EVAL_SAMPLES, EVAL_UNMEASURED, EVAL_RECORDS, EVAL_JUDGE_TOKENS, EVAL_JUDGE_BUDGET,
    EVAL_LAST_RUN, DRIFT_MMD2, DRIFT_P_VALUE, DRIFT_AUC, DRIFT_CENTROID, DRIFT_PSI, DRIFT_DETECTED,
    DRIFT_SAMPLES,
)  # fmt: skip

_BY_NAME = {d.name: d for d in EVAL_DEFINITIONS}


def _key(labels: Mapping[str, str]) -> str:
    return "\x1f".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _labels(key: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in key.split("\x1f")) if key else {}


class EvalState:
    """Cumulative counters and histograms (and the latest gauges) as plain JSON.

    Lives in the continuous-eval checkpoint, so it is committed together with the
    record of which files were scored.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        data = data or {}
        self.counters: dict[str, dict[str, float]] = {k: dict(v) for k, v in data.get("counters", {}).items()}
        self.histograms: dict[str, dict[str, dict[str, Any]]] = {
            k: {
                lk: {"buckets": list(h["buckets"]), "sum": h["sum"], "count": h["count"]}
                for lk, h in v.items()
            }
            for k, v in data.get("histograms", {}).items()
        }
        self.gauges: dict[str, dict[str, float]] = {k: dict(v) for k, v in data.get("gauges", {}).items()}

    def to_json(self) -> dict[str, Any]:
        return {"counters": self.counters, "histograms": self.histograms, "gauges": self.gauges}

    def inc(self, name: str, labels: Mapping[str, str], value: float = 1.0) -> None:
        self._check(name, "counter", labels)
        if value < 0:
            raise ValueError(f"{name}: counters only go up, got {value}")
        series = self.counters.setdefault(name, {})
        key = _key(labels)
        series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None:
        d = self._check(name, "histogram", labels)
        if not math.isfinite(value):
            raise ValueError(f"{name}: observe() takes finite values (NaN is counted as unmeasured)")
        assert d.buckets is not None
        h = self.histograms.setdefault(name, {}).setdefault(
            _key(labels), {"buckets": [0] * len(d.buckets), "sum": 0.0, "count": 0}
        )
        for i, bound in enumerate(d.buckets):
            if value <= bound:
                h["buckets"][i] += 1
        h["sum"] += value
        h["count"] += 1

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self._check(name, "gauge", labels)
        self.gauges.setdefault(name, {})[_key(labels)] = float(value)

    def clear(self, name: str) -> None:
        """Drop every series of a gauge (e.g. drift results of groups no longer present)."""
        self.gauges.pop(name, None)

    def counter(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A counter's value for ``labels`` (None: summed over all series)."""
        series = self.counters.get(name, {})
        if labels is None:
            return sum(series.values())
        return series.get(_key(labels), 0.0)

    @staticmethod
    def _check(name: str, kind: str, labels: Mapping[str, str]) -> MetricDef:
        d = _BY_NAME.get(name)
        if d is None or d.kind != kind:
            raise KeyError(f"{name} is not a {kind} of EVAL_DEFINITIONS")
        if set(labels) != set(d.labels):
            raise ValueError(f"{name}: labels {sorted(labels)} differ from {sorted(d.labels)}")
        return d


def registry_of(state: EvalState) -> Any:
    """A prometheus_client registry exposing ``state`` exactly (cumulative values)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    class _Collector:
        def collect(self) -> Any:
            for d in EVAL_DEFINITIONS:
                names: Sequence[str] = d.labels
                if d.kind == "counter":
                    fam: Any = CounterMetricFamily(d.name.removesuffix("_total"), d.description, labels=names)
                    for key, value in state.counters.get(d.name, {}).items():
                        lab = _labels(key)
                        fam.add_metric([lab[n] for n in names], value)
                elif d.kind == "gauge":
                    fam = GaugeMetricFamily(d.name, d.description, labels=names)
                    for key, value in state.gauges.get(d.name, {}).items():
                        lab = _labels(key)
                        fam.add_metric([lab[n] for n in names], value)
                else:
                    assert d.buckets is not None
                    fam = HistogramMetricFamily(d.name, d.description, labels=names)
                    for key, h in state.histograms.get(d.name, {}).items():
                        lab = _labels(key)
                        buckets = [(_le(b), float(c)) for b, c in zip(d.buckets, h["buckets"], strict=True)]
                        buckets.append(("+Inf", float(h["count"])))
                        fam.add_metric([lab[n] for n in names], buckets, h["sum"])
                yield fam

    registry = CollectorRegistry()
    registry.register(_Collector())
    return registry


def _le(bound: float) -> str:
    return repr(float(bound))


def push_state(state: EvalState, gateway: str, job: str, timeout_s: float = 10.0) -> None:
    """Replace the job's group on the Pushgateway with ``state`` (HTTP PUT: idempotent)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(gateway, job=job, registry=registry_of(state), timeout=timeout_s)
