"""Continuous evaluation: the inference table's new files, scored exactly once.

A run lists the table's files the checkpoint does not hold, and works them off in
passes of at most ``max_rows_per_pass`` records:

1. read each file; failed requests (status >= 400) are *skipped*; the rest are
   validated with Great Expectations (:mod:`.validate`): records that break an
   expectation are *quarantined* (``quarantine/<hour>/<file>``);
2. valid records are sampled (``sample_rate`` by request-id hash, at most
   ``max_samples_per_group`` per model and tenant per run; the others *skipped*);
3. the sampled records of the pass are scored on Ray Data (:class:`.score.Scorer`,
   one encoder per actor, order preserved); as each file's last record comes back,
   the judge scores it (when configured, within the run's and tenant's token
   budgets), its scores file is written and the file is committed
   (:mod:`.checkpoint`: why this is exactly once), and the cumulative metrics are
   PUT to the Pushgateway;
4. after the last pass, drift (:mod:`.drift_step`) compares the current window's
   prompts with the reference window's, per model and tenant.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from monitoring.eval_metrics import EvalState, push_state
from monitoring.inference_table import open_filesystem, sample_key
from monitoring.metrics import TenantLabeler
from pipelines.continuous_eval.checkpoint import Checkpoint
from pipelines.continuous_eval.config import ContinuousEvalConfig
from pipelines.continuous_eval.score import SCORE_METRICS
from pipelines.continuous_eval.tables import (
    ScoredFile,
    list_table_files,
    read_records,
    read_scores,
    write_quarantine,
    write_scores,
)

if TYPE_CHECKING:
    from llmops.config import LLMOpsConfig

__all__ = ["RunSummary", "run_once"]

logger = logging.getLogger("llmops.continuous_eval")

PUSH_EVERY_S = 2.0
#: a test hook: called with (stage, file) at "scored" (scores file written) and "committed"
Hook = Callable[[str, str], None]


@dataclass
class RunSummary:
    files: int = 0
    recovered: int = 0  # scored by a run that crashed before committing them
    records: Counter[str] = field(default_factory=Counter)  # outcome -> count
    judge_tokens: int = 0
    pushed: bool = False
    push_error: str | None = None
    drift: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        r = self.records
        return (
            f"{self.files} files ({self.recovered} recovered), {r['scored']} scored, {r['skipped']} skipped, "
            f"{r['quarantined']} quarantined, {self.judge_tokens} judge tokens in {self.seconds:.1f}s"
        )


@dataclass
class _Pending:
    """A file read in this pass, waiting for its scored records."""

    rel: str
    records: pd.DataFrame  # the sampled records, in order
    skipped: int
    quarantined: int
    scored: list[pd.DataFrame] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return sum(len(s) for s in self.scored) >= len(self.records)


class ContinuousEval:
    """One configured job; :meth:`run` is one ``--once``."""

    def __init__(
        self,
        config: LLMOpsConfig,
        *,
        encoder: Any = None,
        hook: Hook | None = None,
        judge_client: Callable[[], Any] | None = None,
    ) -> None:
        """``encoder``: score in this process with it instead of on Ray Data (tests).
        ``judge_client``: makes the judge's ``openai.AsyncOpenAI``-like client (default: one
        for ``judge.url``, or the platform's gateway, with the key from ``judge.api_key_env``)."""
        self.root = config
        self.config: ContinuousEvalConfig = config.continuous_eval
        table = self.config.table_path or config.services().monitoring.inference_table.path
        if table is None:
            raise ValueError("continuous_eval.table_path is not set and there is no inference table path")
        self.table_fs, self.table_root = open_filesystem(table)
        self.out = Path(self.config.output_dir or Path(config.data_dir) / "eval").resolve()
        self.checkpoint = Checkpoint.load(self.out / "checkpoint.json")
        self.encoder = encoder
        self.hook = hook
        auth = config.auth
        self.tenant = TenantLabeler([k.tenant for k in auth.keys] + [auth.anonymous_tenant])
        self._judge_client = judge_client
        self._pending: list[_Pending] = []
        self._validator_obj: Any = None
        self._last_push = 0.0
        self._push = self.config.push
        self._pushgateway = config.monitoring.pushgateway

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        summary = RunSummary()
        budget, judge = self._judge()
        groups: Counter[tuple[str, str]] = Counter()  # (model, tenant) -> sampled this run
        existing = list_table_files(self.table_fs, self.table_root)
        self.checkpoint.prune(set(existing))
        new = iter([rel for rel in existing if rel not in self.checkpoint.files])
        rel = next(new, None)
        while rel is not None:  # pass by pass: at most max_rows_per_pass records read, then scored
            rows = 0
            while rel is not None and rows < self.config.max_rows_per_pass:
                rows += self._process_file(rel, groups, summary, judge)
                rel = next(new, None)
            self._score_pending(judge, summary)
        if self.config.drift.enabled:
            from pipelines.continuous_eval.drift_step import drift_step

            summary.drift = drift_step(self.out, self.config.drift, self.checkpoint.state, self.tenant)
        if budget is not None:
            self._budget_gauges(budget)
        self.checkpoint.state.set("llmops_eval_last_run_timestamp_seconds", {}, time.time())
        self.checkpoint.save()
        self._push_now(summary, force=True)
        summary.seconds = time.perf_counter() - t0
        return summary

    def _process_file(
        self, rel: str, groups: Counter[tuple[str, str]], summary: RunSummary, judge: Any
    ) -> int:
        """Read, validate and sample one file; returns its records read."""
        summary.files += 1
        existing = read_scores(self.out, rel)
        if existing is not None:  # a crashed run scored it: fold it in, do not score again
            summary.recovered += 1
            self._commit(existing, summary)
            return existing.rows
        frame = read_records(self.table_fs, self.table_root, rel)
        failed_request = frame["status"].fillna(500).astype(int) >= 400 if "status" in frame else None
        skipped = int(failed_request.sum()) if failed_request is not None else 0
        candidates = frame[~failed_request] if failed_request is not None else frame
        candidates = candidates.reset_index(drop=True)
        broken = self._validator().check(candidates)
        bad = [i for i, b in enumerate(broken) if b]
        if bad:
            write_quarantine(self.out, rel, candidates.iloc[bad], [broken[i] for i in bad])
        valid = candidates.drop(index=bad).reset_index(drop=True)
        keep = []
        for i, row in valid.iterrows():
            key = (str(row["model"]), str(row["tenant"]))
            if (
                sample_key(str(row["request_id"])) < self.config.sample_rate
                and groups[key] < self.config.max_samples_per_group
            ):
                groups[key] += 1
                keep.append(i)
        sampled = valid.loc[keep].reset_index(drop=True)
        skipped += len(valid) - len(sampled)
        pending = _Pending(rel, sampled, skipped, len(bad))
        if sampled.empty:
            self._finish(pending, judge, summary)
        else:
            self._pending.append(pending)
        return len(frame)

    def _score_pending(self, judge: Any, summary: RunSummary) -> None:
        """Score the pass' sampled records on Ray Data; finish each file as it completes."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        records = pd.concat([p.records for p in pending], ignore_index=True)
        owner = [k for k, p in enumerate(pending) for _ in range(len(p.records))]
        offset = 0
        for scored in self._scored_batches(records):
            while len(scored):
                k = owner[offset]
                p = pending[k]
                need = len(p.records) - sum(len(s) for s in p.scored)
                take, scored = scored.iloc[:need], scored.iloc[need:]
                p.scored.append(take)
                offset += len(take)
                if p.done:
                    self._finish(p, judge, summary)

    def _scored_batches(self, records: pd.DataFrame) -> Iterator[pd.DataFrame]:
        cfg = self.config
        columns = ["request_id", "prompt", "completion", "engine", "chunk_texts", "completion_tokens"]
        scorer_args = self._scorer_args()
        if self.encoder is not None:  # in process (tests): the same class, no Ray
            from pipelines.continuous_eval.score import Scorer

            scorer = Scorer(cfg.metrics, None, encoder=self.encoder, batch_size=cfg.batch_size)
            for start in range(0, len(records), cfg.batch_size):
                yield scorer(records.iloc[start : start + cfg.batch_size][columns].reset_index(drop=True))
            return
        import ray.data

        from pipelines.continuous_eval.score import Scorer
        from pipelines.ray_env import ensure_ray, quiet_ray_data

        ensure_ray(self.root)
        quiet_ray_data()
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        # max_restarts=0 as in ingestion: a dead actor fails the run (a re-run resumes it), and
        # Ray's default makes the core worker log an error line per actor (ray#53727)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            ds = ray.data.from_pandas(records[columns].reset_index(drop=True)).map_batches(
                Scorer,
                fn_constructor_kwargs=scorer_args,
                batch_size=cfg.batch_size,
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=1,
                max_restarts=0,
            )
        yield from ds.iter_batches(batch_size=cfg.batch_size, batch_format="pandas")

    def _finish(self, p: _Pending, judge: Any, summary: RunSummary) -> None:
        scores = pd.concat(p.scored, ignore_index=True) if p.scored else pd.DataFrame()
        judge_tokens: dict[str, int] = {}
        judge_model = None
        if judge is not None and len(p.records):
            from pipelines.continuous_eval.score import judge_scores

            before = Counter(judge.budget.tenant_spent)
            rubrics = self.config.judge.rubrics if self.config.judge else []
            cols = judge_scores(p.records.to_dict("records"), rubrics, judge.new)
            for name, values in cols.items():
                scores[name] = values
            judge_tokens = {
                t: int(n - before[t]) for t, n in judge.budget.tenant_spent.items() if n > before[t]
            }
            judge_model = judge.model
        written = write_scores(
            self.out, p.rel, p.records, scores, p.skipped, p.quarantined, judge_tokens, judge_model
        )
        if self.hook:
            self.hook("scored", p.rel)
        self._commit(written, summary)

    def _commit(self, f: ScoredFile, summary: RunSummary) -> None:
        """Fold one scored file into the cumulative metrics and the checkpoint, atomically."""
        state = self.checkpoint.state
        fold(state, f, self.tenant)
        summary.records["scored"] += len(f.frame)
        summary.records["skipped"] += f.skipped
        summary.records["quarantined"] += f.quarantined
        summary.judge_tokens += sum(f.judge_tokens.values())
        self.checkpoint.files.add(f.rel)
        state.set("llmops_eval_last_run_timestamp_seconds", {}, time.time())
        self.checkpoint.save()
        if self.hook:
            self.hook("committed", f.rel)
        self._push_now(summary)

    # -- pieces -----------------------------------------------------------------------------
    def _validator(self) -> Any:
        if self._validator_obj is None:  # GX's import and context take seconds: only when needed
            from pipelines.continuous_eval.validate import RecordValidator

            cfg = self.config
            self._validator_obj = RecordValidator(cfg.max_prompt_chars, cfg.max_completion_chars)
        return self._validator_obj

    def _embedding(self) -> Any:
        name = self.config.embedding_model or self.root.embeddings[0].name
        for e in self.root.embeddings:
            if e.name == name:
                return e
        raise ValueError(f'Got "{name}" for continuous_eval.embedding_model; it is not under embeddings')

    def _scorer_args(self) -> dict[str, Any]:
        e = self._embedding()
        return {
            "metrics": list(self.config.metrics),
            "model_path": e.path,
            "device": e.device,
            "backend": e.backend,
            "precision": e.precision,
            "cache_dir": e.cache_dir,
            "batch_size": self.config.batch_size,
        }

    def _judge(self) -> tuple[Any, _JudgeHandle | None]:
        cfg = self.config.judge
        if cfg is None:
            return None, None
        from evals.metrics.judge import TokenBudget

        budget = TokenBudget(cfg.run_budget_tokens, cfg.tenant_budgets, cfg.tenant_budget_tokens)
        client = self._judge_client
        if client is None:
            import openai

            url = cfg.url or f"http://{self.root.gateway.host}:{self.root.gateway.port}/v1"
            key = os.environ.get(cfg.api_key_env) or "none"

            def client() -> Any:
                return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=1)

        return budget, _JudgeHandle(client, budget, cfg.model, cfg.concurrency)

    def _budget_gauges(self, budget: Any) -> None:
        state = self.checkpoint.state
        state.clear("llmops_eval_judge_budget_remaining_tokens")
        run_left = budget.remaining()
        if math.isfinite(run_left):
            state.set("llmops_eval_judge_budget_remaining_tokens", {"kind": "run", "tenant": "all"}, run_left)
        tenants = set(budget.tenant_limits) | set(budget.tenant_spent)
        for t in sorted(tenants):
            left = budget.remaining(t)
            if math.isfinite(left):
                state.set(
                    "llmops_eval_judge_budget_remaining_tokens",
                    {"kind": "tenant", "tenant": self.tenant(t)},
                    left,
                )

    def _push_now(self, summary: RunSummary, force: bool = False) -> None:
        if not self._push or (not force and time.monotonic() - self._last_push < PUSH_EVERY_S):
            return
        self._last_push = time.monotonic()
        try:
            push_state(self.checkpoint.state, self._pushgateway.push_url, self._pushgateway.job)
            summary.pushed, summary.push_error = True, None
        except OSError as exc:  # the next commit pushes the whole state again
            summary.push_error = f"{type(exc).__name__}: {exc}"
            logger.warning("could not push to %s: %s", self._pushgateway.push_url, exc)


class _JudgeHandle:
    """The run's judge: one token budget, a fresh :class:`Judge` (and client) per event loop."""

    def __init__(self, client: Callable[[], Any], budget: Any, model: str, concurrency: int) -> None:
        self.client, self.budget, self.model, self.concurrency = client, budget, model, concurrency

    def new(self) -> Any:
        from evals.metrics.judge import Judge

        return Judge(self.client(), self.model, self.budget, concurrency=self.concurrency)


def fold(state: EvalState, f: ScoredFile, tenant: TenantLabeler) -> None:
    """Add one scored file's counts and scores to the cumulative state."""
    state.inc("llmops_eval_records_total", {"outcome": "scored"}, len(f.frame))
    state.inc("llmops_eval_records_total", {"outcome": "skipped"}, f.skipped)
    state.inc("llmops_eval_records_total", {"outcome": "quarantined"}, f.quarantined)
    for t, n in f.judge_tokens.items():
        state.inc(
            "llmops_eval_judge_tokens_total", {"model": f.judge_model or "unknown", "tenant": tenant(t)}, n
        )
    metrics = [
        m for m in (*SCORE_METRICS, *(c for c in f.frame.columns if c.startswith("judge_"))) if m in f.frame
    ]
    for rec in f.frame.to_dict("records"):
        group = {
            "model": str(rec["model"]),
            "version": str(rec.get("version") or "unknown"),
            "tenant": tenant(rec["tenant"]),
        }
        state.inc("llmops_eval_samples_total", group)
        rag = bool(rec.get("rag"))
        for m in metrics:
            if m in ("context_support", "judge_faithfulness") and not rag:
                continue  # not applicable: neither a score nor unmeasured
            value = rec[m]
            labels = {"metric": m, **group}
            if value is None or not math.isfinite(float(value)):
                state.inc("llmops_eval_unmeasured_total", labels)
            else:
                state.observe("llmops_eval_score", labels, float(value))


def run_once(config: LLMOpsConfig, **kw: Any) -> RunSummary:
    """One pass over everything new in the inference table (``--once``)."""
    return ContinuousEval(config, **kw).run()
