"""Data types of retrieval, shared by the online path and batch ingestion.

Chunk ids are deterministic (DESIGN.md): ``uuid5(NAMESPACE, f"{tenant}/{doc_id}/{chunk_index}/{content_hash}")``,
so re-ingesting the same document writes the same points (idempotent) and a
changed document yields new ids whose stale predecessors are then deleted.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

# fixed namespace for chunk ids; never change it (ids would change with it)
CHUNK_NAMESPACE = uuid.UUID("6f0c2a4e-8b1d-5f3a-9c7e-2d4b6a8c0e1f")
#: payload keys of the ingestion-time prompt-injection scan (absent on chunks never scanned)
INJECTION_SCORE = "injection_score"
INJECTION_FLAGGED = "injection_flagged"


def content_hash(text: str) -> str:
    """sha256 of a chunk's text (hex, first 32 characters)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chunk_id(tenant: str, doc_id: str, chunk_index: int, text_hash: str) -> str:
    """The deterministic point id of one chunk."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{tenant}/{doc_id}/{chunk_index}/{text_hash}"))


@dataclass(frozen=True)
class Document:
    """A source document before chunking."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # file path or URL it came from


@dataclass(frozen=True)
class Chunk:
    """One chunk as stored: its payload is everything but the vectors."""

    id: str
    doc_id: str
    chunk_index: int
    text: str
    tenant: str
    content_hash: str
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_chunks: int = 1  # how many chunks the document has (for replace-on-change)
    #: the prompt_injection classifier's score at ingestion (None: never scanned, e.g. the
    #: collection's scan_injection is off, or it was written before the scan existed)
    injection_score: float | None = None
    #: the score was at or over the ingestion threshold: searches with exclude_flagged leave it out
    injection_flagged: bool | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "doc_id": self.doc_id,
            "chunk_index": self.chunk_index,
            "text": self.text,
            "tenant": self.tenant,
            "content_hash": self.content_hash,
            "source": self.source,
            "metadata": self.metadata,
            "doc_chunks": self.doc_chunks,
        }
        # only scanned chunks carry the fields: a missing flag reads as "not flagged" everywhere
        # (the exclusion is a must_not on flag == true, which a point without the field passes)
        if self.injection_score is not None:
            out[INJECTION_SCORE] = self.injection_score
            out[INJECTION_FLAGGED] = bool(self.injection_flagged)
        return out


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float


@dataclass(frozen=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class SearchResult:
    """What a search returns: the hits, and where its time went (for per-stage latency)."""

    hits: list[Hit]
    embed_s: float  # embedding the query (the embedding deployment round trip)
    retrieve_s: float  # the vector-store query
