"""Congruence: the same calls on Qdrant Edge and on qdrant-client's brute-force local mode.

The qdrant-client pattern (its ``tests/congruence_tests``): the reference is
exact and simple, so where the Edge engine searches exactly it must return the
same ids and scores; where it searches approximately (HNSW, quantization) its
recall against exact is measured and bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from services.retrieval.config import CollectionConfig, QuantizationConfig, VectorStoreConfig
from services.retrieval.sparse import BM25Encoder
from services.retrieval.store import VectorStore, open_store
from services.retrieval.store.edge import EdgeStore
from services.retrieval.store.server import ServerStore
from services.retrieval.types import Chunk, chunk_id, content_hash

pytestmark = pytest.mark.unit

BM25 = BM25Encoder()
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
]
TENANTS = ("a", "b", "c")


def corpus(n: int, dim: int, seed: int = 0, distinct_lengths: bool = False) -> tuple[list[Chunk], np.ndarray]:
    """``n`` chunks over three tenants with every payload index type; ``distinct_lengths``: text i has
    3 + i words, so BM25 scores (which depend on length) rarely tie."""
    rng = np.random.default_rng(seed)
    chunks, vecs = [], rng.normal(size=(n, dim)).astype(np.float32)
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=3 + i if distinct_lengths else int(rng.integers(3, 12))))
        tenant = TENANTS[i % 3]
        doc = f"doc-{i // 4}"
        meta = {
            "lang": ["en", "de", "fr", "es"][int(rng.integers(0, 4))],
            "year": int(rng.integers(2000, 2025)),
            "score": float(np.round(rng.uniform(0, 10), 3)),
            "draft": bool(rng.integers(0, 2)),
            "at": f"2024-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}T12:00:00Z",
            "body": text,
        }
        h = content_hash(text)
        chunks.append(
            Chunk(chunk_id(tenant, doc, i % 4, h), doc, i % 4, text, tenant, h, f"{doc}.md", meta, 4)
        )
    return chunks, vecs


INDEXES: dict[str, Any] = {
    "lang": "keyword",
    "year": "integer",
    "score": "float",
    "draft": "bool",
    "at": "datetime",
    "body": "text",
}
FILTERS: list[dict[str, Any] | None] = [
    None,
    {"lang": "de"},
    {"lang": {"any": ["en", "fr"]}},
    {"year": {"gte": 2010, "lt": 2015}},
    {"score": {"gt": 7.5}},
    {"draft": True},
    {"draft": False, "lang": "es"},
    {"at": {"gte": "2024-06-01T00:00:00Z"}},
    {"body": {"text": "gamma delta"}},
    {"doc_id": "doc-7"},
]


@contextmanager
def both(
    tmp_path: Path, cfg: CollectionConfig, dim: int, n: int, distinct_lengths: bool = False
) -> Iterator[tuple[VectorStore, VectorStore]]:
    edge = open_store(VectorStoreConfig(), str(tmp_path))
    ref = ServerStore(VectorStoreConfig(), client=QdrantClient(location=":memory:"))
    chunks, vecs = corpus(n, dim, distinct_lengths=distinct_lengths)
    sparse = BM25.encode_documents([c.text for c in chunks])
    for s in (edge, ref):
        s.ensure_collection(cfg, dim)
        s.upsert(cfg.name, chunks, vecs, sparse)
    try:
        yield edge, ref
    finally:
        edge.close()
        ref.close()


@pytest.fixture(params=["cosine", "dot", "euclid", "manhattan"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[VectorStore, VectorStore]]:
    cfg = CollectionConfig(name="c", distance=request.param, payload_indexes=INDEXES)
    with both(tmp_path, cfg, 16, 600) as stores:
        yield stores


def _same(a: list[Any], b: list[Any]) -> None:
    assert [h.chunk.id for h in a] == [h.chunk.id for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-4, abs=1e-5)
    assert [h.chunk for h in a] == [h.chunk for h in b]  # payloads round-trip identically


def _same_up_to_ties(a: list[Any], b: list[Any]) -> None:
    """Equal scores rank by rank; within a run of equal scores (BM25, RRF) the order is free."""
    assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-5, abs=1e-6)
    groups: dict[float, tuple[set[str], set[str]]] = {}
    for x, y in zip(a, b, strict=True):
        key = round(x.score, 4)
        groups.setdefault(key, (set(), set()))[0].add(x.chunk.id)
        groups[key][1].add(y.chunk.id)
    last = round(a[-1].score, 4) if a else None
    for score, (ga, gb) in groups.items():
        assert score == last or ga == gb, score  # the lowest run may be cut at a different member


def test_exact_dense_search_has_the_same_ids_and_scores(pair: tuple[VectorStore, VectorStore]) -> None:
    edge, ref = pair
    rng = np.random.default_rng(1)
    for flt in FILTERS:
        for tenant in TENANTS:
            q = rng.normal(size=16).astype(np.float32)
            want = ref.search("c", tenant, q, None, 10, filter=flt, exact=True)
            for strategy in ("pre", "in"):
                _same(edge.search("c", tenant, q, None, 10, filter=flt, exact=True, strategy=strategy), want)
            # post filtering may find fewer (it filters a fixed candidate list), never others
            post = edge.search("c", tenant, q, None, 10, filter=flt, exact=True, strategy="post")
            _same(post, want[: len(post)])
            assert all(h.chunk.tenant == tenant for h in want)


def test_filters_select_the_same_points(pair: tuple[VectorStore, VectorStore]) -> None:
    edge, ref = pair
    q = np.ones(16, dtype=np.float32)
    for flt in FILTERS:
        got = {h.chunk.id for h in edge.search("c", "a", q, None, 600, filter=flt, exact=True)}
        want = {h.chunk.id for h in ref.search("c", "a", q, None, 600, filter=flt, exact=True)}
        assert got == want, flt
        assert got or (flt is not None and "doc_id" in flt), flt  # the filters are not vacuous


def test_sparse_and_hybrid_search_agree(tmp_path: Path) -> None:
    # RRF fuses ranks, so tied BM25 scores ordered differently would change fused scores:
    # texts of distinct lengths keep the sparse rankings free of ties
    with both(tmp_path, CollectionConfig(name="c", payload_indexes=INDEXES), 16, 150, True) as (edge, ref):
        _sparse_and_hybrid(edge, ref)


def _sparse_and_hybrid(edge: VectorStore, ref: VectorStore) -> None:
    rng = np.random.default_rng(2)
    for words in (["gamma"], ["beta", "omicron"], ["pi", "rho", "sigma", "alpha"]):
        sq = BM25.encode_query(" ".join(words))
        for flt in (None, {"lang": "en"}):
            sparse_e = edge.search("c", "b", None, sq, 10, filter=flt)
            assert len(sparse_e) == 10
            _same_up_to_ties(sparse_e, ref.search("c", "b", None, sq, 10, filter=flt))
            q = rng.normal(size=16).astype(np.float32)
            e = edge.search("c", "b", q, sq, 10, filter=flt, exact=True, hybrid=True)
            r = ref.search("c", "b", q, sq, 10, filter=flt, exact=True, hybrid=True)
            _same_up_to_ties(e, r)


def test_deletes_and_reingest_behave_the_same(pair: tuple[VectorStore, VectorStore]) -> None:
    edge, ref = pair
    q = np.ones(16, dtype=np.float32)
    chunks, vecs = corpus(600, 16)
    for s in (edge, ref):
        assert (
            s.delete_doc("c", "a", "doc-0") == s.delete_doc("c", "a", "doc-0") + 2
        )  # 2 of its chunks are a's
        replaced = [c for c in chunks if c.doc_id == "doc-3" and c.tenant == "a"]
        s.replace_doc("c", "a", "doc-3", replaced[:1], vecs[:1], BM25.encode_documents([replaced[0].text]))
        s.upsert(
            "c", chunks[:50], vecs[:50], BM25.encode_documents([c.text for c in chunks[:50]])
        )  # idempotent
    for tenant in TENANTS:
        assert edge.count("c", tenant) == ref.count("c", tenant)
        assert edge.tenant_point_ids("c", tenant) == ref.tenant_point_ids("c", tenant)
        _same(
            edge.search("c", tenant, q, None, 20, exact=True),
            ref.search("c", tenant, q, None, 20, exact=True),
        )


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeStore, np.ndarray, np.ndarray]]:
    """20,000 clustered 384-d points (like sentence embeddings) with HNSW built, and 100 queries."""
    n, dim = 20_000, 384
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(200, dim))
    vecs = (centers[rng.integers(0, 200, n)] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)
    queries = (centers[rng.integers(0, 200, 100)] + 0.7 * rng.normal(size=(100, dim))).astype(np.float32)
    cfg = CollectionConfig(
        name="big",
        hybrid=False,
        quantization=QuantizationConfig(kind="scalar"),
        payload_indexes={"lang": "keyword"},
    )
    store = open_store(VectorStoreConfig(), str(tmp_path_factory.mktemp("big")))
    assert isinstance(store, EdgeStore)
    store.ensure_collection(cfg, dim)
    chunks = [
        Chunk(chunk_id("a", f"d{i}", 0, "h"), f"d{i}", 0, "", "a", "h", "", {"lang": "xy"[i % 2]})
        for i in range(n)
    ]
    store.upsert("big", chunks, vecs, None)
    assert store.index_status("big").indexed_vectors == 0  # nothing indexed until asked
    assert store.optimize("big") is True
    status = store.index_status("big")
    assert status.points == n and status.indexed_vectors >= n
    yield store, vecs, queries
    store.close()


def _recall(store: EdgeStore, queries: np.ndarray, truth: list[set[str]], **kw: Any) -> float:
    got = [{h.chunk.id for h in store.search("big", "a", q, None, 10, **kw)} for q in queries]
    return float(np.mean([len(g & t) / 10 for g, t in zip(got, truth, strict=True)]))


def test_hnsw_recall_against_exact_on_20k_points(big: tuple[EdgeStore, np.ndarray, np.ndarray]) -> None:
    store, vecs, queries = big
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [chunk_id("a", f"d{i}", 0, "h") for i in range(len(vecs))]
    truth = [{ids[j] for j in np.argsort(-(unit @ (q / np.linalg.norm(q))))[:10]} for q in queries]
    assert _recall(store, queries, truth, exact=True) == 1.0  # the engine's exact search is numpy's
    assert _recall(store, queries, truth, quantized=False) >= 0.99  # HNSW, search_ef 128
    assert _recall(store, queries, truth) >= 0.99  # HNSW over int8 vectors, rescored
    # the per-request beam takes effect: a beam of 4 loses neighbours the default keeps
    assert _recall(store, queries, truth, ef=4, quantized=False) < _recall(
        store, queries, truth, quantized=False
    )


def test_filtered_strategies_on_an_hnsw_index(big: tuple[EdgeStore, np.ndarray, np.ndarray]) -> None:
    store, _, queries = big
    flt = {"lang": "x"}
    for q in queries[:20]:
        exact = [h.chunk.id for h in store.search("big", "a", q, None, 10, filter=flt, strategy="pre")]
        assert len(exact) == 10
        for strategy in ("in", "post"):
            got = store.search("big", "a", q, None, 10, filter=flt, strategy=strategy)
            assert all(h.chunk.metadata["lang"] == "x" for h in got)
            assert len(set(exact) & {h.chunk.id for h in got}) >= 8, strategy
