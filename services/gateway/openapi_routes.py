"""The gateway's route table for its OpenAPI document (:mod:`services.gateway.openapi`).

Per operation: what it takes, what it returns, the errors it can answer with and
what each means there, and request examples (the models and collection of
``configs/local.yaml``; each is sent by the test suite and must be accepted).
"""

from __future__ import annotations

from services.gateway import schemas as out
from services.gateway.openapi import Route
from services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DocumentsRequest,
    EmbeddingRequest,
    RetrieveRequest,
)

_QUESTION = "How do I rotate an API key?"
_CONTEXT = (
    "Context: API keys are rotated with `llmops keys create`. The old key keeps working "
    "until it is removed from the config.\n\nQuestion: " + _QUESTION
)
_CHAT_MESSAGES = [
    {"role": "system", "content": "Answer from the context only."},
    {"role": "user", "content": _CONTEXT},
]
_UNAVAILABLE_MODEL = (
    "The model's engine is not loaded, or is shutting down, or its replica died and one retry did "
    "not help (a RAG model: or its vector store is unreachable)."
)
_MODEL_NOT_FOUND = "No such model (`model_not_found`)."
_BAD_GENERATION = (
    "Also: the prompt plus `max_tokens` exceeds the model's context length (`context_length_exceeded`), "
    "or the model is an embedding model."
)
_NO_RETRIEVAL = "retrieval is not enabled on this server"
_STORE_DOWN = "The vector store is unreachable."
_COLLECTION = {"description": "A configured collection.", "example": "docs"}

ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/healthz"): Route(
        "getHealth", "health", "Liveness: the gateway answers", out.Health, auth=False
    ),
    ("GET", "/readyz"): Route(
        "getReadiness",
        "health",
        "Readiness: every deployment behind the gateway has answered",
        out.Readiness,
        auth=False,
        errors={503: "A deployment (a model, retrieval) has not answered yet; the message names it."},
    ),
    ("GET", "/v1/models"): Route("listModels", "models", "List the served models", out.ModelList),
    ("GET", "/v1/models/{model}"): Route(
        "retrieveModel",
        "models",
        "Describe one model",
        out.Model,
        errors={404: _MODEL_NOT_FOUND},
        parameters={"model": {"description": "A model id from `GET /v1/models`.", "example": "extractive"}},
    ),
    ("POST", "/v1/chat/completions"): Route(
        "createChatCompletion",
        "chat",
        "Create a chat completion",
        out.ChatCompletion,
        description='With `"stream": true` the answer is a stream of `chat.completion.chunk` events. '
        "A RAG model (engine `rag:*`) answers from its collection and adds `citations` and `context`.",
        request=ChatCompletionRequest,
        stream=out.ChatCompletionChunk,
        errors={400: _BAD_GENERATION, 404: _MODEL_NOT_FOUND, 503: _UNAVAILABLE_MODEL},
        examples={
            "chat": {"model": "extractive", "messages": _CHAT_MESSAGES, "max_tokens": 64, "seed": 7},
            "stream": {
                "model": "extractive",
                "messages": _CHAT_MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            "rag": {"model": "rag-docs", "messages": [{"role": "user", "content": _QUESTION}]},
        },
    ),
    ("POST", "/v1/completions"): Route(
        "createCompletion",
        "completions",
        "Create a text completion",
        out.Completion,
        description="One or more prompts (choice `index` is `prompt index * n + choice`); with "
        '`"stream": true` (one prompt) a stream of `text_completion` events.',
        request=CompletionRequest,
        stream=out.Completion,
        errors={
            400: _BAD_GENERATION + " A stream with more than one prompt.",
            404: _MODEL_NOT_FOUND,
            503: _UNAVAILABLE_MODEL,
        },
        examples={
            "completion": {"model": "extractive", "prompt": _CONTEXT, "max_tokens": 32},
            "prompts": {"model": "extractive", "prompt": [_CONTEXT, "The sky is blue."], "max_tokens": 16},
            "stream": {"model": "extractive", "prompt": _CONTEXT, "stream": True},
        },
    ),
    ("POST", "/v1/embeddings"): Route(
        "createEmbedding",
        "embeddings",
        "Embed texts",
        out.EmbeddingList,
        request=EmbeddingRequest,
        errors={
            400: "Also: an empty or over-long input (`context_length_exceeded`), a generation model, "
            "or `dimensions` other than the model's.",
            404: _MODEL_NOT_FOUND,
        },
        examples={
            "text": {"model": "all-minilm-l6-v2", "input": _QUESTION},
            "base64": {
                "model": "all-minilm-l6-v2",
                "input": [_QUESTION, "Keys are stored only as digests."],
                "encoding_format": "base64",
            },
        },
    ),
    ("POST", "/v1/retrieve"): Route(
        "retrieve",
        "retrieval",
        "Search a collection",
        out.RetrievalResult,
        description="Dense, or hybrid (dense + BM25, fused) search over the caller's tenant's chunks.",
        request=RetrieveRequest,
        errors={
            400: "Also: a bad `filter`, `top_k` over the server's limit, or `hybrid` on a collection "
            "without sparse vectors.",
            404: f"No such collection (`collection_not_found`), or {_NO_RETRIEVAL}.",
            503: _STORE_DOWN,
        },
        examples={
            "dense": {"collection": "docs", "query": _QUESTION, "top_k": 3},
            "filtered": {
                "collection": "docs",
                "query": _QUESTION,
                "top_k": 5,
                "filter": {"lang": "en"},
                "hybrid": True,
            },
        },
    ),
    ("GET", "/v1/collections"): Route(
        "listCollections",
        "retrieval",
        "List the collections",
        out.CollectionList,
        errors={404: f"{_NO_RETRIEVAL.capitalize()}.", 503: _STORE_DOWN},
    ),
    ("POST", "/v1/collections/{name}/documents"): Route(
        "upsertDocuments",
        "retrieval",
        "Write documents",
        out.DocumentsWritten,
        description="Validated, chunked and embedded as batch ingestion does; a document already "
        "stored with the same content is left alone, a changed one replaces its old chunks.",
        request=DocumentsRequest,
        errors={
            400: "Also: a document fails the collection's validation rules (`param` is `documents`).",
            404: f"No such collection (`collection_not_found`), or {_NO_RETRIEVAL}.",
            503: _STORE_DOWN,
        },
        examples={
            "document": {
                "documents": [
                    {
                        "id": "api-keys",
                        "text": _CONTEXT.split("\n\n")[0].removeprefix("Context: "),
                        "metadata": {"title": "API keys", "lang": "en"},
                        "source": "handbook/api-keys.md",
                    }
                ]
            }
        },
        parameters={"name": _COLLECTION},
    ),
    ("DELETE", "/v1/collections/{name}/documents/{doc_id}"): Route(
        "deleteDocument",
        "retrieval",
        "Delete a document",
        out.DocumentDeleted,
        errors={
            404: f"No such collection or document in the caller's tenant, or {_NO_RETRIEVAL}.",
            503: _STORE_DOWN,
        },
        parameters={
            "name": _COLLECTION,
            "doc_id": {"description": "The document's `id` as written.", "example": "api-keys"},
        },
    ),
    ("GET", "/v1/usage"): Route(
        "getUsage",
        "usage",
        "Tokens and cost per tenant and model",
        out.UsageReport,
        description="Minute granularity. A key reads its own tenant's usage; an admin key (or anyone "
        "when auth is off) may name another tenant, or `*` for all.",
        errors={
            400: "A bad `since` or `until`, or `until` not after `since`.",
            403: "A key that is not an admin key named another tenant.",
            404: "Usage accounting is not enabled on this server.",
        },
        parameters={
            "tenant": {"description": "A tenant, or `*` for all; default: the caller's own."},
            "since": {
                "description": "Start: an ISO 8601 time with a zone (`2026-01-01T00:00:00Z`) or epoch "
                "seconds; default 24 hours ago.",
                "example": "2026-01-01T00:00:00Z",
            },
            "until": {
                "description": "End (exclusive), in the same forms; default: no end.",
                "example": "2036-01-01T00:00:00Z",
            },
        },
    ),
}
