"""RAG models: retrieve from a collection, build the hardened prompt, generate, cite.

A RAG deployment speaks the same streaming interface as a generation deployment
(``generate`` / ``generate_stream``), so the gateway serves it like any chat
model; its stream ends with a :class:`RagMeta` item carrying the citations and
how many retrieved chunks the context budget dropped.

With the model's guardrail chain's ``rag_context`` scan on, the retrieved chunks
are scanned for indirect prompt injection before the context is fitted
(:mod:`services.rag.context_scan`); the scan's time is the ``guardrails`` stage.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

from ray import serve

from monitoring.runtime import observability
from monitoring.tracing import carrier_of, start_span
from services.errors import InvalidRequestError
from services.generation.config import config_digest
from services.generation.protocol import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    GenerationStats,
    StageTimings,
)
from services.guardrails.base import Scorer
from services.rag.config import RagModelConfig
from services.rag.context_scan import ContextScanner, ScanResult, meta_fields
from services.rag.prompt import fit_context, new_boundary
from services.rag.types import Citation, RagMeta
from services.retrieval.types import SearchResult

logger = logging.getLogger("llmops.rag")


def question_of(request: GenerationRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    users = [m.content for m in request.messages or () if m.role == "user"]
    if not users or not users[-1].strip():
        raise InvalidRequestError("a RAG model needs a user message with the question", param="messages")
    return users[-1]


class RagServer:
    def __init__(
        self,
        config: dict[str, Any],
        retrieval: Any,
        generator: Any,
        rag_context: dict[str, Any] | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        """``rag_context``: the model's guardrail chain's ``RagContextConfig`` (dict form);
        ``scorer``: the prompt_injection classifier to scan with (default: the shipped one)."""
        self.config = RagModelConfig.model_validate(config)
        self.retrieval = retrieval
        self.generator = generator
        self.context_scan = ContextScanner(rag_context, scorer)
        self._gen_info: dict[str, Any] | None = None

    async def info(self) -> dict[str, Any]:
        if self._gen_info is None:
            self._gen_info = await self.generator.info.remote()
        return {
            "id": self.config.name,
            "kind": "chat",
            "version": self.config.version,
            # what is served depends on the generator's config as much as on this one
            "config_digest": hashlib.sha256(
                (config_digest(self.config) + self._gen_info["config_digest"]).encode()
            ).hexdigest()[:16],
            "engine": f"rag:{self._gen_info['engine']}",
            "context_length": self._gen_info["context_length"],
            "collection": self.config.collection,
            "generator": self.config.generator,
        }

    async def _prepare(
        self, request: GenerationRequest, trace: dict[str, str]
    ) -> tuple[GenerationRequest, RagMeta, StageTimings]:
        cfg = self.config
        question = question_of(request)
        start = time.perf_counter()
        found: SearchResult = await self.retrieval.search.remote(
            cfg.collection,
            request.tenant,
            question,
            top_k=cfg.top_k,
            score_threshold=cfg.score_threshold,
            hybrid=cfg.hybrid,
            trace=trace,
            exclude_flagged=self.context_scan.config.excludes_flagged,
        )
        hits = found.hits
        scan: ScanResult | None = None
        if self.context_scan.enabled:
            scan = await self.context_scan.scan(hits)
        usable = scan.kept if scan is not None else hits
        info = await self.info()
        reserve = request.params.max_tokens or cfg.reserve_completion_tokens
        budget = max(int(info["context_length"]) - reserve, 1)

        async def count(messages: tuple[ChatMessage, ...]) -> int:
            return int(await self.generator.count_chat_tokens.remote(messages))

        fitted = await fit_context(cfg.instructions, usable, question, new_boundary(), count, budget)
        meta = RagMeta(
            citations=tuple(
                Citation(i + 1, h.chunk.doc_id, h.chunk.id, h.score, h.chunk.source)
                for i, h in enumerate(fitted.hits)
            ),
            chunks_retrieved=len(hits),
            chunks_dropped=fitted.dropped,
            texts=tuple(h.chunk.text for h in fitted.hits),
            **meta_fields(self.context_scan.config, scan),
        )
        # the search round trip and fitting the context count as retrieval; embedding does not,
        # nor does the context scan (the gateway's guardrails stage, with the input checks)
        guard_s = scan.seconds if scan is not None else 0.0
        stages = {
            "embed": found.embed_s,
            "retrieve": max(0.0, time.perf_counter() - start - found.embed_s - guard_s),
        }
        if scan is not None:
            stages["guardrails"] = guard_s
        timings = StageTimings(stages)
        prepared = replace(
            request,
            prompt=None,
            messages=fitted.messages,
            context=tuple(h.chunk.text for h in fitted.hits),
            dispatched_at=time.time(),
            trace=trace,
        )
        return prepared, meta, timings

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncGenerator[GenerationChunk | GenerationStats | StageTimings | RagMeta, None]:
        """Retrieval's timings, the generator's stream (chunks, then its stats), then the citations."""
        span = start_span("rag", request.trace, {"llmops.model": self.config.name})
        try:
            prepared, meta, timings = await self._prepare(request, carrier_of(span))
            yield timings
            gen = self.generator.generate_stream.options(stream=True).remote(prepared)
            async for chunk in gen:
                yield chunk
        finally:
            span.end()
        yield meta


@serve.deployment(name="rag")
class RagDeployment:
    """Serve wrapper of :class:`RagServer`, with the generation deployment's interface."""

    def __init__(
        self,
        config: dict[str, Any],
        retrieval: Any,
        generator: Any,
        monitoring: dict[str, Any] | None = None,
        rag_context: dict[str, Any] | None = None,
    ) -> None:
        observability(monitoring)  # tracing, for the rag span
        self.server = RagServer(config, retrieval, generator, rag_context)
        self.server.context_scan.warm_up()  # a missing classifier fails the replica, not requests

    async def info(self) -> dict[str, Any]:
        return await self.server.info()

    async def generate_stream(
        self, request: GenerationRequest
    ) -> AsyncGenerator[GenerationChunk | GenerationStats | StageTimings | RagMeta, None]:
        async for item in self.server.stream(request):
            yield item

    async def generate(
        self, request: GenerationRequest
    ) -> list[GenerationChunk | GenerationStats | StageTimings | RagMeta]:
        return [item async for item in self.server.stream(request)]
