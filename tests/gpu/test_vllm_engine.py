"""The ``vllm`` engine on a real GPU with vLLM 0.26 (skipped elsewhere, see conftest.py).

One engine for the module: the random-weight Llama at ``LLMOPS_TEST_MODEL``, eager
mode (no CUDA-graph capture, so it starts fast), 2048-token context, half the GPU.
Prefix caching is off so that a prompt run twice takes exactly the same kernels:
the random model's logits have near-ties that a cached prefill can flip, which
would make the determinism checks test the cache instead of the engine.

The model is random, so checks are about the engine, not the text: token counts,
finish reasons, determinism, and what vLLM holds after a request is gone. A
random model can emit EOS at any step (about 1 in 32,000), so checks of sampled
(non-greedy) runs accept a "stop" that comes early.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.errors import ContextLengthExceededError, InvalidRequestError
from services.generation.config import VLLMModelConfig
from services.generation.protocol import (
    ChatMessage,
    Engine,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from services.generation.vllm_engine import VLLMEngine

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONTEXT = 2048
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[VLLMEngine]:
    config = VLLMModelConfig(
        name="test-llama",
        engine="vllm",
        path=os.environ["LLMOPS_TEST_MODEL"],
        max_model_len=CONTEXT,
        gpu_memory_utilization=0.5,
        enforce_eager=True,
        default_max_tokens=16,
        engine_args={"enable_prefix_caching": False, "seed": 0},
    )
    eng = VLLMEngine(config)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.shutdown()


_ids = iter(range(1_000_000))


def request(
    prompt: str | None = PROMPT, messages: tuple[ChatMessage, ...] | None = None, **params
) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"test-{next(_ids)}",
        params=SamplingParams(explicit=frozenset(params), **params),
        prompt=prompt if messages is None else None,
        messages=messages,
    )


async def collect(engine: VLLMEngine, req: GenerationRequest) -> list[GenerationChunk]:
    async with contextlib.aclosing(engine.generate(req)) as chunks:
        return [chunk async for chunk in chunks]


def by_index(chunks: list[GenerationChunk]) -> dict[int, list[GenerationChunk]]:
    out: dict[int, list[GenerationChunk]] = {}
    for chunk in chunks:
        out.setdefault(chunk.index, []).append(chunk)
    return out


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def tokens_of(chunks: list[GenerationChunk]) -> int:
    return sum(c.num_tokens for c in chunks)


def assert_one_choice(chunks: list[GenerationChunk], max_tokens: int, *, greedy: bool) -> None:
    """Well-formed stream of one choice: prompt_tokens first, finish_reason last and only there."""
    assert chunks, "no chunks"
    assert chunks[0].prompt_tokens is not None and chunks[0].prompt_tokens > 0
    assert all(c.prompt_tokens is None for c in chunks[1:])
    assert [c.finish_reason is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    n = tokens_of(chunks)
    if greedy:
        assert (n, chunks[-1].finish_reason) == (max_tokens, "length")
    else:  # a random model may sample EOS early
        assert n <= max_tokens
        assert chunks[-1].finish_reason == ("length" if n == max_tokens else "stop")


# --------------------------------------------------------------------------- basics


async def test_engine_protocol_and_context(engine: VLLMEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.kind == "vllm"
    assert engine.context_length == CONTEXT
    assert "num_beams" in engine.supported_params and "logprobs" in engine.supported_params
    await engine.check_health()
    assert engine.count_tokens(PROMPT) == len(engine.async_llm.get_tokenizer().encode(PROMPT))


async def test_chat_prompt_is_rendered_and_tokenized_once(engine: VLLMEngine) -> None:
    messages = (ChatMessage("system", "Answer briefly."), ChatMessage("user", "What is a fox?"))
    rendered = engine.render_chat(messages)
    tokenizer = engine.async_llm.get_tokenizer()
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    without_prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
    assert "What is a fox?" in rendered
    assert rendered.startswith(without_prompt) and len(rendered) > len(without_prompt)
    chunks = await collect(engine, request(messages=messages, temperature=0.0, max_tokens=4))
    # vLLM's chat path tokenizes without adding special tokens; so must we.
    assert chunks[0].prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert_one_choice(chunks, 4, greedy=True)


# --------------------------------------------------------------------------- greedy / max_tokens


async def test_greedy_stream_matches_final_output_and_is_deterministic(engine: VLLMEngine) -> None:
    from vllm.inputs import tokens_input
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VLLMSamplingParams

    first = await collect(engine, request(temperature=0.0, max_tokens=32))
    second = await collect(engine, request(temperature=0.0, max_tokens=32))
    assert_one_choice(first, 32, greedy=True)
    assert len(first) > 1, "expected a stream of several deltas"
    assert text_of(first) == text_of(second)
    assert [c.num_tokens for c in first] == [c.num_tokens for c in second]

    # The same request straight to AsyncLLM, final output only: our deltas add up to it.
    ids = engine.async_llm.get_tokenizer().encode(PROMPT)
    final_only = VLLMSamplingParams(temperature=0.0, max_tokens=32, output_kind=RequestOutputKind.FINAL_ONLY)
    outs = [
        o async for o in engine.async_llm.generate(tokens_input(ids, prompt=PROMPT), final_only, "final-only")
    ]
    assert len(outs) == 1 and outs[0].finished
    assert text_of(first) == outs[0].outputs[0].text
    assert tokens_of(first) == len(outs[0].outputs[0].token_ids) == 32


async def test_max_tokens_is_exact(engine: VLLMEngine) -> None:
    for max_tokens in (1, 7):
        chunks = await collect(engine, request(temperature=0.0, max_tokens=max_tokens))
        assert_one_choice(chunks, max_tokens, greedy=True)


async def test_default_max_tokens_is_capped_by_the_context(engine: VLLMEngine) -> None:
    tokenizer = engine.async_llm.get_tokenizer()
    ids = tokenizer.encode(" lorem ipsum dolor" * 1000, add_special_tokens=False)[: CONTEXT - 6]
    prompt = tokenizer.decode(ids)
    room = CONTEXT - engine.count_tokens(prompt)
    assert 1 <= room < 16, f"test setup: {room} tokens of room, wanted fewer than default_max_tokens=16"
    chunks = await collect(engine, request(prompt=prompt, temperature=0.0))
    assert_one_choice(chunks, room, greedy=True)

    with pytest.raises(ContextLengthExceededError) as err:
        await collect(engine, request(prompt=prompt + prompt, temperature=0.0))
    assert err.value.param == "prompt"


# --------------------------------------------------------------------------- n / seed / logprobs / stop


async def test_n_returns_every_index(engine: VLLMEngine) -> None:
    chunks = await collect(engine, request(temperature=1.0, n=2, max_tokens=8, seed=5))
    choices = by_index(chunks)
    assert sorted(choices) == [0, 1]
    for choice in choices.values():
        assert_one_choice(choice, 8, greedy=False)
    assert choices[0][0].prompt_tokens == choices[1][0].prompt_tokens


async def test_greedy_n_repeats_the_greedy_completion(engine: VLLMEngine) -> None:
    chunks = await collect(engine, request(temperature=0.0, n=3, max_tokens=8))
    choices = by_index(chunks)
    assert sorted(choices) == [0, 1, 2]
    texts = {text_of(c) for c in choices.values()}
    assert len(texts) == 1
    single = await collect(engine, request(temperature=0.0, max_tokens=8))
    assert texts == {text_of(single)}


async def test_seed_reproduces_a_sampled_completion(engine: VLLMEngine) -> None:
    a = await collect(engine, request(temperature=1.0, max_tokens=16, seed=1234))
    b = await collect(engine, request(temperature=1.0, max_tokens=16, seed=1234))
    c = await collect(engine, request(temperature=1.0, max_tokens=16, seed=4321))
    assert text_of(a) == text_of(b) and tokens_of(a) == tokens_of(b)
    # 16 tokens drawn from a near-uniform 32k vocabulary: another seed gives another text.
    assert text_of(a) != text_of(c)


async def test_logprobs_have_the_sampled_token_and_top_alternatives(engine: VLLMEngine) -> None:
    chunks = await collect(engine, request(temperature=0.0, max_tokens=8, logprobs=3))
    assert_one_choice(chunks, 8, greedy=True)
    entries = [lp for c in chunks for lp in (c.logprobs or ())]
    assert [len(c.logprobs or ()) for c in chunks] == [c.num_tokens for c in chunks]
    assert len(entries) == 8
    for entry in entries:
        assert entry.logprob <= 0.0
        assert len(entry.top) == 3
        top_lps = [lp for _, lp in entry.top]
        assert top_lps == sorted(top_lps, reverse=True) and all(lp <= 0.0 for lp in top_lps)
        # greedy: the sampled token is the most likely one
        assert math.isclose(entry.logprob, top_lps[0], abs_tol=1e-3)

    no_top = await collect(engine, request(temperature=0.0, max_tokens=4, logprobs=0))
    assert all(e.top == () and e.logprob <= 0.0 for c in no_top for e in (c.logprobs or ()))
    plain = await collect(engine, request(temperature=0.0, max_tokens=4))
    assert all(c.logprobs is None for c in plain)


async def test_logprobs_over_vllm_limit_are_rejected(engine: VLLMEngine) -> None:
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(temperature=0.0, max_tokens=2, logprobs=50))
    assert err.value.param == "logprobs"


async def test_stop_string_ends_the_text_before_it(engine: VLLMEngine) -> None:
    full = text_of(await collect(engine, request(temperature=0.0, max_tokens=48)))
    # A stop string the greedy text contains, found past its start.
    stop = next(
        (full[i : i + 3] for i in range(len(full) // 3, len(full) - 3) if full[i : i + 3].isalnum()),
        None,
    )
    assert stop is not None, f"test setup: no 3-character word in {full!r}"
    cut = full.find(stop)
    assert cut > 0, f"test setup: stop {stop!r} at the start of {full!r}"
    chunks = await collect(engine, request(temperature=0.0, max_tokens=48, stop=(stop,)))
    assert text_of(chunks) == full[:cut]
    assert stop not in text_of(chunks)
    assert chunks[-1].finish_reason == "stop"


# --------------------------------------------------------------------------- beam search


async def test_beam_search_returns_the_best_n_beams_deterministically(engine: VLLMEngine) -> None:
    a = await collect(engine, request(temperature=0.0, num_beams=3, n=2, max_tokens=6, logprobs=2))
    b = await collect(engine, request(temperature=0.0, num_beams=3, n=2, max_tokens=6, logprobs=2))
    assert [c.index for c in a] == [0, 1]
    assert [(c.text, c.num_tokens) for c in a] == [(c.text, c.num_tokens) for c in b]
    for chunk in a:
        assert chunk.prompt_tokens == engine.count_tokens(PROMPT)
        assert chunk.finish_reason in ("length", "stop") and 1 <= chunk.num_tokens <= 6
        assert chunk.logprobs is not None and len(chunk.logprobs) == chunk.num_tokens
        assert all(e.logprob <= 0.0 and len(e.top) == 2 for e in chunk.logprobs)

    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(num_beams=2, n=3, max_tokens=4))
    assert err.value.param == "n"
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(num_beams=2, stop=("x",), max_tokens=4))
    assert err.value.param == "stop"


# --------------------------------------------------------------------------- load / cancellation


async def test_32_concurrent_requests_all_complete(engine: VLLMEngine) -> None:
    prompts = [f"{PROMPT} number {i}" for i in range(32)]
    results = await asyncio.gather(
        *(collect(engine, request(prompt=p, temperature=0.0, max_tokens=16)) for p in prompts)
    )
    for prompt, chunks in zip(prompts, results, strict=True):
        assert_one_choice(chunks, 16, greedy=True)
        assert chunks[0].prompt_tokens == engine.count_tokens(prompt)
    stats = await engine.engine_stats()
    assert stats["unfinished_requests"] == 0
    assert 0.0 <= stats["kv_cache_usage_ratio"] <= 1.0
    assert stats["generation_tokens_total"] >= 32 * 16


async def _assert_nothing_left(engine: VLLMEngine) -> None:
    # The frontend dropped the request at once ...
    assert engine.async_llm.output_processor.get_num_unfinished_requests() == 0
    # ... and the engine core too: after another request runs to the end, the
    # scheduler reports nothing running or waiting. (A leaked request would still
    # be decoding its 1,500 tokens.)
    assert_one_choice(await collect(engine, request(temperature=0.0, max_tokens=4)), 4, greedy=True)
    # vLLM's output handler records a step's scheduler stats before the step's
    # outputs reach their consumer, so these are as of that request's last step.
    stats = await engine.engine_stats()
    assert (stats["running_requests"], stats["waiting_requests"]) == (0.0, 0.0)


async def test_closing_the_stream_aborts_the_request(engine: VLLMEngine) -> None:
    stream = engine.generate(request(temperature=0.0, max_tokens=1500))
    first = await anext(stream)
    second = await anext(stream)
    assert first.num_tokens >= 1 and second.finish_reason is None
    await stream.aclose()
    await _assert_nothing_left(engine)


async def test_cancelling_the_consumer_aborts_the_request(engine: VLLMEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        # as the generation deployment consumes an engine
        async with contextlib.aclosing(engine.generate(request(temperature=1.0, n=2, max_tokens=1500))) as s:
            async for _ in s:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_nothing_left(engine)
