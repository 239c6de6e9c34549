"""Wire models of what the gateway returns, for ``/openapi.json`` and tests.

The routes build their responses as plain dicts (``serving.py``, ``retrieval.py``,
the retrieval deployment, ``app.py``'s ``usage``); these models describe those
dicts field for field and are never used to build them. They are strict
(``additionalProperties: false``), so a field added to a response without being
documented here fails the schema checks (``tests/integration/test_openapi_schemathesis.py``).
Fields a response leaves out when they do not apply (a RAG model's ``citations``)
are optional and not nullable: the server omits them, it never sends ``null``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "content_filter"]
#: the ``error_type`` of every :class:`services.errors.LLMOpsError`, and ``server_error`` (a 500)
ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "service_unavailable",
    "server_error",
]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def omitted(description: str) -> Any:
    """A field the server leaves out (never ``null``) where it does not apply."""
    return Field(None, description=description, json_schema_extra=_no_default)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ---------------------------------------------------------------------------
class ErrorDetail(_Out):
    message: str = Field(description="What was wrong, for a person; a 5xx names only the request id.")
    type: ErrorType = Field(description="The OpenAI error type.")
    param: str | None = Field(description="The request field it concerns (dotted path), if any.")
    code: str | None = Field(
        description="A machine-readable code, e.g. `unsupported_parameter`, `context_length_exceeded`, "
        "`model_not_found`, `collection_not_found`, `invalid_api_key`, `request_too_large`, "
        "`service_unavailable`, `internal_error`."
    )


class ErrorResponse(_Out):
    """The OpenAI error envelope: every error response, and the error event of a broken stream."""

    error: ErrorDetail


# -- models ---------------------------------------------------------------------------
class Model(_Out):
    """A served model: OpenAI's model object plus what it is and its context window."""

    id: str
    object: Literal["model"]
    created: int = Field(description="Unix seconds (when this gateway replica started).")
    owned_by: str
    kind: Literal["chat", "embedding"] = Field(
        description="`chat` models serve /v1/chat/completions and /v1/completions; `embedding` models /v1/embeddings."
    )
    engine: str = Field(
        description="`vllm`, `transformers`, `extractive`, `fixed`, `rag:<generator engine>` or "
        "`sentence-transformers`."
    )
    context_length: int = Field(description="Tokens of prompt plus completion (input tokens for embeddings).")
    version: str = omitted(
        "Version label of what is served under this name (chat models; `version` in their config)."
    )
    config_digest: str = omitted(
        "Digest of the model's config (a RAG model's includes its generator's): equal digests, same "
        "model (chat models)."
    )
    platform_version: str = Field(description="The llmops version of the gateway that answered.")


class ModelList(_Out):
    object: Literal["list"]
    data: list[Model]


# -- chat and completions ------------------------------------------------------------
class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Citation(_Out):
    """A passage a RAG model put in its prompt as ``[index]``."""

    index: int
    doc_id: str
    chunk_id: str
    score: float
    source: str


class RagContext(_Out):
    """How much of the retrieved context fitted the model's context budget."""

    chunks_retrieved: int
    chunks_used: int
    chunks_dropped: int


class TopLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Out):
    content: list[TokenLogprob]


class ChatCompletionMessage(_Out):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Out):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


_CITATIONS = "RAG models only: the passages the answer may cite."
_CONTEXT = "RAG models only: retrieved, used and dropped (over the context budget) chunks."


class ChatCompletion(_Out):
    """A chat completion (``"stream": false``)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    citations: list[Citation] = omitted(_CITATIONS)
    context: RagContext = omitted(_CONTEXT)


class ChatDelta(_Out):
    role: Literal["assistant"] = omitted("On the first chunk of each choice.")
    content: str = omitted("The next piece of text; absent on a bare end-of-choice chunk.")


class ChatChunkChoice(_Out):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


_CHUNK_USAGE = (
    "With `stream_options.include_usage`: null on every chunk but an extra last one, whose "
    "`choices` is empty; absent otherwise."
)
_CHUNK_RAG = "RAG models only, on an extra chunk after the last text (and usage), whose `choices` is empty."


class ChatCompletionChunk(_Out):
    """One event of a chat completion stream (``"stream": true``)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = omitted(_CHUNK_USAGE)
    citations: list[Citation] = omitted(_CHUNK_RAG)
    context: RagContext = omitted(_CHUNK_RAG)


class CompletionLogprobs(_Out):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(_Out):
    index: int = Field(description="`prompt index * n + choice index`.")
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class Completion(_Out):
    """A text completion; an event of a completion stream has the same shape."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = omitted("Always on a unary response; on a stream as on chat completion chunks.")
    citations: list[Citation] = omitted(_CITATIONS + " (unary: when the request has one prompt)")
    context: RagContext = omitted(_CONTEXT)


# -- embeddings -------------------------------------------------------------------------
class Embedding(_Out):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="Floats, or with `encoding_format: base64` the little-endian float32 bytes in base64."
    )


class EmbeddingUsage(_Out):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Out):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# -- retrieval and collections ------------------------------------------------------------
class RetrievalHit(_Out):
    id: str = Field(description="The chunk id (deterministic: uuid5 of tenant, doc id, index, content).")
    doc_id: str
    chunk_index: int
    text: str
    metadata: dict[str, Any]
    source: str
    score: float


class RetrievalResult(_Out):
    object: Literal["list"]
    collection: str
    data: list[RetrievalHit] = Field(description="Best first.")


class Collection(_Out):
    name: str
    object: Literal["collection"]
    points: int = Field(description="Chunks the caller's tenant has in it.")
    distance: Literal["cosine", "dot", "euclid", "manhattan"]
    hybrid: bool = Field(description="Whether it stores sparse (BM25) vectors for hybrid search.")
    embedding_model: str


class CollectionList(_Out):
    object: Literal["list"]
    data: list[Collection]


class DocumentsWritten(_Out):
    object: Literal["collection.documents"]
    collection: str
    documents: int = Field(description="Documents accepted.")
    chunks_written: int
    stale_deleted: int = Field(description="Chunks of earlier versions of these documents removed.")
    unchanged: int = Field(description="Documents already stored with the same content (not rewritten).")


class DocumentDeleted(_Out):
    object: Literal["collection.document.deleted"]
    collection: str
    id: str
    chunks_deleted: int


# -- usage ------------------------------------------------------------------------------------
class UsageTotals(_Out):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float


class UsageRecord(UsageTotals):
    tenant: str
    model: str


class UsageReport(_Out):
    """Tokens and cost per tenant and model over a time range."""

    object: Literal["usage"]
    tenant: str = Field(description="The tenant asked for, or `*` for all.")
    since: str = Field(json_schema_extra={"format": "date-time"})
    until: str | None = Field(json_schema_extra={"format": "date-time"})
    granularity_seconds: int
    data: list[UsageRecord]
    total: UsageTotals


# -- health -------------------------------------------------------------------------------------
class Health(_Out):
    status: Literal["ok"]


class Readiness(_Out):
    status: Literal["ready"]
    models: list[str]
