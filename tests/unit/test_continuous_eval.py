"""Continuous evaluation in process: validation, sampling, scores, exactly-once commits, judge, drift."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from llmops.config import LLMOpsConfig, validate_config
from monitoring.inference_table import InferenceTable, InferenceTableConfig
from pipelines.continuous_eval.checkpoint import Checkpoint
from pipelines.continuous_eval.pipeline import ContinuousEval, run_once
from pipelines.continuous_eval.score import question_of

NOW = time.time()


def cfg(tmp_path: Path, **ce: Any) -> LLMOpsConfig:
    return validate_config(
        {
            "data_dir": str(tmp_path / "data"),
            "auth": {"enabled": False},
            "monitoring": {"inference_table": {"path": str(tmp_path / "table")}},
            "continuous_eval": {"push": False, "drift": {"enabled": False}, **ce},
        },
        "test",
    )


def rec(rid: str, **kw: Any) -> dict[str, Any]:
    base = {
        "request_id": rid,
        "ts": NOW - 60,
        "tenant": "local",
        "model": "extractive",
        "version": "v1",
        "engine": "extractive",
        "route": "/v1/chat/completions",
        "status": 200,
        "stream": False,
        "prompt": "system: be brief\nuser: Who ruled Normandy in 911?",
        "completion": "Rollo ruled Normandy from 911.",
        "latency_ms": 10.0,
        "prompt_tokens": 12,
        "completion_tokens": 7,
    }
    return {**base, **kw}


def unmeasured(value: float | None) -> bool:
    """NaN scores are stored as Parquet nulls."""
    return value is None or math.isnan(value)


def write_files(tmp_path: Path, files: list[list[dict[str, Any]]]) -> None:
    table = InferenceTable(InferenceTableConfig(path=str(tmp_path / "table")))
    try:
        for rows in files:
            table.flush_rows(rows)
            time.sleep(0.002)  # distinct, ordered file names
    finally:
        table.close()


def scores(tmp_path: Path) -> list[dict[str, Any]]:
    root = tmp_path / "data" / "eval" / "scores"
    return (
        ds.dataset(str(root), format="parquet", partitioning="hive")
        .to_table(columns=["request_id", "answer_relevance", "context_support", "refusal", "length"])
        .to_pylist()
    )


def mixed_files() -> list[list[dict[str, Any]]]:
    rag = {
        "model": "rag-docs",
        "engine": "rag:extractive",
        "chunk_ids": ["c1"],
        "chunk_texts": ["Rollo was the first ruler of Normandy, from 911."],
    }
    return [
        [rec(f"a{i}") for i in range(6)] + [rec("a-fail", status=500, completion=None)],
        [rec(f"b{i}", **rag) for i in range(5)]
        + [rec("b-blank", prompt="   "), rec("b-nochunks", **{**rag, "chunk_ids": [], "chunk_texts": []})],
        [rec(f"c{i}", completion="I'm sorry, but I can't help with that.") for i in range(4)]
        + [rec("c-neg", latency_ms=-1.0)],
    ]


def test_question_of_takes_the_last_user_turn() -> None:
    assert (
        question_of("system: ctx\nuser: first\nassistant: ok\nuser: second\nline two") == "second\nline two"
    )
    assert question_of("plain completion prompt") == "plain completion prompt"
    assert question_of(None) == ""


def test_scores_each_valid_record_and_quarantines_the_rest(tmp_path: Path, openvino_f32: Any) -> None:
    write_files(tmp_path, mixed_files())
    s = run_once(cfg(tmp_path), encoder=openvino_f32)
    assert s.files == 3 and s.recovered == 0
    assert dict(s.records) == {"scored": 16, "skipped": 1, "quarantined": 2}
    rows = {r["request_id"]: r for r in scores(tmp_path)}
    assert len(rows) == 16 and "a-fail" not in rows and "b-blank" not in rows and "c-neg" not in rows
    assert rows["a0"]["answer_relevance"] > 0.3 and rows["a0"]["refusal"] == 0.0
    assert rows["c0"]["refusal"] == 1.0 and rows["a0"]["length"] == 7.0
    assert rows["b0"]["context_support"] > 0.5
    assert unmeasured(rows["b-nochunks"]["context_support"])  # a RAG answer without context
    assert unmeasured(rows["a0"]["context_support"])  # not a RAG model: not applicable
    q = ds.dataset(str(tmp_path / "data" / "eval" / "quarantine"), format="parquet", partitioning="hive")
    failed = {r["request_id"]: r["failed"] for r in q.to_table(columns=["request_id", "failed"]).to_pylist()}
    assert failed == {
        "b-blank": ["expect_column_values_to_not_be_null(prompt)"],
        "c-neg": ["expect_column_values_to_be_between(latency_ms)"],
    }
    state = Checkpoint.load(tmp_path / "data" / "eval" / "checkpoint.json").state
    group = {"model": "rag-docs", "version": "v1", "tenant": "local"}
    assert state.counter("llmops_eval_samples_total") == 16
    assert state.counter("llmops_eval_unmeasured_total", {"metric": "context_support", **group}) == 1
    # not applicable to a non-RAG model: neither scored nor unmeasured
    other = {"metric": "context_support", "model": "extractive", "version": "v1", "tenant": "local"}
    assert state.counter("llmops_eval_unmeasured_total", other) == 0
    assert state.histograms["llmops_eval_score"]
    assert state.counter("llmops_eval_records_total", {"outcome": "quarantined"}) == 2


def test_a_rerun_scores_only_new_files(tmp_path: Path, openvino_f32: Any) -> None:
    write_files(tmp_path, mixed_files()[:1])
    config = cfg(tmp_path)
    assert run_once(config, encoder=openvino_f32).records["scored"] == 6
    assert run_once(config, encoder=openvino_f32).records["scored"] == 0
    write_files(tmp_path, [[rec("new1"), rec("new2")]])
    again = run_once(config, encoder=openvino_f32)
    assert again.files == 1 and again.records["scored"] == 2
    assert sorted(r["request_id"] for r in scores(tmp_path)) == sorted(
        [f"a{i}" for i in range(6)] + ["new1", "new2"]
    )


class Crash(Exception):
    pass


@pytest.mark.parametrize("stage", ["scored", "committed"])
def test_a_crash_at_any_commit_point_neither_loses_nor_repeats(
    tmp_path: Path, openvino_f32: Any, stage: str
) -> None:
    files = mixed_files()
    write_files(tmp_path, files)
    calls: list[str] = []

    def hook(at: str, rel: str) -> None:
        calls.append(at)
        if at == stage and calls.count(stage) == 2:
            raise Crash(rel)

    config = cfg(tmp_path)
    with pytest.raises(Crash):
        run_once(config, encoder=openvino_f32, hook=hook)
    rerun = run_once(config, encoder=openvino_f32)
    # crashed after writing the second file's scores but before its commit: folded in, not re-scored
    assert rerun.recovered == (1 if stage == "scored" else 0)
    ids = [r["request_id"] for r in scores(tmp_path)]
    assert len(ids) == len(set(ids)) == 16
    state = Checkpoint.load(tmp_path / "data" / "eval" / "checkpoint.json").state
    assert state.counter("llmops_eval_samples_total") == 16
    assert state.counter("llmops_eval_records_total", {"outcome": "skipped"}) == 1
    assert state.counter("llmops_eval_records_total", {"outcome": "quarantined"}) == 2
    total = sum(h["count"] for h in state.histograms["llmops_eval_score"].values())
    clean = tmp_path / "clean"
    write_files(clean, files)
    run_once(cfg(clean), encoder=openvino_f32)
    ref = Checkpoint.load(clean / "data" / "eval" / "checkpoint.json").state
    assert total == sum(h["count"] for h in ref.histograms["llmops_eval_score"].values())
    assert state.counters == ref.counters


def test_sampling_caps_each_model_and_tenant(tmp_path: Path, openvino_f32: Any) -> None:
    write_files(
        tmp_path,
        [[rec(f"x{i}") for i in range(8)] + [rec(f"y{i}", tenant="acme") for i in range(8)]],
    )
    s = run_once(cfg(tmp_path, max_samples_per_group=3), encoder=openvino_f32)
    assert s.records["scored"] == 6 and s.records["skipped"] == 10


class FakeJudgeClient:
    """Stands in for openai.AsyncOpenAI: answers "4", reports 30 tokens per call."""

    calls = 0

    def __init__(self) -> None:
        async def create(**kw: Any) -> Any:
            FakeJudgeClient.calls += 1
            assert kw["temperature"] == 0
            return SimpleNamespace(
                usage=SimpleNamespace(prompt_tokens=26, completion_tokens=4),
                choices=[SimpleNamespace(message=SimpleNamespace(content="4"))],
            )

        self.chat = SimpleNamespace(completions=SimpleNamespace(create=create))

    async def close(self) -> None:
        pass


def test_judge_scores_within_each_tenants_budget(tmp_path: Path, openvino_f32: Any) -> None:
    write_files(
        tmp_path, [[rec(f"j{i}") for i in range(10)] + [rec(f"k{i}", tenant="acme") for i in range(10)]]
    )
    FakeJudgeClient.calls = 0
    judge = {"model": "judge-m", "run_budget_tokens": 10_000, "tenant_budget_tokens": 200, "concurrency": 2}
    s = run_once(cfg(tmp_path, judge=judge), encoder=openvino_f32, judge_client=FakeJudgeClient)
    table = pq.read_table(next((tmp_path / "data" / "eval" / "scores").rglob("*.parquet"))).to_pylist()
    judged = [r for r in table if not unmeasured(r["judge_relevance"])]
    assert judged and all(r["judge_relevance"] == 0.75 for r in judged)
    per_tenant = {t: sum(1 for r in judged if r["tenant"] == t) for t in ("local", "acme")}
    # a call reserves its worst case (prompt chars / 2 + 8): the 200-token budget admits a few per tenant
    assert 0 < per_tenant["local"] < 10 and 0 < per_tenant["acme"] < 10
    assert s.judge_tokens == 30 * FakeJudgeClient.calls <= 2 * 200
    state = Checkpoint.load(tmp_path / "data" / "eval" / "checkpoint.json").state
    assert state.counter("llmops_eval_judge_tokens_total") == s.judge_tokens
    labels = {"metric": "judge_relevance", "model": "extractive", "version": "v1", "tenant": "local"}
    assert state.counter("llmops_eval_unmeasured_total", labels) == 10 - per_tenant["local"]
    left = state.gauges["llmops_eval_judge_budget_remaining_tokens"]
    assert min(left.values()) >= 0


def test_drift_flags_a_shifted_window_and_says_insufficient_for_a_small_one(
    tmp_path: Path, openvino_f32: Any
) -> None:
    qa = [f"user: What year did event number {i} of the Norman history happen?" for i in range(40)]
    code = [f"user: Write a Python function that sorts list number {i} with quicksort." for i in range(40)]
    old, new = NOW - 3 * 3600, NOW - 600
    files = [
        [rec(f"r{i}", ts=old, prompt=p) for i, p in enumerate(qa[:20])],
        [rec(f"c{i}", ts=new, prompt=p) for i, p in enumerate(code[:20])],
        [rec(f"s{i}", ts=new, tenant="acme", prompt=p) for i, p in enumerate(qa[20:25])],
    ]
    write_files(tmp_path, files)
    drift = {
        "enabled": True,
        "current_hours": 1,
        "reference_hours": 24,
        "min_samples": 10,
        "permutations": 100,
    }
    config = cfg(tmp_path, drift=drift)
    config.auth.anonymous_tenant = "local"
    s = run_once(config, encoder=openvino_f32)
    by_tenant = {g["tenant"]: g for g in s.drift}
    assert by_tenant["local"]["status"] == "drift" and by_tenant["local"]["p_value"] < 0.05
    assert by_tenant["acme"]["status"] == "insufficient_data"
    gauges = Checkpoint.load(tmp_path / "data" / "eval" / "checkpoint.json").state.gauges
    detected = gauges["llmops_eval_drift_detected"]
    assert list(detected.values()) == [1.0] and all("tenant=local" in k for k in detected)
    assert any("tenant=other" in k for k in gauges["llmops_eval_drift_samples"])  # acme is not a known tenant
    assert (tmp_path / "data" / "eval" / "drift.json").is_file()


def test_job_refuses_an_unknown_embedding_model(tmp_path: Path) -> None:
    job = ContinuousEval(cfg(tmp_path, embedding_model="nope"))
    with pytest.raises(ValueError, match=r"continuous_eval\.embedding_model"):
        job._scorer_args()


def test_a_backlog_is_worked_off_pass_by_pass_with_the_same_result(tmp_path: Path, openvino_f32: Any) -> None:
    write_files(tmp_path, mixed_files())
    s = run_once(cfg(tmp_path, max_rows_per_pass=5), encoder=openvino_f32)  # one file per pass
    assert s.files == 3 and dict(s.records) == {"scored": 16, "skipped": 1, "quarantined": 2}
    ids = [r["request_id"] for r in scores(tmp_path)]
    assert len(ids) == len(set(ids)) == 16
