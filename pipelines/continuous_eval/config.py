"""The ``continuous_eval`` section of the config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.deployment_config import StrictModel

__all__ = ["ContinuousEvalConfig", "DriftWindowConfig", "JudgeConfig", "Metric"]

#: reference-free metrics scored on every sampled record (see pipelines.continuous_eval.score)
Metric = Literal["answer_relevance", "context_support", "refusal", "length"]
ALL_METRICS: tuple[Metric, ...] = ("answer_relevance", "context_support", "refusal", "length")


class JudgeConfig(StrictModel):
    """An LLM judge: any chat model behind an OpenAI-compatible API (e.g. one the platform serves)."""

    model: str = Field(min_length=1, description="Judge model id.")
    url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="OpenAI-compatible base URL ending in /v1 (default: the platform's own gateway).",
    )
    api_key_env: str = Field(
        "LLMOPS_API_KEY", min_length=1, description="Environment variable holding the judge's API key."
    )
    rubrics: list[str] = Field(
        default_factory=lambda: ["relevance"],
        min_length=1,
        description="Rubrics scored per record (evals.metrics.judge.RUBRICS: relevance, faithfulness, "
        "refusal; faithfulness only on RAG records).",
    )
    run_budget_tokens: int = Field(
        100_000, ge=1, description="Judge tokens one run may spend (never passed by more than one batch)."
    )
    tenant_budget_tokens: int | None = Field(
        None,
        ge=1,
        description="Judge tokens one tenant's records may use per run (unset: no per-tenant cap).",
    )
    tenant_budgets: dict[str, int] = Field(
        default_factory=dict, description="Per-tenant overrides of tenant_budget_tokens."
    )
    concurrency: int = Field(4, ge=1, le=64, description="Judge calls in flight.")


class DriftWindowConfig(StrictModel):
    """Prompt-embedding and scalar drift between a reference window and the current one."""

    enabled: bool = Field(True, description="Compute drift after each run.")
    current_hours: float = Field(24.0, gt=0, le=24 * 90, description="The current window: the last N hours.")
    reference_hours: float = Field(
        24.0 * 7, gt=0, le=24 * 365, description="The reference window: the N hours before the current one."
    )
    min_samples: int = Field(
        100,
        ge=10,
        description="Fewer prompts than this in either window: 'insufficient data', never 'no drift'.",
    )
    permutations: int = Field(200, ge=20, le=10_000, description="Permutations of the MMD² test.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level of the MMD² test.")


class ContinuousEvalConfig(StrictModel):
    """Scores sampled live requests from the inference table into a scores table and Prometheus."""

    table_path: str | None = Field(
        None, description="Inference table to read (default: monitoring.inference_table.path)."
    )
    output_dir: str | None = Field(
        None,
        description="Where the scores table (scores/), quarantine/, checkpoint.json and drift.json go "
        "(default: <data_dir>/eval).",
    )
    interval_s: float = Field(300.0, ge=1, le=86_400, description="Default period of `--every`.")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Share of valid records scored.")
    max_samples_per_group: int = Field(
        1000, ge=1, description="Most records scored per model and tenant per run (the rest: skipped)."
    )
    max_rows_per_pass: int = Field(
        20_000, ge=1, description="Records read per pass; a backlog is worked off pass by pass."
    )
    metrics: list[Metric] = Field(
        default_factory=lambda: list(ALL_METRICS), min_length=1, description="Reference-free metrics scored."
    )
    embedding_model: str | None = Field(
        None, description="Embedding model (under 'embeddings') for the semantic metrics and drift."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Records per Ray Data scoring batch.")
    max_prompt_chars: int = Field(
        200_000, ge=1, description="Validation: longer prompts are quarantined (length expectation)."
    )
    max_completion_chars: int = Field(
        200_000, ge=1, description="Validation: longer completions are quarantined."
    )
    judge: JudgeConfig | None = Field(None, description="LLM-as-judge scores (off when unset).")
    drift: DriftWindowConfig = Field(default_factory=DriftWindowConfig, description="Drift detection.")
    push: bool = Field(True, description="Push the metrics to monitoring.pushgateway after each commit.")

    @model_validator(mode="after")
    def _unique_metrics(self) -> ContinuousEvalConfig:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"metrics lists a metric twice: {self.metrics}")
        return self
