"""The serving SLOs' rules: SLI recording rules and burn-rate alerts (availability, TTFT).

See :mod:`monitoring.rules` for what is generated and why.
"""

from __future__ import annotations

from monitoring.config import MonitoringConfig
from monitoring.rules_kit import BurnSpec, Group, Rule, burn_alerts, le_label, num, pct, record_name, sel

__all__ = [
    "ALERTS",
    "API_MATCHER",
    "API_ROUTES",
    "AVAILABILITY_FAST",
    "AVAILABILITY_SLOW",
    "SLI_WINDOWS",
    "TTFT_FAST",
    "TTFT_SLOW",
    "availability_ratio",
    "burn_group",
    "sli_group",
]

# Windows the SLI error ratios are recorded over (every window a burn-rate alert uses).
SLI_WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

# The API routes the availability SLO covers (not /healthz, /readyz, /metrics: readiness
# probes answer 503 by design while a replica starts).
API_ROUTES = "/v1/.*"
API_MATCHER = 'route=~"' + API_ROUTES + '"'
_5XX_MATCHER = 'status=~"5.."'

AVAILABILITY_FAST = "LLMOpsAvailabilityBudgetBurnFast"
AVAILABILITY_SLOW = "LLMOpsAvailabilityBudgetBurnSlow"
TTFT_FAST = "LLMOpsTTFTBudgetBurnFast"
TTFT_SLOW = "LLMOpsTTFTBudgetBurnSlow"
ALERTS: tuple[str, ...] = (AVAILABILITY_FAST, AVAILABILITY_SLOW, TTFT_FAST, TTFT_SLOW)


def availability_ratio(job: str, window: str, by: str = "") -> str:
    """5xx / all requests on the API routes; 0 (not empty) when no 5xx series exists yet."""
    api = sel(job, API_MATCHER)
    api_5xx = sel(job, API_MATCHER, _5XX_MATCHER)
    total = f"sum{by}(rate(ray_llmops_requests_total{api}[{window}]))"
    bad = f"sum{by}(rate(ray_llmops_requests_total{api_5xx}[{window}]))"
    return f"(\n  {bad}\n  or\n  0 * {total}\n)\n/\n{total}"


def _ttft_ratio(job: str, window: str, threshold: float) -> str:
    """Requests slower than the threshold to the first token / all, from the histogram."""
    count = f"sum(rate(ray_llmops_time_to_first_token_seconds_count{sel(job)}[{window}]))"
    at_threshold = sel(job, 'le="' + le_label(threshold) + '"')
    good = f"sum(rate(ray_llmops_time_to_first_token_seconds_bucket{at_threshold}[{window}]))"
    return f"(\n  {count}\n  -\n  {good}\n)\n/\n{count}"


def sli_group(config: MonitoringConfig) -> Group:
    job, slo = config.metrics.job, config.slo
    rules: list[Rule] = []
    for i, window in enumerate(SLI_WINDOWS):
        rules.append(
            Rule(
                {"record": record_name("availability", window), "expr": availability_ratio(job, window)},
                "Availability SLI: share of API requests (routes /v1/...) answered with a 5xx.\n"
                "`bad or 0 * total`: before the first 5xx there is no 5xx series at all; this\n"
                "yields 0 instead of no data while there is traffic."
                if i == 0
                else "",
            )
        )
    for i, window in enumerate(SLI_WINDOWS):
        rules.append(
            Rule(
                {
                    "record": record_name("ttft", window),
                    "expr": _ttft_ratio(job, window, slo.ttft_threshold_seconds),
                },
                f"TTFT SLI: share of requests whose time to first token exceeded "
                f"{num(slo.ttft_threshold_seconds)} s:\n"
                f'(all - those in bucket le="{le_label(slo.ttft_threshold_seconds)}") / all. '
                f'Ray exports bounds as Python floats (le="2.0", never le="2"),\n'
                f"so this selector must match exactly; the threshold is a bucket bound (config validates it)."
                if i == 0
                else "",
            )
        )
    return Group("llmops-slo-sli.rules", rules)


def burn_group(config: MonitoringConfig) -> Group:
    slo, base = config.slo, config.runbook_base_url.rstrip("/")
    specs = (
        BurnSpec(
            "availability",
            "Availability",
            slo.availability_objective,
            "of API requests failed with a 5xx",
            f"API requests (routes /v1/...) must not fail with a 5xx in "
            f"{pct(slo.availability_objective)} of cases over 30 days",
            AVAILABILITY_FAST,
            AVAILABILITY_SLOW,
        ),
        BurnSpec(
            "ttft",
            "TTFT",
            slo.ttft_objective,
            f"of generation requests took longer than {num(slo.ttft_threshold_seconds)} s to the first token",
            f"{pct(slo.ttft_objective)} of generation requests must get their first token within "
            f"{num(slo.ttft_threshold_seconds)} s over 30 days",
            TTFT_FAST,
            TTFT_SLOW,
        ),
    )
    return Group("llmops-slo-burn.alerts", [rule for spec in specs for rule in burn_alerts(spec, base)])
