"""Ingestion and retrieval benchmark (not a test): ratios measured side by side in one run.

1. Ingestion: the 646 SQuAD sample paragraphs through ``llmops ingest``'s Ray
   Data pipeline (read -> validate -> chunk -> embed on an actor pool -> upsert
   into a fresh embedded Qdrant), against raw ``SentenceTransformer.encode`` of
   the same chunk texts in one process, both in docs/s. Ray is started before
   the clock starts for both.
2. Retrieval: ``POST /v1/retrieve`` (hybrid, top_k 5) against that store through
   the running platform at 1 and 16 concurrent clients, with ``wrk`` in its own
   process: p50/p99.

Usage: python benchmarks/ingest.py [--duration 8]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import llmops  # noqa: E402, F401  (sets Ray's import-time environment before anything imports ray)

QUESTION = "Who was the leader of the Normans?"


def _config(data_dir: str, port: int = 8000) -> Any:
    from llmops.config import validate_config

    return validate_config(
        {
            "data_dir": data_dir,
            "gateway": {"port": port},
            "retrieval": {"collections": [{"name": "docs", "hybrid": True}]},
            "ray": {"num_cpus": 4},
        }
    )


def ingest_stage(data_dir: str) -> dict[str, float]:
    """Runs in its own process: the pipeline holds the embedded store while it writes."""
    from evals.datasets import sample_corpus
    from pipelines.ingest.pipeline import ensure_ray, run
    from services.embeddings.encoder import Encoder
    from services.retrieval.chunking import chunk_document

    docs = sample_corpus()
    corpus = Path(data_dir) / "corpus.jsonl"
    with corpus.open("w") as f:
        for d in docs:
            f.write(json.dumps({"id": d.doc_id, "text": d.text, **d.metadata}) + "\n")
    cfg = _config(data_dir)
    coll = cfg.retrieval.collections[0]

    enc = Encoder(None, "cpu")
    chunks = [c for d in docs for c in chunk_document(d, "local", enc, coll.chunk_tokens, coll.chunk_overlap)]
    enc.encode([c.text for c in chunks[:64]], batch_size=64)  # warm-up
    t0 = time.perf_counter()
    enc.encode([c.text for c in chunks], batch_size=64)
    raw_s = time.perf_counter() - t0
    del enc

    ensure_ray(cfg)
    t0 = time.perf_counter()
    # tenant "local": auth is off in this config, so API requests act for that tenant
    summary = run(cfg, str(corpus), "docs", tenant="local", progress=False)
    e2e_s = time.perf_counter() - t0
    return {
        "docs": len(docs),
        "chunks": len(chunks),
        "raw_docs_per_s": len(docs) / raw_s,
        "e2e_docs_per_s": len(docs) / e2e_s,
        "chunks_written": summary.chunks_written,
    }


def retrieval_stage(data_dir: str, duration: float) -> dict[int, dict[str, float]]:
    from benchmarks.serving import _free_port, _wrk
    from llmops.platform import start_platform, stop_platform

    cfg = _config(data_dir, _free_port())
    url = start_platform(cfg)
    try:
        body = {"collection": "docs", "query": QUESTION, "top_k": 5, "hybrid": True}
        _wrk(f"{url}/v1/retrieve", body, 1, 2)  # warm-up
        return {c: _wrk(f"{url}/v1/retrieve", body, c, duration) for c in (1, 16)}
    finally:
        stop_platform()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--_ingest", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._ingest:
        print("RESULT " + json.dumps(ingest_stage(args._ingest)))
        return 0
    with tempfile.TemporaryDirectory() as data_dir:
        proc = subprocess.run(
            [sys.executable, __file__, "--_ingest", data_dir], capture_output=True, text=True
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        ing = json.loads(line[7:])
        print(
            f"ingestion: {ing['docs']} docs / {ing['chunks']} chunks: pipeline {ing['e2e_docs_per_s']:.1f} docs/s "
            f"vs raw encode {ing['raw_docs_per_s']:.1f} docs/s -> {ing['e2e_docs_per_s'] / ing['raw_docs_per_s']:.2f}x",
            flush=True,
        )
        ret = retrieval_stage(data_dir, args.duration)
        for c, r in ret.items():
            print(
                f"retrieve (hybrid, top_k 5) at {c:>2} clients: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['rps']:.0f} req/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
