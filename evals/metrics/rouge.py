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

:func:`score` computes exactly what ``rouge_score.RougeScorer(METRICS,
use_stemmer=True).score`` returns (the same tokens, counts and float operations,
so bit-identical F1s), 20x faster on the REALSumm summaries: each line is tokenised once (the whole
text's tokens are its lines' tokens in order, since a newline is a separator
like any other non-alphanumeric), Porter stems are cached per word, and the
longest common subsequences are computed bit-parallel (Hyyrö 2004: one big-int
step per token instead of a Python loop per table cell), reading rougeLsum's
LCS back with rouge-score's own tie-breaking. :func:`_reference` is rouge-score
itself, kept to check against.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import pairwise
from typing import Any

from evals.metrics.aggregate import Summary, summarize

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_TAGS = re.compile(r"</?t>")
_ANY_STOP = re.compile(r"[.!?]")
_TOKEN_STOP = re.compile(r"\s[.!?]\s")  # a stop that is its own token: tokenized text (" . ")
_PROSE_STOP = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")  # ordinary prose: stop, space, capital

Text = str | Sequence[str]


_NON_ALNUM = re.compile(r"[^a-z0-9]+")  # rouge_score.tokenize's patterns
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)


@lru_cache(maxsize=1)
def _stem() -> Callable[[str], str]:
    """rouge-score's token step for one word: Porter-stemmed (nltk, as rouge-score builds it) when
    longer than 3 characters, then "" unless still a valid token; cached per word."""
    from nltk.stem import porter

    stemmer = porter.PorterStemmer()

    @lru_cache(maxsize=1 << 17)
    def stem(word: str) -> str:
        t = stemmer.stem(word) if len(word) > 3 else word
        return t if _VALID_TOKEN.match(t) else ""

    return stem


def _tokenize(line: str) -> list[str]:
    """``rouge_score.tokenize.tokenize(line, PorterStemmer())``."""
    stem = _stem()
    return [t for t in map(stem, _NON_ALNUM.sub(" ", line.lower()).split()) if t]


def _positions(tokens: Sequence[str]) -> dict[str, int]:
    """Token -> bit mask of where it occurs in ``tokens``."""
    pos: dict[str, int] = {}
    for j, t in enumerate(tokens):
        pos[t] = pos.get(t, 0) | (1 << j)
    return pos


def _lcs_rows(ref: Sequence[str], can_len: int, can_pos: dict[str, int]) -> list[int]:
    """Bit-parallel LCS: row ``i`` of rouge-score's ``_lcs_table(ref, can)`` as a bit vector whose
    bit ``j`` is 0 where the row steps up, so ``table[i][j] = j - popcount(row_i & (2**j - 1))``."""
    mask = (1 << can_len) - 1
    v = mask
    rows = [v]
    for t in ref:
        u = v & can_pos.get(t, 0)
        v = ((v + u) | (v - u)) & mask
        rows.append(v)
    return rows


def _lcs_len(ref: Sequence[str], can: Sequence[str]) -> int:
    v = _lcs_rows(ref, len(can), _positions(can))[-1]
    return len(can) - v.bit_count()


def _lcs_ind(ref: Sequence[str], can: Sequence[str], can_pos: dict[str, int]) -> list[int]:
    """``rouge_scorer.lcs_ind``: the indices into ``ref`` of the LCS its backtracking reads out."""
    if can_pos.keys().isdisjoint(ref):
        return []
    rows = _lcs_rows(ref, len(can), can_pos)
    i, j = len(ref), len(can)
    cur = j - rows[i].bit_count()  # table[i][j], the cell the walk is on
    out: list[int] = []
    while i > 0 and j > 0:
        t = ref[i - 1]
        if t == can[j - 1]:
            i -= 1
            j -= 1
            cur -= 1
            out.append(i)
            continue
        at = can_pos.get(t)
        # Off a match rouge-score moves left when table[i][j-1] > table[i-1][j]; table[i][j] is
        # the larger of the two, so that is table[i-1][j] < table[i][j]. Then it keeps moving
        # left (table[i-1][.] only falls leftwards) until the next match, the nearest earlier
        # occurrence of ref[i-1] in can (or the table's edge): jump there. Where ref[i-1] is not
        # in can at all, row i repeats row i-1: up.
        if at is not None and j - (rows[i - 1] & ((1 << j) - 1)).bit_count() < cur:
            j = (at & ((1 << (j - 1)) - 1)).bit_length()
        else:
            i -= 1
    out.reverse()
    return out


def _fmeasure(precision: float, recall: float) -> float:
    """``rouge_score.scoring.fmeasure``."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngram_f(target: Sequence[Any], prediction: Sequence[Any], n: int) -> float:
    """``_score_ngrams(_create_ngrams(target, n), _create_ngrams(prediction, n))``, its F1."""
    t = Counter(target) if n == 1 else Counter(pairwise(target))
    p = Counter(prediction) if n == 1 else Counter(pairwise(prediction))
    hits = sum(min(t[g], p[g]) for g in t.keys() & p.keys())
    return _fmeasure(hits / max(sum(p.values()), 1), hits / max(sum(t.values()), 1))


def _lcs_f(target: Sequence[str], prediction: Sequence[str]) -> float:
    """``_score_lcs``'s F1 (rougeL)."""
    if not target or not prediction:
        return 0.0
    lcs = _lcs_len(target, prediction)
    return _fmeasure(lcs / len(prediction), lcs / len(target))


def _summary_lcs_f(ref_sents: list[list[str]], can_sents: list[list[str]]) -> float:
    """``_summary_level_lcs``'s F1 (rougeLsum)."""
    m = sum(map(len, ref_sents))
    n = sum(map(len, can_sents))
    if not ref_sents or not can_sents or not m or not n:
        return 0.0
    cnt_r: Counter[str] = Counter()
    cnt_c: Counter[str] = Counter()
    for s in ref_sents:
        cnt_r.update(s)
    for s in can_sents:
        cnt_c.update(s)
    can_pos = [_positions(c) for c in can_sents]
    hits = 0
    for r in ref_sents:
        union: set[int] = set()
        for c, pos in zip(can_sents, can_pos, strict=True):
            union.update(_lcs_ind(r, c, pos))
        for t in (r[i] for i in sorted(union)):
            if cnt_c[t] > 0 and cnt_r[t] > 0:
                hits += 1
                cnt_c[t] -= 1
                cnt_r[t] -= 1
    return _fmeasure(hits / n, hits / m)


def _scores(target: str, prediction: str) -> dict[str, float]:
    """F1 of each metric, as ``_reference(target, prediction)``."""
    # rougeLsum's sentences: the text's non-empty lines; the other metrics' tokens: all of them
    t_sents = [_tokenize(x) for x in target.split("\n") if x]
    p_sents = [_tokenize(x) for x in prediction.split("\n") if x]
    t_tokens = [t for s in t_sents for t in s]
    p_tokens = [t for s in p_sents for t in s]
    return {
        "rouge1": _ngram_f(t_tokens, p_tokens, 1),
        "rouge2": _ngram_f(t_tokens, p_tokens, 2),
        "rougeL": _lcs_f(t_tokens, p_tokens),
        "rougeLsum": _summary_lcs_f(t_sents, p_sents),
    }


def _reference(target: str, prediction: str) -> dict[str, float]:
    """rouge-score's own F1s (slow): what :func:`_scores` must equal."""
    result = _scorer().score(target, prediction)
    return {m: float(result[m].fmeasure) for m in METRICS}


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
    return _scores(_lines(reference), _lines(prediction))


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
