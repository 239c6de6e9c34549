"""Config of the embedding models."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.deployment_config import DeploymentSettings, StrictModel


def _default_deployment() -> DeploymentSettings:
    # max_ongoing_requests must be >= the batch size or Serve never fills a batch
    return DeploymentSettings(max_ongoing_requests=128)


class EmbeddingModelConfig(StrictModel):
    """A sentence-transformers model served on /v1/embeddings."""

    name: str = Field("all-minilm-l6-v2", description="Model id clients send as 'model'.")
    path: str | None = Field(
        None, description="Local sentence-transformers directory; default: the bundled all-MiniLM-L6-v2."
    )
    device: str = Field("cpu", description="'cpu', 'cuda' or 'cuda:N'.")
    max_batch_size: int = Field(32, ge=1, le=4096, description="Most requests encoded in one forward pass.")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=10, description="How long the first request of a batch waits for others to join."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Intra-op threads one replica encodes with (default: Ray's choice, the replica's num_cpus).",
    )
    max_input_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Longest input in tokens (default: the model's max_seq_length); longer is a 400.",
    )
    deployment: DeploymentSettings = Field(
        default_factory=_default_deployment, description="Replicas, autoscaling and resources."
    )

    @model_validator(mode="after")
    def _batch_fits(self) -> EmbeddingModelConfig:
        if self.deployment.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests}) must be >= "
                f"max_batch_size ({self.max_batch_size}), or batches can never fill"
            )
        return self
