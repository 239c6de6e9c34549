"""The ``fixed`` engine: answers every request with the same text, doing no work.

For load tests and for measuring the platform's own overhead (the serving
benchmark compares the full stack running this engine with a bare Serve app).
Tokens are whitespace-separated words.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from services.generation.config import FixedModelConfig
from services.generation.protocol import ChatMessage, FinishReason, GenerationChunk, GenerationRequest

_DEFAULT_CONTEXT_LENGTH = 4096


class FixedEngine:
    kind = "fixed"
    supported_params = frozenset({"max_tokens", "seed"})

    def __init__(self, config: FixedModelConfig) -> None:
        self.config = config
        self._words = config.text.split()

    @property
    def context_length(self) -> int:
        return self.config.context_length or _DEFAULT_CONTEXT_LENGTH

    async def start(self) -> None:
        return None

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return "\n".join(m.content for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if self.config.latency_s:
            await asyncio.sleep(self.config.latency_s)
        budget = request.params.max_tokens or len(self._words)
        words = self._words[:budget]
        finish: FinishReason = "length" if len(words) < len(self._words) else "stop"
        prompt = request.prompt if request.prompt is not None else self.render_chat(request.messages or ())
        prompt_tokens = self.count_tokens(prompt)
        interval = self.config.token_interval_s
        if interval <= 0 or len(words) < 2:
            yield GenerationChunk(
                index=0,
                text=" ".join(words),
                num_tokens=len(words),
                finish_reason=finish,
                prompt_tokens=prompt_tokens,
            )
            return
        for i, word in enumerate(words):
            if i:
                await asyncio.sleep(interval)
            last = i == len(words) - 1
            yield GenerationChunk(
                index=0,
                text=word if i == 0 else " " + word,
                num_tokens=1,
                finish_reason=finish if last else None,
                prompt_tokens=prompt_tokens if i == 0 else None,
            )

    async def check_health(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None
