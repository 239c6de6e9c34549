"""Evaluation metrics, pure functions over predictions and references.

* :mod:`evals.metrics.retrieval`: recall@k, MRR@k, nDCG@k over ranked ids;
* :mod:`evals.metrics.squad`: SQuAD 2.0 exact match and F1, identical to the official script;
* :mod:`evals.metrics.rouge`: ROUGE-1/2/L/Lsum with ``rouge-score`` (Porter stemming);
* :mod:`evals.metrics.aggregate`: NaN-aware summaries ("unmeasured" is counted, never averaged)
  and bootstrap confidence intervals.
"""

from evals.metrics.retrieval import dcg_at_k, dedupe, mean, mrr_at_k, ndcg_at_k, recall_at_k

__all__ = ["dcg_at_k", "dedupe", "mean", "mrr_at_k", "ndcg_at_k", "recall_at_k"]
