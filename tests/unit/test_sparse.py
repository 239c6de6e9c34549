"""BM25-style sparse vectors: terms, stable ids, saturation weights, query vectors."""

from __future__ import annotations

import zlib

import pytest

from services.retrieval.sparse import BM25Encoder, stem, term_index, tokenize

pytestmark = pytest.mark.unit


def test_tokenize_lowercases_drops_stopwords_and_folds_plurals() -> None:
    assert tokenize("The Vectors of the QUERIES are in Qdrant!") == ["vector", "query", "qdrant"]
    # unicode words survive whole; digits and codes are kept (keyword search is for them)
    assert tokenize("Café naïve Straße, error E1234 x86_64") == [
        "café",
        "naïve",
        "straße",
        "error",
        "e1234",
        "x86_64",
    ]
    assert tokenize("  \n ") == []
    assert tokenize("the and of") == []


def test_stem_is_light() -> None:
    assert [stem(w) for w in ("classes", "status", "analysis", "bus", "cats", "ids")] == [
        "class",
        "status",
        "analysis",
        "bus",
        "cat",
        "ids",  # too short to fold
    ]


def test_term_index_is_crc32_and_stable() -> None:
    # a literal, not a recomputation: the id must never change between releases,
    # or stored documents and new queries stop matching
    assert term_index("qdrant") == 960205894
    assert term_index("qdrant") == zlib.crc32(b"qdrant") % 2**31
    assert all(0 <= term_index(t) < 2**31 for t in ("a", "ü", "x" * 100))


def test_document_weights_follow_bm25_saturation() -> None:
    enc = BM25Encoder(k1=1.2, b=0.75, avgdl=4)
    v = enc.encode_document("alpha alpha beta gamma")  # dl == avgdl: norm == k1
    weights = dict(zip(v.indices, v.values, strict=True))
    assert weights[term_index("alpha")] == pytest.approx(2 * 2.2 / (2 + 1.2))
    assert weights[term_index("beta")] == pytest.approx(1.0)
    assert list(v.indices) == sorted(v.indices)
    # a longer document dilutes each occurrence
    long = enc.encode_document("beta " + "filler " * 20)
    assert dict(zip(long.indices, long.values, strict=True))[term_index("beta")] < 1.0


def test_b_zero_ignores_length_and_k1_zero_is_binary() -> None:
    short = BM25Encoder(b=0.0, avgdl=10).encode_document("beta")
    long = BM25Encoder(b=0.0, avgdl=10).encode_document("beta " + "filler " * 50)
    assert short.values[0] == pytest.approx(
        dict(zip(long.indices, long.values, strict=True))[term_index("beta")]
    )
    binary = BM25Encoder(k1=0.0).encode_document("beta beta beta")
    assert binary.values == (1.0,)


def test_query_is_unique_terms_with_unit_weight() -> None:
    q = BM25Encoder().encode_query("Vector vectors the VECTOR search")
    assert q.indices == tuple(sorted({term_index("vector"), term_index("search")}))
    assert q.values == (1.0, 1.0)
    assert BM25Encoder().encode_query("the of and").indices == ()


def test_encode_documents_one_per_text_and_empty_text() -> None:
    out = BM25Encoder().encode_documents(["alpha", "", "the"])
    assert len(out) == 3
    assert out[0].indices == (term_index("alpha"),)
    assert out[1].indices == () and out[2].indices == ()


@pytest.mark.parametrize("kwargs", [{"k1": -1.0}, {"b": 1.5}, {"avgdl": 0.0}])
def test_bad_parameters_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BM25Encoder(**kwargs)
