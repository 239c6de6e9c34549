"""The ingestion stages called directly on numpy batches (no Ray), and the store writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.ingest.stages import (
    Chunker,
    Embedder,
    ModelTokenizer,
    ids_digest,
    quarantined_row,
    validate_batch,
)
from pipelines.ingest.writer import StoreWriter
from services.embeddings.encoder import Encoder
from services.retrieval.chunking import chunk_document
from services.retrieval.config import CollectionConfig, VectorStoreConfig
from services.retrieval.store import open_store
from services.retrieval.types import Document

pytestmark = pytest.mark.unit

COLL = CollectionConfig(name="kb", chunk_tokens=24, chunk_overlap=4, required_metadata=["lang"])
LONG = " ".join(f"Sentence number {i} talks about vectors and chunks." for i in range(12))


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(None, "cpu")


def batch(rows: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    return {
        "doc_id": np.array([r[0] for r in rows], dtype=object),
        "text": np.array([r[1] for r in rows], dtype=object),
        "metadata": np.array([json.dumps(r[2]) for r in rows], dtype=object),
        "source": np.array([f"src/{r[0]}" for r in rows], dtype=object),
    }


def test_model_tokenizer_chunks_exactly_like_the_encoder(encoder: Encoder) -> None:
    tok = ModelTokenizer(None)
    assert tok.max_seq_length == encoder.max_seq_length
    doc = Document("d", LONG * 4, {}, "")
    for size in (0, 24):
        fast, full = chunk_document(doc, "t", tok, size, 4), chunk_document(doc, "t", encoder, size, 4)
        assert len(fast) > 1
        assert [c.id for c in fast] == [c.id for c in full]


def test_stages_then_writer_then_unchanged_on_rerun(encoder: Encoder, tmp_path: Path) -> None:
    docs = batch(
        [
            ("long", LONG, {"lang": "en"}),
            ("short", "One short document.", {"lang": "de"}),
            ("nolang", "Valid text but no lang.", {}),
        ]
    )
    validated = validate_batch(docs, COLL.model_dump_json())
    assert [json.loads(f) for f in validated["failed"]] == [
        [],
        [],
        ["expect_column_values_to_not_be_null(metadata.lang)"],
    ]
    chunked = Chunker(None, "acme", COLL.chunk_tokens, COLL.chunk_overlap, existing={})(validated)
    kinds = list(chunked["kind"])
    n_long = kinds.count("chunk") - 1
    assert n_long > 1 and kinds[-1] == "quarantined"
    assert chunked["chunk_index"].dtype == np.int64

    embedder = Embedder(None, "cpu", hybrid=True, batch_size=8, encoder=encoder)  # share the loaded model
    embedded = embedder(chunked)
    row_of = [{k: embedded[k][i] for k in embedded} for i in range(len(kinds))]
    assert embedded["dense"][-1] == b"" and embedded["sparse"][-1] == ""
    record = quarantined_row(row_of[-1])
    assert record.doc_id == "nolang" and record.record is not None and record.record["metadata"] == {}

    with open_store(VectorStoreConfig(), str(tmp_path)) as store:
        writer = StoreWriter(store, COLL, "acme", existing=set(), flush_at=2)
        completed = [writer.add(r) for r in reversed(row_of[:-1])]  # any arrival order
        writer.flush()
        assert sum(completed) == 2 and not writer.pending
        assert (writer.docs, writer.chunks, writer.stale) == (2, n_long + 1, 0)
        assert store.count("kb", "acme") == n_long + 1
        hits = store.search("kb", "acme", encoder.encode(["Sentence number 3"])[0], None, 1)
        assert hits[0].chunk.doc_id == "long" and hits[0].chunk.metadata == {"lang": "en"}
        existing = {d: ids_digest(store.doc_point_ids("kb", "acme", d)) for d in ("long", "short")}

    again = Chunker(None, "acme", COLL.chunk_tokens, COLL.chunk_overlap, existing=existing)(validated)
    assert list(again["kind"]) == ["unchanged", "unchanged", "quarantined"]
    passed = Embedder(None, "cpu", hybrid=True, batch_size=8, encoder=encoder)(again)
    assert list(passed["dense"]) == [b"", b"", b""] and list(passed["sparse"]) == ["", "", ""]


def test_writer_replaces_a_changed_document(encoder: Encoder, tmp_path: Path) -> None:
    coll = CollectionConfig(name="kb", chunk_tokens=24, chunk_overlap=4, hybrid=False)
    chunker = Chunker(None, "t", 24, 4, existing={})
    embedder = Embedder(None, "cpu", hybrid=False, batch_size=8, encoder=encoder)

    def rows(text: str) -> list[dict[str, Any]]:
        out = embedder(chunker({**batch([("d", text, {})]), "failed": np.array(["[]"], dtype=object)}))
        return [{k: out[k][i] for k in out} for i in range(len(out["kind"]))]

    with open_store(VectorStoreConfig(), str(tmp_path)) as store:
        first = StoreWriter(store, coll, "t", existing=set(), flush_at=100)
        for r in rows(LONG):
            first.add(r)
        first.flush()
        before = store.doc_point_ids("kb", "t", "d")
        second = StoreWriter(store, coll, "t", existing={"d"}, flush_at=100)
        new_rows = rows(LONG[: len(LONG) // 2] + " A different ending.")
        for r in new_rows:
            second.add(r)
        after = store.doc_point_ids("kb", "t", "d")
        assert after == {str(r["chunk_id"]) for r in new_rows}
        assert second.stale == len(before - after) > 0
        assert store.count("kb") == len(after)
