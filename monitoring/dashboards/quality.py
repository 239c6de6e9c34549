"""The *Quality* dashboard: continuous evaluation's scores, records, judge and drift.

Its series come from the Pushgateway (``monitoring/eval_metrics.py``): no ``ray_``
prefix, ``job="<monitoring.pushgateway.job>"``, one value change per push. The job
pushes every ``continuous_eval.interval_s`` (5 minutes by default), so rates and
quantiles use a fixed 30-minute window (6 pushes) instead of ``$__rate_interval``,
which follows the scrape interval: a window shorter than the push interval reads 0
between pushes and a spike at each. There is no mean-score panel: a cosine score may be
below 0, so a histogram's ``_sum`` can fall, which ``rate()`` would take for a reset.
The SLO panels use the default ``slo.quality`` (metric and threshold).
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models import common as common_m

from monitoring.config import QualitySloConfig
from monitoring.dashboards.kit import (
    MODEL,
    TENANT,
    bargauge_panel,
    dashboard,
    quantiles,
    rate,
    sel,
    stat_panel,
    timeseries_panel,
)
from monitoring.rules_kit import le_label, num

__all__ = ["WINDOW", "quality"]

#: 6 pushes at the default 5-minute interval (see the module docstring)
WINDOW = "[30m]"

_SCORE = "llmops_eval_score"
_PUSHED = "Continuous evaluation pushes every few minutes, so this is a 30-minute average."


def _gauge(agg: str, metric: str, by: str, *matchers: str) -> str:
    return f"{agg} by ({by}) ({sel(metric, *matchers)})"


def _scores_section(slo: QualitySloConfig) -> tuple[str, list[Any]]:
    groups = ("metric", "model")
    matchers = (MODEL, TENANT)
    at_threshold = (*matchers, f'le="{le_label(slo.threshold)}"')
    count = rate(_SCORE + "_count", "metric, model", *matchers, window=WINDOW)
    bad = rate(_SCORE + "_bucket", "metric, model", *at_threshold, window=WINDOW)
    measured = rate(_SCORE + "_count", "metric", *matchers, window=WINDOW)
    unmeasured = rate("llmops_eval_unmeasured_total", "metric", *matchers, window=WINDOW)
    # "or 0 * other": a metric never unmeasured (or never measured) has no series of that kind
    u, m = f"({unmeasured} or 0 * {measured})", f"({measured} or 0 * {unmeasured})"
    slo_metric = f'metric="{slo.metric}"'
    return (
        "Scores",
        [
            timeseries_panel(
                "Scored requests per second by model",
                f"How many sampled live requests does continuous evaluation score per model? {_PUSHED}",
                [(rate("llmops_eval_samples_total", "model", *matchers, window=WINDOW), "{{model}}")],
                "reqps",
            ),
            timeseries_panel(
                f"Share of scores above the SLO threshold ({num(slo.threshold)}) by metric and model",
                f"What share of scored requests score above {num(slo.threshold)}? The quality SLO "
                f"(slo.quality) reads the {slo.metric} lines: at least {num(slo.objective * 100)}% must. "
                f"{_PUSHED}",
                [(f"1 - {bad} / {count}", "{{metric}} {{model}}")],
                "percentunit",
                max_value=1,
            ),
            timeseries_panel(
                "Score p50 by metric and model",
                f"What does a typical answer score, per metric and model (0-1)? {_PUSHED}",
                quantiles((0.5,), _SCORE, groups, *matchers, window=WINDOW),
                "none",
                max_value=1,
            ),
            timeseries_panel(
                "Score p10 by metric and model",
                "How bad are the worst answers (the 10th percentile), per metric and model? It falls "
                f"before the median does when a slice of traffic breaks. {_PUSHED}",
                quantiles((0.1,), _SCORE, groups, *matchers, window=WINDOW),
                "none",
                max_value=1,
            ),
            timeseries_panel(
                "Unmeasured share by metric",
                "What share of the scores attempted per metric could not be computed (no answer, no "
                "context, judge budget spent)? They are counted apart, never as 0 or failed. "
                f"{_PUSHED}",
                [(f"{u} / ({u} + {m})", "{{metric}}")],
                "percentunit",
                max_value=1,
            ),
            bargauge_panel(
                f"{slo.metric} score distribution over the range",
                f"How are the {slo.metric} scores (the SLO metric) spread over the selected range? "
                "Each bar counts the scores in its bucket (above the previous bound, up to its own).",
                [
                    (
                        f"sum by (le) (increase({sel(_SCORE + '_bucket', slo_metric, *matchers)}[$__range]))",
                        "{{le}}",
                    )
                ],
                "short",
                heatmap=True,
            ),
        ],
    )


def _job_section() -> tuple[str, list[Any]]:
    return (
        "Records and judge",
        [
            timeseries_panel(
                "Records read per second by outcome",
                "How many inference-table records does continuous evaluation read, and what becomes of "
                "them: scored, skipped (not sampled) or quarantined (failed validation)? "
                f"{_PUSHED}",
                [(rate("llmops_eval_records_total", "outcome", window=WINDOW), "{{outcome}}")],
                "short",
                width=8,
                stacking=common_m.StackingMode.NORMAL,
            ),
            timeseries_panel(
                "Judge tokens per second by judge model",
                "How many tokens does the LLM judge spend? (model is the judge model, so the Model "
                f"variable does not apply.) {_PUSHED}",
                [(rate("llmops_eval_judge_tokens_total", "model", TENANT, window=WINDOW), "{{model}}")],
                "short",
                width=8,
            ),
            stat_panel(
                "Judge budget remaining",
                "How many judge tokens did the last run leave, of the whole run's budget (tenant all) "
                "and per tenant? At 0, further judge scores are unmeasured.",
                [
                    (
                        _gauge(
                            "min",
                            "llmops_eval_judge_budget_remaining_tokens",
                            "kind, tenant",
                            'tenant=~"$tenant|all"',
                        ),
                        "{{kind}} {{tenant}}",
                    )
                ],
                "short",
                width=5,
                instant=True,
            ),
            stat_panel(
                "Last run age",
                "How long ago did continuous evaluation last finish a run? Above 30 minutes "
                "LLMOpsContinuousEvalStale fires.",
                [("time() - max by (job) (llmops_eval_last_run_timestamp_seconds)", "{{job}}")],
                "s",
                width=3,
                instant=True,
            ),
        ],
    )


def _drift_section() -> tuple[str, list[Any]]:
    matchers = (MODEL, TENANT)
    legend = "{{model}} / {{tenant}}"
    return (
        "Prompt drift",
        [
            timeseries_panel(
                "Drift detected by model and tenant",
                "Has the MMD² test rejected 'same distribution' between the reference and the current "
                "window's prompts (1) or not (0)? No line: too few prompts to tell.",
                [(_gauge("max", "llmops_eval_drift_detected", "model, tenant", *matchers), legend)],
                "none",
                width=8,
                max_value=1,
            ),
            timeseries_panel(
                "MMD² permutation p-value",
                "How likely is a difference this large between the windows if the prompts had not "
                "changed? Below the test's alpha (0.05 by default) counts as drift.",
                [(_gauge("max", "llmops_eval_drift_p_value", "model, tenant", *matchers), legend)],
                "none",
                width=8,
                max_value=1,
            ),
            timeseries_panel(
                "MMD² between the windows",
                "How far apart are the windows' prompt-embedding distributions (maximum mean "
                "discrepancy, squared; 0: alike)?",
                [(_gauge("max", "llmops_eval_drift_mmd2", "model, tenant", *matchers), legend)],
                "none",
                width=8,
            ),
            timeseries_panel(
                "Domain classifier AUC",
                "How well does a classifier tell the windows' prompts apart (0.5: not at all; near 1: "
                "they are different populations)?",
                [(_gauge("max", "llmops_eval_drift_domain_auc", "model, tenant", *matchers), legend)],
                "none",
                width=8,
                max_value=1,
            ),
            timeseries_panel(
                "Centroid cosine",
                "How close are the windows' mean prompt embeddings (1: the same centre)?",
                [(_gauge("min", "llmops_eval_drift_centroid_cosine", "model, tenant", *matchers), legend)],
                "none",
                width=8,
                max_value=1,
            ),
            timeseries_panel(
                "PSI per scalar",
                "Which scalars shifted between the windows (population stability index of prompt and "
                "completion tokens, latency, scores)? Above 0.2 is a large shift.",
                [
                    (
                        _gauge("max", "llmops_eval_drift_psi", "metric, model, tenant", *matchers),
                        "{{metric}} " + legend,
                    )
                ],
                "none",
                width=8,
            ),
            timeseries_panel(
                "Prompts in the drift windows",
                "How many prompts does each drift window hold (reference and current)? Below "
                "drift.min_samples the test is not run.",
                [
                    (
                        _gauge("max", "llmops_eval_drift_samples", "kind, model, tenant", *matchers),
                        "{{kind}} " + legend,
                    )
                ],
                "short",
                width=24,
            ),
        ],
    )


def quality() -> dict[str, Any]:
    slo = QualitySloConfig()
    return dashboard(
        "llmops-quality",
        "llmops / Quality",
        "Continuous evaluation of sampled live requests: scores per metric and model, the quality "
        "SLO, unmeasured scores, records read, the LLM judge's tokens and budget, and prompt drift.",
        [_scores_section(slo), _job_section(), _drift_section()],
        model_values="label_values(llmops_eval_samples_total, model)",
        tenant_values="label_values(llmops_eval_samples_total, tenant)",
        time_from="now-24h",
        refresh="5m",
    )
