"""The output hold-back: no blocked or redacted span reaches the client, wherever chunks split it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import pytest

from services.generation.protocol import GenerationChunk, TokenLogprob
from services.guardrails.base import Finding
from services.guardrails.chain import Guardrails
from services.guardrails.stream import OutputGuard

pytestmark = pytest.mark.unit

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[a-z]{2,}\b")
KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


class RegexCheck:
    """A span check over one pattern (the chain treats pii/secrets types as span checks)."""

    spans = True

    def __init__(self, kind: str, pattern: re.Pattern[str], label: str, max_span_chars: int = 48) -> None:
        self.kind, self.pattern, self.label, self.max_span_chars = kind, pattern, label, max_span_chars
        self.calls = 0

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        self.calls += 1
        return [[Finding(self.label, m.start(), m.end()) for m in self.pattern.finditer(t)] for t in texts]


class WordClassifier:
    """A 'classifier' that fires on a word (whole-text finding)."""

    spans = False
    kind = "harmful"

    def __init__(self, word: str, fail: bool = False) -> None:
        self.word, self.fail = word, fail

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        if self.fail:
            raise RuntimeError("model unavailable")
        return [[Finding("harmful", 0, len(t), 0.9)] if self.word in t else [] for t in texts]


def _guard(checks: dict[str, object], output: list[dict], holdback: int = 6, every: int = 2) -> OutputGuard:
    g = Guardrails(
        {"default": {"output": output, "holdback_tokens": holdback, "scan_every_tokens": every}},
        factory=lambda cfg: checks[cfg.check_name],  # type: ignore[arg-type,return-value]
    )
    return OutputGuard.for_model(g, "m")  # type: ignore[return-value]


def _chunks(text: str, cuts: Sequence[int]) -> list[GenerationChunk]:
    """``text`` cut at ``cuts``; each piece one 'token'; the last carries finish_reason stop."""
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return [
        GenerationChunk(
            index=0,
            text=p,
            num_tokens=1,
            finish_reason="stop" if i == len(pieces) - 1 else None,
            logprobs=(TokenLogprob(p, -0.1),),
            prompt_tokens=7 if i == 0 else None,
        )
        for i, p in enumerate(pieces)
    ]


async def _run(guard: OutputGuard, chunks: list[GenerationChunk]) -> tuple[list[GenerationChunk], list[int]]:
    """Feed the chunks; return what was released and, per fed chunk, how many chunks had left."""
    out: list[GenerationChunk] = []
    released_after: list[int] = []
    for ch in chunks:
        out += await guard.feed(ch)
        released_after.append(len(out))
    out += await guard.finish()
    return out, released_after


def _pii_guard(holdback: int = 6, every: int = 2, max_span_chars: int = 48) -> OutputGuard:
    return _guard(
        {"pii": RegexCheck("pii", EMAIL, "EMAIL_ADDRESS", max_span_chars)},
        [{"type": "pii", "action": "redact"}],
        holdback,
        every,
    )


TEXT = "Write to jane.doe@example.com for access, or ask the on-call engineer today please."
EMAIL_AT = TEXT.index("jane")
EMAIL_END = TEXT.index(" for")


@pytest.mark.parametrize("cut", range(EMAIL_AT - 2, EMAIL_END + 3))
async def test_an_email_split_at_any_offset_never_leaks(cut: int) -> None:
    # 1-3 character pieces around the email, plus the cut inside it at every offset
    cuts = sorted({*range(3, len(TEXT), 3), cut} - {0, len(TEXT)})
    out, _ = await _run(_pii_guard(), _chunks(TEXT, cuts))
    client = "".join(c.text for c in out)
    assert client == TEXT.replace("jane.doe@example.com", "[EMAIL_ADDRESS]")
    # no prefix the client saw at any moment held part of the address
    seen = ""
    for c in out:
        seen += c.text
        assert "jane" not in seen and "example" not in seen
        if c.text != _chunks(TEXT, cuts)[0].text and "[EMAIL" in c.text:
            assert c.logprobs is None  # redacted chunks lose their logprobs
    assert out[-1].finish_reason == "stop"
    assert sum(c.num_tokens for c in out) == len(_chunks(TEXT, cuts))
    assert out[0].prompt_tokens == 7


async def test_every_two_way_split_of_the_whole_text() -> None:
    for cut in range(1, len(TEXT)):
        out, _ = await _run(_pii_guard(holdback=2, every=1), _chunks(TEXT, [cut]))
        assert "".join(c.text for c in out) == TEXT.replace("jane.doe@example.com", "[EMAIL_ADDRESS]")


async def test_text_is_released_behind_the_holdback_not_at_the_end() -> None:
    guard = _pii_guard(holdback=6, every=2, max_span_chars=4)
    words = [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]
    chunks = [GenerationChunk(index=0, text=w + " ", num_tokens=1) for w in words]
    chunks.append(GenerationChunk(index=0, text="end", num_tokens=1, finish_reason="stop"))
    out, after = await _run(guard, chunks)
    # nothing leaves before the hold-back is full; then the client trails by < holdback + every
    assert after[5] == 0 and after[6] > 0
    for fed, released in enumerate(after[:-1], start=1):
        assert fed - released < 6 + 2
        if released:
            assert fed - released >= 6  # and always holds at least the hold-back
    assert "".join(c.text for c in out) == " ".join(words) + " end"


async def test_the_holdback_never_holds_less_text_than_the_longest_entity() -> None:
    guard = _pii_guard(holdback=1, every=1, max_span_chars=30)
    chunks = [GenerationChunk(index=0, text="ab ", num_tokens=1) for _ in range(30)]
    for i, ch in enumerate(chunks, start=1):
        await guard.feed(ch)
        held = guard._choices[0].held
        assert sum(len(h.text) for h in held) >= min(30, 3 * i)


async def test_a_private_key_header_ends_the_stream_with_content_filter_before_it_leaks() -> None:
    text = "Here is the key you asked for:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow...base64...\n"
    guard = _guard(
        {"secrets": RegexCheck("secrets", KEY, "PRIVATE_KEY", 40)},
        [{"type": "secrets", "action": "block"}],
    )
    for cut in range(1, len(text) - 1):
        guard = _guard(
            {"secrets": RegexCheck("secrets", KEY, "PRIVATE_KEY", 40)},
            [{"type": "secrets", "action": "block"}],
        )
        out, _ = await _run(guard, _chunks(text, [*range(4, cut, 4), cut]))
        client = "".join(c.text for c in out)
        assert "BEGIN" not in client and "MIIE" not in client, cut
        assert client == text[: text.index("-----BEGIN")]
        assert out[-1].finish_reason == "content_filter"
        assert sum(c.finish_reason is not None for c in out) == 1
        assert guard.decisions["secrets"].result == "blocked"


async def test_classifier_block_drops_the_held_text_and_later_chunks() -> None:
    guard = _guard({"harmful": WordClassifier("detonator")}, [{"type": "harmful", "action": "block"}], 4, 2)
    words = [
        "step",
        "one",
        "get",
        "the",
        "parts",
        "then",
        "wire",
        "the",
        "detonator",
        "to",
        "the",
        "timer",
        "and",
        "wait",
    ]
    out, _ = await _run(guard, [GenerationChunk(index=0, text=w + " ", num_tokens=1) for w in words])
    client = "".join(c.text for c in out)
    assert "detonator" not in client
    assert out[-1].finish_reason == "content_filter"
    assert guard.all_ended(1)
    assert sum(c.num_tokens for c in out) <= len(words)


async def test_shadow_mode_records_and_lets_the_text_through() -> None:
    guard = _guard(
        {"pii": RegexCheck("pii", EMAIL, "EMAIL_ADDRESS")},
        [{"type": "pii", "action": "redact", "mode": "shadow"}],
    )
    out, _ = await _run(guard, _chunks(TEXT, list(range(2, len(TEXT), 2))))
    assert "".join(c.text for c in out) == TEXT
    assert guard.decisions["pii"].result == "shadow_redacted"
    assert guard.decisions["pii"].labels == ("EMAIL_ADDRESS",)


@pytest.mark.parametrize(("on_error", "ends"), [("open", "stop"), ("closed", "content_filter")])
async def test_a_failing_output_check_fails_open_or_closed(on_error: str, ends: str) -> None:
    guard = _guard(
        {"harmful": WordClassifier("x", fail=True)},
        [{"type": "harmful", "action": "block", "on_error": on_error}],
    )
    out, _ = await _run(guard, _chunks(TEXT, list(range(5, len(TEXT), 5))))
    assert out[-1].finish_reason == ends
    assert guard.decisions["harmful"].result == f"error_{on_error}"
    assert ("".join(c.text for c in out) == TEXT) is (on_error == "open")


async def test_choices_are_guarded_independently_and_unary_apply_matches() -> None:
    guard = _pii_guard()
    a = _chunks(TEXT, list(range(3, len(TEXT), 3)))
    b = [
        GenerationChunk(index=1, text=c.text.upper(), num_tokens=1, finish_reason=c.finish_reason) for c in a
    ]
    mixed = [x for pair in zip(a, b, strict=True) for x in pair]
    out = await guard.apply(mixed)
    by = {i: "".join(c.text for c in out if isinstance(c, GenerationChunk) and c.index == i) for i in (0, 1)}
    assert by[0] == TEXT.replace("jane.doe@example.com", "[EMAIL_ADDRESS]")
    assert by[1] == TEXT.upper()  # the upper-case address does not match this pattern
