"""``echo`` on /v1/completions through the real gateway, with the official openai client.

The transformers engine echoes the prompt with its tokens' logprobs (what CrowS-Pairs
scores); engines that cannot refuse it with a 400 naming ``echo``.
"""

from __future__ import annotations

import math

import openai
import pytest

from tests.integration.conftest import TINY, Platform

pytestmark = pytest.mark.integration
PROMPT = "the quick brown fox jumps over the lazy dog"


def _param(exc: openai.APIStatusError) -> object:
    body = exc.body
    return body.get("param") if isinstance(body, dict) else None


def test_echo_scores_the_prompt_without_generating(platform: Platform) -> None:
    client = platform.client()
    resp = client.completions.create(model=TINY, prompt=PROMPT, echo=True, logprobs=1, max_tokens=0)
    (choice,) = resp.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert len(lp.tokens) == resp.usage.prompt_tokens == len(lp.token_logprobs)
    assert "".join(lp.tokens) == PROMPT
    assert lp.token_logprobs[0] is None  # nothing precedes the first token, as OpenAI reports it
    rest = lp.token_logprobs[1:]
    assert rest and all(v is not None and v <= 0.0 and math.isfinite(v) for v in rest)
    assert lp.text_offset is not None and lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)

    # the same prompt again with 3 generated tokens: same prompt logprobs, then the completion
    more = client.completions.create(
        model=TINY, prompt=PROMPT, echo=True, logprobs=1, max_tokens=3, temperature=0
    )
    (c2,) = more.choices
    assert c2.text.startswith(PROMPT) and len(c2.text) > len(PROMPT)
    assert more.usage is not None and more.usage.completion_tokens == 3
    assert c2.logprobs is not None and c2.logprobs.token_logprobs is not None
    lps = c2.logprobs.token_logprobs
    assert len(lps) == len(lp.token_logprobs) + 3
    assert lps[1 : len(rest) + 1] == pytest.approx(rest, abs=1e-4)


def test_echo_streams_the_prompt_first(platform: Platform) -> None:
    chunks = list(
        platform.client().completions.create(
            model=TINY, prompt=PROMPT, echo=True, max_tokens=2, temperature=0, stream=True
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert texts[0] == PROMPT and len("".join(texts)) > len(PROMPT)


def test_engines_without_echo_refuse_it_naming_it(platform: Platform) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        platform.client().completions.create(model="extractive", prompt=PROMPT, echo=True, max_tokens=0)
    assert exc.value.code == "unsupported_parameter" and _param(exc.value) == "echo"
    assert "extractive" in exc.value.message


def test_max_tokens_zero_needs_echo(platform: Platform) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        platform.client().completions.create(model=TINY, prompt=PROMPT, max_tokens=0)
    assert _param(exc.value) == "max_tokens" and "echo" in exc.value.message
