"""Config of RAG models: a collection, retrieval settings, a prompt and a generator."""

from __future__ import annotations

from pydantic import Field, field_validator

from services.deployment_config import DeploymentSettings, StrictModel
from services.generation.config import VERSION_FIELD, check_model_name

DEFAULT_INSTRUCTIONS = (
    "You answer questions using only the numbered context passages provided. "
    "Cite the passages you use by their numbers, like [1]. "
    "If the passages do not contain the answer, say that you don't know; never guess."
)


class RagModelConfig(StrictModel):
    """A chat model that retrieves from a collection, then generates with a generator model."""

    name: str = Field(description="Model id clients send as 'model', e.g. rag-docs.")
    version: str = VERSION_FIELD
    collection: str = Field(description="Collection to retrieve from (under retrieval.collections).")
    generator: str = Field(description="Generation model (under 'models') that writes the answer.")
    top_k: int = Field(5, ge=1, le=100, description="Chunks retrieved per question.")
    hybrid: bool = Field(True, description="Dense + sparse retrieval fused with reciprocal rank fusion.")
    score_threshold: float | None = Field(
        None, description="Drop chunks scoring below this (dense search only)."
    )
    instructions: str = Field(
        DEFAULT_INSTRUCTIONS,
        min_length=1,
        max_length=20_000,
        description="System instructions of the prompt.",
    )
    reserve_completion_tokens: int = Field(
        256, ge=1, le=1_000_000, description="Tokens kept free for the answer when fitting context chunks."
    )
    deployment: DeploymentSettings = Field(
        default_factory=lambda: DeploymentSettings(num_cpus=0.1, max_ongoing_requests=128),
        description="Replicas and resources of this model's RAG deployment.",
    )

    _name = field_validator("name")(classmethod(lambda cls, v: check_model_name(v)))
