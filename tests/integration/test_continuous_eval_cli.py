"""The real ``llmops pipeline continuous-eval`` on Ray Data: killed midway, re-run, exactly once.

A real Pushgateway (Debian's ``prometheus-pushgateway``) receives the metrics; the
process is SIGKILLed (its whole process group, Ray's processes included) after a
few files were committed, then run again to the end. Every record must be scored
exactly once: in the scores table and in the pushed counters.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as ds
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llmops.run_record import free_port
from monitoring.inference_table import InferenceTable, InferenceTableConfig
from tests.fixtures.prometheus_tools import require

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FILES, PER_FILE = 24, 25


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    binary = require("prometheus-pushgateway", "receive the continuous-eval metrics")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def questions() -> list[str]:
    with gzip.open(ROOT / "evals" / "suites" / "data" / "qa.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(FILES * PER_FILE), f, strict=False)]
    return [str(r["question"]) for r in rows]


def write_table(path: Path) -> set[str]:
    now, ids = time.time(), set()
    table = InferenceTable(InferenceTableConfig(path=str(path)))
    qs = questions()
    try:
        for f in range(FILES):
            rows = []
            for i in range(PER_FILE):
                rid = f"req-{f:02d}-{i:02d}"
                ids.add(rid)
                q = qs[f * PER_FILE + i]
                rows.append(
                    {
                        "request_id": rid,
                        "ts": now - 120 + f,
                        "tenant": "local",
                        "model": "extractive",
                        "version": "v1",
                        "engine": "extractive",
                        "route": "/v1/chat/completions",
                        "status": 200,
                        "prompt": f"user: {q}",
                        "completion": f"The answer to '{q[:40]}' is in the passage.",
                        "latency_ms": 5.0 + i,
                        "prompt_tokens": 12,
                        "completion_tokens": 9,
                    }
                )
            table.flush_rows(rows)
            time.sleep(0.002)
    finally:
        table.close()
    return ids


def run_cli(config: Path, *args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LLMOPS_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "llmops.cli", "pipeline", "continuous-eval", "--config", str(config), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: killed as a whole, Ray included
        **kw,
    )


def pushed(url: str) -> dict[str, float]:
    """Sample name{labels} -> value of the job's pushed series."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name.startswith("llmops_eval_") and s.labels.get("job") == "llmops-continuous-eval":
                labels = ",".join(
                    f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("job", "instance")
                )
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_killed_midway_and_rerun_scores_every_record_exactly_once(tmp_path: Path, pushgateway: str) -> None:
    ids = write_table(tmp_path / "table")
    port = int(pushgateway.rsplit(":", 1)[1])
    config = tmp_path / "llmops.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "monitoring": {
                    "inference_table": {"path": str(tmp_path / "table")},
                    "pushgateway": {"port": port},
                },
                "continuous_eval": {"batch_size": 8, "drift": {"enabled": False}},
                "ray": {"num_cpus": 2},
            }
        )
    )
    checkpoint = tmp_path / "data" / "eval" / "checkpoint.json"
    first = run_cli(config, "--once")
    committed = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if checkpoint.exists():
            try:
                committed = len(json.loads(checkpoint.read_text())["files"])
            except ValueError:
                committed = 0  # never torn (atomic rename); a read racing the rename sees the old file
            if committed >= 3:
                os.killpg(first.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    first.wait(timeout=60)
    out = first.stdout.read() if first.stdout else ""
    assert first.returncode == -signal.SIGKILL, f"the job ended before it could be killed midway: {out}"
    assert 3 <= committed < FILES
    done = json.loads(checkpoint.read_text())
    assert len(done["files"]) < FILES, "killed midway: some files must be left"

    second = run_cli(config, "--once", "--json", str(tmp_path / "run.json"))
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["pushed"] is True and summary["files"] == FILES - len(done["files"])
    scored = ds.dataset(str(tmp_path / "data" / "eval" / "scores"), format="parquet", partitioning="hive")
    got = scored.to_table(columns=["request_id", "answer_relevance"]).to_pylist()
    got_ids = [r["request_id"] for r in got]
    assert len(got_ids) == len(set(got_ids)), "a record was scored twice"
    assert set(got_ids) == ids, "a record was skipped"
    assert all(r["answer_relevance"] is not None for r in got)
    metrics = pushed(pushgateway)
    group = "model=extractive,tenant=local,version=v1"
    assert metrics[f"llmops_eval_samples_total{{{group}}}"] == len(ids)
    assert metrics["llmops_eval_records_total{outcome=scored}"] == len(ids)
    assert metrics[f"llmops_eval_score_count{{metric=answer_relevance,{group}}}"] == len(ids)
    assert metrics["llmops_eval_last_run_timestamp_seconds{}"] > time.time() - 600

    # nothing new: a third run scores nothing and pushes the same totals
    third = run_cli(config, "--once")
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0, out
    assert "0 files" in out
    assert pushed(pushgateway)[f"llmops_eval_samples_total{{{group}}}"] == len(ids)
