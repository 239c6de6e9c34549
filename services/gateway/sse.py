"""Streamed responses of the gateway: opening a stream, its SSE events, its errors.

A stream is opened by waiting for its first chunk (:func:`open_stream`), so a
validation error still becomes a proper HTTP error, and a replica that dies
before that chunk is retried once (nothing has reached the client yet). Events
follow OpenAI's SSE format; after the 200 went out, an error travels as an error
event (a dying replica's as ``service_unavailable``), then ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from services.errors import LLMOpsError, status_for
from services.gateway.errors import envelope, unwrap
from services.gateway.observe import RequestObservation
from services.gateway.retry import FAILED, RECOVERED, STREAM_BROKEN, ReplicaLostError, replica_lost
from services.generation.protocol import (
    GenerationChunk,
    GenerationRequest,
    GenerationStats,
    StageTimings,
    TokenLogprob,
)
from services.guardrails.chain import header_value
from services.guardrails.stream import OutputGuard
from services.rag.types import RagMeta

#: what a generation or RAG deployment streams: chunks, plus measurements the gateway absorbs
StreamItem = GenerationChunk | GenerationStats | StageTimings | RagMeta

DONE = "data: [DONE]\n\n"
logger = logging.getLogger("llmops.gateway")


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


def chat_logprobs(items: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token.encode()),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top],
            }
            for lp in items
        ]
    }


def completion_logprobs(
    items: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int = 0
) -> dict[str, Any]:
    offsets, pos = [], offset
    for lp in items:
        offsets.append(pos)
        pos += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [dict(lp.top) for lp in items],
        "text_offset": offsets,
    }


def usage_json(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def rag_fields(meta: RagMeta | None) -> dict[str, Any]:
    """What a RAG model adds to a response: citations and the context budget's drops."""
    if meta is None:
        return {}
    return {
        "citations": [c.as_dict() for c in meta.citations],
        "context": {
            "chunks_retrieved": meta.chunks_retrieved,
            "chunks_used": len(meta.citations),
            "chunks_dropped": meta.chunks_dropped,
        },
    }


async def open_stream(
    handle: Any, greq: GenerationRequest, obs: RequestObservation, retry_timeout_s: float
) -> AsyncIterator[StreamItem]:
    """Start a streaming call and wait for its first chunk, so that validation
    errors (context length, unsupported parameter) still become a proper HTTP
    error instead of a broken 200 stream. The wait counts as ``generate``; what a
    RAG model reports before its first chunk (its embed and retrieve time) moves
    to those stages."""
    early: list[StreamItem] = []
    first: StreamItem | None = None
    for attempt in (1, 2):
        gen = handle.generate_stream.options(stream=True).remote(greq)
        early, first = [], None
        t0 = time.perf_counter()
        try:
            # the retry (nothing was sent yet) may wait for another replica, but not forever
            async with asyncio.timeout(retry_timeout_s if attempt == 2 else None):
                async for item in gen:
                    if isinstance(item, GenerationChunk):
                        first = item
                        break
                    early.append(item)
        except BaseException as exc:
            gen.cancel()
            lost = isinstance(exc, Exception) and (
                replica_lost(exc) or (attempt == 2 and isinstance(exc, TimeoutError))
            )
            if lost and attempt == 1:
                logger.warning(
                    "stream %s: its replica died before the first chunk; retrying once", greq.request_id
                )
                continue
            if lost:
                obs.retry = FAILED
                raise ReplicaLostError(
                    f"The {obs.model} replica serving this stream stopped before its first token, "
                    "and one retry did not help; retry shortly."
                ) from exc
            raise
        finally:
            obs.timer.record("generate", time.perf_counter() - t0)
        if attempt == 2:
            obs.retry = RECOVERED
        break
    if first is not None:
        obs.first_token()
    rest: list[StreamItem] = []
    for item in early:
        if isinstance(item, (GenerationStats, StageTimings)):
            obs.absorb(item)
        else:
            rest.append(item)

    async def items() -> AsyncIterator[StreamItem]:
        finished = False
        try:
            for item in rest:
                yield item
            if first is not None:
                yield first
                async for item in gen:
                    yield item
            finished = True
        finally:
            if not finished:
                # the client went away (or the stream broke): stop the engine's work
                gen.cancel()

    return items()


#: turns one generated chunk into the ``choices[0]`` of its SSE event
ChoiceBuilder = Callable[[GenerationChunk], dict[str, Any]]


def chat_choices(want_logprobs: bool) -> ChoiceBuilder:
    """``chat.completion.chunk`` choices: the first delta of a choice carries its role."""
    started: set[int] = set()

    def choice(ch: GenerationChunk) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": ch.text}
        if ch.index not in started:
            started.add(ch.index)
            delta = {"role": "assistant", "content": ch.text}
        elif not ch.text and ch.finish_reason:
            delta = {}  # a bare end-of-choice chunk
        return {
            "index": ch.index,
            "delta": delta,
            "logprobs": chat_logprobs(ch.logprobs or ()) if want_logprobs else None,
            "finish_reason": ch.finish_reason,
        }

    return choice


def completion_choices(want_logprobs: bool) -> ChoiceBuilder:
    """``text_completion`` choices: logprob text offsets run on across a choice's chunks."""
    offsets: dict[int, int] = {}

    def choice(ch: GenerationChunk) -> dict[str, Any]:
        lp = completion_logprobs(ch.logprobs or (), offsets.get(ch.index, 0)) if want_logprobs else None
        offsets[ch.index] = offsets.get(ch.index, 0) + len(ch.text)
        return {"index": ch.index, "text": ch.text, "logprobs": lp, "finish_reason": ch.finish_reason}

    return choice


async def sse_stream(
    items: AsyncIterator[StreamItem],
    base: dict[str, Any],
    include_usage: bool,
    choice: ChoiceBuilder,
    obs: RequestObservation,
    guard: OutputGuard | None = None,
    n: int = 1,
) -> AsyncIterator[str]:
    """The SSE events of a stream: one per chunk, then usage (if asked), then a RAG
    model's citations, then a ``: server-timing`` comment with the whole stream's stage
    timings (SSE parsers skip comments), then ``[DONE]``. After the 200 went out,
    errors travel as an error event.

    With output guardrails (``guard``) each chunk passes the hold-back first: what is
    released goes out, a blocked choice ends with ``content_filter`` and, once all ``n``
    choices ended, the engine is stopped. Usage counts the engine's chunks (what was
    generated); the output decisions travel in a ``: guardrails`` comment before
    ``: server-timing``.

    Time spent waiting for the next item counts as ``generate``; the output checks as
    ``guardrails``; everything else here (building events, and the ``yield`` that hands
    them to the socket) as ``serialize``.
    """
    extra = {"usage": None} if include_usage else {}
    prompt_tokens, completion_tokens = 0, 0
    rag: RagMeta | None = None
    text: list[str] = []
    timer, clock = obs.timer, time.perf_counter
    try:
        it = items.__aiter__()
        while True:
            t0 = clock()
            try:
                ch = await it.__anext__()
            except StopAsyncIteration:
                timer.record("generate", clock() - t0)
                break
            t1 = clock()
            timer.record("generate", t1 - t0)
            if isinstance(ch, RagMeta):
                rag = obs.take_rag(ch)
                continue
            if isinstance(ch, (GenerationStats, StageTimings)):
                obs.absorb(ch)
                continue
            completion_tokens += ch.num_tokens
            if ch.prompt_tokens is not None:
                prompt_tokens = ch.prompt_tokens
            if guard is None:
                out = [ch]
            else:
                out = await guard.feed(ch)
                t2 = clock()
                timer.record("guardrails", t2 - t1)
                t1 = t2
            for o in out:
                if obs.capture_text:
                    text.append(o.text)
                yield _sse({**base, "choices": [choice(o)], **extra})
            timer.record("serialize", clock() - t1)
            if guard is not None and guard.all_ended(n):
                await _close(it)  # every choice was blocked: stop the engine's work
                break
        t1 = clock()
        if guard is not None:
            for o in await guard.finish():
                if obs.capture_text:
                    text.append(o.text)
                yield _sse({**base, "choices": [choice(o)], **extra})
            t2 = clock()
            timer.record("guardrails", t2 - t1)
            t1 = t2
        if include_usage:
            yield _sse({**base, "choices": [], "usage": usage_json(prompt_tokens, completion_tokens)})
        if rag is not None:
            yield _sse({**base, "choices": [], **extra, **rag_fields(rag)})
        timer.record("serialize", clock() - t1)
    except Exception as exc:
        yield stream_error(exc, base["id"], obs)
    finally:
        obs.prompt_tokens += prompt_tokens
        obs.completion_tokens += completion_tokens
        if obs.capture_text:
            obs.completion_text = "".join(text)
        if guard is not None:
            obs.guardrails.extend(guard.decisions_list())
            guard.count()
    if guard is not None:
        yield f": guardrails {header_value(guard.decisions_list())}\n\n"
    yield f": server-timing {timer.server_timing()}\n\n"
    yield DONE


async def _close(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


def stream_error(exc: BaseException, cid: str, obs: RequestObservation) -> str:
    """The error event of a stream that broke after its 200; the request is counted
    (metrics, log) with the status the error would have had."""
    cause = unwrap(exc)
    obs.error = type(cause).__name__
    if replica_lost(exc):  # after the first chunk: nothing to retry, the client must ask again
        obs.retry, obs.status = STREAM_BROKEN, 503
        msg = "The replica serving this stream stopped; the answer is incomplete. Retry the request."
        return _sse(envelope(msg, "service_unavailable", None, "service_unavailable"))
    if isinstance(cause, LLMOpsError):
        obs.status = status_for(cause)
        return _sse(envelope(cause.message, cause.error_type, cause.param, cause.code))
    obs.status = 500
    logger.error("stream %s failed", cid, exc_info=cause)
    return _sse(envelope(f"internal error, request id {cid}", "server_error", None, "internal_error"))
