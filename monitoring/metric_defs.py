"""Every llmops metric's definition: names, kinds, labels and buckets.

Recorded through :class:`monitoring.metrics.MetricSet` (which re-exports all of
this). Conventions (CONVENTIONS.md, "Metrics, traces, logs"): names are
``llmops_<what>_<unit>``, counters end in ``_total``, 0-1 values in ``_ratio``,
no colons; labels only from ``LABELS`` (plus ``version``/``python`` on
``llmops_build_info``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RAY_PREFIX = "ray_"

# Per-request stages, in request order. The platform's own overhead is every
# stage except ``generate`` (engine time).
STAGES: tuple[str, ...] = ("auth", "guardrails", "embed", "retrieve", "generate", "serialize")

# The only label keys llmops metrics may use (never user ids or free text).
LABELS: frozenset[str] = frozenset(
    {
        "model", "route", "status", "stage", "tenant", "engine", "collection", "kind", "outcome",
        "version", "metric", "check", "direction", "result",
    }
)  # fmt: skip
# ``llmops_build_info`` is the one exception: its labels carry the build.
BUILD_INFO_LABELS: tuple[str, ...] = ("version", "python")

ENGINES: tuple[str, ...] = ("vllm", "transformers", "extractive")

# LLM latencies: 5 ms (auth, a cached embed) up to 10 minutes (a long generation).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    90.0, 120.0, 180.0, 300.0, 600.0,
)  # fmt: skip
# Token counts per request: 1-2-5 series up to 100k (long-context prompts).
TOKEN_BUCKETS: tuple[float, ...] = (*(float(m * 10**e) for e in range(5) for m in (1, 2, 5)), 100_000.0)
# Embedding batch sizes: powers of two, as batchers use them.
EMBED_BATCH_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(11))  # 1 … 1024
# Retrieval result counts. Ray requires positive bounds, so le="0.5" is the
# "retrieval returned nothing" bucket.
COUNT_BUCKETS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
# Top retrieval score: cosine similarity in (0, 1], with room above 1 for
# hybrid/sparse scores. Scores <= 0.05 (including negative) land in the first bucket.
SCORE_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0,
)  # fmt: skip

Kind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True)
class MetricDef:
    """One metric definition: name as recorded (not as exported), type, labels."""

    name: str
    kind: Kind
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind == "histogram" and not self.buckets:
            raise ValueError(f"{self.name}: histograms need explicit buckets")
        if self.kind != "histogram" and self.buckets is not None:
            raise ValueError(f"{self.name}: only histograms take buckets")
        allowed = set(BUILD_INFO_LABELS) if self.name == "llmops_build_info" else LABELS
        bad = set(self.labels) - allowed
        if bad:
            raise ValueError(f"{self.name}: labels {sorted(bad)} are not in the fixed label set")


def exported_name(name: str, backend: str = "ray") -> str:
    """The name a dashboard or rule must use: Ray prefixes ``ray_``."""
    return RAY_PREFIX + name if backend == "ray" else name


# --- definitions -------------------------------------------------------------

REQUESTS = MetricDef(
    "llmops_requests_total", "counter", "Requests handled, by route, model and HTTP status code.",
    ("route", "model", "status"),
)  # fmt: skip
REQUEST_DURATION = MetricDef(
    "llmops_request_duration_seconds", "histogram",
    "End-to-end request latency, from arrival to the last byte sent.",
    ("route", "model", "status"), LATENCY_BUCKETS,
)  # fmt: skip
TTFT = MetricDef(
    "llmops_time_to_first_token_seconds", "histogram",
    "Time from request arrival to the first generated token (streamed or not).",
    ("route", "model"), LATENCY_BUCKETS,
)  # fmt: skip
ITL = MetricDef(
    "llmops_inter_token_latency_seconds", "histogram",
    "Time between consecutive generated tokens (per token, after the first).",
    ("model",), LATENCY_BUCKETS,
)  # fmt: skip
QUEUE_TIME = MetricDef(
    "llmops_queue_time_seconds", "histogram",
    "Time a request waited before its engine started on it (gateway and engine queues).",
    ("model",), LATENCY_BUCKETS,
)  # fmt: skip
STAGE_DURATION = MetricDef(
    "llmops_stage_duration_seconds", "histogram",
    "Time spent per request in each stage: auth, guardrails, embed, retrieve, generate, serialize.",
    ("stage", "route", "model"), LATENCY_BUCKETS,
)  # fmt: skip
PROMPT_TOKENS = MetricDef(
    "llmops_prompt_tokens_total", "counter", "Prompt (input) tokens processed.", ("model", "tenant"),
)  # fmt: skip
COMPLETION_TOKENS = MetricDef(
    "llmops_completion_tokens_total", "counter", "Completion (output) tokens generated.",
    ("model", "tenant"),
)  # fmt: skip
REQUEST_PROMPT_TOKENS = MetricDef(
    "llmops_request_prompt_tokens", "histogram", "Prompt tokens per request.", ("model",), TOKEN_BUCKETS,
)  # fmt: skip
REQUEST_COMPLETION_TOKENS = MetricDef(
    "llmops_request_completion_tokens", "histogram", "Completion tokens per request.",
    ("model",), TOKEN_BUCKETS,
)  # fmt: skip
IN_FLIGHT = MetricDef(
    "llmops_requests_in_flight", "gauge", "Requests being handled right now, per process.", ("route",),
)  # fmt: skip
EMBED_BATCH = MetricDef(
    "llmops_embedding_batch_size_texts", "histogram", "Texts per embedding batch.",
    ("model",), EMBED_BATCH_BUCKETS,
)  # fmt: skip
RETRIEVAL_RESULTS = MetricDef(
    "llmops_retrieval_results_chunks", "histogram", "Chunks returned per retrieval query.",
    ("collection",), COUNT_BUCKETS,
)  # fmt: skip
RETRIEVAL_TOP_SCORE = MetricDef(
    "llmops_retrieval_top_score", "histogram",
    "Score of the best chunk per retrieval query (similarity; dimensionless).",
    ("collection",), SCORE_BUCKETS,
)  # fmt: skip
COST = MetricDef(
    "llmops_cost_usd_total", "counter", "Cost in US dollars attributed to requests, by tenant and model.",
    ("tenant", "model"),
)  # fmt: skip
BUILD_INFO = MetricDef(
    "llmops_build_info", "gauge", "Always 1; labels carry the llmops version and Python version.",
    BUILD_INFO_LABELS,
)  # fmt: skip
ENGINE_KV_CACHE = MetricDef(
    "llmops_engine_kv_cache_usage_ratio", "gauge",
    "Engine KV-cache usage, 0-1 (passed through from vLLM's gpu/kv cache usage gauge).",
    ("model", "engine"),
)  # fmt: skip
ENGINE_RUNNING = MetricDef(
    "llmops_engine_requests_running", "gauge", "Requests the engine is running (from vLLM).",
    ("model", "engine"),
)  # fmt: skip
ENGINE_WAITING = MetricDef(
    "llmops_engine_requests_waiting", "gauge", "Requests waiting in the engine's queue (from vLLM).",
    ("model", "engine"),
)  # fmt: skip

REPLICA_RETRIES = MetricDef(
    "llmops_replica_retries_total", "counter",
    "Requests whose replica died under them, by outcome: recovered (retried once before any byte "
    "reached the client, and answered), failed (the retry could not answer: 503), stream_broken "
    "(a stream already under way: it ended with an error event).",
    ("route", "model", "outcome"),
)  # fmt: skip

GUARDRAIL_DECISIONS = MetricDef(
    "llmops_guardrail_decisions_total", "counter",
    "Guardrail decisions, by configured check, direction (input, output, context) and result: pass, "
    "flagged, redacted, blocked, dropped (a RAG chunk), shadow_blocked / shadow_redacted (shadow mode: "
    "would have acted, let through), error_open (the check failed, request let through), error_closed "
    "(the check failed, request blocked).",
    ("check", "direction", "result", "model"),
)  # fmt: skip
# A check takes 50 microseconds (a regex over a chunk), tens of ms (a classifier over a long prompt)
# or seconds (an LLM judge).
GUARDRAIL_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
GUARDRAIL_DURATION = MetricDef(
    "llmops_guardrail_check_duration_seconds", "histogram",
    "Time one guardrail check took on one request (input), stream step or response (output).",
    ("check", "direction"), GUARDRAIL_BUCKETS,
)  # fmt: skip

DEFINITIONS: tuple[MetricDef, ...] = (
    REQUESTS, REQUEST_DURATION, TTFT, ITL, QUEUE_TIME, STAGE_DURATION,
    PROMPT_TOKENS, COMPLETION_TOKENS, REQUEST_PROMPT_TOKENS, REQUEST_COMPLETION_TOKENS,
    IN_FLIGHT, EMBED_BATCH, RETRIEVAL_RESULTS, RETRIEVAL_TOP_SCORE, COST, BUILD_INFO,
    ENGINE_KV_CACHE, ENGINE_RUNNING, ENGINE_WAITING, REPLICA_RETRIES, GUARDRAIL_DECISIONS,
    GUARDRAIL_DURATION,
)  # fmt: skip
