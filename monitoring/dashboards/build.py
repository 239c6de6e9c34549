"""The llmops Grafana dashboards, built as code with the Grafana Foundation SDK.

``python -m monitoring.dashboards.build`` writes one JSON file per dashboard next to
this module; ``--check`` only reports whether the committed files are up to date.
:func:`build_all` returns the same models for tests. Edit this file, never the JSON.

Queries follow ``monitoring/METRICS.md``: exported (``ray_``-prefixed) names, always
aggregated with ``sum by (...)`` (Ray adds per-process labels), quantiles from
``_bucket`` (Ray's histogram ``_sum`` is an estimate), totals from counters. Every
query uses the ``$datasource`` variable, filters by ``$model``/``$tenant`` where the
metric has that label, and uses ``$__rate_interval`` for rate windows — except the
Quality dashboard (:mod:`monitoring.dashboards.quality`), whose pushed series change
once per push and take a fixed 30-minute window.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.models import common as common_m

from monitoring.dashboards.kit import (
    MODEL,
    NO_RESULTS,
    RATE,
    TENANT,
    bargauge_panel,
    dashboard,
    quantiles,
    rate,
    sel,
    stat_panel,
    timeseries_panel,
)
from monitoring.dashboards.quality import quality

__all__ = ["OUT_DIR", "build_all", "main", "render"]

OUT_DIR = Path(__file__).resolve().parent


# --- dashboards -------------------------------------------------------------------


def serving_overview() -> dict[str, Any]:
    requests = "ray_llmops_requests_total"
    errors = rate(requests, "model", MODEL, 'status=~"5.."')
    total = rate(requests, "model", MODEL)
    tokens_matchers = (MODEL, TENANT)
    return dashboard(
        "llmops-serving",
        "llmops / Serving overview",
        "Traffic, errors, latency, throughput and fleet health of the llmops Serve application.",
        [
            (
                "Fleet",
                [
                    stat_panel(
                        "Build info (version)",
                        "Which llmops version (and Python) is running, and in how many processes? "
                        "Two versions at once means a rollout is in progress; a deploy that "
                        "coincides with a regression shows up here.",
                        [
                            (
                                "count by (version, python) (ray_llmops_build_info)",
                                "{{version}} (Python {{python}})",
                            )
                        ],
                        "none",
                        instant=True,
                    ),
                    stat_panel(
                        "Healthy replicas per deployment",
                        "How many replicas of each Serve deployment pass their health check right now? "
                        "(Ray Serve's own gauge; not filtered by model.)",
                        [("sum by (deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}}")],
                        "none",
                    ),
                ],
            ),
            (
                "Traffic",
                [
                    timeseries_panel(
                        "Requests per second by route and model",
                        "How much traffic is each route and model serving?",
                        [(rate(requests, "route, model", MODEL), "{{route}} {{model}}")],
                        "reqps",
                    ),
                    timeseries_panel(
                        "Error ratio (5xx) by model",
                        "What share of each model's requests fail with a server error (5xx)? "
                        "Shows 0 while there are no errors. Client errors (4xx) are not counted.",
                        # ``or 0 * total`` turns "no 5xx series yet" into 0 instead of no data.
                        [(f"({errors} or 0 * {total}) / {total}", "{{model}}")],
                        "percentunit",
                    ),
                ],
            ),
            (
                "Latency",
                [
                    timeseries_panel(
                        "Request latency p50 / p95 / p99",
                        "What end-to-end latency do clients see (arrival to last byte, all statuses)?",
                        quantiles((0.5, 0.95, 0.99), "ray_llmops_request_duration_seconds", (), MODEL),
                        "s",
                        width=8,
                    ),
                    timeseries_panel(
                        "Time to first token p50 / p95 / p99",
                        "How long until a user sees the first token? Compare with queue time "
                        "(Latency by stage) to tell waiting from prefill.",
                        quantiles((0.5, 0.95, 0.99), "ray_llmops_time_to_first_token_seconds", (), MODEL),
                        "s",
                        width=8,
                    ),
                    timeseries_panel(
                        "Inter-token latency p50 / p95",
                        "Is streaming smooth once it starts (time between consecutive tokens, i.e. decode speed)?",
                        quantiles((0.5, 0.95), "ray_llmops_inter_token_latency_seconds", (), MODEL),
                        "s",
                        width=8,
                    ),
                ],
            ),
            (
                "Throughput and saturation",
                [
                    timeseries_panel(
                        "Tokens per second (prompt and completion)",
                        "How many input tokens per second is each model reading, and how many output tokens "
                        "per second is it generating?",
                        [
                            (
                                rate("ray_llmops_prompt_tokens_total", "model", *tokens_matchers),
                                "{{model}} prompt",
                            ),
                            (
                                rate("ray_llmops_completion_tokens_total", "model", *tokens_matchers),
                                "{{model}} completion",
                            ),
                        ],
                        "short",
                    ),
                    timeseries_panel(
                        "Requests in flight by route",
                        "How much concurrent work is the platform holding right now (saturation)? "
                        "Summed over all replicas; not filtered by model.",
                        [("sum by (route) (ray_llmops_requests_in_flight)", "{{route}}")],
                        "short",
                    ),
                ],
            ),
        ],
    )


def latency_by_stage() -> dict[str, Any]:
    stage_hist = "ray_llmops_stage_duration_seconds"
    # Approximate by design: Ray estimates _sum from bucket midpoints (METRICS.md).
    stage_sum = rate(stage_hist + "_sum", "stage", MODEL)
    all_sum = f"sum(rate({sel(stage_hist + '_sum', MODEL)}{RATE}))"
    return dashboard(
        "llmops-latency-by-stage",
        "llmops / Latency by stage",
        "Where request latency comes from: the platform's own stages versus the engine, "
        "queueing and engine saturation.",
        [
            (
                "Stages",
                [
                    timeseries_panel(
                        "Stage latency p50 by stage (stacked)",
                        "Where does a typical request spend its time: auth, guardrails, embed, retrieve, "
                        "generate (the engine) or serialize? Stacked medians approximate a typical "
                        "request's breakdown; everything but generate is platform overhead.",
                        quantiles((0.5,), stage_hist, ("stage",), MODEL),
                        "s",
                        stacking=common_m.StackingMode.NORMAL,
                    ),
                    timeseries_panel(
                        "Stage latency p95 by stage",
                        "Which stage makes slow requests slow? A rising p95 outside generate is platform "
                        "overhead, not the engine.",
                        quantiles((0.95,), stage_hist, ("stage",), MODEL),
                        "s",
                    ),
                    timeseries_panel(
                        "Share of time per stage (approx.)",
                        "APPROXIMATE: what share of all request time goes to each stage (platform overhead "
                        "versus generate)? Computed from the histogram _sum, which Ray estimates from bucket "
                        "midpoints, so read proportions, not exact seconds; use the quantile panels for those.",
                        [(f"{stage_sum} / scalar({all_sum})", "{{stage}}")],
                        "percentunit",
                        width=24,
                        stacking=common_m.StackingMode.NORMAL,
                    ),
                ],
            ),
            (
                "Queue and engine",
                [
                    timeseries_panel(
                        "Queue time p50 / p95",
                        "Is waiting for the engine what makes time to first token slow (waiting vs. prefill)?",
                        quantiles((0.5, 0.95), "ray_llmops_queue_time_seconds", (), MODEL),
                        "s",
                        width=8,
                    ),
                    timeseries_panel(
                        "Engine requests running and waiting",
                        "Is the engine saturated? Waiting requests explain queue time and TTFT; running "
                        "requests show how many it decodes at once.",
                        [
                            (
                                f"sum by (model) ({sel('ray_llmops_engine_requests_running', MODEL)})",
                                "{{model}} running",
                            ),
                            (
                                f"sum by (model) ({sel('ray_llmops_engine_requests_waiting', MODEL)})",
                                "{{model}} waiting",
                            ),
                        ],
                        "short",
                        width=8,
                    ),
                    timeseries_panel(
                        "KV-cache usage (vLLM only)",
                        "Is the vLLM KV cache full (preemption and queueing ahead)? Fullest replica per "
                        "model. Empty when no model runs on vLLM.",
                        # A ratio: the fullest replica matters, summing replicas would be meaningless.
                        [
                            (
                                f"max by (model) ({sel('ray_llmops_engine_kv_cache_usage_ratio', MODEL)})",
                                "{{model}}",
                            )
                        ],
                        "percentunit",
                        width=8,
                        max_value=1,
                    ),
                ],
            ),
        ],
    )


def rag_retrieval() -> dict[str, Any]:
    results = "ray_llmops_retrieval_results_chunks"
    stage_matchers = ('stage=~"embed|retrieve"', MODEL)
    return dashboard(
        "llmops-rag-retrieval",
        "llmops / RAG and retrieval",
        "Retrieval volume and quality, embedding batching, and the latency of the embed and retrieve stages.",
        [
            (
                "Retrieval",
                [
                    timeseries_panel(
                        "Retrieval queries per second by collection",
                        "How many retrieval queries is each collection serving?",
                        [(rate(results + "_count", "collection"), "{{collection}}")],
                        "reqps",
                        width=8,
                    ),
                    bargauge_panel(
                        "Results per query (distribution over the range)",
                        "How many chunks do retrieval queries return, over the selected time range? "
                        'The "0.5" bucket counts queries that returned nothing.',
                        [(f"sum by (le) (increase({results}_bucket[$__range]))", "{{le}}")],
                        "short",
                        width=8,
                        heatmap=True,
                    ),
                    timeseries_panel(
                        "Results per query p50 by collection",
                        "Does a typical query get enough context back, per collection?",
                        quantiles((0.5,), results, ("collection",)),
                        "short",
                        width=8,
                    ),
                    timeseries_panel(
                        "Share of queries returning nothing",
                        "How often does retrieval return no chunks at all (the answer then has no context)? "
                        'Counts the le="0.5" bucket (zero results) over all queries.',
                        [
                            (
                                f"{rate(results + '_bucket', 'collection', NO_RESULTS)}"
                                f" / {rate(results + '_count', 'collection')}",
                                "{{collection}}",
                            )
                        ],
                        "percentunit",
                    ),
                    timeseries_panel(
                        "Top score p50 / p10 by collection",
                        "Is retrieval quality drifting? The best match's similarity per query: a falling "
                        "median or 10th percentile means queries find less relevant chunks.",
                        quantiles((0.5, 0.1), "ray_llmops_retrieval_top_score", ("collection",)),
                        "none",
                    ),
                ],
            ),
            (
                "Embedding and stage latency",
                [
                    timeseries_panel(
                        "Embedding batch size p50 / p95",
                        "Is the embedder batching (efficient) or running one text at a time?",
                        quantiles((0.5, 0.95), "ray_llmops_embedding_batch_size_texts", ("model",), MODEL),
                        "short",
                    ),
                    timeseries_panel(
                        "Embed and retrieve stage latency p50 / p95",
                        "How much of a RAG request's latency is spent embedding the query and searching "
                        "the vector store?",
                        quantiles(
                            (0.5, 0.95), "ray_llmops_stage_duration_seconds", ("stage",), *stage_matchers
                        ),
                        "s",
                    ),
                ],
            ),
        ],
    )


def cost() -> dict[str, Any]:
    cost_total = "ray_llmops_cost_usd_total"
    matchers = (TENANT, MODEL)
    prompt, completion = "ray_llmops_prompt_tokens_total", "ray_llmops_completion_tokens_total"
    return dashboard(
        "llmops-cost",
        "llmops / Cost",
        "What each tenant and model costs, and the token usage behind it.",
        [
            (
                "Spend",
                [
                    timeseries_panel(
                        "Cost per hour by tenant",
                        "What is each tenant costing right now, in USD per hour?",
                        [(f"3600 * {rate(cost_total, 'tenant', *matchers)}", "{{tenant}}")],
                        "currencyUSD",
                    ),
                    timeseries_panel(
                        "Cost per hour by model",
                        "Which models drive the spend, in USD per hour?",
                        [(f"3600 * {rate(cost_total, 'model', *matchers)}", "{{model}}")],
                        "currencyUSD",
                    ),
                    bargauge_panel(
                        "Cost over the selected range by tenant",
                        "How much has each tenant cost over the selected time range (USD)?",
                        [
                            (
                                f"sum by (tenant) (increase({sel(cost_total, *matchers)}[$__range]))",
                                "{{tenant}}",
                            )
                        ],
                        "currencyUSD",
                    ),
                    timeseries_panel(
                        "Cost per 1k tokens by model",
                        "What does each model cost per 1,000 tokens (prompt and completion together)? "
                        "Compares self-hosted GPU-hour pricing with token pricing.",
                        [
                            (
                                # priced models generate, so both token series exist for them
                                f"1000 * {rate(cost_total, 'model', *matchers)}"
                                f" / ({rate(prompt, 'model', *matchers)} + {rate(completion, 'model', *matchers)})",
                                "{{model}}",
                            )
                        ],
                        "currencyUSD",
                    ),
                ],
            ),
            (
                "Usage",
                [
                    timeseries_panel(
                        "Tokens per second by tenant",
                        "Who is using the platform, and how much (prompt and completion tokens per second)?",
                        [
                            (
                                rate("ray_llmops_prompt_tokens_total", "tenant", *matchers),
                                "{{tenant}} prompt",
                            ),
                            (
                                rate("ray_llmops_completion_tokens_total", "tenant", *matchers),
                                "{{tenant}} completion",
                            ),
                        ],
                        "short",
                    ),
                    bargauge_panel(
                        "Tokens over the selected range by tenant",
                        "How many tokens (prompt plus completion) has each tenant used over the selected range?",
                        [
                            (
                                # a regex on __name__ would drop the name and collide the two
                                # series; "or ... * 0" keeps tenants with prompt tokens only
                                f"sum by (tenant) (increase({sel(prompt, *matchers)}[$__range]))"
                                f" + (sum by (tenant) (increase({sel(completion, *matchers)}[$__range]))"
                                f" or 0 * sum by (tenant) (increase({sel(prompt, *matchers)}[$__range])))",
                                "{{tenant}}",
                            )
                        ],
                        "short",
                    ),
                ],
            ),
        ],
    )


def build_all() -> dict[str, dict[str, Any]]:
    """Every dashboard: file name -> Grafana JSON model."""
    return {
        "serving-overview.json": serving_overview(),
        "latency-by-stage.json": latency_by_stage(),
        "rag-retrieval.json": rag_retrieval(),
        "cost.json": cost(),
        "quality.json": quality(),
    }


def render(model: dict[str, Any]) -> str:
    """The committed form of a dashboard: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory to write the JSON files to")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a committed file is out of date"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, model in build_all().items():
        path: Path = args.out / name
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python -m monitoring.dashboards.build): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
