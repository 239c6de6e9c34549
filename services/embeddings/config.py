"""Config of the embedding models."""

from __future__ import annotations

from typing import Literal

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
    backend: Literal["auto", "torch", "openvino"] = Field(
        "auto",
        description="What runs the forward pass: 'torch' (sentence-transformers as is) or 'openvino' "
        "(the same model exported locally to ONNX once, cached, run by the OpenVINO runtime; CPU only; "
        "2-4x faster per query and 1.3-2.5x per batch on CPU, see benchmarks/embeddings.py). "
        "'auto': openvino on CPU, torch on CUDA.",
    )
    precision: Literal["auto", "f32"] = Field(
        "auto",
        description="OpenVINO inference precision: 'auto' is OpenVINO's pick for the CPU (bf16 where it "
        "has AVX512-BF16 or AMX, about 2x the f32 throughput, cosine to torch's vectors > 0.9999); "
        "'f32' reproduces torch's vectors. Ignored by backend 'torch'.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where the OpenVINO export is kept and reused (default: "
        "$XDG_CACHE_HOME/llmops/embeddings, i.e. ~/.cache/llmops/embeddings); one entry per model and "
        "library versions. Unwritable: exported at every start instead.",
    )
    max_batch_size: int = Field(32, ge=1, le=4096, description="Most requests encoded in one forward pass.")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description="How long the first request of a batch waits for others to join. 0: none; "
        "requests that queue while a batch runs still go in the next one (benchmarks/embeddings.py: "
        "5 ms doubles a lone query's latency and adds no throughput).",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads one replica encodes with, torch's intra-op threads or OpenVINO's inference "
        "threads (default: Ray's choice, the replica's num_cpus rounded down, at least 1).",
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
        if self.backend == "openvino" and self.device != "cpu":
            raise ValueError(f"backend 'openvino' runs on device 'cpu' only, not {self.device!r}")
        if self.deployment.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests}) must be >= "
                f"max_batch_size ({self.max_batch_size}), or batches can never fill"
            )
        return self
