"""OpenAI wire models of the requests the gateway accepts.

Strict: an unknown field is a 400 naming it ("Unrecognized request argument
supplied: foo", as OpenAI answers), never silently dropped. Numbers are bounded
as in OpenAI's API. Parameters outside OpenAI's schema that engines support
(``top_k``, ``num_beams``, ``use_beam_search``) are accepted as extra body, as
vLLM does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.deployment_config import repeated
from services.errors import InvalidRequestError, UnsupportedParameterError
from services.generation.protocol import ChatMessage, SamplingParams

_MAX_STOP = 4
_M = TypeVar("_M", bound=BaseModel)


class _Wire(BaseModel):
    # strict: JSON types as OpenAI's API takes them ("max_tokens": "8" or "stream": "false" is a
    # 400, not a silent conversion); an integer is still a valid number
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Wire):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # newer SDKs send it; no effect here


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class Message(_Wire):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class _SamplingFields(_Wire):
    model: str = Field(min_length=1, max_length=256)
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=100_000)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    # the validators' limits, stated in the schema too (json_schema_extra changes no validation)
    stop: str | list[str] | None = Field(None, json_schema_extra={"maxItems": _MAX_STOP})
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = Field(None, max_length=256)
    # extra body (vLLM-compatible)
    num_beams: Annotated[int, Field(ge=1, le=64)] | None = None
    use_beam_search: bool | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > _MAX_STOP:
            raise ValueError(f"at most {_MAX_STOP} stop sequences are allowed, got {len(v)}")
        return v

    @model_validator(mode="after")
    def _stream_options(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def _common_sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise UnsupportedParameterError(
                    f"'{name}' is not supported", param=name, value=getattr(self, name)
                )
        if self.best_of not in (None, 1) and self.best_of != (self.n or 1):
            raise UnsupportedParameterError("'best_of' is not supported", param="best_of", value=self.best_of)
        explicit = set(self.model_fields_set)
        num_beams = self.num_beams
        if self.use_beam_search and num_beams is None:
            num_beams = max(self.n or 1, 2)
        if num_beams is not None:
            explicit.add("num_beams")
        if max_tokens is not None:
            explicit.add("max_tokens")
        if logprobs is not None:
            explicit.add("logprobs")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=0 if self.top_k in (None, -1) else self.top_k,
            max_tokens=max_tokens,
            stop=tuple(s for s in stop if s),
            seed=self.seed,
            n=self.n or 1,
            logprobs=logprobs,
            num_beams=num_beams or 1,
            explicit=frozenset(explicit),
        )


class ChatCompletionRequest(_SamplingFields):
    """OpenAI's chat completion request; ``top_k``, ``num_beams``, ``use_beam_search`` as in vLLM."""

    messages: list[Message] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def chat_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(ChatMessage(role=m.role, content=m.text()) for m in self.messages)

    def sampling(self) -> SamplingParams:
        if self.tools:
            raise UnsupportedParameterError("'tools' (function calling) is not supported", param="tools")
        if self.tool_choice not in (None, "none", "auto"):
            raise UnsupportedParameterError("'tool_choice' is not supported", param="tool_choice")
        if self.response_format and self.response_format.get("type") != "text":
            raise UnsupportedParameterError(
                "only response_format type 'text' is supported",
                param="response_format.type",
                value=self.response_format.get("type"),
            )
        if self.logit_bias:
            raise UnsupportedParameterError("'logit_bias' is not supported", param="logit_bias")
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._common_sampling(max_tokens, logprobs)


class CompletionRequest(_SamplingFields):
    """OpenAI's (legacy) completion request: one prompt or up to 64.

    ``echo: true`` returns each prompt before its completion, with the prompt tokens'
    logprobs when ``logprobs`` is set; with ``max_tokens: 0`` it scores the prompt and
    generates nothing (how likelihood benchmarks such as CrowS-Pairs use the API). The
    model's engine must support it, else a 400 ``unsupported_parameter`` names ``echo``.
    """

    prompt: str | list[str] = Field(json_schema_extra={"minItems": 1, "maxItems": 64})
    max_tokens: Annotated[int, Field(ge=0)] | None = Field(None, description="0 only with echo: true.")
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        if isinstance(v, list) and len(v) > 64:
            raise ValueError(f"at most 64 prompts per request, got {len(v)}")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def sampling(self) -> SamplingParams:
        for name in ("suffix", "logit_bias"):
            if getattr(self, name):
                raise UnsupportedParameterError(
                    f"'{name}' is not supported", param=name, value=getattr(self, name)
                )
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequestError(
                "Invalid value for 'max_tokens': 0 generates nothing; it is only allowed with "
                "echo: true (to score the prompt).",
                param="max_tokens",
                value=0,
            )
        # echo is the engine's to honour or refuse (check_supported names it), like top_k
        return replace(self._common_sampling(self.max_tokens, self.logprobs), echo=bool(self.echo))


class EmbeddingRequest(_Wire):
    """OpenAI's embeddings request: one text or up to 2048."""

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(json_schema_extra={"minItems": 1, "maxItems": 2048})
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = Field(None, max_length=256)

    @field_validator("input")
    @classmethod
    def _input(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        if isinstance(v, list) and len(v) > 2048:
            raise ValueError(f"at most 2048 inputs per request, got {len(v)}")
        return v

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse_request(model: type[_M], body: Any) -> _M:
    """Validate a JSON body into ``model``; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object", param=None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        # pydantic names union branches in the path; keep the field path the client sent
        loc = _strip_union_tags(err["loc"])
        if err["type"] == "extra_forbidden":
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {loc}", param=loc, value=None
            ) from None
        if err["type"] == "missing":
            raise InvalidRequestError(f"Missing required parameter: '{loc}'.", param=loc) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequestError(
            f"Invalid value for '{loc}': {msg} (got {_short(err.get('input'))}).", param=loc, value=None
        ) from None


_UNION_TAGS = {
    "str",
    "list[str]",
    "list[TextPart]",
    "int",
    "float",
    "bool",
    "constrained-int",
    "constrained-float",
}


def _strip_union_tags(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]
    return ".".join(parts) or "body"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class RetrieveRequest(_Wire):
    """A search of one collection, scoped to the caller's tenant; ``filter`` maps ``doc_id``,
    ``source`` or a metadata field to a value, ``{"any": [...]}``, ``{"gte"|"gt"|"lte"|"lt": n}``
    (a number or an ISO 8601 date-time) or ``{"text": "words"}`` (a field with a text index)."""

    collection: str = Field(min_length=1, max_length=63)
    query: str = Field(min_length=1, max_length=100_000)
    top_k: Annotated[int, Field(ge=1, le=10_000)] = 5
    filter: dict[str, Any] | None = None
    score_threshold: float | None = None
    exact: bool = False
    hybrid: bool | None = None
    filter_strategy: Literal["pre", "in", "post"] | None = None
    hnsw_ef: Annotated[int, Field(ge=4, le=4096)] | None = None
    exclude_flagged: bool = Field(
        False,
        description="Leave out chunks flagged as prompt injection at ingestion (collections with "
        "scan_injection; chunks never scanned are kept).",
    )


class DocumentIn(_Wire):
    id: str = Field(min_length=1, max_length=512)
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: str = Field("", max_length=2048)


class DocumentsRequest(_Wire):
    """Documents to write (ids unique within the request)."""

    documents: list[DocumentIn] = Field(min_length=1, max_length=1000)

    @field_validator("documents")
    @classmethod
    def _unique(cls, v: list[DocumentIn]) -> list[DocumentIn]:
        ids = [d.id for d in v]
        dupes = repeated(ids)
        if dupes:
            raise ValueError(f"document ids must be unique within a request; repeated: {dupes[:5]}")
        return v
