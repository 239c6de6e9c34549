"""The start-up gate and the one retry after a replica died, with fake deployment handles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from services.errors import InvalidRequestError, ServiceUnavailableError
from services.gateway.errors import to_response
from services.gateway.observe import RequestObservation
from services.gateway.protocol import ChatCompletionRequest
from services.gateway.readiness import Readiness
from services.gateway.retry import ReplicaLostError, replica_lost, retry_once
from services.gateway.serving import OpenAIServing
from services.generation.protocol import GenerationChunk

pytestmark = pytest.mark.unit


def _obs() -> RequestObservation:
    from opentelemetry.trace import INVALID_SPAN

    return RequestObservation(request_id="r-1", route="/v1/chat/completions", span=INVALID_SPAN)


# -- replica_lost ---------------------------------------------------------------------------------
def test_replica_lost_sees_through_ray_wrappers() -> None:
    assert replica_lost(ActorDiedError())
    assert replica_lost(ActorUnavailableError("gone", None))
    assert replica_lost(RayTaskError("generate", "tb", ActorDiedError()))  # an upstream replica died
    wrapped = RuntimeError("upstream crashed")
    wrapped.__cause__ = ActorDiedError()
    assert replica_lost(wrapped)  # Serve's RayServeException carries it as __cause__
    assert not replica_lost(InvalidRequestError("bad", param="x"))
    assert not replica_lost(RayTaskError("generate", "tb", ValueError("a bug")))


def test_an_unsaved_dying_replica_is_a_503_not_a_500() -> None:
    resp = to_response(RayTaskError("search", "tb", ActorDiedError()), "req-7")
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert b'"code":"service_unavailable"' in resp.body and b"req-7" in resp.body
    assert to_response(RuntimeError("a bug"), "req-8").status_code == 500


# -- retry_once -----------------------------------------------------------------------------------
class Flaky:
    """A deployment call that fails with ``errors`` first, then answers."""

    def __init__(self, *errors: BaseException, answer: Any = "ok", delay_s: float = 0.0) -> None:
        self.errors = list(errors)
        self.answer, self.delay_s, self.calls = answer, delay_s, 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        await asyncio.sleep(self.delay_s)
        return self.answer


async def test_a_dead_replica_is_retried_once_and_recovers() -> None:
    obs, call = _obs(), Flaky(ActorDiedError())
    assert await retry_once(call, "extractive", obs, timeout_s=5) == "ok"
    assert (call.calls, obs.retry) == (2, "recovered")


async def test_two_deaths_are_a_503_naming_the_deployment() -> None:
    obs, call = _obs(), Flaky(ActorDiedError(), ActorDiedError())
    with pytest.raises(ReplicaLostError, match="extractive replica serving this request stopped") as exc:
        await retry_once(call, "extractive", obs, timeout_s=5)
    assert isinstance(exc.value, ServiceUnavailableError)
    assert (call.calls, obs.retry) == (2, "failed")


async def test_a_retry_that_does_not_answer_in_time_is_a_503() -> None:
    obs, call = _obs(), Flaky(ActorDiedError(), delay_s=10)
    with pytest.raises(ReplicaLostError, match=r"no answer within 0\.05s"):
        await retry_once(call, "extractive", obs, timeout_s=0.05)
    assert obs.retry == "failed"


async def test_other_errors_are_never_retried() -> None:
    obs, call = _obs(), Flaky(InvalidRequestError("bad", param="x"))
    with pytest.raises(InvalidRequestError):
        await retry_once(call, "extractive", obs, timeout_s=5)
    assert (call.calls, obs.retry) == (1, None)


# -- through OpenAIServing, streams included ------------------------------------------------------
class _Stream:
    def __init__(self, items: list[Any], die_after: int | None) -> None:
        self.items, self.die_after, self.cancelled = items, die_after, False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Any]:
        for i, item in enumerate(self.items):
            if self.die_after is not None and i == self.die_after:
                raise ActorDiedError()
            yield item

    def cancel(self) -> None:
        self.cancelled = True


class DyingGenerator:
    """A generation handle whose first ``deaths`` calls lose their replica after ``die_after`` chunks."""

    def __init__(self, deaths: int, die_after: int = 0) -> None:
        self.deaths, self.die_after, self.calls = deaths, die_after, 0
        outer = self

        class _Unary:
            async def remote(self, request: Any) -> list[Any]:
                outer.calls += 1
                if outer.calls <= outer.deaths:
                    raise ActorDiedError()
                return outer.chunks()

        class _Streaming:
            def remote(self, request: Any) -> _Stream:
                outer.calls += 1
                dying = outer.calls <= outer.deaths
                return _Stream(outer.chunks(), outer.die_after if dying else None)

        class _StreamMethod:
            def options(self, **_: Any) -> _Streaming:
                return _Streaming()

        self.generate = _Unary()
        self.generate_stream = _StreamMethod()

    @staticmethod
    def chunks() -> list[Any]:
        return [GenerationChunk(0, "Hi", 1, None, prompt_tokens=3), GenerationChunk(0, " there.", 2, "stop")]


def _serving(gen: DyingGenerator) -> OpenAIServing:
    return OpenAIServing({"m": gen}, {}, Readiness({}), retry_timeout_s=5)


def _req(stream: bool) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )


async def test_non_streamed_chat_survives_one_dead_replica() -> None:
    gen, obs = DyingGenerator(deaths=1), _obs()
    result = await _serving(gen).chat(_req(False), "r-1", "acme", obs)
    assert isinstance(result, dict) and result["choices"][0]["message"]["content"] == "Hi there."
    assert (gen.calls, obs.retry) == (2, "recovered")


async def test_a_stream_that_sent_nothing_is_retried() -> None:
    gen, obs = DyingGenerator(deaths=1, die_after=0), _obs()
    stream = await _serving(gen).chat(_req(True), "r-1", "acme", obs)
    assert not isinstance(stream, dict)
    events = [e async for e in stream]
    assert '"content":"Hi"' in events[0] and events[-1] == "data: [DONE]\n\n"
    assert (gen.calls, obs.retry) == (2, "recovered")


async def test_a_stream_under_way_ends_with_an_error_event_not_a_retry() -> None:
    gen, obs = DyingGenerator(deaths=1, die_after=1), _obs()  # dies after its first chunk went out
    stream = await _serving(gen).chat(_req(True), "r-1", "acme", obs)
    assert not isinstance(stream, dict)
    events = [e async for e in stream]
    assert '"content":"Hi"' in events[0]
    error = next(e for e in events if '"error"' in e)
    assert '"code":"service_unavailable"' in error and "incomplete" in error
    assert events[-1] == "data: [DONE]\n\n"
    assert (gen.calls, obs.retry, obs.status) == (1, "stream_broken", 503)


async def test_a_stream_whose_retry_dies_too_is_a_503() -> None:
    gen, obs = DyingGenerator(deaths=2, die_after=0), _obs()
    with pytest.raises(ReplicaLostError, match="before its first token"):
        await _serving(gen).chat(_req(True), "r-1", "acme", obs)
    assert obs.retry == "failed"


# -- readiness ------------------------------------------------------------------------------------
async def test_readiness_is_a_503_naming_what_still_starts_then_costs_nothing() -> None:
    loaded = asyncio.Event()
    calls = {"fast": 0, "slow": 0}

    async def fast() -> str:
        calls["fast"] += 1
        return "info-fast"

    async def slow() -> str:
        calls["slow"] += 1
        await loaded.wait()
        return "info-slow"

    gate = Readiness({"model fast": fast, "retrieval": slow}, wait_s=0.05)
    with pytest.raises(ServiceUnavailableError, match=r"still starting: retrieval\)"):
        await gate.wait()
    loaded.set()
    assert await gate.wait() == {"model fast": "info-fast", "retrieval": "info-slow"}
    await gate.wait()
    assert calls == {"fast": 1, "slow": 1}  # one probe each, however many requests


async def test_a_failed_probe_is_asked_again() -> None:
    answers = [RuntimeError("replica constructor raised"), "ok"]

    async def probe() -> str:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    gate = Readiness({"model m": probe}, wait_s=1)
    with pytest.raises(ServiceUnavailableError, match="failed to answer: model m"):
        await gate.wait()
    assert await gate.wait() == {"model m": "ok"}
