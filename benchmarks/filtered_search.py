"""Filtered and approximate search on the embedded Qdrant Edge store (not a test).

Two tables, both measured in one run on one machine, recall always against the
engine's own exact search of the same collection:

1. Filtering strategies: a filter ``bucket < b`` on an integer payload index
   (``bucket`` uniform over 0..999) keeps 50 %, 10 %, 1 % or 0.1 % of the
   points. For each selectivity, ``pre`` (exact search over the filtered set),
   ``in`` (HNSW guided by the payload index, ACORN on) and ``post`` (HNSW over
   ``post_filter_factor * top_k`` candidates, then the filter): recall@10 and
   p50/p95 latency per query. Ground truth is ``pre``: exact by construction.
2. Exact vs approximate: no filter; exact, HNSW at several ``hnsw_ef``, and
   HNSW over scalar (int8) and binary quantized vectors (rescored from the
   originals with 2x oversampling, and binary without rescoring).

The vectors are clustered 384-d Gaussians (200 centres, like sentence
embeddings, which HNSW handles better than isotropic noise) unless
``--vectors FILE.npy`` gives real ones (queries are then held-out rows).
Latency is the whole ``VectorStore.search`` call from Python, as the retrieval
deployment makes it (filter building, the engine, payload decoding).

Usage: python benchmarks/filtered_search.py [--points 50000] [--queries 200]
       [--vectors FILE.npy] [--json OUT.json] [--md OUT.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.retrieval.config import CollectionConfig, QuantizationConfig, VectorStoreConfig  # noqa: E402
from services.retrieval.store import open_store  # noqa: E402
from services.retrieval.store.base import BaseStore  # noqa: E402
from services.retrieval.types import Chunk, chunk_id  # noqa: E402

TENANT = "bench"
SELECTIVITIES = (0.5, 0.1, 0.01, 0.001)
STRATEGIES = ("pre", "in", "post")
TOP_K = 10


def make_vectors(n: int, q: int, dim: int, path: str | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if path:
        data = np.load(path).astype(np.float32)
        if len(data) < n + q:
            raise SystemExit(f"--vectors: {path} has {len(data)} rows; --points + --queries need {n + q}")
        rng.shuffle(data)
        return data[:n], data[n : n + q]
    centers = rng.normal(size=(200, dim))
    vecs = (centers[rng.integers(0, 200, n)] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)
    queries = (centers[rng.integers(0, 200, q)] + 0.7 * rng.normal(size=(q, dim))).astype(np.float32)
    return vecs, queries


def build(
    root: Path, name: str, vecs: np.ndarray, buckets: np.ndarray, quant: QuantizationConfig | None
) -> tuple[BaseStore, float, float]:
    """One collection in its own store directory; returns (store, upsert_s, index_s)."""
    cfg = CollectionConfig(
        name=name,
        hybrid=False,
        quantization=quant,
        payload_indexes={"bucket": "integer"},
        indexing_threshold_kb=1,  # index whatever --points is; 50k x 384 is over the default anyway
    )
    store = open_store(VectorStoreConfig(path=str(root / name)), str(root))
    store.ensure_collection(cfg, vecs.shape[1])
    chunks = [
        Chunk(chunk_id(TENANT, f"d{i}", 0, "h"), f"d{i}", 0, "", TENANT, "h", "", {"bucket": int(buckets[i])})
        for i in range(len(vecs))
    ]
    t0 = time.perf_counter()
    store.upsert(name, chunks, vecs, None)
    upsert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.optimize(name)
    index_s = time.perf_counter() - t0
    status = store.index_status(name)
    if status.indexed_vectors < len(vecs):
        raise SystemExit(f"{name}: only {status.indexed_vectors} of {len(vecs)} vectors indexed")
    return store, upsert_s, index_s


def run_queries(
    store: BaseStore, name: str, queries: np.ndarray, **kw: Any
) -> tuple[list[list[str]], list[float]]:
    ids, times = [], []
    store.search(name, TENANT, queries[0], None, TOP_K, **kw)  # warm-up
    for q in queries:
        t0 = time.perf_counter()
        hits = store.search(name, TENANT, q, None, TOP_K, **kw)
        times.append((time.perf_counter() - t0) * 1000)
        ids.append([h.chunk.id for h in hits])
    return ids, times


def recall(got: list[list[str]], truth: list[list[str]]) -> float:
    """Mean share of the true top-10 found; a query whose filter keeps < 10 points counts what exists."""
    vals = [len(set(g) & set(t)) / len(t) for g, t in zip(got, truth, strict=True) if t]
    return float(np.mean(vals)) if vals else float("nan")


def row(
    label: str, got: list[list[str]], times: list[float], truth: list[list[str]], **extra: Any
) -> dict[str, Any]:
    qs = statistics.quantiles(times, n=20)
    return {
        "label": label,
        **extra,
        "recall_at_10": round(recall(got, truth), 4),
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(qs[18], 3),
        "short_results": sum(len(g) < min(TOP_K, len(t)) for g, t in zip(got, truth, strict=True)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=50_000, help="points per collection (50000)")
    p.add_argument("--queries", type=int, default=200, help="queries per row (200)")
    p.add_argument("--dim", type=int, default=384, help="dimension of generated vectors (384)")
    p.add_argument("--vectors", help="a .npy of real vectors to use instead of generated ones")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the tables as Markdown here")
    a = p.parse_args()

    vecs, queries = make_vectors(a.points, a.queries, a.dim, a.vectors, a.seed)
    buckets = np.random.default_rng(a.seed + 1).integers(0, 1000, len(vecs))
    out: dict[str, Any] = {
        "points": len(vecs),
        "dim": int(vecs.shape[1]),
        "queries": len(queries),
        "vectors": a.vectors or "clustered gaussian (200 centres)",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, Python {platform.python_version()}",
        "builds": [],
    }
    quants: dict[str, QuantizationConfig | None] = {
        "plain": None,
        "scalar": QuantizationConfig(kind="scalar"),
        "binary": QuantizationConfig(kind="binary"),
    }
    with tempfile.TemporaryDirectory(prefix="llmops-fsearch-") as tmp:
        stores: dict[str, BaseStore] = {}
        for name, quant in quants.items():
            store, up_s, idx_s = build(Path(tmp), name, vecs, buckets, quant)
            stores[name] = store
            out["builds"].append({"collection": name, "upsert_s": round(up_s, 2), "index_s": round(idx_s, 2)})
            print(f"built {name}: upsert {up_s:.1f}s, HNSW build {idx_s:.1f}s", flush=True)
        plain = stores["plain"]

        rows = []
        for sel in SELECTIVITIES:
            flt = {"bucket": {"lt": round(sel * 1000)}}
            truth, _ = run_queries(plain, "plain", queries, filter=flt, strategy="pre")
            for strategy in STRATEGIES:
                got, times = run_queries(plain, "plain", queries, filter=flt, strategy=strategy)
                rows.append(row(strategy, got, times, truth, selectivity=sel, strategy=strategy))
                print(f"filter {sel:>6.1%} {strategy:>4}: {rows[-1]}", flush=True)
        out["filtering"] = rows

        truth, _ = run_queries(plain, "plain", queries, exact=True)
        approx = [("exact", "plain", {"exact": True})]
        approx += [(f"HNSW ef={ef}", "plain", {"ef": ef}) for ef in (16, 64, 128, 256)]
        approx += [
            ("HNSW + scalar int8, rescored", "scalar", {}),
            ("HNSW + binary, rescored (2x oversampling)", "binary", {}),
            ("HNSW + binary, rescored (8x oversampling)", "binary", {"_quant": {"oversampling": 8.0}}),
            ("HNSW + binary, no rescoring", "binary", {"_quant": {"rescore": False}}),
        ]
        arows = []
        for label, coll, kw in approx:
            # the collection's own quantization settings, changed in place between rows (search-time ones)
            for k, v in kw.pop("_quant", {}).items():
                setattr(stores[coll].collection_config(coll).quantization, k, v)
            got, times = run_queries(stores[coll], coll, queries, **kw)
            arows.append(row(label, got, times, truth, collection=coll))
            print(f"{label:>30}: {arows[-1]}", flush=True)
        out["approximate"] = arows
        for s in stores.values():
            s.close()

    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    md = to_markdown(out)
    if a.md:
        Path(a.md).write_text(md)
    print(md)
    return 0


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"{r['points']:,} points x {r['dim']}-d ({r['vectors']}), {r['queries']} queries, top 10; {r['machine']}.",
        "HNSW build: " + ", ".join(f"{b['collection']} {b['index_s']} s" for b in r["builds"]) + ".",
        "",
        "| filter keeps | strategy | recall@10 | p50 ms | p95 ms | short results |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["filtering"]:
        lines.append(
            f"| {x['selectivity']:.1%} | {x['strategy']} | {x['recall_at_10']:.3f} | {x['p50_ms']:.2f} "
            f"| {x['p95_ms']:.2f} | {x['short_results']} |"
        )
    lines += ["", "| unfiltered search | recall@10 vs exact | p50 ms | p95 ms |", "|---|---|---|---|"]
    for x in r["approximate"]:
        lines.append(f"| {x['label']} | {x['recall_at_10']:.3f} | {x['p50_ms']:.2f} | {x['p95_ms']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
