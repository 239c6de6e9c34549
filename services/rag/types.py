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
    # the indirect-injection scan of the retrieved chunks (services.rag.context_scan); the
    # gateway turns these into the ``context.rag_context`` guardrail decision (decision_of)
    #: the configured action (drop | flag); None: the scan is off for this model
    context_action: str | None = None
    #: retrieved chunks scanned (stored ingestion scores count: they were scanned then)
    context_scanned: int = 0
    #: of those, how many the classifier scored now (no stored score)
    context_rescored: int = 0
    #: ids of the chunks at or over the threshold, in rank order
    context_flagged: tuple[str, ...] = ()
    #: chunks left out of the prompt (action drop, or on_error closed)
    context_dropped: int = 0
    #: the highest prompt_injection score seen (None: nothing scored)
    context_score: float | None = None
    #: error_open | error_closed when the classifier failed; None otherwise
    context_error: str | None = None
    #: seconds the scan took (the gateway's guardrails stage)
    context_seconds: float = 0.0
