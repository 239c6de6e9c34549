"""The generation deployment: one Serve deployment per configured model.

It owns what every engine needs done the same way: rendering chat prompts,
counting prompt tokens against the context window, rejecting sampling
parameters the engine cannot honour, defaulting ``max_tokens``, and aborting
the engine's work when the caller goes away (Serve cancels the call when the
HTTP client disconnects; closing the engine's iterator aborts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from pydantic import TypeAdapter
from ray import serve

from monitoring.cost import CostModel, EngineBusyMeter
from monitoring.metrics import MetricSet
from monitoring.runtime import observability
from monitoring.tracing import start_span
from services.embeddings.config import EmbeddingModelConfig
from services.errors import ContextLengthExceededError
from services.generation.config import GenerationModelConfig, config_digest
from services.generation.engines import build_engine
from services.generation.protocol import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    GenerationStats,
    check_supported,
)

logger = logging.getLogger("llmops.generation")
_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(GenerationModelConfig)
#: how often a replica passes its engine's gauges (running, waiting, KV cache) to metrics
ENGINE_STATS_INTERVAL_S = 2.0


class GenerationServer:
    """Engine-agnostic request handling; the Serve deployment wraps this class."""

    def __init__(
        self,
        model_config: dict[str, Any],
        embeddings: list[dict[str, Any]],
        metrics: MetricSet | None = None,
    ) -> None:
        self.config = _MODEL_ADAPTER.validate_python(model_config)
        self.engine = build_engine(self.config, [EmbeddingModelConfig.model_validate(e) for e in embeddings])
        self.metrics = metrics
        self.cost = CostModel(self.config.pricing) if self.config.pricing is not None else None
        self.busy = EngineBusyMeter()  # apportions engine busy time (GPU-hour pricing)
        self._ids = itertools.count()
        # request counters, for tests and the running-requests gauge
        self.stats = {"active": 0, "completed": 0, "aborted": 0, "failed": 0}

    async def start(self) -> None:
        await self.engine.start()

    def info(self) -> dict[str, Any]:
        return {
            "id": self.config.name,
            "kind": "chat",
            "version": self.config.version,
            "config_digest": config_digest(self.config),
            "engine": self.engine.kind,
            "context_length": self.engine.context_length,
            "supported_params": sorted(self.engine.supported_params),
        }

    def prepare(self, request: GenerationRequest) -> tuple[GenerationRequest, int]:
        """Validate against the engine and the context window; fill in max_tokens.

        Returns the request to run and its prompt token count.
        """
        check_supported(request.params, self.engine.supported_params, self.engine.kind)
        prompt = (
            request.prompt if request.prompt is not None else self.engine.render_chat(request.messages or ())
        )
        prompt_tokens = self.engine.count_tokens(prompt)
        limit = self.engine.context_length
        max_tokens = request.params.max_tokens
        if prompt_tokens >= limit or (max_tokens is not None and prompt_tokens + max_tokens > limit):
            asked = prompt_tokens + (max_tokens or 0)
            detail = f"{prompt_tokens} in the prompt" + (
                f", {max_tokens} in the completion" if max_tokens is not None else ""
            )
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{asked} tokens ({detail}). Please reduce the length of the messages or completion.",
                param="messages" if request.messages is not None else "prompt",
                value=asked,
            )
        if max_tokens is None:
            max_tokens = min(self.config.default_max_tokens, limit - prompt_tokens)
        return replace(request, params=replace(request.params, max_tokens=max_tokens)), prompt_tokens

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncGenerator[GenerationChunk | GenerationStats, None]:
        """Validate, then stream the engine's chunks and, last, a :class:`GenerationStats`;
        closing this aborts the engine's work."""
        prepared, prompt_tokens = self.prepare(request)
        start_wall, start = time.time(), time.perf_counter()
        queue_s = max(0.0, start_wall - request.dispatched_at) if request.dispatched_at else 0.0
        model, metrics = self.config.name, self.metrics
        span = start_span(
            "generate",
            request.trace,
            {"llmops.model": model, "llmops.engine": self.engine.kind, "llmops.queue_s": queue_s},
        )
        meter_key = f"{request.request_id}#{next(self._ids)}"
        self.busy.start(meter_key)
        self.stats["active"] += 1
        outcome = "aborted"  # unless the loop ends or raises: the caller went away
        first_at: float | None = None
        last = start
        completion_tokens = 0
        try:
            async with contextlib.aclosing(self.engine.generate(prepared)) as chunks:
                async for chunk in chunks:
                    now = time.perf_counter()
                    if first_at is None:
                        first_at = time.time()
                    elif metrics is not None and chunk.num_tokens:
                        # a chunk may carry several tokens: each gets an equal share of the gap
                        gap = (now - last) / chunk.num_tokens
                        for _ in range(chunk.num_tokens):
                            metrics.observe_inter_token(model, gap)
                    last = now
                    completion_tokens += chunk.num_tokens
                    yield chunk
            outcome = "completed"
        except Exception as exc:
            outcome = "failed"
            span.record_exception(exc)
            raise
        finally:
            busy_share = self.busy.finish(meter_key)
            self.stats["active"] -= 1
            self.stats[outcome] += 1
            span.set_attribute("llmops.outcome", outcome)
            span.set_attribute("llmops.completion_tokens", completion_tokens)
            span.end()
            if metrics is not None:
                metrics.observe_queue(model, queue_s)
        cost = None
        if self.cost is not None:
            cost = self.cost.cost_usd(prompt_tokens, completion_tokens, busy_share)
        yield GenerationStats(
            queue_s=queue_s,
            first_token_at=first_at,
            engine_s=time.perf_counter() - start,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
        )

    async def publish_engine_stats(self) -> None:
        """Pass the engine's gauges to metrics: vLLM's own scheduler numbers (running,
        waiting, KV-cache usage); for other engines running/waiting from what they report,
        else the requests this replica is serving."""
        if self.metrics is None:
            return
        self.metrics.refresh()
        engine_stats = getattr(self.engine, "engine_stats", None)
        stats: dict[str, float] = await engine_stats() if engine_stats is not None else {}
        self.metrics.set_engine_stats(
            self.config.name,
            self.engine.kind,
            kv_cache_usage=stats.get("kv_cache_usage_ratio"),
            running=int(stats.get("running_requests", self.stats["active"])),
            waiting=int(stats.get("waiting_requests", 0)),
        )


@serve.deployment(name="generation")
class GenerationDeployment:
    """Serve wrapper of :class:`GenerationServer` (one per configured model)."""

    async def __init__(  # type: ignore[misc]
        self,
        model_config: dict[str, Any],
        embeddings: list[dict[str, Any]],
        monitoring: dict[str, Any] | None = None,
    ) -> None:
        obs = observability(monitoring)
        self.server = GenerationServer(model_config, embeddings, obs.metrics)
        await self.server.start()
        self._gauges = asyncio.create_task(self._publish_gauges()) if obs.metrics is not None else None
        logger.info("generation model %s ready (engine %s)", self.server.config.name, self.server.engine.kind)

    async def _publish_gauges(self) -> None:
        while True:
            try:
                await self.server.publish_engine_stats()
            except Exception:  # a gauge must never take the replica down
                logger.warning("could not read engine stats", exc_info=True)
            await asyncio.sleep(ENGINE_STATS_INTERVAL_S)

    async def info(self) -> dict[str, Any]:
        return self.server.info()

    async def generate_stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[GenerationChunk | GenerationStats]:
        """Streaming call (``handle.options(stream=True)``): one chunk per message, then the stats."""
        async for chunk in self.server.stream(request):
            yield chunk

    async def generate(self, request: GenerationRequest) -> list[GenerationChunk | GenerationStats]:
        """Unary call: every chunk of the completion at once, then the stats."""
        return [chunk async for chunk in self.server.stream(request)]

    async def count_chat_tokens(self, messages: tuple[ChatMessage, ...]) -> int:
        """Prompt tokens of ``messages`` under this model's chat template (RAG budgeting)."""
        return self.server.engine.count_tokens(self.server.engine.render_chat(messages))

    async def stats(self) -> dict[str, int]:
        """Request counters: active, completed, aborted (caller went away), failed."""
        return dict(self.server.stats)

    async def check_health(self) -> None:
        await self.server.engine.check_health()

    async def __del__(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
        with contextlib.suppress(Exception):
            await self.server.engine.shutdown()
