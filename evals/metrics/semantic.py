"""Reference-free scores from sentence embeddings (the bundled all-MiniLM-L6-v2 by default).

* ``answer_relevance``: cosine between the question and the answer: does the
  answer talk about what was asked?
* ``context_support``: for each sentence of the answer, its best cosine to any
  context passage, averaged over the answer's sentences: is what it says found in
  the retrieved context? (An embedding proxy of RAGAS' faithfulness, without a
  judge model.)

Both are in [-1, 1] (in practice [0, 1] for MiniLM) and NaN when there is nothing
to score (no answer, an empty one, or no context). Every distinct text of a call
is encoded once, in batches of ``batch_size``, so scoring many records costs one
forward pass per batch, and a passage (or answer) that several records share, as
retrieved contexts often are, is encoded only once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evals.metrics.rouge import sentences


def _encode(encoder: Any, texts: list[str], batch_size: int) -> np.ndarray:
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    return np.asarray(encoder.encode(texts, batch_size=batch_size), dtype=np.float32)


class _Texts:
    """The distinct texts of a call, in first-seen order; ``add`` gives a text's row."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def add(self, text: str) -> int:
        return self.rows.setdefault(text, len(self.rows))

    def encode(self, encoder: Any, batch_size: int) -> np.ndarray:
        return _encode(encoder, list(self.rows), batch_size)


def answer_relevance(
    encoder: Any, questions: Sequence[str], answers: Sequence[str | None], *, batch_size: int = 64
) -> list[float]:
    """Cosine(question, answer) per record; NaN where the answer is missing or empty."""
    if len(questions) != len(answers):
        raise ValueError(f"questions and answers differ in length: {len(questions)} vs {len(answers)}")
    texts = _Texts()
    pairs = [
        (i, texts.add(questions[i]), texts.add(str(a))) for i, a in enumerate(answers) if a and a.strip()
    ]
    vecs = texts.encode(encoder, batch_size)
    out = [math.nan] * len(answers)
    for i, q, a in pairs:
        out[i] = float(vecs[q] @ vecs[a])
    return out


def context_support(
    encoder: Any,
    answers: Sequence[str | None],
    contexts: Sequence[Sequence[str]],
    *,
    batch_size: int = 64,
) -> list[float]:
    """Mean over the answer's sentences of the best cosine to a context passage; NaN where the
    answer is missing or empty or the record has no context."""
    if len(answers) != len(contexts):
        raise ValueError(f"answers and contexts differ in length: {len(answers)} vs {len(contexts)}")
    texts = _Texts()
    rows: list[tuple[list[int], list[int]] | None] = []  # per record: its sentences' and passages' rows
    for a, ctx in zip(answers, contexts, strict=True):
        passages = [c for c in ctx if c and c.strip()]
        sents = sentences(a) if a and a.strip() else []
        if not sents or not passages:
            rows.append(None)
            continue
        rows.append(([texts.add(x) for x in sents], [texts.add(c) for c in passages]))
    vecs = texts.encode(encoder, batch_size)
    out: list[float] = []
    for r in rows:
        if r is None:
            out.append(math.nan)
            continue
        sims = vecs[r[0]] @ vecs[r[1]].T
        out.append(float(sims.max(axis=1).mean()))
    return out
