"""The Serve deployments in Serve's local testing mode (no cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from ray import serve

from services.embeddings.deployment import EmbeddingServer
from services.errors import ContextLengthExceededError, InvalidRequestError, UnsupportedParameterError
from services.generation.deployment import GenerationDeployment
from services.generation.protocol import (
    GenerationChunk,
    GenerationRequest,
    GenerationStats,
    SamplingParams,
)

pytestmark = pytest.mark.unit
EMB = {"name": "all-minilm-l6-v2", "max_batch_size": 16, "batch_wait_timeout_s": 0.05}


@pytest.fixture(scope="module")
def embedder() -> EmbeddingServer:
    # Serve's local testing mode cannot run @serve.batch (it needs the replica
    # context); the batched deployment is covered by the integration tests.
    return EmbeddingServer(EMB)


@pytest.fixture(scope="module")
def gen_handle():  # type: ignore[no-untyped-def]
    model = {"name": "extractive", "engine": "extractive", "context_length": 64}
    return serve.run(GenerationDeployment.bind(model, [EMB]), name="gen-unit", _local_testing_mode=True)


def test_one_forward_pass_serves_several_callers(embedder: EmbeddingServer) -> None:
    callers = [[f"sentence {i}", "other"] for i in range(8)]
    rows = embedder.encode_many(callers)
    assert [r.shape for r in rows] == [(2, 384)] * 8
    assert embedder.batch_sizes[-1] == 16
    alone = embedder.encode_many([["sentence 3"]])[0]
    assert np.allclose(alone[0], rows[3][0], atol=1e-5)
    assert embedder.check(["sentence 3", "other"]) == 4 + 3  # [CLS] sentence 3 [SEP] + [CLS] other [SEP]


def test_embedding_rejects_empty_and_too_long(embedder: EmbeddingServer) -> None:
    with pytest.raises(InvalidRequestError, match=r"input\[1\] is empty"):
        embedder.check(["ok", "  "])
    with pytest.raises(ContextLengthExceededError, match=r"256 tokens; input\[0\] has 302"):
        embedder.check(["word " * 300])


async def test_generation_unary_and_stream_agree(gen_handle) -> None:  # type: ignore[no-untyped-def]
    req = GenerationRequest(
        request_id="a",
        params=SamplingParams(),
        prompt="Cats purr. Dogs bark loudly. Fish swim.\n\nWhat do dogs do?",
    )
    unary = await gen_handle.generate.remote(req)
    streamed = [c async for c in gen_handle.generate_stream.options(stream=True).remote(req)]
    # chunks, then the replica's measurements (never sent to clients)
    assert [type(c) for c in unary] == [GenerationChunk] * (len(unary) - 1) + [GenerationStats]
    assert [c.text for c in unary[:-1]] == [c.text for c in streamed[:-1]]
    assert unary[0].text == "Dogs bark loudly."
    stats = unary[-1]
    assert stats.completion_tokens == sum(c.num_tokens for c in unary[:-1]) > 0
    assert stats.prompt_tokens > 10 and stats.cost_usd is None  # no pricing configured
    assert stats.first_token_at is not None and stats.engine_s > 0
    info = await gen_handle.info.remote()
    assert len(info.pop("config_digest")) == 16
    assert info == {
        "id": "extractive",
        "kind": "chat",
        "version": "v1",
        "engine": "extractive",
        "context_length": 64,
        "supported_params": ["max_tokens", "seed", "stop"],
    }
    stats = await gen_handle.stats.remote()
    assert stats["completed"] == 2 and stats["active"] == 0


async def test_generation_checks_context_and_params(gen_handle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ContextLengthExceededError) as exc:
        await gen_handle.generate.remote(
            GenerationRequest(request_id="b", params=SamplingParams(), prompt="word " * 100)
        )
    assert "maximum context length is 64 tokens" in str(exc.value) and "102" in str(exc.value)
    with pytest.raises(ContextLengthExceededError, match=r"\(\d+ in the prompt, 60 in the completion\)"):
        await gen_handle.generate.remote(
            GenerationRequest(
                request_id="c",
                params=SamplingParams(max_tokens=60, explicit=frozenset({"max_tokens"})),
                prompt="a b c d e f",
            )
        )
    with pytest.raises(UnsupportedParameterError):
        await gen_handle.generate.remote(
            GenerationRequest(
                request_id="d", params=SamplingParams(top_k=5, explicit=frozenset({"top_k"})), prompt="x"
            )
        )
