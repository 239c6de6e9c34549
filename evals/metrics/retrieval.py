"""Ranking metrics with binary relevance: pure functions over ranked ids.

Each per-query function takes ``ranked`` (ids best first; duplicates are the
caller's to remove, see :func:`dedupe`) and ``relevant`` (the set of ids that
count as hits), and returns a value in [0, 1]. Average them over queries with
:func:`mean`.

Conventions, stated because papers differ:

* ``recall_at_k`` = |relevant ∩ top k| / |relevant|. With one relevant document
  per query (SQuAD) it equals hit rate@k.
* ``mrr_at_k`` = 1 / rank of the first relevant id within the top ``k``, else 0.
* ``ndcg_at_k`` = DCG / ideal DCG with gain 1 per relevant id and discount
  ``1 / log2(rank + 1)``; the ideal ranking puts min(|relevant|, k) hits first.
* A query with no relevant ids scores 0 on every metric (nothing can be found);
  callers should not include such queries.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")


def dedupe(ranked: Iterable[T]) -> list[T]:
    """Keep each id at its best (first) rank: chunk hits → document ranking."""
    return list(dict.fromkeys(ranked))


def recall_at_k(ranked: Sequence[T], relevant: set[T] | frozenset[T], k: int) -> float:
    """Share of the relevant ids found in the top ``k``."""
    _check_k(k)
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[T], relevant: set[T] | frozenset[T], k: int = 10) -> float:
    """Reciprocal rank (1-based) of the first relevant id in the top ``k``; 0 if none."""
    _check_k(k)
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def dcg_at_k(ranked: Sequence[T], relevant: set[T] | frozenset[T], k: int) -> float:
    """Discounted cumulative gain with binary gains: sum of ``1 / log2(rank + 1)`` over hits."""
    _check_k(k)
    return sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(ranked[:k], start=1) if item in relevant)


def ndcg_at_k(ranked: Sequence[T], relevant: set[T] | frozenset[T], k: int = 10) -> float:
    """DCG normalised by the best DCG possible for this many relevant ids."""
    _check_k(k)
    if not relevant:
        return 0.0
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg_at_k(ranked, relevant, k) / ideal


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; 0.0 for no values (an empty eval reports zeros, not NaN)."""
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else 0.0
