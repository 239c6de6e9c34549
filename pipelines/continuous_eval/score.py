"""Reference-free scores of live records: the Ray Data stage and the judge.

Per record (none needs a reference answer):

* ``answer_relevance``: cosine of the question (the last user turn) and the answer
  (:func:`evals.metrics.semantic.answer_relevance`);
* ``context_support``: for RAG models only (engine ``rag:*``), how well the answer's
  sentences are found in the retrieved chunks (NaN when nothing was retrieved);
* ``refusal``: 1 when the answer refuses (:func:`evals.metrics.checks.refusal`);
* ``length``: the completion's tokens (a scalar for drift, not a 0-1 score);
* ``judge_<rubric>``: an LLM judge's 1-5 grade mapped to 0-1, when a judge is
  configured, within its token budget (NaN beyond it).

The prompt's embedding is kept too, for drift. :class:`Scorer` is the Ray Data
``map_batches`` class (one encoder per actor); the judge runs in the driver, where
its budget is one object.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from evals.metrics import checks, semantic

__all__ = ["SCORE_METRICS", "Scorer", "judge_scores", "question_of"]

#: 0-1 scores that go to llmops_eval_score (``length`` is a token count: scores table only)
SCORE_METRICS = ("answer_relevance", "context_support", "refusal")

# the gateway records a chat prompt as "role: content" lines (services.gateway.serving)
_TURN = re.compile(r"(?m)^(system|user|assistant|tool|developer): ")


def question_of(prompt: str | None) -> str:
    """The last user turn of a recorded chat prompt; a completion prompt as it is."""
    if not prompt:
        return ""
    turns = list(_TURN.finditer(prompt))
    if not turns:
        return prompt
    for i in range(len(turns) - 1, -1, -1):
        if turns[i].group(1) == "user":
            end = turns[i + 1].start() if i + 1 < len(turns) else len(prompt)
            return prompt[turns[i].end() : end].strip()
    return prompt[turns[-1].end() :].strip()


def is_rag(engine: Any) -> bool:
    return isinstance(engine, str) and engine.startswith("rag:")


class Scorer:
    """Ray Data ``map_batches`` class: adds the score columns and ``prompt_embedding``."""

    def __init__(
        self,
        metrics: Sequence[str],
        model_path: str | None,
        device: str = "cpu",
        backend: str = "auto",
        precision: str = "auto",
        cache_dir: str | None = None,
        threads: int | None = None,
        batch_size: int = 64,
        encoder: Any = None,
    ) -> None:
        """``encoder``: an already loaded one (tests, in-process use); else the model is loaded
        the way the embeddings deployment loads it, so scores match the served vectors."""
        self.metrics = set(metrics)
        self.batch_size = batch_size
        if encoder is None:
            from services.embeddings.encoder import Encoder

            encoder = Encoder(
                model_path,
                device,
                backend,
                threads=threads or os.cpu_count(),
                cache_dir=cache_dir,
                precision=precision,  # type: ignore[arg-type]
            )
        self.encoder = encoder

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        prompts = [str(p or "") for p in batch["prompt"]]
        answers: list[str | None] = [a if isinstance(a, str) else None for a in batch["completion"]]
        n = len(prompts)
        out = pd.DataFrame({"request_id": batch["request_id"].to_numpy()})
        vectors = np.asarray(self.encoder.encode(prompts, batch_size=self.batch_size), dtype=np.float32)
        out["prompt_embedding"] = list(vectors)
        if "answer_relevance" in self.metrics:
            questions = [question_of(p) for p in prompts]
            out["answer_relevance"] = semantic.answer_relevance(
                self.encoder, questions, answers, batch_size=self.batch_size
            )
        if "context_support" in self.metrics:
            rag = [is_rag(e) for e in batch["engine"]]
            idx = [i for i in range(n) if rag[i]]
            values = [math.nan] * n
            if idx:
                contexts = [list(batch["chunk_texts"].iloc[i] or ()) for i in idx]
                scored = semantic.context_support(
                    self.encoder, [answers[i] for i in idx], contexts, batch_size=self.batch_size
                )
                for i, v in zip(idx, scored, strict=True):
                    values[i] = v
            out["context_support"] = values
            out["rag"] = rag
        if "refusal" in self.metrics:
            out["refusal"] = [checks.refusal(a) for a in answers]
        if "length" in self.metrics:
            out["length"] = [float(t) for t in batch["completion_tokens"]]
        return out


def judge_scores(
    records: Sequence[Mapping[str, Any]],
    rubrics: Sequence[str],
    new_judge: Callable[[], Any],
) -> dict[str, list[float]]:
    """``judge_<rubric>`` per record (NaN: budget spent, failed call, no answer, not applicable).

    ``new_judge`` makes an :class:`evals.metrics.judge.Judge` (its client bound to this
    call's event loop; the budget object shared across calls). Records are judged
    tenant by tenant so each tenant's budget applies; ``faithfulness`` only for RAG
    records (it needs the retrieved context).
    """
    out = {f"judge_{r}": [math.nan] * len(records) for r in rubrics}

    async def run() -> None:
        judge = new_judge()
        try:
            await judge_all(judge)
        finally:
            await judge.client.close()

    async def judge_all(judge: Any) -> None:
        for rubric in rubrics:
            by_tenant: dict[str, list[int]] = {}
            for i, rec in enumerate(records):
                if rubric == "faithfulness" and not is_rag(rec.get("engine")):
                    continue
                by_tenant.setdefault(str(rec.get("tenant") or ""), []).append(i)
            for tenant, idx in sorted(by_tenant.items()):
                items = [
                    {
                        "input": question_of(records[i].get("prompt")),
                        "answer": records[i].get("completion"),
                        "context": list(records[i].get("chunk_texts") or ()),
                    }
                    for i in idx
                ]
                scores = await judge.score(rubric, items, tenant=tenant)
                for i, s in zip(idx, scores, strict=True):
                    out[f"judge_{rubric}"][i] = s

    asyncio.run(run())
    return out
