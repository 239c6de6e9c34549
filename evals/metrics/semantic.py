"""Reference-free scores from sentence embeddings (the bundled all-MiniLM-L6-v2 by default).

* ``answer_relevance``: cosine between the question and the answer: does the
  answer talk about what was asked?
* ``context_support``: for each sentence of the answer, its best cosine to any
  context passage, averaged over the answer's sentences: is what it says found in
  the retrieved context? (An embedding proxy of RAGAS' faithfulness, without a
  judge model.)

Both are in [-1, 1] (in practice [0, 1] for MiniLM) and NaN when there is nothing
to score (no answer, an empty one, or no context). Every text of a call is
encoded in one batch, so scoring many records costs one forward pass per batch.
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


def answer_relevance(
    encoder: Any, questions: Sequence[str], answers: Sequence[str | None], *, batch_size: int = 64
) -> list[float]:
    """Cosine(question, answer) per record; NaN where the answer is missing or empty."""
    if len(questions) != len(answers):
        raise ValueError(f"questions and answers differ in length: {len(questions)} vs {len(answers)}")
    idx = [i for i, a in enumerate(answers) if a and a.strip()]
    vecs = _encode(encoder, [questions[i] for i in idx] + [str(answers[i]) for i in idx], batch_size)
    q, a = vecs[: len(idx)], vecs[len(idx) :]
    out = [math.nan] * len(answers)
    for k, i in enumerate(idx):
        out[i] = float(q[k] @ a[k])
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
    texts: list[str] = []
    spans: list[tuple[int, int, int, int] | None] = []  # per record: sentence and passage ranges
    for a, ctx in zip(answers, contexts, strict=True):
        passages = [c for c in ctx if c and c.strip()]
        sents = sentences(a) if a and a.strip() else []
        if not sents or not passages:
            spans.append(None)
            continue
        s0 = len(texts)
        texts += sents
        p0 = len(texts)
        texts += passages
        spans.append((s0, p0, p0, len(texts)))
    vecs = _encode(encoder, texts, batch_size)
    out: list[float] = []
    for span in spans:
        if span is None:
            out.append(math.nan)
            continue
        s0, s1, p0, p1 = span
        sims = vecs[s0:s1] @ vecs[p0:p1].T
        out.append(float(sims.max(axis=1).mean()))
    return out
