"""Ranking metrics against values computed by hand."""

import math

import pytest

from evals.metrics import dcg_at_k, dedupe, mean, mrr_at_k, ndcg_at_k, recall_at_k

RANKED = ["a", "b", "c", "d", "e"]


def test_dedupe_keeps_best_rank_in_order():
    assert dedupe(["d1", "d2", "d1", "d3", "d2", "d4"]) == ["d1", "d2", "d3", "d4"]
    assert dedupe([]) == []


@pytest.mark.parametrize(
    ("relevant", "k", "expected"),
    [
        ({"a"}, 1, 1.0),
        ({"b"}, 1, 0.0),
        ({"b"}, 2, 1.0),
        ({"c", "z"}, 5, 0.5),  # one of two relevant found
        ({"a", "e"}, 4, 0.5),  # e is at rank 5, outside k=4
        ({"a", "e"}, 5, 1.0),
        ({"z"}, 5, 0.0),
        ({"a"}, 100, 1.0),  # k beyond the list
    ],
)
def test_recall_at_k(relevant, k, expected):
    assert recall_at_k(RANKED, relevant, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("relevant", "k", "expected"),
    [
        ({"a"}, 10, 1.0),
        ({"c"}, 10, 1 / 3),
        ({"c", "b"}, 10, 1 / 2),  # the first relevant one counts
        ({"e"}, 4, 0.0),  # outside the cutoff
        ({"e"}, 5, 1 / 5),
        ({"z"}, 10, 0.0),
    ],
)
def test_mrr_at_k(relevant, k, expected):
    assert mrr_at_k(RANKED, relevant, k) == pytest.approx(expected)


def test_ndcg_single_relevant_is_inverse_log_rank():
    # one relevant doc: IDCG = 1, DCG = 1/log2(rank+1)
    assert ndcg_at_k(RANKED, {"a"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(RANKED, {"b"}, 10) == pytest.approx(1 / math.log2(3))  # 0.6309
    assert ndcg_at_k(RANKED, {"c"}, 10) == pytest.approx(0.5)  # 1/log2(4)
    assert ndcg_at_k(RANKED, {"c"}, 2) == 0.0


def test_ndcg_two_relevant_hand_computed():
    # relevant at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    # ideal (ranks 1, 2): 1 + 0.63093 = 1.63093 -> 0.650921
    assert dcg_at_k(RANKED, {"b", "d"}, 10) == pytest.approx(1.061606, abs=1e-6)
    assert ndcg_at_k(RANKED, {"b", "d"}, 10) == pytest.approx(0.650921, abs=1e-6)


def test_ndcg_ideal_is_capped_at_k():
    # three relevant, k=2, both top slots relevant: perfect at this cutoff
    assert ndcg_at_k(["a", "b", "c"], {"a", "b", "c"}, 2) == pytest.approx(1.0)
    # three relevant, only one retrieved at rank 1, k=10: 1 / (1 + 1/log2(3) + 1/2) = 0.46927
    assert ndcg_at_k(["a", "x"], {"a", "b", "c"}, 10) == pytest.approx(0.469278, abs=1e-6)


def test_no_relevant_scores_zero_and_bad_k_raises():
    for fn in (recall_at_k, mrr_at_k, ndcg_at_k):
        assert fn(RANKED, set(), 5) == 0.0
        with pytest.raises(ValueError, match="k must be >= 1"):
            fn(RANKED, {"a"}, 0)
    assert recall_at_k([], {"a"}, 5) == 0.0


def test_mean():
    assert mean([1.0, 0.0, 0.5, 0.5]) == 0.5
    assert mean(x for x in [0.25]) == 0.25
    assert mean([]) == 0.0


def test_metric_orderings_hold_on_every_rank():
    # for a single relevant doc: recall@1 <= MRR <= recall@10 and recall@1 <= nDCG <= recall@10
    for rank in range(12):
        ranked = [f"x{i}" for i in range(12)]
        ranked[rank] = "gold"
        g = {"gold"}
        r1, r10 = recall_at_k(ranked, g, 1), recall_at_k(ranked, g, 10)
        assert r1 <= mrr_at_k(ranked, g, 10) <= r10
        assert r1 <= ndcg_at_k(ranked, g, 10) <= r10
