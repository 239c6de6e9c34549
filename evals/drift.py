"""Drift between a reference window and the current one: prompt embeddings and scalars.

Embeddings (one row per prompt, e.g. the bundled all-MiniLM-L6-v2's unit vectors):

- **MMD²** (maximum mean discrepancy, unbiased estimator) with an RBF kernel whose
  bandwidth is the median pairwise distance of the pooled sample, and a
  permutation p-value. The decision: drift when ``p < alpha``. Under no drift the
  permutation test is exact, so false alarms happen at rate ``alpha`` (a little
  under it: with 200 permutations and ``alpha=0.05`` it is 10/201 = 4.98 %).
- **Domain-classifier AUC**: how well a linear classifier (shrinkage LDA, 5-fold
  cross-validated) tells the windows apart; 0.5: it cannot. A gauge of *how much*.
- **Centroid cosine** of the two windows' mean vectors: a cheap gauge (1.0: same centroid).

Scalars (prompt and completion tokens, latency, scores): the **Population
Stability Index** over the reference window's deciles. Conventional reading:
PSI < 0.1 stable, 0.1 to 0.25 a moderate shift worth a look, > 0.25 a major shift.

Below ``min_samples`` rows on either side the status is ``"insufficient_data"`` and
every statistic NaN, never a "no drift" (unmeasured is not zero).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np

__all__ = ["EmbeddingDrift", "domain_auc", "drift_report", "embedding_drift", "psi", "scalar_drift"]

DriftStatus = Literal["drift", "no_drift", "insufficient_data"]
DEFAULT_SCALAR_FIELDS = ("prompt_tokens", "completion_tokens", "latency_ms")
PSI_EPSILON = 1e-4  # floor of a bin's share: an empty bin would make PSI infinite
Values = Sequence[float | None] | np.ndarray  # None and NaN: unmeasured, dropped
Row = Mapping[str, Any]  # a record, e.g. of the inference table
LDA_SHRINKAGE = 0.5  # pull of the covariance toward its scaled identity (384 dims, ~1,600 rows)


class TextEncoder(Protocol):
    """What :func:`drift_report` needs: sentence-transformers' ``encode``."""

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


@dataclass(frozen=True)
class EmbeddingDrift:
    """The drift between two samples of embeddings.

    Attributes:
        status: ``"drift"`` (``p_value < alpha``), ``"no_drift"``, or
            ``"insufficient_data"`` (fewer than ``min_samples`` rows on a side; every
            statistic is then NaN).
        n_reference: rows in the reference window (before subsampling).
        n_current: rows in the current window (before subsampling).
        mmd2: the unbiased MMD² estimate (can be slightly negative when there is no drift).
        p_value: the permutation p-value of ``mmd2``, ``(1 + #{perm >= observed}) / (1 + permutations)``.
        domain_auc: cross-validated ROC AUC of a classifier telling current from reference (0.5: none).
        centroid_cosine: cosine between the two windows' mean vectors (1.0: same direction).
        bandwidth: the RBF kernel's sigma (median pairwise distance of the pooled sample).
        permutations: how many permutations the p-value used.
        alpha: the significance level of the decision.
    """

    status: DriftStatus
    n_reference: int
    n_current: int
    mmd2: float
    p_value: float
    domain_auc: float
    centroid_cosine: float
    bandwidth: float
    permutations: int
    alpha: float

    @classmethod
    def insufficient(cls, n_reference: int, n_current: int, alpha: float) -> EmbeddingDrift:
        """Too few rows on a side: every statistic NaN (unmeasured, not "no drift")."""
        nan = float("nan")
        return cls("insufficient_data", n_reference, n_current, nan, nan, nan, nan, nan, 0, alpha)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe values: NaN (unmeasured) becomes ``None``."""
        return {k: _json_float(v) for k, v in asdict(self).items()}


def _json_float(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _as_matrix(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x dims), got shape {a.shape}")
    if a.size and not np.isfinite(a).all():
        bad = int((~np.isfinite(a).all(axis=1)).sum())
        raise ValueError(f"{name} has {bad} row(s) with NaN or infinite values")
    return a


def _subsample(x: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= max_points else x[np.sort(rng.choice(len(x), max_points, replace=False))]


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    # the Gram matrix in float32 (twice as fast; the kernel is fixed for all permutations,
    # so its rounding cannot bias the test), the rest in float64
    x32 = x.astype(np.float32)
    d = sq[:, None] + sq[None, :] - 2.0 * (x32 @ x32.T).astype(np.float64)
    np.maximum(d, 0.0, out=d)  # rounding can leave tiny negatives
    np.fill_diagonal(d, 0.0)
    return d


def _mmd2_many(k: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """Unbiased MMD² for each column of ``labels`` (n x P, 1.0 = reference, m ones per column).

    One matmul for all columns: with ``a`` a column and ``b = 1 - a``,
    ``a'Ka``, ``a'Kb`` and ``b'Kb`` all follow from ``K a`` and the row sums of K.
    The RBF kernel's diagonal is 1, hence the ``- m`` and ``- n_b`` (unbiased: no i == j terms).
    """
    n = k.shape[0]
    nb = n - m
    ka = k @ labels  # n x P
    row = k.sum(axis=1)
    aka = np.einsum("ij,ij->j", labels, ka)
    a_row = labels.T @ row  # a'K1
    akb = a_row - aka
    bkb = row.sum() - 2.0 * a_row + aka
    return (aka - m) / (m * (m - 1)) + (bkb - nb) / (nb * (nb - 1)) - 2.0 * akb / (m * nb)


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic: P(positive scores above negative), ties one half."""
    pos, neg = scores[positive], np.sort(scores[~positive])
    if not len(pos) or not len(neg):
        return float("nan")
    below = np.searchsorted(neg, pos, "left") + np.searchsorted(neg, pos, "right")  # 2 x (below + ties / 2)
    return float(below.sum() / (2.0 * len(pos) * len(neg)))


def domain_auc(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    folds: int = 5,
    shrinkage: float = LDA_SHRINKAGE,
    seed: int = 0,
) -> float:
    """Cross-validated AUC of a linear classifier telling ``current`` rows from ``reference`` rows.

    The classifier is shrinkage LDA: ``w = S⁻¹ (mean_cur - mean_ref)`` with
    ``S = (1 - shrinkage) Σ + shrinkage (tr Σ / d) I`` (Σ the pooled within-class
    covariance of the training folds), closed form and numpy only. Folds are
    stratified; the AUC is the mean of the folds' held-out AUCs. 0.5: the windows
    are indistinguishable to a linear model; 1.0: perfectly separable.

    Raises:
        ValueError: fewer rows than ``folds`` on a side, or ``shrinkage`` outside (0, 1].
    """
    if not 0.0 < shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    if min(len(reference), len(current)) < folds:
        raise ValueError(
            f"domain_auc needs at least {folds} rows on each side, got {len(reference)} and {len(current)}"
        )
    rng = np.random.default_rng(seed)
    x = np.vstack([reference, current])
    y = np.r_[np.zeros(len(reference), dtype=bool), np.ones(len(current), dtype=bool)]
    fold = np.empty(len(x), dtype=np.int64)
    for cls in (False, True):  # stratified: each fold gets its share of both windows
        idx = np.flatnonzero(y == cls)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    d = x.shape[1]
    # count, sum, second moment per fold and class, once: a training set's are the totals minus its fold's
    cnt = np.zeros((folds, 2))
    sums = np.zeros((folds, 2, d))
    second = np.zeros((folds, 2, d, d))
    for f in range(folds):
        for c in (0, 1):
            part = x[(fold == f) & (y == bool(c))]
            cnt[f, c], sums[f, c], second[f, c] = len(part), part.sum(axis=0), part.T @ part
    aucs = []
    for f in range(folds):
        n_c = cnt.sum(axis=0) - cnt[f]
        mu = (sums.sum(axis=0) - sums[f]) / n_c[:, None]
        scatter = (second.sum(axis=0) - second[f]).sum(axis=0) - sum(
            n_c[c] * np.outer(mu[c], mu[c]) for c in (0, 1)
        )
        cov = scatter / max(n_c.sum() - 2.0, 1.0)
        target = (np.trace(cov) / d) or 1.0
        w = np.linalg.solve((1.0 - shrinkage) * cov + shrinkage * target * np.eye(d), mu[1] - mu[0])
        test = fold == f
        aucs.append(_auc(x[test] @ w, y[test]))
    return float(np.mean(aucs))


def embedding_drift(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    min_samples: int = 100,
    permutations: int = 200,
    alpha: float = 0.05,
    max_points: int = 1000,
    seed: int = 0,
) -> EmbeddingDrift:
    """MMD² with a permutation test, domain-classifier AUC and centroid cosine of two samples.

    Args:
        reference: the reference window's embeddings, rows x dims.
        current: the current window's embeddings, same dims.
        min_samples: fewer rows than this on either side gives ``"insufficient_data"``.
        permutations: label shuffles for the p-value (all computed in one matmul).
        alpha: significance level: drift when ``p_value < alpha``.
        max_points: each side larger than this (or than ``min_samples``, if that is larger)
            is subsampled to it (seeded) before the kernel is built; the kernel matrix is
            ``(2 * max_points)²`` floats.
        seed: seeds subsampling, the permutations and the classifier's folds.

    Raises:
        ValueError: not 2-D, different dims, non-finite values, or bad parameters.
    """
    for name, value, low in (("min_samples", min_samples, 2), ("permutations", permutations, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    max_points = max(max_points, min_samples)  # a subsample must still be a sufficient one (>= 2)
    ref, cur = _as_matrix(reference, "reference"), _as_matrix(current, "current")
    if len(ref) and len(cur) and ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} dims but current has {cur.shape[1]}")
    if len(ref) < min_samples or len(cur) < min_samples:
        return EmbeddingDrift.insufficient(len(ref), len(cur), alpha)

    rng = np.random.default_rng(seed)
    mu_r, mu_c = ref.mean(axis=0), cur.mean(axis=0)
    norms = float(np.linalg.norm(mu_r) * np.linalg.norm(mu_c))
    cosine = float(mu_r @ mu_c / norms) if norms > 0 else float("nan")

    x, y = _subsample(ref, max_points, rng), _subsample(cur, max_points, rng)
    pooled = np.vstack([x, y])
    d2 = _sq_dists(pooled)
    off = d2[np.triu(np.ones(d2.shape, dtype=bool), k=1)]
    med = float(np.median(off))
    med = med if med > 0.0 else float(off.mean())  # most pairs duplicates: the mean distance instead
    if med <= 0.0:  # every row identical: nothing can differ
        return EmbeddingDrift("no_drift", len(ref), len(cur), 0.0, 1.0, 0.5, cosine, 0.0, permutations, alpha)
    k = np.exp(-d2 / (2.0 * med))  # sigma² = median squared distance
    m, n = len(x), len(pooled)
    base = np.r_[np.ones(m), np.zeros(n - m)]
    labels = np.empty((n, permutations + 1))
    labels[:, 0] = base
    labels[:, 1:] = rng.permuted(np.broadcast_to(base[:, None], (n, permutations)), axis=0)
    stats = _mmd2_many(k, labels, m)
    observed = float(stats[0])
    p_value = float((1 + np.count_nonzero(stats[1:] >= observed)) / (1 + permutations))
    auc = domain_auc(x, y, seed=seed)
    status: DriftStatus = "drift" if p_value < alpha else "no_drift"
    return EmbeddingDrift(
        status, len(ref), len(cur), observed, p_value, auc, cosine, math.sqrt(med), permutations, alpha
    )


def _finite(values: Iterable[Any]) -> np.ndarray:
    """Floats, with None, NaN and infinities dropped."""
    out = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return out[np.isfinite(out)]


def psi(reference: Values, current: Values, *, bins: int = 10, min_samples: int = 100) -> float:
    """Population Stability Index of ``current`` against ``reference``.

    ``PSI = sum over bins of (c - r) * ln(c / r)`` with ``r``, ``c`` the shares of
    each window in a bin. Bins are the reference's quantiles (deciles by default;
    tied quantiles merge, so integer-valued data may get fewer bins); the outer
    bins are open, so current values beyond the reference's range still count.
    A bin's share is floored at 1e-4 so an empty bin costs a finite amount.
    None, NaN and infinite values are dropped first.

    Reading (conventional): < 0.1 stable, 0.1 to 0.25 moderate shift, > 0.25 major shift.

    Returns:
        The PSI (>= 0), or NaN when either side has fewer than ``min_samples`` finite values.

    Raises:
        ValueError: ``bins`` < 2 or ``min_samples`` < 1.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    ref, cur = _finite(reference), _finite(current)
    if len(ref) < min_samples or len(cur) < min_samples:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    # a value's bin is the number of edges at or below it: bin i holds edges[i-1] <= v < edges[i]
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    r, c = np.maximum(r, PSI_EPSILON), np.maximum(c, PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def scalar_drift(
    reference: Mapping[str, Values],
    current: Mapping[str, Values],
    *,
    bins: int = 10,
    min_samples: int = 100,
) -> dict[str, float]:
    """:func:`psi` per field, for every field in either mapping (NaN where a side lacks it).

    Raises:
        ValueError: a field holds values that are not numbers (the message names the field).
    """
    out: dict[str, float] = {}
    for f in dict.fromkeys([*reference, *current]):
        try:
            ref, cur = _finite(reference.get(f, ())), _finite(current.get(f, ()))
        except (TypeError, ValueError) as exc:  # e.g. a string among the numbers
            raise ValueError(f"field {f!r} is not numeric: {exc}") from None
        out[f] = psi(ref, cur, bins=bins, min_samples=min_samples)
    return out


def _group_rows(rows: Iterable[Row], group_by: Sequence[str]) -> dict[tuple[Any, ...], list[Row]]:
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(g) for g in group_by), []).append(row)
    return groups


def _texts(rows: Sequence[Row], field: str) -> list[str]:
    return [t for t in (r.get(field) for r in rows) if isinstance(t, str) and t.strip()]


def _sample(texts: list[str], max_points: int, rng: np.random.Generator) -> list[str]:
    keep = np.sort(rng.choice(len(texts), max_points, replace=False)) if len(texts) > max_points else None
    return texts if keep is None else [texts[j] for j in keep]


def drift_report(
    reference_rows: Iterable[Row],
    current_rows: Iterable[Row],
    encoder: TextEncoder,
    *,
    group_by: Sequence[str] = ("model", "tenant"),
    text_field: str = "prompt",
    scalar_fields: Sequence[str] = DEFAULT_SCALAR_FIELDS,
    min_samples: int = 100,
    permutations: int = 200,
    alpha: float = 0.05,
    max_points: int = 1000,
    bins: int = 10,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Embedding and scalar drift per group (by default per model and tenant).

    Rows are dicts (e.g. inference-table records). A row lacking a group key falls
    in that key's ``None`` group; rows whose ``text_field`` is missing or blank are
    left out of the embedding drift. At most ``max_points`` texts a side are
    embedded per group (a seeded sample), with ``encoder.encode(texts, batch_size=64)``.

    Returns:
        One JSON-safe dict per group present in either window, sorted by group:
        the group keys, ``"embedding"`` (:meth:`EmbeddingDrift.as_dict`) and ``"psi"``
        (field -> PSI, ``None`` where unmeasured).
    """
    ref_groups = _group_rows(reference_rows, group_by)
    cur_groups = _group_rows(current_rows, group_by)
    keys = sorted(
        set(ref_groups) | set(cur_groups), key=lambda k: tuple("" if v is None else str(v) for v in k)
    )
    rng = np.random.default_rng(seed)
    cap = max(max_points, min_samples)  # texts embedded a side, at most
    opts: dict[str, Any] = dict(min_samples=min_samples, permutations=permutations, alpha=alpha, seed=seed)
    out: list[dict[str, Any]] = []
    for key in keys:
        ref, cur = ref_groups.get(key, []), cur_groups.get(key, [])
        texts = _texts(ref, text_field), _texts(cur, text_field)
        if min(len(texts[0]), len(texts[1])) < min_samples:  # nothing to compute: spend no encoding
            emb = EmbeddingDrift.insufficient(len(texts[0]), len(texts[1]), alpha)
        else:
            e_ref, e_cur = (encoder.encode(_sample(t, cap, rng), batch_size=64) for t in texts)
            emb = embedding_drift(e_ref, e_cur, max_points=cap, **opts)
            # the counts are of the windows, not of the sample that was embedded
            emb = replace(emb, n_reference=len(texts[0]), n_current=len(texts[1]))
        scalars = scalar_drift(
            {f: [r.get(f) for r in ref] for f in scalar_fields},
            {f: [r.get(f) for r in cur] for f in scalar_fields},
            bins=bins,
            min_samples=min_samples,
        )
        psi_json = {f: _json_float(v) for f, v in scalars.items()}
        out.append({**dict(zip(group_by, key, strict=True)), "embedding": emb.as_dict(), "psi": psi_json})
    return out
