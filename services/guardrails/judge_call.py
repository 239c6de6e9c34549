"""Wiring an ``llm_judge`` check to a served generation model.

The chain runs checks in a worker thread, so the judge's call is synchronous: it
sends the moderation conversation to the model's deployment handle and waits for
the whole (short) answer. Greedy decoding, a few tokens: a Llama-Guard-style
answer is ``safe`` or ``unsafe`` plus category codes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from services.generation.protocol import ChatMessage, GenerationChunk, GenerationRequest, SamplingParams

__all__ = ["judge_caller"]

JUDGE_MAX_TOKENS = 24
JUDGE_TIMEOUT_S = 30.0


def judge_caller(generation: dict[str, Any]) -> Callable[[str], Callable[[list[dict[str, str]]], str]]:
    """For a model name, a callable that asks that model (one of ``generation``'s handles)."""

    def for_model(model: str) -> Callable[[list[dict[str, str]]], str]:
        if model not in generation:
            raise ValueError(f"judge_model: {model!r} is not a served generation model")
        handle = generation[model]

        def call(messages: list[dict[str, str]]) -> str:
            req = GenerationRequest(
                request_id=f"judge-{uuid.uuid4().hex}",
                params=SamplingParams(temperature=0.0, max_tokens=JUDGE_MAX_TOKENS),
                messages=tuple(ChatMessage(role=m["role"], content=m["content"]) for m in messages),  # type: ignore[arg-type]
            )
            items = handle.generate.remote(req).result(timeout_s=JUDGE_TIMEOUT_S)
            return "".join(i.text for i in items if isinstance(i, GenerationChunk))

        return call

    return for_model
