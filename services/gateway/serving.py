"""OpenAI protocol logic of the gateway: turns wire requests into calls on the
model deployments and their results into OpenAI responses and SSE streams.

Free of FastAPI: :mod:`services.gateway.app` is the thin HTTP glue. The model
deployments are reached through Ray Serve ``DeploymentHandle``s (or anything
with the same ``.remote`` surface, in tests).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import INVALID_SPAN

from services.errors import (
    InvalidRequestError,
    LLMOpsError,
    ModelNotFoundError,
    UnsupportedParameterError,
    status_for,
)
from services.gateway.errors import envelope, unwrap
from services.gateway.observe import RequestObservation
from services.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from services.generation.protocol import (
    GenerationChunk,
    GenerationRequest,
    GenerationStats,
    StageTimings,
    TokenLogprob,
)
from services.rag.types import RagMeta

#: what a generation or RAG deployment streams: chunks, plus measurements the gateway absorbs
StreamItem = GenerationChunk | GenerationStats | StageTimings | RagMeta

DONE = "data: [DONE]\n\n"
logger = logging.getLogger("llmops.gateway")


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


def _chat_logprobs(items: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
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


def _completion_logprobs(
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


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class OpenAIServing:
    """Chat, completions, embeddings and the model list over deployment handles."""

    def __init__(self, generation: dict[str, Any], embeddings: dict[str, Any]) -> None:
        self._gen = generation
        self._emb = embeddings
        self._infos: dict[str, dict[str, Any]] | None = None
        self._created = int(time.time())

    # -- models ---------------------------------------------------------------------
    async def model_infos(self) -> dict[str, dict[str, Any]]:
        """``info()`` of every deployment, fetched once (they are static)."""
        if self._infos is None:
            handles = {**self._gen, **self._emb}
            infos = await asyncio.gather(*(h.info.remote() for h in handles.values()))
            self._infos = dict(zip(handles, infos, strict=True))
        return self._infos

    async def list_models(self) -> dict[str, Any]:
        infos = await self.model_infos()
        return {"object": "list", "data": [self._model_card(i) for i in infos.values()]}

    async def get_model(self, model: str) -> dict[str, Any]:
        infos = await self.model_infos()
        if model not in infos:
            raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model", value=model)
        return self._model_card(infos[model])

    def _model_card(self, info: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": info["id"],
            "object": "model",
            "created": self._created,
            "owned_by": "llmops",
            "kind": info["kind"],
            "engine": info["engine"],
            "context_length": info["context_length"],
        }

    def _generation_handle(self, model: str) -> Any:
        handle = self._gen.get(model)
        if handle is None:
            if model in self._emb:
                raise InvalidRequestError(
                    f"The model '{model}' is an embedding model; use /v1/embeddings.",
                    param="model",
                    value=model,
                )
            raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model", value=model)
        return handle

    # -- chat and completions ---------------------------------------------------------
    async def chat(
        self,
        req: ChatCompletionRequest,
        request_id: str,
        tenant: str = "",
        obs: RequestObservation | None = None,
    ) -> dict[str, Any] | AsyncIterator[str]:
        handle = self._generation_handle(req.model)
        obs = _observed(obs, request_id, req.model, req.stream)
        messages = req.chat_messages()
        if obs.capture_text:
            obs.prompt_text = "\n".join(f"{m.role}: {m.content}" for m in messages)
        greq = GenerationRequest(
            request_id=request_id,
            params=req.sampling(),
            messages=messages,
            tenant=tenant,
            dispatched_at=time.time(),
            trace=obs.trace_carrier(),
        )
        created, cid = int(time.time()), f"chatcmpl-{request_id}"
        want_logprobs = greq.params.logprobs is not None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = await self._open_stream(handle, greq, obs)
            return self._chat_sse(stream, cid, created, req.model, include_usage, want_logprobs, obs)
        with obs.stage("generate"):
            items = await handle.generate.remote(greq)
        with obs.stage("serialize"):
            choices, prompt_tokens, rag = _collect(items, obs)
            return {
                **_rag_fields(rag),
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": "".join(c.text)},
                        "logprobs": _chat_logprobs(c.logprobs) if want_logprobs else None,
                        "finish_reason": c.finish_reason,
                    }
                    for i, c in sorted(choices.items())
                ],
                "usage": _usage(prompt_tokens, sum(c.tokens for c in choices.values())),
            }

    async def completions(
        self,
        req: CompletionRequest,
        request_id: str,
        tenant: str = "",
        obs: RequestObservation | None = None,
    ) -> dict[str, Any] | AsyncIterator[str]:
        handle = self._generation_handle(req.model)
        obs = _observed(obs, request_id, req.model, req.stream)
        params = req.sampling()
        prompts = req.prompts()
        if obs.capture_text:
            obs.prompt_text = "\n".join(prompts)
        created, cid = int(time.time()), f"cmpl-{request_id}"
        want_logprobs = params.logprobs is not None
        dispatched_at, carrier = time.time(), obs.trace_carrier()  # once, not per prompt
        greqs = [
            GenerationRequest(
                request_id=f"{request_id}-{i}" if len(prompts) > 1 else request_id,
                params=params,
                prompt=p,
                tenant=tenant,
                dispatched_at=dispatched_at,
                trace=carrier,
            )
            for i, p in enumerate(prompts)
        ]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            if len(greqs) > 1:
                raise UnsupportedParameterError(
                    "streaming supports one prompt per request", param="prompt", value=len(greqs)
                )
            stream = await self._open_stream(handle, greqs[0], obs)
            return self._completion_sse(stream, cid, created, req.model, include_usage, want_logprobs, obs)
        with obs.stage("generate"):
            results = await asyncio.gather(*(handle.generate.remote(g) for g in greqs))
        with obs.stage("serialize"):
            out, prompt_total, completion_total = [], 0, 0
            rag: list[RagMeta] = []
            for p_idx, items in enumerate(results):
                choices, prompt_tokens, meta = _collect(items, obs)
                if meta is not None:
                    rag.append(meta)
                prompt_total += prompt_tokens
                for i, c in sorted(choices.items()):
                    completion_total += c.tokens
                    out.append(
                        {
                            "index": p_idx * params.n + i,
                            "text": "".join(c.text),
                            "logprobs": _completion_logprobs(c.logprobs) if want_logprobs else None,
                            "finish_reason": c.finish_reason,
                        }
                    )
            return {
                **(_rag_fields(rag[0]) if len(rag) == 1 else {}),
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": out,
                "usage": _usage(prompt_total, completion_total),
            }

    async def _open_stream(
        self, handle: Any, greq: GenerationRequest, obs: RequestObservation
    ) -> AsyncIterator[StreamItem]:
        """Start a streaming call and wait for its first chunk, so that validation
        errors (context length, unsupported parameter) still become a proper HTTP
        error instead of a broken 200 stream. The wait counts as ``generate``; what a
        RAG model reports before its first chunk (its embed and retrieve time) moves
        to those stages."""
        gen = handle.generate_stream.options(stream=True).remote(greq)
        early: list[StreamItem] = []
        first: StreamItem | None = None
        t0 = time.perf_counter()
        try:
            async for item in gen:
                if isinstance(item, GenerationChunk):
                    first = item
                    break
                early.append(item)
        except BaseException:
            gen.cancel()
            raise
        finally:
            obs.timer.record("generate", time.perf_counter() - t0)
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

    async def _chat_sse(
        self,
        chunks: AsyncIterator[StreamItem],
        cid: str,
        created: int,
        model: str,
        include_usage: bool,
        want_logprobs: bool,
        obs: RequestObservation,
    ) -> AsyncIterator[str]:
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
                "logprobs": _chat_logprobs(ch.logprobs or ()) if want_logprobs else None,
                "finish_reason": ch.finish_reason,
            }

        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        async for event in _sse_stream(chunks, base, include_usage, choice, obs):
            yield event

    async def _completion_sse(
        self,
        chunks: AsyncIterator[StreamItem],
        cid: str,
        created: int,
        model: str,
        include_usage: bool,
        want_logprobs: bool,
        obs: RequestObservation,
    ) -> AsyncIterator[str]:
        offsets: dict[int, int] = {}

        def choice(ch: GenerationChunk) -> dict[str, Any]:
            lp = _completion_logprobs(ch.logprobs or (), offsets.get(ch.index, 0)) if want_logprobs else None
            offsets[ch.index] = offsets.get(ch.index, 0) + len(ch.text)
            return {"index": ch.index, "text": ch.text, "logprobs": lp, "finish_reason": ch.finish_reason}

        base = {"id": cid, "object": "text_completion", "created": created, "model": model}
        async for event in _sse_stream(chunks, base, include_usage, choice, obs):
            yield event

    # -- embeddings -------------------------------------------------------------------
    async def embeddings(
        self, req: EmbeddingRequest, obs: RequestObservation | None = None
    ) -> dict[str, Any]:
        handle = self._emb.get(req.model)
        if handle is None:
            if req.model in self._gen:
                raise InvalidRequestError(
                    f"The model '{req.model}' is not an embedding model.", param="model", value=req.model
                )
            raise ModelNotFoundError(
                f"The model '{req.model}' does not exist.", param="model", value=req.model
            )
        if req.dimensions is not None:
            dim = (await self.model_infos())[req.model]["dimension"]
            if req.dimensions != dim:
                raise UnsupportedParameterError(
                    f"The model '{req.model}' does not support 'dimensions': its embeddings always have "
                    f"{dim} dimensions (got {req.dimensions}).",
                    param="dimensions",
                    value=req.dimensions,
                )
        obs = _observed(obs, "", req.model, False)
        with obs.stage("embed"):
            result = await handle.embed.remote(req.texts())
        obs.prompt_tokens += result.prompt_tokens
        with obs.stage("serialize"):
            if req.encoding_format == "base64":
                data = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in result.vectors]
            else:
                data = result.vectors.tolist()
            return {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
                "model": req.model,
                "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            }


def _rag_fields(meta: RagMeta | None) -> dict[str, Any]:
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


def _observed(
    obs: RequestObservation | None, request_id: str, model: str, stream: bool
) -> RequestObservation:
    """``obs`` (or a detached one, for callers outside the HTTP app) with the model set;
    called after the model was found, so the label is always a configured model."""
    if obs is None:
        obs = RequestObservation(request_id=request_id, route="", span=INVALID_SPAN)
    obs.model = model
    obs.stream = stream
    return obs


def _collect(
    items: list[StreamItem], obs: RequestObservation
) -> tuple[dict[int, _Choice], int, RagMeta | None]:
    """Choices, prompt tokens and RAG citations of a unary result; measurements go to ``obs``."""
    choices: dict[int, _Choice] = {}
    prompt_tokens = 0
    rag: RagMeta | None = None
    for ch in items:
        if isinstance(ch, RagMeta):
            rag = ch
            continue
        if isinstance(ch, (GenerationStats, StageTimings)):
            obs.absorb(ch)
            continue
        c = choices.setdefault(ch.index, _Choice())
        c.text.append(ch.text)
        c.tokens += ch.num_tokens
        if ch.finish_reason is not None:
            c.finish_reason = ch.finish_reason
        if ch.logprobs:
            c.logprobs.extend(ch.logprobs)
        if ch.prompt_tokens is not None:
            prompt_tokens = ch.prompt_tokens
    obs.prompt_tokens += prompt_tokens
    obs.completion_tokens += sum(c.tokens for c in choices.values())
    if obs.capture_text:
        obs.completion_text = "\n".join("".join(c.text) for _, c in sorted(choices.items()))
    return choices, prompt_tokens, rag


async def _sse_stream(
    items: AsyncIterator[StreamItem],
    base: dict[str, Any],
    include_usage: bool,
    choice: Callable[[GenerationChunk], dict[str, Any]],
    obs: RequestObservation,
) -> AsyncIterator[str]:
    """The SSE events of a stream: one per chunk, then usage (if asked), then a RAG
    model's citations, then a ``: server-timing`` comment with the whole stream's stage
    timings (SSE parsers skip comments), then ``[DONE]``. After the 200 went out,
    errors travel as an error event.

    Time spent waiting for the next item counts as ``generate``; everything else here
    (building events, and the ``yield`` that hands them to the socket) as ``serialize``.
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
                rag = ch
                continue
            if isinstance(ch, (GenerationStats, StageTimings)):
                obs.absorb(ch)
                continue
            completion_tokens += ch.num_tokens
            if ch.prompt_tokens is not None:
                prompt_tokens = ch.prompt_tokens
            if obs.capture_text:
                text.append(ch.text)
            yield _sse({**base, "choices": [choice(ch)], **extra})
            timer.record("serialize", clock() - t1)
        t1 = clock()
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
        if rag is not None:
            yield _sse({**base, "choices": [], **extra, **_rag_fields(rag)})
        timer.record("serialize", clock() - t1)
    except Exception as exc:
        yield _stream_error(exc, base["id"], obs)
    finally:
        obs.prompt_tokens += prompt_tokens
        obs.completion_tokens += completion_tokens
        if obs.capture_text:
            obs.completion_text = "".join(text)
    yield f": server-timing {timer.server_timing()}\n\n"
    yield DONE


def _stream_error(exc: BaseException, cid: str, obs: RequestObservation) -> str:
    """The error event of a stream that broke after its 200; the request is counted
    (metrics, log) with the status the error would have had."""
    cause = unwrap(exc)
    obs.error = type(cause).__name__
    if isinstance(cause, LLMOpsError):
        obs.status = status_for(cause)
        return _sse(envelope(cause.message, cause.error_type, cause.param, cause.code))
    obs.status = 500
    logger.error("stream %s failed", cid, exc_info=cause)
    return _sse(envelope(f"internal error, request id {cid}", "server_error", None, "internal_error"))
