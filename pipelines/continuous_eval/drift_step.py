"""Drift after each continuous-evaluation run, from the scores table.

The scores table keeps each scored request's prompt embedding, so drift embeds
nothing: per model and tenant, the current window (the last ``current_hours``) is
compared with the reference window (the ``reference_hours`` before it) by
:func:`evals.drift.embedding_drift` (MMD² permutation test, domain-classifier AUC,
centroid cosine) and :func:`evals.drift.psi` on the scalars (prompt and completion
tokens, latency, answer relevance). The results replace the drift gauges of the
state (a group too small on either side gets ``llmops_eval_drift_samples`` but no
``llmops_eval_drift_detected``: "insufficient data", never "no drift") and are
written to ``<out>/drift.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monitoring.eval_metrics import EvalState
from monitoring.metrics import TenantLabeler
from pipelines.continuous_eval.config import DriftWindowConfig
from pipelines.continuous_eval.tables import read_scores_table

__all__ = ["SCALARS", "drift_step"]

SCALARS = ("prompt_tokens", "completion_tokens", "latency_ms", "answer_relevance")
_GAUGES = (
    "llmops_eval_drift_mmd2",
    "llmops_eval_drift_p_value",
    "llmops_eval_drift_domain_auc",
    "llmops_eval_drift_centroid_cosine",
    "llmops_eval_drift_psi",
    "llmops_eval_drift_detected",
    "llmops_eval_drift_samples",
)


def drift_step(
    out: Path, cfg: DriftWindowConfig, state: EvalState, tenant: TenantLabeler, now: float | None = None
) -> list[dict[str, Any]]:
    """Drift per model and tenant; updates ``state``'s gauges and writes ``drift.json``."""
    from evals.drift import embedding_drift, psi

    now = time.time() if now is None else now
    start_cur = now - cfg.current_hours * 3600
    start_ref = start_cur - cfg.reference_hours * 3600
    ts_from = pa.scalar(int(start_ref * 1000), type=pa.timestamp("ms", tz="UTC"))
    table = read_scores_table(
        out,
        ["ts", "model", "tenant", "prompt_embedding", *SCALARS],
        filter=pc.field("ts") >= ts_from,
    )
    for name in _GAUGES:
        state.clear(name)
    results: list[dict[str, Any]] = []
    if table is not None and table.num_rows and "prompt_embedding" in table.column_names:
        frame = table.to_pandas()
        frame = frame[frame["prompt_embedding"].map(lambda v: v is not None and len(v) > 0)]
        current = frame["ts"].map(lambda t: t.timestamp() >= start_cur)
        for (model, ten), group in frame.groupby(["model", "tenant"], sort=True):
            ref, cur = group[~current.loc[group.index]], group[current.loc[group.index]]
            dims = len(group["prompt_embedding"].iloc[0])
            emb = embedding_drift(
                _matrix(ref["prompt_embedding"], dims),
                _matrix(cur["prompt_embedding"], dims),
                min_samples=cfg.min_samples,
                permutations=cfg.permutations,
                alpha=cfg.alpha,
            )
            scalars = {
                s: psi(ref[s].to_numpy(float), cur[s].to_numpy(float), min_samples=cfg.min_samples)
                for s in SCALARS
                if s in group
            }
            results.append(
                {
                    "model": model,
                    "tenant": ten,
                    **emb.as_dict(),
                    "psi": {k: _json(v) for k, v in scalars.items()},
                }
            )
            labels = {"model": str(model), "tenant": tenant(str(ten))}
            state.set("llmops_eval_drift_samples", {"kind": "reference", **labels}, len(ref))
            state.set("llmops_eval_drift_samples", {"kind": "current", **labels}, len(cur))
            if emb.status == "insufficient_data":
                continue
            state.set("llmops_eval_drift_detected", labels, 1.0 if emb.status == "drift" else 0.0)
            for name, value in (
                ("llmops_eval_drift_mmd2", emb.mmd2),
                ("llmops_eval_drift_p_value", emb.p_value),
                ("llmops_eval_drift_domain_auc", emb.domain_auc),
                ("llmops_eval_drift_centroid_cosine", emb.centroid_cosine),
            ):
                if math.isfinite(value):
                    state.set(name, labels, value)
            for s, value in scalars.items():
                if math.isfinite(value):
                    state.set("llmops_eval_drift_psi", {"metric": s, **labels}, value)
    report = {
        "computed_at": now,
        "current_from": start_cur,
        "reference_from": start_ref,
        "min_samples": cfg.min_samples,
        "groups": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".drift.json.tmp"
    tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    os.replace(tmp, out / "drift.json")
    return results


def _matrix(column: Any, dims: int) -> np.ndarray:
    rows = [np.asarray(v, dtype=np.float32) for v in column]
    return np.stack(rows) if rows else np.zeros((0, dims), dtype=np.float32)


def _json(v: float) -> float | None:
    return v if math.isfinite(v) else None
