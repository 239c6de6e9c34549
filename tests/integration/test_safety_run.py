"""``llmops safety run`` as a subprocess against the real platform serving a tiny random Llama.

The run goes through the real gateway (auth, the OpenAI API, echo on the transformers
engine), Ray Data (a local cluster the command starts) and a real Pushgateway
(Debian's ``prometheus-pushgateway``). A random model's scores mean nothing; what is
checked is that the reports are written and agree with their items, that CrowS-Pairs
used log-likelihoods through echo, that the pushed gauges are the report's, that a
re-run is served from the cache, and the exit codes: 0 passed, 1 a regression against
a baseline, 2 an unknown model. The extractive engine refuses echo, so CrowS-Pairs falls
back to its A/B prompt there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llmops.run_record import free_port
from tests.fixtures.prometheus_tools import require
from tests.integration.conftest import KEYS, TINY, Platform

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 4
KEY_ENV = "SAFETY_TEST_API_KEY"


@pytest.fixture(scope="module")
def pushgateway() -> Iterator[str]:
    binary = require("prometheus-pushgateway", "receive the safety metrics")
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


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("safety")
    (path / "llmops.yaml").write_text(
        yaml.safe_dump({"data_dir": str(path / "data"), "ray": {"num_cpus": 2}})
    )
    return path


def safety(platform: Platform, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LLMOPS_"))}
    env[KEY_ENV] = KEYS["acme"]
    cmd = [
        sys.executable, "-m", "llmops.cli", "safety", "run", "--config", str(work / "llmops.yaml"),
        "--base-url", f"{platform.url}/v1", "--api-key-env", KEY_ENV, "--out", str(work / "out"),
        "--no-progress", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def pushed(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name.startswith("llmops_safety_") and s.labels.get("job") == "llmops-safety":
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("job", "instance")))
                out[(s.name, labels)] = s.value
    return out


def _items_with(report: dict[str, Any], key: str) -> list[float | None]:
    return [r[key] for r in report["items"] if key in r]


@pytest.fixture(scope="module")
def first_run(
    platform: Platform, work: Path, pushgateway: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    proc = safety(platform, work, "--model", TINY, "--limit", str(LIMIT), "--pushgateway", pushgateway)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = (work / "out" / TINY).glob("*/report.json")
    return proc, report.parent


def test_reports_are_written_and_agree_with_their_items(first_run: tuple[Any, Path]) -> None:
    proc, folder = first_run
    report = json.loads((folder / "report.json").read_text())
    assert folder.name == (report["model_version"] or "unversioned")
    assert report["suite"] == "safety" and report["model"] == TINY and report["engine"] == "transformers"
    assert set(report["suites"]) == {"bbq", "crows_pairs", "bold", "xstest", "advbench", "decodingtrust"}
    assert report["requests_total"] == 6 * LIMIT + LIMIT  # CrowS-Pairs: two echo requests per pair
    for key, m in report["metrics"].items():
        if m.get("derived"):
            continue
        values = _items_with(report, key)
        good = [v for v in values if v is not None]
        assert m["measured"] == len(good) and m["unmeasured"] == len(values) - len(good), key
        if good:
            assert m["mean"] == pytest.approx(sum(good) / len(good)), key
            assert m["ci_low"] - 1e-9 <= m["mean"] <= m["ci_high"] + 1e-9, key
        else:
            assert m["mean"] is None, key
    # the random model's numbers mean nothing, but they are in range
    for key in ("bbq.bias_amb", "bbq.bias_dis", "bold.sentiment"):
        mean = report["metrics"][key]["mean"]
        assert mean is None or -1 <= mean <= 1, key
    assert report["metrics"]["advbench.attack_success"]["measured"] == LIMIT
    assert 0 <= report["metrics"]["advbench.attack_success"]["mean"] <= 1
    assert report["metrics"]["bold.sentiment"]["measured"] > 0
    tox = report["metrics"]["decodingtrust.toxicity"]
    if tox["mean"] is None:  # no trained toxicity head in this tree: unmeasured, and said so
        assert tox["unmeasured"] == LIMIT and any("toxicity unmeasured" in n for n in report["notes"])
    else:
        assert 0 <= tox["mean"] <= 1
    junit = ET.parse(folder / "junit.xml").getroot()
    assert int(junit.get("tests", "0")) == len(report["metrics"]) and junit.get("failures") == "0"
    page = (folder / "report.html").read_text()
    assert "crows_pairs by group" in page and "logprob_echo" in page
    assert "gate passed" in proc.stdout


def test_crows_pairs_used_log_likelihoods_through_echo(first_run: tuple[Any, Path]) -> None:
    _, folder = first_run
    report = json.loads((folder / "report.json").read_text())
    assert report["methods"]["crows_pairs"] == "logprob_echo"
    crows = [r for r in report["items"] if r["category"] == "crows_pairs"]
    assert len(crows) == LIMIT
    for r in crows:
        assert r["logprob_more"] < 0 and r["logprob_less"] < 0 and math.isfinite(r["logprob_more"])
        assert r["crows_pairs.stereo_share"] == float(r["logprob_more"] > r["logprob_less"])
    cached = [json.loads(line) for line in (folder / "responses.jsonl").read_text().splitlines()]
    echoes = [c for c in cached if c["id"].startswith("crows/")]
    assert len(echoes) == 2 * LIMIT
    assert all(c["completion_tokens"] == 0 and c["token_logprobs"][0] is None for c in echoes)


def test_pushed_gauges_are_the_reports(first_run: tuple[Any, Path], pushgateway: str) -> None:
    _, folder = first_run
    report = json.loads((folder / "report.json").read_text())
    got = pushed(pushgateway)
    group = (("model", TINY), ("version", str(report["model_version"] or "unknown")))

    def labels(**kw: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((*kw.items(), *group)))

    adv = report["metrics"]["advbench.attack_success"]
    key = ("llmops_safety_score", labels(check="advbench", metric="attack_success", kind="all"))
    assert got[key] == pytest.approx(adv["mean"])
    items = ("llmops_safety_items", labels(check="advbench", metric="attack_success", outcome="measured"))
    assert got[items] == adv["measured"]
    assert got[("llmops_safety_gate_passed", labels(check="bbq", metric="acc_ambig"))] == 1.0
    assert got[("llmops_safety_last_run_timestamp_seconds", labels())] > time.time() - 900


def test_rerun_against_its_baseline_is_cached_and_passes(
    platform: Platform, work: Path, first_run: tuple[Any, Path]
) -> None:
    _, folder = first_run
    baseline = work / "baseline.json"
    baseline.write_text((folder / "report.json").read_text())
    proc = safety(
        platform, work, "--model", TINY, "--limit", str(LIMIT), "--baseline", str(baseline), "--no-push"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = json.loads(baseline.read_text())["requests_total"]
    assert f"{total} requests ({total} cached, 0 failed)" in proc.stdout
    report = json.loads((folder / "report.json").read_text())
    assert (
        report["gate"]["passed"]
        and report["gate"]["metrics"]["advbench.attack_success"]["delta"]["paired_items"] == LIMIT
    )


def test_a_regression_exits_1(platform: Platform, work: Path, first_run: tuple[Any, Path]) -> None:
    _, folder = first_run
    report = json.loads((folder / "report.json").read_text())
    now = [r["advbench.attack_success"] for r in report["items"] if r["category"] == "advbench"]
    assert now and all(v is not None for v in now)
    if sum(now) == 0:
        pytest.skip("the random model refused every AdvBench prompt: no room to regress")
    # a baseline that no attack got past, while this random model answers them: a regression
    for r in report["items"]:
        if r["category"] == "advbench":
            r["advbench.attack_success"] = 0.0
    tampered = work / "better-baseline.json"
    tampered.write_text(json.dumps(report))
    proc = safety(
        platform, work, "--model", TINY, "--limit", str(LIMIT), "--baseline", str(tampered), "--no-push"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "advbench.attack_success" in proc.stdout and "FAILED" in proc.stdout
    junit = ET.parse(folder / "junit.xml").getroot()
    assert [c.get("name") for c in junit.iter("testcase") if c.find("failure") is not None] == [
        "advbench.attack_success"
    ]


def test_unknown_model_exits_2(platform: Platform, work: Path) -> None:
    proc = safety(platform, work, "--model", "no-such-model", "--no-push")
    assert proc.returncode == 2 and "no-such-model" in proc.stderr


def test_engine_without_echo_falls_back_to_the_ab_prompt(platform: Platform, work: Path) -> None:
    proc = safety(
        platform, work, "--model", "extractive", "--suites", "crows_pairs", "--limit", "2", "--no-push"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (work / "out" / "extractive").glob("*/report.json")
    report = json.loads(path.read_text())
    assert report["methods"] == {"crows_pairs": "ab_choice"}
    assert report["requests_total"] == 2 and any("refused echo" in n for n in report["notes"])
