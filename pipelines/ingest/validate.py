"""The quarantine file of an ingestion run, and run-wide id checks.

The validation rules themselves (Great Expectations) live in
:mod:`services.retrieval.validation`, shared with the online write path;
this module re-exports them for the pipeline.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.retrieval.types import Document
from services.retrieval.validation import (
    LENGTH,
    NOT_NULL,
    UNIQUE,
    DocumentValidator,
    QuarantineRecord,
    build_frame,
    document_record,
    expectation_name,
    validate_documents,
    validator_for,
)

__all__ = [
    "LENGTH",
    "NOT_NULL",
    "UNIQUE",
    "DocumentValidator",
    "QuarantineRecord",
    "QuarantineWriter",
    "build_frame",
    "dedupe_ids",
    "document_record",
    "expectation_name",
    "quarantine_path",
    "validate_documents",
    "validator_for",
]


# -- the quarantine file ----------------------------------------------------------------
def quarantine_path(data_dir: str | Path, collection: str, started: float | None = None) -> Path:
    """``<data_dir>/quarantine/<collection>-<UTC timestamp>.jsonl``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started if started is not None else time.time()))
    return Path(data_dir) / "quarantine" / f"{collection}-{stamp}.jsonl"


class QuarantineWriter:
    """Appends quarantine records to one JSONL file, created on the first record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: Any = None

    def write(self, records: Sequence[QuarantineRecord]) -> None:
        if not records:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        for rec in records:
            self._file.write(json.dumps(rec.to_json(), ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        self.count += len(records)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def dedupe_ids(documents: Sequence[Document]) -> tuple[list[Document], list[QuarantineRecord]]:
    """Drop every document whose id occurs more than once (which copy should win is unknowable).

    The batch pipeline checks this over the whole run, because one Ray batch
    sees only part of it; the record carries the same name as the GX check.
    """
    counts = Counter(d.doc_id for d in documents)
    name = expectation_name(UNIQUE, "doc_id")
    bad = [
        QuarantineRecord(
            d.doc_id, (name,), d.source, None, f"id occurs {counts[d.doc_id]} times", document_record(d)
        )
        for d in documents
        if counts[d.doc_id] > 1
    ]
    return [d for d in documents if counts[d.doc_id] == 1], bad
