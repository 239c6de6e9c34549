"""The OpenAI-compatible API through the real Serve app, with the official openai client."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import openai
import pytest

from tests.integration.conftest import KEYS, TINY, Platform, deployment_call

pytestmark = pytest.mark.integration

NORMANS = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
    "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland "
    "and Norway. Their leader Rollo agreed to swear fealty to King Charles III of West Francia. "
    "The cultural identity of the Normans emerged in the first half of the 10th century."
)


def test_models_list_has_kinds_engines_and_context(platform: Platform) -> None:
    models = {m.id: m.model_extra for m in platform.client().models.list().data}
    extractive = models["extractive"]
    assert extractive is not None and len(extractive.pop("config_digest")) == 16
    assert extractive == {
        "kind": "chat",
        "engine": "extractive",
        "context_length": 512,
        "version": "v1",
        "platform_version": extractive["platform_version"],
    }
    assert extractive["platform_version"] not in ("", "unknown")
    assert models[TINY]["kind"] == "chat" and models[TINY]["engine"] == "transformers"
    assert models["all-minilm-l6-v2"] == {
        "kind": "embedding",
        "engine": "sentence-transformers",
        "context_length": 256,
        "platform_version": extractive["platform_version"],
    }
    assert platform.client().models.retrieve("extractive").id == "extractive"


def test_extractive_chat_answers_from_context(platform: Platform) -> None:
    resp = platform.client().chat.completions.create(
        model="extractive",
        messages=[
            {"role": "system", "content": NORMANS},
            {"role": "user", "content": "Which countries did the Norse raiders come from?"},
        ],
    )
    answer = resp.choices[0].message.content or ""
    assert answer.startswith("They were descended from Norse raiders")
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.prompt_tokens > 50
    assert resp.usage.completion_tokens > 10
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_stream_matches_non_stream_and_ends_with_usage(platform: Platform) -> None:
    messages = [{"role": "user", "content": NORMANS + "\n\nWho was the leader of the Normans?"}]
    full = platform.client().chat.completions.create(model="extractive", messages=messages)
    chunks = list(
        platform.client().chat.completions.create(
            model="extractive", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # sentence by sentence
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_ends_with_done(platform: Platform) -> None:
    body = {
        "model": "extractive",
        "stream": True,
        "messages": [{"role": "user", "content": NORMANS + "\n\nWho?"}],
    }
    with httpx.stream(
        "POST",
        f"{platform.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEYS['acme']}"},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"]
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    # data events, and one comment (skipped by SSE parsers) with the stream's stage timings
    assert all(e.startswith("data: ") for e in events if not e.startswith(":"))
    assert [e for e in events if e.startswith(":")] == [events[-2]]
    assert events[-2].startswith(": server-timing auth;dur=")
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_completions_stream_and_not(platform: Platform) -> None:
    client = platform.client()
    prompt = NORMANS + "\n\nWhat region in France is named after the Normans?"
    full = client.completions.create(model="extractive", prompt=prompt, max_tokens=12)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 12
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="extractive", prompt=prompt, max_tokens=12, stream=True)
        if c.choices
    )
    assert streamed == full.choices[0].text
    two = client.completions.create(model="extractive", prompt=[prompt, prompt], max_tokens=5)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == two.choices[1].text


def test_transformers_model_through_api(platform: Platform) -> None:
    client = platform.client()
    resp = client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hello there"}], max_tokens=8, temperature=0, n=1
    )
    assert resp.usage.completion_tokens <= 8 and resp.choices[0].finish_reason in ("stop", "length")
    streamed = client.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        == resp.choices[0].message.content
    )
    many = client.completions.create(
        model=TINY, prompt="abc", max_tokens=4, n=2, temperature=1.0, seed=7, logprobs=2
    )
    assert sorted(c.index for c in many.choices) == [0, 1]
    assert all(lp <= 0 for c in many.choices for lp in c.logprobs.token_logprobs)


def test_embeddings_float_base64_and_similarity(platform: Platform) -> None:
    client = platform.client()
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue grew by 8%."]
    as_float = client.embeddings.create(model="all-minilm-l6-v2", input=texts, encoding_format="float")
    as_b64 = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # the SDK asks for base64
    a = np.array([d.embedding for d in as_float.data])
    b = np.array([d.embedding for d in as_b64.data])
    assert a.shape == (3, 384) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    assert a[0] @ a[1] > a[0] @ a[2] + 0.3
    assert as_float.usage.prompt_tokens > 10
    one = client.embeddings.create(
        model="all-minilm-l6-v2", input="A cat sits on the mat.", encoding_format="float"
    )
    assert np.allclose(one.data[0].embedding, a[0], atol=1e-5)


async def test_concurrent_embeddings_are_batched(platform: Platform) -> None:
    client = platform.async_client()
    results = await asyncio.gather(
        *(client.embeddings.create(model="all-minilm-l6-v2", input=f"text number {i}") for i in range(32))
    )
    assert len(results) == 32
    sizes = await asyncio.to_thread(deployment_call, "embedding-all-minilm-l6-v2", "batch_stats")
    assert max(sizes) > 1


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"model": "extractive", "temperature": 0.7}, "temperature"),
        ({"model": "extractive", "n": 2}, "n"),
        ({"model": "extractive", "top_p": 0.5}, "top_p"),
        ({"model": "extractive", "logprobs": True}, "logprobs"),
        ({"model": "extractive", "extra_body": {"num_beams": 2}}, "num_beams"),
        ({"model": "extractive", "extra_body": {"bogus": 1}}, "bogus"),
        ({"model": "extractive", "max_tokens": 0}, "max_tokens"),
        ({"model": "all-minilm-l6-v2"}, "model"),
    ],
)
def test_bad_chat_requests_are_400_naming_the_param(platform: Platform, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        platform.client().chat.completions.create(messages=[{"role": "user", "content": "hi"}], **kwargs)
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == param
    assert exc.value.body["type"] == "invalid_request_error"


def test_context_length_exceeded_says_both_numbers(platform: Platform) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        platform.client().chat.completions.create(
            model="extractive", messages=[{"role": "user", "content": "word " * 600}]
        )
    assert exc.value.code == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in exc.value.message
    assert "600" in exc.value.message or "60" in exc.value.message


def test_unknown_model_is_404(platform: Platform) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        platform.client().chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        platform.client().embeddings.create(model="gpt-9", input="x")


def test_auth_required_and_checked(platform: Platform) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        platform.client(key="sk-wrong").models.list()
    assert exc.value.status_code == 401 and exc.value.body["type"] == "authentication_error"
    r = httpx.get(f"{platform.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert platform.client(key=KEYS["globex"]).models.list().data
    assert httpx.get(f"{platform.url}/healthz").status_code == 200  # probes need no key


def test_dimensions_rejected_clearly(platform: Platform) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        platform.client().embeddings.create(model="all-minilm-l6-v2", input="x", dimensions=128)
    assert exc.value.body["param"] == "dimensions" and "384" in exc.value.message


def _raw(platform: Platform, content: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(
        f"{platform.url}{path}",
        content=content,
        headers={"Authorization": f"Bearer {KEYS['acme']}", "Content-Type": "application/json"},
    )


def test_malformed_json_is_400(platform: Platform) -> None:
    r = _raw(platform, b'{"model": "extractive", "messages": [')
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "JSON" in r.json()["error"]["message"]


def test_oversized_body_is_413(platform: Platform) -> None:
    big = json.dumps(
        {"model": "extractive", "messages": [{"role": "user", "content": "x" * 70_000}]}
    ).encode()
    r = _raw(platform, big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as exc:
        platform.client().chat.completions.create(
            model="extractive", messages=[{"role": "user", "content": "x" * 70_000}]
        )
    assert exc.value.status_code == 413


def test_every_response_has_request_id(platform: Platform) -> None:
    for r in (
        httpx.get(f"{platform.url}/healthz"),
        httpx.get(f"{platform.url}/nope"),
        _raw(platform, b"{"),
        httpx.get(f"{platform.url}/v1/models", headers={"Authorization": f"Bearer {KEYS['acme']}"}),
    ):
        assert len(r.headers.get_list("x-request-id")) == 1, r.headers
    echoed = httpx.get(f"{platform.url}/healthz", headers={"X-Request-ID": "my-trace-123"})
    assert echoed.headers["x-request-id"] == "my-trace-123"
    unknown = httpx.get(f"{platform.url}/nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


async def test_client_disconnect_cancels_generation(platform: Platform) -> None:
    before = await asyncio.to_thread(deployment_call, f"generation-{TINY}", "stats")
    body = {
        "model": TINY,
        "stream": True,
        "max_tokens": 400,
        "temperature": 0,
        "messages": [{"role": "user", "content": "go on"}],
        "stop": ["<never>"],
    }
    async with (
        httpx.AsyncClient(timeout=60) as http,
        http.stream(
            "POST",
            f"{platform.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEYS['acme']}"},
        ) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break  # one chunk read, then hang up
    for _ in range(200):
        stats = await asyncio.to_thread(deployment_call, f"generation-{TINY}", "stats")
        if stats["aborted"] > before["aborted"] and stats["active"] == 0:
            break
        await asyncio.sleep(0.1)
    assert stats["aborted"] == before["aborted"] + 1
    assert stats["active"] == 0
