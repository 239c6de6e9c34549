"""An LLM judge as a guardrail check, asked the way Llama Guard is.

The check renders a moderation prompt (the policy's categories and the text as the last
turn of a conversation), sends it through ``call`` (supplied by the chain: in production
a request to a served generation model, e.g. Llama Guard 3) and parses the verdict:
``safe``, or ``unsafe`` with the violated category codes on the next line
(``unsafe\\nS1,S10``). Anything else raises :class:`JudgeAnswerError`, so the chain's
``on_error`` (open or closed) decides what an unreadable verdict means: a judge that
rambles is not silently a pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from services.guardrails.base import Finding

__all__ = ["LLAMA_GUARD_CATEGORIES", "JudgeAnswerError", "JudgeCheck", "parse_verdict", "render_prompt"]

#: Llama Guard 3's hazard taxonomy (MLCommons), code -> name
LLAMA_GUARD_CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

_TEMPLATE = """Task: Check if there is unsafe content in '{role}' messages in conversations according to our \
safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
{categories}
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

{conversation}

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories."""

_CODE = re.compile(r"^S\d+$", re.IGNORECASE)


class JudgeAnswerError(ValueError):
    """The judge's answer is not a verdict this check can read."""


def _categories(categories: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if categories is None:
        return dict(LLAMA_GUARD_CATEGORIES)
    if isinstance(categories, Mapping):
        cats = {str(k).upper(): str(v) for k, v in categories.items()}
    else:  # names in order: S1, S2, ...
        cats = {f"S{i}": str(name) for i, name in enumerate(categories, start=1)}
    if not cats:
        raise ValueError("categories: give at least one policy category")
    bad = [k for k in cats if not _CODE.match(k)]
    if bad:
        raise ValueError(f"categories: codes must look like S1, S2, ...; got {bad}")
    return cats


def render_prompt(
    text: str,
    categories: Mapping[str, str],
    role: str = "User",
    context: Sequence[tuple[str, str]] = (),
) -> str:
    """The moderation prompt: the policy and the conversation (``context`` turns, then ``text``)."""
    turns = [*context, (role, text)]
    return _TEMPLATE.format(
        role=role,
        categories="\n".join(f"{code}: {name}." for code, name in categories.items()),
        conversation="\n\n".join(f"{who}: {what}" for who, what in turns),
    )


def parse_verdict(answer: str, categories: Mapping[str, str]) -> list[str] | None:
    """``None`` for safe, else the violated category names (``["unsafe"]`` when none is named).

    Raises:
        JudgeAnswerError: the first line is neither ``safe`` nor ``unsafe``, or a category code
            is not one of the policy's.
    """
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    if not lines:
        raise JudgeAnswerError("llm_judge: the judge returned an empty answer")
    first = lines[0].lower().rstrip(".")
    if first == "safe":
        return None
    if first != "unsafe":
        raise JudgeAnswerError(
            f"llm_judge: unparsable verdict {lines[0][:80]!r} (expected 'safe' or 'unsafe')"
        )
    if len(lines) < 2:
        return ["unsafe"]
    codes = [c.strip().upper() for c in re.split(r"[,\s]+", lines[1]) if c.strip()]
    unknown = [c for c in codes if c not in categories]
    if unknown or not codes:
        raise JudgeAnswerError(
            f"llm_judge: unknown categories {unknown or lines[1][:80]!r}; policy has {', '.join(categories)}"
        )
    return [categories[c] for c in dict.fromkeys(codes)]


class JudgeCheck:
    """Llama-Guard-style moderation of each text by a served model.

    Args:
        call: sends chat messages to the judge model and returns its answer text (sync; the
            chain runs checks off the event loop).
        kind: the check's kind.
        categories: the policy: ``{"S1": "Violent Crimes", ...}`` or a list of names (coded
            S1, S2, ... in order); default Llama Guard 3's fourteen.
        role: whose message the text is (``User`` for prompts, ``Agent`` for answers).
    """

    spans = False

    def __init__(
        self,
        call: Callable[[list[dict[str, str]]], str],
        kind: str = "llm_judge",
        categories: Mapping[str, str] | Sequence[str] | None = None,
        role: str = "User",
    ) -> None:
        self.call = call
        self.kind = kind
        self.categories = _categories(categories)
        self.role = role

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat request the judge gets for ``text``."""
        return [{"role": "user", "content": render_prompt(text, self.categories, self.role)}]

    def judge(self, text: str) -> list[str] | None:
        """The verdict on one text: ``None`` (safe) or the violated category names."""
        answer = self.call(self.messages(text))
        if not isinstance(answer, str):
            raise JudgeAnswerError(f"llm_judge: the judge call returned {type(answer).__name__}, not text")
        return parse_verdict(answer, self.categories)

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        """Per text: one finding per violated category, spanning the whole text."""
        out: list[list[Finding]] = []
        for text in texts:
            verdict = self.judge(text)
            out.append([Finding(name, 0, len(text), 1.0) for name in verdict] if verdict else [])
        return out
