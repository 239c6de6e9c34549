"""The indirect prompt-injection scan of a RAG model's retrieved chunks.

Retrieved documents are untrusted input: a chunk that says "Ignore all previous
instructions and ..." reaches the generator inside the context although the user
never typed it (OWASP LLM01, indirect injection). The hardened prompt layout
(:mod:`services.rag.prompt`) makes such text less effective; this scan keeps it
out of the prompt altogether. Per request (``RagServer._prepare``):

1. the search has already left out the chunks flagged at ingestion when the
   model's config says so (``exclude_flagged``: an indexed filter in the engine,
   see the collection's ``scan_injection``);
2. every retrieved chunk gets a prompt_injection score: the one stored in its
   payload at ingestion, else one batched classifier call for all the rest, in a
   worker thread (the classifier is CPU-bound; the event loop keeps serving);
3. chunks at or over the threshold are left out before the context is fitted and
   the prompt built (``action: drop``), or kept and recorded (``action: flag``);
4. the outcome rides on :class:`~services.rag.types.RagMeta`, which the gateway
   turns into the ``context.rag_context`` guardrail decision with
   :func:`decision_of` (metrics, request log, ``X-Guardrails``).

A classifier failure is ``on_error``'s business: closed leaves the chunks it could
not score out of the prompt, open keeps them; stored scores still decide theirs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.guardrails.base import Scorer
from services.guardrails.chain import Decision
from services.guardrails.config import RagContextConfig
from services.rag.types import RagMeta
from services.retrieval.types import Hit

__all__ = ["CHECK", "LABEL", "ContextScanner", "ScanResult", "decision_of", "meta_fields"]

logger = logging.getLogger("llmops.rag")

#: the decision's check name (metrics, X-Guardrails ``context.rag_context=...``, logs)
CHECK = "rag_context"
#: the finding's label
LABEL = "prompt_injection"


@dataclass(frozen=True)
class ScanResult:
    """What the scan did to one request's retrieved hits."""

    kept: tuple[Hit, ...]  # what the context may use, in the order retrieved
    scanned: int
    rescored: int  # scored now (no stored ingestion score)
    flagged: tuple[str, ...]  # chunk ids at or over the threshold, in the order retrieved
    dropped: int
    score: float | None  # the highest score seen
    error: str | None  # error_open | error_closed
    seconds: float


def _default_scorer() -> Scorer:
    from services.retrieval.chunking import injection_scorer

    return injection_scorer(None)


class ContextScanner:
    """A RAG model's context scan: its config and its (lazily loaded) classifier.

    ``scorer`` / ``factory``: the classifier to use, or how to load it (default: the
    shipped prompt_injection classifier); tests pass a fake.
    """

    def __init__(
        self,
        config: RagContextConfig | dict[str, Any] | None,
        scorer: Scorer | None = None,
        factory: Callable[[], Scorer] | None = None,
    ) -> None:
        self.config = RagContextConfig.model_validate(config or {})
        self._scorer = scorer
        self._factory = factory or _default_scorer
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def scorer(self) -> Scorer:
        """The classifier, loaded on first use (blocking: call from a worker thread)."""
        with self._lock:
            if self._scorer is None:
                self._scorer = self._factory()
            return self._scorer

    @property
    def threshold(self) -> float:
        """The configured threshold, else the classifier card's (loads the classifier)."""
        return self.config.threshold if self.config.threshold is not None else self.scorer.threshold

    def warm_up(self) -> None:
        """Load the classifier now: the first request must not pay for it, and a missing
        artifact must fail the replica at start rather than every request."""
        if self.enabled:
            self.scorer.scores(["warm-up"])

    def _score(self, texts: list[str]) -> tuple[list[float], float]:
        """Scores of ``texts`` (one batched call) and the threshold, in the worker thread."""
        scores = [float(s) for s in self.scorer.scores(texts)] if texts else []
        if len(scores) != len(texts):
            raise ValueError(f"the classifier returned {len(scores)} scores for {len(texts)} chunks")
        return scores, self.threshold

    async def scan(self, hits: Sequence[Hit]) -> ScanResult:
        """Score ``hits`` (stored ingestion scores reused) and apply the configured action."""
        t0 = time.perf_counter()
        scores: list[float | None] = [h.chunk.injection_score for h in hits]
        todo = [i for i, s in enumerate(scores) if s is None]
        error: str | None = None
        threshold: float | None = self.config.threshold
        if todo or threshold is None:
            try:
                fresh, threshold = await asyncio.to_thread(self._score, [hits[i].chunk.text for i in todo])
                for i, s in zip(todo, fresh, strict=True):
                    scores[i] = s
            except Exception:
                logger.warning(
                    "the RAG context scan failed (on_error: %s)", self.config.on_error, exc_info=True
                )
                error = "error_open" if self.config.on_error == "open" else "error_closed"
        kept: list[Hit] = []
        flagged: list[str] = []
        for hit, score in zip(hits, scores, strict=True):
            if score is None or threshold is None:  # the classifier failed on it
                if error == "error_open":
                    kept.append(hit)
                continue
            if score >= threshold:
                flagged.append(hit.chunk.id)
                if self.config.action == "drop":
                    continue
            kept.append(hit)
        known = [s for s in scores if s is not None]
        return ScanResult(
            kept=tuple(kept),
            scanned=len(known),
            rescored=len(todo) if error is None else 0,
            flagged=tuple(flagged),
            dropped=len(hits) - len(kept),
            score=max(known) if known else None,
            error=error,
            seconds=time.perf_counter() - t0,
        )


def meta_fields(config: RagContextConfig, result: ScanResult | None) -> dict[str, Any]:
    """The :class:`RagMeta` fields of a scan (none when the scan is off)."""
    if result is None:
        return {}
    return {
        "context_action": config.action,
        "context_scanned": result.scanned,
        "context_rescored": result.rescored,
        "context_flagged": result.flagged,
        "context_dropped": result.dropped,
        "context_score": result.score,
        "context_error": result.error,
        "context_seconds": result.seconds,
    }


def decision_of(meta: RagMeta) -> Decision | None:
    """The ``context.rag_context`` guardrail decision of a RAG answer; None: the scan is off.

    ``result``: ``dropped`` (action drop) or ``flagged`` (action flag) when a chunk was at
    or over the threshold, ``error_closed`` / ``error_open`` when the classifier failed
    (the more severe of the two wins), else ``pass``. ``labels``: ``["prompt_injection"]``
    when something was found. ``score``: the highest score of the retrieved chunks whenever
    any was scored, also on a pass (how close the context came to the threshold).
    """
    if meta.context_action is None:
        return None
    d = Decision(CHECK, "context", score=meta.context_score, seconds=meta.context_seconds)
    if meta.context_flagged:
        d.merge("dropped" if meta.context_action == "drop" else "flagged", (LABEL,), None, 0.0)
    if meta.context_error is not None:
        d.merge(meta.context_error, (), None, 0.0)
    return d
