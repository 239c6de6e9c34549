"""The ``transformers`` engine on a tiny random Llama built offline (CPU, a few seconds).

Greedy outputs are checked against ``model.generate`` called directly on the same
weights, so streaming, left-padded batching, EOS and stop handling are compared
with the real thing, not with the engine's own earlier output.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.errors import ContextLengthExceededError, InvalidRequestError, ServiceUnavailableError
from services.generation.config import TransformersModelConfig
from services.generation.protocol import (
    ChatMessage,
    Engine,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from services.generation.transformers_engine import TransformersEngine
from tests.fixtures.tiny_hf_model import build_tiny_model

pytestmark = pytest.mark.unit

PROMPTS = ("hello world", "the cat sat on", "abc def ghi jkl", "one two three four five six")
_ids = itertools.count()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> tuple[Any, Any]:
    """The same weights, driven by plain transformers."""
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    return model, tok


def _config(model_dir: Path, **overrides: Any) -> TransformersModelConfig:
    fields: dict[str, Any] = {
        "name": "tiny",
        "engine": "transformers",
        "path": str(model_dir),
        "device": "cpu",
        "batch_wait_timeout_s": 0.05,
        **overrides,
    }
    return TransformersModelConfig(**fields)


@contextlib.asynccontextmanager
async def _started(model_dir: Path, **overrides: Any) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(_config(model_dir, **overrides))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


@pytest_asyncio.fixture
async def engine(model_dir: Path) -> AsyncIterator[TransformersEngine]:
    async with _started(model_dir, default_max_tokens=16) as eng:
        yield eng


def _request(
    prompt: str | None = None, messages: list[ChatMessage] | None = None, **params: Any
) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"req-{next(_ids)}",
        params=SamplingParams(**params, explicit=frozenset(params)),
        prompt=prompt,
        messages=tuple(messages) if messages is not None else None,
    )


async def _collect(engine: TransformersEngine, prompt: str, **params: Any) -> list[GenerationChunk]:
    return [c async for c in engine.generate(_request(prompt, **params))]


def _text(chunks: list[GenerationChunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index)


def _reference_ids(
    reference: tuple[Any, Any], prompt: str, max_new: int, **kwargs: Any
) -> Iterator[list[int]]:
    model, tok = reference
    inputs = tok(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new, pad_token_id=tok.pad_token_id, **kwargs)
    yield from out[:, inputs["input_ids"].shape[1] :].tolist()


def _greedy_reference(reference: tuple[Any, Any], prompt: str, max_new: int) -> str:
    ids = next(_reference_ids(reference, prompt, max_new, do_sample=False))
    return str(reference[1].decode(ids, skip_special_tokens=True))


async def test_is_an_engine_and_reports_its_limits(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    assert isinstance(engine, Engine)
    assert engine.kind == "transformers"
    assert engine.supported_params >= {"temperature", "top_p", "top_k", "n", "logprobs", "num_beams", "seed"}
    assert engine.context_length == 512  # the fixture's max_position_embeddings
    assert engine.count_tokens("hello world") == len(reference[1].encode("hello world"))
    await engine.check_health()


async def test_greedy_streams_the_reference_text_token_by_token(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    chunks = await _collect(engine, PROMPTS[0], temperature=0.0, max_tokens=24)
    assert len([c for c in chunks if c.text]) > 5
    assert _text(chunks) == _greedy_reference(reference, PROMPTS[0], 24)
    assert chunks[0].prompt_tokens == engine.count_tokens(PROMPTS[0])
    assert all(c.prompt_tokens is None for c in chunks[1:])
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == "length"
    assert sum(c.num_tokens for c in chunks) == 24
    assert all(c.logprobs is None for c in chunks)


async def test_max_tokens_and_default_max_tokens(engine: TransformersEngine) -> None:
    chunks = await _collect(engine, PROMPTS[1], temperature=0.0, max_tokens=7)
    assert (chunks[-1].finish_reason, sum(c.num_tokens for c in chunks)) == ("length", 7)
    chunks = await _collect(engine, PROMPTS[1], temperature=0.7)  # no max_tokens: config's 16
    assert (chunks[-1].finish_reason, sum(c.num_tokens for c in chunks)) == ("length", 16)


async def test_seed_makes_sampling_reproducible(engine: TransformersEngine) -> None:
    params = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 20}
    first = _text(await _collect(engine, PROMPTS[2], seed=123, **params))
    again = _text(await _collect(engine, PROMPTS[2], seed=123, **params))
    other = _text(await _collect(engine, PROMPTS[2], seed=124, **params))
    assert first == again
    assert first != other
    greedy = [_text(await _collect(engine, PROMPTS[2], temperature=0.0, max_tokens=20)) for _ in range(2)]
    assert greedy[0] == greedy[1]


async def test_stop_string_spanning_two_chunks_is_cut_and_not_emitted(engine: TransformersEngine) -> None:
    plain = await _collect(engine, PROMPTS[3], temperature=0.0, max_tokens=30)
    full = _text(plain)
    texts = [c.text for c in plain if c.text]
    # the last char of one chunk + the first two of the next: no single token holds it
    k = next(i for i in range(2, len(texts) - 1) if len(texts[i + 1]) >= 2)
    stop = texts[k][-1] + texts[k + 1][:2]
    expected = full[: full.index(stop)]
    chunks = await _collect(engine, PROMPTS[3], temperature=0.0, max_tokens=30, stop=(stop, "#never#"))
    assert _text(chunks) == expected
    assert stop not in _text(chunks)
    assert chunks[-1].finish_reason == "stop"
    assert sum(c.num_tokens for c in chunks) < 30


async def test_eos_ends_with_stop_and_is_not_emitted(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    ids = next(_reference_ids(reference, PROMPTS[0], 12, do_sample=False))
    k = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    # the fixture never samples </s>; declare the k-th greedy token an end-of-sequence id instead
    engine._eos_ids = engine._eos_ids | {ids[k]}
    chunks = await _collect(engine, PROMPTS[0], temperature=0.0, max_tokens=12)
    assert chunks[-1].finish_reason == "stop"
    assert sum(c.num_tokens for c in chunks) == k + 1  # EOS counts as a completion token
    assert _text(chunks) == reference[1].decode(ids[:k], skip_special_tokens=True)


async def test_n_choices_have_their_own_index(engine: TransformersEngine) -> None:
    chunks = await _collect(engine, PROMPTS[0], temperature=1.0, seed=5, n=2, max_tokens=10)
    assert {c.index for c in chunks} == {0, 1}
    for i in (0, 1):
        mine = [c for c in chunks if c.index == i]
        assert mine[0].prompt_tokens == engine.count_tokens(PROMPTS[0])
        assert [c.finish_reason for c in mine][-1] == "length"
        assert sum(c.num_tokens for c in mine) == 10
    assert _text(chunks, 0) != _text(chunks, 1)


async def test_logprobs_are_those_of_the_chosen_token(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    chunks = await _collect(engine, PROMPTS[1], temperature=0.0, logprobs=3, max_tokens=8)
    entries = [lp for c in chunks for lp in (c.logprobs or ())]
    assert len(entries) == sum(c.num_tokens for c in chunks) == 8
    for lp in entries:
        assert lp.logprob <= 0
        assert len(lp.top) == 3
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        # greedy: the chosen token is the most likely one
        assert lp.token == lp.top[0][0]
        assert lp.logprob == pytest.approx(lp.top[0][1])
    # and the number is the model's: log-softmax of the first step's logits
    model, tok = reference
    with torch.no_grad():
        logits = model(**tok(PROMPTS[1], return_tensors="pt")).logits[0, -1]
    assert entries[0].logprob == pytest.approx(torch.log_softmax(logits, -1).max().item(), abs=1e-4)
    assert "".join(lp.token for lp in entries) == _text(chunks)

    sampled = await _collect(engine, PROMPTS[1], temperature=1.0, seed=3, logprobs=0, max_tokens=8)
    entries = [lp for c in sampled for lp in (c.logprobs or ())]
    assert len(entries) == 8
    assert all(lp.logprob <= 0 and lp.top == () for lp in entries)


async def test_beam_search_matches_transformers(
    engine: TransformersEngine, reference: tuple[Any, Any]
) -> None:
    chunks = await _collect(engine, PROMPTS[2], temperature=0.0, num_beams=3, n=2, max_tokens=10)
    assert sorted(c.index for c in chunks) == [0, 1]  # one chunk per choice
    expected = [
        reference[1].decode(ids, skip_special_tokens=True)
        for ids in _reference_ids(
            reference, PROMPTS[2], 10, do_sample=False, num_beams=3, num_return_sequences=2
        )
    ]
    assert [_text(chunks, 0), _text(chunks, 1)] == expected
    assert all(c.finish_reason == "length" and c.num_tokens == 10 for c in chunks)

    with pytest.raises(InvalidRequestError) as err:
        await _collect(engine, PROMPTS[2], num_beams=2, n=3)
    assert err.value.param == "n"
    with pytest.raises(InvalidRequestError) as err:
        await _collect(engine, PROMPTS[2], num_beams=2, logprobs=1)
    assert err.value.param == "logprobs"


async def test_concurrent_requests_share_one_generate_call(
    model_dir: Path, reference: tuple[Any, Any]
) -> None:
    async with _started(model_dir, batch_wait_timeout_s=0.5, max_batch_size=8) as eng:
        results = await asyncio.gather(
            *(_collect(eng, p, temperature=0.0, max_tokens=6 + i) for i, p in enumerate(PROMPTS))
        )
        assert eng.stats.generate_calls < len(PROMPTS)
        assert eng.stats.max_batch_requests > 1
        # left padding does not change what each row generates, nor its own max_tokens
        for i, (prompt, chunks) in enumerate(zip(PROMPTS, results, strict=True)):
            assert _text(chunks) == _greedy_reference(reference, prompt, 6 + i)
            assert sum(c.num_tokens for c in chunks) == 6 + i

        # incompatible sampling configs and seeded requests run as separate batches
        before = eng.stats.generate_calls
        await asyncio.gather(
            _collect(eng, PROMPTS[0], temperature=0.0, max_tokens=4),
            _collect(eng, PROMPTS[1], temperature=0.8, max_tokens=4),
            _collect(eng, PROMPTS[2], temperature=0.8, max_tokens=4, seed=1),
        )
        assert eng.stats.generate_calls - before == 3


async def test_closing_one_stream_leaves_the_other_running(model_dir: Path) -> None:
    async with _started(model_dir, batch_wait_timeout_s=0.5) as eng:
        quitter = eng.generate(_request(PROMPTS[0], temperature=0.0, max_tokens=200))
        stayer = eng.generate(_request(PROMPTS[1], temperature=0.0, max_tokens=200))
        first = await asyncio.gather(anext(quitter), anext(stayer))
        assert [c.text != "" for c in first] == [True, True]
        await anext(quitter)
        await quitter.aclose()  # client disconnect
        rest = [c async for c in stayer]
        assert rest[-1].finish_reason == "length"
        assert first[1].num_tokens + sum(c.num_tokens for c in rest) == 200
        assert eng.stats.generate_calls == 1


async def test_cancelling_every_row_stops_generate_early(model_dir: Path) -> None:
    async with _started(model_dir) as eng:
        gen = eng.generate(_request(PROMPTS[0], temperature=0.0, max_tokens=480))
        await anext(gen)
        await gen.aclose()
        # one generate at a time: once this one is served, the cancelled one has returned
        chunks = await _collect(eng, PROMPTS[1], temperature=0.0, max_tokens=3)
        assert sum(c.num_tokens for c in chunks) == 3
        assert eng.stats.generate_calls == 2
        assert eng.stats.decode_steps < 480


async def test_event_loop_keeps_running_during_generation(engine: TransformersEngine) -> None:
    ticks_while_generating = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks_while_generating
        while not done.is_set():
            if engine.stats.running:
                ticks_while_generating += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    chunks_while_generating = 0
    async for _ in engine.generate(_request(PROMPTS[3], temperature=0.0, max_tokens=64)):
        chunks_while_generating += engine.stats.running
    done.set()
    await task
    assert ticks_while_generating > 0
    assert chunks_while_generating > 1  # chunks arrive while generate is still running


async def test_chat_messages_use_the_chat_template(engine: TransformersEngine) -> None:
    messages = [ChatMessage("system", "be brief"), ChatMessage("user", "hello")]
    rendered = engine.render_chat(messages)
    assert rendered == "<|system|>\nbe brief</s>\n<|user|>\nhello</s>\n<|assistant|>\n"
    chunks = [c async for c in engine.generate(_request(messages=messages, temperature=0.0, max_tokens=5))]
    assert chunks[0].prompt_tokens == engine.count_tokens(rendered)
    assert sum(c.num_tokens for c in chunks) == 5

    engine._tokenizer.chat_template = None  # a base model without a template
    assert engine.render_chat(messages) == "system: be brief\nuser: hello\nassistant:"


async def test_prompt_beyond_the_context_window_is_rejected(engine: TransformersEngine) -> None:
    long_prompt = " ".join(["hello"] * 600)
    with pytest.raises(ContextLengthExceededError) as err:
        await _collect(engine, long_prompt, max_tokens=4)
    assert err.value.param == "prompt"
    prompt_len = engine.count_tokens(PROMPTS[0])
    with pytest.raises(ContextLengthExceededError) as err:
        await _collect(engine, PROMPTS[0], max_tokens=512 - prompt_len + 1)
    assert err.value.param == "max_tokens"


async def test_missing_or_broken_model_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        await TransformersEngine(_config(missing)).start()
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="broken-model"):
        await TransformersEngine(_config(broken)).start()


async def test_shutdown_stops_serving(model_dir: Path) -> None:
    eng = TransformersEngine(_config(model_dir))
    with pytest.raises(ServiceUnavailableError):
        await eng.check_health()
    await eng.start()
    await eng.check_health()
    await eng.shutdown()
    with pytest.raises(ServiceUnavailableError):
        await eng.check_health()
    with pytest.raises(ServiceUnavailableError):
        await _collect(eng, PROMPTS[0], max_tokens=2)
