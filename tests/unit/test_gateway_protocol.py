"""Wire parsing: OpenAI field names, bounds, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from services.errors import InvalidRequestError, UnsupportedParameterError, status_for
from services.gateway.auth import Authenticator
from services.gateway.config import AuthConfig, hash_key
from services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)
from services.generation.protocol import SamplingParams, check_supported

pytestmark = pytest.mark.unit
MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "m", "messages": MSG, "foo": 1}, "foo", "Unrecognized request argument supplied: foo"),
        ({"messages": MSG}, "model", "Missing required parameter"),
        ({"model": "m", "messages": []}, "messages", "at least 1"),
        ({"model": "m", "messages": MSG, "temperature": 3}, "temperature", "less than or equal to 2"),
        ({"model": "m", "messages": MSG, "top_p": 0}, "top_p", "greater than 0"),
        ({"model": "m", "messages": MSG, "n": 0}, "n", "greater than or equal to 1"),
        ({"model": "m", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        (
            {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
            "messages.0.role",
            "Input should be",
        ),
        (
            {"model": "m", "messages": MSG, "stream_options": {"include_usage": True}},
            "stream_options",
            "stream",
        ),
        ({"model": "m", "messages": MSG, "top_logprobs": 2}, "top_logprobs", "logprobs"),
    ],
)
def test_chat_validation_errors_name_the_field(body: dict, param: str, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(ChatCompletionRequest, body)
    assert exc.value.param == param or (
        param in ("stream_options", "top_logprobs") and exc.value.param == "body"
    )
    assert fragment in exc.value.message
    assert status_for(exc.value) == 400


def test_chat_sampling_maps_openai_fields() -> None:
    req = parse_request(
        ChatCompletionRequest,
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "max_completion_tokens": 7,
            "stop": "END",
            "logprobs": True,
            "top_logprobs": 3,
            "seed": 1,
            "top_k": 5,
            "use_beam_search": True,
            "n": 2,
        },
    )
    p = req.sampling()
    assert (p.max_tokens, p.stop, p.logprobs, p.seed, p.top_k, p.n, p.num_beams) == (
        7,
        ("END",),
        3,
        1,
        5,
        2,
        2,
    )
    assert req.chat_messages()[0].content == "ab"
    assert {"max_tokens", "logprobs", "num_beams", "seed", "top_k"} <= p.explicit


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
    ],
)
def test_unsupported_openai_features_are_400_naming_them(extra: dict, param: str) -> None:
    req = parse_request(ChatCompletionRequest, {"model": "m", "messages": MSG, **extra})
    with pytest.raises(UnsupportedParameterError) as exc:
        req.sampling()
    assert exc.value.param == param


def test_completion_and_embedding_requests() -> None:
    c = parse_request(CompletionRequest, {"model": "m", "prompt": ["a", "b"], "logprobs": 2})
    assert c.prompts() == ["a", "b"] and c.sampling().logprobs == 2
    with pytest.raises(UnsupportedParameterError) as exc:
        parse_request(CompletionRequest, {"model": "m", "prompt": "a", "suffix": "z"}).sampling()
    assert exc.value.param == "suffix"  # echo is the engine's to refuse: tests/unit/test_echo_logprobs.py
    e = parse_request(EmbeddingRequest, {"model": "m", "input": "x", "encoding_format": "base64"})
    assert e.texts() == ["x"]
    with pytest.raises(InvalidRequestError) as exc2:
        parse_request(EmbeddingRequest, {"model": "m", "input": "x", "encoding_format": "int8"})
    assert exc2.value.param == "encoding_format"
    with pytest.raises(InvalidRequestError) as exc3:
        parse_request(EmbeddingRequest, {"model": "m", "input": [1, 2, 3]})
    assert exc3.value.param.startswith("input")


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError, match="JSON object"):
        parse_request(ChatCompletionRequest, [1, 2])


def test_check_supported_allows_neutral_values_only() -> None:
    supported = frozenset({"max_tokens", "stop", "seed"})
    check_supported(
        SamplingParams(temperature=0.0, n=1, top_p=1.0, explicit=frozenset({"temperature", "n", "top_p"})),
        supported,
        "x",
    )
    check_supported(SamplingParams(temperature=0.9), supported, "x")  # not explicit: the default is fine
    for params, name in (
        (SamplingParams(temperature=1.0, explicit=frozenset({"temperature"})), "temperature"),
        (SamplingParams(n=2, explicit=frozenset({"n"})), "n"),
        (SamplingParams(logprobs=0, explicit=frozenset({"logprobs"})), "logprobs"),
    ):
        with pytest.raises(UnsupportedParameterError) as exc:
            check_supported(params, supported, "extractive")
        assert exc.value.param == name and "extractive" in exc.value.message


def test_authenticator_maps_keys_to_tenants() -> None:
    auth = Authenticator(AuthConfig(enabled=True, keys=[{"tenant": "acme", "sha256": hash_key("sk-1")}]))
    assert auth.tenant_for("Bearer sk-1") == "acme"
    for header in (None, "", "Bearer ", "Basic sk-1", "Bearer sk-2"):
        with pytest.raises(Exception) as exc:
            auth.tenant_for(header)
        assert status_for(exc.value) == 401
        assert "sk-1" not in str(exc.value) and "sk-2" not in str(exc.value)  # keys never echoed
    assert Authenticator(AuthConfig(enabled=False)).tenant_for(None) == "local"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": False}, "temperature"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"stream": "false"}, "stream"),
        ({"n": 1.5}, "n"),
    ],
)
def test_json_types_are_taken_as_sent_not_coerced(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(
            ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], **body}
        )
    assert exc.value.param == param
    # an integer is a valid number
    req = parse_request(
        ChatCompletionRequest,
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1},
    )
    assert req.temperature == 1.0
