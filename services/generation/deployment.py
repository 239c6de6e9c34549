"""The generation deployment: one Serve deployment per configured model.

It owns what every engine needs done the same way: rendering chat prompts,
counting prompt tokens against the context window, rejecting sampling
parameters the engine cannot honour, defaulting ``max_tokens``, and aborting
the engine's work when the caller goes away (Serve cancels the call when the
HTTP client disconnects; closing the engine's iterator aborts it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from pydantic import TypeAdapter
from ray import serve

from services.embeddings.config import EmbeddingModelConfig
from services.errors import ContextLengthExceededError
from services.generation.config import GenerationModelConfig
from services.generation.engines import build_engine
from services.generation.protocol import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    check_supported,
)

logger = logging.getLogger("llmops.generation")
_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(GenerationModelConfig)


class GenerationServer:
    """Engine-agnostic request handling; the Serve deployment wraps this class."""

    def __init__(self, model_config: dict[str, Any], embeddings: list[dict[str, Any]]) -> None:
        self.config = _MODEL_ADAPTER.validate_python(model_config)
        self.engine = build_engine(self.config, [EmbeddingModelConfig.model_validate(e) for e in embeddings])
        # request counters, for tests and (later) metrics
        self.stats = {"active": 0, "completed": 0, "aborted": 0, "failed": 0}

    async def start(self) -> None:
        await self.engine.start()

    def info(self) -> dict[str, Any]:
        return {
            "id": self.config.name,
            "kind": "chat",
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

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Validate, then stream the engine's chunks; closing this aborts the engine's work."""
        prepared, _ = self.prepare(request)
        self.stats["active"] += 1
        outcome = "aborted"  # unless the loop ends or raises: the caller went away
        try:
            async with contextlib.aclosing(self.engine.generate(prepared)) as chunks:
                async for chunk in chunks:
                    yield chunk
            outcome = "completed"
        except Exception:
            outcome = "failed"
            raise
        finally:
            self.stats["active"] -= 1
            self.stats[outcome] += 1


@serve.deployment(name="generation")
class GenerationDeployment:
    """Serve wrapper of :class:`GenerationServer` (one per configured model)."""

    async def __init__(self, model_config: dict[str, Any], embeddings: list[dict[str, Any]]) -> None:  # type: ignore[misc]
        self.server = GenerationServer(model_config, embeddings)
        await self.server.start()
        logger.info("generation model %s ready (engine %s)", self.server.config.name, self.server.engine.kind)

    async def info(self) -> dict[str, Any]:
        return self.server.info()

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Streaming call (``handle.options(stream=True)``): one chunk per message."""
        async for chunk in self.server.stream(request):
            yield chunk

    async def generate(self, request: GenerationRequest) -> list[GenerationChunk]:
        """Unary call: every chunk of the completion at once."""
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
        with contextlib.suppress(Exception):
            await self.server.engine.shutdown()
