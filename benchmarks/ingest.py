"""Ingestion benchmark (not a test): the pipeline against raw encoding, in one run.

The corpus goes through ``llmops ingest``'s Ray Data pipeline (read -> validate
-> chunk -> embed on an actor pool -> upsert into a fresh embedded Qdrant Edge
store -> one HNSW build at the end), once per embedding backend, against raw
``SentenceTransformer.encode`` (torch, every thread of the machine, batch 64) of
the same chunk texts in one process, all in docs/s. Ray is started before the
clock starts for every pipeline run; the pipeline's figure includes its actors'
start-up, validation, chunking, BM25, upserts and the index build.

Corpora (all shipped in the project, SQuAD 2.0 dev half, CC BY-SA 4.0):

* ``squad+questions`` (default): the 646 paragraphs and the 6,078 questions,
  each question its own document: 6,724 documents of very different lengths, so
  per-document overhead shows;
* ``squad``: the 646 paragraphs only.

Usage: python benchmarks/ingest.py [--corpus squad+questions|squad] [--backends auto,torch]
"""

from __future__ import annotations

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


def bench_config(
    data_dir: str, port: int = 8000, backend: str = "auto", num_cpus: float | None = None
) -> Any:
    """``num_cpus``: Ray's logical CPUs (default: the platform's, all cores); the whole platform
    needs 4 to place its replicas on a 2-core machine."""
    from llmops.config import validate_config

    return validate_config(
        {
            "data_dir": data_dir,
            "gateway": {"port": port},
            "embeddings": [{"name": "all-minilm-l6-v2", "backend": backend}],
            "retrieval": {"collections": [{"name": "docs", "hybrid": True}]},
            "ray": {"num_cpus": num_cpus},
        }
    )


def corpus(name: str) -> list[Any]:
    from evals.datasets import load_squad
    from services.retrieval.types import Document

    squad = load_squad()
    docs = list(squad.paragraphs)
    if name == "squad+questions":
        docs += [
            Document(
                doc_id=f"q-{q.qid}", text=q.text, metadata={"kind": "question"}, source="squad2-dev-half"
            )
            for q in squad.questions + squad.unanswerable
        ]
    return docs


def write_jsonl(docs: list[Any], path: Path) -> None:
    with path.open("w") as f:
        for d in docs:
            f.write(json.dumps({"id": d.doc_id, "text": d.text, **d.metadata}) + "\n")


def raw_stage(corpus_name: str) -> dict[str, float]:
    import os

    import torch
    from sentence_transformers import SentenceTransformer

    from pipelines.ingest.stages import ModelTokenizer
    from services.embeddings.encoder import bundled_model_path
    from services.retrieval.chunking import chunk_document
    from services.retrieval.config import CollectionConfig

    torch.set_num_threads(os.cpu_count() or 1)
    docs = corpus(corpus_name)
    coll = CollectionConfig(name="docs")
    tok = ModelTokenizer(None)
    chunks = [
        c.text for d in docs for c in chunk_document(d, "local", tok, coll.chunk_tokens, coll.chunk_overlap)
    ]
    model = SentenceTransformer(str(bundled_model_path()), device="cpu", local_files_only=True)
    model.encode(chunks[:64], batch_size=64, show_progress_bar=False)  # warm-up
    t0 = time.perf_counter()
    model.encode(chunks, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    raw_s = time.perf_counter() - t0
    return {"docs": len(docs), "chunks": len(chunks), "raw_s": raw_s, "raw_docs_per_s": len(docs) / raw_s}


def pipeline_stage(corpus_name: str, backend: str, keep_dir: str | None = None) -> dict[str, float]:
    """Runs in its own process: the pipeline holds the embedded store while it writes.
    ``keep_dir``: the data dir to ingest into and keep (default: a temporary one)."""
    from contextlib import nullcontext

    from pipelines.ingest.pipeline import run
    from pipelines.ray_env import ensure_ray

    where = nullcontext(keep_dir) if keep_dir else tempfile.TemporaryDirectory(prefix="llmops-ingest-bench-")
    with where as data_dir:
        docs = corpus(corpus_name)
        path = Path(data_dir) / "corpus.jsonl"
        write_jsonl(docs, path)
        cfg = bench_config(data_dir, backend=backend)
        ensure_ray(cfg)
        t0 = time.perf_counter()
        summary = run(cfg, str(path), "docs", tenant="local", progress=False)
        e2e_s = time.perf_counter() - t0
        return {
            "docs": len(docs),
            "e2e_s": e2e_s,
            "e2e_docs_per_s": len(docs) / e2e_s,
            "chunks_written": summary.chunks_written,
            "index_s": summary.index_s,
        }


def in_subprocess(stage: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--_stage", stage, *args], capture_output=True, text=True
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{stage} stage failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[7:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="squad+questions", choices=("squad+questions", "squad"))
    p.add_argument("--backends", default="auto,torch", help="embedding backends of the pipeline runs")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--_stage", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._stage:
        stage, *args = a._stage
        fn = raw_stage if stage == "raw" else pipeline_stage
        print("RESULT " + json.dumps(fn(*args)))
        return 0
    raw = in_subprocess("raw", a.corpus)
    out: dict[str, Any] = {"corpus": a.corpus, "raw": raw, "pipeline": {}}
    print(
        f"corpus {a.corpus}: {raw['docs']} docs, {raw['chunks']} chunks; raw SentenceTransformer.encode "
        f"(torch, all threads): {raw['raw_docs_per_s']:.1f} docs/s ({raw['raw_s']:.1f} s)",
        flush=True,
    )
    for backend in a.backends.split(","):
        r = in_subprocess("pipeline", a.corpus, backend)
        out["pipeline"][backend] = r
        print(
            f"pipeline, embedding backend {backend}: {r['e2e_docs_per_s']:.1f} docs/s ({r['e2e_s']:.1f} s, "
            f"of which HNSW build {r['index_s']:.1f} s; {r['chunks_written']} chunks) -> "
            f"{r['e2e_docs_per_s'] / raw['raw_docs_per_s']:.2f}x raw",
            flush=True,
        )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
