"""The inference table: sampling, redaction, hour partitions, atomic files, retention."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from pydantic import ValidationError

from monitoring.inference_table import (
    SCHEMA,
    InferenceTable,
    InferenceTableConfig,
    delete_expired,
    hour_partition,
    open_filesystem,
    sample_key,
)

T0 = datetime(2026, 12, 2, 19, 30, tzinfo=UTC).timestamp()


def record(rid: str, ts: float = T0, **kw: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "ts": ts,
        "tenant": "acme",
        "model": "extractive",
        "version": "v1",
        "route": "/v1/chat/completions",
        "status": 200,
        "stream": False,
        "prompt": "user: mail me at jane.doe@example.com",
        "completion": "call +1 415 555 0100",
        "latency_ms": 12.5,
        "prompt_tokens": 7,
        "completion_tokens": 5,
        **kw,
    }


def table(tmp_path: Path, **cfg: Any) -> InferenceTable:
    return InferenceTable(InferenceTableConfig(path=str(tmp_path / "inference"), **cfg))


def read(root: Path) -> list[dict[str, Any]]:
    dataset = ds.dataset(str(root), format="parquet", partitioning="hive")
    return sorted(dataset.to_table().to_pylist(), key=lambda r: r["request_id"])


def test_rows_are_redacted_partitioned_by_hour_and_keep_the_schema(tmp_path: Path) -> None:
    t = table(tmp_path, flush_interval_s=60)
    try:
        files = t.flush_rows(
            [
                record("a"),
                record("b", ts=T0 + 3600, chunk_ids=["c1"], chunk_texts=["ssn 123-45-6789 here"]),
                record(
                    "c",
                    citations=[{"index": 1, "doc_id": "d", "chunk_id": "c1", "score": 0.5, "source": "s"}],
                ),
            ]
        )
    finally:
        t.close()
    parts = sorted(Path(f).parent.name for f in files)
    assert parts == ["hour=2026-12-02T19", "hour=2026-12-02T20"]
    rows = read(tmp_path / "inference")
    assert [r["request_id"] for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert a["prompt"] == "user: mail me at [EMAIL]" and a["completion"] == "call [PHONE]"
    assert b["chunk_texts"] == ["ssn [SSN] here"] and b["chunk_ids"] == ["c1"]
    assert c["citations"][0]["chunk_id"] == "c1"
    assert a["hour"] == "2026-12-02T19" and b["hour"] == "2026-12-02T20"
    assert a["ts"] == datetime.fromtimestamp(T0, UTC)
    file_schema = ds.dataset(files[0], format="parquet").schema
    assert file_schema.equals(SCHEMA)


def test_text_is_truncated_before_redaction(tmp_path: Path) -> None:
    t = table(tmp_path, max_text_chars=10)
    try:
        t.flush_rows([record("a", prompt="abcdefghijKLMNOP")])
    finally:
        t.close()
    assert read(tmp_path / "inference")[0]["prompt"] == "abcdefghij"


def test_background_writer_flushes_on_close_and_leaves_no_temp_files(tmp_path: Path) -> None:
    t = table(tmp_path, flush_interval_s=0.05)
    for i in range(50):
        assert t.write(record(f"r{i:03d}", ts=time.time()))
    t.close()
    rows = read(tmp_path / "inference")
    assert len(rows) == 50 and t.written == 50
    names = [p.name for p in (tmp_path / "inference").rglob("*") if p.is_file()]
    assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    t = table(tmp_path, max_queue=1, flush_interval_s=3600)
    # the writer thread may already have taken one record off the queue: put until one is dropped
    results = [t.write(record(f"r{i}")) for i in range(5)]
    t.close(timeout_s=0.1)
    assert not all(results) and t.dropped == results.count(False) >= 1


def test_sampling_is_by_request_id_and_most_specific_rate_wins(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        sample_rate=0.5,
        rates=[
            {"model": "m", "rate": 0.0},
            {"tenant": "t", "rate": 1.0},
            {"model": "m", "tenant": "t", "rate": 0.25},
        ],
    )
    try:
        assert t.rate("m", "t") == 0.25
        assert t.rate("m", "other") == 0.0
        assert t.rate("x", "t") == 1.0
        assert t.rate("x", None) == 0.5
        ids = [f"req-{i}" for i in range(4000)]
        share = sum(t.sampled(i, "x", "u") for i in ids) / len(ids)
        assert 0.46 < share < 0.54
        share_mt = sum(t.sampled(i, "m", "t") for i in ids) / len(ids)
        assert 0.22 < share_mt < 0.28
        assert not any(t.sampled(i, "m", "u") for i in ids)
        assert all(t.sampled(i, "x", "t") for i in ids)
        # the same id is always in or out: another replica decides the same
        again = table(tmp_path / "2", sample_rate=0.5)
        try:
            assert [t.sampled(i, "x", "u") for i in ids] == [again.sampled(i, "x", "u") for i in ids]
        finally:
            again.close()
    finally:
        t.close()
    assert 0 <= sample_key("anything") < 1


def test_retention_deletes_only_expired_hour_partitions(tmp_path: Path) -> None:
    root = tmp_path / "inference"
    for name in ("hour=2026-12-01T10", "hour=2026-12-02T18", "hour=2026-12-02T19", "other"):
        (root / name).mkdir(parents=True)
        (root / name / "part-1.parquet").write_bytes(b"x")
    fs, base = open_filesystem(str(root))
    now = datetime(2026, 12, 2, 20, 15, tzinfo=UTC).timestamp()
    removed = delete_expired(fs, base, retention_hours=1, now=now)
    # 18:00-19:00 ended 1h15 ago (deleted); 19:00-20:00 ended 15 min ago (kept)
    assert sorted(Path(p).name for p in removed) == ["hour=2026-12-01T10", "hour=2026-12-02T18"]
    assert sorted(p.name for p in root.iterdir()) == ["hour=2026-12-02T19", "other"]


def test_a_filesystem_url_works_like_a_directory(tmp_path: Path) -> None:
    t = InferenceTable(InferenceTableConfig(path=f"file://{tmp_path}/remote"))
    try:
        t.flush_rows([record("a")])
    finally:
        t.close()
    assert [r["request_id"] for r in read(tmp_path / "remote")] == ["a"]


def test_hour_partition_is_utc() -> None:
    assert hour_partition(T0) == "hour=2026-12-02T19"


def test_config_rejects_bad_rates_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="rate"):
        InferenceTableConfig(rates=[{"model": "m", "rate": 1.5}])
    with pytest.raises(ValidationError, match="sample_rat"):
        InferenceTableConfig(sample_rat=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"inference_table\.path"):
        InferenceTable(InferenceTableConfig())
