"""What a RAG model adds to a generation stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Citation:
    index: int  # the [n] the prompt numbered the passage with
    doc_id: str
    chunk_id: str
    score: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "doc_id": self.doc_id,
            "chunk_id": self.chunk_id,
            "score": self.score,
            "source": self.source,
        }


@dataclass(frozen=True)
class RagMeta:
    """The last item of a RAG stream."""

    citations: tuple[Citation, ...]
    chunks_retrieved: int
    chunks_dropped: int
    #: the cited chunks' texts, in citation order (for the inference table; never sent to clients)
    texts: tuple[str, ...] = ()
