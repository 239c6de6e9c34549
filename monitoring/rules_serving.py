"""Symptom and cause alerts of the serving path: 5xx spikes, queue saturation, unhealthy
replicas and deployments, a missing scrape target (see :mod:`monitoring.rules`)."""

from __future__ import annotations

from monitoring.config import MonitoringConfig
from monitoring.rules_kit import VALUE, VALUE_DURATION, VALUE_PCT, Group, alert, label, num, pct, sel
from monitoring.rules_slo import API_MATCHER, availability_ratio

__all__ = [
    "ALERTS",
    "DEPLOYMENT_STATUS_UNHEALTHY",
    "DEPLOYMENT_UNHEALTHY",
    "ERROR_SPIKE",
    "ERROR_SPIKE_MIN_RPS",
    "ERROR_SPIKE_RATIO",
    "QUEUE_P95_SHARE_OF_TTFT",
    "QUEUE_SATURATED",
    "REPLICA_UNHEALTHY",
    "TARGET_DOWN",
    "serving_group",
]

# LLMOpsErrorSpike: 5xx share of one route and model over 5m, and the least traffic
# (requests/s, = 30 requests in 5m) for it to count, so 1 failure in 2 requests never pages.
ERROR_SPIKE_RATIO = 0.05
ERROR_SPIKE_MIN_RPS = 0.1
# LLMOpsQueueSaturated: p95 queue time above this share of the TTFT target means waiting
# alone uses up half of the target: the model needs more capacity (replicas), not a faster engine.
QUEUE_P95_SHARE_OF_TTFT = 0.5
# ray_serve_deployment_status values at or below this are failures (DEPLOY_FAILED=1,
# UNHEALTHY=2; UNKNOWN=0 for minutes is just as wrong).
DEPLOYMENT_STATUS_UNHEALTHY = 2

ERROR_SPIKE = "LLMOpsErrorSpike"
QUEUE_SATURATED = "LLMOpsQueueSaturated"
REPLICA_UNHEALTHY = "LLMOpsReplicaUnhealthy"
DEPLOYMENT_UNHEALTHY = "LLMOpsDeploymentUnhealthy"
TARGET_DOWN = "LLMOpsTargetDown"
ALERTS: tuple[str, ...] = (ERROR_SPIKE, QUEUE_SATURATED, REPLICA_UNHEALTHY, DEPLOYMENT_UNHEALTHY, TARGET_DOWN)


def serving_group(config: MonitoringConfig) -> Group:
    job, base = config.metrics.job, config.runbook_base_url.rstrip("/")
    by = " by (route, model) "
    total = f"sum{by}(rate(ray_llmops_requests_total{sel(job, API_MATCHER)}[5m]))"
    spike_expr = (
        "(\n"
        + "\n".join("  " + line for line in availability_ratio(job, "5m", by).splitlines())
        + f"\n) > {num(ERROR_SPIKE_RATIO)}\nand\n{total} > {num(ERROR_SPIKE_MIN_RPS)}"
    )
    queue_threshold = config.slo.ttft_threshold_seconds * QUEUE_P95_SHARE_OF_TTFT
    queue_expr = (
        "histogram_quantile(\n  0.95,\n"
        f"  sum by (model, le) (rate(ray_llmops_queue_time_seconds_bucket{sel(job)}[5m]))\n"
        f") > {num(queue_threshold)}"
    )
    replica_expr = (
        f"sum by (application, deployment) (\n  1 - ray_serve_deployment_replica_healthy{sel(job)}\n) > 0"
    )
    status_expr = (
        f"max by (application, deployment) (ray_serve_deployment_status{sel(job)})"
        f" <= {DEPLOYMENT_STATUS_UNHEALTHY}"
    )
    up = f"up{sel(job)}"
    target_expr = f"{up} == 0\nor\nabsent({up})"
    route, model = label("route"), label("model")
    app, deployment = label("application"), label("deployment")
    return Group(
        "llmops-serving.alerts",
        [
            alert(
                ERROR_SPIKE,
                spike_expr,
                for_="5m",
                severity="critical",
                summary=f"{route} ({model}) answers {VALUE_PCT} of requests with a 5xx",
                description=(
                    f"{VALUE_PCT} of requests to {route} for model {model} failed with a 5xx over the "
                    f"last 5 minutes (threshold {pct(ERROR_SPIKE_RATIO)}, at more than "
                    f"{num(ERROR_SPIKE_MIN_RPS)} requests/s). One route or model can be broken while the "
                    "platform-wide availability SLO still looks fine."
                ),
                base_url=base,
                comment=(
                    "5xx share per route and model over 5m, only where the route sees more than\n"
                    f"{num(ERROR_SPIKE_MIN_RPS)} req/s (30 requests in 5m), so 1 failure in 2 requests never "
                    "pages.\nThe `or 0 *` fallback keeps the ratio defined (0) before the first 5xx."
                ),
            ),
            alert(
                QUEUE_SATURATED,
                queue_expr,
                for_="10m",
                severity="warning",
                summary=f"Requests for {model} wait {VALUE_DURATION} (p95) before generation starts",
                description=(
                    f"The p95 queue time of model {model} (gateway and engine queues, before its engine "
                    f"starts on a request) has been {VALUE_DURATION} for 10 minutes, above "
                    f"{num(queue_threshold)} s ({num(QUEUE_P95_SHARE_OF_TTFT * 100)}% of the "
                    f"{num(config.slo.ttft_threshold_seconds)} s TTFT target). The model lacks capacity; "
                    "the TTFT SLO burns next."
                ),
                base_url=base,
                comment=(
                    "Saturation: p95 of llmops_queue_time_seconds (time before the engine starts on a\n"
                    "request: Serve's router queue plus the engine's waiting queue) per model. It is the\n"
                    "user-visible part of both queues, comparable across engines, unlike raw queue lengths\n"
                    "(engine_requests_waiting, serve_deployment_queued_queries: see the runbook)."
                ),
            ),
            alert(
                REPLICA_UNHEALTHY,
                replica_expr,
                for_="5m",
                severity="warning",
                summary=f"{VALUE} replica(s) of Serve deployment {deployment} unhealthy",
                description=(
                    f"{VALUE} replica(s) of deployment {deployment} (application {app}) have failed "
                    "their health check or been stopping for 5 minutes; capacity is reduced. For "
                    "generation-<model> deployments the health check is the engine's (model loaded, "
                    "scheduler running)."
                ),
                base_url=base,
                comment=(
                    "ray_serve_deployment_replica_healthy is 1 per healthy replica, 0 while a replica fails\n"
                    "its health check or is stopping; a stopped replica's series disappears ~20 s later\n"
                    "(rollouts and downscaling show 0s only briefly: `for` filters them out).\n"
                    "sum(1 - healthy) counts unhealthy replicas and is 0, not empty, when all is well."
                ),
            ),
            alert(
                DEPLOYMENT_UNHEALTHY,
                status_expr,
                for_="5m",
                severity="critical",
                summary=f"Serve deployment {deployment} is unhealthy or failed to deploy",
                description=(
                    f"Ray Serve reports deployment {deployment} of application {app} in status "
                    f"{VALUE} (0 UNKNOWN, 1 DEPLOY_FAILED, 2 UNHEALTHY) for 5 minutes: replicas keep "
                    "failing to start or to pass health checks, and requests to it fail or queue."
                ),
                base_url=base,
                comment=(
                    "ray_serve_deployment_status: 0 UNKNOWN, 1 DEPLOY_FAILED, 2 UNHEALTHY, 3 UPDATING,\n"
                    "4 UPSCALING, 5 DOWNSCALING, 6 HEALTHY (one series per deployment, from the Serve\n"
                    "controller; max() hides a stale series left by a restarted controller)."
                ),
            ),
            alert(
                TARGET_DOWN,
                target_expr,
                for_="5m",
                severity="critical",
                summary=f'Prometheus cannot scrape job "{job}" (Ray metrics endpoint)',
                description=(
                    "{{ if $labels.instance }}Scrape target " + label("instance") + f' of job "{job}" '
                    "has been down for 5 minutes.{{ else }}"
                    f'Prometheus has had no scrape target of job "{job}" for 5 minutes (service '
                    "discovery lost it).{{ end }} Every other llmops alert is blind while this fires."
                ),
                base_url=base,
                comment=(
                    "Ray's metrics endpoint (one per node) is down, or the job has no target at all\n"
                    "(absent(): service discovery lost it, e.g. a renamed ServiceMonitor)."
                ),
            ),
        ],
    )
