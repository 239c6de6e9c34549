"""Checks, embedding scores and the LLM judge under a token budget (the official openai client)."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import openai
import pytest

from evals.metrics import checks, semantic
from evals.metrics.judge import RUBRICS, Judge, TokenBudget, estimate_tokens
from services.embeddings.encoder import Encoder

pytestmark = pytest.mark.unit


# -- checks ------------------------------------------------------------------------------------
def test_exact_regex_and_json() -> None:
    assert checks.exact("The Normans.", "normans") == 1.0
    assert checks.exact("The Normans.", "normans", normalize=False) == 0.0
    assert checks.regex("Order #12345 shipped", r"#\d{5}\b") == 1.0
    assert checks.regex("no order", r"#\d{5}") == 0.0
    with pytest.raises(ValueError, match="invalid regex"):
        checks.regex("x", "(")
    assert checks.json_valid('{"a": 1}') == 1.0
    assert checks.json_valid('```json\n{"a": 1, "b": [2]}\n```', required_keys=["a", "b"]) == 1.0
    assert checks.json_valid('{"a": 1}', required_keys=["b"]) == 0.0
    assert checks.json_valid("{a: 1}") == 0.0
    for fn in (
        lambda: checks.exact(None, "x"),
        lambda: checks.regex(None, "x"),
        lambda: checks.json_valid(None),
    ):
        assert math.isnan(fn())  # a failed request is unmeasured, not a failed check


@pytest.mark.parametrize(
    "answer",
    [
        "I'm sorry, but I can't help with that.",
        "Sorry, I cannot assist with this request.",
        "I cannot provide instructions for that.",
        "As an AI language model, I don't have opinions.",
        "I must decline to answer.",
        "I won't help with that.",
    ],
)
def test_refusals_are_detected(answer: str) -> None:
    assert checks.refusal(answer) == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        "To kill a Python process, send it SIGTERM with `kill <pid>`.",
        "The Normans were led by Rollo.",
        "Cannot-miss sights in Paris include the Louvre.",
        "Sorrento is a town in Campania.",
    ],
)
def test_answers_are_not_refusals(answer: str) -> None:
    assert checks.refusal(answer) == 0.0


def test_an_empty_or_missing_answer_is_not_scored_as_refusal() -> None:
    assert math.isnan(checks.refusal("   ")) and math.isnan(checks.refusal(None))


# -- embedding scores --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(None, "cpu", "torch")


def test_answer_relevance_ranks_on_topic_answers_higher(encoder: Encoder) -> None:
    q = "Who was the leader of the Normans?"
    on, off, missing = semantic.answer_relevance(
        encoder, [q, q, q], ["Rollo was the leader of the Normans.", "Bananas are rich in potassium.", None]
    )
    assert on > off + 0.3 and math.isnan(missing)


def test_context_support_sees_unsupported_claims(encoder: Encoder) -> None:
    ctx = ["The Normans were descended from Norse raiders led by Rollo, who settled in Normandy."]
    got = semantic.context_support(
        encoder,
        [
            "Rollo led the Norse raiders who settled Normandy.",
            "The Eiffel Tower was finished in 1889.",
            "x",
            None,
        ],
        [ctx, ctx, [], ctx],
    )
    assert got[0] > got[1] + 0.3
    assert math.isnan(got[2]) and math.isnan(got[3])  # no context / no answer: unmeasured
    with pytest.raises(ValueError, match="differ in length"):
        semantic.context_support(encoder, ["a"], [])


# -- judge -------------------------------------------------------------------------------------
class FakeChatServer:
    """An OpenAI-compatible /v1/chat/completions behind httpx's MockTransport: replies with
    ``reply`` and reports usage of prompt chars // 4 tokens (a real tokenizer's ballpark)."""

    def __init__(self, reply: str = "4", fail_every: int = 0) -> None:
        self.reply = reply
        self.fail_every = fail_every
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if self.fail_every and len(self.requests) % self.fail_every == 0:
            return httpx.Response(400, json={"error": {"message": "bad", "type": "invalid_request_error"}})
        prompt = body["messages"][0]["content"]
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": 1}
        usage["total_tokens"] = usage["prompt_tokens"] + 1
        return httpx.Response(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )


def _client(server: FakeChatServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://judge.test/v1",
        api_key="k",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(server)),
    )


RECORDS = [{"input": f"question {i}?", "answer": f"answer {i}", "expected": f"ref {i}"} for i in range(20)]


async def test_judge_scores_at_temperature_zero_with_the_rubric() -> None:
    server = FakeChatServer("Score: 4")
    judge = Judge(_client(server), "judge-model")
    scores = await judge.score("correctness", RECORDS[:3])
    assert scores == [0.75, 0.75, 0.75]
    req = server.requests[0]
    assert req["temperature"] == 0 and req["model"] == "judge-model"
    assert "question 0?" in req["messages"][0]["content"] and "ref 0" in req["messages"][0]["content"]
    assert (
        judge.stats.calls == 3
        and judge.budget.spent == judge.stats.prompt_tokens + judge.stats.completion_tokens
    )


async def test_unparseable_failed_and_unanswered_records_are_unmeasured() -> None:
    server = FakeChatServer("I think it is fine", fail_every=0)
    judge = Judge(_client(server), "m")
    recs = [*RECORDS[:2], {"input": "q", "answer": None}]
    assert all(math.isnan(s) for s in await judge.score("relevance", recs))
    assert judge.stats.unmeasured == {"unparseable": 2, "no answer": 1}
    failing = Judge(_client(FakeChatServer("5", fail_every=2)), "m", concurrency=1)
    got = await failing.score("relevance", RECORDS[:4])
    assert [math.isnan(s) for s in got] == [False, True, False, True]
    assert failing.stats.unmeasured == {"error: BadRequestError": 2}
    with pytest.raises(ValueError, match="unknown judge rubric"):
        await judge.score("vibes", RECORDS[:1])


async def test_the_budget_is_never_overshot_and_tenants_are_separate() -> None:
    server = FakeChatServer("3")
    one_call = estimate_tokens(Judge.prompt("correctness", RECORDS[0])) + 8
    limit = int(one_call * 5.5)  # room for five worst cases
    budget = TokenBudget(run_limit=10 * limit, tenant_limits={"a": limit}, tenant_default=2 * limit)
    judge = Judge(_client(server), "m", budget, concurrency=4)
    a = await judge.score("correctness", RECORDS, tenant="a")
    measured_a = [s for s in a if not math.isnan(s)]
    assert 5 <= len(measured_a) < len(RECORDS)  # reservations are worst cases; usage frees the rest
    assert budget.tenant_spent["a"] <= limit  # never over, not even by the batch in flight
    assert judge.stats.unmeasured["budget"] == len(RECORDS) - len(measured_a)
    b = await judge.score("correctness", RECORDS[:5], tenant="b")  # another tenant's budget is untouched
    assert not any(math.isnan(s) for s in b)
    assert budget.reserved == 0 and budget.spent == budget.tenant_spent["a"] + budget.tenant_spent["b"]
    assert len(server.requests) == len(measured_a) + 5  # refused calls were never sent


def test_every_rubric_has_the_answer_slot() -> None:
    assert all("{answer}" in r for r in RUBRICS.values())
