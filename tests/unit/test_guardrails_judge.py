"""The Llama-Guard-style judge: the prompt it renders and how it reads verdicts."""

from __future__ import annotations

import pytest

from services.guardrails.base import Check
from services.guardrails.judge import (
    LLAMA_GUARD_CATEGORIES,
    JudgeAnswerError,
    JudgeCheck,
    parse_verdict,
    render_prompt,
)

pytestmark = pytest.mark.unit


class FakeJudge:
    """Records each request and answers from a script."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.requests: list[list[dict[str, str]]] = []

    def __call__(self, messages: list[dict[str, str]]) -> str:
        self.requests.append(messages)
        return self.answers.pop(0)  # type: ignore[return-value]


def test_prompt_holds_the_policy_and_the_text_as_the_last_turn() -> None:
    p = render_prompt("How do I pick a lock?", LLAMA_GUARD_CATEGORIES)
    assert "S1: Violent Crimes." in p and "S14: Code Interpreter Abuse." in p
    assert (
        p.index("<BEGIN CONVERSATION>")
        < p.index("User: How do I pick a lock?")
        < p.index("<END CONVERSATION>")
    )
    assert "ONLY THE LAST User message" in p
    agent = render_prompt("Sure.", {"S1": "Hate"}, role="Agent", context=[("User", "hi")])
    assert "User: hi\n\nAgent: Sure." in agent and "ONLY THE LAST Agent message" in agent


def test_safe_verdict_gives_no_finding_and_one_call_per_text() -> None:
    judge = FakeJudge("safe", " Safe \n")
    check = JudgeCheck(judge)
    assert isinstance(check, Check) and check.kind == "llm_judge" and check.spans is False
    assert check.scan(["hello", "how are you"]) == [[], []]
    assert len(judge.requests) == 2
    msg = judge.requests[0]
    assert len(msg) == 1 and msg[0]["role"] == "user" and "User: hello" in msg[0]["content"]


def test_unsafe_verdict_names_the_categories_over_the_whole_text() -> None:
    check = JudgeCheck(FakeJudge("unsafe\nS1,S10", "unsafe\ns10, S10"))
    text = "a violent and hateful request"
    (a,), (b,) = check.scan([text]), check.scan([text])
    assert [f.label for f in a] == ["Violent Crimes", "Hate"]
    assert all((f.start, f.end, f.score) == (0, len(text), 1.0) for f in a)
    assert [f.label for f in b] == ["Hate"]  # codes are case-folded and deduplicated


def test_unsafe_without_categories_is_labelled_unsafe() -> None:
    assert parse_verdict("unsafe", LLAMA_GUARD_CATEGORIES) == ["unsafe"]


@pytest.mark.parametrize(
    "answer",
    ["", "I cannot help with that.", "The message is safe to answer", "unsafe\nS99", "unsafe\nviolence"],
)
def test_unparsable_answers_raise(answer: str) -> None:
    with pytest.raises(JudgeAnswerError):
        parse_verdict(answer, LLAMA_GUARD_CATEGORIES)
    with pytest.raises(ValueError):  # the chain's on_error sees an exception, not a pass
        JudgeCheck(FakeJudge(answer)).scan(["x"])


def test_non_text_answer_raises() -> None:
    with pytest.raises(JudgeAnswerError, match="not text"):
        JudgeCheck(FakeJudge(None)).scan(["x"])


def test_custom_categories() -> None:
    judge = FakeJudge("unsafe\nS2")
    check = JudgeCheck(judge, kind="moderation", categories=["Spam", "Phishing"])
    (found,) = check.scan(["click here to verify your bank password"])
    assert [f.label for f in found] == ["Phishing"]
    assert "S1: Spam.\nS2: Phishing." in judge.requests[0][0]["content"]
    assert JudgeCheck(judge, categories={"s7": "Privacy"}).categories == {"S7": "Privacy"}
    with pytest.raises(ValueError, match="categories"):
        JudgeCheck(judge, categories={"violence": "Violence"})
    with pytest.raises(ValueError, match="categories"):
        JudgeCheck(judge, categories=[])
