"""Drift detection (evals/drift.py) and `llmops eval drift`.

Hand-checkable cases first; then the goal on shipped data, embedded with the real
bundled MiniLM: SQuAD questions (the qa suite) are the in-domain prompts, passages
of three sentences of the REALSumm news articles the out-of-domain ones. Over fixed, seeded trials of
1,000 vs 1,000 prompts, a 10 % news mix-in is detected in >= 95 % of trials and
same-distribution splits raise a false alarm in <= 5 %.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evals.datasets import load_realsumm
from evals.drift import EmbeddingDrift, domain_auc, drift_report, embedding_drift, psi, scalar_drift

pytestmark = pytest.mark.unit
LLMOPS = str(Path(sys.executable).parent / "llmops")  # the installed console script
QA = Path(__file__).resolve().parents[2] / "evals" / "suites" / "data" / "qa.jsonl.gz"
TRIALS = 20
N = 1000  # prompts a window


def _gauss(rng: np.random.Generator, n: int, d: int = 16, shift: float = 0.0) -> np.ndarray:
    x = rng.standard_normal((n, d))
    x[:, 0] += shift
    return x


# --- hand-checkable ---------------------------------------------------------------------


def test_identical_samples_give_zero_mmd_unit_cosine_and_no_drift() -> None:
    x = _gauss(np.random.default_rng(1), 200)
    d = embedding_drift(x, x.copy())
    assert d.status == "no_drift"
    assert abs(d.mmd2) < 0.02  # unbiased estimate of 0: tiny, may be just below it
    assert d.p_value > 0.5
    assert d.centroid_cosine == pytest.approx(1.0, abs=1e-12)
    assert d.n_reference == d.n_current == 200


def test_same_distribution_is_not_drift_and_shifted_gaussians_are() -> None:
    rng = np.random.default_rng(2)
    same = embedding_drift(_gauss(rng, 300), _gauss(rng, 300), seed=3)
    assert same.status == "no_drift" and same.p_value >= 0.05
    assert abs(same.domain_auc - 0.5) < 0.1
    shifted = embedding_drift(_gauss(rng, 300), _gauss(rng, 300, shift=1.0), seed=3)
    assert shifted.status == "drift"
    assert shifted.p_value == pytest.approx(1 / 201)  # no permutation reaches the observed MMD²
    assert shifted.mmd2 > 10 * abs(same.mmd2)
    assert shifted.domain_auc > 0.7  # a 1-sigma mean shift: AUC = Phi(1/sqrt 2) = 0.76


def test_domain_auc_is_one_for_separable_and_half_for_swapped_labels() -> None:
    rng = np.random.default_rng(4)
    a, b = _gauss(rng, 100, shift=-10.0), _gauss(rng, 100, shift=10.0)
    assert domain_auc(a, b) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 5 rows"):
        domain_auc(a[:3], b)


def test_subsampling_is_seeded_and_counts_the_whole_windows() -> None:
    rng = np.random.default_rng(5)
    x, y = _gauss(rng, 500), _gauss(rng, 400)
    one = embedding_drift(x, y, max_points=150, seed=7)
    assert one == embedding_drift(x, y, max_points=150, seed=7)
    assert (one.n_reference, one.n_current) == (500, 400)
    assert one.permutations == 200


def test_below_min_samples_is_insufficient_data_never_no_drift() -> None:
    rng = np.random.default_rng(6)
    d = embedding_drift(_gauss(rng, 99), _gauss(rng, 500, shift=5.0))
    assert d.status == "insufficient_data"
    assert (d.n_reference, d.n_current) == (99, 500)
    for v in (d.mmd2, d.p_value, d.domain_auc, d.centroid_cosine):
        assert math.isnan(v)
    empty = embedding_drift(np.zeros((0, 16)), _gauss(rng, 500))
    assert empty.status == "insufficient_data"
    assert embedding_drift(_gauss(rng, 100), _gauss(rng, 100)).status != "insufficient_data"


def test_as_dict_is_json_safe() -> None:
    rng = np.random.default_rng(7)
    unmeasured = embedding_drift(_gauss(rng, 10), _gauss(rng, 10)).as_dict()
    assert unmeasured["mmd2"] is None and unmeasured["p_value"] is None
    assert unmeasured["status"] == "insufficient_data"
    measured = embedding_drift(_gauss(rng, 120), _gauss(rng, 120)).as_dict()
    back = json.loads(json.dumps(measured, allow_nan=False))
    assert back == measured and isinstance(back["p_value"], float)
    assert set(back) == {f for f in EmbeddingDrift.__dataclass_fields__}


def test_bad_input_is_an_error_naming_it() -> None:
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match="reference has 16 dims but current has 8"):
        embedding_drift(_gauss(rng, 100), _gauss(rng, 100, d=8))
    bad = _gauss(rng, 100)
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="current has 1 row"):
        embedding_drift(_gauss(rng, 100), bad)
    with pytest.raises(ValueError, match="2-D"):
        embedding_drift(np.zeros(100), np.zeros(100))


def test_psi_by_hand() -> None:
    # two bins split at the reference's median 2.5: reference 1/2, 1/2; current 3/4, 1/4
    expected = (0.75 - 0.5) * math.log(0.75 / 0.5) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert psi([1, 2, 3, 4], [1, 1, 1, 4], bins=2, min_samples=4) == pytest.approx(expected)
    assert expected == pytest.approx(0.274653, abs=1e-6)  # "major" (> 0.25)
    assert psi([1, 2, 3, 4], [4, 3, 2, 1], bins=2, min_samples=4) == 0.0
    # the edge is the reference's median 2: a value on it goes to the upper bin (1 | 2, 2, 3)
    assert psi([1, 2, 2, 3], [1, 2, 3, 3], bins=2, min_samples=4) == 0.0
    # an empty current bin costs (1e-4 - 1/2) ln(1e-4 / (1/2)), finite
    one_sided = psi([1, 2, 3, 4], [4, 4, 4, 4], bins=2, min_samples=4)
    assert one_sided == pytest.approx(
        (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1 - 0.5) * math.log(1 / 0.5), rel=1e-3
    )


def test_psi_drops_non_finite_and_is_nan_below_min_samples() -> None:
    ref = list(np.random.default_rng(9).normal(size=200))
    assert math.isnan(psi(ref, ref[:99]))
    assert psi(ref, ref[:100] + [None, math.nan, math.inf] * 5) == psi(ref, ref[:100])
    assert math.isnan(psi([math.nan] * 300, ref))
    lat = np.random.default_rng(10).lognormal(5, 0.3, 1000)
    assert psi(lat[:500], lat[500:]) < 0.1  # stable
    assert psi(lat[:500], 2 * lat[500:]) > 0.25  # latency doubled: major


def test_scalar_drift_per_field() -> None:
    rng = np.random.default_rng(11)
    ref = {"latency_ms": rng.normal(100, 10, 300), "prompt_tokens": rng.integers(10, 50, 300)}
    cur = {"latency_ms": rng.normal(150, 10, 300), "score": rng.random(300)}
    out = scalar_drift(ref, cur)
    assert list(out) == ["latency_ms", "prompt_tokens", "score"]
    assert out["latency_ms"] > 1.0
    assert math.isnan(out["prompt_tokens"]) and math.isnan(out["score"])
    with pytest.raises(ValueError, match="field 'latency_ms' is not numeric"):
        scalar_drift({"latency_ms": ["fast"] * 200}, cur)  # type: ignore[list-item]


class _HashEncoder:
    """Unit vectors from a text's words (a deterministic stand-in for a sentence model)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts: Any, batch_size: int = 64) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, sum(map(ord, w)) % 32] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_drift_report_groups_by_model_and_tenant() -> None:
    rng = np.random.default_rng(12)
    words = [f"w{i}" for i in range(64)]

    def rows(model: str, tenant: str | None, n: int, vocab: slice, latency: float) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            row: dict[str, Any] = {"model": model, "prompt": " ".join(rng.choice(words[vocab], 6))}
            row["latency_ms"] = float(rng.normal(latency, 5))
            if tenant is not None:
                row["tenant"] = tenant
            out.append(row)
        return out

    ref = rows("m", "a", 150, slice(0, 32), 100) + rows("m", "b", 150, slice(0, 32), 100)
    ref += rows("m", None, 20, slice(0, 32), 100)  # no tenant: the None group, too small
    cur = rows("m", "a", 150, slice(0, 32), 100) + rows("m", "b", 1200, slice(32, 64), 300)
    enc = _HashEncoder()
    report = drift_report(ref, cur, enc, scalar_fields=("latency_ms", "prompt_tokens"), max_points=500)
    by = {(g["model"], g["tenant"]): g for g in report}
    assert list(by) == [("m", None), ("m", "a"), ("m", "b")]
    assert by[("m", "a")]["embedding"]["status"] == "no_drift"
    assert by[("m", "a")]["psi"]["latency_ms"] < 0.25
    assert by[("m", "b")]["embedding"]["status"] == "drift"
    assert by[("m", "b")]["embedding"]["n_current"] == 1200  # the window, not the 500 embedded
    assert by[("m", "b")]["psi"]["latency_ms"] > 0.25
    assert by[("m", "b")]["psi"]["prompt_tokens"] is None  # no such field: unmeasured
    small = by[("m", None)]["embedding"]
    assert small["status"] == "insufficient_data" and small["n_reference"] == 20 and small["mmd2"] is None
    assert max(enc.calls) == 500 and sum(enc.calls) == 150 * 3 + 500  # the small group is never embedded
    json.dumps(report, allow_nan=False)


# --- the goal, on shipped data ------------------------------------------------------------


def _questions() -> list[str]:
    with gzip.open(QA, "rt", encoding="utf-8") as f:
        qs = list(dict.fromkeys(json.loads(line)["question"] for line in f))
    return qs[::2]  # every other one: all 16 articles, half the encoding time


def _news_passages() -> list[str]:
    """Three consecutive sentences of a REALSumm news article: a prompt-sized text."""
    out: list[str] = []
    for article in load_realsumm().sources:
        text = " ".join(re.sub(r"</?t>", " ", article).split())
        sents = [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 8]
        out += [" ".join(sents[i : i + 3]) for i in range(0, len(sents) - 2, 3)]
    return out[::4]  # spread over the 100 articles, a quarter of the encoding time


@pytest.fixture(scope="module")
def pools(openvino_f32: Any) -> tuple[np.ndarray, np.ndarray]:
    """In-domain (SQuAD questions) and out-of-domain (news passages) MiniLM embeddings."""
    questions, news = _questions(), _news_passages()
    assert len(questions) >= 2 * N and len(news) >= N // 10 * 2
    return openvino_f32.encode(questions), openvino_f32.encode(news)


def _trial(pools: tuple[np.ndarray, np.ndarray], i: int, ood_share: float) -> EmbeddingDrift:
    """Reference: N questions; current: N others, ``ood_share`` of them replaced by news."""
    questions, news = pools
    rng = np.random.default_rng(i)
    idx = rng.permutation(len(questions))
    n_ood = round(N * ood_share)
    current = questions[idx[N : 2 * N - n_ood]]
    if n_ood:
        current = np.vstack([current, news[rng.choice(len(news), n_ood, replace=False)]])
    return embedding_drift(questions[idx[:N]], current, seed=i)


def test_ten_percent_out_of_domain_is_detected(pools: tuple[np.ndarray, np.ndarray]) -> None:
    results = [_trial(pools, i, 0.10) for i in range(TRIALS)]
    detected = sum(r.status == "drift" for r in results)
    assert detected >= 0.95 * TRIALS, [round(r.p_value, 4) for r in results]
    # the gauges move the right way: the classifier sees the mix-in, the centroids part
    assert np.mean([r.domain_auc for r in results]) > 0.52
    assert all(r.n_current == N and r.n_reference == N for r in results)


def test_same_distribution_splits_rarely_alarm(pools: tuple[np.ndarray, np.ndarray]) -> None:
    results = [_trial(pools, i, 0.0) for i in range(TRIALS)]
    alarms = sum(r.status == "drift" for r in results)
    assert alarms <= 0.05 * TRIALS, [round(r.p_value, 4) for r in results]
    assert abs(np.mean([r.domain_auc for r in results]) - 0.5) < 0.02
    # under no drift the permutation p-values are uniform: their mean is about 1/2
    assert 0.3 < np.mean([r.p_value for r in results]) < 0.7
    mixed = _trial(pools, 0, 0.10)
    assert mixed.centroid_cosine < np.mean([r.centroid_cosine for r in results])


# --- the CLI --------------------------------------------------------------------------------


def _records(texts: list[str], tenant: str, latency: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    return [
        {
            "request_id": f"{tenant}-{i}",
            "tenant": tenant,
            "model": "m1",
            "route": "/v1/chat/completions",
            "status": 200,
            "prompt": t,
            "completion": "ok",
            "prompt_tokens": len(t.split()),
            "completion_tokens": 1,
            "latency_ms": float(rng.lognormal(math.log(latency), 0.2)),
        }
        for i, t in enumerate(texts)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)
    return path


def _write_table(root: Path, rows: list[dict[str, Any]]) -> Path:
    """The rows as the inference table stores them: its schema, one folder per hour."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from monitoring.inference_table import SCHEMA

    for h, part in enumerate((rows[::2], rows[1::2])):
        full = [{name: r.get(name) for name in SCHEMA.names} for r in part]
        folder = root / f"hour=2026-12-02T{10 + h:02d}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(full, schema=SCHEMA), folder / f"part-{h}.parquet")
    return root


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}  # the encoder's OpenVINO export goes there
    return subprocess.run(
        [LLMOPS, "eval", "drift", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_cli_formats_exit_codes_and_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    questions, news = _questions(), _news_passages()
    ref_rows = _records(questions[:120], "a", 200, rng) + _records(questions[200:230], "b", 200, rng)
    ref = _write_jsonl(tmp_path / "ref.jsonl.gz", ref_rows)
    same = _write_table(tmp_path / "inference", [ref_rows[i] for i in rng.permutation(len(ref_rows))])
    drifted_rows = _records(news[:120], "a", 1000, rng) + _records(questions[300:330], "b", 200, rng)
    drifted = _write_jsonl(tmp_path / "cur.jsonl", drifted_rows)
    cache = tmp_path / "cache"  # not the session's: test_embeddings_backend counts its entries

    # bad input first (no model is loaded for it): exit 2, a message naming the problem
    p = _cli("--reference", str(ref), "--current", str(drifted), "--field", "question", cache=cache)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "has no field 'question'" in p.stderr and "prompt" in p.stderr
    p = _cli("--reference", str(tmp_path / "nope.jsonl"), "--current", str(drifted), cache=cache)
    assert p.returncode == 2 and "nope.jsonl: no such file" in p.stderr and "Traceback" not in p.stderr

    # the same prompts as JSONL and as the hive-partitioned table: no drift, exit 0 even when gating
    out = tmp_path / "same.json"
    p = _cli(
        "--reference", str(ref), "--current", str(same), "--fail-on-drift", "--json", str(out), cache=cache
    )
    assert p.returncode == 0, p.stderr
    groups = {g["tenant"]: g for g in json.loads(out.read_text())["groups"]}
    assert groups["a"]["embedding"]["status"] == "no_drift"
    assert groups["a"]["embedding"]["n_current"] == 120 and groups["a"]["embedding"]["p_value"] > 0.5
    assert groups["a"]["psi"] == {"prompt_tokens": 0.0, "completion_tokens": 0.0, "latency_ms": 0.0}
    assert groups["b"]["embedding"]["status"] == "insufficient_data"
    assert "model=m1 tenant=a: no drift (n=120/120)" in p.stdout
    assert "model=m1 tenant=b: insufficient data (n=30/30; need 100 a side)" in p.stdout

    # news instead of questions, latency 5x: drift, exit 1 with --fail-on-drift; 'region' is absent
    out = tmp_path / "drift.json"
    p = _cli(
        *("--reference", str(ref), "--current", str(drifted), "--group-by", "model,tenant,region"),
        *("--fail-on-drift", "--json", str(out)),
        cache=cache,
    )
    assert p.returncode == 1, p.stderr
    assert "no field 'region': not grouping by it" in p.stderr
    report = json.loads(out.read_text())
    assert report["group_by"] == ["model", "tenant"]
    groups = {g["tenant"]: g for g in report["groups"]}
    assert groups["a"]["embedding"]["status"] == "drift"
    assert groups["a"]["embedding"]["domain_auc"] > 0.9
    assert groups["a"]["psi"]["latency_ms"] > 0.25
    assert groups["b"]["embedding"]["status"] == "insufficient_data"
    assert re.search(r"model=m1 tenant=a: DRIFT \(n=120/120\)  MMD²=\S+ p=0\.0050 ", p.stdout)
