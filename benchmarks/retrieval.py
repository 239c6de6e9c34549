"""Retrieval latency against embedding latency through the running platform (not a test).

The sample corpus (646 SQuAD 2.0 paragraphs, 732 chunks) is ingested into a
fresh embedded Qdrant Edge store, the platform is started on it, and ``wrk`` (its
own process) drives, alternating so drift hits both:

* ``POST /v1/embeddings`` with the query text, and
* ``POST /v1/retrieve`` with the same text (hybrid: dense + BM25 fused by RRF
  inside the engine, top_k 5), which embeds it through the same deployment and
  then searches,

at 1 and 16 concurrent clients, ``--reps`` times each; the median p50/p99 and the
ratio retrieve / embeddings are printed (goal: p50 <= 1.5x, i.e. search nearly
free beside the embedding).

Usage: python benchmarks/retrieval.py [--duration 8] [--reps 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import llmops  # noqa: E402, F401  (sets Ray's import-time environment before anything imports ray)
from benchmarks.ingest import bench_config, in_subprocess  # noqa: E402

QUESTION = "Who was the leader of the Normans?"
CLIENTS = (1, 16)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (8)")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions (3)")
    p.add_argument("--backend", default="auto", help="embedding backend (auto)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()

    from benchmarks.serving import _free_port, _wrk
    from llmops.platform import start_platform, stop_platform

    with tempfile.TemporaryDirectory(prefix="llmops-retrieve-bench-") as data_dir:
        ing = in_subprocess("pipeline", "squad", a.backend, data_dir)
        print(f"ingested {ing['docs']} docs / {ing['chunks_written']} chunks", flush=True)
        url = start_platform(bench_config(data_dir, _free_port(), a.backend, num_cpus=4))
        bodies = {
            "embeddings": ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": QUESTION}),
            "retrieve": (
                "/v1/retrieve",
                {"collection": "docs", "query": QUESTION, "top_k": 5, "hybrid": True},
            ),
        }
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        try:
            for route, body in bodies.values():
                _wrk(url + route, body, 16, 2)  # warm-up
            for _ in range(a.reps):
                for c in CLIENTS:
                    for name, (route, body) in bodies.items():
                        runs.setdefault((name, c), []).append(_wrk(url + route, body, c, a.duration))
        finally:
            stop_platform()
    out: dict[str, Any] = {"question": QUESTION, "backend": a.backend, "reps": a.reps, "rows": []}
    for c in CLIENTS:
        med = {
            name: {k: statistics.median(r[k] for r in runs[(name, c)]) for k in ("p50_ms", "p99_ms", "rps")}
            for name in bodies
        }
        ratio = med["retrieve"]["p50_ms"] / med["embeddings"]["p50_ms"]
        out["rows"].append({"clients": c, **{n: m for n, m in med.items()}, "p50_ratio": ratio})
        for name, m in med.items():
            print(
                f"{c:>2} client(s) {name:>10}: p50 {m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f} ms  "
                f"{m['rps']:6.0f} req/s"
            )
        print(f"{c:>2} client(s): retrieve / embeddings p50 = {ratio:.2f}x", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
