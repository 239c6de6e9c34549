"""Config of the generation models: one entry per served model, by engine."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from monitoring.cost import Pricing
from services.deployment_config import DeploymentSettings, StrictModel

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def check_model_name(v: str) -> str:
    """Model ids clients send as 'model': letters, digits and . _ : / - (at most 128)."""
    if not _MODEL_NAME.match(v):
        raise ValueError(f'Got "{v}" for name; use letters, digits and . _ : / - (at most 128)')
    return v


VERSION_FIELD = Field(
    "v1",
    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    description="Version label of what is served under this name (metrics, request log, inference "
    "table and evaluation reports carry it).",
)


def config_digest(config: StrictModel) -> str:
    """A short digest of a model's config: two deployments with equal digests serve the same thing."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


class _ModelBase(StrictModel):
    name: str = Field(description="Model id clients send as 'model' (letters, digits, . _ : / -).")
    version: str = VERSION_FIELD
    context_length: int | None = Field(
        None, ge=16, le=10_000_000, description="Prompt + completion token limit (default: the engine's own)."
    )
    default_max_tokens: int = Field(
        256, ge=1, le=1_000_000, description="Completion tokens when a request sets no max_tokens."
    )
    deployment: DeploymentSettings = Field(
        default_factory=DeploymentSettings, description="Replicas, autoscaling and resources."
    )
    pricing: Pricing | None = Field(
        None,
        description="Cost per request: `mode: token` (USD per 1k prompt/completion tokens) or "
        "`mode: gpu_hour` (USD per GPU-hour, split among requests by their share of engine busy "
        "time). Unset: the model's cost is not recorded.",
    )

    _name = field_validator("name")(classmethod(lambda cls, v: check_model_name(v)))


class ExtractiveModelConfig(_ModelBase):
    """Weightless CPU baseline: answers with the context sentences most relevant to the request."""

    engine: Literal["extractive"] = Field(description="Engine kind.")
    embedding_model: str | None = Field(
        None,
        description="Embedding model (name under 'embeddings') that scores sentences; default: the first.",
    )
    max_sentences: int = Field(3, ge=1, le=100, description="Most sentences in one answer.")
    min_similarity: float = Field(
        0.05, ge=-1, le=1, description="Sentences scoring below this cosine similarity are never selected."
    )
    # summaries: a sentence scores cos(sentence, centroid) + weight * exp(-position / decay);
    # tuned on a dev half of REALSumm by `python -m evals.tune_extractive` (README: Evaluation)
    summary_position_weight: float = Field(
        1.0, ge=0, le=10, description="Summaries: weight of the lead-position prior (0: centroid only)."
    )
    summary_position_decay: float = Field(
        12.0, gt=0, le=1000, description="Summaries: sentences over which the position prior decays by 1/e."
    )
    summary_mmr_lambda: float = Field(
        0.75, ge=0, le=1, description="Summaries: MMR trade-off (1: relevance only, lower: less redundancy)."
    )


class TransformersModelConfig(_ModelBase):
    """Any local Hugging Face causal-LM directory, on CPU or GPU."""

    engine: Literal["transformers"] = Field(description="Engine kind.")
    path: str = Field(description="Local model directory (config.json, weights, tokenizer).")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="Weights dtype.")
    max_batch_size: int = Field(
        8, ge=1, le=1024, description="Most concurrent requests batched into one generate call."
    )
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, le=10, description="How long the first request of a batch waits for others to join."
    )
    trust_remote_code: bool = Field(False, description="Allow model code shipped inside the directory.")


class VLLMModelConfig(_ModelBase):
    """vLLM's async engine on one or more GPUs."""

    engine: Literal["vllm"] = Field(description="Engine kind.")
    path: str = Field(description="Local model directory or hub id (hub needs network).")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field("auto", description="Weights dtype.")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs one replica shards the model over.")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Fraction of GPU memory vLLM may take."
    )
    max_model_len: int | None = Field(
        None, ge=16, le=10_000_000, description="vLLM max_model_len (default: the model's)."
    )
    max_num_seqs: int | None = Field(None, ge=1, le=65_536, description="Most sequences in one engine step.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (faster start, slower decode).")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Further vLLM AsyncEngineArgs, passed through unchanged."
    )


class FixedModelConfig(_ModelBase):
    """Zero-work engine that always answers ``text``: for load tests and overhead benchmarks."""

    engine: Literal["fixed"] = Field(description="Engine kind.")
    text: str = Field(
        "This is a fixed answer.",
        min_length=1,
        max_length=100_000,
        description="The answer to every request.",
    )
    latency_s: float = Field(
        0.0,
        ge=0,
        le=60,
        description="Simulated engine time before the answer (a sleep, no CPU): for load and "
        "failure tests that need requests in flight without a model.",
    )
    token_interval_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description="0: the answer is one chunk. Above 0: one word per chunk, this long apart (a "
        "simulated decode speed, for measuring what streaming costs, e.g. the guardrail hold-back).",
    )


GenerationModelConfig = Annotated[
    ExtractiveModelConfig | TransformersModelConfig | VLLMModelConfig | FixedModelConfig,
    Field(discriminator="engine"),
]
