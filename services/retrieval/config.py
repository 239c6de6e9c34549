"""Config of the vector store and its collections."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.deployment_config import DeploymentSettings, StrictModel, repeated

_COLLECTION = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PayloadIndexType = Literal["keyword", "integer", "float", "bool", "datetime", "text"]


class VectorStoreConfig(StrictModel):
    """Where vectors live: embedded local Qdrant (``path``) or a Qdrant server (``url``)."""

    url: str | None = Field(
        None, description="Qdrant server URL (e.g. http://qdrant:6333); unset: embedded local mode."
    )
    api_key: str | None = Field(
        None, description="Qdrant server API key (prefer LLMOPS_RETRIEVAL__VECTOR_STORE__API_KEY)."
    )
    path: str | None = Field(None, description="Local-mode directory (default: <data_dir>/qdrant).")
    timeout_s: float = Field(10.0, gt=0, le=600, description="Per-call timeout against a server.")
    prefer_grpc: bool = Field(False, description="Talk gRPC to the server (port 6334).")

    @model_validator(mode="after")
    def _one_mode(self) -> VectorStoreConfig:
        if self.url and self.path:
            raise ValueError("set either vector_store.url (server) or vector_store.path (local), not both")
        return self


class QuantizationConfig(StrictModel):
    kind: Literal["scalar", "product"] = Field(description="int8 scalar, or product quantization.")
    always_ram: bool = Field(True, description="Keep quantized vectors in RAM.")
    product_compression: Literal["x4", "x8", "x16", "x32", "x64"] = Field(
        "x16", description="Product quantization compression ratio."
    )


class CollectionConfig(StrictModel):
    """One collection: its vectors, index settings and chunking."""

    name: str = Field(description="Collection name (lower-case letters, digits, _ and -).")
    embedding_model: str | None = Field(
        None, description="Embedding model (under 'embeddings'); default: the first."
    )
    distance: Literal["cosine", "dot", "euclid", "manhattan"] = Field(
        "cosine", description="Dense vector distance."
    )
    hnsw_m: int = Field(
        16, ge=4, le=128, description="HNSW edges per node (server only; local mode is exact)."
    )
    hnsw_ef_construct: int = Field(100, ge=4, le=4096, description="HNSW build-time beam (server only).")
    search_ef: int = Field(128, ge=4, le=4096, description="HNSW search-time beam (server only).")
    quantization: QuantizationConfig | None = Field(
        None, description="Optional vector quantization (server only)."
    )
    on_disk: bool = Field(False, description="Keep original vectors on disk (server only).")
    payload_indexes: dict[str, PayloadIndexType] = Field(
        default_factory=dict, description="Payload fields to index for filtering (server only), by type."
    )
    hybrid: bool = Field(True, description="Store a BM25-style sparse vector beside the dense one.")
    chunk_tokens: int = Field(
        0, ge=0, le=8192, description="Chunk size in embedding tokens (0: the embedding model's limit)."
    )
    chunk_overlap: int = Field(32, ge=0, le=4096, description="Tokens shared by consecutive chunks.")
    required_metadata: list[str] = Field(
        default_factory=list, description="Metadata fields every document must have (else quarantined)."
    )
    min_text_chars: int = Field(1, ge=1, le=1_000_000, description="Shorter documents are quarantined.")
    max_text_chars: int = Field(
        2_000_000, ge=1, le=100_000_000, description="Longer documents are quarantined."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _COLLECTION.match(v):
            raise ValueError(f'Got "{v}" for name; use lower-case letters, digits, _ and - (at most 63)')
        return v

    @model_validator(mode="after")
    def _overlap(self) -> CollectionConfig:
        if self.chunk_tokens and self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        return self


def _default_collections() -> list[CollectionConfig]:
    return [CollectionConfig(name="docs")]


class RetrievalConfig(StrictModel):
    """The vector store, its collections and the retrieval deployment."""

    enabled: bool = Field(True, description="Serve /v1/retrieve, collections and RAG models.")
    vector_store: VectorStoreConfig = Field(
        default_factory=VectorStoreConfig, description="Qdrant connection."
    )
    collections: list[CollectionConfig] = Field(
        default_factory=_default_collections, description="Collections served (created when missing)."
    )
    max_top_k: int = Field(100, ge=1, le=10_000, description="Largest top_k a request may ask for.")
    deployment: DeploymentSettings = Field(
        default_factory=lambda: DeploymentSettings(num_cpus=0.25, max_ongoing_requests=64),
        description="Replicas, autoscaling and resources of the retrieval deployment.",
    )

    @field_validator("collections")
    @classmethod
    def _unique(cls, v: list[CollectionConfig]) -> list[CollectionConfig]:
        names = [c.name for c in v]
        dupes = repeated(names)
        if dupes:
            raise ValueError(f"collection names must be unique; repeated: {dupes}")
        return v

    def collection(self, name: str) -> CollectionConfig | None:
        return next((c for c in self.collections if c.name == name), None)
