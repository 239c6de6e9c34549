"""Batch ingestion of documents into the vector store (Ray Data).

Public face: :func:`run` (ingest a path), :func:`delete_document`,
:func:`read_documents` (files → documents), :func:`validate_documents`
(the Great Expectations rules) and ``cli.add_parser`` (``llmops ingest``).
"""

from pipelines.ingest.pipeline import IngestSummary, delete_document, run
from pipelines.ingest.sources import ReadResult, RowFields, read_documents
from pipelines.ingest.validate import QuarantineRecord, validate_documents

__all__ = [
    "IngestSummary",
    "QuarantineRecord",
    "ReadResult",
    "RowFields",
    "delete_document",
    "read_documents",
    "run",
    "validate_documents",
]
