"""Summaries of per-item scores in which a score that could not be computed is NaN.

A NaN is *unmeasured*: counted and reported, never averaged in and never counted
as a failure (peers' averages silently skew on it). Confidence intervals are
percentile bootstraps over the measured items, seeded, so a report is
reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """``mean`` and its ``ci_low``/``ci_high`` over the ``measured`` items (NaN when none)."""

    mean: float
    ci_low: float
    ci_high: float
    measured: int
    unmeasured: int

    @property
    def total(self) -> int:
        return self.measured + self.unmeasured

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def measured(values: Sequence[float | None]) -> np.ndarray:
    """The values that are numbers (``None`` counts as NaN), as a float array."""
    arr = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[~np.isnan(arr)]


def bootstrap_ci(
    values: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (no NaN). One value: (v, v)."""
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(
    values: Sequence[float | None], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> Summary:
    """Mean with a bootstrap CI over the measured values; NaN/None are counted as unmeasured."""
    good = measured(values)
    lo, hi = bootstrap_ci(good, resamples=resamples, seed=seed)
    return Summary(
        mean=float(good.mean()) if len(good) else math.nan,
        ci_low=lo,
        ci_high=hi,
        measured=len(good),
        unmeasured=len(values) - len(good),
    )


def paired_delta(
    current: Sequence[float | None],
    baseline: Sequence[float | None],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Summary:
    """Per-item ``current - baseline`` over the items measured in both, with a paired bootstrap CI.

    Raises:
        ValueError: the two runs do not score the same number of items.
    """
    if len(current) != len(baseline):
        raise ValueError(f"paired runs must score the same items: {len(current)} vs {len(baseline)}")
    a = np.array([math.nan if v is None else float(v) for v in current], dtype=np.float64)
    b = np.array([math.nan if v is None else float(v) for v in baseline], dtype=np.float64)
    return summarize(list(a - b), seed=seed, resamples=resamples)  # NaN on either side: unmeasured
