"""Rules over continuous evaluation's pushed metrics: the quality SLO, drift, the job itself.

Continuous evaluation (``pipelines/continuous_eval``) scores sampled live requests and
PUTs its cumulative totals to the Pushgateway after each committed batch (every
``continuous_eval.interval_s``, 5 minutes by default). Prometheus scrapes the
Pushgateway with ``honor_labels: true``, so every series here carries
``job="<monitoring.pushgateway.job>"`` and no ``ray_`` prefix (monitoring/eval_metrics.py
defines the names). Generated:

* **Quality SLI recording rules** per model, ``llmops:slo_quality_errors:ratio_rate<w>``:
  scored requests whose ``slo.quality.metric`` score is at most ``slo.quality.threshold``
  (the bucket ``le="<threshold>"``) / all scored, from ``increase()`` over the window.
* **Quality burn-rate alerts** per model (page: 6h and 30m above 6x the budget; ticket:
  1d and 2h above 3x, or 3d and 6h above 1x), each only over a long window holding at
  least ``slo.quality.min_scored_requests`` scored requests (fewer is inconclusive).
* **Prompt drift** per model and tenant, a **stale** continuous evaluation, a high
  **quarantine** share of records read, an exhausted **judge budget**.
"""

from __future__ import annotations

from monitoring.config import MonitoringConfig
from monitoring.eval_metrics import (
    DRIFT_DETECTED,
    EVAL_JUDGE_BUDGET,
    EVAL_LAST_RUN,
    EVAL_RECORDS,
    EVAL_SCORE,
)
from monitoring.rules_kit import (
    TICKET_WINDOWS,
    VALUE,
    VALUE_DURATION,
    VALUE_PCT,
    BurnSpec,
    BurnWindow,
    Group,
    Rule,
    alert,
    burn_alerts,
    label,
    le_label,
    num,
    pct,
    record_name,
    sel,
)

__all__ = [
    "ALERTS",
    "DRIFT",
    "JUDGE_BUDGET",
    "QUALITY_FAST",
    "QUALITY_FAST_WINDOWS",
    "QUALITY_SLOW",
    "QUALITY_SLOW_WINDOWS",
    "QUALITY_WINDOWS",
    "QUARANTINE",
    "STALE",
    "quality_alerts_group",
    "quality_sli_group",
]

# Burn-rate windows. The job pushes a step every interval_s (5 min by default), so a 5m
# window holds at most one push: its increase() is 0 or one extrapolated step, and the
# serving SLOs' 1h/5m pair would flap (at the default objective 0.9 its 14.4x threshold,
# 1.44, could not even be reached). The shortest window here, 30m, spans 6 pushes and the
# long windows 72 (6h) to 864 (3d); the factors keep the SRE workbook's budget shares
# (6x for 6h spends 5% of a 30-day budget, 3x for 1d and 1x for 3d 10% each).
QUALITY_FAST_WINDOWS: tuple[BurnWindow, ...] = (BurnWindow("6h", "30m", 6.0, "5 days"),)
QUALITY_SLOW_WINDOWS: tuple[BurnWindow, ...] = TICKET_WINDOWS
QUALITY_WINDOWS: tuple[str, ...] = ("30m", "2h", "6h", "1d", "3d")

# LLMOpsContinuousEvalStale: no batch committed for this long = 6 missed runs at the
# default 5-minute interval (one slow run over a large backlog must not page).
STALE_AFTER_S = 1800
# LLMOpsEvalQuarantineHigh: quarantined share of the records read over 1h, and the least
# records read in that hour for it to count (1 bad record in 3 is not a trend).
QUARANTINE_RATIO = 0.05
QUARANTINE_MIN_RECORDS = 20
# LLMOpsPromptDrift: the MMD² test rejects "same distribution" for this long (about 6 runs).
DRIFT_FOR = "30m"

QUALITY_FAST = "LLMOpsQualityBudgetBurnFast"
QUALITY_SLOW = "LLMOpsQualityBudgetBurnSlow"
DRIFT = "LLMOpsPromptDrift"
STALE = "LLMOpsContinuousEvalStale"
QUARANTINE = "LLMOpsEvalQuarantineHigh"
JUDGE_BUDGET = "LLMOpsJudgeBudgetExhausted"
ALERTS: tuple[str, ...] = (QUALITY_FAST, QUALITY_SLOW, DRIFT, STALE, QUARANTINE, JUDGE_BUDGET)

# kind="run" carries tenant="all"; only a per-tenant budget names its tenant
_IF_TENANT = '{{ if eq $labels.kind "tenant" }}'
_SCORE_BUCKET = EVAL_SCORE.name + "_bucket"
_SCORE_COUNT = EVAL_SCORE.name + "_count"


def _scored(job: str, metric: str, window: str) -> str:
    """Requests scored on ``metric`` per model over ``window``."""
    matchers = sel(job, f'metric="{metric}"')
    return f"sum by (model) (increase({_SCORE_COUNT}{matchers}[{window}]))"


def _quality_ratio(job: str, metric: str, threshold: float, window: str) -> str:
    at_threshold = sel(job, f'metric="{metric}"', f'le="{le_label(threshold)}"')
    bad = f"sum by (model) (increase({_SCORE_BUCKET}{at_threshold}[{window}]))"
    return f"{bad}\n/\n{_scored(job, metric, window)}"


def quality_sli_group(config: MonitoringConfig) -> Group:
    job, q = config.pushgateway.job, config.slo.quality
    rules = [
        Rule(
            {
                "record": record_name("quality", window),
                "expr": _quality_ratio(job, q.metric, q.threshold, window),
            },
            f"Quality SLI per model: share of scored requests whose {q.metric} score is at most "
            f"{num(q.threshold)}\n"
            f'(the cumulative bucket le="{le_label(q.threshold)}") / all scored. The Pushgateway '
            f're-exposes bounds in Go\'s form (1.0 as "1"),\n'
            f"which equals Python's for every bound below 1; the threshold is one (config validates it).\n"
            f"No scored request in the window: NaN (unmeasured), which no alert reads as burning."
            if i == 0
            else "",
        )
        for i, window in enumerate(QUALITY_WINDOWS)
    ]
    return Group("llmops-quality-sli.rules", rules)


def _burn(config: MonitoringConfig, base: str) -> list[Rule]:
    job, q = config.pushgateway.job, config.slo.quality
    spec = BurnSpec(
        "quality",
        f"Quality ({q.metric})",
        q.objective,
        f"of the scored requests of model {label('model')} had {q.metric} at or below {num(q.threshold)}",
        f"{pct(q.objective)} of each model's scored (sampled) requests must have {q.metric} above "
        f"{num(q.threshold)} over 30 days",
        QUALITY_FAST,
        QUALITY_SLOW,
        fast_windows=QUALITY_FAST_WINDOWS,
        slow_windows=QUALITY_SLOW_WINDOWS,
        fast_for="5m",
        slow_for="30m",
        subject=f" of {label('model')}",
        guard=lambda window: f"{_scored(job, q.metric, window)} >= {q.min_scored_requests}",
        note=(
            "Windows of 30m and more: the job pushes every few minutes (see QUALITY_FAST_WINDOWS).\n"
            f"Each branch also needs {q.min_scored_requests} scored requests over its long window "
            "(slo.quality.min_scored_requests): fewer is inconclusive."
        ),
    )
    return burn_alerts(spec, base)


def quality_alerts_group(config: MonitoringConfig) -> Group:
    job, base = config.pushgateway.job, config.runbook_base_url.rstrip("/")
    model, tenant, kind = label("model"), label("tenant"), label("kind")
    records = f"sum(increase({EVAL_RECORDS.name}{sel(job)}[1h]))"
    quarantined_sel = sel(job, 'outcome="quarantined"')
    quarantined = f"sum(increase({EVAL_RECORDS.name}{quarantined_sel}[1h]))"
    quarantine_expr = (
        f"(\n  (\n    {quarantined}\n    or\n    0 * {records}\n  )\n  /\n  {records}\n)"
        f" > {num(QUARANTINE_RATIO)}\nand\n{records} >= {QUARANTINE_MIN_RECORDS}"
    )
    last_run = f"{EVAL_LAST_RUN.name}{sel(job)}"
    return Group(
        "llmops-quality.alerts",
        [
            *_burn(config, base),
            alert(
                DRIFT,
                f"max by (model, tenant) ({DRIFT_DETECTED.name}{sel(job)}) == 1",
                for_=DRIFT_FOR,
                severity="warning",
                summary=f"Prompts of {model} (tenant {tenant}) have drifted from the reference window",
                description=(
                    f"Continuous evaluation's MMD² test on prompt embeddings has rejected 'same "
                    f"distribution' between the reference and the current window for model {model}, "
                    f"tenant {tenant}, for {DRIFT_FOR}. Quality scores measured on the old traffic may no "
                    "longer hold; retrieval and guardrails may see inputs they were not tuned for."
                ),
                base_url=base,
                comment=(
                    "llmops_eval_drift_detected is 1 when the permutation test rejects (p < alpha), 0 when\n"
                    "not, absent with too few prompts in either window (insufficient data is not drift)."
                ),
            ),
            alert(
                STALE,
                f"time() - max({last_run}) > {STALE_AFTER_S}\nor\nabsent({last_run})",
                for_="5m",
                severity="warning",
                summary="Continuous evaluation has not committed a batch recently",
                description=(
                    "{{ if $labels.job }}Prometheus has no "
                    + EVAL_LAST_RUN.name
                    + f' of job "{job}": continuous evaluation has never pushed to the Pushgateway, '
                    "or the Pushgateway is not scraped (or lost its data).{{ else }}Continuous evaluation "
                    f"last committed a batch {VALUE_DURATION} ago (threshold {num(STALE_AFTER_S / 60)} "
                    "minutes).{{ end }} Quality SLO, drift and judge-budget alerts are blind while this "
                    "fires."
                ),
                base_url=base,
                comment=(
                    "The Pushgateway keeps the last pushed value forever, so a dead job shows as an old\n"
                    "timestamp, not as a missing series; absent(): never pushed, or the Pushgateway is\n"
                    "not scraped or restarted without its data."
                ),
            ),
            alert(
                QUARANTINE,
                quarantine_expr,
                for_="15m",
                severity="warning",
                summary=f"Continuous evaluation quarantines {VALUE_PCT} of the records it reads",
                description=(
                    f"{VALUE_PCT} of the inference-table records continuous evaluation read over the last "
                    f"hour failed validation and were quarantined (threshold {pct(QUARANTINE_RATIO)}, at "
                    f"{QUARANTINE_MIN_RECORDS} or more records). Quarantined records are never scored: "
                    "the quality SLO sees a biased sample."
                ),
                base_url=base,
                comment=(
                    "Quarantined / all records read (scored + skipped + quarantined) over 1h; `or 0 *`\n"
                    "keeps the ratio 0, not empty, before the first quarantined record."
                ),
            ),
            alert(
                JUDGE_BUDGET,
                f"min by (kind, tenant) ({EVAL_JUDGE_BUDGET.name}{sel(job)}) <= 0",
                for_="15m",
                severity="warning",
                summary=f"The LLM judge's {kind} token budget is spent{_IF_TENANT} (tenant {tenant}){{{{ end }}}}",
                description=(
                    f"Continuous evaluation's last runs spent the whole {kind} judge budget"
                    f"{_IF_TENANT} of tenant {tenant}{{{{ end }}}} ({VALUE} tokens left): the records "
                    "after that are judged 'unmeasured' (NaN), not "
                    "scored, so judge metrics cover only part of the traffic."
                ),
                base_url=base,
                comment=(
                    "llmops_eval_judge_budget_remaining_tokens: what the last run left of its budget\n"
                    "(kind=run for the whole run, kind=tenant per tenant); 0 for 15m = 3 runs in a row."
                ),
            ),
        ],
    )
