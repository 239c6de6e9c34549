"""SQuAD 2.0 exact match and F1, computed exactly as the official v2.0 evaluation script.

The official script (``evaluate-v2.0.py``): answers and predictions are
normalised (lower-cased, punctuation removed, the articles a/an/the removed,
whitespace collapsed); EM and F1 (bag of tokens) take the best over the gold
answers; a question whose gold answers all normalise to nothing (SQuAD 2.0's
unanswerable ones) has the single gold answer ``""``, so only an empty
prediction is right. Aggregates are percentages, overall and split into
``HasAns`` and ``NoAns``. With no no-answer probabilities the script's threshold
step changes nothing, so it is not modelled.

A question without a prediction is *unmeasured* (the official script also
leaves it out of its totals, after a "Missing prediction" warning).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = string.punctuation.encode()
_PUNCT_RUN = re.compile(f"[{re.escape(string.punctuation)}]+")
_ARTICLE_WORDS = frozenset((b"a", b"an", b"the"))
_ASCII_SPACE = b" \t\n\r\x0b\x0c"


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the official order)."""
    s = s.lower()
    if s.isascii():
        # The usual case, 3x faster than the general one below and the same result: once
        # punctuation is gone, text of only letters, digits and whitespace has word boundaries
        # exactly between its words, so the article regex drops exactly the words a, an and the.
        b = s.encode().translate(None, _PUNCT)
        rest = b.translate(None, _ASCII_SPACE)
        if not rest or rest.isalnum():
            return b" ".join([w for w in b.split() if w not in _ARTICLE_WORDS]).decode()
    # the script's character-by-character filter, as one regex pass (5x faster)
    s = _ARTICLES.sub(" ", _PUNCT_RUN.sub("", s))
    return " ".join(s.split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def _f1_tokens(g: list[str], p: list[str]) -> float:
    if not g or not p:
        return float(g == p)  # both empty: 1; one empty: 0
    same = sum((collections.Counter(g) & collections.Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(gold: str, pred: str) -> float:
    return _f1_tokens(_tokens(gold), _tokens(pred))


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The answers that normalise to something; none left means the question is unanswerable."""
    return [a for a in answers if normalize_answer(a)] or [""]


def score(answers: Sequence[str], pred: str) -> tuple[int, float]:
    """(EM, F1) of one prediction, each the best over the gold answers."""
    # what max(exact(a, pred)), max(f1(a, pred)) over gold_answers(answers) give, with every
    # text normalised once
    golds = [n for n in map(normalize_answer, answers) if n] or [""]
    p = normalize_answer(pred)
    p_tokens = p.split()
    return max(int(g == p) for g in golds), max(_f1_tokens(g.split(), p_tokens) for g in golds)


@dataclass(frozen=True)
class SquadResult:
    """Percentages as the official script prints them; ``missing``: questions without a prediction."""

    exact: float
    f1: float
    total: int
    has_ans_exact: float | None
    has_ans_f1: float | None
    has_ans_total: int
    no_ans_exact: float | None
    no_ans_f1: float | None
    no_ans_total: int
    missing: int

    def as_official(self) -> dict[str, float | int]:
        """The official script's JSON keys."""
        out: dict[str, float | int] = {"exact": self.exact, "f1": self.f1, "total": self.total}
        if self.has_ans_total:
            out |= {"HasAns_exact": self.has_ans_exact or 0.0, "HasAns_f1": self.has_ans_f1 or 0.0}
            out["HasAns_total"] = self.has_ans_total
        if self.no_ans_total:
            out |= {"NoAns_exact": self.no_ans_exact or 0.0, "NoAns_f1": self.no_ans_f1 or 0.0}
            out["NoAns_total"] = self.no_ans_total
        return out


def evaluate(answers: Mapping[str, Sequence[str]], predictions: Mapping[str, str | None]) -> SquadResult:
    """Score ``predictions`` (qid -> text; ``None`` or absent: unmeasured) against ``answers``
    (qid -> gold answer texts; empty for unanswerable questions)."""
    em: dict[str, int] = {}
    fs: dict[str, float] = {}
    missing = 0
    for qid, golds in answers.items():
        pred = predictions.get(qid)
        if pred is None:
            missing += 1
            continue
        em[qid], fs[qid] = score(golds, pred)
    has = [q for q in em if gold_answers(answers[q]) != [""]]
    no = [q for q in em if gold_answers(answers[q]) == [""]]

    def pct(scores: Mapping[str, float], ids: Sequence[str]) -> float | None:
        return 100.0 * sum(scores[q] for q in ids) / len(ids) if ids else None

    ids = list(em)
    return SquadResult(
        exact=pct(em, ids) or 0.0,
        f1=pct(fs, ids) or 0.0,
        total=len(ids),
        has_ans_exact=pct(em, has),
        has_ans_f1=pct(fs, has),
        has_ans_total=len(has),
        no_ans_exact=pct(em, no),
        no_ans_f1=pct(fs, no),
        no_ans_total=len(no),
        missing=missing,
    )
