"""OpenAI protocol logic of the gateway: turns wire requests into calls on the
model deployments and their results into OpenAI responses (streams: :mod:`services.gateway.sse`).

Free of FastAPI: :mod:`services.gateway.app` is the thin HTTP glue. The model
deployments are reached through Ray Serve ``DeploymentHandle``s (or anything
with the same ``.remote`` surface, in tests).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from opentelemetry.trace import INVALID_SPAN

from services.errors import InvalidRequestError, ModelNotFoundError, UnsupportedParameterError
from services.gateway.observe import RequestObservation
from services.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from services.gateway.readiness import Readiness
from services.gateway.retry import retry_once
from services.gateway.sse import (
    StreamItem,
    chat_choices,
    chat_logprobs,
    completion_choices,
    completion_logprobs,
    open_stream,
    rag_fields,
    sse_stream,
    usage_json,
)
from services.generation.protocol import (
    ChatMessage,
    GenerationRequest,
    GenerationStats,
    StageTimings,
    TokenLogprob,
)
from services.guardrails.chain import Guardrails
from services.guardrails.stream import OutputGuard
from services.rag.types import RagMeta


def _platform_version() -> str:
    try:
        return metadata.version("llmops-platform")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


PLATFORM_VERSION = _platform_version()

logger = logging.getLogger("llmops.gateway")


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


def model_probes(generation: dict[str, Any], embeddings: dict[str, Any]) -> dict[str, Any]:
    """One readiness probe per model deployment: its ``info()`` (static, so asked once)."""
    return {f"model {name}": h.info.remote for name, h in {**generation, **embeddings}.items()}


class OpenAIServing:
    """Chat, completions, embeddings and the model list over deployment handles."""

    def __init__(
        self,
        generation: dict[str, Any],
        embeddings: dict[str, Any],
        readiness: Readiness | None = None,
        retry_timeout_s: float = 60.0,
        guardrails: Guardrails | None = None,
    ) -> None:
        self.guardrails = guardrails
        self._gen = generation
        self._emb = embeddings
        self.readiness = readiness or Readiness(model_probes(generation, embeddings))
        self._retry_s = retry_timeout_s
        self._created = int(time.time())

    # -- models ---------------------------------------------------------------------
    async def model_infos(self, wait_s: float | None = None) -> dict[str, dict[str, Any]]:
        """``info()`` of every model deployment; 503 while one has not answered yet."""
        answers = await self.readiness.wait(wait_s)
        return {n.removeprefix("model "): a for n, a in answers.items() if n.startswith("model ")}

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
            **{k: info[k] for k in ("version", "config_digest") if k in info},
            "platform_version": PLATFORM_VERSION,
        }

    def _describe(self, obs: RequestObservation) -> None:
        """The model's version and engine on the observation (from its readiness answer)."""
        info = (self.readiness.answers or {}).get(f"model {obs.model}") or {}
        obs.version = info.get("version")
        obs.engine = info.get("engine")

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
        self._describe(obs)
        messages = await self._guard_messages(req.model, req.chat_messages(), obs)
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
            stream = await open_stream(handle, greq, obs, self._retry_s)
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model}
            guard = OutputGuard.for_model(self.guardrails, req.model)
            choices_fn = chat_choices(want_logprobs)
            return sse_stream(stream, base, include_usage, choices_fn, obs, guard, greq.params.n)
        with obs.stage("generate"):
            items = await retry_once(lambda: handle.generate.remote(greq), req.model, obs, self._retry_s)
        items = await self._guard_output(req.model, items, obs)
        with obs.stage("serialize"):
            choices, prompt_tokens, rag = _collect(items, obs)
            return {
                **rag_fields(rag),
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": "".join(c.text)},
                        "logprobs": chat_logprobs(c.logprobs) if want_logprobs else None,
                        "finish_reason": c.finish_reason,
                    }
                    for i, c in sorted(choices.items())
                ],
                "usage": usage_json(prompt_tokens, sum(c.tokens for c in choices.values())),
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
        self._describe(obs)
        params = req.sampling()
        prompts = req.prompts()
        if self.guardrails is not None:
            with obs.stage("guardrails"):
                verdict = await self.guardrails.check_input(
                    req.model, list(prompts), param="prompt", decisions=obs.guardrails
                )
            prompts = verdict.texts
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
            stream = await open_stream(handle, greqs[0], obs, self._retry_s)
            base = {"id": cid, "object": "text_completion", "created": created, "model": req.model}
            guard = OutputGuard.for_model(self.guardrails, req.model)
            choices_fn = completion_choices(want_logprobs)
            return sse_stream(stream, base, include_usage, choices_fn, obs, guard, params.n)
        with obs.stage("generate"):
            results = await asyncio.gather(
                *(retry_once(_call(handle.generate, g), req.model, obs, self._retry_s) for g in greqs)
            )
        results = [await self._guard_output(req.model, items, obs) for items in results]
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
                            "logprobs": completion_logprobs(c.logprobs) if want_logprobs else None,
                            "finish_reason": c.finish_reason,
                        }
                    )
            return {
                **(rag_fields(rag[0]) if len(rag) == 1 else {}),
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": out,
                "usage": usage_json(prompt_total, completion_total),
            }

    # -- guardrails -------------------------------------------------------------------
    async def _guard_messages(
        self, model: str, messages: tuple[ChatMessage, ...], obs: RequestObservation
    ) -> tuple[ChatMessage, ...]:
        """The input chain over every message (classifiers: user and tool messages only)."""
        if self.guardrails is None:
            return messages
        with obs.stage("guardrails"):
            verdict = await self.guardrails.check_input(
                model,
                [m.content for m in messages],
                classify=[m.role in ("user", "tool") for m in messages],
                param="messages",
                decisions=obs.guardrails,
            )
        return tuple(
            m if m.content == text else ChatMessage(role=m.role, content=text)
            for m, text in zip(messages, verdict.texts, strict=True)
        )

    async def _guard_output(
        self, model: str, items: list[StreamItem], obs: RequestObservation
    ) -> list[StreamItem]:
        """A unary answer through the output chain (the same hold-back logic, all at once)."""
        guard = OutputGuard.for_model(self.guardrails, model)
        if guard is None:
            return items
        with obs.stage("guardrails"):
            out = await guard.apply(items)
        obs.guardrails.extend(guard.decisions_list())
        return out

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
        texts = req.texts()
        with obs.stage("embed"):
            result = await retry_once(lambda: handle.embed.remote(texts), req.model, obs, self._retry_s)
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


def _call(method: Any, request: GenerationRequest) -> Any:
    """A fresh deployment call per invocation (what :func:`retry_once` takes)."""
    return lambda: method.remote(request)


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
            rag = obs.take_rag(ch)
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
