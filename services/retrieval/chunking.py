"""Token-aware chunking of documents for the embedding model.

Windows are counted in the embedding tokenizer's own tokens, so a chunk fits the
model's window instead of being silently truncated by it. The document is
tokenized once; each window is cut from the ORIGINAL text through the token
offset mapping, so chunks keep their casing, spacing and punctuation.

Consecutive windows share exactly ``overlap`` tokens. A window that would end
mid-document is pulled back, within its last ~20%, to the latest paragraph break,
else line break, else sentence end, else word boundary, whichever exists; the
next window then starts ``overlap`` tokens before that cut.

A window may start inside a word (where the overlap lands), so re-tokenizing a
chunk on its own can give a token or two more than its window held (``##ing``
alone becomes ``ing``); the embedding model truncates at its own limit anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from services.retrieval.types import Chunk, Document, chunk_id, content_hash

if TYPE_CHECKING:
    from services.embeddings.encoder import Encoder
    from services.guardrails.base import Scorer

# The share of a window, counted from its end, searched for a better cut.
BOUNDARY_WINDOW = 0.2
_SENTENCE_END = ".!?\u3002\uff01\uff1f"  # also CJK full stop, exclamation and question marks


@runtime_checkable
class TokenizerLike(Protocol):
    """What chunking needs from a tokenizer: character offsets of its tokens and the model window."""

    max_seq_length: int

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character offsets of each token of ``text``, no special tokens."""
        ...


def token_offsets(encoder: TokenizerLike | Encoder, text: str) -> list[tuple[int, int]]:
    """Character offsets of ``text``'s tokens under ``encoder``'s tokenizer (no special tokens).

    Accepts a :class:`TokenizerLike` or a :class:`~services.embeddings.encoder.Encoder`,
    whose fast Hugging Face tokenizer is asked for its offset mapping directly.
    """
    if isinstance(encoder, TokenizerLike):
        return [(int(a), int(b)) for a, b in encoder.offsets(text)]
    # Encoder's counting tokenizer has its length limit lifted, so long documents
    # are tokenized whole and without a truncation warning.
    tok = encoder._count_tok
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def _cut_rank(text: str, offsets: list[tuple[int, int]], j: int) -> int:
    """How good a cut between token ``j - 1`` and token ``j`` is: 4 paragraph … 0 none."""
    gap = text[offsets[j - 1][1] : offsets[j][0]]
    if "\n\n" in gap or "\r\n\r\n" in gap:
        return 4
    if "\n" in gap:
        return 3
    prev = text[offsets[j - 1][0] : offsets[j - 1][1]]
    if gap and prev and prev[-1] in _SENTENCE_END:
        return 2
    if gap:
        return 1  # word boundary: never split a word when a whole one fits
    return 0


def _window_end(text: str, offsets: list[tuple[int, int]], start: int, size: int, overlap: int) -> int:
    """End (exclusive token index) of the window starting at ``start``."""
    n = len(offsets)
    end = min(start + size, n)
    if end == n:
        return end
    # Any cut must leave the next window (which starts at cut - overlap) past this start.
    lo = max(start + math.ceil(size * (1.0 - BOUNDARY_WINDOW)), start + overlap + 1)
    best, best_rank = end, _cut_rank(text, offsets, end)
    for j in range(end - 1, lo - 1, -1):
        rank = _cut_rank(text, offsets, j)
        if rank > best_rank:  # strictly better only: among equals the latest cut wins
            best, best_rank = j, rank
    return best


def chunk_windows(
    text: str, offsets: list[tuple[int, int]], chunk_tokens: int, overlap: int
) -> list[tuple[int, int]]:
    """Token windows ``[start, end)`` over ``offsets``; consecutive ones share ``overlap`` tokens."""
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0; got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"overlap ({overlap}) must be >= 0 and smaller than chunk_tokens ({chunk_tokens})")
    windows: list[tuple[int, int]] = []
    start, n = 0, len(offsets)
    while start < n:
        end = _window_end(text, offsets, start, chunk_tokens, overlap)
        windows.append((start, end))
        if end >= n:
            break
        start = end - overlap
    return windows


def chunk_document(
    doc: Document,
    tenant: str,
    encoder_tokenizer: TokenizerLike | Encoder,
    chunk_tokens: int,
    overlap: int,
) -> list[Chunk]:
    """Split ``doc`` into chunks of at most ``chunk_tokens`` embedding tokens.

    Args:
        doc: the document; its ``source`` and ``metadata`` are copied onto every chunk.
        tenant: the owning tenant, part of every chunk id.
        encoder_tokenizer: an :class:`~services.embeddings.encoder.Encoder` or a
            :class:`TokenizerLike`.
        chunk_tokens: window size in tokens; 0 means the model's ``max_seq_length``
            minus 2 (its ``[CLS]`` and ``[SEP]``).
        overlap: tokens shared by consecutive chunks.

    Returns:
        Chunks in document order with deterministic ids
        (``chunk_id(tenant, doc_id, index, content_hash(text))``); ``[]`` for an
        empty or whitespace-only document.

    Raises:
        ValueError: the window is not positive or ``overlap`` is not smaller than it.
    """
    if not doc.text.strip():
        return []
    size = chunk_tokens or int(encoder_tokenizer.max_seq_length) - 2
    if size <= 0:
        raise ValueError(f"chunk size must be > 0 tokens; got {size} (chunk_tokens={chunk_tokens})")
    offsets = token_offsets(encoder_tokenizer, doc.text)
    if not offsets:
        return []
    windows = chunk_windows(doc.text, offsets, size, overlap)
    texts = [doc.text[offsets[s][0] : offsets[e - 1][1]] for s, e in windows]
    return [
        Chunk(
            id=chunk_id(tenant, doc.doc_id, i, h),
            doc_id=doc.doc_id,
            chunk_index=i,
            text=t,
            tenant=tenant,
            content_hash=h,
            source=doc.source,
            metadata=dict(doc.metadata),
            doc_chunks=len(texts),
        )
        for i, (t, h) in enumerate((t, content_hash(t)) for t in texts)
    ]


# -- the ingestion-time prompt-injection scan (collections with scan_injection) ----------------------
def injection_scorer(threshold: float | None = None) -> Scorer:
    """The shipped prompt_injection classifier; ``threshold`` None: its card's.

    Imported here, not at module load, so a collection without ``scan_injection`` (and
    every process that only chunks) never loads the classifier or needs its artifact.
    """
    from services.guardrails.classifier import ClassifierCheck

    return ClassifierCheck(kind="prompt_injection", artifact=None, threshold=threshold)


def flag_injection(chunks: Sequence[Chunk], scores: Sequence[float], threshold: float) -> list[Chunk]:
    """``chunks`` carrying their classifier score, flagged when it is at or over ``threshold``."""
    if len(scores) != len(chunks):
        raise ValueError(f"one injection score per chunk: {len(chunks)} chunks, {len(scores)} scores")
    return [
        replace(c, injection_score=float(s), injection_flagged=float(s) >= threshold)
        for c, s in zip(chunks, scores, strict=True)
    ]


def scan_chunks(chunks: Sequence[Chunk], scorer: Scorer) -> list[Chunk]:
    """Score ``chunks`` in one batched classifier call and flag them at ``scorer.threshold``."""
    if not chunks:
        return []
    return flag_injection(chunks, scorer.scores([c.text for c in chunks]), scorer.threshold)
