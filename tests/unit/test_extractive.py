"""The extractive engine: selection, summaries, streaming, limits, determinism."""

from __future__ import annotations

import pytest

from services.generation.config import ExtractiveModelConfig
from services.generation.extractive import NO_CONTEXT_ANSWER, ExtractiveEngine, split_sentences
from services.generation.protocol import ChatMessage, GenerationChunk, GenerationRequest, SamplingParams

pytestmark = pytest.mark.unit

DOC = (
    "The Amazon rainforest covers much of the Amazon basin of South America. "
    "The basin is 7,000,000 square kilometres, of which 5,500,000 are covered by the rainforest. "
    "Brazil holds 60% of the rainforest, followed by Peru with 13% and Colombia with 10%. "
    "Wet tropical forests are the most species-rich biome. "
    "The region includes territory belonging to nine nations."
)


@pytest.fixture(scope="module")
def engine() -> ExtractiveEngine:
    import asyncio

    e = ExtractiveEngine(ExtractiveModelConfig(name="x", engine="extractive", max_sentences=2), None)
    asyncio.run(e.start())
    return e


async def run(
    engine: ExtractiveEngine, messages: list[ChatMessage], **params: object
) -> list[GenerationChunk]:
    req = GenerationRequest(request_id="r", params=SamplingParams(**params), messages=tuple(messages))  # type: ignore[arg-type]
    return [c async for c in engine.generate(req)]


def test_split_sentences() -> None:
    assert split_sentences("One. Two! Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert split_sentences("  \n ") == []
    # tokenized text (CNN/DailyMail as REALSumm ships it): a stop that is its own token ends a sentence
    assert split_sentences("two cnn heroes are in nepal . and they struggle ! koirala said") == [
        "two cnn heroes are in nepal .",
        "and they struggle !",
        "koirala said",
    ]
    assert split_sentences("the u.s. said no .") == ["the u.s. said no ."]


async def test_answers_with_the_most_relevant_sentence_first(engine: ExtractiveEngine) -> None:
    chunks = await run(engine, [ChatMessage("user", DOC + "\n\nWhich country holds most of the rainforest?")])
    assert chunks[0].text.startswith("Brazil holds 60%")
    assert len(chunks) == 2  # max_sentences, one chunk each: streams sentence by sentence
    assert chunks[-1].finish_reason == "stop" and chunks[0].prompt_tokens and chunks[0].prompt_tokens > 40
    assert all(c.num_tokens > 0 for c in chunks)


async def test_context_from_system_message(engine: ExtractiveEngine) -> None:
    chunks = await run(
        engine, [ChatMessage("system", DOC), ChatMessage("user", "How large is the basin in square km?")]
    )
    assert "7,000,000 square kilometres" in chunks[0].text


async def test_summary_keeps_document_order(engine: ExtractiveEngine) -> None:
    chunks = await run(engine, [ChatMessage("user", "Summarize: " + DOC)])
    text = "".join(c.text for c in chunks)
    sentences = split_sentences(DOC)
    picked = [s for s in sentences if s in text]
    assert len(picked) == 2
    assert text.index(picked[0]) < text.index(picked[1])
    assert sentences.index(picked[0]) < sentences.index(picked[1])


async def test_no_context_says_it_does_not_know(engine: ExtractiveEngine) -> None:
    chunks = await run(engine, [ChatMessage("user", "What is the capital of Peru?")])
    assert [c.text for c in chunks] == [NO_CONTEXT_ANSWER]


async def test_deterministic(engine: ExtractiveEngine) -> None:
    msgs = [ChatMessage("user", DOC + "\n\nHow many nations share the region?")]
    assert [c.text for c in await run(engine, msgs)] == [c.text for c in await run(engine, msgs)]


async def test_max_tokens_truncates_with_length(engine: ExtractiveEngine) -> None:
    chunks = await run(engine, [ChatMessage("user", DOC + "\n\nWhich country holds most?")], max_tokens=4)
    assert sum(c.num_tokens for c in chunks) == 4
    assert chunks[-1].finish_reason == "length"
    assert "".join(c.text for c in chunks) == "Brazil holds 60%"


async def test_stop_string_cuts_before_it(engine: ExtractiveEngine) -> None:
    chunks = await run(engine, [ChatMessage("user", DOC + "\n\nWhich country holds most?")], stop=("Peru",))
    text = "".join(c.text for c in chunks)
    assert text == "Brazil holds 60% of the rainforest, followed by "
    assert chunks[-1].finish_reason == "stop"


async def test_completion_prompt(engine: ExtractiveEngine) -> None:
    req = GenerationRequest(
        request_id="r", params=SamplingParams(), prompt=DOC + "\n\nWhat biome is most species-rich?"
    )
    chunks = [c async for c in engine.generate(req)]
    assert chunks[0].text.startswith("Wet tropical forests")


def test_summary_defaults_are_what_the_committed_tuning_chose() -> None:
    """The engine's summary_* defaults come from `python -m evals.tune_extractive` (dev half only)."""
    import json
    from pathlib import Path

    from services.generation.config import ExtractiveModelConfig

    runs = sorted(
        Path(__file__).resolve().parents[2].glob("benchmarks/results/extractive-summary-tuning-*.json")
    )
    assert runs, "no committed tuning run"
    chosen = json.loads(runs[-1].read_text())["chosen"]
    defaults = ExtractiveModelConfig(name="x", engine="extractive")
    assert {k: getattr(defaults, k) for k in chosen} == chosen
