"""SQuAD 2.0 EM/F1 (the official script's rules), ROUGE (rouge-score's numbers), NaN-aware summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals.datasets import load_realsumm, load_squad
from evals.metrics import rouge, squad
from evals.metrics.aggregate import bootstrap_ci, paired_delta, summarize

pytestmark = pytest.mark.unit


# -- SQuAD -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Normans", "normans"),
        ("  a  Cat, an owl & THE dog!  ", "cat owl dog"),
        ("theatre", "theatre"),  # articles only as whole words
        ("10th-century", "10thcentury"),  # punctuation removed before splitting, as the script does
        ("", ""),
    ],
)
def test_normalization_matches_the_official_script(text: str, normalized: str) -> None:
    assert squad.normalize_answer(text) == normalized


def test_hand_computed_em_and_f1() -> None:
    # gold "the cat sat on the mat" -> [cat, sat, on, mat]; pred -> [cat, sat]: P=1, R=0.5, F1=2/3
    assert squad.f1("the cat sat on the mat", "The cat sat.") == pytest.approx(2 / 3)
    assert squad.exact("Normandy", "normandy!") == 1
    assert squad.f1("Normandy", "France") == 0.0
    # best over gold answers; an unanswerable question's gold is "" and only "" is right
    assert squad.score(["France", "Normandy region"], "the Normandy") == (0, pytest.approx(2 / 3))
    assert squad.score([], "") == (1, 1.0)
    assert squad.score([], "Normandy") == (0, 0.0)
    assert squad.score(["..."], "") == (1, 1.0)  # gold that normalises to nothing counts as no answer


def test_no_answer_baseline_on_the_half_set_is_the_official_52_12() -> None:
    data = load_squad()
    answers = {q.qid: list(q.answers) for q in data.questions + data.unanswerable}
    res = squad.evaluate(answers, {qid: "" for qid in answers})
    assert res.total == 6078 and res.missing == 0
    assert round(res.exact, 2) == 52.12 and round(res.f1, 2) == 52.12
    assert res.has_ans_total == 2910 and res.has_ans_exact == 0.0
    assert res.no_ans_total == 3168 and res.no_ans_exact == 100.0
    assert set(res.as_official()) == {
        "exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
        "NoAns_exact", "NoAns_f1", "NoAns_total",
    }  # fmt: skip


def test_gold_answers_score_100_and_missing_predictions_are_unmeasured() -> None:
    data = load_squad()
    answers = {q.qid: list(q.answers) for q in data.questions[:50] + data.unanswerable[:50]}
    preds: dict[str, str | None] = {q: (a[0] if a else "") for q, a in answers.items()}
    assert squad.evaluate(answers, preds).exact == 100.0
    first = next(iter(answers))
    preds[first] = None
    res = squad.evaluate(answers, preds)
    assert res.missing == 1 and res.total == 99 and res.exact == 100.0  # not averaged in as a zero


# -- ROUGE -------------------------------------------------------------------------------------
def _percent(summary: dict[str, object], keys: tuple[str, ...]) -> list[float]:
    return [round(100 * summary[k].mean, 2) for k in keys]  # type: ignore[attr-defined]


def test_bart_outputs_score_what_rouge_score_gives() -> None:
    data = load_realsumm()
    res = rouge.corpus(data.references, data.systems["bart_out"])
    assert _percent(res, ("rouge1", "rouge2", "rougeLsum")) == [46.19, 22.10, 42.78]
    assert res["rouge1"].ci_low < res["rouge1"].mean < res["rouge1"].ci_high
    assert res["rouge1"].measured == 100 and res["rouge1"].unmeasured == 0


def test_lead3_scores_the_published_figures() -> None:
    data = load_realsumm()
    res = rouge.corpus(data.references, [rouge.lead(s, 3) for s in data.sources])
    assert _percent(res, ("rouge1", "rouge2", "rougeLsum")) == [41.07, 17.47, 37.23]


def test_sentence_rules() -> None:
    assert rouge.sentences("the u.s. said no . then it said yes . ") == [
        "the u.s. said no",
        "then it said yes",
    ]
    assert rouge.sentences("Who left. Then came 3 more! Fine") == ["Who left.", "Then came 3 more!", "Fine"]
    assert rouge.rouge_sentences("<t> one . </t> <t> two ! </t>") == ["one", "two"]
    assert rouge.lead("a . b . c . d .", 3) == ["a", "b", "c"]


def test_rouge_identity_empty_and_missing() -> None:
    assert rouge.score("the cat sat", "the cat sat") == {m: 1.0 for m in rouge.METRICS}
    assert rouge.score("the cat sat", "") == {m: 0.0 for m in rouge.METRICS}
    assert all(math.isnan(v) for v in rouge.score("the cat sat", None).values())
    res = rouge.corpus(["the cat sat", "a dog ran"], ["the cat sat", None])
    assert res["rouge1"].mean == 1.0 and res["rouge1"].unmeasured == 1
    with pytest.raises(ValueError, match="differ in length"):
        rouge.corpus(["a"], [])


# -- aggregation -------------------------------------------------------------------------------
def test_summaries_never_average_nan() -> None:
    s = summarize([1.0, 0.0, float("nan"), None, 1.0])
    assert s.mean == pytest.approx(2 / 3) and s.measured == 3 and s.unmeasured == 2 and s.total == 5
    empty = summarize([None, float("nan")])
    assert math.isnan(empty.mean) and empty.as_dict()["mean"] is None and empty.unmeasured == 2


def test_bootstrap_ci_covers_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(3)
    small, big = rng.normal(0.5, 0.2, 30), rng.normal(0.5, 0.2, 3000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_b, hi_b = bootstrap_ci(big)
    assert lo_s < small.mean() < hi_s and lo_b < big.mean() < hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 5
    assert bootstrap_ci(small, seed=1) == bootstrap_ci(small, seed=1)  # seeded: reproducible


def test_paired_delta_sees_a_small_consistent_regression() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, 400)
    worse = base - 0.02 + rng.normal(0, 0.005, 400)  # every item a little worse
    d = paired_delta(list(worse), list(base))
    assert d.ci_high < 0 and d.mean == pytest.approx(-0.02, abs=0.002)
    same = paired_delta(list(base + rng.normal(0, 0.01, 400)), list(base))
    assert same.ci_low < 0 < same.ci_high
    with pytest.raises(ValueError, match="same items"):
        paired_delta([1.0], [1.0, 2.0])
