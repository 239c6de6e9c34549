"""Great Expectations validation of documents and the quarantine file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipelines.ingest.validate import (
    DocumentValidator,
    QuarantineRecord,
    QuarantineWriter,
    build_frame,
    quarantine_path,
    validate_documents,
)
from services.retrieval.config import CollectionConfig
from services.retrieval.types import Document

pytestmark = pytest.mark.unit

COLL = CollectionConfig(name="kb", required_metadata=["lang"], min_text_chars=5, max_text_chars=40)
NOT_NULL_TEXT = "expect_column_values_to_not_be_null(text)"
LENGTH = "expect_column_value_lengths_to_be_between(text)"
UNIQUE = "expect_column_values_to_be_unique(doc_id)"
LANG = "expect_column_values_to_not_be_null(metadata.lang)"


def doc(doc_id: str, text: str, **meta: object) -> Document:
    return Document(doc_id, text, dict(meta), f"src/{doc_id}")


def test_each_rule_names_its_expectation() -> None:
    docs = [
        doc("ok", "a valid document", lang="en"),
        doc("empty", "", lang="en"),
        doc("blank", "   \n\t ", lang="en"),
        doc("short", "abc", lang="en"),
        doc("long", "x" * 41, lang="en"),
        doc("nolang", "valid text, no lang"),
        doc("blanklang", "valid text, blank lang", lang=" "),
        doc("dup", "first of two", lang="en"),
        doc("dup", "second of two", lang="en"),
        doc("many", "", lang=None),
    ]
    valid, quarantined = validate_documents(docs, COLL)
    assert [d.doc_id for d in valid] == ["ok"]
    failed = [(q.doc_id, set(q.failed)) for q in quarantined]
    assert failed == [
        ("empty", {NOT_NULL_TEXT}),
        ("blank", {NOT_NULL_TEXT}),
        ("short", {LENGTH}),
        ("long", {LENGTH}),
        ("nolang", {LANG}),
        ("blanklang", {LANG}),
        ("dup", {UNIQUE}),
        ("dup", {UNIQUE}),
        ("many", {NOT_NULL_TEXT, LANG}),
    ]
    first = quarantined[0]
    assert first.source == "src/empty"
    assert first.record is not None and first.record["id"] == "empty"


def test_bounds_are_inclusive_and_order_is_kept() -> None:
    coll = CollectionConfig(name="kb", min_text_chars=3, max_text_chars=5)
    docs = [doc("b", "abc"), doc("a", "abcde"), doc("c", "ab"), doc("d", "abcdef")]
    valid, quarantined = DocumentValidator(coll).validate(docs)
    assert [d.doc_id for d in valid] == ["b", "a"]
    assert [q.doc_id for q in quarantined] == ["c", "d"]


def test_no_required_metadata_and_empty_batch() -> None:
    coll = CollectionConfig(name="kb")
    valid, quarantined = validate_documents([doc("a", "text")], coll)
    assert [d.doc_id for d in valid] == ["a"] and not quarantined
    assert validate_documents([], coll) == ([], [])


def test_frame_marks_missing_values_as_null() -> None:
    frame = build_frame(["a", "b"], ["text", "  "], [{"lang": "en"}, {"lang": float("nan")}], ["lang"])
    assert list(frame.columns) == ["doc_id", "text", "metadata.lang"]
    assert frame["text"].tolist() == ["text", None]
    assert frame["metadata.lang"].tolist() == ["en", None]


def test_a_batch_is_fast_once_the_context_exists() -> None:
    validator = DocumentValidator(COLL)
    docs = [doc(f"d{i}", f"document number {i}", lang="en") for i in range(500)]
    validator.validate(docs[:2])  # warm
    t0 = time.perf_counter()
    valid, quarantined = validator.validate(docs)
    assert len(valid) == 500 and not quarantined
    # not a benchmark: only guards against rebuilding the GX context per batch (seconds)
    assert time.perf_counter() - t0 < 5


def test_quarantine_writer(tmp_path: Path) -> None:
    path = quarantine_path(tmp_path, "kb", started=0)
    assert path == tmp_path / "quarantine" / "kb-19700101T000000Z.jsonl"
    writer = QuarantineWriter(path)
    writer.write([])
    assert not path.exists()  # created on the first record only
    writer.write([QuarantineRecord("d1", (LANG,), "f.jsonl", 3, "failed validation", {"id": "d1"})])
    writer.write([QuarantineRecord(None, ("json_parse_error",), "f.jsonl", 4, "bad", "{x")])
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert writer.count == 2
    assert lines[0] == {
        "doc_id": "d1",
        "failed": [LANG],
        "source": "f.jsonl",
        "row": 3,
        "reason": "failed validation",
        "record": {"id": "d1"},
    }
    assert lines[1]["failed"] == ["json_parse_error"] and lines[1]["record"] == "{x"
