"""Sending the suites' requests: the official ``openai`` client, fanned out on Ray Data.

:func:`call_api` sends one :class:`~.common.Call` and turns every failure into a
:class:`~.common.Response` with the API's error (one failed request is one unmeasured
item, not a failed run). :class:`ApiCaller` is the Ray Data ``map_batches`` class: each
actor keeps one event loop and one ``AsyncOpenAI`` client and runs a batch's requests
with at most ``concurrency`` in flight; :func:`send_with_ray` spreads the calls over
``ceil(concurrency / PER_ACTOR)`` actors, so ``--concurrency`` bounds the requests in
flight against the platform (its quotas and fair queue see an ordinary client).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.safety.common import Call, Response

if TYPE_CHECKING:
    from llmops.config import LLMOpsConfig

#: requests one actor keeps in flight at most
PER_ACTOR = 16


def _error_fields(exc: Exception) -> dict[str, Any]:
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
        return {
            "status": exc.status_code,
            "code": err.get("code") or getattr(exc, "code", None),
            "param": err.get("param") or getattr(exc, "param", None),
            "error": f"{exc.status_code} {err.get('message') or exc.message}"[:500],
        }
    return {"error": f"{type(exc).__name__}: {exc}"[:500]}


async def call_api(client: Any, model: str, call: Call) -> Response:
    """One request; never raises for an API or connection error (it is in the response)."""
    import openai

    t0 = time.perf_counter()
    try:
        if call.route == "chat":
            chat = await client.chat.completions.create(model=model, **call.body)
            usage = chat.usage
            return Response(
                call.id,
                chat.choices[0].message.content or "",
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                latency_s=time.perf_counter() - t0,
            )
        comp = await client.completions.create(model=model, **call.body)
        choice, usage = comp.choices[0], comp.usage
        lp = choice.logprobs
        return Response(
            call.id,
            choice.text or "",
            tokens=list(lp.tokens) if lp is not None and lp.tokens is not None else None,
            token_logprobs=list(lp.token_logprobs)
            if lp is not None and lp.token_logprobs is not None
            else None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_s=time.perf_counter() - t0,
        )
    except (openai.APIError, ValueError) as exc:
        return Response(call.id, None, latency_s=time.perf_counter() - t0, **_error_fields(exc))


def make_client(base_url: str, api_key: str, timeout_s: float) -> Any:
    import openai

    # retries: the SDK's own (429 with Retry-After, 5xx, connection errors), twice
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=2)


async def send_async(
    calls: Sequence[Call], base_url: str, api_key: str, model: str, concurrency: int, timeout_s: float
) -> list[Response]:
    """The calls' responses, in order, at most ``concurrency`` in flight (in this process)."""
    client = make_client(base_url, api_key, timeout_s)
    sem = asyncio.Semaphore(concurrency)

    async def one(c: Call) -> Response:
        async with sem:
            return await call_api(client, model, c)

    try:
        return list(await asyncio.gather(*(one(c) for c in calls)))
    finally:
        await client.close()


class ApiCaller:
    """Ray Data ``map_batches`` class: rows ``id, route, body`` (JSON) -> ``id, response`` (JSON)."""

    def __init__(self, base_url: str, api_key: str, model: str, concurrency: int, timeout_s: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = make_client(base_url, api_key, timeout_s)
        self.model = model
        self.concurrency = concurrency

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        calls = [
            Call(str(i), "chat" if r == "chat" else "completions", json.loads(b))
            for i, r, b in zip(batch["id"], batch["route"], batch["body"], strict=True)
        ]

        async def run() -> list[Response]:
            sem = asyncio.Semaphore(self.concurrency)

            async def one(c: Call) -> Response:
                async with sem:
                    return await call_api(self.client, self.model, c)

            return list(await asyncio.gather(*(one(c) for c in calls)))

        out = self.loop.run_until_complete(run())
        return {"id": [r.id for r in out], "response": [json.dumps(r.as_json()) for r in out]}


def send_with_ray(
    calls: Sequence[Call],
    config: LLMOpsConfig,
    *,
    base_url: str,
    api_key: str,
    model: str,
    concurrency: int,
    timeout_s: float,
    on_batch: Callable[[list[Response]], None],
) -> None:
    """Send ``calls`` on Ray Data; ``on_batch`` gets each finished batch's responses (in the driver)."""
    if not calls:
        return
    import ray.data

    from pipelines.ray_env import ensure_ray, quiet_ray_data

    ensure_ray(config)
    quiet_ray_data()
    actors = max(1, math.ceil(concurrency / PER_ACTOR))
    per_actor = math.ceil(concurrency / actors)
    batch = max(1, per_actor * 2)  # a batch's tail runs below the bound; two rounds keep it short
    rows = [{"id": c.id, "route": c.route, "body": json.dumps(c.body)} for c in calls]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        # max_restarts=0 as in the other pipelines: a dead actor fails the run; a re-run
        # sends only what is not in the response cache yet
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch, 64))).map_batches(
            ApiCaller,
            fn_constructor_kwargs={
                "base_url": base_url,
                "api_key": api_key,
                "model": model,
                "concurrency": per_actor,
                "timeout_s": timeout_s,
            },
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=0.25,  # waiting on HTTP, not computing
            max_restarts=0,
        )
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        on_batch([Response(**json.loads(s)) for s in out["response"]])
