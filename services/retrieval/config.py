"""Config of the vector store and its collections."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.deployment_config import DeploymentSettings, StrictModel, repeated

_COLLECTION = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
PayloadIndexType = Literal["keyword", "integer", "float", "bool", "datetime", "text"]


FilterStrategy = Literal["pre", "in", "post"]
_SERVER_ONLY = ("api_key", "timeout_s", "prefer_grpc")


class VectorStoreConfig(StrictModel):
    """Where vectors live: the embedded Qdrant Edge engine (``path``) or a Qdrant server (``url``)."""

    url: str | None = Field(
        None,
        description="Qdrant server URL (e.g. http://qdrant:6333); unset: the embedded Qdrant Edge engine.",
    )
    api_key: str | None = Field(
        None, description="Qdrant server API key (prefer LLMOPS_RETRIEVAL__VECTOR_STORE__API_KEY)."
    )
    path: str | None = Field(None, description="Embedded store directory (default: <data_dir>/qdrant).")
    timeout_s: float = Field(10.0, gt=0, le=600, description="Per-call timeout against a server.")
    prefer_grpc: bool = Field(False, description="Talk gRPC to the server (port 6334).")

    @model_validator(mode="after")
    def _one_mode(self) -> VectorStoreConfig:
        if self.url and self.path:
            raise ValueError("set either vector_store.url (server) or vector_store.path (embedded), not both")
        if not self.url:
            defaults = type(self).model_fields
            stray = [n for n in _SERVER_ONLY if getattr(self, n) != defaults[n].default]
            if stray:
                raise ValueError(
                    f"vector_store.{stray[0]} applies only to a Qdrant server: set vector_store.url, "
                    f"or remove {', '.join('vector_store.' + n for n in stray)} (the embedded engine has none)"
                )
        return self


class QuantizationConfig(StrictModel):
    """Compressed copies of the dense vectors that HNSW search scores first (originals rescore)."""

    kind: Literal["scalar", "product", "binary"] = Field(
        description="int8 scalar (4x smaller), product (x4..x64), or binary (1-2 bits per dimension)."
    )
    always_ram: bool = Field(True, description="Keep the quantized vectors in RAM.")
    scalar_quantile: float | None = Field(
        None,
        gt=0.5,
        le=1.0,
        description="scalar: quantile of values kept in range (default: the engine's, 0.99).",
    )
    product_compression: Literal["x4", "x8", "x16", "x32", "x64"] = Field(
        "x16", description="product: compression ratio."
    )
    binary_encoding: Literal["one_bit", "one_and_half_bits", "two_bits"] = Field(
        "one_bit", description="binary: bits stored per dimension."
    )
    rescore: bool = Field(True, description="Re-score the oversampled candidates with the original vectors.")
    oversampling: float = Field(
        2.0, ge=1.0, le=16.0, description="Candidates fetched per result before rescoring (x top_k)."
    )

    @model_validator(mode="after")
    def _kind_settings(self) -> QuantizationConfig:
        set_ = self.model_fields_set
        for name, kind in (
            ("scalar_quantile", "scalar"),
            ("product_compression", "product"),
            ("binary_encoding", "binary"),
        ):
            if name in set_ and self.kind != kind:
                raise ValueError(f"quantization.{name} applies to kind: {kind}, not kind: {self.kind}")
        return self


class CollectionConfig(StrictModel):
    """One collection: its vectors, index settings and chunking. Every setting takes effect on both backends."""

    name: str = Field(description="Collection name (lower-case letters, digits, _ and -).")
    embedding_model: str | None = Field(
        None, description="Embedding model (under 'embeddings'); default: the first."
    )
    distance: Literal["cosine", "dot", "euclid", "manhattan"] = Field(
        "cosine", description="Dense vector distance."
    )
    hnsw_m: int = Field(16, ge=4, le=128, description="HNSW edges per node.")
    hnsw_ef_construct: int = Field(100, ge=4, le=4096, description="HNSW build-time beam.")
    search_ef: int = Field(
        128, ge=4, le=4096, description="HNSW search-time beam (hnsw_ef) unless a request sets one."
    )
    full_scan_threshold_kb: int = Field(
        10_000,
        ge=1,
        le=100_000_000,
        description="A filtered search whose candidates' vectors are smaller than this (KB) scans them exactly "
        "through the payload index instead of walking HNSW (Qdrant's full_scan_threshold).",
    )
    indexing_threshold_kb: int = Field(
        10_000,
        ge=1,
        le=100_000_000,
        description="Segments larger than this (KB of vectors) get an HNSW index when optimized; smaller "
        "ones are searched exactly (Qdrant's indexing_threshold).",
    )
    quantization: QuantizationConfig | None = Field(None, description="Optional vector quantization.")
    on_disk: bool = Field(False, description="Keep the original dense vectors on disk (mmap) instead of RAM.")
    on_disk_payload: bool = Field(True, description="Keep payloads on disk (mmap), read when returned.")
    payload_indexes: dict[str, PayloadIndexType] = Field(
        default_factory=dict,
        description="Metadata fields to index for filtering, by type (tenant and doc_id are always indexed).",
    )
    filter_strategy: FilterStrategy = Field(
        "in",
        description="How filtered searches run unless a request says: pre (exact search over the filtered "
        "set), in (HNSW that follows the payload index, ACORN for selective filters), post (HNSW on the "
        "tenant, then the filter on post_filter_factor x top_k candidates).",
    )
    post_filter_factor: int = Field(
        10, ge=1, le=1000, description="Candidates fetched per result by the post filter strategy."
    )
    hybrid: bool = Field(True, description="Store a BM25-style sparse vector beside the dense one.")
    rrf_k: int = Field(
        2,
        ge=1,
        le=1000,
        description="Reciprocal Rank Fusion constant of hybrid search (Qdrant's default: 2).",
    )
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
    scan_injection: bool = Field(
        False,
        description="Score every chunk with the prompt_injection classifier at ingestion (API writes and "
        "`llmops ingest`) and store injection_score and injection_flagged in its payload, so searches "
        "with exclude_flagged leave flagged chunks out (an indexed filter) and RAG models reuse the "
        "score instead of re-scoring. Off by default: it needs the trained classifier artifact, costs "
        "about a third of batch ingestion throughput on CPU (a MiniLM pass per chunk beside the "
        "embedding's), and flags the odd benign chunk (1 to 4 of 732 SQuAD paragraphs at the card's "
        "threshold, by artifact), which exclude_flagged then hides from search.",
    )
    injection_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="scan_injection: score at or above which a chunk is flagged (default: the "
        "classifier card's threshold). RAG models compare the stored score to their own threshold.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _COLLECTION.match(v):
            raise ValueError(f'Got "{v}" for name; use lower-case letters, digits, _ and - (at most 63)')
        return v

    @field_validator("payload_indexes")
    @classmethod
    def _index_fields(cls, v: dict[str, str]) -> dict[str, str]:
        for f in v:
            if not _FIELD.match(f):
                raise ValueError(
                    f'Got "{f}" in payload_indexes; a metadata field name is letters, digits, _ and - (at most 64)'
                )
        return v

    @model_validator(mode="after")
    def _overlap(self) -> CollectionConfig:
        if self.chunk_tokens and self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        if self.injection_threshold is not None and not self.scan_injection:
            raise ValueError("injection_threshold applies only with scan_injection: true")
        q = self.quantization
        if q is not None and q.kind == "binary" and self.distance in ("euclid", "manhattan"):
            raise ValueError(
                f"quantization.kind binary needs distance cosine or dot (Hamming distance approximates angles); "
                f"got distance {self.distance}"
            )
        return self

    def text_fields(self) -> list[str]:
        """Metadata fields with a full-text index (the only ones a text filter may use)."""
        return [f for f, kind in self.payload_indexes.items() if kind == "text"]


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
    local_query_embedding: bool = Field(
        True,
        description="Embed a search query inside the retrieval replica, with the same model, backend "
        "and precision as the embedding deployment, when that model runs on CPU: one Serve hop "
        "less (about 3 ms, benchmarks/retrieval.py). Documents always go through the embedding "
        "deployment; a CUDA model is always called there.",
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
