"""Document validation with Great Expectations, shared by batch ingestion and online writes.

Every document must have non-empty text within the collection's length bounds
(``min_text_chars`` / ``max_text_chars``), a unique id, and each of the
collection's ``required_metadata`` fields. The checks are one GX
``ExpectationSuite`` run with ``result_format="COMPLETE"`` over a pandas frame
of a batch of documents; ``unexpected_index_list`` says which rows broke which
expectation. Rows that fail are quarantined with the names of the expectations
they broke, e.g. ``expect_column_values_to_not_be_null(metadata.author)``.

The GX context is ephemeral and built once per process (importing GX and
building a context takes seconds; validating a batch then takes milliseconds).
Batch ingestion (``pipelines.ingest``) adds the quarantine file on top.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from services.gx import batch_definition, expectation_name, failed_rows  # noqa: F401 (re-exported)
from services.retrieval.config import CollectionConfig
from services.retrieval.types import Document

NOT_NULL = "expect_column_values_to_not_be_null"
LENGTH = "expect_column_value_lengths_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"
METADATA_PREFIX = "metadata."


@dataclass(frozen=True)
class QuarantineRecord:
    """A row that was not ingested, and why.

    ``failed`` names the broken expectations (``expect_...(column)``), or a
    reading problem (``json_parse_error``, ``text_field_missing``, ...).
    """

    doc_id: str | None
    failed: tuple[str, ...]
    source: str = ""
    row: int | None = None
    reason: str = ""
    record: Mapping[str, Any] | str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id,
            "failed": list(self.failed),
            "source": self.source,
            "row": self.row,
            "reason": self.reason,
            "record": self.record,
        }


def _batch_definition() -> Any:
    return batch_definition("llmops_ingest", "documents")


def _suite(collection: CollectionConfig) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list[Any] = [
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=collection.min_text_chars, max_value=collection.max_text_chars
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="doc_id"),
        gxe.ExpectColumnValuesToBeUnique(column="doc_id"),
    ]
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(column=METADATA_PREFIX + name)
        for name in collection.required_metadata
    ]
    return gx.ExpectationSuite(name=f"ingest-{collection.name}", expectations=expectations)


def _present(value: Any) -> Any:
    """None for what counts as missing: None, NaN, blank strings, empty containers."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, list | dict | tuple) and not value:
        return None
    return value


def build_frame(
    doc_ids: Sequence[Any],
    texts: Sequence[Any],
    metadatas: Sequence[Mapping[str, Any]],
    required: Sequence[str],
) -> pd.DataFrame:
    """The frame the suite runs on: ``doc_id``, ``text`` (None when blank), ``metadata.<field>``."""
    data: dict[str, list[Any]] = {
        "doc_id": [_present(d) for d in doc_ids],
        "text": [t if isinstance(t, str) and t.strip() else None for t in texts],
    }
    for name in required:
        data[METADATA_PREFIX + name] = [_present(m.get(name)) for m in metadatas]
    # object dtype: GX's length metric wants Python strings, not pandas' string dtype
    return pd.DataFrame(data, dtype=object).reset_index(drop=True)


class DocumentValidator:
    """Runs a collection's suite over batches of documents."""

    def __init__(self, collection: CollectionConfig) -> None:
        self.collection = collection
        self._batch_definition = _batch_definition()
        self._suite = _suite(collection)

    def check_frame(self, frame: pd.DataFrame) -> list[list[str]]:
        """For each row of ``frame`` (see :func:`build_frame`), the expectations it broke."""
        return failed_rows(self._batch_definition, self._suite, frame)

    def validate(self, documents: Sequence[Document]) -> tuple[list[Document], list[QuarantineRecord]]:
        """Split ``documents`` into (valid, quarantined), keeping order."""
        frame = build_frame(
            [d.doc_id for d in documents],
            [d.text for d in documents],
            [d.metadata for d in documents],
            self.collection.required_metadata,
        )
        valid: list[Document] = []
        quarantined: list[QuarantineRecord] = []
        for doc, failed in zip(documents, self.check_frame(frame), strict=True):
            if failed:
                quarantined.append(
                    QuarantineRecord(
                        doc_id=doc.doc_id,
                        failed=tuple(failed),
                        source=doc.source,
                        reason="failed validation",
                        record=document_record(doc),
                    )
                )
            else:
                valid.append(doc)
        return valid, quarantined


def document_record(doc: Document, max_text_chars: int = 2000) -> dict[str, Any]:
    """A document as written to the quarantine file (text cut to ``max_text_chars``)."""
    text = doc.text if isinstance(doc.text, str) else repr(doc.text)
    cut = len(text) > max_text_chars
    return {
        "id": doc.doc_id,
        "text": text[:max_text_chars] + ("…" if cut else ""),
        "text_chars": len(text),
        "metadata": doc.metadata,
        "source": doc.source,
    }


@functools.lru_cache(maxsize=32)
def validator_for(collection_json: str) -> DocumentValidator:
    """The process's validator for a collection config (as JSON, so it can be a cache key)."""
    return DocumentValidator(CollectionConfig.model_validate_json(collection_json))


def validate_documents(
    documents: Sequence[Document], collection: CollectionConfig
) -> tuple[list[Document], list[QuarantineRecord]]:
    """Validate ``documents`` against ``collection``'s rules: (valid, quarantined).

    Uniqueness is checked within ``documents``; one validator per collection
    config is kept for the process.
    """
    return validator_for(collection.model_dump_json()).validate(documents)
