"""The one async protocol every generation engine implements.

An engine turns a :class:`GenerationRequest` (a rendered prompt plus
:class:`SamplingParams`) into a stream of :class:`GenerationChunk` deltas. The
generation deployment (:mod:`services.generation.deployment`) owns request ids,
context-length checks and cancellation; engines only generate.

Engines: ``vllm`` (:mod:`.vllm_engine`), ``transformers``
(:mod:`.transformers_engine`) and ``extractive`` (:mod:`.extractive`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from services.errors import InvalidRequestError, UnsupportedParameterError

FinishReason = Literal["stop", "length", "content_filter"]  # content_filter: a guardrail ended it

# Every sampling parameter the API accepts. Each engine declares the subset it
# honours in ``Engine.supported_params``; a request that sets any other one (to a
# non-default value) is rejected with a 400 naming it.
# ``echo`` (completions only) is one of them: an engine that cannot return the prompt's
# own text and logprobs leaves it out and echo requests get a 400 naming it.
ALL_SAMPLING_PARAMS: frozenset[str] = frozenset(
    {"temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "n", "logprobs", "num_beams", "echo"}
)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters of one request, already range-checked by the gateway.

    ``explicit`` names the parameters the client actually set; only those are
    checked against an engine's ``supported_params``, so a client that leaves a
    parameter at its default is never rejected for it.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_tokens: int | None = None  # None: up to the context window; 0 only with echo (score the prompt)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None  # None: off; k >= 0: the sampled token plus top-k alternatives
    num_beams: int = 1
    #: completions: each choice starts with the prompt itself, as one chunk of 0 counted tokens
    #: carrying the prompt tokens' logprobs when ``logprobs`` is set (the first one None, as
    #: OpenAI reports it); the way to score a text's likelihood (``max_tokens=0``)
    echo: bool = False
    explicit: frozenset[str] = field(default_factory=frozenset)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def is_default(self, name: str) -> bool:
        """True when ``name`` holds a value that changes nothing (e.g. ``n=1``)."""
        return getattr(self, name) == getattr(_DEFAULTS, name)


_DEFAULTS = SamplingParams()


_HINTS = {"echo": ": it cannot return the prompt's tokens and logprobs"}


def check_supported(params: SamplingParams, supported: frozenset[str], engine: str) -> None:
    """Raise :class:`UnsupportedParameterError` for a parameter ``engine`` cannot honour.

    A parameter set explicitly to a value that changes nothing is fine: ``n=1``,
    ``top_p=1``, ``num_beams=1``, and ``temperature=0`` (greedy, which every
    engine does) — but not ``temperature=1`` on an engine that cannot sample.
    """
    for name in sorted(params.explicit & ALL_SAMPLING_PARAMS - supported):
        value = getattr(params, name)
        neutral = value == 0.0 if name == "temperature" else params.is_default(name)
        if not neutral:
            hint = _HINTS.get(name, "")
            raise UnsupportedParameterError(
                f"The '{engine}' engine does not support '{name}' (got {value!r}){hint}.",
                param=name,
                value=value,
            )


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """What an engine generates from: exactly one of ``prompt`` or ``messages``."""

    request_id: str
    params: SamplingParams
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    tenant: str = ""
    #: retrieved passages the prompt already quotes (RAG). Language models read
    #: them in the prompt; the extractive engine selects its answer from them.
    context: tuple[str, ...] | None = None
    #: wall-clock time (``time.time()``) the gateway sent the request: queue time
    #: is measured from here to the moment the generation replica starts on it
    dispatched_at: float | None = None
    #: W3C trace-context carrier of the caller's span (``monitoring.tracing.inject_context``)
    trace: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("exactly one of prompt or messages must be given", param="messages")


@dataclass(frozen=True)
class TokenLogprob:
    """One token's logprob and its top alternatives. ``logprob`` is None only for the first
    token of an echoed prompt: nothing precedes it, so it has no conditional probability."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """A delta of one choice: new text, how many tokens it holds, and maybe the end.

    ``prompt_tokens`` is set on the first chunk of each choice; ``finish_reason``
    on its last.
    """

    index: int
    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class GenerationStats:
    """The last item of every generation stream: what the generation replica measured.

    The gateway turns it into the queue and generate stages, TTFT of unary
    requests, and cost; it is never sent to clients.
    """

    #: seconds from the gateway's dispatch to the replica starting on the request
    queue_s: float
    #: wall-clock time the first chunk left the engine (None: no chunk)
    first_token_at: float | None
    #: seconds from the replica starting on the request to its last chunk
    engine_s: float
    prompt_tokens: int
    completion_tokens: int
    #: USD under the model's pricing; None when the model has no pricing configured
    cost_usd: float | None = None


@dataclass(frozen=True)
class StageTimings:
    """Seconds a deployment in front of the generator spent per stage (a RAG model's
    ``embed`` and ``retrieve``), sent before the first chunk so the gateway can count
    them apart from ``generate``."""

    stages: dict[str, float]


@runtime_checkable
class Engine(Protocol):
    """An async text-generation engine."""

    #: engine kind: "vllm", "transformers" or "extractive"
    kind: str
    #: parameter names of :data:`ALL_SAMPLING_PARAMS` this engine honours
    supported_params: frozenset[str]

    @property
    def context_length(self) -> int:
        """Maximum prompt + completion tokens."""
        ...

    async def start(self) -> None:
        """Load weights / start the engine loop. Called once before use."""
        ...

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """Apply the model's chat template (with the generation prompt)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` is for this model."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the completion. Closing the iterator must abort the request."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...

    async def shutdown(self) -> None:
        """Free the engine's resources."""
        ...
