"""/openapi.json: every route's request body, responses and error envelope; no Ray.

The response schemas are checked against what the serving code really builds
(``OpenAIServing`` over fake deployment handles, ``to_response`` for errors), so a
field added to a response without documenting it fails here before the live
schemathesis run (tests/integration/test_openapi_schemathesis.py) sees it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from services import errors as errs
from services.embeddings.deployment import EmbeddingResult
from services.gateway import schemas as out
from services.gateway.app import api
from services.gateway.errors import to_response
from services.gateway.openapi import ERRORS, Route, build_openapi
from services.gateway.openapi_routes import ROUTES
from services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)
from services.gateway.serving import OpenAIServing
from services.generation.protocol import GenerationChunk, GenerationStats, TokenLogprob
from services.rag.types import Citation, RagMeta

pytestmark = pytest.mark.unit

SPEC = api.openapi()
OPERATIONS = [(method, path) for path, ops in SPEC["paths"].items() for method in ops]
BODY_OPS = {
    ("post", "/v1/chat/completions"): "ChatCompletionRequest",
    ("post", "/v1/completions"): "CompletionRequest",
    ("post", "/v1/embeddings"): "EmbeddingRequest",
    ("post", "/v1/retrieve"): "RetrieveRequest",
    ("post", "/v1/collections/{name}/documents"): "DocumentsRequest",
}
#: what each route can answer with besides 200, as read from app.py and the serving code
EXPECTED_STATUSES = {
    ("get", "/healthz"): {500},
    ("get", "/readyz"): {500, 503},
    # every /v1 route: 503 while the platform starts (the readiness gate)
    ("get", "/v1/models"): {401, 500, 503},
    ("get", "/v1/models/{model}"): {401, 404, 500, 503},
    ("post", "/v1/chat/completions"): {400, 401, 404, 413, 500, 503},
    ("post", "/v1/completions"): {400, 401, 404, 413, 500, 503},
    ("post", "/v1/embeddings"): {400, 401, 404, 413, 500, 503},
    ("post", "/v1/retrieve"): {400, 401, 404, 413, 500, 503},
    ("get", "/v1/collections"): {401, 404, 500, 503},
    ("post", "/v1/collections/{name}/documents"): {400, 401, 404, 413, 500, 503},
    ("delete", "/v1/collections/{name}/documents/{doc_id}"): {401, 404, 500, 503},
    ("get", "/v1/usage"): {400, 401, 403, 404, 500, 503},
}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of ``schema`` whose ``#/components/...`` refs resolve in the spec."""
    return Draft202012Validator({**schema, "components": SPEC["components"]})


def component(name: str) -> Draft202012Validator:
    return validator({"$ref": f"#/components/schemas/{name}"})


def assert_valid(name: str, instance: Any) -> None:
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in component(name).iter_errors(instance)]
    assert problems == [], f"{name}: {problems}"


# -- the document -------------------------------------------------------------------------
def test_spec_is_valid_openapi_3_1_and_built_once() -> None:
    assert SPEC["openapi"] == "3.1.0"
    validate_spec(SPEC)
    for schema in SPEC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    assert api.openapi() is SPEC  # cached on the app, not rebuilt per request
    assert api.openapi_schema is SPEC


def test_every_route_is_documented_once() -> None:
    # what FastAPI itself finds in the app's routes (its default document)
    plain = get_openapi(title="t", version="0", routes=api.routes)["paths"]
    routes = {(method, path) for path, ops in plain.items() for method in ops}
    assert routes == set(OPERATIONS) == set(EXPECTED_STATUSES)
    ids = [op["operationId"] for ops in SPEC["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) == 12
    assert SPEC["paths"]["/v1/chat/completions"]["post"]["operationId"] == "createChatCompletion"


def test_build_fails_for_an_undocumented_route_or_a_stale_entry() -> None:
    app = FastAPI()

    @app.get("/v1/new")
    def new() -> dict[str, str]:
        return {}

    with pytest.raises(LookupError, match=r"GET /v1/new is not documented"):
        build_openapi(app, {})
    entry = Route("getNew", "x", "New", out.Health)
    assert "/v1/new" in build_openapi(app, {("GET", "/v1/new"): entry})["paths"]
    with pytest.raises(LookupError, match=r"the app does not have: \[\('GET', '/v1/old'\)\]"):
        build_openapi(app, {("GET", "/v1/new"): entry, ("GET", "/v1/old"): entry})


def test_request_bodies_are_the_protocol_models() -> None:
    for method, path in OPERATIONS:
        op = SPEC["paths"][path][method]
        model = BODY_OPS.get((method, path))
        if model is None:
            assert "requestBody" not in op, (method, path)
            continue
        body = op["requestBody"]
        assert body["required"] is True
        assert list(body["content"]) == ["application/json"]
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        # unknown fields are a 400 ("Unrecognized request argument supplied"), and the schema says so
        assert SPEC["components"]["schemas"][model]["additionalProperties"] is False
    chat = SPEC["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["required"] == ["model", "messages"]
    assert chat["properties"]["temperature"]["anyOf"][0] == {"maximum": 2, "minimum": 0, "type": "number"}


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_error_responses_are_documented_in_the_envelope(method: str, path: str) -> None:
    op = SPEC["paths"][path][method]
    statuses = {int(s) for s in op["responses"]} - {200}
    assert statuses == EXPECTED_STATUSES[(method, path)]
    assert 422 not in statuses  # the routes never answer 422
    for status in statuses:
        response = op["responses"][str(status)]
        assert response["content"] == {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
        }
        if status in (401, 413, 500, 503):  # what they mean everywhere, maybe with more
            assert response["description"].startswith(ERRORS[status])
        assert response["description"].endswith(".")
        headers = set(response["headers"])
        assert {"X-Request-ID", "Server-Timing"} <= headers
        assert ("Retry-After" in headers) == (status in (429, 503))
    assert {"X-Request-ID", "Server-Timing"} <= set(op["responses"]["200"]["headers"])
    secured = path.startswith("/v1/")
    assert op["security"] == ([{"bearerAuth": []}] if secured else [])


def test_headers_and_security_scheme() -> None:
    headers = SPEC["components"]["headers"]
    assert headers["X-Request-ID"]["required"] is True and headers["Server-Timing"]["required"] is True
    assert headers["Retry-After"]["schema"] == {"type": "string", "pattern": "^[0-9]+$"}
    assert SPEC["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`llmops keys create`); not needed when auth is off.",
    }
    assert "ValidationError" not in SPEC["components"]["schemas"]
    assert "HTTPValidationError" not in SPEC["components"]["schemas"]


def test_streams_are_documented_as_server_sent_events() -> None:
    streaming = {
        path: op["responses"]["200"]["content"]
        for path, ops in SPEC["paths"].items()
        for op in ops.values()
        if "text/event-stream" in op["responses"]["200"]["content"]
    }
    assert set(streaming) == {"/v1/chat/completions", "/v1/completions"}
    event = streaming["/v1/chat/completions"]["text/event-stream"]["schema"]
    data = event["properties"]["data"]["anyOf"]
    assert data[0] == {"const": "[DONE]"}
    assert data[1]["contentSchema"] == {
        "anyOf": [
            {"$ref": "#/components/schemas/ChatCompletionChunk"},
            {"$ref": "#/components/schemas/ErrorResponse"},
        ]
    }
    assert streaming["/v1/chat/completions"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletion"
    }


def test_query_parameters_are_plain_strings_with_descriptions() -> None:
    params = {p["name"]: p for p in SPEC["paths"]["/v1/usage"]["get"]["parameters"]}
    assert set(params) == {"tenant", "since", "until"}
    for p in params.values():
        assert p["in"] == "query" and p["required"] is False
        assert p["schema"]["type"] == "string" and "anyOf" not in p["schema"]
        assert p["description"]
    model = SPEC["paths"]["/v1/models/{model}"]["get"]["parameters"][0]
    assert model["in"] == "path" and model["example"] == "extractive"


# -- examples --------------------------------------------------------------------------------
def body_examples() -> list[tuple[str, str, Any]]:
    return [
        (path, name, example["value"])
        for (method, path), model in BODY_OPS.items()
        for name, example in SPEC["paths"][path][method]["requestBody"]["content"]["application/json"][
            "examples"
        ].items()
    ]


def test_every_body_route_has_examples() -> None:
    per_route: dict[str, list[str]] = {}
    for path, name, _ in body_examples():
        per_route.setdefault(path, []).append(name)
    assert per_route == {
        "/v1/chat/completions": ["chat", "stream", "rag"],
        "/v1/completions": ["completion", "prompts", "stream"],
        "/v1/embeddings": ["text", "base64"],
        "/v1/retrieve": ["dense", "filtered"],
        "/v1/collections/{name}/documents": ["document"],
    }


@pytest.mark.parametrize(("path", "name", "value"), body_examples())
def test_examples_validate_against_the_request_models_and_the_schema(
    path: str, name: str, value: Any
) -> None:
    route = next(r for (_, p), r in ROUTES.items() if p == path)
    assert route.request is not None
    parsed = parse_request(route.request, value)  # the route's own parsing: raises on a bad example
    assert parsed.model_dump(exclude_unset=True) == value
    assert_valid(route.request.__name__, value)
    if isinstance(parsed, ChatCompletionRequest | CompletionRequest):
        parsed.sampling()  # nothing the extractive engine would refuse as unsupported


def test_schema_states_the_validators_limits() -> None:
    """Limits enforced by validators (not by types) are in the schema too, and agree."""
    msg = [{"role": "user", "content": "hi"}]
    cases: list[tuple[type[Any], str, dict[str, Any], dict[str, Any]]] = [
        (ChatCompletionRequest, "ChatCompletionRequest", {"stop": ["a"] * 4}, {"stop": ["a"] * 5}),
        (CompletionRequest, "CompletionRequest", {"prompt": ["p"] * 64}, {"prompt": ["p"] * 65}),
        (CompletionRequest, "CompletionRequest", {"prompt": ["p"]}, {"prompt": []}),
        (EmbeddingRequest, "EmbeddingRequest", {"input": ["t"] * 2048}, {"input": ["t"] * 2049}),
        (EmbeddingRequest, "EmbeddingRequest", {"input": "t"}, {"input": []}),
    ]
    for model, name, ok, bad in cases:
        base: dict[str, Any] = {"model": "m"}
        if model is ChatCompletionRequest:
            base["messages"] = msg
        elif model is CompletionRequest:
            base["prompt"] = "p"
        else:
            base["input"] = "t"
        parse_request(model, {**base, **ok})
        assert component(name).is_valid({**base, **ok})
        with pytest.raises(errs.InvalidRequestError):
            parse_request(model, {**base, **bad})
        assert not component(name).is_valid({**base, **bad}), bad


# -- responses: the schemas describe what the code builds ---------------------------------------
def test_error_envelope_covers_every_error_class() -> None:
    def subclasses(cls: type[errs.LLMOpsError]) -> list[type[errs.LLMOpsError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    seen = set()
    for cls in subclasses(errs.LLMOpsError):
        response = to_response(cls("boom", param="messages.0.role"), "rid-1")
        assert response.status_code in ERRORS, cls
        body = json.loads(bytes(response.body))
        assert_valid("ErrorResponse", body)
        seen.add(body["error"]["type"])
    crash = to_response(RuntimeError("secret detail"), "rid-2")
    crash_body = json.loads(bytes(crash.body))
    assert crash.status_code == 500 and crash_body["error"]["message"] == "internal error, request id rid-2"
    assert_valid("ErrorResponse", crash_body)
    assert seen | {"server_error"} == set(
        SPEC["components"]["schemas"]["ErrorDetail"]["properties"]["type"]["enum"]
    )
    assert {status for _, status in errs.STATUS_BY_ERROR} <= set(ERRORS)


class _Call:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    async def remote(self, *args: Any) -> Any:
        return self._fn(*args)

    def options(self, **_: Any) -> _StreamCall:
        return _StreamCall(self._fn)


class _Stream:
    def __init__(self, items: list[Any]) -> None:
        self._items = iter(items)

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        pass


class _StreamCall(_Call):
    def remote(self, *args: Any) -> _Stream:  # type: ignore[override]
        return _Stream(self._fn(*args))


class FakeGenerator:
    """A generation (or RAG) deployment handle: two choices with logprobs, then the stats."""

    def __init__(self, model: str, rag: bool) -> None:
        self.model, self.rag = model, rag
        self.info = _Call(
            lambda: {"id": model, "kind": "chat", "engine": "rag:extractive" if rag else "extractive",
                     "context_length": 512, "supported_params": []}
        )  # fmt: skip
        self.generate = _Call(self._items)
        self.generate_stream = _Call(self._items)

    def _items(self, request: Any) -> list[Any]:
        lp = (TokenLogprob("Hi", -0.5, (("Hi", -0.5), ("Yo", -1.5))),)
        items: list[Any] = []
        for i in range(request.params.n):
            items += [
                GenerationChunk(i, "Hi", 1, None, lp, prompt_tokens=7),
                GenerationChunk(i, " there.", 2, "stop", lp),
            ]
        if self.rag:
            items.append(RagMeta((Citation(1, "api-keys", "c-1", 0.9, "handbook/api-keys.md"),), 3, 2))
        return [*items, GenerationStats(0.0, None, 0.01, 7, 3 * request.params.n)]


class FakeEmbedder:
    def __init__(self) -> None:
        self.info = _Call(
            lambda: {"id": "emb", "kind": "embedding", "engine": "sentence-transformers",
                     "context_length": 256, "dimension": 4}
        )  # fmt: skip
        self.embed = _Call(lambda texts: EmbeddingResult(np.ones((len(texts), 4), np.float32) / 2, 3))


def serving() -> OpenAIServing:
    gens = {"plain": FakeGenerator("plain", rag=False), "rag": FakeGenerator("rag", rag=True)}
    return OpenAIServing(gens, {"emb": FakeEmbedder()})


async def sse_events(stream: AsyncIterator[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON ``data`` events of a stream, and its other lines."""
    events, other = [], []
    async for event in stream:
        for line in event.splitlines():
            if line.startswith("data: {"):
                events.append(json.loads(line.removeprefix("data: ")))
            elif line:
                other.append(line)
    return events, other


@pytest.mark.parametrize("model", ["plain", "rag"])
async def test_chat_responses_match_their_schemas(model: str) -> None:
    s = serving()
    base = {"model": model, "messages": [{"role": "user", "content": "hi"}], "n": 2}
    req = parse_request(ChatCompletionRequest, {**base, "logprobs": True, "top_logprobs": 2})
    unary = await s.chat(req, "rid")
    assert isinstance(unary, dict)
    assert_valid("ChatCompletion", unary)
    out.ChatCompletion.model_validate(unary)
    assert ("citations" in unary) == (model == "rag")
    streamed = parse_request(
        ChatCompletionRequest, {**base, "stream": True, "stream_options": {"include_usage": True}}
    )
    stream = await s.chat(streamed, "rid")
    assert not isinstance(stream, dict)
    events, other = await sse_events(stream)
    for event in events:
        assert_valid("ChatCompletionChunk", event)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert events[-1 if model == "plain" else -2]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 6,
        "total_tokens": 13,
    }
    if model == "rag":
        assert events[-1]["choices"] == [] and events[-1]["context"]["chunks_dropped"] == 2
    assert other[0].startswith(": server-timing ") and other[-1] == "data: [DONE]"


@pytest.mark.parametrize("model", ["plain", "rag"])
async def test_completion_responses_match_their_schemas(model: str) -> None:
    s = serving()
    req = parse_request(CompletionRequest, {"model": model, "prompt": "hi", "logprobs": 2})
    unary = await s.completions(req, "rid")
    assert isinstance(unary, dict)
    assert_valid("Completion", unary)
    assert unary["choices"][0]["logprobs"]["text_offset"] == [0, 2]
    two = await s.completions(parse_request(CompletionRequest, {"model": model, "prompt": ["a", "b"]}), "rid")
    assert_valid("Completion", two)
    assert "citations" not in two  # two prompts, two retrievals: none is the response's
    stream = await s.completions(
        parse_request(CompletionRequest, {"model": model, "prompt": "hi", "stream": True}), "rid"
    )
    assert not isinstance(stream, dict)
    events, other = await sse_events(stream)
    assert len(events) == 2 + (model == "rag")
    for event in events:
        assert_valid("Completion", event)
    assert other[-1] == "data: [DONE]"


async def test_models_and_embeddings_match_their_schemas() -> None:
    s = serving()
    models = await s.list_models()
    assert_valid("ModelList", models)
    assert [m["kind"] for m in models["data"]] == ["chat", "chat", "embedding"]
    assert_valid("Model", await s.get_model("rag"))
    for fmt in ("float", "base64"):
        req = parse_request(EmbeddingRequest, {"model": "emb", "input": ["a", "b"], "encoding_format": fmt})
        result = await s.embeddings(req)
        assert_valid("EmbeddingList", result)
        assert isinstance(result["data"][1]["embedding"], list if fmt == "float" else str)


def test_a_response_with_an_undocumented_field_fails_its_schema() -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    assert_valid("ChatCompletionChunk", chunk)
    assert not component("ChatCompletionChunk").is_valid({**chunk, "surprise": 1})
    assert not component("ChatCompletionChunk").is_valid({**chunk, "citations": None})  # omitted, never null
