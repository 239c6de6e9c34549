"""ROUGE-1/2/L/Lsum F1 with Google's ``rouge-score`` (Porter stemming), with bootstrap CIs.

``rougeLsum`` scores summary-level LCS over sentences, which ``rouge-score``
reads as newline-separated lines; how text is cut into sentences therefore
changes R-Lsum (never R-1/R-2/R-L). The rules here reproduce the published
figures on the shipped REALSumm files (evals/data/realsumm):

* a summary given as a string: ``<t>``/``</t>`` tags dropped, cut at every
  ``.``, ``!`` and ``?`` (:func:`rouge_sentences`); BART's outputs score
  46.19 / 22.10 / 42.78 (R-1 / R-2 / R-Lsum) as with ``rouge-score`` itself;
* a summary given as a list (an extractive summary's selected sentences): those
  sentences as they are; LEAD-3 of the articles, cut with :func:`sentences`,
  scores 41.07 / 17.47 / 37.23.

A missing prediction (``None``) is unmeasured (NaN), not a zero; an empty one
scores 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from evals.metrics.aggregate import Summary, summarize

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_TAGS = re.compile(r"</?t>")
_ANY_STOP = re.compile(r"[.!?]")
_TOKEN_STOP = re.compile(r"\s[.!?]\s")  # a stop that is its own token: tokenized text (" . ")
_PROSE_STOP = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")  # ordinary prose: stop, space, capital

Text = str | Sequence[str]


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)


def _strip(text: str) -> str:
    return " ".join(_TAGS.sub(" ", text).split())


def rouge_sentences(text: str) -> list[str]:
    """The lines ``rougeLsum`` compares: cut at every ``.``, ``!`` and ``?``."""
    return [s.strip() for s in _ANY_STOP.split(_strip(text)) if s.strip()]


def sentences(text: str) -> list[str]:
    """Sentences for selection (LEAD-n, extractive summaries): in tokenized text (``" . "``) at stops
    that are their own token, so ``u.s.`` stays whole; in prose at a stop followed by a capital."""
    t = _strip(text)
    splitter = _TOKEN_STOP if _TOKEN_STOP.search(f" {t} ") else _PROSE_STOP
    return [s.strip() for s in splitter.split(f" {t} ") if s.strip()]


def lead(text: str, n: int = 3) -> list[str]:
    """The first ``n`` sentences (LEAD-3: the classic extractive baseline on news)."""
    return sentences(text)[:n]


def _lines(text: Text) -> str:
    return "\n".join(rouge_sentences(text) if isinstance(text, str) else [s.strip() for s in text])


def score(reference: Text, prediction: Text | None) -> dict[str, float]:
    """F1 of each metric in [0, 1]; NaN for every metric when ``prediction`` is None."""
    if prediction is None:
        return {m: math.nan for m in METRICS}
    result = _scorer().score(_lines(reference), _lines(prediction))
    return {m: float(result[m].fmeasure) for m in METRICS}


def corpus(
    references: Sequence[Text], predictions: Sequence[Text | None], *, seed: int = 0
) -> dict[str, Summary]:
    """Mean F1 per metric over documents (as ``rouge-score`` and REALSumm average), with a 95 %
    bootstrap CI; missing predictions are counted as unmeasured.

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(references) != len(predictions):
        raise ValueError(
            f"references and predictions differ in length: {len(references)} vs {len(predictions)}"
        )
    per_doc = [score(r, p) for r, p in zip(references, predictions, strict=True)]
    return {m: summarize([d[m] for d in per_doc], seed=seed) for m in METRICS}
