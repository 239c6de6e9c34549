"""``echo`` on /v1/completions: the wire model, the engines' support, and the transformers engine.

The transformers engine's prompt logprobs are checked against a forward pass of the
same weights through plain transformers, so they are the model's own conditional
log-probabilities and not merely well-shaped numbers.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.errors import InvalidRequestError, UnsupportedParameterError
from services.gateway.protocol import CompletionRequest, parse_request
from services.generation.config import TransformersModelConfig
from services.generation.extractive import ExtractiveEngine
from services.generation.fixed import FixedEngine
from services.generation.protocol import (
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    check_supported,
)
from services.generation.transformers_engine import TransformersEngine
from services.generation.vllm_engine import VLLMEngine
from tests.fixtures.tiny_hf_model import build_tiny_model

pytestmark = pytest.mark.unit
_ids = itertools.count()
PROMPT = "the cat sat on the mat"


# -- the wire model -------------------------------------------------------------------------
def test_echo_is_accepted_and_reaches_the_sampling_params() -> None:
    req = parse_request(
        CompletionRequest, {"model": "m", "prompt": "a b", "echo": True, "logprobs": 1, "max_tokens": 0}
    )
    p = req.sampling()
    assert p.echo is True and p.max_tokens == 0 and p.logprobs == 1
    assert "echo" in p.explicit
    assert parse_request(CompletionRequest, {"model": "m", "prompt": "a"}).sampling().echo is False


def test_max_tokens_zero_needs_echo() -> None:
    req = parse_request(CompletionRequest, {"model": "m", "prompt": "a", "max_tokens": 0})
    with pytest.raises(InvalidRequestError) as exc:
        req.sampling()
    assert exc.value.param == "max_tokens" and "echo" in exc.value.message
    with pytest.raises(InvalidRequestError) as neg:
        parse_request(CompletionRequest, {"model": "m", "prompt": "a", "max_tokens": -1, "echo": True})
    assert neg.value.param == "max_tokens"


@pytest.mark.parametrize("param", ["suffix", "logit_bias"])
def test_the_other_unsupported_completion_params_stay_rejected(param: str) -> None:
    value: Any = "x" if param == "suffix" else {"1": 2}
    req = parse_request(CompletionRequest, {"model": "m", "prompt": "a", "echo": True, param: value})
    with pytest.raises(UnsupportedParameterError) as exc:
        req.sampling()
    assert exc.value.param == param


@pytest.mark.parametrize("engine", [ExtractiveEngine, FixedEngine, VLLMEngine])
def test_engines_without_echo_refuse_it_naming_it(engine: Any) -> None:
    params = SamplingParams(echo=True, max_tokens=0, explicit=frozenset({"echo", "max_tokens"}))
    assert "echo" not in engine.supported_params
    with pytest.raises(UnsupportedParameterError) as exc:
        check_supported(params, engine.supported_params, engine.kind)
    assert exc.value.param == "echo" and exc.value.code == "unsupported_parameter"
    assert "echo" in exc.value.message and "prompt" in exc.value.message
    # echo: false set explicitly changes nothing, so it is never refused
    check_supported(SamplingParams(echo=False, explicit=frozenset({"echo"})), engine.supported_params, "x")


# -- the transformers engine ----------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-echo"))


@contextlib.asynccontextmanager
async def _engine(model_dir: Path) -> AsyncIterator[TransformersEngine]:
    cfg = TransformersModelConfig(
        name="tiny", engine="transformers", path=str(model_dir), device="cpu", batch_wait_timeout_s=0.01
    )
    engine = TransformersEngine(cfg)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()


def _request(prompt: str, **params: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"echo-{next(_ids)}",
        params=SamplingParams(**params, explicit=frozenset(params)),
        prompt=prompt,
    )


def _reference_logprobs(model_dir: Path, prompt: str) -> tuple[list[int], list[float]]:
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    ids = tok.encode(prompt)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits.float(), dim=-1)
    return ids, [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]


async def test_echo_with_max_tokens_zero_scores_the_prompt(model_dir: Path) -> None:
    ids, want = _reference_logprobs(model_dir, PROMPT)
    async with _engine(model_dir) as engine:
        assert "echo" in engine.supported_params
        chunks = [
            c
            async for c in engine.generate(
                _request(PROMPT, temperature=0.0, max_tokens=0, echo=True, logprobs=2)
            )
        ]
        calls = engine.stats.generate_calls
    assert len(chunks) == 1
    (c,) = chunks
    assert c.text == PROMPT and c.num_tokens == 0 and c.finish_reason == "length"
    assert c.prompt_tokens == len(ids)
    assert c.logprobs is not None and len(c.logprobs) == len(ids)
    assert c.logprobs[0].logprob is None and c.logprobs[0].top == ()
    got = [lp.logprob for lp in c.logprobs[1:]]
    assert all(g is not None for g in got)
    assert got == pytest.approx(want, abs=1e-4)
    assert all(len(lp.top) == 2 for lp in c.logprobs[1:])
    assert all(lp.top[0][1] >= lp.logprob - 1e-6 for lp in c.logprobs[1:] if lp.logprob is not None)
    assert calls == 0, "scoring the prompt must not run generate"
    # the tokens are the prompt's: their texts concatenate back to it (byte-level BPE)
    assert "".join(lp.token for lp in c.logprobs) == PROMPT


async def test_echo_then_generation_counts_only_generated_tokens(model_dir: Path) -> None:
    async with _engine(model_dir) as engine:
        plain = [c async for c in engine.generate(_request(PROMPT, temperature=0.0, max_tokens=5))]
        echoed = [
            c
            async for c in engine.generate(
                _request(PROMPT, temperature=0.0, max_tokens=5, echo=True, logprobs=0)
            )
        ]
    first, rest = echoed[0], echoed[1:]
    assert first.text == PROMPT and first.num_tokens == 0 and first.finish_reason is None
    assert first.prompt_tokens is not None and all(c.prompt_tokens is None for c in rest)
    assert "".join(c.text for c in rest) == "".join(c.text for c in plain)
    assert sum(c.num_tokens for c in echoed) == 5
    assert echoed[-1].finish_reason == "length"
    gen_lps = [lp for c in rest for lp in (c.logprobs or ())]
    assert len(gen_lps) == 5 and all(lp.logprob is not None and math.isfinite(lp.logprob) for lp in gen_lps)


async def test_echo_without_logprobs_and_with_n(model_dir: Path) -> None:
    async with _engine(model_dir) as engine:
        chunks: list[GenerationChunk] = [
            c async for c in engine.generate(_request(PROMPT, temperature=1.0, max_tokens=0, echo=True, n=3))
        ]
    assert sorted(c.index for c in chunks) == [0, 1, 2]
    assert all(c.text == PROMPT and c.logprobs is None and c.finish_reason == "length" for c in chunks)


async def test_likelier_text_scores_higher(model_dir: Path) -> None:
    """A text the model itself produces greedily is likelier than the same tokens shuffled:
    the echo logprobs rank texts, which is all CrowS-Pairs needs."""
    async with _engine(model_dir) as engine:
        gen = [c async for c in engine.generate(_request("a", temperature=0.0, max_tokens=12))]
        greedy = "a" + "".join(c.text for c in gen)
        words = greedy.split()
        shuffled = " ".join(reversed(words))

        async def score(text: str) -> float:
            (c,) = [x async for x in engine.generate(_request(text, max_tokens=0, echo=True, logprobs=0))]
            return sum(lp.logprob for lp in c.logprobs or () if lp.logprob is not None)

        assert await score(greedy) > await score(shuffled)
