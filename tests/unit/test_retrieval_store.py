"""The vector store's behaviour, on the Edge engine and on the brute-force reference alike.

Every test here runs on both backends (the ``store`` fixture is parametrized):
collections, idempotent writes, tenants, filters, deletes, sparse and hybrid.
Backend-specific behaviour (settings that take effect, locking) is at the end;
score-for-score congruence is in test_store_congruence.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from services.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from services.retrieval.config import CollectionConfig, QuantizationConfig, VectorStoreConfig
from services.retrieval.filters import Condition, FilterSpec
from services.retrieval.sparse import BM25Encoder
from services.retrieval.store import (
    CollectionMismatchError,
    StoreLockedError,
    VectorStore,
    build_filter,
    open_store,
)
from services.retrieval.store.edge import EdgeStore
from services.retrieval.store.server import ServerStore
from services.retrieval.types import Chunk, chunk_id, content_hash

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DIM = 4
BM25 = BM25Encoder()


def make_chunks(
    tenant: str, doc_id: str, texts: Sequence[str], meta: dict[str, Any] | None = None
) -> list[Chunk]:
    return [
        Chunk(
            id=chunk_id(tenant, doc_id, i, content_hash(t)),
            doc_id=doc_id,
            chunk_index=i,
            text=t,
            tenant=tenant,
            content_hash=content_hash(t),
            source=f"{doc_id}.md",
            metadata=dict(meta or {}),
            doc_chunks=len(texts),
        )
        for i, t in enumerate(texts)
    ]


def vec(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def rows(n: int, direction: Sequence[float] = (1, 0, 0, 0)) -> np.ndarray:
    return np.stack([vec(*direction)] * n)


@pytest.fixture(params=["edge", "reference"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    if request.param == "edge":
        s: VectorStore = open_store(VectorStoreConfig(), str(tmp_path))
    else:
        s = ServerStore(VectorStoreConfig(), client=QdrantClient(location=":memory:"))
    yield s
    s.close()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeStore]:
    s = open_store(VectorStoreConfig(), str(tmp_path))
    assert isinstance(s, EdgeStore)
    yield s
    s.close()


@pytest.fixture
def coll(store: VectorStore) -> str:
    store.ensure_collection(CollectionConfig(name="docs"), DIM)
    return "docs"


def put(store: VectorStore, coll: str, chunks: list[Chunk], dense: np.ndarray | None = None) -> None:
    d = rows(len(chunks)) if dense is None else dense
    store.upsert(coll, chunks, d, BM25.encode_documents([c.text for c in chunks]))


def test_embedded_default_is_edge_and_described(edge: EdgeStore, tmp_path: Path) -> None:
    assert edge.mode == "local" and edge.backend == "edge"
    assert edge.describe() == f"embedded Qdrant Edge at {tmp_path.resolve() / 'qdrant' / 'edge'}"
    assert (tmp_path / "qdrant" / "edge").is_dir()


@pytest.mark.parametrize("distance", ["cosine", "dot", "euclid", "manhattan"])
def test_ensure_collection_creates_vectors(store: VectorStore, distance: Any) -> None:
    cfg = CollectionConfig(name="c1", distance=distance)
    assert store.ensure_collection(cfg, 8) is True
    assert store.ensure_collection(cfg, 8) is False  # exists and matches
    assert store.collections() == ["c1"] and store.collection_exists("c1")
    assert not store.collection_exists("nope")
    with pytest.raises(CollectionMismatchError, match=r"exists with 8-d"):
        store.ensure_collection(cfg, 9)


def test_edge_collection_persists_its_vectors(edge: EdgeStore) -> None:
    edge.ensure_collection(CollectionConfig(name="c1", distance="dot"), 8)
    stored = edge.stored_config("c1")
    assert stored["vectors"]["dense"] == {"size": 8, "distance": "Dot"} | {
        k: v for k, v in stored["vectors"]["dense"].items() if k not in ("size", "distance")
    }
    assert stored["sparse_vectors"]["bm25"]["modifier"] == "idf"


def test_collection_without_hybrid_has_no_sparse_vector(store: VectorStore) -> None:
    store.ensure_collection(CollectionConfig(name="plain", hybrid=False), DIM)
    with pytest.raises(CollectionMismatchError, match=r"'plain'.*hybrid: true"):
        store.ensure_collection(CollectionConfig(name="plain", hybrid=True), DIM)


def test_dimension_or_distance_mismatch_raises(store: VectorStore) -> None:
    store.ensure_collection(CollectionConfig(name="docs"), 384)
    with pytest.raises(CollectionMismatchError, match=r"'docs' exists with 384-d Cosine.*needs 768-d Cosine"):
        store.ensure_collection(CollectionConfig(name="docs"), 768)
    with pytest.raises(CollectionMismatchError, match=r"384-d Cosine.*needs 384-d Dot"):
        store.ensure_collection(CollectionConfig(name="docs", distance="dot"), 384)


def test_every_collection_setting_reaches_the_edge_engine(edge: EdgeStore, tmp_path: Path) -> None:
    tuned = CollectionConfig(
        name="tuned",
        hnsw_m=8,
        hnsw_ef_construct=64,
        full_scan_threshold_kb=123,
        indexing_threshold_kb=456,
        quantization=QuantizationConfig(kind="product", product_compression="x8"),
        on_disk=True,
        on_disk_payload=False,
        payload_indexes={
            "lang": "keyword",
            "year": "integer",
            "score": "float",
            "draft": "bool",
            "at": "datetime",
            "body": "text",
        },
    )
    edge.ensure_collection(tuned, DIM)
    stored = json.loads((tmp_path / "qdrant" / "edge" / "tuned" / "edge_config.json").read_text())
    assert (
        stored["hnsw_config"] | {"m": 8, "ef_construct": 64, "full_scan_threshold": 123}
        == stored["hnsw_config"]
    )
    assert stored["optimizers"]["indexing_threshold"] == 456
    assert "product" in json.dumps(stored["quantization_config"]).lower()
    assert stored["vectors"]["dense"]["memory"] == "cold"  # on_disk
    assert stored["payload_memory"] == "cached"  # on_disk_payload: false
    schema = edge._shard("tuned").info().payload_schema
    assert set(schema) == {
        "tenant",
        "doc_id",
        "_bool_terms",
        *(f"metadata.{f}" for f in tuned.payload_indexes),
    }
    # a changed setting on the existing collection is persisted too (it takes effect at the next optimize)
    edge.ensure_collection(tuned.model_copy(update={"hnsw_m": 32, "quantization": None}), DIM)
    stored = edge.stored_config("tuned")
    assert stored["hnsw_config"]["m"] == 32


def test_upsert_is_idempotent(store: VectorStore, coll: str) -> None:
    chunks = make_chunks("a", "d1", ["one", "two", "three"])
    put(store, coll, chunks)
    put(store, coll, chunks)
    assert store.count(coll) == 3 and store.count(coll, "a") == 3 and store.count(coll, "b") == 0
    assert store.doc_point_ids(coll, "a", "d1") == {c.id for c in chunks}


def test_upsert_batches_beyond_256(store: VectorStore, coll: str) -> None:
    chunks = make_chunks("a", "big", [f"chunk {i}" for i in range(300)])
    put(store, coll, chunks)
    assert store.count(coll, "a") == 300
    assert len(store.doc_point_ids(coll, "a", "big")) == 300  # scroll pages past 256 too


def test_upsert_checks_shapes(store: VectorStore, coll: str) -> None:
    chunks = make_chunks("a", "d", ["x", "y"])
    with pytest.raises(ValueError, match="one row per chunk"):
        store.upsert(coll, chunks, rows(3), None)
    with pytest.raises(ValueError, match="one vector per chunk"):
        store.upsert(coll, chunks, rows(2), BM25.encode_documents(["x"]))


def test_replace_doc_removes_stale_chunks_and_keeps_other_docs(store: VectorStore, coll: str) -> None:
    put(store, coll, make_chunks("a", "d1", ["alpha", "beta", "gamma"]))
    other = make_chunks("a", "d2", ["other doc"])
    put(store, coll, other)
    same_doc_other_tenant = make_chunks("b", "d1", ["alpha"])
    put(store, coll, same_doc_other_tenant)
    new = make_chunks("a", "d1", ["alpha", "beta changed"])  # chunk 0 unchanged, 1 changed, 2 gone
    written, stale = store.replace_doc(
        coll, "a", "d1", new, rows(2), BM25.encode_documents([c.text for c in new])
    )
    assert (written, stale) == (2, 2)
    assert store.doc_point_ids(coll, "a", "d1") == {c.id for c in new}
    assert store.doc_point_ids(coll, "a", "d2") == {other[0].id}
    assert store.doc_point_ids(coll, "b", "d1") == {same_doc_other_tenant[0].id}
    # replacing with identical chunks deletes nothing
    assert store.replace_doc(coll, "a", "d1", new, rows(2), None) == (2, 0)
    with pytest.raises(ValueError, match="another tenant"):
        store.replace_doc(coll, "a", "d1", other, rows(1), None)


def test_tenant_point_ids_groups_one_tenants_points_by_document(store: VectorStore, coll: str) -> None:
    d1 = make_chunks("a", "d1", ["x", "y"])
    d2 = make_chunks("a", "d2", ["z"])
    put(store, coll, d1)
    put(store, coll, d2)
    put(store, coll, make_chunks("b", "d1", ["x"]))
    assert store.tenant_point_ids(coll, "a") == {"d1": {c.id for c in d1}, "d2": {d2[0].id}}
    assert store.tenant_point_ids(coll, "c") == {}
    assert store.tenant_point_ids(coll, "a")["d1"] == store.doc_point_ids(coll, "a", "d1")


def test_delete_doc(store: VectorStore, coll: str) -> None:
    put(store, coll, make_chunks("a", "d1", ["x", "y"]))
    put(store, coll, make_chunks("b", "d1", ["x"]))
    assert store.delete_doc(coll, "a", "d1") == 2
    assert store.delete_doc(coll, "a", "d1") == 0
    assert store.count(coll, "a") == 0 and store.count(coll, "b") == 1


def test_search_returns_chunks_rebuilt_from_payload(store: VectorStore, coll: str) -> None:
    chunks = make_chunks("a", "d1", ["near", "far"], {"lang": "en", "year": 2024})
    put(store, coll, chunks, np.stack([vec(1, 0, 0, 0), vec(0, 1, 0, 0)]))
    hits = store.search(coll, "a", vec(1, 0.1, 0, 0), None, top_k=2)
    assert [h.chunk for h in hits] == chunks
    assert hits[0].score == pytest.approx(float(vec(1, 0.1, 0, 0) @ vec(1, 0, 0, 0)), abs=1e-5)
    # dense-only threshold drops the orthogonal chunk
    assert [h.chunk.text for h in store.search(coll, "a", vec(1, 0, 0, 0), None, 2, score_threshold=0.5)] == [
        "near"
    ]


def test_tenant_isolation_in_every_search_mode(store: VectorStore, coll: str) -> None:
    secret = make_chunks("a", "secret", ["zebracode launch plan"], {"owner": "a", "tenant": "a"})
    put(store, coll, secret)
    put(store, coll, make_chunks("b", "public", ["unrelated note"], {"owner": "b"}), rows(1, (0, 1, 0, 0)))
    q_dense, q_sparse = vec(1, 0, 0, 0), BM25.encode_query("zebracode launch")
    assert store.search(coll, "a", q_dense, q_sparse, 5, hybrid=True)[0].chunk.doc_id == "secret"
    attempts: list[dict[str, Any]] = [
        {},
        {"tenant": "a"},  # a metadata field, never the tenant itself
        {"owner": "a"},
        {"doc_id": "secret"},
        {"doc_id": {"any": ["secret", "public"]}},
    ]
    for flt in attempts:
        for dense, sparse, hybrid in (
            (q_dense, None, False),
            (None, q_sparse, False),
            (q_dense, q_sparse, True),
        ):
            hits = store.search(coll, "b", dense, sparse, 10, filter=flt or None, hybrid=hybrid)
            assert all(h.chunk.tenant == "b" for h in hits), (flt, hybrid)
            assert "secret" not in {h.chunk.doc_id for h in hits}
    assert store.search(coll, "nobody", q_dense, q_sparse, 10, hybrid=True) == []


def test_filters_match_any_and_range(store: VectorStore, coll: str) -> None:
    put(
        store,
        coll,
        make_chunks("a", "en-2022", ["x"], {"lang": "en", "year": 2022, "score": 0.5, "draft": False}),
    )
    put(
        store,
        coll,
        make_chunks("a", "de-2023", ["x"], {"lang": "de", "year": 2023, "score": 1.5, "draft": True}),
    )
    put(
        store,
        coll,
        make_chunks("a", "fr-2024", ["x"], {"lang": "fr", "year": 2024, "score": 2.5, "draft": False}),
    )

    def docs(flt: dict[str, Any]) -> set[str]:
        return {h.chunk.doc_id for h in store.search(coll, "a", vec(1, 0, 0, 0), None, 10, filter=flt)}

    assert docs({"lang": "de"}) == {"de-2023"}
    assert docs({"year": 2024}) == {"fr-2024"}
    assert docs({"draft": False}) == {"en-2022", "fr-2024"}
    assert docs({"score": 1.5}) == {"de-2023"}
    assert docs({"lang": {"any": ["en", "fr"]}}) == {"en-2022", "fr-2024"}
    assert docs({"year": {"any": [2022, 2023]}}) == {"en-2022", "de-2023"}
    assert docs({"year": {"gte": 2023}}) == {"de-2023", "fr-2024"}
    assert docs({"year": {"gt": 2022, "lt": 2024}}) == {"de-2023"}
    assert docs({"score": {"lte": 1.5}, "lang": {"any": ["de", "fr"]}}) == {"de-2023"}
    assert docs({"doc_id": "en-2022"}) == {"en-2022"}
    assert docs({"source": "fr-2024.md"}) == {"fr-2024"}
    assert docs({"lang": "xx"}) == set()


@pytest.mark.parametrize(
    ("flt", "param"),
    [
        ({"lang": ["en", "fr"]}, "filter.lang"),
        ({"lang": {"any": []}}, "filter.lang"),
        ({"lang": {"any": ["en", 1]}}, "filter.lang"),
        ({"year": {"gte": "2020"}}, "filter.year"),
        ({"year": {"gte": True}}, "filter.year"),
        ({"year": {"between": [1, 2]}}, "filter.year"),
        ({"year": {"gte": 1, "any": [1]}}, "filter.year"),
        ({"lang": None}, "filter.lang"),
        ({"lang": {}}, "filter.lang"),
        ({"a.b": 1}, "filter.a.b"),
        ({"$or": 1}, "filter.$or"),
    ],
)
def test_bad_filter_is_invalid_request_naming_the_field(flt: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        build_filter(flt, "a")
    assert err.value.param == param
    assert param in err.value.message


def test_filter_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError) as err:
        build_filter(["lang"], "a")  # type: ignore[arg-type]
    assert err.value.param == "filter"
    assert build_filter(None, "a") == FilterSpec("a")
    assert build_filter({"lang": "en"}, "a") == FilterSpec("a", (Condition("metadata.lang", "match", "en"),))


def test_sparse_scores_carry_idf_computed_by_the_engine(store: VectorStore, coll: str) -> None:
    texts = ["apple banana", "apple", "apple", "apple"]
    put(store, coll, make_chunks("a", "fruit", texts))
    banana = store.search(coll, "a", None, BM25.encode_query("banana"), 10)
    assert [h.chunk.text for h in banana] == ["apple banana"]  # no shared term, no hit
    apple = {
        h.chunk.chunk_index: h.score for h in store.search(coll, "a", None, BM25.encode_query("apple"), 10)
    }
    assert sorted(apple) == [0, 1, 2, 3]
    # both terms of "apple banana" have the same BM25 weight: only IDF separates their scores
    n, w = 4, BM25.encode_document("apple banana").values[0]
    idf_rare, idf_common = (np.log((n - df + 0.5) / (df + 0.5) + 1) for df in (1, 4))
    assert banana[0].score == pytest.approx(w * idf_rare, rel=1e-4)
    assert apple[0] == pytest.approx(w * idf_common, rel=1e-4)
    assert banana[0].score > 10 * apple[0]


def test_hybrid_finds_keyword_match_that_dense_misses(store: VectorStore, coll: str) -> None:
    distractors = make_chunks("a", "faq", [f"general guidance number {i}" for i in range(8)])
    put(store, coll, distractors, np.stack([vec(1, 0.1 * i, 0, 0) for i in range(8)]))
    rare = make_chunks("a", "runbook", ["error QX7731 means the disk quota is exhausted"])
    put(store, coll, rare, rows(1, (0, 0, 1, 0)))  # dense-far from the query
    q = "what does QX7731 mean"
    dense_hits = store.search(coll, "a", vec(1, 0, 0, 0), BM25.encode_query(q), 3)
    assert "runbook" not in {h.chunk.doc_id for h in dense_hits}
    hybrid_hits = store.search(coll, "a", vec(1, 0, 0, 0), BM25.encode_query(q), 3, hybrid=True)
    assert "runbook" in {h.chunk.doc_id for h in hybrid_hits}
    # a stopword-only sparse query counts as none: hybrid falls back to dense
    assert (
        store.search(coll, "a", vec(1, 0, 0, 0), BM25.encode_query("what is the"), 3, hybrid=True)
        == dense_hits
    )
    assert store.search(coll, "a", None, BM25.encode_query("the"), 3) == []


def test_missing_collection_is_not_found(store: VectorStore) -> None:
    for call in (
        lambda: store.search("ghost", "a", vec(1, 0, 0, 0), None, 1),
        lambda: store.count("ghost"),
        lambda: store.upsert("ghost", make_chunks("a", "d", ["x"]), rows(1), None),
    ):
        with pytest.raises(NotFoundError) as err:
            call()
        assert (err.value.code, err.value.param, err.value.value) == (
            "collection_not_found",
            "collection",
            "ghost",
        )


@pytest.mark.filterwarnings("ignore::UserWarning")  # insecure api key; no server version
def test_unreachable_server_is_service_unavailable() -> None:
    cfg = VectorStoreConfig(url="http://127.0.0.1:9", api_key="s3cret", timeout_s=1)
    with open_store(cfg, "/nonexistent") as s:
        assert s.mode == "server"
        assert s.describe() == "Qdrant server at http://127.0.0.1:9"
        with pytest.raises(ServiceUnavailableError, match="vector store unreachable"):
            s.count("docs")


def test_second_process_gets_store_locked_error(tmp_path: Path) -> None:
    with open_store(VectorStoreConfig(), str(tmp_path)) as s:
        s.ensure_collection(CollectionConfig(name="docs"), DIM)
        put(s, "docs", make_chunks("a", "d", ["kept"]))
        child = textwrap.dedent(
            f"""
            import sys
            from services.retrieval.config import VectorStoreConfig
            from services.retrieval.store import StoreLockedError, open_store
            try:
                open_store(VectorStoreConfig(), {str(tmp_path)!r})
            except StoreLockedError as e:
                print(e)
                sys.exit(3)
            """
        )
        res = subprocess.run(
            [sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 3, res.stderr
        assert "held by another process" in res.stdout and str(tmp_path / "qdrant") in res.stdout
    # released on close, and the data persisted
    with open_store(VectorStoreConfig(), str(tmp_path)) as again:
        assert again.count("docs") == 1
    assert issubclass(StoreLockedError, RuntimeError)
