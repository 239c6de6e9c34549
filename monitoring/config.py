"""The ``monitoring`` section of the config: metrics, tracing, request logs, SLOs, local Prometheus.

One model, read by the services (what to record), by ``monitoring.rules`` (the SLO
objectives the burn-rate alerts are generated from) and by ``llmops up
--with-prometheus`` (where the local Prometheus listens).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from monitoring.eval_metrics import EVAL_SCORE_BUCKETS
from monitoring.inference_table import InferenceTableConfig
from monitoring.metrics import LATENCY_BUCKETS
from monitoring.tracing import TracingConfig

__all__ = [
    "InferenceTableConfig",
    "MetricsConfig",
    "MonitoringConfig",
    "PrometheusConfig",
    "PushgatewayConfig",
    "QualitySloConfig",
    "RequestLogConfig",
    "SloConfig",
    "TracingConfig",
]


class _StrictModel(BaseModel):
    # monitoring/ imports no other area, so it keeps its own copy of the strict base.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MetricsConfig(_StrictModel):
    """Prometheus metrics recorded by the services and exported by Ray's metrics endpoint."""

    enabled: bool = Field(True, description="Record llmops_* metrics (off: only Ray's own metrics).")
    export_port: int = Field(
        8080,
        ge=1024,
        le=65535,
        description="Port of Ray's metrics endpoint (http://<node ip>:<port>/metrics) that "
        "`llmops up` starts; on Kubernetes the RayService's metrics port.",
    )
    job: str = Field(
        "llmops",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prometheus `job` label of the scrape target; alert rules select on it "
        "(on Kubernetes, the ServiceMonitor's job).",
    )


class RequestLogConfig(_StrictModel):
    """One JSON line per request: ids, tenant, model, status, stage timings, tokens, cost."""

    enabled: bool = Field(True, description="Write the request log.")
    path: str | None = Field(
        None,
        max_length=4096,
        description="File the JSON lines are appended to; '-' for the replica's stdout "
        "(Kubernetes). Default: <data_dir>/logs/requests.jsonl under `llmops up`, stdout otherwise.",
    )
    include_prompts: bool = Field(
        False,
        description="Also log the prompt and completion text, with PII (emails, phone and card "
        "numbers, IPs, secrets) redacted. Off by default: raw text never reaches the log.",
    )
    max_text_chars: int = Field(
        2000, ge=1, le=1_000_000, description="Longest prompt or completion logged (then truncated)."
    )


class QualitySloConfig(_StrictModel):
    """The quality SLO over continuous evaluation's scores of sampled live requests.

    A scored request is good when its ``metric`` score is above ``threshold``; the
    quality burn-rate alerts (per model) are generated from this.
    """

    metric: str = Field(
        "answer_relevance",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="The continuous-evaluation metric (`metric` label of llmops_eval_score) the SLO reads.",
    )
    threshold: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="A request whose score is at most this is bad; must be a bucket bound of "
        "llmops_eval_score below 1.",
    )
    objective: float = Field(
        0.9,
        gt=0.5,
        lt=1,
        description="Fraction of scored requests whose score must be above the threshold (over 30 days).",
    )
    min_scored_requests: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="Scored requests a burn-rate window must hold before its ratio can fire an alert "
        "(fewer: inconclusive, never a page).",
    )

    @field_validator("threshold")
    @classmethod
    def _on_bucket(cls, v: float) -> float:
        # The SLO counts scores in the histogram bucket le=<threshold>: any other value
        # could only be guessed by interpolation, and 1.0 would count every score as bad.
        bounds = [b for b in EVAL_SCORE_BUCKETS if b < 1]
        if v not in bounds:
            raise ValueError(
                f"Got {v} for slo.quality.threshold; it must be one of the llmops_eval_score bucket "
                f"bounds below 1: {bounds}"
            )
        return v


class SloConfig(_StrictModel):
    """Service level objectives; the burn-rate alerts in monitoring/alerts are generated from these."""

    availability_objective: float = Field(
        0.995,
        gt=0.5,
        lt=1,
        description="Fraction of API requests that must not fail with a 5xx (over 30 days).",
    )
    ttft_objective: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="Fraction of generation requests whose time to first token is at most "
        "ttft_threshold_seconds.",
    )
    ttft_threshold_seconds: float = Field(
        2.0,
        gt=0,
        le=600,
        description="The TTFT a request must beat to count as good; must be a bucket bound of "
        "llmops_time_to_first_token_seconds.",
    )
    quality: QualitySloConfig = Field(
        default_factory=QualitySloConfig,
        description="Quality SLO over continuous evaluation's scores (quality burn-rate alerts).",
    )

    @field_validator("ttft_threshold_seconds")
    @classmethod
    def _on_bucket(cls, v: float) -> float:
        # The SLO counts requests in the histogram bucket le=<threshold>; any other
        # value would silently be rounded by histogram interpolation.
        if v not in LATENCY_BUCKETS:
            raise ValueError(
                f"Got {v} for ttft_threshold_seconds; it must be one of the latency bucket bounds "
                f"{list(LATENCY_BUCKETS)}"
            )
        return v


class PrometheusConfig(_StrictModel):
    """The local Prometheus that `llmops up --with-prometheus` starts (Debian's `prometheus`)."""

    host: str = Field("127.0.0.1", description="Address the local Prometheus listens on.")
    port: int = Field(9090, ge=1, le=65535, description="Port of the local Prometheus.")
    scrape_interval_s: float = Field(
        5.0, ge=1, le=300, description="How often it scrapes the platform and evaluates rules."
    )
    binary: str = Field(
        "prometheus", min_length=1, description="Prometheus executable (name on PATH or a path)."
    )


class PushgatewayConfig(_StrictModel):
    """The Prometheus Pushgateway batch jobs push to (continuous evaluation).

    `llmops up --with-prometheus` starts Debian's `prometheus-pushgateway` here beside
    Prometheus and scrapes it with honor_labels; on Kubernetes, point `url` at the
    cluster's Pushgateway.
    """

    host: str = Field("127.0.0.1", description="Address the local Pushgateway listens on.")
    port: int = Field(9091, ge=1, le=65535, description="Port of the local Pushgateway.")
    url: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://",
        description="Pushgateway batch jobs push to (default: http://<host>:<port>).",
    )
    job: str = Field(
        "llmops-continuous-eval",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="`job` label of the pushed continuous-evaluation metrics (alert rules select on it).",
    )
    binary: str = Field(
        "prometheus-pushgateway", min_length=1, description="Pushgateway executable (name on PATH or a path)."
    )

    @property
    def push_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"


class MonitoringConfig(_StrictModel):
    """Metrics, tracing, request logs, SLOs and the optional local Prometheus."""

    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics.")
    tracing: TracingConfig = Field(
        default_factory=TracingConfig, description="OpenTelemetry tracing (off by default)."
    )
    request_log: RequestLogConfig = Field(
        default_factory=RequestLogConfig, description="Structured JSON request log."
    )
    inference_table: InferenceTableConfig = Field(
        default_factory=InferenceTableConfig,
        description="Sampled, redacted request records (Parquet by hour) for continuous evaluation.",
    )
    slo: SloConfig = Field(default_factory=SloConfig, description="SLO objectives behind the alerts.")
    prometheus: PrometheusConfig = Field(
        default_factory=PrometheusConfig, description="Local Prometheus for `llmops up --with-prometheus`."
    )
    pushgateway: PushgatewayConfig = Field(
        default_factory=PushgatewayConfig,
        description="Pushgateway for batch-job metrics (continuous evaluation).",
    )
    runbook_base_url: str = Field(
        "https://github.com/llmops-dev/llmops/blob/main/monitoring/runbooks",
        max_length=2048,
        pattern=r"^https?://",
        description="Where the runbooks are published; each alert's runbook_url is "
        "<runbook_base_url>/<AlertName>.md.",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> MonitoringConfig:
        ports = {
            "metrics.export_port": self.metrics.export_port,
            "prometheus.port": self.prometheus.port,
            "pushgateway.port": self.pushgateway.port,
        }
        names = list(ports)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if ports[a] == ports[b]:
                    raise ValueError(f"{a} and {b} are both {ports[a]}; use different ports")
        return self
