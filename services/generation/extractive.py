"""The ``extractive`` engine: a weightless, deterministic CPU baseline.

It answers by *selecting* sentences from the context the request carries (system
messages, earlier turns, or the paragraphs of the last user message before the
question) instead of generating new text:

* **question answering** — the sentences most similar to the question, by cosine
  similarity of all-MiniLM-L6-v2 embeddings, with maximal marginal relevance so a
  near-duplicate of a chosen sentence is not picked twice; most relevant first;
* **summarisation** (the request asks to summarise / for a summary / tl;dr) — the
  sentences closest to the centroid of the whole text plus a lead-position prior
  (tuned on a dev half of REALSumm: ``python -m evals.tune_extractive``), in
  document order.

Output streams sentence by sentence. With no context to choose from, it says so
instead of inventing an answer. Tokens are counted with the embedding model's
tokenizer, so usage numbers are real token counts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import numpy as np

from services.embeddings.encoder import Encoder
from services.generation.config import ExtractiveModelConfig
from services.generation.protocol import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
)

NO_CONTEXT_ANSWER = "I don't know: the request contains no context to answer from."

_SUMMARY_INTENT = re.compile(r"\b(summari[sz]e|summari[sz]ation|summary|tl;?dr|key points)\b", re.I)
# Sentence ends: . ! ? (optionally followed by closing quotes/brackets) then space; or a stop that is
# its own token (tokenized text such as CNN/DailyMail's "nepal . and they"); or line breaks.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])|(?<=\s[.!?])\s+|\n+")
_LABEL = re.compile(r"^\s*(context|question|query|text|document|passage|q)\s*:\s*", re.I)
_BOUNDARY = re.compile(r"^<<<INPUT-[0-9a-f]{16}>>>$", re.M)  # services.rag.prompt's markers
_MMR_LAMBDA = 0.75
_DEFAULT_CONTEXT_LENGTH = 8192


def split_sentences(text: str) -> list[str]:
    """Split text into sentences (keeps abbreviations like 'e.g. x' together when lower-case follows)."""
    parts = (p.strip() for p in _SENTENCE_SPLIT.split(text))
    return [p for p in parts if p and re.search(r"\w", p)]


@dataclass(frozen=True)
class _Task:
    query: str
    context: str
    summarise: bool


def _split_request(messages: Sequence[ChatMessage], passages: Sequence[str] | None = None) -> _Task:
    """Separate the question from the context it should be answered from.

    ``passages`` (retrieved by a RAG model) are then the whole context, and the
    question is the last user message without its input-boundary markers.
    """
    if passages is not None:
        question = next((m.content for m in reversed(messages) if m.role == "user"), "")
        question = _BOUNDARY.sub("", question).strip()
        return _Task(
            query=question, context="\n".join(passages), summarise=bool(_SUMMARY_INTENT.search(question))
        )
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        return _Task(query="", context="\n".join(m.content for m in messages), summarise=False)
    context_parts = [m.content for i, m in enumerate(messages) if i != last_user and m.role != "assistant"]
    paragraphs = [p for p in re.split(r"\n\s*\n", messages[last_user].content) if p.strip()]
    query = paragraphs[-1] if paragraphs else ""
    summarise = bool(_SUMMARY_INTENT.search(query))
    if len(paragraphs) > 1:
        context_parts.extend(paragraphs[:-1])
    elif summarise:
        # "Summarize: <text>" in one paragraph: the text after the instruction is the context
        head, sep, tail = query.partition(":")
        if sep and tail.strip():
            query, context_parts = head, [*context_parts, tail]
    query = _LABEL.sub("", query).strip()
    context = "\n".join(_LABEL.sub("", c) for c in context_parts)
    return _Task(query=query, context=context, summarise=summarise)


def _mmr(
    relevance: np.ndarray, sims: np.ndarray, k: int, floor: float, lam: float = _MMR_LAMBDA
) -> list[int]:
    """Maximal marginal relevance: relevant, but not redundant with what is chosen."""
    chosen: list[int] = []
    candidates = [i for i in range(len(relevance)) if relevance[i] >= floor]
    while candidates and len(chosen) < k:
        redundancy = sims[np.ix_(candidates, chosen)].max(axis=1) if chosen else np.zeros(len(candidates))
        scores = lam * relevance[candidates] - (1 - lam) * redundancy
        best = candidates[int(np.argmax(scores))]  # argmax takes the first on ties: deterministic
        chosen.append(best)
        candidates.remove(best)
    return chosen


def summary_sentences(emb: np.ndarray, k: int, weight: float, decay: float, lam: float) -> list[int]:
    """Indices (in document order) of a ``k``-sentence summary: closeness to the text's centroid plus
    a lead prior ``weight * exp(-position / decay)`` (news puts the gist first: LEAD-3 is strong)."""
    centroid = emb.mean(axis=0)
    centroid /= np.linalg.norm(centroid) or 1.0
    relevance = emb @ centroid + weight * np.exp(-np.arange(len(emb)) / decay)
    return sorted(_mmr(relevance, emb @ emb.T, k, floor=-np.inf, lam=lam))


class ExtractiveEngine:
    """Selects context sentences instead of generating; see the module docstring."""

    kind = "extractive"
    # Deterministic selection: only greedy decoding is honoured (temperature 0),
    # so temperature/top_p/top_k/n/logprobs/num_beams are rejected unless neutral.
    supported_params = frozenset({"max_tokens", "stop", "seed"})

    def __init__(
        self, config: ExtractiveModelConfig, embedding_path: str | None, device: str = "cpu"
    ) -> None:
        self.config = config
        self._embedding_path = embedding_path
        self._device = device
        self._encoder: Encoder | None = None

    @property
    def context_length(self) -> int:
        return self.config.context_length or _DEFAULT_CONTEXT_LENGTH

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            raise RuntimeError("extractive engine used before start()")
        return self._encoder

    async def start(self) -> None:
        if self._encoder is None:
            self._encoder = await asyncio.to_thread(Encoder, self._embedding_path, self._device)

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"

    def count_tokens(self, text: str) -> int:
        return self.encoder.count_tokens([text])[0]

    async def check_health(self) -> None:
        if self._encoder is None:
            raise RuntimeError("extractive engine not started")

    async def shutdown(self) -> None:
        self._encoder = None

    def select(self, messages: Sequence[ChatMessage], passages: Sequence[str] | None = None) -> list[str]:
        """The sentences of the answer, in output order (blocking; CPU bound)."""
        task = _split_request(messages, passages)
        sentences = split_sentences(task.context)
        if not sentences:
            return []
        k = self.config.max_sentences
        enc = self.encoder
        if task.summarise:
            emb = enc.encode(sentences)
            chosen = summary_sentences(
                emb,
                k,
                self.config.summary_position_weight,
                self.config.summary_position_decay,
                self.config.summary_mmr_lambda,
            )
        else:
            vecs = enc.encode([task.query or " ", *sentences])
            q, emb = vecs[0], vecs[1:]
            relevance = emb @ q
            chosen = _mmr(relevance, emb @ emb.T, k, floor=self.config.min_similarity)
        return [sentences[i] for i in chosen]

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        messages = request.messages or (ChatMessage(role="user", content=request.prompt or ""),)
        prompt_text = request.prompt if request.prompt is not None else self.render_chat(messages)
        prompt_tokens = self.count_tokens(prompt_text)
        sentences = await asyncio.to_thread(self.select, messages, request.context)
        if not sentences:
            sentences = [NO_CONTEXT_ANSWER]
        params = request.params
        budget = params.max_tokens if params.max_tokens is not None else self.config.default_max_tokens
        emitted = ""
        first = True
        for i, sentence in enumerate(sentences):
            piece = sentence if i == 0 else " " + sentence
            finish = None
            # stop strings: cut the answer before the first one
            cut = _first_stop(emitted + piece, params.stop)
            if cut is not None:
                piece, finish = (emitted + piece)[:cut][len(emitted) :], "stop"
            ids = self.encoder.tokenize(piece)
            if len(ids) > budget:
                piece, ids, finish = self.encoder.truncate(piece, budget), ids[:budget], "length"
            elif finish is None and i == len(sentences) - 1:
                finish = "stop"
            budget -= len(ids)
            emitted += piece
            yield GenerationChunk(
                index=0,
                text=piece,
                num_tokens=len(ids),
                finish_reason=finish,  # type: ignore[arg-type]
                prompt_tokens=prompt_tokens if first else None,
            )
            first = False
            if finish is not None:
                return
            if budget <= 0:
                yield GenerationChunk(index=0, text="", num_tokens=0, finish_reason="length")
                return
            await asyncio.sleep(0)  # let a cancelled (disconnected) request stop between sentences


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
